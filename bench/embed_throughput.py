"""Throughput of the offline embedder, option by option, with its LoCoMo quality.

    python bench/embed_throughput.py [--records 2000] [--options all|NAME,...] [--quality]

Texts are what the product embeds: records are written through the product's own tools into a
temporary database (``agent_observe`` with coding-agent tool calls from bench/search_latency.py,
and LoCoMo conversation turns written as bench/locomo.py writes them), then taken from the
embedding backlog and turned into text by ``vectors_backlog.embedding_text``, exactly as the worker does.
Each option embeds every text in this process (documents, as the background worker does) after a
short warm-up; it prints records/s (wall clock: what "records/s on 2 cores" means), records per
CPU-second (steadier on a shared machine) and the process's peak RSS. With ``--quality`` each
option also runs bench/locomo.py's vector-only and hybrid evaluation (several minutes each).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
import search_latency  # noqa: E402

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.retrieval.late_interaction import LateEncoder  # noqa: E402
from agentmemory_server.retrieval.local_models import LocalEmbedder  # noqa: E402
from agentmemory_server.retrieval.vectors_backlog import embedding_text  # noqa: E402
from agentmemory_server.retrieval import vectors_backlog  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402

CORES = os.cpu_count() or 1
# name -> (LocalEmbedder keyword arguments, the settings that select it in the product)
OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "main: minilm-l6, 1 thread, batches of 4 in arrival order, 256 tokens": (
        {"model": "minilm-l6", "threads": 1, "batch": 4, "sort_by_length": False, "max_tokens": 256},
        {"local_model": "minilm-l6", "embed_max_tokens": 256},
    ),
    "minilm-l6, 1 thread, sorted batches of 16": (
        {"model": "minilm-l6", "threads": 1, "batch": 16, "max_tokens": 256},
        {"local_model": "minilm-l6", "embed_max_tokens": 256},
    ),
    f"minilm-l6, {CORES} threads, sorted batches of 16": (
        {"model": "minilm-l6", "threads": CORES, "batch": 16, "max_tokens": 256},
        {"local_model": "minilm-l6", "embed_max_tokens": 256},
    ),
    f"minilm-l6, {CORES} threads, sorted batches of 16, 128 tokens": (
        {"model": "minilm-l6", "threads": CORES, "batch": 16, "max_tokens": 128},
        {"local_model": "minilm-l6", "embed_max_tokens": 128},
    ),
    f"minilm-l6, {CORES} threads, sorted batches of 16, 64 tokens (default)": (
        {"model": "minilm-l6", "threads": CORES, "batch": 16, "max_tokens": 64},
        {"local_model": "minilm-l6", "embed_max_tokens": 64},
    ),
    f"minilm-l6, {CORES} threads, sorted batches of 64, 128 tokens": (
        {"model": "minilm-l6", "threads": CORES, "batch": 64, "max_tokens": 128},
        {"local_model": "minilm-l6", "embed_max_tokens": 128},
    ),
    f"bge-small int8, {CORES} threads, sorted batches of 16, 64 tokens": (
        {"model": "bge-small", "threads": CORES, "batch": 16, "max_tokens": 64},
        {"local_model": "bge-small", "embed_max_tokens": 64},
    ),
    f"bge-small int8, {CORES} threads, sorted batches of 16, 128 tokens": (
        {"model": "bge-small", "threads": CORES, "batch": 16, "max_tokens": 128},
        {"local_model": "bge-small", "embed_max_tokens": 128},
    ),
    f"minilm-l3 fp32, {CORES} threads, sorted batches of 16, 128 tokens": (
        {"model": "minilm-l3", "threads": CORES, "batch": 16, "max_tokens": 128},
        {"local_model": "minilm-l3", "embed_max_tokens": 128},
    ),
    f"minilm-l3 int8, {CORES} threads, sorted batches of 16, 128 tokens": (
        {"model": "minilm-l3-int8", "threads": CORES, "batch": 16, "max_tokens": 128},
        {"local_model": "minilm-l3-int8", "embed_max_tokens": 128},
    ),
}


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def product_texts(records: int) -> dict[str, list[str]]:
    """The texts the worker would embed for ``records`` coding observations and LoCoMo turns."""
    corpora: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # "hash": a provider must exist, or nothing is queued for embedding.
        rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider="hash"))
        try:
            ctx, rng = Ctx(rt, source="bench"), random.Random(7)
            for i in range(records):
                registry.call(ctx, "agent_observe", search_latency.payload(rng, i))
            corpora["coding"] = _backlog_texts(rt)
            with rt.db.transaction("bench") as tx:
                tx.vectors.backlog_done([r["rowid"] for r in tx.vectors.backlog_take(10**9, time.time())], "9999")
            samples = json.loads(locomo.default_data().read_text())
            done = 0
            for sample in samples:
                for number, _date, turns in locomo.sessions_of(sample["conversation"]):
                    for turn in turns:
                        if done < records:
                            registry.call(ctx, "agent_observe", {
                                "sessionId": f"{sample['sample_id']}-{number}", "project": sample["sample_id"],
                                "hookType": "observation", "content": locomo.turn_text(turn), "type": "conversation"})
                            done += 1
            corpora["locomo"] = _backlog_texts(rt)
        finally:
            rt.close()
    return corpora


def _backlog_texts(rt: Any) -> list[str]:
    rows = rt.db.reader().vectors.backlog_take(10**9, time.time())
    OWN_TEXTS.extend(embedding_text(r["title"], r["body"], r["concepts"]) for r in rows)
    return [embedding_text(r["title"], r["body"], r["concepts"], r["context"]) for r in rows]


OWN_TEXTS: list[str] = []  # the same records without their context: what late interaction reads


def measure(kwargs: dict[str, Any], texts: list[str], repeat: int, own: list[str] | None = None) -> dict[str, Any]:
    """Median of ``repeat`` timed passes (a shared machine's load comes and goes), with the
    spread and the load average when it ended. With ``own`` (``--late``), each pass also
    computes those texts' token vectors, as the worker does with late interaction on."""
    # A quantised model file is made once in this directory, outside the timing.
    embedder = LocalEmbedder(**kwargs, data_dir=Path(tempfile.gettempdir()) / "agentmemory-bench-models")
    embedder.embed(texts[:32])
    late = LateEncoder(threads=kwargs["threads"]) if own is not None else None
    if late is not None:
        late.documents(texts[:32])
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        embedder.embed(texts)
        if late is not None:
            late.documents(own or [])
        walls.append(len(texts) / (time.perf_counter() - wall))
        cpus.append(len(texts) / (time.process_time() - cpu))
    walls.sort()
    return {"records_per_s": round(statistics.median(walls), 1), "min_max": [round(walls[0]), round(walls[-1])],
            "records_per_cpu_s": round(statistics.median(cpus), 1), "load": round(os.getloadavg()[0], 2)}


def query_latency(kwargs: dict[str, Any], questions: list[str]) -> dict[str, Any]:
    """Embedding one query at a time on one thread, as a request process does (the query-side
    cost of a search whose query is not in the cache): wall and CPU ms p50/p95."""
    models = Path(tempfile.gettempdir()) / "agentmemory-bench-models"
    embedder = LocalEmbedder(kwargs["model"], threads=1, max_tokens=kwargs.get("max_tokens"), data_dir=models)
    embedder.embed(questions[:8], query=True)
    walls, cpus = [], []
    for question in questions:
        wall, cpu = time.perf_counter(), time.process_time()
        embedder.embed([question], query=True)
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    walls.sort()
    cpus.sort()
    pick = lambda xs, q: round(xs[min(len(xs) - 1, int(len(xs) * q))], 2)  # noqa: E731
    return {"query_ms_p50": pick(walls, 0.5), "query_ms_p95": pick(walls, 0.95),
            "query_cpu_ms_p50": pick(cpus, 0.5), "query_cpu_ms_p95": pick(cpus, 0.95), "queries": len(questions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000, help="records per corpus")
    parser.add_argument("--options", default="all", help="comma-separated option numbers (1-based) or 'all'")
    parser.add_argument("--quality", action="store_true", help="also run LoCoMo vector-only + hybrid per option")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per option and corpus (median)")
    parser.add_argument("--queries", type=int, default=0,
                        help="also embed this many LoCoMo questions one at a time (query latency, 1 thread)")
    parser.add_argument("--context-chars", type=int,
                        help="embed this many characters of a record's session context (the product's "
                             "vectors_backlog.CONTEXT_EMBED_CHARS; 0: the record alone)")
    parser.add_argument("--late", action="store_true",
                        help="also compute each record's late-interaction token vectors, as the worker does")
    opts = parser.parse_args()
    if opts.context_chars is not None:
        vectors_backlog.CONTEXT_EMBED_CHARS = opts.context_chars
    names = list(OPTIONS)
    chosen = names if opts.options == "all" else [names[int(n) - 1] for n in opts.options.split(",")]
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, {CORES} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    corpora = product_texts(opts.records)
    own = {"coding": OWN_TEXTS[: len(corpora["coding"])], "locomo": OWN_TEXTS[len(corpora["coding"]) :]}
    for name, texts in corpora.items():
        lengths = sorted(len(t) for t in texts)
        print(f"corpus {name}: {len(texts)} records, text chars p50 {lengths[len(lengths) // 2]}, "
              f"p95 {lengths[int(len(lengths) * 0.95)]}")
    results: dict[str, Any] = {}
    quality: dict[str, Any] = {}  # options with the same model and token limit embed the same vectors
    for name in chosen:
        kwargs, settings = OPTIONS[name]
        row: dict[str, Any] = {
            corpus: measure(kwargs, texts, opts.repeat, own[corpus] if opts.late else None)
            for corpus, texts in corpora.items()
        }
        if opts.quality:
            key = json.dumps(settings, sort_keys=True)
            if key not in quality:
                summary = locomo.run(locomo.default_data(), ["vector", "hybrid"], "local", None, overrides=settings)
                quality[key] = {mode: {k: summary["modes"][mode]["overall 1-4"][k] for k in ("R@10", "NDCG@10")}
                                for mode in ("vector", "hybrid")}
            row["locomo"] = quality[key]
        if opts.queries:
            questions = [qa["question"] for sample in json.loads(locomo.default_data().read_text())
                         for qa in sample["qa"]][: opts.queries]
            row["query"] = query_latency(kwargs, questions)
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        results[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    print(json.dumps({"benchmark": "embed_throughput", "records": opts.records, "cores": CORES, "options": results}))


if __name__ == "__main__":
    main()
