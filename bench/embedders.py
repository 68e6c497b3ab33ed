"""Speed and memory of candidate local embedders and rerankers (quality: bench/locomo.py --embedder).

    python bench/embedders.py [DATA] [--models minilm-l6,bge-small] [--threads 1,2] [--records 600]
        [--rerankers minilm-l12-ce] [--pairs 20]

Embeds LoCoMo turns as the product stores them (``Speaker said, "..."`` with two records of
session context) in document batches, with each model in a fresh process so RSS is that model's
own, and prints records/s, the process RSS after loading and after embedding, and the model file
size. With ``--rerankers`` it times reranking ``--pairs`` candidates for each of 50 questions
(p50/p95 ms per query). Wall-clock figures depend on what else the shared cores run; each is
printed beside the process's CPU time for the same work (``cpu``: records per CPU-second, CPU ms
per query), which other load barely changes. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus(data: Path, records: int) -> tuple[list[str], list[str]]:
    import locomo

    samples = json.loads(data.read_text())
    texts, questions = [], []
    for sample in samples:
        for _, _, turns in locomo.sessions_of(sample["conversation"]):
            bodies = [locomo.turn_text(t) for t in turns]
            for i, body in enumerate(bodies):
                context = " | ".join(b[:200] for b in reversed(bodies[max(0, i - 2) : i]))
                texts.append(body + ("\n" + context if context else ""))
        questions += [qa["question"] for qa in sample["qa"]]
    return texts[:records], questions


def measure_embedder(name: str, threads: int, data: Path, records: int, out: Any) -> None:
    import candidates

    texts, _ = corpus(data, records)
    before = rss_mb()
    model = candidates.make(name, threads=threads)
    model.embed(["warm up"], query=True)
    loaded = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), 64):  # the backlog worker's batch size
        model.embed(texts[start : start + 64])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    q_ms = []
    for q in texts[:50]:
        q0 = time.perf_counter()
        model.embed([q[:120]], query=True)
        q_ms.append((time.perf_counter() - q0) * 1000)
    out.put({"model": name, "threads": threads, "records": len(texts), "records_per_s": round(len(texts) / seconds, 1),
             "records_per_cpu_s": round(len(texts) / cpu, 1), "query_ms_p50": round(statistics.median(q_ms), 2), "rss_loaded_mb": round(loaded - before, 1),
             "rss_after_mb": round(rss_mb() - before, 1)})


def measure_reranker(name: str, threads: int, data: Path, pairs: int, out: Any) -> None:
    import candidates

    texts, questions = corpus(data, 2000)
    before = rss_mb()
    model = candidates.make_reranker(name, threads=threads)
    model.score("warm up", ["warm up"])
    loaded = rss_mb()
    lat, cpu = [], []
    for i, q in enumerate(questions[:50]):
        docs = texts[i * 7 : i * 7 + pairs]
        q0, c0 = time.perf_counter(), time.process_time()
        model.score(q, docs)
        lat.append((time.perf_counter() - q0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    lat.sort()
    cpu.sort()
    out.put({"reranker": name, "threads": threads, "pairs": pairs, "ms_p50": round(statistics.median(lat), 1),
             "ms_p95": round(lat[int(len(lat) * 0.95) - 1], 1), "cpu_ms_p50": round(statistics.median(cpu), 1),
             "cpu_ms_p95": round(cpu[int(len(cpu) * 0.95) - 1], 1), "rss_loaded_mb": round(loaded - before, 1),
             "rss_after_mb": round(rss_mb() - before, 1)})


def in_child(target: Any, *args: Any) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    return result


def main() -> None:
    import locomo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(locomo.default_data()))
    parser.add_argument("--models", default="minilm-l6,bge-small")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--rerankers", default="")
    parser.add_argument("--pairs", type=int, default=20)
    opts = parser.parse_args()
    results = []
    for threads in [int(t) for t in opts.threads.split(",")]:
        for name in [m for m in opts.models.split(",") if m]:
            results.append(in_child(measure_embedder, name, threads, Path(opts.data), opts.records))
            print(results[-1], flush=True)
        for name in [m for m in opts.rerankers.split(",") if m]:
            results.append(in_child(measure_reranker, name, threads, Path(opts.data), opts.pairs))
            print(results[-1], flush=True)
    print(json.dumps({"benchmark": "embedders", "date": time.strftime("%Y-%m-%d"), "commit": locomo.commit(),
                      "results": results}))


if __name__ == "__main__":
    main()
