"""The change feed of the SQLite search index for the Tantivy engine (``storage/lexical``):
``lexical_outbox`` (seq, rowid, at) and the rows of ``search_docs`` + ``search_fts``.

One node (this file's directory) keeps one Tantivy index, so the outbox is pruned through what
that index committed, once the entries are ``keep_seconds`` old."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from agentmemory_server.storage.lexical.feed import Row

if TYPE_CHECKING:
    from agentmemory_server.storage.sqlite.database import Database

TEXT = "f.title, f.body, f.concepts, f.files, f.context"
DOCUMENT = f"SELECT d.id, d.kind, d.type, d.project, d.agent_id, d.session_id, d.ts, d.active, d.global, {TEXT} "
RESULT = "SELECT d.id, d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts FROM search_docs d "
PENDING = (
    "SELECT d.id, d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.agent_id, d.type, d.ts, d.active, "
    f"d.global, {TEXT} "
)
JOINED = "FROM search_docs d JOIN search_fts f ON f.rowid = d.id "
# Epoch seconds in SQL (unixepoch('subsec') needs SQLite 3.42).
NOW_EPOCH = "((julianday('now') - 2440587.5) * 86400.0)"


def marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


class SqliteLexicalFeed:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def has_docs(self) -> bool:
        return bool(self.conn.execute("SELECT EXISTS (SELECT 1 FROM search_docs)").fetchone()[0])

    def newest_seq(self) -> int:
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM lexical_outbox").fetchone()[0]

    def entries_pending(self, committed_seq: int, seen_seq: int, limit: int) -> list[tuple[int, int]] | None:
        pending = self.conn.execute("SELECT count(*) FROM lexical_outbox WHERE seq > ?", (committed_seq,)).fetchone()
        if pending[0] > limit:
            return None
        return self.entries_after(seen_seq)

    def entries_after(self, seq: int, limit: int | None = None) -> list[tuple[int, int]]:
        rows = self.conn.execute(
            "SELECT seq, rowid FROM lexical_outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, -1 if limit is None else limit),
        )
        return [(r[0], r[1]) for r in rows]

    def documents(self, rowids: Sequence[int]) -> list[Row]:
        if not rowids:
            return []
        return self.conn.execute(DOCUMENT + JOINED + f"WHERE d.id IN ({marks(rowids)})", list(rowids)).fetchall()

    def documents_after(self, after_rowid: int, limit: int) -> list[Row]:
        return self.conn.execute(
            DOCUMENT + JOINED + "WHERE d.id > ? AND d.active = 1 ORDER BY d.id LIMIT ?", (after_rowid, limit)
        ).fetchall()

    def active_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM search_docs WHERE active = 1").fetchone()[0]

    def results(self, rowids: Sequence[int]) -> list[Row]:
        if not rowids:
            return []
        return self.conn.execute(RESULT + f"WHERE d.id IN ({marks(rowids)}) AND d.active = 1", list(rowids)).fetchall()

    def pending(self, rowids: Sequence[int]) -> list[Row]:
        if not rowids:
            return []
        return self.conn.execute(PENDING + JOINED + f"WHERE d.id IN ({marks(rowids)})", list(rowids)).fetchall()

    def text_sample(self, size: int) -> list[Row]:
        top = self.conn.execute("SELECT coalesce(max(id), 0) FROM search_docs").fetchone()[0]
        start = random.randint(1, max(1, top - size))
        return self.conn.execute(
            "SELECT title, body, concepts, files, context FROM search_fts WHERE rowid >= ? LIMIT ?", (start, size)
        ).fetchall()

    def pruned_through(self) -> int:
        row = self.conn.execute("SELECT value FROM lexical_state WHERE name = 'pruned_through'").fetchone()
        return int(row[0]) if row else 0

    def applied(self, node: str, seq: int, now: float, *, keep_seconds: float) -> None:
        through = self.conn.execute(
            "SELECT max(seq) FROM lexical_outbox WHERE seq <= ? AND at <= ?", (seq, now - keep_seconds)
        ).fetchone()[0]
        if through is None:
            return
        self.conn.execute("DELETE FROM lexical_outbox WHERE seq <= ?", (through,))
        self.conn.execute(
            "INSERT INTO lexical_state (name, value) VALUES ('pruned_through', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (str(through),),
        )


class SqliteFeeds:
    """The feed outside a request: on this thread's reader, or in a short transaction."""

    def __init__(self, db: Database):
        self._db = db

    def reading(self) -> SqliteLexicalFeed:
        return SqliteLexicalFeed(self._db.reader().conn)

    @contextmanager
    def writing(self) -> Iterator[SqliteLexicalFeed]:
        with self._db.transaction("lexical_commit") as unit:
            yield SqliteLexicalFeed(unit.conn)

    @contextmanager
    def snapshot(self) -> Iterator[SqliteLexicalFeed]:
        with self._db.snapshot_reader() as store:
            yield SqliteLexicalFeed(store.conn)
