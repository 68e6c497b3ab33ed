"""The search index on SQLite: ``search_docs`` (one row per searchable record) and the FTS5 table
``search_fts`` (porter + unicode61) holding its text, both changed in the record's transaction.

Lexical search runs on Tantivy (storage/lexical/, fed from ``lexical_outbox`` by lexical_feed.py) and falls back to
FTS5 (lexical_fts5.py) when Tantivy is off (AGENTMEMORY_LEXICAL_ENGINE=fts5) or still building.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from agentmemory_server.storage.interfaces import Doc
from agentmemory_server.storage.lexical.tantivy_index import TantivyLexical
from agentmemory_server.storage.sqlite.common import Unit, in_chunks, loads
from agentmemory_server.storage.sqlite.images import SqliteImageIndex
from agentmemory_server.storage.sqlite.lexical_feed import NOW_EPOCH, SqliteLexicalFeed
from agentmemory_server.storage.sqlite.lexical_fts5 import Fts5Lexical, doc_filters

DOC_FIELDS = ("kind", "scope", "key", "session_id", "project", "agent_id", "type", "ts", "active", "global")
ROW = "d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts"
ROW_COLUMNS = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts")
ROWID_ROW = "d.id, " + ROW
ROWID_COLUMNS = ("rowid", *ROW_COLUMNS)


INSERT_DOC = f"INSERT INTO search_docs (doc_id, {', '.join(DOC_FIELDS)}) VALUES (?, {', '.join('?' * len(DOC_FIELDS))})"
# A new doc's row in one statement (no row back: the doc_id has one already, which is updated).
INSERT_NEW_DOC = INSERT_DOC + " ON CONFLICT (doc_id) DO NOTHING RETURNING id"
INSERT_DOC_WITH_ID = (
    f"INSERT INTO search_docs (id, doc_id, {', '.join(DOC_FIELDS)}) VALUES (?, ?, {', '.join('?' * len(DOC_FIELDS))})"
)
UPDATE_DOC = f"UPDATE search_docs SET {', '.join(f + ' = ?' for f in DOC_FIELDS)} WHERE id = ?"
TEXT_FIELDS = ("title", "body", "concepts", "files", "context")
INSERT_TEXT = f"INSERT INTO search_fts (rowid, {', '.join(TEXT_FIELDS)}) VALUES (?, ?, ?, ?, ?, ?)"
DELETE_TEXT = "DELETE FROM search_fts WHERE rowid = ?"
OUTBOX = f"INSERT INTO lexical_outbox (rowid, at) VALUES (?, {NOW_EPOCH})"
MAX_ROWID = 2**63 - 1


def _doc_values(doc: Doc) -> list[Any]:
    """The DOC_FIELDS of a search row as stored (flags as 0/1)."""
    values = [doc.get(f) for f in DOC_FIELDS]
    values[DOC_FIELDS.index("active")] = 1 if doc.get("active", True) else 0
    values[DOC_FIELDS.index("global")] = 1 if doc.get("global") else 0
    return values


def _text_values(text: Mapping[str, str]) -> list[str]:
    return [text.get(f, "") for f in TEXT_FIELDS]


def _distinct_runs(rows: Sequence[tuple[Doc, Mapping[str, str]]]) -> Iterator[list[tuple[Doc, Mapping[str, str]]]]:
    """``rows`` cut into consecutive runs without a repeated doc_id."""
    run: list[tuple[Doc, Mapping[str, str]]] = []
    seen: set[str] = set()
    for row in rows:
        if row[0]["doc_id"] in seen:
            yield run
            run, seen = [], set()
        run.append(row)
        seen.add(row[0]["doc_id"])
    if run:
        yield run


def _stamp() -> str:
    """Wall-clock stamp with microseconds: orders backlog entries against a running batch."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SqliteSearchIndex:
    """:param engine: the Tantivy engine, or None when FTS5 answers every lexical search."""

    def __init__(self, unit: Unit, vectors: Any, engine: TantivyLexical | None, images: SqliteImageIndex):
        self.unit = unit
        self.conn = unit.conn
        self._vectors = vectors
        self._engine = engine
        self._images = images  # told of the rows made here, which cannot have image links yet

    def _changed(self, rowid: int) -> None:
        """Feed the lexical engine kept outside SQLite (same transaction as the change)."""
        if self._engine is not None:
            self.conn.execute(OUTBOX, (rowid,))
            self.unit.lexical_changed = True

    def wiped(self) -> None:
        """Every row was deleted (import with strategy=replace): the engine clears its index."""
        self._changed(-1)

    # ---- writes
    def upsert(self, doc: Doc, text: Mapping[str, str]) -> int:
        """Index one record. The insert is tried first: most upserts are of a new record (every
        observe), which then costs one statement, not a lookup and an insert."""
        values = _doc_values(doc)
        made = self.conn.execute(INSERT_NEW_DOC, (doc["doc_id"], *values)).fetchall()
        if made:
            rowid = made[0][0]
            self._images.note_new_row(rowid)
        else:
            rowid = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc["doc_id"],)).fetchone()[0]
            self.conn.execute(UPDATE_DOC, (*values, rowid))
            self.conn.execute(DELETE_TEXT, (rowid,))
        self.conn.execute(INSERT_TEXT, (rowid, *_text_values(text)))
        self._vectors.backlog_put(rowid, _stamp())  # every (re-)indexed record needs a (new) vector
        self._changed(int(rowid))
        return int(rowid)

    def upsert_many(self, rows: Sequence[tuple[Doc, Mapping[str, str]]]) -> list[int]:
        """``upsert`` of each row in order, with the same rows, each statement prepared once and
        stepped over the whole batch. A doc_id met again starts a new run, so it updates what
        the run before it wrote, as one at a time would."""
        rowids: list[int] = []
        for run in _distinct_runs(rows):
            rowids += self._upsert_run(run)
        return rowids

    def _upsert_run(self, rows: Sequence[tuple[Doc, Mapping[str, str]]]) -> list[int]:
        """``upsert_many`` of rows with distinct doc_ids. The text goes in last: a statement
        that opens a statement journal (an insert firing a trigger, an upsert) makes FTS5 write
        the terms it holds in memory out as a new segment, so the text of each record written
        between two such statements became a segment of its own, all to be merged again (a
        fifth of the importing process's time in a profile of 100k records)."""
        doc_ids = [doc["doc_id"] for doc, _text in rows]
        existing: dict[str, int] = {}
        for chunk, marks in in_chunks(doc_ids):
            existing.update(self.conn.execute(f"SELECT doc_id, id FROM search_docs WHERE doc_id IN ({marks})", chunk))
        fresh = [doc for doc, _text in rows if doc["doc_id"] not in existing]
        first = self._next_rowids(len(fresh))
        if first is None:  # the rowids are near their limit: let SQLite pick each one
            return [self.upsert(doc, text) for doc, text in rows]
        new_ids = {doc["doc_id"]: first + n for n, doc in enumerate(fresh)}
        self.conn.executemany(INSERT_DOC_WITH_ID, [(new_ids[d["doc_id"]], d["doc_id"], *_doc_values(d)) for d in fresh])
        updated = [(*_doc_values(doc), existing[doc["doc_id"]]) for doc, _text in rows if doc["doc_id"] in existing]
        self.conn.executemany(UPDATE_DOC, updated)
        rowids = [existing[doc_id] if doc_id in existing else new_ids[doc_id] for doc_id in doc_ids]
        self._vectors.backlog_put_many(rowids, _stamp())
        if self._engine is not None:
            self.conn.executemany(OUTBOX, [(rowid,) for rowid in rowids])
            self.unit.lexical_changed = True
        self.conn.executemany(DELETE_TEXT, [(row[-1],) for row in updated])
        self.conn.executemany(
            INSERT_TEXT, [(rowid, *_text_values(text)) for rowid, (_doc, text) in zip(rowids, rows, strict=True)]
        )
        return rowids

    def _next_rowids(self, count: int) -> int | None:
        """The rowid SQLite would give the first of ``count`` new rows (one more than the
        largest, 1 in an empty table), the others following it; None when they would not fit
        below the largest rowid, where SQLite picks free rowids at random."""
        top = self.conn.execute("SELECT max(id) FROM search_docs").fetchone()[0] or 0
        return top + 1 if top + count < MAX_ROWID else None

    def sessions_indexed(self, session_ids: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for chunk, marks in in_chunks(list(dict.fromkeys(session_ids))):
            sql = f"SELECT DISTINCT session_id FROM search_docs WHERE session_id IN ({marks})"
            rows = self.conn.execute(sql, chunk)
            found.update(r[0] for r in rows)
        return found

    def delete(self, doc_ids: Iterable[str]) -> int:
        removed = 0
        for doc_id in doc_ids:
            row = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc_id,)).fetchone()
            if row:
                self.conn.execute("DELETE FROM search_fts WHERE rowid = ?", (row[0],))
                self.conn.execute("DELETE FROM search_docs WHERE id = ?", (row[0],))
                self._changed(row[0])
                removed += 1
        return removed

    def set_active(self, doc_id: str, active: bool) -> None:
        row = self.conn.execute(
            "UPDATE search_docs SET active = ? WHERE doc_id = ? RETURNING id", (1 if active else 0, doc_id)
        ).fetchone()
        if row:
            self._changed(row[0])

    def text_before(self, session_id: str, ts: str, doc_id: str, count: int = 1) -> list[str]:
        """Bodies of the ``count`` records just before (ts, doc_id) in a session, nearest first."""
        # The record's own rowid breaks ties of ts (2**62, past every rowid, when it has none yet:
        # the usual new observation), looked up inside the one statement.
        rows = self.conn.execute(
            "SELECT f.body FROM search_docs d JOIN search_fts f ON f.rowid = d.id "
            "WHERE d.session_id = ? AND d.doc_id != ? AND (d.ts < ? OR (d.ts = ? AND d.id < "
            "coalesce((SELECT id FROM search_docs WHERE doc_id = ?), 4611686018427387904))) "
            "ORDER BY d.ts DESC, d.id DESC LIMIT ?",
            (session_id, doc_id, ts, ts, doc_id, count),
        )
        return [r[0] for r in rows]

    # ---- lexical search
    def lexical(
        self, terms: Sequence[str], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        if not terms:
            return []
        if self._engine is not None:
            found = self._engine.search(SqliteLexicalFeed(self.conn), terms, weights, limit, filters)
            if found is not None:
                return found
        return Fts5Lexical(self.conn).search(terms, weights, limit, filters)

    def lexical_files(
        self, phrases: Sequence[Sequence[str]], *, weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        if self._engine is not None:
            found = self._engine.search_files(SqliteLexicalFeed(self.conn), phrases, weights, limit, filters)
            if found is not None:
                return found
        return Fts5Lexical(self.conn).search_files(phrases, weights, limit, filters)

    def near_duplicates(self, text: str, *, limit: int, filters: Mapping[str, Any]) -> list[Doc] | None:
        if self._engine is None:
            return None
        return self._engine.near_duplicates(SqliteLexicalFeed(self.conn), text, limit, filters)

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
        # "ts <= ?" first: a range the (kind, ts) index serves; the OR alone hid it from the planner
        # and a timeline in the middle of 100k records walked half of them (28 ms).
        where, params = doc_filters(["d.active = 1", "d.ts <= ?", "(d.ts < ? OR d.id <= ?)"], [ts, ts, rowid], filters)
        older = self._rows(
            ROWID_ROW, where, [*params, before + 1], "ORDER BY d.ts DESC, d.id DESC LIMIT ?", ROWID_COLUMNS
        )
        where, params = doc_filters(["d.active = 1", "d.ts >= ?", "(d.ts > ? OR d.id > ?)"], [ts, ts, rowid], filters)
        newer = self._rows(ROWID_ROW, where, [*params, after], "ORDER BY d.ts, d.id LIMIT ?", ROWID_COLUMNS)
        return list(reversed(older)) + newer

    def total(self, *, filters: Mapping[str, Any]) -> int:
        where, params = doc_filters(["d.active = 1"], [], filters)
        return self.conn.execute(f"SELECT count(*) FROM search_docs d WHERE {' AND '.join(where)}", params).fetchone()[
            0
        ]

    def kind_counts(self) -> dict[str, int]:
        """Search rows per kind (kept by triggers: no scan)."""
        return dict(self.conn.execute("SELECT kind, n FROM search_counts WHERE n > 0 ORDER BY kind").fetchall())

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
