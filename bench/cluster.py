"""Team deployment: PostgreSQL vs SQLite, worker processes, nodes, migration.

    bench/cluster.py [--sizes 10k,100k] [--seconds 8] [--workers 1,2,4] [--database-url URL]

Without --database-url it starts a local PostgreSQL with pgvector (bench/pg.py). For each size
it writes the synthetic coding-agent corpus (bench/corpus.py) as JSON Lines and bulk-loads it
(``agentmemory import FILE.jsonl``) into a SQLite file and into a fresh PostgreSQL database
(then VACUUM ANALYZE, as autovacuum would shortly after a load), then on each backend starts one server (one worker process) and measures, one client at a time:

- per-request p50/p95 of observe, smart-search, remember and context (bench/scale.py's
  requests); on PostgreSQL also smart-search with the database's own full text
  (AGENTMEMORY_LEXICAL_ENGINE=builtin) against the per-node Tantivy index;
- throughput (requests/s, 10 clients, scale.py's mixed workload) with 1, 2 and 4 worker
  processes, at the first size;
- on PostgreSQL, the time a live event takes from a write on node A to a WebSocket viewer on
  node B (two server processes over one database);
- ``agentmemory migrate`` from the SQLite file of the largest size into PostgreSQL (records/s).

Prints the date and commit first and one JSON line with everything last. Figures move 10-30 %
between runs on a shared 2-core machine: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pg  # noqa: E402
import scale  # noqa: E402
from ingest import payload, start_server  # noqa: E402
from load import rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ONE_CLIENT = {
    "observe": scale.Workload.observe,
    "smart-search": lambda w: w.search(),
    "remember": scale.Workload.remember,
    "context": scale.Workload.context,
}


class Databases:
    """Fresh PostgreSQL databases on one server, dropped at the end."""

    def __init__(self, url: str):
        self.url = url
        self.made: list[str] = []

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql)

    def create(self, label: str) -> str:
        name = f"agentmemory_bench_{label}_{os.getpid()}"
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._admin(f"CREATE DATABASE {name}")
        self.made.append(name)
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))

    def settle(self, url: str) -> None:
        """What autovacuum does in the minutes after a bulk load (statistics for the planner,
        the GIN index's pending list merged), done before measuring so that the figures are
        the steady state rather than the load's aftermath."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")

    def size_bytes(self, url: str) -> int:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def drop_all(self) -> None:
        for name in self.made:
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def env_for(url: str | None, **extra: str) -> dict[str, str]:
    env = scale.server_env("none")
    if url:
        env["AGENTMEMORY_DATABASE_URL"] = url
    env.update(extra)
    return env


def one_client(url: str, sessions: int, seconds: float) -> dict[str, dict]:
    rows = {}
    for name, make in ONE_CLIENT.items():
        latencies, errors, elapsed = scale.drive(url, sessions, 1, seconds, lambda w, m=make, n=name: (n, m(w)))
        rows.update(scale.summarize(latencies, errors, elapsed))
    return rows


def serve(data_dir: str, env: dict[str, str], workers: int = 1) -> tuple[subprocess.Popen, str]:
    extra = {k: v for k, v in env.items() if k.startswith(("AGENTMEMORY_", "EMBEDDING_"))}
    for name in ("AGENTMEMORY_LOG_LEVEL", "AGENTMEMORY_AUTH"):  # start_server sets them
        extra.pop(name, None)
    extra["AGENTMEMORY_WORKERS"] = str(workers)
    proc, url = start_server(data_dir, 32, extra)
    scale.wait_until(lambda: scale.lexical_ready(url), 1800)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def measure_backend(label: str, data_dir: str, env: dict[str, str], size: int, seconds: float) -> dict:
    proc, url = serve(data_dir, env)
    try:
        rows = one_client(url, size // 200, seconds)
        scale.print_rows(f"{label}, 1 client", rows)
        rows["rss_mb"] = rss_mb(proc.pid)  # the request process after the runs
        print(f"  RSS of the request process: {rows['rss_mb']} MB", flush=True)
    finally:
        stop(proc)
    return rows


def mixed_pick(w: scale.Workload) -> tuple[str, scale.Request]:
    """scale.py's mixed workload: observe 40 %, search 30 %, remember, memories, context 10 % each."""
    builds, weights = zip(*scale.MIXED, strict=True)
    build = w.rng.choices(builds, weights)[0]
    return dict(zip(builds, scale.MIXED_NAMES, strict=True))[build], build(w)


def throughput(data_dir: str, env: dict[str, str], workers: int, seconds: float, sessions: int) -> dict:
    proc, url = serve(data_dir, env, workers)
    try:
        latencies, errors, elapsed = scale.drive(url, sessions, 10, seconds, mixed_pick)
        total = sum(len(v) for v in latencies.values())
        return {"workers": workers, "requests_per_s": round(total / elapsed), "errors": sum(errors.values())}
    finally:
        stop(proc)


def live_latency(url: str, tmp: str, samples: int = 40) -> dict:
    """Write on node A, time until node B's viewer has the event."""
    from websockets.sync.client import connect

    a_proc, a_url = serve(str(Path(tmp) / "node-a"), env_for(url))
    b_proc, b_url = serve(str(Path(tmp) / "node-b"), env_for(url))
    took: list[float] = []
    try:
        with connect(b_url.replace("http", "ws") + "/stream/mem-live/viewer", open_timeout=10) as ws:
            json.loads(ws.recv(timeout=10))  # hello
            client = scale.Client(a_url)
            for i in range(samples):
                started = time.perf_counter()
                status, body, _ = client.send(("POST", "/agentmemory/observe", payload("live", 0, i)))
                wanted = json.loads(body)["observationId"]
                while True:
                    event = json.loads(ws.recv(timeout=10))
                    if event.get("type") == "observation" and event["record"]["id"] == wanted:
                        took.append(time.perf_counter() - started)
                        break
                time.sleep(0.05)
    finally:
        stop(a_proc)
        stop(b_proc)
    return {"samples": len(took), "p50_ms": scale.pct(took, 50), "p95_ms": scale.pct(took, 95)}


def migrate_speed(sqlite_dir: str, url: str) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "cli.py"), "--quiet", "migrate", "--to", url],
        env={**env_for(None), "AGENTMEMORY_DATA_DIR": sqlite_dir}, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"migrate failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    seconds = time.perf_counter() - started
    return {"records": result["records"], "seconds": round(seconds, 1), "per_s": round(result["records"] / seconds),
            "verified": result["verified"]["ok"]}


def run_size(size: int, args: argparse.Namespace, dbs: Databases, tmp: str, first: bool, last: bool) -> dict:
    print(f"\n== {size:,} observations + {args.memories:,} memories", flush=True)
    source = Path(tmp) / f"corpus-{size}.jsonl"
    scale.write_corpus(source, size, args.memories)
    sqlite_dir = str(Path(tmp) / f"sqlite-{size}")
    pg_url = dbs.create(f"s{size}")
    report: dict = {"observations": size, "memories": args.memories}
    report["import_sqlite"] = scale.bulk_import(sqlite_dir, source, env_for(None))
    report["import_postgresql"] = scale.bulk_import(str(Path(tmp) / f"pgnode-{size}"), source, env_for(pg_url))
    dbs.settle(pg_url)
    source.unlink()
    report["postgresql_bytes"] = dbs.size_bytes(pg_url)
    sqlite_file = Path(sqlite_dir) / "agentmemory.db"
    report["sqlite_bytes"] = sqlite_file.stat().st_size if sqlite_file.exists() else None
    print(f"  stored: PostgreSQL {report['postgresql_bytes'] / 1e6:.0f} MB, SQLite "
          f"{(report['sqlite_bytes'] or 0) / 1e6:.0f} MB", flush=True)
    print(f"  bulk import: SQLite {report['import_sqlite']['per_s']:,}/s, "
          f"PostgreSQL {report['import_postgresql']['per_s']:,}/s", flush=True)
    report["sqlite"] = measure_backend("SQLite", sqlite_dir, env_for(None), size, args.seconds)
    pg_dir = str(Path(tmp) / f"pgnode-{size}")
    report["postgresql"] = measure_backend("PostgreSQL (Tantivy)", pg_dir, env_for(pg_url), size, args.seconds)
    builtin = env_for(pg_url, AGENTMEMORY_LEXICAL_ENGINE="builtin")
    proc, url = serve(str(Path(tmp) / f"pgbuiltin-{size}"), builtin)
    try:
        latencies, errors, elapsed = scale.drive(url, size // 200, 1, args.seconds, lambda w: ("search", w.search()))
        report["postgresql_fulltext_search"] = scale.summarize(latencies, errors, elapsed)
        scale.print_rows("PostgreSQL full text (builtin), 1 client", report["postgresql_fulltext_search"])
    finally:
        stop(proc)
    if first:
        report["throughput"] = {}
        for backend, data_dir, env in (("sqlite", sqlite_dir, env_for(None)), ("postgresql", pg_dir, env_for(pg_url))):
            report["throughput"][backend] = [throughput(data_dir, env, w, args.seconds, size // 200)
                                             for w in args.workers]
            print(f"  throughput {backend}: {report['throughput'][backend]}", flush=True)
        report["live_event_cross_node"] = live_latency(pg_url, tmp)
        print(f"  live event A -> viewer on B: {report['live_event_cross_node']}", flush=True)
    if last:
        report["migrate_sqlite_to_postgresql"] = migrate_speed(sqlite_dir, dbs.create(f"m{size}"))
        print(f"  migrate: {report['migrate_sqlite_to_postgresql']}", flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,100k")
    ap.add_argument("--memories", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--database-url", help="a PostgreSQL server (default: start one with bench/pg.py)")
    args = ap.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench/cluster.py, {stamp}, commit {scale.commit()}, {os.cpu_count()} cpus", flush=True)
    url = args.database_url or pg.server(pg.DEFAULT_DIR).get_uri()
    dbs = Databases(url)
    sizes = [scale.parse_size(s) for s in args.sizes.split(",")]
    try:
        with tempfile.TemporaryDirectory(prefix="cluster-") as tmp:
            report = [run_size(s, args, dbs, tmp, i == 0, i == len(sizes) - 1) for i, s in enumerate(sizes)]
    finally:
        dbs.drop_all()
    print(json.dumps({"date": stamp, "commit": scale.commit(), "sizes": report}))


if __name__ == "__main__":
    main()
