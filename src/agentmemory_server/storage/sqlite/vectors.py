"""Embeddings (``search_vectors``) and the embedding backlog (``embed_backlog``) on SQLite.
Both rows are deleted with their search row (foreign keys with ON DELETE CASCADE)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from agentmemory_server.storage.sqlite.common import Unit, in_chunks
from agentmemory_server.storage.vector_sql import BACKLOG, SharedVectorMethods, queue_sql

QUEUE = queue_sql("?")


class SqliteVectorStore(SharedVectorMethods):
    mark, no_limit = "?", -1

    def __init__(self, unit: Unit):
        self.conn = unit.conn
        self.bounds = unit.bounds
        self._index = getattr(unit, "vector_index", None)

    def search(
        self, model: str, dim: int, query: np.ndarray, k: int, filters: Mapping[str, Any]
    ) -> list[tuple[int, float]]:
        """The ``k`` nearest rows of ``model`` to ``query`` that pass the filters (kinds, project
        with global rows, agent_id, session_ids; the caller applies the rest), best first, with
        their exact cosine. Served by the persistent index beside the database file."""
        if self._index is None:
            return []
        return self._index(model, dim).search(self.conn, query, k, filters)

    def backlog_put_many(self, rowids: Sequence[int], now: str) -> int:
        """``backlog_put`` of each row in order, in one prepared statement; returns how many were
        queued. The bound is asked row by row, as one at a time would; when it recounts the
        backlog (its count went stale: another process drained rows), the rows admitted so far
        are written first, so the count sees them as it would have."""
        pending: list[tuple[int, str]] = []

        def size() -> int:
            self.conn.executemany(QUEUE, pending)
            pending.clear()
            return self._backlog_size()

        queued = 0
        for rowid in rowids:
            if self.bounds.admit(BACKLOG, size):
                pending.append((rowid, now))
                queued += 1
        self.conn.executemany(QUEUE, pending)
        return queued

    def backlog_take(self, limit: int, now_epoch: float) -> list[dict[str, Any]]:
        """Due backlog rows with the text and metadata of their search row, oldest first."""
        # CROSS JOIN keeps the backlog as the outer loop, read in index order: a connection open
        # since before ANALYZE ran has been seen to scan all of search_fts instead and sort (8 ms
        # at 20k records, inside the worker's write transaction).
        rows = self.conn.execute(
            "SELECT b.doc_rowid, b.attempts, f.title, f.body, f.concepts, f.context, d.kind, d.project, "
            "d.agent_id, d.session_id, b.tokens_only FROM embed_backlog b "
            "CROSS JOIN search_docs d ON d.id = b.doc_rowid "
            "CROSS JOIN search_fts f ON f.rowid = b.doc_rowid WHERE b.next_try <= ? "
            "ORDER BY b.next_try, b.doc_rowid LIMIT ?",
            (now_epoch, limit),
        )
        cols = (
            "rowid",
            "attempts",
            "title",
            "body",
            "concepts",
            "context",
            "kind",
            "project",
            "agent_id",
            "session_id",
            "tokens_only",
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def backlog_claim(self, limit: int, now_epoch: float, lease_until: float) -> list[dict[str, Any]]:
        """Due rows as ``backlog_take``, moved out of sight until ``lease_until``."""
        rows = self.backlog_take(limit, now_epoch)
        for chunk, marks in in_chunks([r["rowid"] for r in rows]):
            self.conn.execute(
                f"UPDATE embed_backlog SET next_try = ? WHERE doc_rowid IN ({marks})", (lease_until, *chunk)
            )
        return rows

    def backlog_release(self, now_epoch: float) -> int:
        """Make leased (claimed, not failed) rows due again; returns how many."""
        return self.conn.execute(
            "UPDATE embed_backlog SET next_try = 0 WHERE next_try > ? AND last_error IS NULL", (now_epoch,)
        ).rowcount

    def backlog_done(self, rowids: list[int], queued_before: str) -> None:
        """Drop rows embedded by this batch, unless they were re-queued while it ran."""
        for chunk, marks in in_chunks(rowids):
            removed = self.conn.execute(
                f"DELETE FROM embed_backlog WHERE doc_rowid IN ({marks}) AND queued_at <= ?", (*chunk, queued_before)
            ).rowcount
            self.bounds.removed(BACKLOG, removed)

    def backlog_failed(self, rowids: list[int], error: str, retry_at: float) -> None:
        for rowid in rowids:
            self.conn.execute(
                "UPDATE embed_backlog SET attempts = attempts + 1, next_try = ?, last_error = ? WHERE doc_rowid = ?",
                (retry_at, error[:500], rowid),
            )

    def backlog_stats(self) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(attempts > 0), 0), max(attempts), "
            "(SELECT last_error FROM embed_backlog WHERE last_error IS NOT NULL "
            " ORDER BY next_try DESC LIMIT 1) FROM embed_backlog"
        ).fetchone()
        return {"pending": row[0], "failing": row[1], "maxAttempts": row[2] or 0, "lastError": row[3]}

    def put(self, rowid: int, model: str, vector: bytes, dim: int, now: str) -> bool:
        """Store a vector if its search row still exists; False when the row is gone."""
        return (
            self.conn.execute(
                "INSERT INTO search_vectors (doc_rowid, model, dim, vector, updated_at) "
                "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM search_docs WHERE id = ?) "
                "ON CONFLICT (doc_rowid) DO UPDATE SET model = excluded.model, dim = excluded.dim, "
                "vector = excluded.vector, updated_at = excluded.updated_at",
                (rowid, model, dim, vector, now, rowid),
            ).rowcount
            > 0
        )

    def load(self, model: str, dim: int) -> Iterator[tuple[int, bytes, str, str | None, str | None, str | None]]:
        """(rowid, vector bytes, kind, project, agent_id, session_id) of every vector of ``model``."""
        return self.conn.execute(
            "SELECT v.doc_rowid, v.vector, d.kind, d.project, d.agent_id, d.session_id "
            "FROM search_vectors v JOIN search_docs d ON d.id = v.doc_rowid "
            "WHERE v.model = ? AND v.dim = ? ORDER BY v.doc_rowid",
            (model, dim),
        )
