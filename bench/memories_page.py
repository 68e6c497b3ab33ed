"""GET /memories paging at scale: the first page and a page deep in the listing, by keyset cursor
(nextCursor) and by offset, through the registry (in-process, no HTTP).

    .venv/bin/python bench/memories_page.py [--memories 100000] [--pages 50]

Memories are written straight into the record store (the same JSON remember writes, without
the supersede search), so 100k take seconds. Prints percentiles per mode, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.scopes import MEMORIES  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.kernel.util import iso  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402


def seed(rt, n: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with rt.db.transaction("bench_seed") as tx:
        for i in range(n):
            when = iso(start + timedelta(seconds=i))
            memory = {"id": f"mem_{i:08d}", "createdAt": when, "updatedAt": when, "type": "fact",
                      "title": f"memory {i}", "content": f"memory number {i} about topic {i % 97}",
                      "concepts": [], "files": [], "sessionIds": [], "strength": 7, "version": 1,
                      "isLatest": True, "project": f"p{i % 10}"}
            tx.records.set(MEMORIES, memory["id"], memory, now=when)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=50)
    opts = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False, embedding_provider="none",
                                             auth="off"))
        try:
            started = time.perf_counter()
            seed(rt, opts.memories)
            seeded = time.perf_counter() - started
            ctx = Ctx(rt, source="bench")
            call = lambda **args: registry.unwrap(registry.call(ctx, "memories_list", args))[0]  # noqa: E731
            cursor = None
            for _ in range(opts.pages):  # walk deep first, keeping the last cursor
                cursor = call(limit=100, **({"cursor": cursor} if cursor else {}))["nextCursor"]
            results = {
                "first page (counts the total)": [timed(lambda: call(limit=100)) for _ in range(20)],
                f"cursor page {opts.pages + 1}": [timed(lambda: call(limit=100, cursor=cursor)) for _ in range(20)],
                f"offset {opts.pages * 100}": [timed(lambda: call(limit=100, offset=opts.pages * 100)) for _ in range(20)],
            }
        finally:
            rt.close()
    print(f"{datetime.now(UTC):%Y-%m-%d} commit {commit}: {opts.memories} memories (seeded in {seeded:.1f} s)")
    summary = {}
    for name, values in results.items():
        summary[name] = {"p50_ms": pct(values, 0.5), "p95_ms": pct(values, 0.95), "mean_ms": round(statistics.mean(values), 2)}
        print(f"  {name:32s} p50 {summary[name]['p50_ms']:8.2f} ms  p95 {summary[name]['p95_ms']:8.2f} ms")
    print(json.dumps({"benchmark": "memories-page", "memories": opts.memories, "commit": commit, "results": summary}))


if __name__ == "__main__":
    main()
