"""Lexical search on PostgreSQL's own full text (``search_text.tsv``, english, weighted A-D): the
fallback while a node's Tantivy index is being built, and AGENTMEMORY_LEXICAL_ENGINE=builtin.

``ts_rank`` is not BM25 and, like FTS5's ``bm25()``, scores every matching row, so its cost grows
with the store (docs/search.md has the measurement); it keeps search answering, not fast.
Terms are OR-ed, each through ``plainto_tsquery`` (any text is safe).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentmemory_server.storage.interfaces import Doc
from agentmemory_server.storage.postgres.common import SqlConn

ROW = "d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts"
ROW_COLUMNS = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts")


def doc_filters(where: list[str], params: list[Any], filters: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """Add the SQL for the index filters (see ``SearchIndex``) to ``where``/``params``."""

    def add(clause: str, value: Any) -> None:
        where.append(clause)
        params.append(value)

    if filters.get("kinds"):
        add("d.kind = ANY(%s)", [str(k) for k in filters["kinds"]])
    if filters.get("types"):
        add("d.type = ANY(%s)", [str(t) for t in filters["types"]])
    if filters.get("project") is not None:
        add("(d.project = %s OR d.global)", filters["project"])
    if filters.get("agent_id") is not None:
        add("d.agent_id = %s", filters["agent_id"])
    if filters.get("session_ids") is not None:
        add("d.session_id = ANY(%s)", [str(s) for s in filters["session_ids"]] or [""])
    if filters.get("exclude_session") is not None:
        add("(d.session_id IS NULL OR d.session_id <> %s)", filters["exclude_session"])
    if filters.get("months"):
        add(
            "(CASE WHEN substr(d.ts, 6, 2) ~ '^[0-9]{2}$' THEN substr(d.ts, 6, 2)::int END) = ANY(%s)",
            [int(m) for m in filters["months"]],
        )
    if filters.get("since") is not None:
        add("d.ts >= %s", filters["since"])
    if filters.get("until") is not None:
        add("d.ts <= %s", filters["until"])
    return where, params


def rank_weights(weights: Sequence[float]) -> list[float]:
    """ts_rank's {D, C, B, A} weights from the column weights (title, body, concepts, files,
    context): A title, B concepts, C files, D body and context; the heaviest is 1."""
    title, body, concepts, files, _context = weights
    top = max(title, body, concepts, files) or 1.0
    return [body / top, files / top, concepts / top, title / top]


class PgFullText:
    def __init__(self, conn: SqlConn):
        self.conn = conn

    def search(
        self, terms: Sequence[str], weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        words = [t for t in terms if t.strip()]
        if not words:
            return []
        query = " || ".join(["plainto_tsquery('english', %s)"] * len(words))
        return self._ranked("t.tsv @@ q.q", query, words, weights, limit, filters)

    def search_files(
        self, phrases: Sequence[Sequence[str]], weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        texts = [" ".join(words) for words in phrases if words]
        if not texts:
            return []
        query = " || ".join(["phraseto_tsquery('english', %s)"] * len(texts))
        return self._ranked("ts_filter(t.tsv, '{c}') @@ q.q", query, texts, weights, limit, filters)

    def _ranked(
        self, match: str, query: str, args: list[str], weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        where, params = doc_filters([match, "d.active"], [], filters)
        sql = (
            f"SELECT {ROW}, d.id, ts_rank(%s::float4[], t.tsv, q.q) AS score "
            f"FROM (SELECT {query} AS q) q, search_text t JOIN search_docs d ON d.id = t.rowid "
            f"WHERE {' AND '.join(where)} ORDER BY score DESC, d.ts DESC LIMIT %s"
        )
        cols = (*ROW_COLUMNS, "rowid", "score")
        rows = self.conn.execute(sql, (rank_weights(weights), *args, *params, limit))
        return [{**dict(zip(cols, row, strict=True)), "score": float(row[-1]) or 1e-9} for row in rows]
