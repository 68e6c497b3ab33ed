"""Storage: migrations, WAL, read-only readers, transactions and their audit rows."""

import sqlite3
import threading
import time

import pytest

from agentmemory_server.storage.sqlite.database import MIGRATIONS, Database, SchemaTooNew
from agentmemory_server.kernel.util import Clock


@pytest.mark.sqlite_only
def test_fresh_db_is_wal_and_migrated(rt):
    conn = sqlite3.connect(rt.db.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_default_path_and_directories_created(tmp_path):
    from agentmemory_server.kernel.settings import Settings

    s = Settings.from_env({"AGENTMEMORY_DATA_DIR": str(tmp_path / "a" / "b")})
    assert s.database_path == tmp_path / "a" / "b" / "agentmemory.db"
    s = Settings.from_env({"AGENTMEMORY_DB": str(tmp_path / "x" / "y.db"), "AGENTMEMORY_DATA_DIR": "/nope"})
    db = Database(s.database_path, now=Clock().iso)
    assert (tmp_path / "x" / "y.db").exists()
    db.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        Database(path, now=Clock().iso)


def test_reader_cannot_write(rt):
    with pytest.raises((sqlite3.OperationalError, PermissionError)):
        rt.db.reader().records.set("x", "y", {}, now="t")


def test_failed_transaction_rolls_back_and_writes_no_audit(rt):
    with pytest.raises(RuntimeError):
        with rt.db.transaction("boom") as tx:
            tx.records.set("mem:test", "k", {"v": 1}, now="t")
            raise RuntimeError("fail")
    assert rt.db.reader().records.get("mem:test", "k") is None
    assert rt.db.reader().audit.page(operation=None, limit=10, offset=0)[1] == 0


def test_nested_transactions_join_and_audit_once(rt):
    with rt.db.transaction("outer") as tx:
        tx.records.set("mem:test", "a", 1, now="t")
        with rt.db.transaction("inner") as inner:
            assert inner is tx
            inner.records.set("mem:test", "b", 2, now="t")
    entries, total = rt.db.reader().audit.page(operation=None, limit=10, offset=0)
    assert total == 1 and entries[0]["operation"] == "outer"
    assert entries[0]["targetIds"] == ["mem:test/a", "mem:test/b"]


@pytest.mark.sqlite_only
def test_invalid_json_is_rejected_by_the_schema(rt):
    with pytest.raises(sqlite3.IntegrityError):
        with rt.db.transaction("raw") as tx:
            tx.conn.execute("INSERT INTO kv_store VALUES ('s', 'k', '{bad', 't')")


def test_values_with_lone_surrogates_are_stored_escaped(rt):
    with rt.db.transaction("t") as tx:
        tx.records.set("mem:test", "k", {"v": "a\ud800b"}, now="t")
    assert rt.db.reader().records.get("mem:test", "k") == {"v": "a\ud800b"}


def test_concurrent_writers_and_readers(rt):
    errors = []

    def write(n):
        try:
            for i in range(100):
                with rt.db.transaction("w") as tx:
                    tx.records.set("mem:test", f"{n}-{i}", {"i": i}, now="t")
                rt.db.reader().records.count("mem:test")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and rt.db.reader().records.count("mem:test") == 800


@pytest.mark.sqlite_only
def test_a_server_database_checkpoints_the_wal_in_a_thread_not_in_commits(tmp_path):
    from agentmemory_server.storage.sqlite.checkpoint import SAFETY_NET_PAGES

    db = Database(tmp_path / "x.db", now=Clock().iso, background=True, lexical_engine="fts5", checkpoint_seconds=0.5)
    try:
        assert db._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == SAFETY_NET_PAGES
        for i in range(300):
            with db.transaction("fill") as tx:
                tx.records.set("mem:fill", f"k{i}", {"text": "x" * 3000}, now="2026-12-05T00:00:00Z")
        deadline = time.monotonic() + 10
        while db.checkpointer.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        state = db.health()["walCheckpoints"]
        assert state["thread"] and state["runs"] >= 2 and state["error"] is None, state
        # Everything committed was moved into the main file by the thread.
        busy, frames, moved = sqlite3.connect(db.path).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and moved == frames
        assert db.reader().records.get("mem:fill", "k299") == {"text": "x" * 3000}
    finally:
        db.close()
    assert not db.checkpointer.health()["thread"]  # stopped with the database


def test_an_in_process_database_keeps_sqlite_automatic_checkpoints(tmp_path):
    db = Database(tmp_path / "x.db", now=Clock().iso, background=False)
    try:
        assert db.checkpointer is None
        assert db._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        assert "walCheckpoints" not in db.health()
    finally:
        db.close()


def test_bulk_load_checkpoints_less_often_and_restores_the_setting(tmp_path):
    """A bulk import copies the WAL into the file every SAFETY_NET_PAGES, not every ~1,000
    pages; afterwards (even after a failure) the writer is back to its own setting, and the
    commits inside stay as durable (same synchronous mode)."""
    from agentmemory_server.storage.sqlite.checkpoint import SAFETY_NET_PAGES

    db = Database(tmp_path / "bulk.db", now=Clock().iso)
    try:
        def setting(name: str) -> int:
            return db._writer.execute(f"PRAGMA {name}").fetchone()[0]

        before, synchronous = setting("wal_autocheckpoint"), setting("synchronous")
        with pytest.raises(RuntimeError), db.bulk_load():
            assert setting("wal_autocheckpoint") == SAFETY_NET_PAGES > before
            with db.transaction("bulk") as tx:
                tx.records.set("mem:memories", "m1", {"id": "m1"}, now="x")
            assert setting("synchronous") == synchronous
            raise RuntimeError("the import failed")
        assert setting("wal_autocheckpoint") == before
        assert db.reader().records.get("mem:memories", "m1") == {"id": "m1"}
    finally:
        db.close()
