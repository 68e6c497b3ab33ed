"""How many PostgreSQL statements each request costs, and what one round trip costs.

    python bench/pg_statements.py [--database-url URL] [--observations 2000]

Loads a small store into a fresh database (default: the local server of bench/pg.py), then
sends bench/scale.py's requests in process (Flask's test client, no HTTP) while counting the
statements the repositories run and the round trips they cost (a write transaction runs in
pipeline mode: BEGIN with its lock, each answer read, and COMMIT wait; the rest is sent on),
and times ``SELECT 1`` through the pool. Round trips x round trip time is the floor of a
request's time on PostgreSQL, the part SQLite does not pay (its calls stay in the process): the
capacity model in docs/deploy.md rests on it. Counts include the server's own threads (the
live event bus, the search index's applier). Prints date and commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
import pg  # noqa: E402
import scale  # noqa: E402

from agentmemory_server.adapters.web import create_app  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.storage.postgres import connections as pgconn  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402

COUNTS: Counter[str] = Counter()


def counting(cls: type, name: str, *counters: str) -> None:
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        for counter in counters:
            COUNTS[counter] += 1
        return original(self, *args, **kwargs)

    setattr(cls, name, counted)


def count_round_trips() -> None:
    import psycopg

    counting(pgconn.PooledReader, "execute", "statements", "round trips")
    counting(pgconn.TxConnection, "execute", "statements")
    counting(pgconn.PipelinedRows, "fetchone", "round trips")
    counting(pgconn.PipelinedRows, "fetchall", "round trips")
    original = psycopg.Connection.pipeline

    def pipeline(self):  # type: ignore[no-untyped-def]
        COUNTS["round trips"] += 2  # BEGIN with the lock; COMMIT
        return original(self)

    psycopg.Connection.pipeline = pipeline  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url")
    ap.add_argument("--observations", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    print(f"bench/pg_statements.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {scale.commit()}", flush=True)
    import psycopg

    admin = args.database_url or pg.server(pg.DEFAULT_DIR).get_uri()
    name = f"agentmemory_statements_{int(time.time())}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    count_round_trips()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider="none",
                                                 auth="off", database_url=url, rate_limit=0))
            try:
                client = create_app(runtime=rt).test_client()
                w = scale.Workload(args.observations // 50, 0)
                for _ in range(args.observations):
                    method, path, body = w.observe()
                    client.open(path, method=method, data=body, content_type="application/json")
                rt.db.flush()
                for name_, build in (("observe", scale.Workload.observe), ("smart-search", lambda x: x.search()),
                                     ("remember", scale.Workload.remember), ("context", scale.Workload.context)):
                    COUNTS.clear()
                    for _ in range(args.requests):
                        method, path, body = build(w)
                        reply = client.open(path, method=method, data=body, content_type="application/json")
                        assert reply.status_code < 300, reply.get_data(as_text=True)[:300]
                    print(f"  {name_:13} {COUNTS['statements'] / args.requests:6.1f} statements, "
                          f"{COUNTS['round trips'] / args.requests:6.1f} round trips per request")
                trips = []
                for _ in range(500):
                    started = time.perf_counter()
                    rt.db.reader().conn.execute("SELECT 1")
                    trips.append((time.perf_counter() - started) * 1000)
                trips.sort()
                print(f"  SELECT 1 through the pool: p50 {statistics.median(trips):.3f} ms, "
                      f"p95 {trips[int(len(trips) * 0.95)]:.3f} ms")
            finally:
                rt.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
