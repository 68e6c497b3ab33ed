"""Mixed load: concurrent clients hitting observe, smart-search, context and working memory.

    python bench/load.py [--clients 16] [--seconds 60] [--seed-obs 2000] [--url URL]

Starts ``python src/app.py`` (gunicorn gthread, the local embedder if installed) on a free
127.0.0.1 port with a fresh database (unless --url is given), seeds it, then runs the clients
for the given time with keep-alive connections. Each client picks operations at random with
weights observe 45 %, smart-search 25 %, context 10 %, working-memory set 8 %, get 7 %, append
5 %. Prints throughput and p50/p95/p99 per route, the error count (must be 0) and the server's
RSS before and after, then one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import payload, start_server  # noqa: E402

WORDS = ("migration database auth token cache deploy flaky test parser retry timeout index "
         "schema config docker queue worker build lint release rollback").split()
MIX = (("observe", 45), ("smart_search", 25), ("context", 10), ("wm_set", 8), ("wm_get", 7),
       ("wm_append", 5))


def rss_mb(pid: int) -> float:
    """RSS of a gunicorn master's worker (the process holding the app), in MB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for p in pids[1:] or pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return round(total / 1024, 1)


def request(conn: http.client.HTTPConnection, op: str, client: int, i: int, rng: random.Random) -> int:
    session = f"load-{client}-{i // 400}"
    query = " ".join(rng.sample(WORDS, 3))
    bodies = {
        "observe": ("POST", "/agentmemory/observe", payload("load", client, i)),
        "smart_search": ("POST", "/agentmemory/smart-search",
                         json.dumps({"query": query, "limit": 10, "project": "bench"}).encode()),
        "context": ("POST", "/agentmemory/context",
                    json.dumps({"sessionId": session, "project": "bench"}).encode()),
        "wm_set": ("POST", "/agentmemory/working/set",
                   json.dumps({"sessionId": session, "key": f"k{i % 50}", "value": {"step": i}}).encode()),
        "wm_get": ("POST", "/agentmemory/working/get",
                   json.dumps({"sessionId": session, "key": f"k{i % 50}"}).encode()),
        "wm_append": ("POST", "/agentmemory/working/scratchpad",
                      json.dumps({"sessionId": session, "operation": "append",
                                  "content": f"note {i}: {query}"}).encode()),
    }
    method, path, body = bodies[op]
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def run(url: str, clients: int, seconds: float) -> tuple[dict[str, list[float]], dict[str, int], float]:
    host, port = url.split("//")[1].split(":")
    latencies: dict[str, list[float]] = {op: [] for op, _ in MIX}
    errors: dict[str, int] = {op: 0 for op, _ in MIX}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    ops, weights = zip(*MIX)

    def worker(c: int) -> None:
        rng = random.Random(c)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        mine: dict[str, list[float]] = {op: [] for op in ops}
        bad: dict[str, int] = {op: 0 for op in ops}
        i = 0
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            t0 = time.perf_counter()
            status = request(conn, op, c, i, rng)
            mine[op].append(time.perf_counter() - t0)
            if status >= 400:
                bad[op] += 1
            i += 1
        conn.close()
        with lock:
            for op in ops:
                latencies[op] += mine[op]
                errors[op] += bad[op]

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return round(values[0] * 1000, 2) if values else 0.0
    return round(statistics.quantiles(values, n=100)[p - 1] * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed-obs", type=int, default=2000, help="observations stored before the run")
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--url")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    proc, url = (None, args.url) if args.url else start_server(tmp.name, args.threads)
    try:
        run_seed(url, args.seed_obs)
        before = rss_mb(proc.pid) if proc else None
        latencies, errors, elapsed = run(url, args.clients, args.seconds)
        after = rss_mb(proc.pid) if proc else None
        total = sum(len(v) for v in latencies.values())
        routes = {op: {"requests": len(v), "per_s": round(len(v) / elapsed, 1), "p50_ms": pct(v, 50),
                       "p95_ms": pct(v, 95), "p99_ms": pct(v, 99), "errors": errors[op]}
                  for op, v in latencies.items()}
        print(f"{args.clients} clients for {elapsed:.0f} s over {args.seed_obs} seeded observations "
              f"(cpus: {os.cpu_count()}):")
        for op, r in routes.items():
            print(f"  {op:13s} {r['requests']:6d} req  {r['per_s']:7.1f}/s  p50 {r['p50_ms']:7.2f}  "
                  f"p95 {r['p95_ms']:7.2f}  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}")
        print(f"  total {total} requests, {total / elapsed:.1f}/s, errors {sum(errors.values())}; "
              f"RSS {before} MB -> {after} MB")
        print(json.dumps({"clients": args.clients, "seconds": round(elapsed, 1), "seeded": args.seed_obs,
                          "requests": total, "per_s": round(total / elapsed, 1),
                          "errors": sum(errors.values()), "rss_before_mb": before, "rss_after_mb": after,
                          "routes": routes}))
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
        tmp.cleanup()


def run_seed(url: str, count: int) -> None:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    for i in range(count):
        conn.request("POST", "/agentmemory/observe", body=payload("seed", i % 8, i),
                     headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    conn.close()


if __name__ == "__main__":
    main()
