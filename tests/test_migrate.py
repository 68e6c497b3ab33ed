"""``agentmemory migrate``: SQLite -> PostgreSQL -> SQLite through the JSON Lines record stream,
verified, and resumable after an interruption."""

from __future__ import annotations

import json

import pytest

from agentmemory_server.errors import InvalidInput
from agentmemory_server.operations import maintenance, migrate
from agentmemory_server.retrieval import search
from conftest import ToolCaller, hook


def seed(rt) -> None:
    call = ToolCaller(rt)
    for i in range(30):
        call("agent_observe", **hook(f"m{i % 3}", data={"prompt": f"the ibis migration checklist item {i}"}))
    call("memory_save", content="the heron service owns the billing queue", project="alpha")
    call("memory_lesson_save", content="always drain the queue before a schema change")
    call("tokens_create", principal="ann", projects=["alpha"])


def test_a_sqlite_store_moves_to_postgresql_and_back(make_runtime, pg_cluster, tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "sqlite"), database_url=None)
    seed(source)
    url = pg_cluster.create_database()
    try:
        pg = make_runtime(data_dir=str(tmp_path / "pgnode"), database_url=url)
        result = migrate.migrate(source, pg, tmp_path / "sqlite")
        assert result["verified"]["ok"] and result["records"] == sum(source.db.reader().records.scope_counts().values())
        assert result["verified"]["sampled"] > 0
        hits = search.bm25(pg.db.reader(), "heron billing queue", limit=5)
        assert hits and hits[0]["kind"] == "memory"  # the search index was built by the import
        back = make_runtime(data_dir=str(tmp_path / "back"), database_url=None)
        again = migrate.migrate(pg, back, tmp_path / "pgnode")
        assert again["verified"]["ok"] and again["records"] == result["records"]
        assert not list((tmp_path / "sqlite").glob("migrate*"))  # the spool is gone once verified
    finally:
        pg_cluster.drop_database(url)


def test_an_interrupted_migration_resumes_where_it_stopped(make_runtime, tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "src"), database_url=None)
    seed(source)
    target = make_runtime(data_dir=str(tmp_path / "dst"), database_url=None)
    spool, state_path = migrate.spool_paths(tmp_path / "src")
    # An import that stops part-way: a damaged line in the middle of the spooled export.
    with open(spool, "w", encoding="utf-8") as out:
        maintenance.stream_export(source, out, lines=True)
    lines = spool.read_text().splitlines(keepends=True)
    middle = len(lines) // 2
    good = lines[middle]
    lines[middle] = "{not json\n"
    spool.write_text("".join(lines))
    state_path.write_text(json.dumps({"source": source.db.location, "target": target.db.location,
                                      "exported": True, "imported": 0}))
    with pytest.raises(InvalidInput, match=f"line {middle + 1}"):
        migrate.migrate(source, target, tmp_path / "src", batch=3)
    done = json.loads(state_path.read_text())["imported"]
    assert 0 < done <= middle
    lines[middle] = good
    spool.write_text("".join(lines))
    result = migrate.migrate(source, target, tmp_path / "src", batch=3)
    assert result["verified"]["ok"]
    total = sum(source.db.reader().records.scope_counts().values())
    assert result["import"]["imported"] < total  # only the lines after the stored ones were written again


def test_a_difference_fails_the_verification(make_runtime, tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "a"), database_url=None)
    seed(source)
    target = make_runtime(data_dir=str(tmp_path / "b"), database_url=None)
    migrate.migrate(source, target, tmp_path / "a")
    assert migrate.verify(source, target)["ok"]
    ToolCaller(source)("memory_save", content="only in the source now")
    check = migrate.verify(source, target)
    assert not check["ok"] and check["countMismatches"]["mem:memories"] == [2, 1]
    for scope, n in source.db.reader().records.scope_counts().items():  # same counts, other contents
        with target.db.transaction("tamper") as tx:
            for key, value in tx.records.list(scope):
                tx.records.set(scope, key, {"tampered": True}, now="t")
    ToolCaller(target)("memory_save", content="only in the source now")
    check = migrate.verify(source, target)
    assert not check["ok"] and check["sampleMismatches"]
