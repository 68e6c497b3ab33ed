"""What the cross-encoder second stage costs per query, by depth and pair length.

    python bench/rerank_cost.py [DATA] [--conversations 2] [--questions 60]
        [--depths 40,30,20,10] [--tokens 128,96,64] [--batch 1] [--workers 1,2]

Loads LoCoMo conversations through the product (as bench/locomo.py does), takes each question's
first-stage candidates from smart-search's own ranking (``recall.ranked``) and the text the
reranker reads of each (``recall.record_text``), then times ``rerank.CrossEncoder.score`` on the
top DEPTH of them with pairs cut to TOKENS. ``--batch N`` scores N pairs per model call (padded
to the longest, the earlier way) instead of the product's one pair per call. ``--workers`` lists
the numbers of threads a query's pairs are shared out over (the product uses 2 when the search is
alone in its process, 1 otherwise), each measured in turn. Prints p50/p95 wall
and CPU milliseconds per query, the mean pair length, and the process RSS; wall-clock figures
depend on what else the shared cores run, CPU time much less. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.retrieval import recall, rerank, vectors  # noqa: E402
from embed_cache import default_dir  # noqa: E402


def candidate_texts(data: Path, conversations: int, questions: int, depth: int) -> list[tuple[str, list[str]]]:
    """(question, texts of its top ``depth`` first-stage candidates) through the product."""
    out = []
    for sample in json.loads(data.read_text())[:conversations]:
        with tempfile.TemporaryDirectory() as tmp:
            rt = locomo.runtime_for(tmp, "local", "tantivy", default_dir())
            try:
                ctx = Ctx(rt, source="bench")
                locomo.ingest(ctx, sample)
                rt.db.flush()
                vectors.service(rt).drain()
                filters = {"kinds": recall.RESULT_KINDS, "project": sample["sample_id"], "agent_id": None}
                for qa in sample["qa"][:questions]:
                    pairs = recall.ranked(ctx, qa["question"], limit=depth, filters=filters, mode="auto",
                                          rerank_top=False).pairs
                    out.append((qa["question"], [recall.record_text(hit, record) for hit, record in pairs]))
            finally:
                rt.close()
    return out


def batched_scores(encoder: rerank.CrossEncoder, query: str, texts: list[str], batch: int) -> np.ndarray:
    """The earlier way: ``batch`` pairs per model call, each call padded to its longest pair."""
    tokenizer = encoder._tokenizer
    tokenizer.enable_truncation(max_length=rerank.MAX_PAIR_TOKENS, strategy="longest_first")
    encoded = tokenizer.encode_batch([(query[:500], t[:2000] or " ") for t in texts])
    scores = []
    for start in range(0, len(encoded), batch):
        chunk = encoded[start : start + batch]
        width = max(len(e.ids) for e in chunk)
        feed = {name: np.array([getattr(e, attr) + [0] * (width - len(e.ids)) for e in chunk], dtype=np.int64)
                for name, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                                   ("token_type_ids", "type_ids"))}
        scores.extend(np.asarray(encoder._session.run(None, feed)[0]).reshape(-1))
    return np.array(scores, dtype=np.float32)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * share) - 1)]


def measure(
    encoder: rerank.CrossEncoder, cases: list[tuple[str, list[str]]], depth: int, batch: int, workers: int = 1
) -> dict[str, Any]:
    wall, cpu = [], []
    for query, texts in cases:
        head = texts[:depth]
        w0, c0 = time.perf_counter(), time.process_time()
        if batch == 1:
            encoder.score(query, head, workers=workers)
        else:
            batched_scores(encoder, query, head, batch)
        wall.append((time.perf_counter() - w0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"ms_p50": round(statistics.median(wall), 1), "ms_p95": round(percentile(wall, 0.95), 1),
            "cpu_ms_p50": round(statistics.median(cpu), 1), "cpu_ms_p95": round(percentile(cpu, 0.95), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(locomo.default_data()))
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--questions", type=int, default=60, help="per conversation")
    parser.add_argument("--depths", default="40,30,20,10")
    parser.add_argument("--tokens", default="128,96,64")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--workers", default="1", help="threads a query's pairs are shared out over, e.g. 1,2")
    opts = parser.parse_args()
    depths = [int(d) for d in opts.depths.split(",")]
    cases = candidate_texts(Path(opts.data), opts.conversations, opts.questions, max(depths))
    before = rss_mb()
    encoder = rerank.CrossEncoder()
    encoder.score("warm up", ["warm up"])
    loaded = rss_mb()
    results = []
    for tokens in [int(t) for t in opts.tokens.split(",")]:
        rerank.MAX_PAIR_TOKENS = tokens
        encoder._tokenizer.enable_truncation(max_length=tokens, strategy="longest_first")
        lengths = [len(e.ids) for q, texts in cases for e in encoder._tokenizer.encode_batch([(q, t) for t in texts])]
        for depth in depths:
            for workers in [int(w) for w in opts.workers.split(",")]:
                row = {"tokens": tokens, "depth": depth, "batch": opts.batch, "workers": workers,
                       "mean_pair_tokens": round(statistics.fmean(lengths), 1),
                       **measure(encoder, cases, depth, opts.batch, workers)}
                results.append(row)
                print(row, flush=True)
    print(json.dumps({"benchmark": "rerank_cost", "date": time.strftime("%Y-%m-%d"), "commit": locomo.commit(),
                      "queries": len(cases), "threads": 1, "load_avg": os.getloadavg()[0],
                      "rss_model_mb": round(loaded - before, 1), "rss_after_mb": round(rss_mb() - before, 1),
                      "results": results}))


if __name__ == "__main__":
    main()
