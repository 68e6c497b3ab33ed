"""What ``agentmemory recompress`` costs on a store of coding-agent sessions.

    python bench/recompress.py [--rounds 150] [--database-url postgresql://...]

Captures every agent's fixture session (tests/fixtures/clients: Claude Code, Codex, Cursor,
Gemini, Antigravity, Cline, Copilot, OpenCode; 66 hook events) ``--rounds`` times through the
hook routes into a fresh store, each round its own sessions (each ends, so each has a summary).
It then makes every record look as an older capture left it (the title changed, the search row
indexed from it) and every summary as an older release wrote it, and times a dry run, a real run
and a second run (which finds nothing left to do). Prints the counts, the wall time, records per
second and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from agentmemory_server.adapters.web import create_app  # noqa: E402
from agentmemory_server.kernel.scopes import OBSERVATIONS_PREFIX, SUMMARIES  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.operations import recompress  # noqa: E402
from agentmemory_server.retrieval import search  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "clients"
SESSION_KEYS = ("session_id", "conversation_id", "taskId", "sessionId")


def capture(rt, rounds: int) -> int:
    client = create_app(runtime=rt).test_client()
    files = sorted(FIXTURES.glob("*.json"))
    cases = [(path.stem, case) for path in files for case in json.loads(path.read_text())["cases"]]
    for n in range(rounds):
        for agent, case in cases:
            payload = {**case["payload"], **({"agentmemory_event": case["event"]} if case.get("event") else {})}
            payload.update({k: f"{payload[k]}-{n}" for k in SESSION_KEYS if k in payload})
            reply = client.post(f"/agentmemory/hooks/{agent}", json=payload)
            assert reply.status_code == 200, (agent, reply.json)
    rt.db.flush()
    return rounds * len(cases)


def age(rt) -> int:
    """Every record as an older capture might have left it: another title, indexed from it; and
    every summary as an older release might have written it."""
    with rt.db.transaction("bench") as tx:
        for key, summary in tx.records.list(SUMMARIES):
            tx.records.set(SUMMARIES, key, {**summary, "narrative": "3 others."}, now=summary["createdAt"])
    aged = 0
    for scope in rt.db.reader().records.scopes():
        if not scope.startswith(OBSERVATIONS_PREFIX):
            continue
        with rt.db.transaction("bench") as tx:
            for key, obs in tx.records.list(scope):
                obs["title"] = f"{obs['title']} (as stored before)"
                tx.records.set(scope, key, obs, now=obs["timestamp"])
                search.index_record(tx, "observation", obs)
                aged += 1
    rt.db.flush()
    return aged


def timed(label: str, rt, **options) -> None:
    started = time.perf_counter()
    result = recompress.recompress(rt, **options)
    wall = time.perf_counter() - started
    result.pop("examples")
    print(f"{label:<12} {wall:6.2f} s  {result['examined'] / wall:8,.0f} examined/s  "
          f"changed {result['changed']:,}  rewritten {result['rewritten']:,}  sessions {result['sessions']:,}  "
          f"summaries {result['summaries']:,}  "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=150, help="copies of the fixture sessions (66 events each)")
    parser.add_argument("--database-url", help="a PostgreSQL database to use instead of a fresh SQLite file")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recompress-") as data:
        backend = {"database_url": opts.database_url} if opts.database_url else {}
        settings = Settings.from_env({}, data_dir=data, background_jobs=False, embedding_provider="none",
                                     auth="off", rate_limit=0, **backend)
        rt = build_runtime(settings)
        try:
            started = time.perf_counter()
            events = capture(rt, opts.rounds)
            print(f"captured {events:,} hook events in {time.perf_counter() - started:.1f} s; "
                  f"aged {age(rt):,} observations; backend {'postgresql' if opts.database_url else 'sqlite'}")
            timed("dry run", rt, dry_run=True)
            timed("run", rt)
            timed("second run", rt)
        finally:
            rt.close()


if __name__ == "__main__":
    main()
