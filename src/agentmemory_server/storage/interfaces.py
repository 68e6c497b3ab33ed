"""The storage interface: what the rest of the server may ask of a database.

Features never see SQL. They open a unit of work (``db.transaction(operation)`` to write,
``db.reader()`` to read) and call its repositories, one per area:

==============  ==================================================================================
``records``     the records (JSON values under ``(scope, key)``): the source of truth
``events``      hook event ids already stored (exact dedup; kept after a forget)
``inbox``       hook events that did not become an observation (retries, dead letters, filtered)
                and the capture pipeline's counters
``images``      images taken out of payloads (named by sha256), their bytes, the rows using them
``index``       the search index: one row per searchable record, lexical (BM25) search, timelines
``vectors``     embeddings of search rows and the backlog of rows waiting for one
``audit``       the audit log (one row per transaction that changed something, written for you)
``jobs``        the durable queue of background model work
``usage``       model calls and their tokens, summed per day, provider, model and feature
``working``     session working memory (keys with TTL, task state, scratchpad, checkpoints)
``admin``       integrity checks, table counts, wiping (import with strategy=replace)
``live``        live events shared by worker processes and nodes (the event bus)
==============  ==================================================================================

The protocols are grouped by area: ``interfaces_records`` (records, events, inbox, images),
``interfaces_search`` (index, vectors) and ``interfaces_jobs`` (audit, jobs, usage); working,
admin and live, the unit of work and the database are defined here. Every name is importable
from this module, which is where the rest of the server imports them from.

Every method takes plain values. Field names of records appear only as arguments (``Where``,
``order_by``, ``RecordIndex``), never inside an implementation, so a second backend (PostgreSQL)
implements exactly these protocols and runs the same test suite.

A unit of work from ``transaction`` writes one audit row on commit listing what changed, then
runs the callbacks given to ``after_commit`` (live events). Nested ``transaction`` calls on one
thread join the outer one; ``reader()`` inside a transaction returns that transaction, so a
handler reads its own writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agentmemory_server.errors import AppError
from agentmemory_server.storage.interfaces_jobs import AuditLog, JobQueue, ModelCall, ModelUsage
from agentmemory_server.storage.interfaces_records import (
    CaptureInbox,
    CaptureLog,
    ImageIndex,
    Operator,
    RecordIndex,
    Records,
    Where,
    equal,
    indexed_fields,
)
from agentmemory_server.storage.interfaces_search import Doc, SearchIndex, VectorIndex, VectorStore

# Re-exported: importers name this module whichever module defines a protocol.
__all__ = [
    "Admin",
    "AuditLog",
    "CaptureInbox",
    "CaptureLog",
    "Database",
    "Doc",
    "EventLog",
    "EventSignal",
    "ImageIndex",
    "JobQueue",
    "ModelCall",
    "ModelUsage",
    "Operator",
    "RecordIndex",
    "Records",
    "SearchIndex",
    "UnitOfWork",
    "VectorIndex",
    "VectorStore",
    "WMScope",
    "Where",
    "WorkingStore",
    "equal",
    "indexed_fields",
]

# Working memory is addressed by (project, agent, session).
WMScope = tuple[str, str, str]
T = TypeVar("T")


class WorkingStore(Protocol):
    """Working memory. ``now`` is epoch seconds: a key whose expires_at <= now is gone for every
    read even before the sweep deletes it."""

    def kv_get(self, scope: WMScope, key: str, now: float) -> tuple[str, float | None] | None: ...
    def kv_items(
        self, scope: WMScope, now: float, *, pattern: str | None = None, values: bool = True
    ) -> list[tuple[str, str | None, float | None]]: ...
    def kv_count(self, scope: WMScope, now: float) -> int: ...
    def kv_put_many(self, scope: WMScope, rows: Iterable[tuple[str, str, float | None]], stamp: str) -> None: ...
    def kv_delete(self, scope: WMScope, key: str, now: float) -> bool: ...
    def kv_delete_glob(self, scope: WMScope, pattern: str, now: float) -> list[str]: ...
    def kv_clear(self, scope: WMScope, now: float) -> int: ...
    def kv_sweep(self, now: float) -> int: ...
    def task_get(self, scope: WMScope) -> tuple[str, int] | None: ...
    def task_put(self, scope: WMScope, task: str, version: int, expected: int | None) -> bool: ...
    def task_delete(self, scope: WMScope) -> bool: ...
    def scratch_append(self, scope: WMScope, content: str, created_at: str, cap: int) -> tuple[int, int]: ...
    def scratch_list(self, scope: WMScope, limit: int | None = None) -> list[tuple[str, str]]: ...
    def scratch_count(self, scope: WMScope) -> int: ...
    def scratch_clear(self, scope: WMScope) -> int: ...
    def scratch_put_many(self, scope: WMScope, entries: list[tuple[str, str]]) -> None: ...
    def checkpoint_insert(self, scope: WMScope, checkpoint_id: str, meta: str, snapshot: str) -> int: ...
    def checkpoint_get(self, scope: WMScope, checkpoint_id: str) -> tuple[str, str] | None: ...
    def checkpoint_list(self, scope: WMScope) -> list[tuple[int, str]]: ...
    def checkpoint_delete(self, scope: WMScope, checkpoint_id: str) -> bool: ...
    def checkpoint_prune(self, scope: WMScope, keep: int) -> list[str]: ...
    def counts(self, scope: WMScope, now: float) -> dict[str, int]: ...
    def session_scopes(self, session: str) -> list[tuple[str, str]]: ...
    def held_scopes(self) -> list[WMScope]: ...


class EventLog(Protocol):
    """Live events shared by every worker process and node (``kernel/bus.py``): appended in
    order, read back after a sequence number by each process, which fans them out to its viewers."""

    def append(self, events: Sequence[tuple[str, str, float, str]]) -> int:
        """Store (type, record JSON, epoch time, origin) in order; returns the last sequence."""
        ...

    def after(self, seq: int, limit: int) -> list[tuple[int, str, str, float, str]]:
        """(seq, type, record JSON, time, origin) after ``seq``, oldest first."""
        ...

    def newest(self) -> int: ...

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` events; returns how many went."""
        ...


class Admin(Protocol):
    def integrity_check(self) -> str: ...
    def quick_check(self) -> list[str]: ...
    def table_counts(self) -> dict[str, int]: ...
    def wipe_records(self) -> None: ...


class UnitOfWork(Protocol):
    """One transaction (``writable``) or one reader, with a repository per area."""

    @property
    def records(self) -> Records: ...

    @property
    def events(self) -> CaptureLog: ...

    @property
    def inbox(self) -> CaptureInbox: ...

    @property
    def images(self) -> ImageIndex: ...

    @property
    def index(self) -> SearchIndex: ...

    @property
    def vectors(self) -> VectorStore: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def jobs(self) -> JobQueue: ...

    @property
    def usage(self) -> ModelUsage: ...

    @property
    def working(self) -> WorkingStore: ...

    @property
    def admin(self) -> Admin: ...

    @property
    def live(self) -> EventLog: ...

    writable: bool
    audit_message: str | None
    audit_details: dict[str, Any]
    # What the transaction changed, for its audit row: its first 50 distinct entries are listed,
    # and with more, ``audit_details["targetCount"]`` counts them all (distinct). A long
    # transaction that cuts this list short as it goes (a streamed replace import) counts what it
    # cut instead, in ``audit_details["changeCount"]``: every change, a target changed twice
    # counted twice (a distinct count would hold every key of a file of any size).
    changed: list[str]

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the transaction has committed (e.g. publish to live viewers)."""
        ...

    def record_change(self, what: str, message: str | None = None) -> None:
        """Audit a change made outside the records (Redis, index repairs, ...) with this
        transaction's audit row."""
        ...


class EventSignal(Protocol):
    """Wakes a process when another one appended live events (PostgreSQL: LISTEN/NOTIFY;
    SQLite: a short poll)."""

    def wait(self, timeout: float) -> None: ...
    def notify(self, unit: UnitOfWork) -> None:
        """Inside the transaction that appended events: wake the waiters once it commits."""
        ...

    def close(self) -> None: ...


class Database(Protocol):
    """An open store. ``path`` is the local file (SQLite) or where this node keeps its local
    state (PostgreSQL); ``location`` names the store for people (a path, or a URL without its
    password). ``last_write`` is the monotonic time of the last commit that changed something
    in this process (background work waits for a lull in writes).

    Faults: ``damage`` is None, or what an integrity check found (every write transaction is
    then refused with ``database_damaged``; reads go on); ``app_error(exc)`` turns a backend
    failure into the client-facing AppError (disk full, read-only, damaged, busy) or None;
    ``storage_health()`` reports disk space and integrity for /health."""

    path: Path
    location: str
    last_write: float

    @property
    def damage(self) -> dict[str, Any] | None: ...

    def run_integrity_check(self, budget_seconds: float, source: str) -> list[str] | None: ...
    def periodic_integrity_check(self, budget_seconds: float, passed_within: float) -> list[str] | None:
        """The check the periodic timer runs: skipped when another process sharing the storage
        checks it now, or passed a check less than ``passed_within`` seconds ago."""
        ...

    def mark_damaged(self, problems: list[str], source: str) -> None: ...
    def app_error(self, exc: BaseException) -> AppError | None: ...
    def storage_health(self) -> dict[str, Any]: ...
    def queue_stats(self) -> dict[str, Any]: ...
    def close_queue(self, name: str) -> None: ...

    @property
    def schema_version(self) -> int: ...
    def vector_index(self, model: str, dim: int) -> VectorIndex:
        """This process's index of ``model``'s vectors."""
        ...

    def reader(self) -> UnitOfWork: ...
    def snapshot_reader(self) -> AbstractContextManager[UnitOfWork]: ...
    def transaction(self, operation: str, *, agent_id: str | None = None) -> AbstractContextManager[UnitOfWork]: ...
    def write(self, operation: str, work: Callable[[UnitOfWork], T], *, agent_id: str | None = None) -> T:
        """``work(tx)`` in a write transaction, as ``transaction``; the backend may commit the
        calls several threads make at once together (each keeps its own audit row, after-commit
        callbacks and failure). For hot, short writes (observe)."""
        ...

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after every write transaction this process commits, in the thread that
        committed it, once its locks are let go (a sign the database takes writes). ``fn`` must
        be quick and must not raise: it runs on the path of every write."""
        ...

    def file_sizes(self) -> dict[str, int]: ...
    def health(self) -> dict[str, Any]: ...
    def flush(self, *, commit: bool = True) -> None:
        """Bring the derived indexes (the lexical engine) up to date with the records now.
        ``commit`` False hands them the changes without making them durable: a bulk import
        does so after each batch, so their work overlaps the next batch, and commits at the end
        (a crash before a commit replays the changes from the outbox)."""
        ...

    def event_signal(self) -> EventSignal: ...
    def verify_index(self) -> None: ...
    def checkpoint(self) -> None: ...
    def bulk_load(self) -> AbstractContextManager[None]:
        """Tune the store for a bulk import while it runs (fewer WAL checkpoints on SQLite),
        without weakening what a commit guarantees."""
        ...

    def drop_connections_if_unreachable(self) -> bool:
        """At the start of shutdown: when the database no longer answers, give up on it at once,
        so that threads waiting for a connection fail now rather than hold the process past its
        shutdown grace. True when it gave up."""
        ...

    def close(self) -> None: ...
