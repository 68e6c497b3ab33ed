"""How long a coding agent's hook waits while another process holds the SQLite write lock.

    python bench/locked_hooks.py [--events 6]

Starts ``python src/app.py`` (auth off, embeddings off) on a free 127.0.0.1 port with a fresh
database, opens a session, then holds the database's write lock from a separate connection
(``BEGIN IMMEDIATE``, as a ``sqlite3`` shell inside a transaction would) and sends ``--events``
Claude Code hook events to ``/agentmemory/hooks/claude-code`` one after another, each with a
150 s client timeout: a SessionStart, then UserPromptSubmit and PostToolUse in turn. After the
lock is released it drains the server's capture spool and counts what was stored. Prints date,
commit, each event's wait and the server's answer, p50/p95, and one JSON line.

Hooks give up after 10-15 s (`agentmemory connect`'s timeouts; `agentmemory hook` waits 10 s),
so every wait above that is an agent stalled for its whole hook timeout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import start_server  # noqa: E402
from machine import header  # noqa: E402
from mcp_latency import percentiles  # noqa: E402

CWD = "/work/shop"


def event(name: str, **fields) -> dict:
    return {"session_id": "locked-bench", "cwd": CWD, "hook_event_name": name, **fields}


def events(n: int) -> list[dict]:
    """A start, then prompts and edits in turn."""
    out = [event("SessionStart", source="startup")]
    for i in range(1, n):
        if i % 2:
            out.append(event("UserPromptSubmit", prompt=f"retry the upload, attempt {i}"))
        else:
            out.append(event("PostToolUse", tool_name="Edit", tool_use_id=f"t-{i}", tool_response={"success": True},
                             tool_input={"file_path": f"{CWD}/src/retry.ts", "old_string": "a", "new_string": "b"}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=6)
    args = parser.parse_args()
    commit, ref = header()
    with tempfile.TemporaryDirectory(prefix="locked-hooks-") as data_dir:
        proc, url = start_server(data_dir, threads=8, extra_env={"EMBEDDING_PROVIDER": "none"})
        try:
            hooks = f"{url}/agentmemory/hooks/claude-code"
            requests.post(hooks, json=event("SessionStart", source="warmup"), timeout=30).raise_for_status()
            lock = sqlite3.connect(Path(data_dir) / "agentmemory.db", isolation_level=None, timeout=5)
            lock.execute("BEGIN IMMEDIATE")
            waits, rows = [], []
            try:
                for body in events(args.events):
                    started = time.perf_counter()
                    try:
                        answer = requests.post(hooks, json=body, timeout=150)
                        said = str(answer.status_code)
                    except requests.RequestException as exc:
                        said = type(exc).__name__
                    waits.append(time.perf_counter() - started)
                    rows.append((body["hook_event_name"], waits[-1], said))
                    print(f"  {body['hook_event_name']:<17} {waits[-1]:6.1f} s  {said}")
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            drained = requests.post(f"{url}/agentmemory/capture/drain", json={}, timeout=60).json()
            stored = requests.get(f"{url}/agentmemory/observations", params={"sessionId": "locked-bench"},
                                  timeout=30).json()["observations"]
        finally:
            proc.terminate()
            proc.wait(30)
    summary = percentiles(waits)
    over = sum(1 for w in waits if w > 10)
    print(f"waits: p50 {summary['p50_ms'] / 1000:.1f} s, p95 {summary['p95_ms'] / 1000:.1f} s; "
          f"{over} of {len(waits)} over the hook command's 10 s; stored after the lock: {len(stored)} observations "
          f"(the warm-up start included), spool drain recovered {drained['results'][0]['recovered']}")
    print(json.dumps({"commit": commit, "events": len(waits), "waitsSeconds": [round(w, 2) for w in waits],
                      **summary, "overTenSeconds": over, "stored": len(stored), **ref}))


if __name__ == "__main__":
    main()
