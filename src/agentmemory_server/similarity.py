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

import hashlib
import re
import unicodedata
from functools import lru_cache

import numpy as np

_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")

BANDS = 50
ROWS = 5
# Fixed seeds: band keys are stored in the index, so they must not change between processes,
# runs or releases (changing them, or BANDS and ROWS, needs the index rebuilt; see tantivy_index).
_SEEDS = np.random.default_rng(0x5EED_0A7E).integers(1, 2**63, size=BANDS * ROWS, dtype=np.uint64)
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


def _hash64(data: str) -> int:
    # Python's hash() differs between processes; the keys are stored, so they must not.
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@lru_cache(maxsize=512)
def band_keys(text: str) -> list[str]:
    """The MinHash band keys of ``text``'s word set (``BANDS`` of them, as short hex strings).

    A text with no word longer than two characters has one key, for its whitespace-normalised
    self, lower-cased: such texts are near-duplicates only when equal (remember compares them
    lower-cased). Cached: a memory's keys are wanted by its remember, then by each process's
    pending tail and by the index applier. The list returned is shared: do not change it."""
    tokens = jaccard_tokens(text)
    if not tokens:
        return ["=" + format(_hash64(" ".join(text.lower().split())), "016x")]
    words = np.fromiter((_hash64(t) for t in tokens), dtype=np.uint64, count=len(tokens))
    with np.errstate(over="ignore"):  # the mixing multiplies modulo 2**64 on purpose
        mixed = words[:, None] ^ _SEEDS[None, :]  # one splitmix64 finaliser per hash function
        mixed = (mixed ^ (mixed >> np.uint64(30))) * _MIX1
        mixed = (mixed ^ (mixed >> np.uint64(27))) * _MIX2
        mixed ^= mixed >> np.uint64(31)
    minima = mixed.min(axis=0).reshape(BANDS, ROWS)
    return [
        format(band, "02d") + hashlib.blake2b(row.tobytes(), digest_size=6).hexdigest()
        for band, row in enumerate(minima)
    ]
