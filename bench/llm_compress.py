"""What the LLM layer costs the request path: observe latency with AGENTMEMORY_AUTO_COMPRESS
off, on (the worker compressing while clients write) and on with the model stalled, then how
fast the background backlog drains.

    python bench/llm_compress.py [--clients 8] [--requests 2000] [--model-ms 0] [--in-process 3000]

First, in process (no HTTP, no worker): the same observe calls on two runtimes, flag off and
on, interleaved in batches so machine noise hits both alike; the difference is the cost of
queueing the compression job in the observe transaction. Then over HTTP: runs the real server (gunicorn gthread) against the loopback fake Gemini from tests/ (no
network), with the ingest payloads of bench/ingest.py. ``--model-ms`` delays every fake model
answer. The machine's cores are shared with the load generator and the fake, so absolute
figures are noisy; the comparison between the runs is the point.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src"), str(ROOT / "tests")]

from agentmemory_server.kernel import registry  # noqa: E402
from fake_gemini import FakeGemini  # noqa: E402
from ingest import payload, pct, run, start_server  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402

KEY = "bench-key-0123456789"
ANSWER = {"type": "command_run", "title": "Ran the test suite", "facts": ["42 tests passed"],
          "narrative": "The agent ran pytest; everything passed.", "concepts": ["pytest", "testing"],
          "files": [], "importance": 4}


def in_process(n: int, batch: int = 100) -> dict:
    """p50/p95 of in-process observe with the flag off and on (interleaved batches)."""
    runtimes, times = {}, {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, on in (("off", False), ("on", True)):
            runtimes[label] = build_runtime(Settings.from_env(
                {}, data_dir=f"{tmp}/{label}", background_jobs=False, embedding_provider="none",
                auto_compress=on, gemini_api_key=KEY if on else None, gemini_api_base="http://127.0.0.1:9"))
        try:
            for start in range(0, n, batch):
                for label, rt in runtimes.items():
                    ctx = Ctx(rt)
                    for i in range(start, min(n, start + batch)):
                        body = json.loads(payload(label, 0, i))
                        t0 = time.perf_counter()
                        registry.call(ctx, "agent_observe", body)
                        times[label].append(time.perf_counter() - t0)
            queued = runtimes["on"].db.reader().jobs.stats()["pending"]
        finally:
            for rt in runtimes.values():
                rt.close()
    result = {f"{label}_{p}_ms": round(pct(values, p), 3) for label, values in times.items() for p in (50, 95)}
    result.update(observations=n, jobs_queued=queued)
    print(f"{'in-process observe':>22}: off p50 {result['off_50_ms']} / p95 {result['off_95_ms']} ms, "
          f"on p50 {result['on_50_ms']} / p95 {result['on_95_ms']} ms ({n} each, {queued} jobs queued)")
    return result


def measure(label: str, clients: int, total: int, env: dict[str, str], fake: FakeGemini | None = None,
            stall: bool = False) -> tuple[dict, str, object, tempfile.TemporaryDirectory]:
    tmp = tempfile.TemporaryDirectory()
    proc, url = start_server(tmp.name, 32, env)
    run(url, clients, min(400, total), f"warmup-{label}")
    if stall and fake is not None:
        fake.stall()
    lat, elapsed, errors = run(url, clients, total, label)
    result = {"run": label, "observations": len(lat), "errors": errors, "obs_per_s": round(len(lat) / elapsed, 1),
              "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2), "p99_ms": round(pct(lat, 99), 2)}
    print(f"{label:>22}: {result['obs_per_s']} obs/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
          f"p99 {result['p99_ms']} ms, errors {errors}")
    return result, url, proc, tmp


def drain(url: str, timeout: float) -> dict:
    start = time.perf_counter()
    first = requests.get(url + "/agentmemory/health", timeout=30).json()["llm"]
    while True:
        section = requests.get(url + "/agentmemory/health", timeout=30).json()["llm"]
        if section["jobs"]["pending"] == 0 or time.perf_counter() - start > timeout:
            break
        time.sleep(0.25)
    seconds = time.perf_counter() - start
    done = section["jobsDone"] - first["jobsDone"]
    return {"pending_at_start": first["jobs"]["pending"], "left": section["jobs"]["pending"],
            "drain_seconds": round(seconds, 1), "jobs_per_s": round(done / seconds, 1) if seconds else None,
            "model_calls": section["calls"], "prompt_tokens": section["promptTokens"],
            "output_tokens": section["outputTokens"], "failed": section["failed"]}


def stop(proc, tmp) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--model-ms", type=float, default=0.0, help="delay of every fake model answer")
    ap.add_argument("--drain-timeout", type=float, default=600.0)
    ap.add_argument("--in-process", type=int, default=3000, help="observations per runtime in process")
    args = ap.parse_args()
    local = in_process(args.in_process)
    fake = FakeGemini(api_key=KEY)

    def answer(_body: dict) -> dict:
        time.sleep(args.model_ms / 1000)
        return ANSWER

    fake.responder = answer
    llm_env = {"GEMINI_API_KEY": KEY, "GEMINI_API_BASE": fake.url, "AGENTMEMORY_AUTO_COMPRESS": "true",
               "EMBEDDING_PROVIDER": "none", "CONSOLIDATION_ENABLED": "false"}
    results = []
    try:
        off, _url, proc, tmp = measure("auto-compress off", args.clients, args.requests,
                                       {"EMBEDDING_PROVIDER": "none"})
        stop(proc, tmp)
        results.append(off)
        on, url, proc, tmp = measure("auto-compress on", args.clients, args.requests, llm_env)
        drained = drain(url, args.drain_timeout)
        stop(proc, tmp)
        results.append({**on, **drained})
        print(f"{'backlog':>22}: {drained['pending_at_start']} queued after the run, drained in "
              f"{drained['drain_seconds']} s ({drained['jobs_per_s']} jobs/s); {drained['model_calls']} model calls, "
              f"{drained['prompt_tokens']} prompt / {drained['output_tokens']} output tokens")
        stalled, _url, proc, tmp = measure("on, model stalled", args.clients, args.requests, llm_env, fake, stall=True)
        fake.release()
        stop(proc, tmp)
        results.append(stalled)
    finally:
        fake.close()
    print(json.dumps({"bench": "llm", "clients": args.clients, "requests": args.requests,
                      "model_ms": args.model_ms, "in_process": local, "runs": results}))


if __name__ == "__main__":
    main()
