"""The storage interface, part two: what makes records findable.

``SearchIndex`` (one search row per searchable record, lexical search, timelines and the
consistency checks against the records), ``VectorStore`` (embeddings and their backlog) and
``VectorIndex`` (a process's nearest-neighbour index). Re-exported by ``interfaces``, which
describes the whole interface and holds the unit of work and the database; import these names
from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

# A search row as the index returns it: doc_id, kind, scope, key, session_id, project, ts (and
# rowid, score where the method says so).
Doc = dict[str, Any]


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
