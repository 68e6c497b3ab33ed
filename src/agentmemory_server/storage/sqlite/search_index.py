"""The search index on SQLite: ``search_docs`` (one row per searchable record) and the FTS5 table
``search_fts`` (porter + unicode61) holding its text, both changed in the record's transaction.

Lexical search quotes every term and ORs them: a bare FTS5 MATCH ANDs the terms and finds almost
nothing for a natural question, and quoting makes any text (``C++``, ``NEAR``, ``"``, ``*``) safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from agentmemory_server.storage.interfaces import Doc
from agentmemory_server.storage.sqlite.common import Unit, loads

DOC_FIELDS = ("kind", "scope", "key", "session_id", "project", "agent_id", "type", "ts", "active", "global")
ROW = "d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts"
ROW_COLUMNS = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts")
ROWID_ROW = "d.id, " + ROW
ROWID_COLUMNS = ("rowid", *ROW_COLUMNS)

# FTS5 computes bm25() for every row an OR of terms matches (about 2 microseconds a row), and
# cannot stop early. A query made only of words that tens of thousands of records contain would
# cost 50-100 ms at 100k records. Past this many matching rows, BM25 skips the records that hold
# none of the query's rare terms and not all of its common ones (the idea of Lucene's common-terms
# query: frequent words refine a ranking; alone they select nothing). Every record it does rank
# gets its exact score.
BM25_ROW_BUDGET = 4000


def _stamp() -> str:
    """Wall-clock stamp with microseconds: orders backlog entries against a running batch."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _any(terms: Sequence[str]) -> str:
    return " OR ".join(_phrase(t) for t in terms)


def doc_filters(where: list[str], params: list[Any], filters: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """Add the SQL for the index filters (see ``SearchIndex``) to ``where``/``params``."""

    def one_of(column: str, values: list[Any]) -> None:
        where.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(values)

    def compare(clause: str, value: Any) -> None:
        where.append(clause)
        params.append(value)

    if filters.get("kinds"):
        one_of("d.kind", list(filters["kinds"]))
    if filters.get("types"):
        one_of("d.type", list(filters["types"]))
    if filters.get("project") is not None:
        compare("(d.project = ? OR d.global = 1)", filters["project"])
    if filters.get("agent_id") is not None:
        compare("d.agent_id = ?", filters["agent_id"])
    if filters.get("session_ids") is not None:
        one_of("d.session_id", list(filters["session_ids"]) or [""])
    if filters.get("exclude_session") is not None:
        compare("(d.session_id IS NULL OR d.session_id != ?)", filters["exclude_session"])
    if filters.get("months"):
        one_of("CAST(substr(d.ts, 6, 2) AS INTEGER)", list(filters["months"]))
    if filters.get("since") is not None:
        compare("d.ts >= ?", filters["since"])
    if filters.get("until") is not None:
        compare("d.ts <= ?", filters["until"])
    return where, params


class SqliteSearchIndex:
    def __init__(self, unit: Unit, vectors: Any):
        self.unit = unit
        self.conn = unit.conn
        self._vectors = vectors

    # ---- writes
    def upsert(self, doc: Doc, text: Mapping[str, str]) -> int:
        row = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc["doc_id"],)).fetchone()
        values = [doc.get(f) for f in DOC_FIELDS]
        values[DOC_FIELDS.index("active")] = 1 if doc.get("active", True) else 0
        values[DOC_FIELDS.index("global")] = 1 if doc.get("global") else 0
        if row:
            rowid = row[0]
            self.conn.execute(
                f"UPDATE search_docs SET {', '.join(f + ' = ?' for f in DOC_FIELDS)} WHERE id = ?", (*values, rowid)
            )
            self.conn.execute("DELETE FROM search_fts WHERE rowid = ?", (rowid,))
        else:
            columns, marks = ", ".join(DOC_FIELDS), ", ".join("?" * len(DOC_FIELDS))
            rowid = self.conn.execute(
                f"INSERT INTO search_docs (doc_id, {columns}) VALUES (?, {marks})", (doc["doc_id"], *values)
            ).lastrowid
        self.conn.execute(
            "INSERT INTO search_fts (rowid, title, body, concepts, files, context) VALUES (?, ?, ?, ?, ?, ?)",
            (
                rowid,
                text.get("title", ""),
                text.get("body", ""),
                text.get("concepts", ""),
                text.get("files", ""),
                text.get("context", ""),
            ),
        )
        self._vectors.backlog_put(rowid, _stamp())  # every (re-)indexed record needs a (new) vector
        return int(rowid)

    def delete(self, doc_ids: Iterable[str]) -> int:
        removed = 0
        for doc_id in doc_ids:
            row = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc_id,)).fetchone()
            if row:
                self.conn.execute("DELETE FROM search_fts WHERE rowid = ?", (row[0],))
                self.conn.execute("DELETE FROM search_docs WHERE id = ?", (row[0],))
                removed += 1
        return removed

    def set_active(self, doc_id: str, active: bool) -> None:
        self.conn.execute("UPDATE search_docs SET active = ? WHERE doc_id = ?", (1 if active else 0, doc_id))

    def text_before(self, session_id: str, ts: str, doc_id: str, count: int = 1) -> list[str]:
        """Bodies of the ``count`` records just before (ts, doc_id) in a session, nearest first."""
        row = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc_id,)).fetchone()
        rowid = row[0] if row else 2**62
        rows = self.conn.execute(
            "SELECT f.body FROM search_docs d JOIN search_fts f ON f.rowid = d.id "
            "WHERE d.session_id = ? AND d.doc_id != ? AND (d.ts < ? OR (d.ts = ? AND d.id < ?)) "
            "ORDER BY d.ts DESC, d.id DESC LIMIT ?",
            (session_id, doc_id, ts, ts, rowid, count),
        )
        return [r[0] for r in rows]

    # ---- lexical search
    def lexical(
        self, terms: Sequence[str], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        if not terms:
            return []
        match = _any(terms)
        if len(terms) == 1 or self._match_count(match, BM25_ROW_BUDGET + 1) <= BM25_ROW_BUDGET:
            return self._bm25(match, weights, limit, filters)
        return self._bounded_bm25(list(terms), weights, limit, filters)

    def lexical_files(
        self, phrases: Sequence[Sequence[str]], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        quoted = [_phrase(" ".join(words)) for words in phrases if words]
        if not quoted:
            return []
        return self._bm25(f"files : ({' OR '.join(quoted)})", weights, limit, filters)

    def _bm25(self, match: str, weights: Sequence[float], limit: int, filters: Mapping[str, Any]) -> list[Doc]:
        where, params = doc_filters(["search_fts MATCH ?", "d.active = 1"], [match], filters)
        # bm25() sits in the projection, so SQLite computes it only for rows that pass the filters.
        sql = (
            f"SELECT {ROW}, d.id, -bm25(search_fts, {', '.join(str(float(w)) for w in weights)}) AS score "
            "FROM search_fts JOIN search_docs d ON d.id = search_fts.rowid "
            f"WHERE {' AND '.join(where)} ORDER BY score DESC, d.ts DESC LIMIT ?"
        )
        cols = (*ROW_COLUMNS, "rowid", "score")
        return [dict(zip(cols, row, strict=True)) for row in self.conn.execute(sql, (*params, limit))]

    def _match_count(self, match: str, cap: int) -> int:
        """How many rows an FTS5 expression matches, counting no further than ``cap`` (walking a
        posting list is cheap; scoring it is what costs)."""
        return self.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM search_fts WHERE search_fts MATCH ? LIMIT ?)", (match, cap)
        ).fetchone()[0]

    def _bounded_bm25(
        self, terms: list[str], weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        """BM25 over the records holding a rare term or every common one, when an OR of ``terms``
        matches more rows than the budget. Rare terms are the least frequent ones whose rows fit
        the budget together; the rest are common. Three small queries, each scoring its rows on
        every query term they contain (FTS5 scores the phrases of the branches a row matched):
        rare and common, rare only, all common."""
        rare = self._rarest_terms(terms)
        common = [t for t in terms if t not in rare]
        queries = []
        if rare and common:
            queries.append(f"({_any(rare)}) AND ({_any(common)})")
        if rare:
            queries.append(_any(rare))
        if len(common) > 1 or not rare:
            queries.append(" AND ".join(_phrase(t) for t in common))
        best: dict[str, Doc] = {}
        for match in queries:
            for hit in self._bm25(match, weights, limit, filters):
                best.setdefault(hit["doc_id"], hit)  # the first query to see a row scored all its terms
        newest_first = sorted(best.values(), key=lambda h: h["ts"], reverse=True)
        return sorted(newest_first, key=lambda h: -h["score"])[:limit]  # the SQL's order

    def _rarest_terms(self, terms: list[str]) -> list[str]:
        """The least frequent terms whose matching rows add up to at most the budget."""
        counts = sorted((self._match_count(_phrase(t), BM25_ROW_BUDGET + 1), i, t) for i, t in enumerate(terms))
        chosen, total = [], 0
        for count, _, term in counts:
            if total + count > BM25_ROW_BUDGET:
                break
            chosen.append(term)
            total += count
        return chosen

    # ---- listings
    def _rows(self, select: str, where: list[str], params: list[Any], tail: str, cols: tuple[str, ...]) -> list[Doc]:
        sql = f"SELECT {select} FROM search_docs d WHERE {' AND '.join(where) or '1'} {tail}"
        return [dict(zip(cols, r, strict=True)) for r in self.conn.execute(sql, params)]

    def recent(self, *, limit: int, offset: int = 0, filters: Mapping[str, Any]) -> list[Doc]:
        where, params = doc_filters(["d.active = 1"], [], filters)
        return self._rows(
            ROW, where, [*params, limit, offset], "ORDER BY d.ts DESC, d.id DESC LIMIT ? OFFSET ?", ROW_COLUMNS
        )

    def lookup(self, doc_ids: Sequence[str], filters: Mapping[str, Any]) -> list[Doc]:
        """Rows by record id (active or not) that pass ``filters``."""
        if not doc_ids:
            return []
        where, params = doc_filters([f"d.doc_id IN ({','.join('?' * len(doc_ids))})"], list(doc_ids), filters)
        return self._rows(ROWID_ROW, where, params, "", ROWID_COLUMNS)

    def by_rowid(self, rowids: Sequence[int], filters: Mapping[str, Any]) -> list[Doc]:
        """Active, filter-passing rows among ``rowids``."""
        if not rowids:
            return []
        where, params = doc_filters([f"d.id IN ({','.join('?' * len(rowids))})", "d.active = 1"], list(rowids), filters)
        return self._rows(ROWID_ROW, where, params, "", ROWID_COLUMNS)

    def around(self, ts: str, *, rowid: int, before: int, after: int, filters: Mapping[str, Any]) -> list[Doc]:
        """Active rows at or before the anchor (ts, rowid) (the newest ``before``+1) and after it
        (the oldest ``after``), in (ts, rowid) order."""
        where, params = doc_filters(
            ["d.active = 1", "(d.ts < ? OR (d.ts = ? AND d.id <= ?))"], [ts, ts, rowid], filters
        )
        older = self._rows(
            ROWID_ROW, where, [*params, before + 1], "ORDER BY d.ts DESC, d.id DESC LIMIT ?", ROWID_COLUMNS
        )
        where, params = doc_filters(["d.active = 1", "(d.ts > ? OR (d.ts = ? AND d.id > ?))"], [ts, ts, rowid], filters)
        newer = self._rows(ROWID_ROW, where, [*params, after], "ORDER BY d.ts, d.id LIMIT ?", ROWID_COLUMNS)
        return list(reversed(older)) + newer

    def total(self, *, filters: Mapping[str, Any]) -> int:
        where, params = doc_filters(["d.active = 1"], [], filters)
        return self.conn.execute(f"SELECT count(*) FROM search_docs d WHERE {' AND '.join(where)}", params).fetchone()[
            0
        ]

    def kind_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT kind, count(*) FROM search_docs GROUP BY kind").fetchall())

    def group_counts(self, by: Literal["project", "session_id"], filters: Mapping[str, Any]) -> dict[str | None, int]:
        """Row counts (active or not) grouped by ``project`` or ``session_id``."""
        if by not in ("project", "session_id"):
            raise ValueError(f"unsupported grouping {by!r}")
        where, params = doc_filters([], [], filters)
        sql = f"SELECT d.{by}, count(*) FROM search_docs d WHERE {' AND '.join(where) or '1'} GROUP BY d.{by}"
        return dict(self.conn.execute(sql, params).fetchall())

    def concepts(self, *, limit: int, filters: Mapping[str, Any]) -> list[tuple[str | None, str | None, str]]:
        """(project, session_id, concepts text) of the newest ``limit`` active rows with concepts."""
        where, params = doc_filters(["d.active = 1", "f.concepts != ''"], [], filters)
        rows = self.conn.execute(
            "SELECT d.project, d.session_id, f.concepts FROM search_docs d "
            f"JOIN search_fts f ON f.rowid = d.id WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?",
            (*params, limit),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # ---- consistency with the records
    def refs(self, *, after_id: int, limit: int) -> list[tuple[int, str, str, str]]:
        """(rowid, doc_id, scope, key) of rows after ``after_id``, in rowid order."""
        return self.conn.execute(
            "SELECT id, doc_id, scope, key FROM search_docs WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()

    def unindexed(self, scopes: Iterable[str], scope_prefix: str, *, limit: int) -> list[tuple[str, str, Any]]:
        """Records of indexed scopes (every scope starting with ``scope_prefix`` plus ``scopes``)
        that have no search row."""
        listed = list(scopes) or [""]
        rows = self.conn.execute(
            "SELECT k.scope, k.key, k.value FROM kv_store k LEFT JOIN search_docs d "
            "ON d.scope = k.scope AND d.key = k.key WHERE d.id IS NULL AND "
            f"((k.scope >= ? AND k.scope < ?) OR k.scope IN ({','.join('?' * len(listed))})) LIMIT ?",
            (scope_prefix, scope_prefix + "\U0010ffff", *listed, limit),
        )
        return [(s, k, loads(v)) for s, k, v in rows]

    def orphans(self, *, limit: int) -> list[str]:
        """doc_ids of rows whose record no longer exists."""
        rows = self.conn.execute(
            "SELECT d.doc_id FROM search_docs d LEFT JOIN kv_store k ON k.scope = d.scope AND k.key = d.key "
            "WHERE k.key IS NULL LIMIT ?",
            (limit,),
        )
        return [r[0] for r in rows]

    def prune_orphan_text(self) -> int:
        """Delete text rows no search row points at; returns how many."""
        return self.conn.execute("DELETE FROM search_fts WHERE rowid NOT IN (SELECT id FROM search_docs)").rowcount

    def rows_without_text(self, *, limit: int) -> list[tuple[str, str]]:
        """(scope, key) of rows whose text is missing."""
        rows = self.conn.execute(
            "SELECT d.scope, d.key FROM search_docs d WHERE NOT EXISTS "
            "(SELECT 1 FROM search_fts f WHERE f.rowid = d.id) LIMIT ?",
            (limit,),
        )
        return [(s, k) for s, k in rows]

    def text_without_rows(self, *, limit: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT rowid FROM search_fts WHERE rowid NOT IN (SELECT id FROM search_docs) LIMIT ?", (limit,)
        )
        return [r[0] for r in rows]

    def delete_text_rows(self, rowids: Iterable[int]) -> int:
        removed = 0
        for rowid in rowids:
            removed += self.conn.execute("DELETE FROM search_fts WHERE rowid = ?", (rowid,)).rowcount
        if removed:
            self.unit.record_change(f"search_fts/{removed} row(s)")
        return removed
