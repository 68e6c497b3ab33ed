"""Every listing and write path reads through an index: none scans or sorts a whole scope or the
search table. Each call's SQL is captured and checked with EXPLAIN QUERY PLAN, so a change that
loses an index (a bound parameter hiding a partial index, a new filter, a new ORDER BY) fails
here instead of growing slow with the corpus."""

from __future__ import annotations

import re

import pytest

from agentmemory_server.adapters.web import create_app
from conftest import ToolCaller

CALLS = [
    ("memories_list", {"latest": True}),
    ("memories_list", {"project": "p"}),
    ("memories_list", {}),
    ("memory_sessions", {"project": "p"}),
    ("memory_sessions", {}),
    ("memory_observations", {"sessionId": "s1"}),
    ("memory_timeline", {"anchor": "2026-01-01T10:00:10Z"}),
    ("memory_timeline", {"anchor": "auth test"}),
    ("memory_smart_search", {"query": "auth test cache", "project": "p"}),
    ("memory_recall", {"query": "auth test cache"}),
    ("memory_save", {"content": "memory about cache 3 again", "project": "p"}),
    ("memory_lesson_recall", {"query": "run tests", "project": "p"}),
    ("agent_observe", {"sessionId": "s1", "hookType": "observation", "content": "one more auth test"}),
]
BIG_TABLES = ("kv_store", "search_docs", "d", "search_vectors", "audit_log")


@pytest.fixture
def seeded(make_runtime):
    rt = make_runtime()
    call = ToolCaller(rt)
    for i in range(30):
        call("agent_observe", sessionId=f"s{i % 3}", hookType="observation", project="p",
             content=f"fixed the auth test {i}", timestamp=f"2026-01-01T10:00:{i:02d}Z")
    for i in range(10):
        call("memory_save", content=f"memory about cache {i}", project="p")
    call("memory_lesson_save", content="always run the tests", project="p")
    return rt


def full_scans(rt, statements: list[str]) -> list[str]:
    """The statements whose plan scans a big table without an index, or sorts what it read."""
    bad = []
    conn = rt.db.reader().conn
    for sql in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        for line in (row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)):
            scan = re.match(r"SCAN (\S+)( USING (COVERING )?INDEX (\S+))?", line)
            if scan and scan.group(1) in BIG_TABLES and not (scan.group(4) or "").startswith("kv_idx_"):
                bad.append(f"{line}: {sql[:200]}")
            elif "TEMP B-TREE FOR ORDER BY" in line:
                bad.append(f"{line}: {sql[:200]}")
    return bad


def captured(rt, run) -> list[str]:
    statements: list[str] = []
    connections = (rt.db._writer, rt.db.reader().conn)
    for conn in connections:
        conn.set_trace_callback(statements.append)
    try:
        run()
    finally:
        for conn in connections:
            conn.set_trace_callback(None)
    return statements


@pytest.mark.sqlite_only("SQLite's EXPLAIN QUERY PLAN of its own statements")
@pytest.mark.parametrize(("tool", "args"), CALLS, ids=lambda v: v if isinstance(v, str) else ",".join(v) or "-")
def test_tools_read_through_indexes(seeded, tool, args):
    statements = captured(seeded, lambda: ToolCaller(seeded)(tool, **args))
    assert statements, "the trace saw no SQL"
    assert full_scans(seeded, statements) == []


@pytest.mark.sqlite_only("SQLite's EXPLAIN QUERY PLAN of its own statements")
def test_context_and_health_read_through_indexes(seeded):
    client = create_app(runtime=seeded).test_client()
    for method, path, body in (("POST", "/agentmemory/context", {"sessionId": "new", "project": "p"}),
                               ("GET", "/agentmemory/health", None), ("GET", "/agentmemory/livez", None)):
        statements = captured(seeded, lambda: client.open(path, method=method, json=body))
        assert full_scans(seeded, statements) == [], path


def test_kind_counts_kept_by_triggers_match_the_rows(seeded):
    """/health reads search rows per kind from a table triggers keep; it must equal a real count
    through inserts, re-indexing, deletes and a wipe."""
    def real(rt) -> dict[str, int]:
        rows = rt.db.reader().conn.execute("SELECT kind, count(*) FROM search_docs GROUP BY kind ORDER BY kind")
        return dict(rows.fetchall())

    store = seeded.db.reader()
    assert store.index.kind_counts() == real(seeded) == {"lesson": 1, "memory": 10, "observation": 30}
    call = ToolCaller(seeded)
    memory = call("memory_save", content="a memory to forget soon", project="p")["memory"]
    call("memory_forget", memoryIds=[memory["id"]])
    call("memory_save", content="memory about cache 4 and more", project="p")  # supersedes: re-indexes two rows
    assert store.index.kind_counts() == real(seeded)
    with seeded.db.transaction("test") as tx:
        tx.admin.wipe_records()
    assert store.index.kind_counts() == real(seeded) == {}
