"""Observe throughput and latency with N concurrent HTTP clients against the real server.

    python bench/ingest.py [--clients 8] [--requests 4000] [--threads 32] [--url URL]

Starts ``python src/app.py`` (gunicorn gthread) on a free 127.0.0.1 port with a fresh database
(unless --url points at a running server), warms up, then sends upstream-shaped post_tool_use
payloads (~1 KB, a secret in every tenth) from client threads with keep-alive sessions and
prints observations/s and latency percentiles. Target (SPEC §11): >= 800 obs/s, p95 < 20 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from machine import describe, reference

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: str, threads: int, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    env.update(AGENTMEMORY_DATA_DIR=data_dir, PORT=str(port), HOST="127.0.0.1",
               AGENTMEMORY_THREADS=str(threads), AGENTMEMORY_LOG_LEVEL="warning", AGENTMEMORY_RATE_LIMIT="0",
               AGENTMEMORY_AUTH="off", **(extra_env or {}))
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "app.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(url + "/agentmemory/livez", timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def payload(run_id: str, client: int, i: int) -> bytes:
    output = f"collected 42 items; test_{i} passed; " + "log line with some detail " * 30
    if i % 10 == 0:
        output += " export OPENAI_API_KEY=sk-" + "x" * 40
    return json.dumps({
        "hookType": "post_tool_use", "sessionId": f"bench-{run_id}-{client}-{i // 400}", "project": "bench",
        "cwd": "/work/bench", "timestamp": f"2026-11-01T10:{(i // 60) % 60:02d}:{i % 60:02d}.{client:03d}Z",
        "data": {"tool_name": "Bash", "tool_input": {"command": f"pytest tests/test_{i}.py -q"},
                 "tool_output": output},
    }).encode()


def run(url: str, clients: int, total: int, run_id: str, expect: int = 201) -> tuple[list[float], float, int]:
    """``total`` observe calls from ``clients`` keep-alive connections: (latencies, seconds,
    answers other than ``expect``)."""
    per_client = total // clients
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    host, port = url.split("//")[1].split(":")

    def worker(c: int) -> None:
        # http.client keep-alive: a light load generator, so the clients (which share the
        # machine's 2 cores with the server) cost as little CPU as possible.
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Content-Type": "application/json"}
        bodies = [payload(run_id, c, i) for i in range(per_client)]
        mine = []
        barrier.wait()
        for body in bodies:
            t0 = time.perf_counter()
            conn.request("POST", "/agentmemory/observe", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - t0)
            if response.status != expect:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, errors[0]


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] * 1000 if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=32, help="server gthread threads")
    ap.add_argument("--url", help="benchmark a running server instead of starting one")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    proc = None
    url = args.url
    if not url:
        proc, url = start_server(tmp.name, args.threads)
    try:
        run(url, args.clients, min(400, args.requests), "warmup")
        # A fresh run id: against a running server (--url) a repeated run would only post duplicates.
        machine = reference()  # before the timed run: the loop would compete with it
        lat, elapsed, errors = run(url, args.clients, args.requests, f"main-{os.getpid()}-{time.time_ns()}")
        n = len(lat)
        result = {"clients": args.clients, "observations": n, "errors": errors,
                  "seconds": round(elapsed, 2), "obs_per_s": round(n / elapsed, 1),
                  "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2),
                  "p99_ms": round(pct(lat, 99), 2), "max_ms": round(max(lat) * 1000, 2)}
        print(f"observe x{n} with {args.clients} clients: {result['obs_per_s']} obs/s, "
              f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, p99 {result['p99_ms']} ms, "
              f"errors {errors}")
        print(describe(machine))
        print(json.dumps({**result, "machine": machine}))
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=20)
        tmp.cleanup()


if __name__ == "__main__":
    main()
