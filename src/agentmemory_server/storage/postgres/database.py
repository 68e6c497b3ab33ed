"""PostgreSQL storage: the connection pool, transactions and units of work.

Concurrency discipline. Reads borrow a pooled connection for one statement at a time
(autocommit, READ COMMITTED), so a reader never holds a connection between statements and a
worker's threads share a small pool. Every write transaction first takes one cluster-wide
advisory lock (``WRITE_LOCK``): writes are serialised as they are on SQLite (one writer at a
time, whatever the node), so every read-modify-write in the features stays correct without
retries, and outbox sequence numbers commit in order (lexical_feed.py relies on it). A write
transaction holds the lock for its few statements only; measured in bench/cluster.py. One
holds it for minutes: a replace import's single transaction. A writer waits for the lock at
most ``lock_wait`` seconds (PostgreSQL's ``lock_timeout``), then fails with 503
``database_busy``, as a SQLite writer does after its busy timeout: a request answers before its
client gives up, and a hook event goes to the capture spool (bench/import_bystanders.py).

The repositories (records.py, search_index.py, ...) hold every SQL statement; this module only
owns the pool, hands out units of work (unit_of_work.py) and runs the transactions. The schema
at open is schema.py's; the connections the repositories run SQL through are connections.py's,
where a psycopg error becomes an ``AppError`` (``raise_translated``): a value PostgreSQL cannot
store is a 400, a lost or exhausted connection a 503, a bug (a violated constraint...) a 500. How
a transaction starts (again, once, on a fresh connection when the server had ended the first) and
rolls back is transactions.py's. The advisory lock keys are advisory_locks.py's. The pool, the
wait for a connection and the check whether the database answers are pool.py's.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Unavailable
from agentmemory_server.storage import interfaces, owed_indexes
from agentmemory_server.storage.blobs import BlobStore, images_dir
from agentmemory_server.storage.interfaces import RecordIndex, indexed_fields
from agentmemory_server.storage.lexical.tantivy_index import TantivyLexical
from agentmemory_server.storage.postgres.advisory_locks import LEASE_LOCK, LIVE_LOCK, WRITE_LOCK
from agentmemory_server.storage.postgres.common import SqlConn
from agentmemory_server.storage.postgres.connections import PooledReader, TxConnection, raise_translated
from agentmemory_server.storage.postgres.faults import (
    classify,
    damaged,
)
from agentmemory_server.storage.postgres.lexical_feed import PgFeeds
from agentmemory_server.storage.postgres.live import NotifySignal
from agentmemory_server.storage.postgres.pool import PoolCheckout, open_pool
from agentmemory_server.storage.postgres.schema import Schema
from agentmemory_server.storage.postgres.transactions import collect, rolled_back_on_failure, started
from agentmemory_server.storage.postgres.unit_of_work import PostgresUnitOfWork
from agentmemory_server.storage.postgres.vectors import PgVectorIndex
from agentmemory_server.storage.sqlite.bounds import QueueBounds
from agentmemory_server.storage.sqlite.faults import FreeSpace
from agentmemory_server.storage.urls import without_password

log = logging.getLogger("agentmemory.postgres")
T = TypeVar("T")

# Transactions that order themselves under a lock of their own instead of the write lock: the
# live event log's appends (kernel/bus.py) write no other table, and only their sequence
# numbers must commit in order, so they neither wait for the record writers nor hold them up
# (every write request is followed by one: bench/pg_statements.py).
OWN_LOCKS = {"live_events": LIVE_LOCK, "transfer_lease": LEASE_LOCK}
# How long a write waits for the write lock unless the opener says otherwise (``lock_wait``: a
# request process waits less than its clients); SQLite's BUSY_TIMEOUT_SECONDS.
LOCK_WAIT_SECONDS = 30.0


class PostgresDatabase(PoolCheckout):
    """Owns the pool for one PostgreSQL database.

    :param url: ``postgresql://user:password@host:port/dbname`` (libpq URI or key=value).
    :param local_path: where this node keeps its own state (its parent directory holds the
        Tantivy index); the database itself is the URL's.
    :param pool_size: most connections this process opens.
    :param queue_limits: most entries of the durable queues (see ``sqlite.bounds.QueueBounds``;
        counted per process, as on SQLite).
    :param disk_reserve_bytes: /health's disk is critical while less is free on this node's disk.
    :param disk_warn_bytes: /health's disk warns while less is free on this node's disk.
    :param lock_wait: seconds a write waits for the write lock (another writer's transaction, a
        replace import's for minutes) before it fails with 503 ``database_busy``.
    :raise SchemaTooNew: the database was written by a newer version of this server.

    Faults (``storage/postgres/faults.py``): damaged data reported by the server marks this
    node's view damaged (writes refused until restart); /health's disk is this node's own disk
    (its Tantivy index), the server's disk being the server's to watch.
    """

    def __init__(
        self,
        url: str,
        *,
        local_path: Path,
        now: Callable[[], str],
        record_indexes: Iterable[RecordIndex] | None = None,
        lexical_engine: str = "tantivy",
        lexical_weights: Mapping[str, float] | None = None,
        background: bool = True,
        pool_size: int = 10,
        node: str | None = None,
        queue_limits: Mapping[str, int] | None = None,
        disk_reserve_bytes: int = 0,
        disk_warn_bytes: int = 0,
        lock_wait: float | None = None,
    ):
        self.url = url
        self.lock_wait = LOCK_WAIT_SECONDS if lock_wait is None else lock_wait
        self.location = without_password(url)
        self.path = Path(local_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.legacy_images = BlobStore(images_dir(self.path))  # image bytes stored before migration 6
        self._now = now
        self._init_process_state()
        self.bounds = QueueBounds(queue_limits or {})
        # This node's own disk (its Tantivy index): watched in /health, never a reason to refuse writes.
        self.space = FreeSpace(self.path, reserve=disk_reserve_bytes, warn=disk_warn_bytes)
        self.damage: dict[str, Any] | None = None
        self.last_check: dict[str, Any] | None = None
        declared = None if record_indexes is None else tuple(record_indexes)
        self.schema = Schema(url, self.location)  # migrations at open, record indexes made or owed
        self._retry_stop = threading.Event()
        self._record_indexes = indexed_fields(declared or (), prefix=False)
        self._prefix_indexes = indexed_fields(declared or (), prefix=True)
        self._vector_indexes: dict[tuple[str, int], PgVectorIndex] = {}
        database_id = self.schema.migrate(declared)
        self.pool = open_pool(url, pool_size)
        self._start_lexical(database_id, lexical_engine, lexical_weights, background, node)

    def _init_process_state(self) -> None:
        """This process's own state: its threads' transactions, its writers' turn, whether it is
        closed or the database stopped answering, its last write and commit listeners."""
        self._local = threading.local()
        self._write_mutex = threading.Lock()
        self._closed = False
        # Set when a connection broke or a wait for one ran out, and the database then did not
        # answer a check: until it answers again, requests fail at once with the reason instead
        # of each waiting the pool's timeout out (longer than any hook waits for its answer).
        self._unanswered = False
        self.last_write = 0.0
        self._commit_listeners: list[Callable[[], None]] = []  # on_commit

    def _start_lexical(
        self, database_id: str, engine: str, weights: Mapping[str, float] | None, background: bool, node: str | None
    ) -> None:
        """Record the lexical ``engine`` (the units of work of that transaction have no Tantivy
        index yet), open this node's Tantivy index when it is the engine, then retry the record
        indexes owed on a thread."""
        self.lexical: TantivyLexical | None = None
        stale = self._engine_switched(engine)
        if engine == "tantivy":
            self.lexical = self._open_tantivy(database_id, weights, stale, background, node)
        if self.owed_indexes:
            owed_indexes.make_later(self.make_owed_indexes, self._retry_stop)

    def _open_tantivy(
        self, database_id: str, weights: Mapping[str, float] | None, stale: bool, background: bool, node: str | None
    ) -> TantivyLexical:
        """This node's Tantivy index, in a directory named after the database it indexes (so a
        node pointed at another database does not search the first one's index)."""
        directory = self.path.parent / f"tantivy-{database_id}"
        return TantivyLexical(
            directory,
            PgFeeds(self),
            weights=weights or {},
            stale=stale,
            background=background,
            node=node or f"{socket.gethostname()}:{directory}",
        )

    # ---- schema (schema.py)
    @property
    def owed_indexes(self) -> tuple[RecordIndex, ...]:
        """The record indexes this opener could not make (see make_owed_indexes); retried on a thread."""
        return self.schema.owed_indexes

    def make_owed_indexes(self) -> bool:
        return self.schema.make_owed_indexes()

    def _engine_switched(self, engine: str) -> bool:
        # Read first: the write transaction waits for the store's write lock, which a long write
        # (a replace import) holds for minutes, and most starts find the engine unchanged.
        row = self.reader().conn.execute("SELECT value FROM lexical_state WHERE name = 'engine'").fetchone()
        if row is not None and row[0] == engine:
            return False
        with self.transaction("lexical_engine") as unit:
            conn = unit.conn
            row = conn.execute("SELECT value FROM lexical_state WHERE name = 'engine'").fetchone()
            if row is None or row[0] != engine:
                conn.execute(
                    "INSERT INTO lexical_state (name, value) VALUES ('engine', %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (engine,),
                )
                if engine != "tantivy":
                    conn.execute("DELETE FROM lexical_outbox")
        return row is not None and row[0] != engine

    @property
    def schema_version(self) -> int:
        return int(self.reader().conn.execute("SELECT version FROM agentmemory_schema").fetchone()[0])

    # ---- units of work
    def _unit(self, conn: SqlConn, *, writable: bool) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(
            conn,
            writable=writable,
            engine=self.lexical,
            bounds=self.bounds,
            record_indexes=self._record_indexes,
            prefix_indexes=self._prefix_indexes,
            legacy_images=self.legacy_images,
        )

    def reader(self) -> PostgresUnitOfWork:
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            return tx
        if self._closed:
            raise Unavailable("database is closed", code=errors.DATABASE_CLOSED)
        return self._unit(PooledReader(self), writable=False)

    @contextmanager
    def snapshot_reader(self) -> Iterator[PostgresUnitOfWork]:
        """One REPEATABLE READ transaction: every query sees one state (a streaming export)."""
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        with self._begun("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as conn:
            try:
                yield self._unit(TxConnection(conn), writable=False)
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _begun(self, begin: str) -> Iterator[psycopg.Connection]:
        """A pooled connection on which the read-only transaction ``begin`` started
        (``transactions.started``: once more on a fresh connection when the server had ended
        the first)."""

        def start(stack: ExitStack) -> psycopg.Connection:
            conn = stack.enter_context(self._connection())
            conn.execute(begin)
            return conn

        with started(start, "a read") as conn:
            yield conn

    @contextmanager
    def _classified(self) -> Iterator[None]:
        """A failure of the commit itself (outside TxConnection) becomes its AppError."""
        try:
            yield
        except psycopg.Error as exc:
            raise_translated(exc, self.app_error)  # app_error: damage found by the commit is marked too

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if self._closed:
            raise Unavailable("database is closed", code=errors.DATABASE_CLOSED)
        try:
            with self.pooled() as conn:
                yield conn
        except psycopg.Error as exc:
            raise_translated(exc)

    @contextmanager
    def transaction(self, operation: str, *, agent_id: str | None = None) -> Iterator[PostgresUnitOfWork]:
        """One short write transaction under the write lock. Nested calls on one thread join the
        outer one. On commit, one audit row records ``operation``, the agent and what changed."""
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        if self.damage is not None:
            raise damaged(self.location, self.damage["problems"])
        lock = OWN_LOCKS.get(operation, WRITE_LOCK)
        deadline = time.monotonic() + self.lock_wait
        turn = self._writer_turn(deadline) if lock == WRITE_LOCK else nullcontext()
        with turn:
            with self._write_begun(lock, deadline) as conn:
                store = self._unit(TxConnection(conn, pipelined=True), writable=True)
                self._local.tx = store
                try:
                    yield store
                    if store.changed:
                        store.write_audit(self._now(), operation, agent_id)
                    conn.execute("COMMIT")
                except BaseException:
                    collect(conn)
                    raise
                finally:
                    self._local.tx = None
            # Leaving _write_begun's pipeline sent the COMMIT and waited for it.
            self.last_write = time.monotonic()
            self.space.note_written()
        self._after_commit(store)

    @contextmanager
    def _write_begun(self, lock: int, deadline: float) -> Iterator[psycopg.Connection]:
        """A pooled connection in pipeline mode on which a write transaction began and took
        ``lock`` (``transactions.started``: once more on a fresh connection when a PostgreSQL
        restart had ended the first while it sat idle, so the first write after a restart is
        served). Its failures, and those of the caller's block run inside it, are rolled back
        and become their AppError (a connection ended under the block: 503 ``unavailable``,
        never retried: the block could have committed before its connection broke)."""

        def start(stack: ExitStack) -> psycopg.Connection:
            conn = stack.enter_context(self._connection())
            stack.enter_context(self._classified())
            stack.enter_context(rolled_back_on_failure(conn))
            # BEGIN and COMMIT are sent by hand: psycopg's transaction() in pipeline mode syncs
            # on entry and exit (four more round trips a write). The pipeline's exit sends the
            # COMMIT and waits for it (Pipeline.sync() can stall with megabytes unsent).
            stack.enter_context(conn.pipeline())
            conn.execute("BEGIN")
            # Waited for here (with BEGIN, one round trip), before the block runs: the write
            # lock comes first in every thread's lock order, and a connection the server ended
            # fails here, while nothing of the block was sent.
            self._take_lock(conn, lock, deadline)
            return conn

        with started(start, "a write transaction") as conn:
            yield conn

    def _take_lock(self, conn: psycopg.Connection, lock: int, deadline: float) -> None:
        """The transaction's advisory lock: the store's write lock, or an operation's own."""
        if lock == WRITE_LOCK:
            self._take_write_lock(conn, deadline)
        else:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,)).fetchone()

    def _after_commit(self, store: PostgresUnitOfWork) -> None:
        """Once a transaction committed: the lexical index told, the block's after-commit work
        and the commit listeners run."""
        if store.lexical_changed and self.lexical is not None:
            self.lexical.notify()
        store.run_after_commit()
        for fn in self._commit_listeners:
            fn()

    def on_commit(self, fn: Callable[[], None]) -> None:
        self._commit_listeners.append(fn)

    def write(self, operation: str, work: Callable[[PostgresUnitOfWork], T], *, agent_id: str | None = None) -> T:
        """``work(tx)`` in its own write transaction (``transaction``; the interface lets SQLite
        commit several threads' calls together)."""
        with self.transaction(operation, agent_id=agent_id) as tx:
            return work(tx)

    @contextmanager
    def _writer_turn(self, deadline: float) -> Iterator[None]:
        """This process's turn to write, taken before a pooled connection: the threads waiting
        for the cluster's write lock hold no connection meanwhile. Otherwise writers waiting for
        the lock could hold every connection while the lock holder waits for a thread that
        needs one to go on (a search holding the lexical engine's pending lock): a deadlock
        only the pool timeout broke (bench/cluster.py, 10 clients: 18 requests/s). The wait for
        it and for the write lock share one ``deadline``: the threads queued behind a writer
        that waits for a long import's lock give up when it does, not one ``lock_wait`` each."""
        if not self._write_mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._lock_taken()
        try:
            yield
        finally:
            self._write_mutex.release()

    def _take_write_lock(self, conn: psycopg.Connection, deadline: float) -> None:
        """The cluster's write lock, waited for until ``deadline`` (``lock_timeout``, for this
        wait only: the transaction's own statements then wait as long as they need).

        :raise Unavailable: another transaction (a replace import's) kept it (``database_busy``).
        """
        wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{wait_ms}ms",))
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,)).fetchone()
        except psycopg.errors.LockNotAvailable:
            raise self._lock_taken() from None
        conn.execute("SET LOCAL lock_timeout TO DEFAULT")

    def _lock_taken(self) -> Unavailable:
        return Unavailable(
            f"the database's write lock stayed taken for over {self.lock_wait:g} s (another writer holds it, "
            "such as a replace import, which holds it until it commits); retry shortly",
            code=errors.DATABASE_BUSY,
            retry_after=1,
        )

    # ---- faults
    def run_integrity_check(self, budget_seconds: float, source: str) -> list[str] | None:
        """The records' own consistency (``Admin.integrity_check``) under a statement timeout;
        PostgreSQL checksums its pages itself and reports damage on the query that meets it."""
        started = time.monotonic()
        problems: list[str] | None
        try:
            with self._connection() as conn:
                conn.execute(f"SET statement_timeout = {max(1, int(budget_seconds * 1000))}")
                try:
                    problems = [self._unit(TxConnection(conn), writable=False).admin.integrity_check()]
                finally:
                    conn.execute("RESET statement_timeout")
        except AppError as exc:
            # Only damage met by the check is a finding; a database that is busy, out of disk or
            # does not answer leaves the check unfinished.
            problems = [exc.message] if exc.code == errors.DATABASE_DAMAGED else None
        except psycopg.Error:  # what classify does not know (an internal error...): not a finding
            log.exception("the integrity check failed; it is left unfinished")
            problems = None
        self.last_check = {
            "at": self._now(),
            "source": source,
            "seconds": round(time.monotonic() - started, 3),
            "result": "unfinished" if problems is None else "ok" if problems == ["ok"] else "damaged",
        }
        if problems is not None and problems != ["ok"]:
            self.mark_damaged(problems, source)
        return problems

    def periodic_integrity_check(self, budget_seconds: float, passed_within: float) -> list[str] | None:
        # Every node runs its own: PostgreSQL checksums its pages itself, so this is one count
        # over the records (Admin.integrity_check), not a read of every page as on SQLite.
        return self.run_integrity_check(budget_seconds, "periodic integrity check")

    def mark_damaged(self, problems: list[str], source: str) -> None:
        if self.damage is not None:
            return
        error = damaged(self.location, problems)
        self.damage = {"at": self._now(), "source": source, "problems": problems[:20], "fix": error.details["fix"]}
        log.error("%s: %s. To recover: %s", source, error.message, error.details["fix"])

    def app_error(self, exc: BaseException) -> AppError | None:
        error = classify(exc, self.location)
        if error is not None and error.code == errors.DATABASE_DAMAGED:
            self.mark_damaged(error.details["problems"], "a query")
        return error

    def storage_health(self) -> dict[str, Any]:
        integrity = {"status": "critical" if self.damage else "healthy", "lastCheck": self.last_check}
        if self.damage:
            integrity["damaged"] = self.damage
        return {"disk": self.space.health(), "integrity": integrity}

    def queue_stats(self) -> dict[str, Any]:
        return self.bounds.stats()

    def close_queue(self, name: str) -> None:
        self.bounds.close(name)

    def vector_index(self, model: str, dim: int) -> PgVectorIndex:
        """pgvector's index lives in the database: nothing to load."""
        index = self._vector_indexes.get((model, dim))
        if index is None:
            index = PgVectorIndex(lambda: self._vector_count(model, dim), model, dim)
            self._vector_indexes[(model, dim)] = index
        return index

    def _vector_count(self, model: str, dim: int) -> int:
        return self.reader().vectors.count(model, dim)

    def verify_index(self) -> None:
        if self.lexical is not None:
            self.lexical.request_verify()

    # ---- facts and lifecycle
    def file_sizes(self) -> dict[str, int]:
        size = self.reader().conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        return {"db": int(size), "wal": 0, "shm": 0}

    def health(self) -> dict[str, Any]:
        lexical = self.lexical.health() if self.lexical is not None else {"engine": "builtin", "state": "ready"}
        stats = self.pool.get_stats()
        pool = {k: stats.get(k, 0) for k in ("pool_size", "pool_available", "requests_waiting", "requests_errors")}
        return {"backend": "postgresql", "lexical": lexical, "pool": pool}

    def event_signal(self) -> NotifySignal:
        return NotifySignal(self.url)

    def flush(self, *, commit: bool = True) -> None:
        if self.lexical is not None:
            self.lexical.flush(commit=commit)

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints its own WAL."""

    def bulk_load(self) -> AbstractContextManager[None]:
        """Nothing to tune: the batches are already a few statements each."""
        return nullcontext()

    def close(self) -> None:
        if self._closed:
            return
        self._retry_stop.set()
        if self.lexical is not None:
            self.lexical.close()  # its last commit records progress in the database
        self._closed = True
        self.pool.close()


def _implements_the_interface(unit: PostgresUnitOfWork, db: PostgresDatabase) -> interfaces.Database:
    """Never called: the type checker proves here that this backend implements the interface."""
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
    vector_index: interfaces.VectorIndex = db.vector_index("model", 1)
    del records, events, inbox, images, index, vectors, audit, jobs, usage, working, admin, live, whole, vector_index
    return db
