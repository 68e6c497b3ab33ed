"""Near-duplicate text: the word sets remember compares (Jaccard), and MinHash band keys that find
the texts likely to be near-duplicates of one another without comparing against every text.

This module sits below every layer: the features decide what a near-duplicate is (Jaccard > 0.7
of these word sets, upstream's rule U§4.4), and the lexical engine in storage indexes the band
keys of each memory so that remember can ask for its candidates by a few exact term lookups.

MinHash: for each of ``BANDS * ROWS`` hash functions, the smallest hash over a text's words.
Two texts agree on one function's minimum with probability equal to their Jaccard similarity
``s``, so they agree on a whole band of ``ROWS`` minima with probability ``s ** ROWS`` and share
at least one of ``BANDS`` band keys with probability ``1 - (1 - s ** ROWS) ** BANDS``. With 50
bands of 5 rows that is 0.9999 at s = 0.7 (the threshold), 0.80 at 0.5, 0.11 at 0.3 and 0.016
at 0.2; candidates are then ranked by how many keys they share and checked exactly, so a loose
match costs a comparison, never a wrong answer.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from functools import lru_cache

import numpy as np

_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")

BANDS = 50
ROWS = 5
# Band keys are stored in the index, so they must not change between processes, runs or
# releases. Whoever changes how they are made (the constants below, BANDS, ROWS, the word sets)
# raises this: the lexical index names its key field after it, so the index is rebuilt.
KEYS_VERSION = 1


def _splitmix64(seed: int, count: int) -> np.ndarray:
    """``count`` pseudo-random 64-bit words from ``seed``, in plain integer arithmetic (a library's
    random generator may change its stream between versions)."""
    out, state, mask = [], seed, (1 << 64) - 1
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=np.uint64)


_MULTIPLIERS = _splitmix64(1, BANDS * ROWS) | np.uint64(1)  # odd: each is a bijection of 64-bit words
_OFFSETS = _splitmix64(2, BANDS * ROWS)
_ROW_WEIGHTS = _splitmix64(3, ROWS) | np.uint64(1)
_BAND_SALTS = np.arange(1, BANDS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def jaccard_tokens(text: str) -> set[str]:
    """Word set used for near-duplicate detection (U§4.4): NFC, whitespace split, tokens longer
    than 2 characters; CJK runs contribute the run, its characters and its bigrams."""
    normal = unicodedata.normalize("NFC", text).lower()
    tokens = {t for t in normal.split() if len(t) > 2}
    for run in _CJK_RUN.findall(normal):
        tokens.add(run)
        tokens.update(run)
        tokens.update(run[i : i + 2] for i in range(len(run) - 1))
    return tokens


def jaccard(a: str, b: str) -> float:
    return jaccard_of(jaccard_tokens(a), a, b)


def jaccard_of(ta: set[str], a: str, b: str) -> float:
    """``jaccard(a, b)`` with ``a``'s word set already made (one text compared with many)."""
    tb = jaccard_tokens(b)
    if not ta or not tb:
        return 1.0 if " ".join(a.split()) == " ".join(b.split()) else 0.0
    return len(ta & tb) / len(ta | tb)


def _word_hashes(tokens: set[str]) -> np.ndarray:
    # Two CRC-32s of each word (different seeds) make a 64-bit hash that is the same in every
    # process, run and release (Python's hash() is not); the mixing below spreads it.
    crc = zlib.crc32
    words = [t.encode("utf-8", "surrogatepass") for t in tokens]
    return np.fromiter(((crc(w) << 32) | crc(w, 0x9E3779B9) for w in words), dtype=np.uint64, count=len(words))


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (multiplication wraps modulo 2**64 on purpose)."""
    with np.errstate(over="ignore"):
        values = (values ^ (values >> np.uint64(30))) * _MIX1
        values = (values ^ (values >> np.uint64(27))) * _MIX2
        return values ^ (values >> np.uint64(31))


@lru_cache(maxsize=512)
def band_keys(text: str) -> tuple[int, ...]:
    """The MinHash band keys of ``text``'s word set: ``BANDS`` unsigned 64-bit integers, each the
    hash of one band's ``ROWS`` minima and of the band's number (equal minima in two different
    bands make different keys).

    A text with no word longer than two characters has one key, for its whitespace-normalised
    self, lower-cased: such texts are near-duplicates only when equal (remember compares them
    lower-cased). Cached: a memory's keys are wanted by its remember, then by each process's
    pending tail and by the index applier."""
    tokens = jaccard_tokens(text)
    if not tokens:
        return (int(_mix(_word_hashes({" ".join(text.lower().split())}))[0]),)
    words = _mix(_word_hashes(tokens))
    with np.errstate(over="ignore"):  # multiplication modulo 2**64 on purpose
        # One multiply-add per hash function and word (a universal family over the mixed words).
        minima = (words[:, None] * _MULTIPLIERS[None, :] + _OFFSETS[None, :]).min(axis=0).reshape(BANDS, ROWS)
        # A band's key: its minima weighted and summed, salted with the band's number, mixed.
        keys = _mix((minima * _ROW_WEIGHTS[None, :]).sum(axis=1, dtype=np.uint64) ^ _BAND_SALTS)
    return tuple(keys.tolist())
