"""Request latency while the embedding backlog drains, against a real server over real HTTP.

    python bench/background_load.py [--records 10000] [--seconds 60]

1. Starts ``python src/app.py`` with the local embedder and no background worker
   (``AGENTMEMORY_BACKGROUND=external``), ingests ``--records`` coding-agent observations over
   HTTP, then runs ``agentmemory worker`` until the backlog is empty: the drain rate with no
   requests (full speed).
2. Idle: one client alternates smart-search (hybrid, a project filter, queries from
   bench/search_latency.py) and observe for ``--seconds``; nothing is being embedded.
3. Ingests another ``--records`` observations (a fresh backlog), starts the worker again and
   runs the same client for ``--seconds`` while it drains: latency under background work, and
   how far the backlog got.
4. Stops the client and times the rest of the drain (full speed again).

The worker is started by hand here (``AGENTMEMORY_BACKGROUND=external``) so the phases can be
controlled; it is the same process, priority and pacing the server's own supervisor starts by
default. Prints p50/p95/p99 per endpoint per phase, drain rates, RSS of the server and the
worker, corpus size, date and commit; ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import free_port  # noqa: E402
from search_latency import QUERIES, payload  # noqa: E402


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Server:
    def __init__(self, data_dir: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/agentmemory"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
        self.env.update(AGENTMEMORY_DATA_DIR=data_dir, PORT=str(self.port), HOST="127.0.0.1",
                        AGENTMEMORY_AUTH="off", AGENTMEMORY_LOG_LEVEL="warning", EMBEDDING_PROVIDER="local",
                        AGENTMEMORY_BACKGROUND="external", AGENTMEMORY_RATE_LIMIT="0")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "app.py")], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.worker: subprocess.Popen | None = None
        for _ in range(300):
            try:
                requests.get(self.url + "/livez", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            self.stop()
            raise SystemExit("the server did not start")

    @property
    def app_pid(self) -> int:
        """The gunicorn worker serving requests (the master's child)."""
        kids = [p for p in children(self.proc.pid) if self.worker is None or p != self.worker.pid]
        return kids[0] if kids else self.proc.pid

    def start_worker(self) -> None:
        self.worker = subprocess.Popen([sys.executable, "-m", "agentmemory_server.adapters.cli", "worker"],
                                       env={**self.env, "PYTHONPATH": str(ROOT / "src")},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait(timeout=60)
            self.worker = None

    def backlog(self) -> int:
        return int(requests.get(self.url + "/health", timeout=30).json()["vectors"]["backlog"])

    def vectors(self) -> int:
        """Vectors the server can search (its index follows what the worker stores)."""
        return int(requests.get(self.url + "/health", timeout=30).json()["vectors"]["vectors"] or 0)

    def stop(self) -> None:
        self.stop_worker()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ingest(server: Server, records: int, offset: int) -> float:
    rng = random.Random(offset)
    t0 = time.perf_counter()

    def client(c: int) -> None:
        with requests.Session() as http:
            for i in range(offset + c, offset + records, 4):
                http.post(server.url + "/observe", json=payload(rng, i), timeout=30).raise_for_status()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def drain(server: Server, timeout: float = 3600) -> dict[str, float]:
    """Until the backlog has stayed empty for three polls a second apart: with late interaction
    on, a long backlog first gets dense vectors only and is then queued again for its token
    vectors (docs/search.md), so an empty backlog seen once is not the end of the work."""
    start_backlog, t0, empty, emptied = server.backlog(), time.perf_counter(), 0, 0.0
    dense_target, dense_done = server.vectors() + start_backlog, None  # every record searchable by meaning
    while empty < 3 and time.perf_counter() - t0 < timeout:
        left = server.backlog()
        if left == 0 and empty == 0:
            emptied = time.perf_counter()
        empty = empty + 1 if left == 0 else 0
        if dense_done is None and server.vectors() >= dense_target:
            dense_done = time.perf_counter() - t0
        time.sleep(1.0)
    took = (emptied if empty == 3 else time.perf_counter()) - t0
    return {"records": start_backlog - left, "seconds": round(took, 1),
            "records_per_s": round((start_backlog - left) / max(took, 1e-9), 1),
            "dense_seconds": None if dense_done is None else round(dense_done, 1)}


def load(server: Server, seconds: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    times: dict[str, list[float]] = {"smart-search": [], "observe": []}
    deadline, i = time.perf_counter() + seconds, 0
    with requests.Session() as http:
        while time.perf_counter() < deadline:
            query = rng.choice(QUERIES)
            t = time.perf_counter()
            body = http.post(server.url + "/smart-search", json={"query": query, "project": f"proj-{i % 4}",
                                                                 "limit": 10}, timeout=30).json()
            times["smart-search"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            http.post(server.url + "/observe", json=payload(rng, 10_000_000 + seed * 100_000 + i),
                      timeout=30).raise_for_status()
            times["observe"].append((time.perf_counter() - t) * 1000)
            i += 1
    out: dict[str, Any] = {"mode_reported": body.get("mode")}
    for name, values in times.items():
        values.sort()
        out[name] = {"n": len(values), "p50_ms": round(values[len(values) // 2], 1),
                     "p95_ms": round(values[int(len(values) * 0.95)], 1),
                     "p99_ms": round(values[int(len(values) * 0.99)], 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    opts = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, {os.cpu_count()} cores, "
          f"{opts.records} records per backlog, load average {os.getloadavg()[0]:.2f}", flush=True)
    result: dict[str, Any] = {"records": opts.records}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(tmp)
        try:
            result["ingest_s"] = round(ingest(server, opts.records, 0), 1)
            server.start_worker()
            result["first_drain_idle"] = drain(server)
            print(f"first backlog drained with no requests: {result['first_drain_idle']}", flush=True)
            server.stop_worker()
            result["idle"] = load(server, opts.seconds, 1)
            print(f"idle: {json.dumps(result['idle'])}", flush=True)
            ingest(server, opts.records, 1_000_000)
            before = server.vectors()
            server.start_worker()
            result["during_drain"] = load(server, opts.seconds, 2)
            embedded = server.vectors() - before
            result["during_drain"]["embedded_during_load"] = embedded
            result["during_drain"]["records_per_s_under_load"] = round(embedded / opts.seconds, 1)
            result["rss_mb"] = {"server": rss_mb(server.app_pid),
                                "worker": rss_mb(server.worker.pid) if server.worker else None}
            print(f"during drain: {json.dumps(result['during_drain'])}", flush=True)
            result["rest_drain_idle"] = drain(server)
            print(f"rest drained with no requests: {result['rest_drain_idle']}", flush=True)
        finally:
            server.stop()
    for name in ("smart-search", "observe"):
        idle, busy = result["idle"][name]["p95_ms"], result["during_drain"][name]["p95_ms"]
        result[f"{name}_p95_ratio"] = round(busy / idle, 2)
        print(f"{name}: p95 idle {idle} ms, while draining {busy} ms (x{result[f'{name}_p95_ratio']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
