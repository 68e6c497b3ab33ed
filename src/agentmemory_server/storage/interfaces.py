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

Every method takes plain values. Field names of records appear only as arguments (``Where``,
``order_by``, ``RecordIndex``), never inside an implementation, so a second backend (PostgreSQL)
implements exactly these protocols and runs the same test suite.

A unit of work from ``transaction`` writes one audit row on commit listing what changed, then
runs the callbacks given to ``after_commit`` (live events). Nested ``transaction`` calls on one
thread join the outer one; ``reader()`` inside a transaction returns that transaction, so a
handler reads its own writes.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from agentmemory_server.errors import AppError

# A search row as the index returns it: doc_id, kind, scope, key, session_id, project, ts (and
# rowid, score where the method says so).
Doc = dict[str, Any]
# Working memory is addressed by (project, agent, session).
WMScope = tuple[str, str, str]
T = TypeVar("T")

Operator = Literal["=", "!=", "<", "<=", ">", ">=", "in"]


@dataclass(frozen=True)
class Where:
    """One condition on a top-level field of the stored JSON records: ``field op value``.
    A record without the field never matches (SQL NULL semantics)."""

    field: str
    op: Operator
    value: Any


def equal(**fields: Any) -> list[Where]:
    """``Where`` conditions for every given field that is not None."""
    return [Where(name, "=", value) for name, value in fields.items() if value is not None]


@dataclass(frozen=True)
class RecordIndex:
    """An index the features need on record fields of one scope, so listings and lookups by
    those fields never scan the scope (``kernel/scopes.py`` declares them). ``prefix``: the
    index serves every scope starting with ``scope`` (one session's observations, say)."""

    scope: str
    fields: tuple[str, ...]
    prefix: bool = False


class Records(Protocol):
    """The records: JSON values under (scope, key)."""

    def get(self, scope: str, key: str) -> Any | None: ...
    def get_many(self, scope: str, keys: Iterable[str]) -> dict[str, Any]: ...
    def list(self, scope: str) -> builtins.list[tuple[str, Any]]: ...
    def list_prefix(self, scope_prefix: str) -> builtins.list[tuple[str, str, Any]]: ...
    def iter_scope(self, scope: str, *, batch: int = 500) -> Iterator[tuple[str, Any]]: ...
    def scopes(self) -> builtins.list[str]: ...
    def count(self, scope: str) -> int: ...
    def scope_counts(self, prefix: str = "") -> dict[str, int]: ...
    def set(self, scope: str, key: str, value: Any, *, now: str) -> None: ...
    def set_many(self, items: Sequence[tuple[str, str, Any]], *, now: str) -> None:
        """``set`` of each (scope, key, value) in order (a later one of the same key wins), in
        as few statements as the backend can (a bulk import)."""
        ...

    def delete(self, scope: str, key: str) -> bool: ...
    def delete_scope(self, scope: str) -> int: ...

    def query(
        self,
        scope: str,
        where: Sequence[Where] = (),
        *,
        order_by: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        prefix: bool = False,
    ) -> builtins.list[Any]:
        """Values of ``scope`` (or, with ``prefix``, of every scope starting with it) matching
        all conditions, ordered by ``(field, descending)`` pairs then key."""
        ...

    def newest(
        self,
        scope: str,
        where: Sequence[Where],
        *,
        by: str,
        before: tuple[Any, str] | None,
        limit: int,
        offset: int = 0,
    ) -> builtins.list[tuple[str, Any]]:
        """(key, value) of ``scope`` matching ``where``, ordered by the field ``by`` then key, both
        descending, starting after the ``(field value, key)`` position ``before`` (keyset paging:
        each page costs the same however deep it is, given a RecordIndex on ``by``); ``offset``
        skips rows along the same index walk."""
        ...

    def count_where(self, scope: str, where: Sequence[Where] = ()) -> int: ...
    def keys_where(self, scope: str, where: Sequence[Where]) -> builtins.list[str]: ...


class CaptureLog(Protocol):
    """Event ids of stored hook events (dedup), kept when their observation is forgotten."""

    def get(self, event_id: str) -> dict[str, Any] | None: ...
    def put(self, event_id: str, session_id: str, obs_id: str, now: str) -> None: ...
    def put_many(self, events: Sequence[tuple[str, str, str]], now: str) -> None:
        """``put`` of each new (event_id, session_id, obs_id)."""
        ...

    def known(self, event_ids: Sequence[str]) -> set[str]:
        """The ids among ``event_ids`` already stored (a bulk import's dedup, one query)."""
        ...

    def mark_deleted(self, obs_ids: list[str]) -> None: ...


class CaptureInbox(Protocol):
    """Hook events kept because they did not become an observation, with their attempts.

    An entry (a dict) has: eventId, status (``pending``: to retry; ``dead``: attempts used up or
    refused for good; ``filtered``: a capture filter refused its tool), reason, sessionId,
    hookType, toolName, agentId, body (the observe arguments, privacy-stripped), attempts,
    nextTry (epoch), lastError, createdAt, updatedAt. Counters count what the capture pipeline
    changed or refused, by kind and name (e.g. ``unknown_hook``/``PreCompaction``)."""

    def put(self, entry: dict[str, Any], now: str) -> None: ...
    def get(self, event_id: str) -> dict[str, Any] | None: ...
    def update(self, event_id: str, changes: Mapping[str, Any], now: str) -> None: ...
    def delete(self, event_id: str) -> bool: ...
    def due(self, now_epoch: float, limit: int) -> list[dict[str, Any]]: ...
    def page(
        self, *, status: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]: ...
    def event_ids(self, status: str, *, agent_id: str | None = None, limit: int) -> list[str]: ...
    def summary(self, agent_id: str | None = None) -> dict[str, Any]: ...
    def trim(self, status: str, keep: int) -> int: ...
    def bump(self, kind: str, name: str, now: str, by: int = 1) -> None: ...
    def counters(self) -> dict[str, dict[str, int]]: ...


class ImageIndex(Protocol):
    """Images named by the sha256 of their bytes (``id``): what each is, when it came, whether
    the quota evicted its bytes, which search rows reference it (a link goes with its row), and
    the bytes themselves. Where the bytes live is the backend's business: files beside a SQLite
    database, the database itself on PostgreSQL (so every node serves every image).

    ``put`` stores the bytes with the row (an evicted image is kept again); ``read`` answers the
    kept bytes or None; ``delete`` and ``mark_evicted`` drop the bytes with (or from) the row;
    ``sweep_leftovers`` removes bytes no row owns that are older than epoch ``older_than`` (a
    write that failed after storing its file) and answers how many; ``location`` says where the
    bytes are kept, for /health."""

    def put(self, image_id: str, mime: str, data: bytes, now: str) -> None: ...
    def read(self, image_id: str) -> bytes | None: ...
    def link(self, doc_rowid: int, image_ids: Sequence[str]) -> None: ...
    def link_many(self, links: Sequence[tuple[int, Sequence[str]]]) -> None:
        """``link`` of each (doc_rowid, image_ids), distinct rowids (a bulk import)."""
        ...

    def get(self, image_id: str) -> dict[str, Any] | None: ...
    def linked_rows(self, image_id: str) -> list[int]:
        """The search rows (rowids) that reference the image."""
        ...

    def unreferenced(self, *, created_before: str, limit: int) -> list[str]: ...
    def oldest(self, *, created_before: str, limit: int) -> list[tuple[str, int]]: ...
    def delete(self, image_ids: Iterable[str]) -> None: ...
    def mark_evicted(self, image_ids: Iterable[str], now: str) -> None: ...
    def known(self, image_ids: Iterable[str]) -> set[str]: ...
    def sweep_leftovers(self, older_than: float) -> int: ...
    def location(self) -> str: ...
    def stats(self) -> dict[str, int]: ...


class SearchIndex(Protocol):
    """One search row per searchable record and its text, changed in the record's transaction.

    ``filters`` (all optional): kinds, types (lists), project (rows of that project plus rows
    marked ``global``), agent_id, session_ids (list), exclude_session, months (list of 1-12),
    since, until (ISO times, inclusive)."""

    def upsert(self, doc: Doc, text: Mapping[str, str]) -> int:
        """Insert or replace one record's row (``doc``: doc_id, kind, scope, key, session_id,
        project, agent_id, type, ts, active, global; ``text``: title, body, concepts, files,
        context) and queue it for a (new) vector; returns its rowid."""
        ...

    def upsert_many(self, rows: Sequence[tuple[Doc, Mapping[str, str]]]) -> list[int]:
        """``upsert`` of each row in order, as few statements as the backend can (a bulk
        import); the doc_ids must differ. Returns the rowids in the same order."""
        ...

    def delete(self, doc_ids: Iterable[str]) -> int: ...
    def set_active(self, doc_id: str, active: bool) -> None: ...
    def text_before(self, session_id: str, ts: str, doc_id: str, count: int = 1) -> list[str]: ...
    def sessions_indexed(self, session_ids: Iterable[str]) -> set[str]:
        """The ids among ``session_ids`` that some search row names (one query)."""
        ...

    def lexical(
        self, terms: Sequence[str], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        """BM25 over rows holding any of ``terms``, best first, with ``rowid`` and a positive
        ``score``; ``weights`` are the field weights (title, body, concepts, files, context)."""
        ...

    def lexical_files(
        self, phrases: Sequence[Sequence[str]], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        """BM25 over rows whose ``files`` field holds any of the phrases (each a list of word
        tokens of one path), best first."""
        ...

    def near_duplicates(self, text: str, *, limit: int, filters: Mapping[str, Any]) -> list[Doc] | None:
        """Memory rows likely to be near-duplicates of ``text`` (they share MinHash band keys of
        its word set, ``similarity.band_keys``), as candidates to check exactly; None when the
        engine that indexes the keys cannot answer (off, or rebuilding): search lexically then."""
        ...

    def recent(self, *, limit: int, offset: int = 0, filters: Mapping[str, Any]) -> list[Doc]: ...
    def lookup(self, doc_ids: Sequence[str], filters: Mapping[str, Any]) -> list[Doc]: ...
    def by_rowid(self, rowids: Sequence[int], filters: Mapping[str, Any]) -> list[Doc]: ...
    def around(self, ts: str, *, rowid: int, before: int, after: int, filters: Mapping[str, Any]) -> list[Doc]: ...
    def total(self, *, filters: Mapping[str, Any]) -> int: ...
    def kind_counts(self) -> dict[str, int]: ...
    def group_counts(
        self, by: Literal["project", "session_id"], filters: Mapping[str, Any]
    ) -> dict[str | None, int]: ...
    def concepts(self, *, limit: int, filters: Mapping[str, Any]) -> list[tuple[str | None, str | None, str]]: ...

    # consistency with the records (diagnose, reindex)
    def refs(self, *, after_id: int, limit: int) -> list[tuple[int, str, str, str]]: ...
    def unindexed(self, scopes: Iterable[str], scope_prefix: str, *, limit: int) -> list[tuple[str, str, Any]]: ...
    def orphans(self, *, limit: int) -> list[str]: ...
    def prune_orphan_text(self) -> int: ...
    def rows_without_text(self, *, limit: int) -> list[tuple[str, str]]: ...
    def text_without_rows(self, *, limit: int) -> list[int]: ...
    def delete_text_rows(self, rowids: Iterable[int]) -> int: ...


class VectorStore(Protocol):
    """Embeddings (one per search row, tagged with model and dimension) and the backlog."""

    def search(self, model: str, dim: int, query: Any, k: int, filters: Mapping[str, Any]) -> list[tuple[int, float]]:
        """The ``k`` rows whose ``model`` vectors are nearest to ``query`` (a unit float32
        vector) among those passing ``filters`` (kinds, project with its global rows, agent_id,
        session_ids; callers check the other filters), best first, as (rowid, exact cosine).
        SQLite answers from a persistent index beside the file (``Database.vector_index``);
        PostgreSQL from pgvector."""
        ...

    def backlog_put(self, rowid: int, now: str) -> bool: ...
    def backlog_take(self, limit: int, now_epoch: float) -> list[dict[str, Any]]: ...
    def backlog_claim(self, limit: int, now_epoch: float, lease_until: float) -> list[dict[str, Any]]:
        """Due backlog rows (as ``backlog_take``), hidden from other workers until
        ``lease_until``: a worker that dies mid-batch leaves them to be retried then."""
        ...

    def backlog_release(self, now_epoch: float) -> int: ...
    def backlog_done(self, rowids: list[int], queued_before: str) -> None: ...
    def backlog_failed(self, rowids: list[int], error: str, retry_at: float) -> None: ...
    def backlog_stats(self) -> dict[str, Any]: ...
    def backlog_at_least(self, count: int) -> bool: ...
    def backlog_room(self) -> int | None:
        """How many more rows the backlog takes, or None when it is unbounded."""
        ...

    def backlog_requeue_missing(
        self,
        model: str,
        now: str,
        *,
        everything: bool = False,
        limit: int | None = None,
        tokens_model: str | None = None,
        rowids: Sequence[int] | None = None,
    ) -> int:
        """Queue rows without a vector of ``model`` or, given ``tokens_model``, without token
        vectors; given ``rowids``, only those of them (found on a reader by ``missing_rowids``)."""
        ...

    def put(self, rowid: int, model: str, vector: bytes, dim: int, now: str) -> bool: ...
    def put_tokens(self, rowid: int, model: str, tokens: bytes) -> bool:
        """A record's token vectors for late interaction (retrieval/late_interaction.py)."""
        ...

    def tokens(self, rowids: Sequence[int], model: str) -> dict[int, bytes]: ...
    def load(self, model: str, dim: int) -> Iterator[tuple[int, bytes, str, str | None, str | None, str | None]]: ...
    def counts(self) -> dict[str, int]: ...
    def missing_rowids(self, model: str, tokens_model: str | None, after: int, limit: int) -> list[int]:
        """Up to ``limit`` rowids after ``after``, in order, of search rows without a vector of
        ``model`` or token vectors of ``tokens_model``."""
        ...

    def missing(self, model: str, tokens_model: str | None = None) -> int: ...


class VectorIndex(Protocol):
    """A backend's nearest-neighbour index over one model's vectors, as seen by the process
    holding it. SQLite keeps one per process and catches it up with the vectors any process
    writes; a backend whose database keeps the index itself (pgvector) has nothing to do here."""

    def refresh(self, budget: int = 2000) -> int:
        """Take in up to ``budget`` vector changes (or rebuild steps); returns how many."""
        ...

    def save(self) -> bool:
        """Persist what changed since the last save; True when something was written."""
        ...

    def rebuild(self, reason: str) -> None:
        """Start over from the stored vectors (``refresh`` does the work, in steps)."""
        ...

    def lag(self) -> int: ...
    def status(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...


class AuditLog(Protocol):
    def insert(
        self,
        *,
        ts: str,
        agent_id: str | None,
        operation: str,
        message: str,
        targets: list[str],
        details: dict[str, Any],
    ) -> None: ...
    def page(
        self, *, operation: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]: ...
    def times(self, operation: str, *, limit: int) -> list[str]: ...


class JobQueue(Protocol):
    """Durable background jobs keyed by (kind, ref), claimed with a lease; periodic jobs that
    run once per database whichever worker claims them; the heartbeats of background workers."""

    def claim_periodic(
        self, name: str, now_epoch: float, lease_until: float, holder: str, first_run: float | None = None
    ) -> bool:
        """Claim the run of periodic job ``name`` that is due at ``now_epoch`` for ``holder``:
        its next run moves to ``lease_until``, when the claim lapses unless the holder renews it
        (``hold_periodic``) or records the run (``periodic_done``). False when it is not due or
        another worker claimed it first. A job never seen is recorded as due at ``first_run``
        (default ``lease_until``)."""
        ...

    def hold_periodic(self, name: str, now_epoch: float, lease_until: float, holder: str) -> bool:
        """Renew ``holder``'s claim of ``name``'s run until ``lease_until``, or take the run up
        if its claim lapsed (it is due); False when another worker has claimed it since."""
        ...

    def holds_periodic(self, name: str, holder: str) -> bool:
        """Whether ``holder`` still holds the claim of ``name``'s run (lapsed or not: nobody took
        it up). Read inside a write transaction, the answer stands until it commits: claims are
        written under the same write lock."""
        ...

    def periodic_done(
        self,
        name: str,
        now_epoch: float,
        error: str | None,
        *,
        holder: str | None = None,
        next_run: float | None = None,
    ) -> bool:
        """Count a finished run of ``name``: a failure records its message and time (``lastError``,
        ``lastErrorAt``) and clears ``recoveredAt``; a success after a standing error sets it.
        With ``holder`` and ``next_run``: the run was claimed, and while ``holder`` still holds
        the claim its next run moves to ``next_run`` (one period after the claim). False, and
        nothing recorded, when another worker has taken the run up since: its own run is the one
        counted, and its claim sets the schedule."""
        ...

    def periodic_status(self) -> list[dict[str, Any]]: ...
    def worker_beat(
        self, worker_id: str, host: str, pid: int, started_at: float, now_epoch: float, info: dict[str, Any]
    ) -> None: ...
    def worker_gone(self, worker_id: str) -> None: ...
    def workers(self, since_epoch: float) -> list[dict[str, Any]]:
        """Workers whose last heartbeat is at or after ``since_epoch``."""
        ...

    def put(self, kind: str, ref: str, args: dict[str, Any], now: str, not_before: float = 0.0) -> bool: ...
    def claim(self, now_epoch: float, limit: int, lease_until: float) -> list[dict[str, Any]]: ...
    def done(self, kind: str, ref: str, queued_at: str) -> None: ...
    def retry(self, kind: str, ref: str, error: str, next_try: float, counted: bool = True) -> None:
        """Put a job back until ``next_try`` with its error; ``counted``: it uses up an attempt
        (False while it only waits for the model to answer again)."""
        ...

    def stats(self) -> dict[str, Any]:
        """pending, byKind, waiting (jobs tried and put back), the oldest waiting job's
        ``queued_at`` stamp and the latest error."""
        ...


@dataclass(frozen=True)
class ModelCall:
    """What to add to one day's account of a provider, model and feature: calls made (and how
    many failed), their tokens and latency, and calls not made (budget reached, low-value
    input skipped)."""

    day: str  # UTC date, YYYY-MM-DD
    provider: str
    model: str
    feature: str
    calls: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    skipped_budget: int = 0
    skipped_low_value: int = 0


class ModelUsage(Protocol):
    """Model calls summed per (day, provider, model, feature): one small row per combination,
    so adding a call is one upsert and a day's budget check reads a handful of rows."""

    def add(self, call: ModelCall) -> None: ...
    def rows(self, first_day: str, last_day: str) -> list[dict[str, Any]]:
        """Rows of days in [first_day, last_day], each with day, provider, model, feature, calls,
        failed, promptTokens, completionTokens, latencyMsTotal, latencyMsMax, skippedBudget,
        skippedLowValue."""
        ...

    def prune(self, before_day: str) -> int: ...


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
