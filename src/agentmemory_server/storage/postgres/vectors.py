"""Embeddings (``search_vectors``, pgvector) and the embedding backlog (``embed_backlog``) on
PostgreSQL. Both rows are deleted with their search row (foreign keys, ON DELETE CASCADE).

Vectors are handed in and out as float32 little-endian bytes (the interface's format) and
stored as pgvector ``vector`` values. The first vector of a model and dimension creates an HNSW
(cosine) index over that model's rows (``search_vectors_hnsw_<n>``), so a nearest-neighbour
query for it never scans the table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from agentmemory_server.storage.postgres.common import Unit

BACKLOG_COLUMNS = (
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
)


def to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


class PgVectorStore:
    def __init__(self, unit: Unit):
        self.unit = unit
        self.conn = unit.conn

    def backlog_put(self, rowid: int, now: str) -> None:
        self.conn.execute(
            "INSERT INTO embed_backlog (doc_rowid, queued_at) VALUES (%s, %s) ON CONFLICT (doc_rowid) "
            "DO UPDATE SET queued_at = excluded.queued_at, attempts = 0, next_try = 0, last_error = NULL",
            (rowid, now),
        )

    def backlog_take(self, limit: int, now_epoch: float) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT b.doc_rowid, b.attempts, t.title, t.body, t.concepts, t.context, d.kind, d.project, "
            "d.agent_id, d.session_id FROM embed_backlog b JOIN search_docs d ON d.id = b.doc_rowid "
            "JOIN search_text t ON t.rowid = b.doc_rowid WHERE b.next_try <= %s "
            "ORDER BY b.next_try, b.doc_rowid LIMIT %s",
            (now_epoch, limit),
        )
        return [dict(zip(BACKLOG_COLUMNS, r, strict=True)) for r in rows]

    def backlog_done(self, rowids: list[int], queued_before: str) -> None:
        if rowids:
            self.conn.execute(
                "DELETE FROM embed_backlog WHERE doc_rowid = ANY(%s) AND queued_at <= %s",
                ([int(r) for r in rowids], queued_before),
            )

    def backlog_failed(self, rowids: list[int], error: str, retry_at: float) -> None:
        if rowids:
            self.conn.execute(
                "UPDATE embed_backlog SET attempts = attempts + 1, next_try = %s, last_error = %s "
                "WHERE doc_rowid = ANY(%s)",
                (retry_at, error[:500].replace("\x00", " "), [int(r) for r in rowids]),
            )

    def backlog_stats(self) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE attempts > 0), max(attempts), "
            "(SELECT last_error FROM embed_backlog WHERE last_error IS NOT NULL "
            " ORDER BY next_try DESC LIMIT 1) FROM embed_backlog"
        ).fetchone()
        return {"pending": int(row[0]), "failing": int(row[1]), "maxAttempts": row[2] or 0, "lastError": row[3]}

    def backlog_requeue_missing(self, model: str, now: str, *, everything: bool = False) -> int:
        where = (
            ""
            if everything
            else "WHERE NOT EXISTS (SELECT 1 FROM search_vectors v WHERE v.doc_rowid = d.id AND v.model = %s)"
        )
        params: tuple[Any, ...] = (now,) if everything else (now, model)
        return self.conn.execute(
            f"INSERT INTO embed_backlog (doc_rowid, queued_at) SELECT d.id, %s FROM search_docs d {where} "
            "ON CONFLICT (doc_rowid) DO UPDATE SET attempts = 0, next_try = 0, last_error = NULL",
            params,
        ).rowcount

    def put(self, rowid: int, model: str, vector: bytes, dim: int, now: str) -> bool:
        self._ensure_model_index(model, dim)
        return (
            self.conn.execute(
                "INSERT INTO search_vectors (doc_rowid, model, dim, vector, updated_at) "
                "SELECT %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM search_docs WHERE id = %s) "
                "ON CONFLICT (doc_rowid) DO UPDATE SET model = excluded.model, dim = excluded.dim, "
                "vector = excluded.vector, updated_at = excluded.updated_at",
                (rowid, model, dim, to_vector(vector), now, rowid),
            ).rowcount
            > 0
        )

    def _ensure_model_index(self, model: str, dim: int) -> None:
        """An HNSW cosine index over this model's vectors (pgvector indexes one dimension)."""
        if self.conn.execute("SELECT 1 FROM vector_models WHERE model = %s AND dim = %s", (model, dim)).fetchone():
            return
        number = self.conn.execute("SELECT count(*) + 1 FROM vector_models").fetchone()[0]
        name = f"search_vectors_hnsw_{number}"
        literal = "'" + model.replace("'", "''") + "'"
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON search_vectors USING hnsw "
            f"((vector::vector({int(dim)})) vector_cosine_ops) WHERE model = {literal} AND dim = {int(dim)}"
        )
        self.conn.execute("INSERT INTO vector_models (model, dim, index_name) VALUES (%s, %s, %s)", (model, dim, name))

    def load(self, model: str, dim: int) -> Iterator[tuple[int, bytes, str, str | None, str | None, str | None]]:
        after = 0
        while True:
            rows = self.conn.execute(
                "SELECT v.doc_rowid, v.vector, d.kind, d.project, d.agent_id, d.session_id "
                "FROM search_vectors v JOIN search_docs d ON d.id = v.doc_rowid "
                "WHERE v.model = %s AND v.dim = %s AND v.doc_rowid > %s ORDER BY v.doc_rowid LIMIT 2000",
                (model, dim, after),
            ).fetchall()
            for rowid, vector, kind, project, agent, session in rows:
                values = vector.to_numpy() if hasattr(vector, "to_numpy") else vector
                yield int(rowid), np.asarray(values, dtype="<f4").tobytes(), kind, project, agent, session
            if len(rows) < 2000:
                return
            after = rows[-1][0]

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT model || '/' || dim, count(*) FROM search_vectors GROUP BY model, dim")
        return {k: int(n) for k, n in rows}

    def missing(self, model: str) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM search_docs d WHERE NOT EXISTS (SELECT 1 FROM search_vectors v "
                "WHERE v.doc_rowid = d.id AND v.model = %s) AND NOT EXISTS "
                "(SELECT 1 FROM embed_backlog b WHERE b.doc_rowid = d.id)",
                (model,),
            ).fetchone()[0]
        )

    def nearest(self, model: str, dim: int, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` rows of ``model`` nearest to ``query`` by cosine, through the HNSW index:
        (rowid, cosine similarity), best first."""
        rows = self.conn.execute(
            f"SELECT doc_rowid, 1 - (vector::vector({int(dim)}) <=> %s::vector({int(dim)})) FROM search_vectors "
            f"WHERE model = %s AND dim = %s ORDER BY vector::vector({int(dim)}) <=> %s::vector({int(dim)}) LIMIT %s",
            (query.astype(np.float32), model, dim, query.astype(np.float32), k),
        )
        return [(int(r[0]), float(r[1])) for r in rows]
