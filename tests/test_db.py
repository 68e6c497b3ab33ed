"""Storage: migrations, WAL, read-only readers, transactions and their audit rows."""

import sqlite3
import threading
import time

import pytest

from agentmemory_server.storage.sqlite import MIGRATIONS, Database, SchemaTooNew
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


# -- write(): group commit ---------------------------------------------------------------------

def test_a_write_has_its_own_audit_row_after_commit_and_failure_and_joins_an_outer_transaction(rt):
    ran_after: list[str] = []

    def good(tx):
        tx.records.set("mem:test", "good", {"v": 1}, now="t")
        tx.after_commit(lambda: ran_after.append("good"))
        return "stored"

    def bad(tx):
        tx.records.set("mem:test", "bad", {"v": 2}, now="t")
        tx.after_commit(lambda: ran_after.append("bad"))
        raise ValueError("refused")

    assert rt.db.write("good_op", good, agent_id="agent-1") == "stored"
    with pytest.raises(ValueError, match="refused"):
        rt.db.write("bad_op", bad)
    reader = rt.db.reader()
    assert reader.records.get("mem:test", "good") == {"v": 1} and reader.records.get("mem:test", "bad") is None
    assert ran_after == ["good"]  # a failed write's callbacks never run
    entries, total = reader.audit.page(operation=None, limit=10, offset=0)
    assert total == 1 and entries[0]["operation"] == "good_op" and entries[0]["targetIds"] == ["mem:test/good"]
    with rt.db.transaction("outer") as tx:
        assert rt.db.write("inner", lambda inner: inner is tx)  # joins: same unit, no audit of its own
    assert rt.db.reader().audit.page(operation="inner", limit=10, offset=0)[1] == 0


@pytest.mark.sqlite_only
def test_writes_queued_behind_the_writer_commit_as_one_group_each_with_its_own_outcome(rt):
    """Five threads write while the writer is busy: one of them commits all five in one
    transaction. Each keeps its audit row, its caller's context, its callbacks (on its own
    thread) and its own failure: the one that raises leaves nothing, the others are stored."""
    import contextvars

    caller_name: contextvars.ContextVar[str] = contextvars.ContextVar("caller_name", default="?")
    ran_on: dict[int, int] = {}
    seen_caller: dict[int, str] = {}
    callbacks_on: dict[int, int] = {}
    outcomes: dict[int, object] = {}

    def writer(n: int) -> None:
        caller_name.set(f"caller-{n}")
        me = threading.get_ident()

        def work(tx):
            ran_on[n] = threading.get_ident()
            seen_caller[n] = caller_name.get()
            tx.records.set("mem:group", f"k{n}", {"n": n}, now="t")
            tx.after_commit(lambda: callbacks_on.__setitem__(n, threading.get_ident()))
            if n == 2:
                raise ValueError(f"write {n} refused")
            return n * 10

        try:
            outcomes[n] = (me, rt.db.write(f"op{n}", work))
        except ValueError as exc:
            outcomes[n] = (me, exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(5)]
    with rt.db.transaction("hold"):  # the writer is busy: every write() queues
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(rt.db._queue._queued) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(rt.db._queue._queued) == 5
    for t in threads:
        t.join(timeout=10)
    assert len(set(ran_on.values())) == 1  # one thread ran the whole group
    assert seen_caller == {n: f"caller-{n}" for n in range(5)}
    for n in range(5):
        me, outcome = outcomes[n]
        if n == 2:
            assert isinstance(outcome, ValueError) and n not in callbacks_on
        else:
            assert outcome == n * 10 and callbacks_on[n] == me  # run on the caller's own thread
    reader = rt.db.reader()
    assert [n for n in range(5) if reader.records.get("mem:group", f"k{n}")] == [0, 1, 3, 4]
    ops = {e["operation"] for e in reader.audit.page(operation=None, limit=20, offset=0)[0]}
    assert ops == {"op0", "op1", "op3", "op4"}  # the held transaction changed nothing: no row


@pytest.mark.sqlite_only
def test_a_write_that_waits_past_the_lock_wait_is_refused_and_never_runs_later(tmp_path):
    """A request process waits ``lock_wait`` for its writer lock, not forever: past it the call
    hears ``database_busy`` and is taken back out of the queue, so no later group stores what its
    caller was told was not stored."""
    db = Database(tmp_path / "x.db", now=Clock().iso, background=False, lock_wait=0.2)
    outcomes: dict[str, object] = {}

    def attempt(name: str, call) -> None:
        try:
            outcomes[name] = call()
        except Exception as exc:  # noqa: BLE001
            outcomes[name] = getattr(exc, "code", type(exc).__name__)

    def queued_write():
        return db.write("late", lambda tx: tx.records.set("mem:x", "late", 1, now="t"))

    def transaction():
        with db.transaction("late_tx") as tx:
            tx.records.set("mem:x", "late_tx", 1, now="t")

    try:
        with db.transaction("hold") as tx:  # a writer of this process that does not let go
            tx.records.set("mem:x", "held", 1, now="t")
            threads = [threading.Thread(target=attempt, args=(n, f)) for n, f in
                       (("write", queued_write), ("transaction", transaction))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
        assert outcomes == {"write": "database_busy", "transaction": "database_busy"}
        assert db._queue._queued == []
        db.write("next", lambda tx: tx.records.set("mem:x", "next", 1, now="t"))  # a later group
        reader = db.reader()
        assert [k for k in ("held", "late", "late_tx", "next") if reader.records.get("mem:x", k)] == ["held", "next"]
    finally:
        db.close()


@pytest.mark.sqlite_only
def test_writers_queued_behind_another_programs_lock_give_up_together_and_leave_the_busy_wait_as_it_was(tmp_path):
    """Another program holds SQLite's lock: a write waits for it, a second write of the process
    waits for the first (its wait counts against the same deadline, so SQLite's busy wait is cut
    to what is left of it and set back afterwards). Both hear database_busy; nothing is stored."""
    import sqlite3

    db = Database(tmp_path / "x.db", now=Clock().iso, background=False, lock_wait=0.5)
    outcomes: list[object] = []

    def write(n: int) -> None:
        try:
            outcomes.append(db.write(f"w{n}", lambda tx: tx.records.set("mem:x", f"k{n}", n, now="t")))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(getattr(exc, "code", type(exc).__name__))

    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None, timeout=5)
    other.execute("BEGIN IMMEDIATE")
    try:
        first = threading.Thread(target=write, args=(1,))
        first.start()
        time.sleep(0.2)  # the first write is in SQLite's busy wait, holding the process's writer lock
        write(2)
        first.join(timeout=10)
    finally:
        other.execute("ROLLBACK")
        other.close()
    try:
        assert outcomes == ["database_busy", "database_busy"], outcomes
        assert db._writer.execute("PRAGMA busy_timeout").fetchone()[0] == 500
        db.write("after", lambda tx: tx.records.set("mem:x", "after", 1, now="t"))
        reader = db.reader()
        assert [k for k in ("k1", "k2", "after") if reader.records.get("mem:x", k)] == ["after"]
    finally:
        db.close()


@pytest.mark.sqlite_only
def test_a_group_that_cannot_begin_fails_every_write_in_it(tmp_path):
    """Writes refused before the transaction starts (here: the disk reserve) all hear why, and
    none is half-stored."""
    db = Database(tmp_path / "x.db", now=Clock().iso, background=False, reserve_bytes=2**62)
    try:
        errors = []
        for n in range(3):
            try:
                db.write("op", lambda tx, n=n: tx.records.set("mem:x", f"k{n}", 1, now="t"))
            except Exception as exc:  # noqa: BLE001
                errors.append(getattr(exc, "code", type(exc).__name__))
        assert errors == ["disk_full"] * 3
        assert db.reader().records.get("mem:x", "k0") is None
    finally:
        db.close()


@pytest.mark.sqlite_only
def test_a_background_worker_leaves_wal_checkpoints_to_a_thread(tmp_path):
    """A worker's commits that checkpoint hold the write lock every request waits for."""
    from agentmemory_server.storage.sqlite.checkpoint import SAFETY_NET_PAGES
    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.wiring import build_runtime

    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), embedding_provider="none", auth="off",
                                 background_jobs=True, wal_checkpoint_seconds=1.0)
    worker = build_runtime(settings, role="worker")
    try:
        assert worker.db.checkpointer is not None
        assert worker.db._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == SAFETY_NET_PAGES
    finally:
        worker.close()
    tool = build_runtime(settings, role="tool")
    try:
        assert tool.db.checkpointer is None  # a one-shot command checkpoints in its commits
    finally:
        tool.close()


def test_a_failed_wal_checkpoint_is_kept_with_its_time_marks_storage_degraded_and_is_marked_recovered(tmp_path):
    # The thread's own rounds are an hour apart here: the test drives the rounds itself, the
    # first on a connection that is closed (a real sqlite3 error, as an I/O error would give).
    db = Database(tmp_path / "x.db", now=Clock().iso, background=True, lexical_engine="fts5", checkpoint_seconds=3600)
    try:
        broken = sqlite3.connect(db.path)
        broken.close()
        db.checkpointer.run_once(broken)
        failed = db.health()
        state = failed["walCheckpoints"]
        assert state["error"] and state["lastError"] == state["error"] and state["lastErrorAt"], state
        assert state["recoveredAt"] is None
        assert failed["status"] == "degraded" and "WAL checkpoints fail" in failed["error"]

        working = sqlite3.connect(db.path)
        try:
            db.checkpointer.run_once(working)
        finally:
            working.close()
        recovered = db.health()
        state = recovered["walCheckpoints"]
        assert state["error"] is None and state["runs"] == 1
        assert state["lastError"] and state["lastErrorAt"] and state["recoveredAt"] >= state["lastErrorAt"], state
        assert "status" not in recovered and "error" not in recovered
    finally:
        db.close()


def test_a_store_opens_while_another_process_holds_the_write_lock_and_makes_a_new_index_once_it_is_free(
        tmp_path, caplog, monkeypatch):
    """A start that has a record index to make (a newer version declares one) needs the write lock,
    which a replace import in another process holds until it commits. Before cd9fbbb the start
    failed once its busy wait ran out ("database is locked"); then it opened without the index
    and only the next start made it, so a long-lived server served listings without it until it
    was restarted. Now the open store makes it once the lock is free."""
    from agentmemory_server.kernel.scopes import RECORD_INDEXES
    from agentmemory_server.storage.interfaces import RecordIndex
    from agentmemory_server.storage import owed_indexes
    from agentmemory_server.storage.sqlite.records import index_name
    from conftest import wait_for

    monkeypatch.setattr(owed_indexes, "RETRY_SECONDS", 0.2)  # not a minute, for the test
    path = tmp_path / "x.db"
    newer = (*RECORD_INDEXES, RecordIndex("mem:memories", ("importance",)))
    Database(path, now=Clock().iso, background=False, record_indexes=RECORD_INDEXES).close()

    def indexed() -> bool:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?",
                                (index_name(newer[-1]),)).fetchone()[0] == 1

    importer = sqlite3.connect(path, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")  # as a replace import's one transaction holds it
    importer.execute("DELETE FROM kv_store")
    opened = None
    try:
        opened = Database(path, now=Clock().iso, background=False, record_indexes=newer, lock_wait=0.3)
        assert "record indexes not brought up to date" in caplog.text and not indexed()
    finally:
        importer.execute("ROLLBACK")
        importer.close()
    try:
        assert wait_for(indexed, timeout=60, interval=0.2, message="the open store never made its index")
        # The index is visible once its transaction commits; the store notes it is owed no more
        # just after, on the retry thread.
        assert wait_for(lambda: not opened.owed_indexes, timeout=10, interval=0.05,
                        message="the index was made but the store still counts it owed")
    finally:
        opened.close()


def test_the_owed_index_retry_skips_its_attempt_while_an_import_holds_the_write_lock(tmp_path):
    """A store opened while a replace import held the write lock owes a record index and tries to
    make it once a minute. Before, each attempt took this process's writer and then waited its
    whole lock wait (30 s for a worker or a CLI command) for the import's lock, so the process's
    own writes queued behind it, once a minute for as long as the import ran. Now an attempt that
    finds the lock held gives up at once, and makes the index once the import is over."""
    from agentmemory_server.kernel.scopes import RECORD_INDEXES
    from agentmemory_server.storage.interfaces import RecordIndex
    from agentmemory_server.storage.sqlite.records import index_name
    from test_transfer import _answered_within

    path = tmp_path / "x.db"
    newer = (*RECORD_INDEXES, RecordIndex("mem:memories", ("importance",)))
    opened = Database(path, now=Clock().iso, background=False, record_indexes=RECORD_INDEXES)  # 30 s lock wait
    opened.owed_indexes = newer  # as a start that found the write lock held leaves it (see the test above)
    importer = Database(path, now=Clock().iso, background=False)  # `agentmemory import`'s store
    held, release = threading.Event(), threading.Event()

    def replace_import():  # its one transaction holds the write lock until it commits
        with importer.transaction("import") as tx:
            tx.records.set("mem:memories", "new", {"id": "new", "content": "imported"}, now="2026-01-01T00:00:00Z")
            held.set()
            release.wait(120)

    holder = threading.Thread(target=replace_import, daemon=True)
    holder.start()
    try:
        assert held.wait(30)
        assert _answered_within(10, opened.make_owed_indexes) is False  # before: 30 s with the writer taken
        assert holder.is_alive() and opened.owed_indexes == newer  # the import still holds; still owed
        assert opened._lock.acquire(blocking=False)  # the writer is free for this process's requests
        opened._lock.release()
    finally:
        release.set()
        holder.join(30)
    try:
        assert opened.make_owed_indexes() is True and not opened.owed_indexes
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?",
                                (index_name(newer[-1]),)).fetchone()[0] == 1
    finally:
        opened.close()
        importer.close()


def test_a_migration_that_waits_past_the_lock_wait_for_an_import_is_refused_naming_it(tmp_path):
    """A start that must migrate the schema while another process holds the write lock (a
    replace import) is refused with database_busy naming the migration, not a bare "database is
    locked" traceback."""
    from agentmemory_server.errors import Unavailable

    path = tmp_path / "x.db"
    Database(path, now=Clock().iso, background=False).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")  # the last migration is still to run
    importer = sqlite3.connect(path, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable) as refused:
            Database(path, now=Clock().iso, background=False, lock_wait=0.3)
    finally:
        importer.execute("ROLLBACK")
        importer.close()
    assert refused.value.code == "database_busy" and refused.value.retry_after == 30
    assert f"schema migration {len(MIGRATIONS)} of {path} waited over 0.3 s" in refused.value.message


def test_a_write_another_process_keeps_waiting_is_what_background_work_recognises_as_busy(tmp_path):
    """errors.is_database_busy is the one test the background writers (periodic jobs, LLM jobs,
    the embedding backlog, capture) apply to a failed write: true for the refusal a write gets
    while another process (a replace import) holds the write lock past the wait, false for any
    other failure, which each of them must treat as a failure."""
    from agentmemory_server import errors

    path = tmp_path / "x.db"
    db = Database(path, now=Clock().iso, background=False, lock_wait=0.2)
    importer = sqlite3.connect(path, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(errors.AppError) as refused:
            with db.transaction("remember") as tx:
                tx.records.set("mem:memories", "m1", {"id": "m1"}, now="x")
    finally:
        importer.execute("ROLLBACK")
        importer.close()
        db.close()
    assert errors.is_database_busy(refused.value), refused.value
    assert not errors.is_database_busy(errors.Unavailable("the database server does not answer"))
    assert not errors.is_database_busy(errors.InsufficientStorage("the disk is full"))
    assert not errors.is_database_busy(sqlite3.OperationalError("database is locked"))  # not said by storage yet
    assert not errors.is_database_busy(None)


def test_the_guard_of_a_step_of_opening_refuses_only_a_lock_held_past_the_wait(tmp_path):
    """The one guard both steps of opening that need the write lock run under (a schema
    migration, the record indexes): a busy failure becomes the refusal naming the step, which a
    migration lets through and the record indexes take as owed; any other failure goes through
    as it was."""
    from agentmemory_server import errors
    from agentmemory_server.storage.owed_indexes import LockHeldAtOpen

    path = tmp_path / "x.db"
    db = Database(path, now=Clock().iso, background=False, lock_wait=0.3)
    try:
        with pytest.raises(LockHeldAtOpen) as refused:
            with db._write_lock_waited("schema migration 9"):
                raise sqlite3.OperationalError("database is locked")
        assert errors.is_database_busy(refused.value) and refused.value.retry_after == 30
        assert f"schema migration 9 of {path} waited over 0.3 s for the write lock" in refused.value.message
        other = sqlite3.OperationalError("no such table: kv_store")
        with pytest.raises(sqlite3.OperationalError) as passed:
            with db._write_lock_waited("schema migration 9"):
                raise other
        assert passed.value is other
    finally:
        db.close()
