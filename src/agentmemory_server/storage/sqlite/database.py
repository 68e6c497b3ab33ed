"""SQLite storage: the file, its connections and transactions.

Concurrency discipline (the Datasette one): reads run on per-thread read-only connections, so
they never wait for writers (WAL); all writes go through a single writer connection guarded by a
lock, each in a short ``BEGIN IMMEDIATE`` transaction. ``busy_timeout`` covers the other
processes that may touch the file (the backup sidecar, the CLI).

Records live in ``kv_store(scope, key, value JSON)`` (the upstream StateKV model). Every
transaction that changes anything writes one ``audit_log`` row naming what it touched, so no
mutation can forget to be audited. Search tables (``search_docs`` + the FTS5 ``search_fts``)
live in the same file and change in the same transaction as the record they index. The
repositories (records.py, search_index.py, ...) hold every SQL statement; this module only
opens the file, hands out units of work (unit_of_work.py) and runs the write transactions. The
schema checks and migrations at open are schema.py's; the integrity checks and the damage they
find are integrity.py's, and how the database reports them (with a full or read-only disk)
storage_faults.py's; the file's facts and its closing are lifecycle.py's.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from agentmemory_server import errors
from agentmemory_server.errors import Unavailable
from agentmemory_server.storage import interfaces, owed_indexes
from agentmemory_server.storage.blobs import BlobStore, images_dir
from agentmemory_server.storage.interfaces import RecordIndex, indexed_fields
from agentmemory_server.storage.lexical.tantivy_index import TantivyLexical
from agentmemory_server.storage.sqlite import lexical_fts5, schema
from agentmemory_server.storage.sqlite.bounds import QueueBounds
from agentmemory_server.storage.sqlite.checkpoint import SAFETY_NET_PAGES, WalCheckpointer
from agentmemory_server.storage.sqlite.faults import FreeSpace, classify
from agentmemory_server.storage.sqlite.group_commit import Queued, WriteQueue, run_group
from agentmemory_server.storage.sqlite.integrity import IntegrityChecks
from agentmemory_server.storage.sqlite.lexical_feed import SqliteFeeds
from agentmemory_server.storage.sqlite.lifecycle import FileLifecycle
from agentmemory_server.storage.sqlite.records import ensure_indexes
from agentmemory_server.storage.sqlite.schema import preflight
from agentmemory_server.storage.sqlite.storage_faults import StorageFaults
from agentmemory_server.storage.sqlite.unit_of_work import SqliteUnitOfWork
from agentmemory_server.storage.sqlite.vector_index import SqliteVectorIndex
from agentmemory_server.storage.sqlite.write_gate import ProcessWriteGate

log = logging.getLogger("agentmemory.storage")
T = TypeVar("T")
# How long a statement waits for another process's write lock before it fails with database_busy,
# unless the opener says otherwise (``lock_wait``: a request process waits less than its clients).
BUSY_TIMEOUT_SECONDS = 30.0
# A write that waited longer than this for the locks before SQLite's gets its busy wait shortened.
SHORTENED_AFTER_SECONDS = 0.05
# How long the retry of owed record indexes waits for the write locks: a glance. Ordinary writes
# hold them well under a millisecond; a replace import holds them until it commits (minutes), and
# a retry that waited this process's lock wait for it held the writer meanwhile, so its requests'
# writes queued behind the retry, once a minute for as long as the import ran.
OWED_INDEXES_WAIT_SECONDS = 0.05


class Database(StorageFaults, FileLifecycle):
    """Owns the SQLite file.

    :param path: database file; parent directories are created.
    :param now: callable returning the current ISO-8601 timestamp (injectable for tests).
    :param record_indexes: the record indexes the features declare (created when missing, dropped
        when no longer declared; None leaves them as they are).
    :param reserve_bytes: write transactions are refused (507) while less is free on the disk.
    :param warn_bytes: ``storage_health`` warns while less is free.
    :param check_seconds: time budget of the integrity check at open (0: no check).
    :param queue_limits: most entries of the durable queues (``embed_backlog``, ``llm_jobs``);
        beyond them new entries are shed (see ``bounds.QueueBounds``).
    :param checkpoint_seconds: a thread checkpoints the WAL this often and commits leave it
        alone (see ``checkpoint.py``); 0: the commits do, SQLite's default.
    :param fsync_every_commit: synchronous=FULL: a commit survives an OS crash or a failing
        filesystem, not only the process dying (NORMAL).
    :raise SchemaTooNew: the file was written by a newer version of this server.
    :raise AppError: ``database_damaged`` when the file is not a database at all.

    A file that fails the check at open (or later, ``mark_damaged``) is served read-only: reads
    that still work go on, every write transaction is refused with ``database_damaged``, and no
    migration runs on it.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        now: Callable[[], str],
        record_indexes: Iterable[RecordIndex] | None = None,
        reserve_bytes: int = 0,
        warn_bytes: int = 0,
        check_seconds: float = 0.0,
        fsync_every_commit: bool = False,
        checkpoint_seconds: float = 0.0,
        queue_limits: Mapping[str, int] | None = None,
        lexical_engine: str = "tantivy",
        lexical_weights: Mapping[str, float] | None = None,
        background: bool = True,
        lock_wait: float | None = None,
    ):
        self.path = Path(path)
        self.lock_wait = BUSY_TIMEOUT_SECONDS if lock_wait is None else lock_wait
        self.bounds = QueueBounds(queue_limits or {})
        self._synchronous = "FULL" if fsync_every_commit else "NORMAL"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.location = str(self.path)
        self.blobs = BlobStore(images_dir(self.path))  # the bytes of the images (ImageIndex)
        self._now = now
        self._init_connection_state()
        self.space = FreeSpace(self.path, reserve=reserve_bytes, warn=warn_bytes)
        self.integrity = IntegrityChecks(self.path, now=now, connect_readonly=lambda: self._connect(readonly=True))
        self._writer = self._open_writer(check_seconds)
        declared = tuple(record_indexes or ())
        self._record_indexes = indexed_fields(declared, prefix=False)
        self._prefix_indexes = indexed_fields(declared, prefix=True)
        self._init_derived_state()
        if self.damage is not None:
            return  # served as it is: no migration, index or engine state is written into a damaged file
        indexes = None if record_indexes is None else declared
        self._migrate_and_start(indexes, lexical_engine, lexical_weights, background, checkpoint_seconds)

    def _init_derived_state(self) -> None:
        """The Tantivy index, the WAL checkpointer and the record indexes owed, none yet: a sound
        file gets them in ``_migrate_and_start``, a damaged one never."""
        self.lexical: TantivyLexical | None = None
        self.checkpointer: WalCheckpointer | None = None
        # The record indexes this opener could not make (see make_owed_indexes); retried on a thread.
        self.owed_indexes: tuple[RecordIndex, ...] = ()
        self._retry_stop = threading.Event()

    def _migrate_and_start(
        self,
        indexes: tuple[RecordIndex, ...] | None,
        lexical_engine: str,
        lexical_weights: Mapping[str, float] | None,
        background: bool,
        checkpoint_seconds: float,
    ) -> None:
        """On a sound file: migrate it, make the declared record ``indexes`` (None: leave them as
        they are), record the lexical engine, then start the WAL checkpointer, the Tantivy index
        and the retry of the record indexes owed, in that order."""
        self._migrate()
        if indexes is not None:
            self._ensure_indexes(indexes)
        stale = self._engine_switched(lexical_engine)
        if checkpoint_seconds > 0:  # a long-running process: commits leave WAL checkpoints to a thread
            self._start_checkpointer(checkpoint_seconds)
        if lexical_engine == "tantivy":
            self.lexical = self._open_tantivy(lexical_weights, stale, background)
        if self.owed_indexes:
            owed_indexes.make_later(self.make_owed_indexes, self._retry_stop)

    def _open_tantivy(self, weights: Mapping[str, float] | None, stale: bool, background: bool) -> TantivyLexical:
        """The Tantivy index beside the file (``stale``: rebuilt, the engine was switched)."""
        return TantivyLexical(
            Path(f"{self.path}.tantivy"), SqliteFeeds(self), weights=weights or {}, stale=stale, background=background
        )

    def _init_connection_state(self) -> None:
        """The locks, queues and per-thread connections that order this process's readers and
        writer (and, through the gate, other processes' writers)."""
        self._lock = threading.RLock()
        self._gate = ProcessWriteGate(self.path, timeout=self.lock_wait)  # orders other processes' writers too
        self._queue = WriteQueue()  # ``write`` calls waiting for a thread to commit them
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._vector_indexes: dict[tuple[str, int], SqliteVectorIndex] = {}
        self._vector_indexes_lock = threading.Lock()
        self.last_write = 0.0  # monotonic time of the last commit that changed something
        self._commit_listeners: list[Callable[[], None]] = []  # on_commit

    def _open_writer(self, check_seconds: float) -> sqlite3.Connection:
        """The writer's connection, after the checks that must see the file as it was found."""
        preflight(self.path)  # before the writer switches the file to WAL: a newer file stays untouched
        try:
            writer = self._connect(readonly=False)
        except sqlite3.DatabaseError as exc:
            raise classify(exc, self.path) or exc from None
        if check_seconds > 0:
            self.integrity.startup_check(check_seconds)
        return writer

    def _start_checkpointer(self, every: float) -> None:
        # The commits keep checkpointing only as a safety net past SAFETY_NET_PAGES (a stalled thread).
        self._writer.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_NET_PAGES}")
        self.checkpointer = WalCheckpointer(lambda: self._connect(readonly=False), interval=every)
        self.checkpointer.start()

    def _ensure_indexes(self, declared: tuple[RecordIndex, ...]) -> bool:
        """The declared record indexes, or none of the missing ones this time when another
        process holds the write lock past this opener's busy wait (a replace import holds it until
        it commits): they speed listings up, so the store opens without them (a start must not
        fail for an import) and owes them: a thread makes them once the lock is free
        (``make_owed_indexes``). False: they are owed."""
        with self._lock:
            try:
                with self._write_lock_waited("making the record indexes"):
                    ensure_indexes(self._writer, declared)
            except owed_indexes.LockHeldAtOpen:
                if not self.owed_indexes:
                    owed_indexes.announce_owed("another process", "the write lock", self.lock_wait)
                self.owed_indexes = declared
                return False
        self.owed_indexes = ()
        return True

    def make_owed_indexes(self) -> bool:
        """Make the record indexes this store was opened without (another process held the write
        lock at its start), if the write locks are free at a glance (OWED_INDEXES_WAIT_SECONDS);
        True when none is owed any more. While an import holds them the attempt is skipped
        (False): it does not keep this process's writer from its requests for a lock wait."""
        if not self.owed_indexes or self._closed:
            return True
        deadline = time.monotonic() + OWED_INDEXES_WAIT_SECONDS
        try:
            with self._writer_turn(deadline), self._other_processes_turn(deadline):
                made = self._ensure_indexes(self.owed_indexes)
        except Unavailable as exc:
            if not errors.is_database_busy(exc):
                raise
            return False  # the write lock is held (an import until it commits): the next retry
        if made:
            owed_indexes.announce_made("the write lock")
        return made

    def _engine_switched(self, engine: str) -> bool:
        """Record which lexical engine serves writes; True when the Tantivy index may have missed
        some (another engine served them since it last did)."""
        with self._lock:
            row = self._writer.execute("SELECT value FROM lexical_state WHERE name = 'engine'").fetchone()
            if row is None or row[0] != engine:
                self._writer.execute(
                    "INSERT INTO lexical_state (name, value) VALUES ('engine', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (engine,),
                )
                if engine != "tantivy":  # nobody prunes the outbox now
                    self._writer.execute("DELETE FROM lexical_outbox")
            lexical_fts5.tune_merging(self._writer, answering=engine != "tantivy")
        return row is not None and row[0] != engine

    # ---- connections
    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_SECONDS,
            )
            conn.execute("PRAGMA cache_size = -4000")
        else:
            conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA cache_size = -16000")
        conn.execute(f"PRAGMA busy_timeout = {int((BUSY_TIMEOUT_SECONDS if readonly else self.lock_wait) * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _migrate(self) -> None:
        schema.migrate(self._writer, self.path, self._lock, self.lock_wait)

    @property
    def schema_version(self) -> int:
        return self._writer.execute("PRAGMA user_version").fetchone()[0]

    def _write_lock_waited(self, step: str) -> AbstractContextManager[None]:
        """Run ``step`` of opening the store, which needs the write lock (``schema.write_lock_waited``)."""
        return schema.write_lock_waited(self.path, self.lock_wait, step)

    def reader(self) -> SqliteUnitOfWork:
        """A read-only Store on this thread's own connection (inside a write transaction on
        this thread, the transaction's Store, so a handler sees its own writes)."""
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            return tx
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise Unavailable("database is closed", code=errors.DATABASE_CLOSED)
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return self._unit(conn, writable=False)

    @contextmanager
    def snapshot_reader(self) -> Iterator[SqliteUnitOfWork]:
        """A read-only Store whose queries all see one state (a single read transaction), for
        long multi-query reads such as a streaming export. Writers are not blocked (WAL)."""
        store = self.reader()
        if store.writable:  # inside this thread's write transaction: already one state
            yield store
            return
        store.conn.execute("BEGIN")
        try:
            yield store
        finally:
            store.conn.execute("COMMIT")

    @contextmanager
    def transaction(self, operation: str, *, agent_id: str | None = None) -> Iterator[SqliteUnitOfWork]:
        """One short write transaction. Nested calls on the same thread join the outer one.

        On commit, one audit row records ``operation``, the agent and the touched keys.
        """
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        deadline = time.monotonic() + self.lock_wait
        with self._writer_turn(deadline), self._other_processes_turn(deadline):
            conn = self._begin()
            store = self._write_unit()
            self._local.tx = store
            try:
                yield store
                if store.changed:
                    self._write_audit(store, operation, agent_id)
                self._commit(conn)
            except BaseException as exc:
                self._rollback(conn)
                fault = self.app_error(exc) if isinstance(exc, sqlite3.Error) else None
                if fault is not None:
                    raise fault from exc  # nothing was committed: the client must not count it as stored
                raise
            finally:
                self._local.tx = None
        if store.lexical_changed and self.lexical is not None:
            self.lexical.notify()
        store.run_after_commit()
        self._tell_commit_listeners()

    def on_commit(self, fn: Callable[[], None]) -> None:
        self._commit_listeners.append(fn)

    def _tell_commit_listeners(self) -> None:
        for fn in self._commit_listeners:
            fn()

    def write(self, operation: str, work: Callable[[SqliteUnitOfWork], T], *, agent_id: str | None = None) -> T:
        """``work(tx)`` in a write transaction, as ``transaction`` (audit row, after-commit
        callbacks, nested calls join), which other threads of this process may share: their
        calls queued meanwhile commit together (``group_commit.py``)."""
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            return work(outer)
        deadline = time.monotonic() + self.lock_wait
        queued: Queued[T] = self._queue.put(operation, work, agent_id)
        if not self._lock.acquire(timeout=self.lock_wait):
            if self._queue.withdraw(queued):  # no group took it: nothing of it ran
                raise self._lock_taken()
            self._lock.acquire()  # a group is running it: its outcome comes within that group's wait
        try:
            if not queued.finished:  # no thread took it into its group: lead one
                self._commit_group(self._queue.take(), deadline)
        finally:
            self._lock.release()
        result = queued.outcome()  # raises what failed it: then nothing was committed
        self._tell_commit_listeners()
        return result

    # A write waits for three locks in turn: this process's writer lock (held by a thread that may
    # itself wait for the others), the gate between the processes of this file, and SQLite's own
    # lock (another program: a sqlite3 shell, a backup tool). One deadline covers all three, so a
    # request answers within ``lock_wait`` however the wait is shared among them.

    @contextmanager
    def _writer_turn(self, deadline: float) -> Iterator[None]:
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._lock_taken()
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def _other_processes_turn(self, deadline: float) -> Iterator[None]:
        """The gate, then SQLite's busy wait cut to what is left of ``deadline`` (the writer's
        busy_timeout is set back after a shortened wait; the usual case costs no statement)."""
        self._gate.acquire(timeout=max(0.0, deadline - time.monotonic()))
        try:
            left = deadline - time.monotonic()
            shortened = left < self.lock_wait - SHORTENED_AFTER_SECONDS
            if shortened:
                self._writer.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
            try:
                yield
            finally:
                if shortened:
                    self._writer.execute(f"PRAGMA busy_timeout = {int(self.lock_wait * 1000)}")
        finally:
            self._gate.release()

    def _lock_taken(self) -> Unavailable:
        return Unavailable(
            f"the database's write lock stayed taken for over {self.lock_wait:g} s; retry shortly",
            code=errors.DATABASE_BUSY,
            retry_after=1,
        )

    def _commit_group(self, group: list[Queued[Any]], deadline: float) -> None:
        try:
            with self._other_processes_turn(deadline):
                conn = self._begin()
                try:
                    run_group(conn, group, self._write_unit, self._write_audit, self._local, self._client_error)
                    self._commit(conn)
                except BaseException:
                    self._rollback(conn)
                    raise
        except BaseException as exc:
            for queued in group:
                queued.fail(self._client_error(exc))  # nothing of the group was committed
            return
        if self.lexical is not None and any(q.unit is not None and q.unit.lexical_changed for q in group):
            self.lexical.notify()
        for queued in group:
            queued.committed()

    def _client_error(self, exc: BaseException) -> BaseException:
        """A storage failure as the AppError a client understands (disk full, damaged, ...)."""
        fault = self.app_error(exc) if isinstance(exc, sqlite3.Error) else None
        if fault is None:
            return exc
        fault.__cause__ = exc
        return fault

    def _begin(self) -> sqlite3.Connection:
        """BEGIN IMMEDIATE on the writer (its caller holds the write locks)."""
        if self._closed:
            raise Unavailable("database is closed", code=errors.DATABASE_CLOSED)
        self._refuse_writes_if_unsafe()
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self.app_error(exc) or exc from exc
        return conn

    def _write_unit(self) -> SqliteUnitOfWork:
        return self._unit(self._writer, writable=True)

    def _unit(self, conn: sqlite3.Connection, *, writable: bool) -> SqliteUnitOfWork:
        return SqliteUnitOfWork(
            conn,
            writable=writable,
            engine=self.lexical,
            record_indexes=self._record_indexes,
            prefix_indexes=self._prefix_indexes,
            vector_index=self.vector_index,
            bounds=self.bounds if writable else None,
            blobs=self.blobs,
        )

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")
        self.last_write = time.monotonic()
        self.space.note_written()

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # A full disk or an I/O error may already have rolled the transaction back.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("ROLLBACK failed after a failed transaction", exc_info=True)

    def _write_audit(self, store: SqliteUnitOfWork, operation: str, agent_id: str | None) -> None:
        store.write_audit(self._now(), operation, agent_id)

    # ---- the nearest-neighbour index beside the file
    def vector_index(self, model: str, dim: int) -> SqliteVectorIndex:
        """The persistent index of ``model``'s vectors, opened (loaded from its files, or queued
        for a rebuild) on first use in this process."""
        with self._vector_indexes_lock:
            index = self._vector_indexes.get((model, dim))
            if index is None:
                index = SqliteVectorIndex(
                    self.path,
                    model,
                    dim,
                    connect=lambda: self.reader().conn,
                    write=self._write_statement,
                    space=self.space,
                )
                self._vector_indexes[(model, dim)] = index
            return index

    def _write_statement(self, sql: str, params: tuple) -> None:
        with self.transaction("vector_index") as tx:
            tx.conn.execute(sql, params)


def _implements_the_interface(unit: SqliteUnitOfWork, db: Database) -> interfaces.Database:
    """Never called: the type checker proves here that this backend implements the storage
    interface (a missing or mismatched method fails ``mypy``)."""
    records: interfaces.Records = unit.records
    events: interfaces.CaptureLog = unit.events
    inbox: interfaces.CaptureInbox = unit.inbox
    images: interfaces.ImageIndex = unit.images
    index: interfaces.SearchIndex = unit.index
    vectors: interfaces.VectorStore = unit.vectors
    audit: interfaces.AuditLog = unit.audit
    jobs: interfaces.JobQueue = unit.jobs
    usage: interfaces.ModelUsage = unit.usage
    working: interfaces.WorkingStore = unit.working
    admin: interfaces.Admin = unit.admin
    live: interfaces.EventLog = unit.live
    whole: interfaces.UnitOfWork = unit
    del records, events, inbox, images, index, vectors, audit, jobs, usage, working, admin, live, whole
    return db
