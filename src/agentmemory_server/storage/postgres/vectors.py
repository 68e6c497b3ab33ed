"""Embeddings (``search_vectors``, pgvector) and the embedding backlog (``embed_backlog``) on
PostgreSQL. Both rows are deleted with their search row (foreign keys, ON DELETE CASCADE).

Vectors are handed in and out as float32 little-endian bytes (the interface's format) and
stored as pgvector ``vector`` values. The first vector of a model and dimension creates an HNSW
(cosine) index over that model's rows (``search_vectors_hnsw_<n>``), so a nearest-neighbour
query for it never scans the table."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from agentmemory_server.storage.postgres.common import Unit
from agentmemory_server.storage.vector_sql import BACKLOG, SharedVectorMethods

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
    "tokens_only",
)
BACKLOG_SELECT = (
    "SELECT b.doc_rowid, b.attempts, t.title, t.body, t.concepts, t.context, d.kind, d.project, "
    "d.agent_id, d.session_id, b.tokens_only FROM embed_backlog b JOIN search_docs d ON d.id = b.doc_rowid "
    "JOIN search_text t ON t.rowid = b.doc_rowid "
)


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


class PgVectorStore(SharedVectorMethods):
    mark, no_limit = "%s", None

    def __init__(self, unit: Unit):
        self.unit = unit
        self.conn = unit.conn
        self.bounds = unit.bounds

    def search(
        self, model: str, dim: int, query: np.ndarray, k: int, filters: Mapping[str, Any]
    ) -> list[tuple[int, float]]:
        """The ``k`` nearest rows of ``model`` to ``query`` passing the filters (kinds, project with
        global rows, agent_id, session_ids), best first, with their cosine: an HNSW index scan
        (model and dimension are literals so the planner matches the model's partial index;
        the pool's connections scan iteratively, so a selective filter still fills ``k``)."""
        if k <= 0:
            return []
        typed = f"vector::vector({int(dim)})"
        terms = [f"v.model = {literal(model)}", f"v.dim = {int(dim)}"]
        params: list[Any] = []
        if filters.get("kinds"):
            terms.append("d.kind = ANY(%s)")
            params.append(list(filters["kinds"]))
        if filters.get("project") is not None:
            terms.append("(d.project = %s OR d.global)")
            params.append(filters["project"])
        if filters.get("agent_id") is not None:
            terms.append("d.agent_id = %s")
            params.append(filters["agent_id"])
        if filters.get("session_ids") is not None:
            terms.append("d.session_id = ANY(%s)")
            params.append(list(filters["session_ids"]))
        q = np.asarray(query, dtype=np.float32)
        rows = self.conn.execute(
            f"SELECT v.doc_rowid, 1 - (v.{typed} <=> %s::vector({int(dim)})) AS score FROM search_vectors v "
            f"JOIN search_docs d ON d.id = v.doc_rowid WHERE {' AND '.join(terms)} "
            f"ORDER BY v.{typed} <=> %s::vector({int(dim)}) LIMIT %s",
            (q, *params, q, k),
        )
        found = [(int(r[0]), float(r[1])) for r in rows]
        found.sort(key=lambda pair: -pair[1])  # iterative scans may return near-ties out of order
        return found

    def backlog_take(self, limit: int, now_epoch: float) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            BACKLOG_SELECT + "WHERE b.next_try <= %s ORDER BY b.next_try, b.doc_rowid LIMIT %s", (now_epoch, limit)
        )
        return [dict(zip(BACKLOG_COLUMNS, r, strict=True)) for r in rows]

    def backlog_claim(self, limit: int, now_epoch: float, lease_until: float) -> list[dict[str, Any]]:
        """Due rows as ``backlog_take``, hidden until ``lease_until``; rows another worker is
        claiming at the same moment are skipped (``SKIP LOCKED``), so two nodes never embed one."""
        claimed = self.conn.execute(
            "UPDATE embed_backlog b SET next_try = %s FROM (SELECT doc_rowid FROM embed_backlog WHERE next_try <= %s "
            "ORDER BY next_try, doc_rowid LIMIT %s FOR UPDATE SKIP LOCKED) due WHERE b.doc_rowid = due.doc_rowid "
            "RETURNING b.doc_rowid",
            (lease_until, now_epoch, limit),
        ).fetchall()
        if not claimed:
            return []
        rows = self.conn.execute(
            BACKLOG_SELECT + "WHERE b.doc_rowid = ANY(%s) ORDER BY b.doc_rowid", ([int(r[0]) for r in claimed],)
        )
        return [dict(zip(BACKLOG_COLUMNS, r, strict=True)) for r in rows]

    def backlog_release(self, now_epoch: float) -> int:
        """Make leased (claimed, not failed) rows due again; returns how many."""
        return self.conn.execute(
            "UPDATE embed_backlog SET next_try = 0 WHERE next_try > %s AND last_error IS NULL", (now_epoch,)
        ).rowcount

    def backlog_done(self, rowids: list[int], queued_before: str) -> None:
        if rowids:
            removed = self.conn.execute(
                "DELETE FROM embed_backlog WHERE doc_rowid = ANY(%s) AND queued_at <= %s",
                ([int(r) for r in rowids], queued_before),
            ).rowcount
            self.bounds.removed(BACKLOG, removed)

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
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON search_vectors USING hnsw "
            f"((vector::vector({int(dim)})) vector_cosine_ops) WHERE model = {literal(model)} AND dim = {int(dim)}"
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

    def count(self, model: str, dim: int) -> int:
        return int(
            self.conn.execute(
                f"SELECT count(*) FROM search_vectors WHERE model = {literal(model)} AND dim = {int(dim)}"
            ).fetchone()[0]
        )


class PgVectorIndex:
    """The ``VectorIndex`` of a pgvector store: the database keeps the HNSW index itself, so
    there is nothing to follow, save or rebuild in a process; its size is the stored vectors of
    the model (an index-only count on ``search_vectors (model, dim)``)."""

    def __init__(self, count: Callable[[], int], model: str, dim: int):
        self._count = count
        self.model, self.dim = model, dim

    def refresh(self, budget: int = 2000) -> int:
        return 0

    def save(self) -> bool:
        return False

    def rebuild(self, reason: str) -> None:
        """Nothing to rebuild here: PostgreSQL maintains the HNSW index with every write."""

    def lag(self) -> int:
        return 0

    def __len__(self) -> int:
        return self._count()

    def status(self) -> dict[str, Any]:
        return {
            "engine": "pgvector-hnsw",
            "model": self.model,
            "dim": self.dim,
            "vectors": len(self),
            "repair": None,
            "lastError": None,
        }
