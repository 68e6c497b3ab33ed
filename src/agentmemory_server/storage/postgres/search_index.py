"""The search index on PostgreSQL: ``search_docs`` (one row per searchable record) and
``search_text`` (its text and a weighted ``tsvector``), both changed in the record's transaction.

Lexical search runs on this node's Tantivy index (``storage/lexical``, fed from
``lexical_outbox`` by lexical_feed.py), and on PostgreSQL's own full text (fulltext.py) while
that index is being built or when AGENTMEMORY_LEXICAL_ENGINE=builtin.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from agentmemory_server.storage.interfaces import Doc
from agentmemory_server.storage.lexical.tantivy_index import TantivyLexical
from agentmemory_server.storage.postgres.common import Unit
from agentmemory_server.storage.postgres.fulltext import PgFullText, doc_filters
from agentmemory_server.storage.postgres.lexical_feed import PgLexicalFeed
from agentmemory_server.storage.postgres.records import TOP, decode

DOC_FIELDS = ("kind", "scope", "key", "session_id", "project", "agent_id", "type", "ts", "active", "global")
TEXT_FIELDS = ("title", "body", "concepts", "files", "context")
ROW = "d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts"
ROW_COLUMNS = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts")
ROWID_ROW = "d.id, " + ROW
ROWID_COLUMNS = ("rowid", *ROW_COLUMNS)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean(text: Any) -> str:
    """Text PostgreSQL can store (no NUL, no lone surrogate): derived index text only."""
    return _UNSTORABLE.sub(" ", str(text or ""))


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PgSearchIndex:
    """:param engine: this node's Tantivy engine, or None when full text answers every search."""

    def __init__(self, unit: Unit, vectors: Any, engine: TantivyLexical | None):
        self.unit = unit
        self.conn = unit.conn
        self._vectors = vectors
        self._engine = engine

    def _changed(self, rowid: int) -> None:
        """Feed the Tantivy index of every node (same transaction as the change). Every node of
        a cluster runs the same engine, so a node without Tantivy means no node uses it."""
        if self._engine is not None:
            self.unit.lexical_changed = True
            self.conn.execute("INSERT INTO lexical_outbox (rowid) VALUES (%s)", (rowid,))

    def wiped(self) -> None:
        self._changed(-1)

    # ---- writes
    def upsert(self, doc: Doc, text: Mapping[str, str]) -> int:
        values = [doc.get(f) for f in DOC_FIELDS]
        values[DOC_FIELDS.index("active")] = bool(doc.get("active", True))
        values[DOC_FIELDS.index("global")] = bool(doc.get("global"))
        columns, marks = ", ".join(DOC_FIELDS), ", ".join(["%s"] * len(DOC_FIELDS))
        updates = ", ".join(f"{f} = excluded.{f}" for f in DOC_FIELDS)
        rowid = self.conn.execute(
            f"INSERT INTO search_docs (doc_id, {columns}) VALUES (%s, {marks}) "
            f"ON CONFLICT (doc_id) DO UPDATE SET {updates} RETURNING id",
            (doc["doc_id"], *values),
        ).fetchone()[0]
        texts = [clean(text.get(f, "")) for f in TEXT_FIELDS]
        self.conn.execute(
            "INSERT INTO search_text (rowid, title, body, concepts, files, context) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (rowid) DO UPDATE SET title = excluded.title, body = excluded.body, "
            "concepts = excluded.concepts, files = excluded.files, context = excluded.context",
            (rowid, *texts),
        )
        self._vectors.backlog_put(rowid, _stamp())
        self._changed(int(rowid))
        return int(rowid)

    def upsert_many(self, rows: Sequence[tuple[Doc, Mapping[str, str]]]) -> list[int]:
        """Three statements for the whole batch (rows, text, change feed) instead of three a
        row, and one round trip: the rowids of new rows follow the order of ``rows``."""
        if not rows:
            return []
        columns = _doc_columns(rows)
        types = ["text[]" if name not in ("active", "global") else "boolean[]" for name in DOC_FIELDS]
        arrays = ", ".join(f"%s::{t}" for t in ["text[]", *types])
        names = ", ".join(("doc_id", *DOC_FIELDS))
        updates = ", ".join(f"{f} = excluded.{f}" for f in DOC_FIELDS)
        found = self.conn.execute(
            f"INSERT INTO search_docs ({names}) SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
            f"AS r({names}, n) ORDER BY n ON CONFLICT (doc_id) DO UPDATE SET {updates} RETURNING doc_id, id",
            columns,
        ).fetchall()
        by_doc = {doc_id: int(rowid) for doc_id, rowid in found}
        rowids = [by_doc[doc["doc_id"]] for doc, _text in rows]
        texts = [[clean(text.get(f, "")) for _doc, text in rows] for f in TEXT_FIELDS]
        self.conn.execute(
            "INSERT INTO search_text (rowid, title, body, concepts, files, context) SELECT * FROM "
            "unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
            "ON CONFLICT (rowid) DO UPDATE SET title = excluded.title, body = excluded.body, "
            "concepts = excluded.concepts, files = excluded.files, context = excluded.context",
            (rowids, *texts),
        )
        stamp = _stamp()
        for rowid in rowids:
            self._vectors.backlog_put(rowid, stamp)
        if self._engine is not None:
            self.unit.lexical_changed = True
            self.conn.execute(
                "INSERT INTO lexical_outbox (rowid) SELECT r FROM unnest(%s::bigint[]) WITH ORDINALITY AS o(r, n) "
                "ORDER BY n",
                (rowids,),
            )
        return rowids

    def sessions_indexed(self, session_ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(session_ids))
        if not wanted:
            return set()
        rows = self.conn.execute(
            "SELECT DISTINCT session_id FROM search_docs WHERE session_id = ANY(%s::text[])", (wanted,)
        )
        return {r[0] for r in rows}

    def delete(self, doc_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(doc_ids))
        if not ids:
            return 0
        rows = self.conn.execute("DELETE FROM search_docs WHERE doc_id = ANY(%s) RETURNING id", (ids,)).fetchall()
        for (rowid,) in rows:
            self._changed(rowid)
        return len(rows)

    def set_active(self, doc_id: str, active: bool) -> None:
        row = self.conn.execute(
            "UPDATE search_docs SET active = %s WHERE doc_id = %s RETURNING id", (active, doc_id)
        ).fetchone()
        if row:
            self._changed(row[0])

    def text_before(self, session_id: str, ts: str, doc_id: str, count: int = 1) -> list[str]:
        # The record's own row (when it is indexed already) breaks ties on ts; one round trip.
        rows = self.conn.execute(
            "SELECT t.body FROM search_docs d JOIN search_text t ON t.rowid = d.id "
            "WHERE d.session_id = %s AND d.doc_id <> %s AND (d.ts < %s OR (d.ts = %s AND d.id < "
            "coalesce((SELECT id FROM search_docs WHERE doc_id = %s), %s))) "
            "ORDER BY d.ts DESC, d.id DESC LIMIT %s",
            (session_id, doc_id, ts, ts, doc_id, 2**62, count),
        )
        return [r[0] for r in rows]

    # ---- lexical search
    def lexical(
        self, terms: Sequence[str], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        if not terms:
            return []
        if self._engine is not None:
            found = self._engine.search(PgLexicalFeed(self.conn), terms, weights, limit, filters)
            if found is not None:
                return found
        return PgFullText(self.conn).search(terms, weights, limit, filters)

    def lexical_files(
        self, phrases: Sequence[Sequence[str]], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        if self._engine is not None:
            found = self._engine.search_files(PgLexicalFeed(self.conn), phrases, weights, limit, filters)
            if found is not None:
                return found
        return PgFullText(self.conn).search_files(phrases, weights, limit, filters)

    def near_duplicates(self, text: str, *, limit: int, filters: Mapping[str, Any]) -> list[Doc] | None:
        if self._engine is None:
            return None
        return self._engine.near_duplicates(PgLexicalFeed(self.conn), text, limit, filters)

    # ---- listings
    def _rows(self, select: str, where: list[str], params: list[Any], tail: str, cols: tuple[str, ...]) -> list[Doc]:
        sql = f"SELECT {select} FROM search_docs d WHERE {' AND '.join(where) or 'true'} {tail}"
        return [dict(zip(cols, r, strict=True)) for r in self.conn.execute(sql, params)]

    def recent(self, *, limit: int, offset: int = 0, filters: Mapping[str, Any]) -> list[Doc]:
        where, params = doc_filters(["d.active"], [], filters)
        return self._rows(
            ROW, where, [*params, limit, offset], "ORDER BY d.ts DESC, d.id DESC LIMIT %s OFFSET %s", ROW_COLUMNS
        )

    def lookup(self, doc_ids: Sequence[str], filters: Mapping[str, Any]) -> list[Doc]:
        if not doc_ids:
            return []
        where, params = doc_filters(["d.doc_id = ANY(%s)"], [list(doc_ids)], filters)
        return self._rows(ROWID_ROW, where, params, "", ROWID_COLUMNS)

    def by_rowid(self, rowids: Sequence[int], filters: Mapping[str, Any]) -> list[Doc]:
        if not rowids:
            return []
        where, params = doc_filters(["d.id = ANY(%s)", "d.active"], [[int(r) for r in rowids]], filters)
        return self._rows(ROWID_ROW, where, params, "", ROWID_COLUMNS)

    def around(self, ts: str, *, rowid: int, before: int, after: int, filters: Mapping[str, Any]) -> list[Doc]:
        where, params = doc_filters(["d.active", "(d.ts < %s OR (d.ts = %s AND d.id <= %s))"], [ts, ts, rowid], filters)
        older = self._rows(
            ROWID_ROW, where, [*params, before + 1], "ORDER BY d.ts DESC, d.id DESC LIMIT %s", ROWID_COLUMNS
        )
        where, params = doc_filters(["d.active", "(d.ts > %s OR (d.ts = %s AND d.id > %s))"], [ts, ts, rowid], filters)
        newer = self._rows(ROWID_ROW, where, [*params, after], "ORDER BY d.ts, d.id LIMIT %s", ROWID_COLUMNS)
        return list(reversed(older)) + newer

    def total(self, *, filters: Mapping[str, Any]) -> int:
        where, params = doc_filters(["d.active"], [], filters)
        return self.conn.execute(f"SELECT count(*) FROM search_docs d WHERE {' AND '.join(where)}", params).fetchone()[
            0
        ]

    def kind_counts(self) -> dict[str, int]:
        return {k: int(n) for k, n in self.conn.execute("SELECT kind, count(*) FROM search_docs GROUP BY kind")}

    def group_counts(self, by: Literal["project", "session_id"], filters: Mapping[str, Any]) -> dict[str | None, int]:
        if by not in ("project", "session_id"):
            raise ValueError(f"unsupported grouping {by!r}")
        where, params = doc_filters([], [], filters)
        sql = f"SELECT d.{by}, count(*) FROM search_docs d WHERE {' AND '.join(where) or 'true'} GROUP BY d.{by}"
        return {k: int(n) for k, n in self.conn.execute(sql, params)}

    def concepts(self, *, limit: int, filters: Mapping[str, Any]) -> list[tuple[str | None, str | None, str]]:
        where, params = doc_filters(["d.active", "t.concepts <> ''"], [], filters)
        rows = self.conn.execute(
            "SELECT d.project, d.session_id, t.concepts FROM search_docs d "
            f"JOIN search_text t ON t.rowid = d.id WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT %s",
            (*params, limit),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # ---- consistency with the records
    def refs(self, *, after_id: int, limit: int) -> list[tuple[int, str, str, str]]:
        rows = self.conn.execute(
            "SELECT id, doc_id, scope, key FROM search_docs WHERE id > %s ORDER BY id LIMIT %s", (after_id, limit)
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def unindexed(self, scopes: Iterable[str], scope_prefix: str, *, limit: int) -> list[tuple[str, str, Any]]:
        listed = list(scopes) or [""]
        rows = self.conn.execute(
            "SELECT k.scope, k.key, k.value, k.raw FROM kv_store k LEFT JOIN search_docs d "
            "ON d.scope = k.scope AND d.key = k.key WHERE d.id IS NULL AND "
            "((k.scope >= %s AND k.scope < %s) OR k.scope = ANY(%s)) LIMIT %s",
            (scope_prefix, scope_prefix + TOP, listed, limit),
        )
        return [(s, k, decode(v, r)) for s, k, v, r in rows]

    def orphans(self, *, limit: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT d.doc_id FROM search_docs d LEFT JOIN kv_store k ON k.scope = d.scope AND k.key = d.key "
            "WHERE k.key IS NULL LIMIT %s",
            (limit,),
        )
        return [r[0] for r in rows]

    def prune_orphan_text(self) -> int:
        # search_text rows go with their search row (a foreign key), so there are none to prune.
        return 0

    def rows_without_text(self, *, limit: int) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT d.scope, d.key FROM search_docs d WHERE NOT EXISTS "
            "(SELECT 1 FROM search_text t WHERE t.rowid = d.id) LIMIT %s",
            (limit,),
        )
        return [(s, k) for s, k in rows]

    def text_without_rows(self, *, limit: int) -> list[int]:
        return []  # impossible: see prune_orphan_text

    def delete_text_rows(self, rowids: Iterable[int]) -> int:
        ids = [int(r) for r in rowids]
        if not ids:
            return 0
        removed = self.conn.execute("DELETE FROM search_text WHERE rowid = ANY(%s)", (ids,)).rowcount
        if removed:
            self.unit.record_change(f"search_text/{removed} row(s)")
        return removed


def _doc_columns(rows: Sequence[tuple[Doc, Mapping[str, str]]]) -> list[list[Any]]:
    """The batch's documents as columns (doc_id, then ``DOC_FIELDS``), for ``unnest``: the two
    flags as booleans (``active`` true unless given)."""
    columns: list[list[Any]] = [[doc["doc_id"] for doc, _text in rows]]
    for name in DOC_FIELDS:
        if name in ("active", "global"):
            columns.append([bool(doc.get(name, name == "active")) for doc, _text in rows])
        else:
            columns.append([doc.get(name) for doc, _text in rows])
    return columns
