"""Working-memory throughput: set / get / scratchpad append on the SQLite and Redis backends.

    python bench/working_memory.py [--ops 5000] [--threads 1,4] [--keys 500] [--value-bytes 200]

Runs in-process through the tool registry (argument validation, privacy stripping, encoding
and the backend: what a REST or MCP call costs minus HTTP), on a fresh database file and, when
``redis-server`` is installed, a redis-server this script starts on a free 127.0.0.1 port
(no persistence) and stops at the end. For each backend, operation and thread count it prints
ops/s and latency percentiles, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.runtime import Runtime  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen, str] | None:
    if shutil.which("redis-server") is None:
        return None
    import redis

    port = free_port()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", workdir, "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            client.close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def measure(n_ops: int, threads: int, op: Callable[[int, int], Any]) -> dict[str, float]:
    """Run ``op(thread, i)`` n_ops times split over ``threads``; ops/s and latency in ms."""
    per = n_ops // threads
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        mine = []
        barrier.wait()
        for i in range(per):
            t0 = time.perf_counter()
            op(t, i)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(worker, t) for t in range(threads)]
        barrier.wait()
        start = time.perf_counter()
        for future in futures:
            future.result()  # re-raises a worker's error
        elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"ops": len(latencies), "ops_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(q[49] * 1000, 3), "p95_ms": round(q[94] * 1000, 3),
            "p99_ms": round(q[98] * 1000, 3)}


def bench_backend(rt: Runtime, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    ctx = Ctx(rt, source="bench")
    run = uuid.uuid4().hex[:8]
    value = {"text": "x" * args.value_bytes, "n": 1, "tags": ["a", "b"]}

    def call(name: str, **kw: Any) -> Any:
        return registry.call(ctx, name, kw)

    def session(t: int) -> str:
        return f"bench-{run}-{threads}-{t}"

    ops = {
        "set": lambda t, i: call("memory_working_set", sessionId=session(t), key=f"k{i % args.keys}",
                                 value=value, ttlSeconds=3600),
        "get": lambda t, i: call("memory_working_get", sessionId=session(t), key=f"k{i % args.keys}"),
        "append": lambda t, i: call("memory_working_scratchpad", sessionId=session(t),
                                    operation="append", content=f"step {i} done"),
    }
    return {name: measure(args.ops, threads, op) for name, op in ops.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=5000, help="operations per measurement")
    ap.add_argument("--threads", default="1,4", help="comma-separated thread counts")
    ap.add_argument("--keys", type=int, default=500, help="distinct keys per session")
    ap.add_argument("--value-bytes", type=int, default=200)
    args = ap.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    tmp = tempfile.TemporaryDirectory()
    redis_proc = start_redis(tmp.name)
    backends = ["sqlite"] + (["redis"] if redis_proc else [])
    if not redis_proc:
        print("redis-server not installed: Redis backend skipped")
    results: dict[str, Any] = {"ops_per_measurement": args.ops, "keys": args.keys,
                               "value_bytes": args.value_bytes, "backends": {}}
    try:
        for backend in backends:
            settings = Settings.from_env(
                {}, data_dir=str(Path(tmp.name) / backend), background_jobs=False,
                working_memory_backend=backend, redis_url=redis_proc[1] if redis_proc else None,
                working_memory_max_items_per_session=1000)
            rt = build_runtime(settings)
            try:
                assert rt.services["working_memory"].backend.name == backend
                results["backends"][backend] = {}
                for threads in thread_counts:
                    figures = bench_backend(rt, args, threads)
                    results["backends"][backend][f"threads_{threads}"] = figures
                    for op, f in figures.items():
                        print(f"{backend:6} {op:6} threads={threads}: {f['ops_per_s']:>8} ops/s  "
                              f"p50 {f['p50_ms']} ms  p95 {f['p95_ms']} ms  p99 {f['p99_ms']} ms")
            finally:
                rt.close()
    finally:
        if redis_proc:
            redis_proc[0].terminate()
            redis_proc[0].wait(timeout=10)
        tmp.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
