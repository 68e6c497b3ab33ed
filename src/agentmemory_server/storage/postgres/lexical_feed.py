"""The change feed of the PostgreSQL search index for the Tantivy engine (``storage/lexical``).

Every node keeps its own Tantivy index and applies the one shared ``lexical_outbox``. Writes are
serialised by the database's write lock (database.py), so outbox sequence numbers are committed
in order and an applier never skips an entry a slower transaction commits later. Each node
records in ``lexical_nodes`` how far its committed index got; entries are deleted once every
node seen in the last ``NODE_TTL_SECONDS`` holds them (and they are ``keep_seconds`` old). A node
away longer than that finds ``pruned_through`` past its index and rebuilds it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from agentmemory_server.storage.lexical.feed import Row
from agentmemory_server.storage.postgres.common import SqlConn

if TYPE_CHECKING:
    from agentmemory_server.storage.postgres.database import PostgresDatabase

NODE_TTL_SECONDS = 600.0
TEXT = "t.title, t.body, t.concepts, t.files, t.context"
DOCUMENT = (
    "SELECT d.id, d.kind, d.type, d.project, d.agent_id, d.session_id, d.ts, d.active, d.global, "
    f"{TEXT} FROM search_docs d JOIN search_text t ON t.rowid = d.id "
)
RESULT = "SELECT d.id, d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts FROM search_docs d "
PENDING = (
    "SELECT d.id, d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.agent_id, d.type, d.ts, d.active, "
    f"d.global, {TEXT} FROM search_docs d JOIN search_text t ON t.rowid = d.id "
)


class PgLexicalFeed:
    def __init__(self, conn: SqlConn):
        self.conn = conn

    def has_docs(self) -> bool:
        return bool(self.conn.execute("SELECT EXISTS (SELECT 1 FROM search_docs)").fetchone()[0])

    def newest_seq(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM lexical_outbox").fetchone()[0])

    def entries_pending(self, committed_seq: int, seen_seq: int, limit: int) -> list[tuple[int, int]] | None:
        # One round trip per search: the count and the entries together (a row of NULLs when
        # nothing is new or too much is).
        rows = self.conn.execute(
            "SELECT c.n, o.seq, o.rowid FROM (SELECT count(*) AS n FROM lexical_outbox WHERE seq > %s) c "
            "LEFT JOIN LATERAL (SELECT seq, rowid FROM lexical_outbox WHERE seq > %s AND c.n <= %s ORDER BY seq) o "
            "ON true ORDER BY o.seq",
            (committed_seq, seen_seq, limit),
        ).fetchall()
        if rows[0][0] > limit:
            return None
        return [(int(seq), int(rowid)) for _n, seq, rowid in rows if seq is not None]

    def entries_after(self, seq: int, limit: int | None = None) -> list[tuple[int, int]]:
        rows = self.conn.execute(
            "SELECT seq, rowid FROM lexical_outbox WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit)
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    def documents(self, rowids: Sequence[int]) -> list[Row]:
        if not rowids:
            return []
        return self.conn.execute(DOCUMENT + "WHERE d.id = ANY(%s)", ([int(r) for r in rowids],)).fetchall()

    def documents_after(self, after_rowid: int, limit: int) -> list[Row]:
        return self.conn.execute(
            DOCUMENT + "WHERE d.id > %s AND d.active ORDER BY d.id LIMIT %s", (after_rowid, limit)
        ).fetchall()

    def active_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM search_docs WHERE active").fetchone()[0])

    def results(self, rowids: Sequence[int]) -> list[Row]:
        if not rowids:
            return []
        return self.conn.execute(RESULT + "WHERE d.id = ANY(%s) AND d.active", ([int(r) for r in rowids],)).fetchall()

    def pending(self, rowids: Sequence[int]) -> list[Row]:
        if not rowids:
            return []
        return self.conn.execute(PENDING + "WHERE d.id = ANY(%s)", ([int(r) for r in rowids],)).fetchall()

    def text_sample(self, size: int) -> list[Row]:
        return self.conn.execute(
            "SELECT title, body, concepts, files, context FROM search_text "
            "WHERE rowid >= (SELECT floor(random() * greatest(coalesce(max(rowid), 0) - %s, 1))::bigint "
            "FROM search_text) ORDER BY rowid LIMIT %s",
            (size, size),
        ).fetchall()

    def pruned_through(self) -> int:
        row = self.conn.execute("SELECT value FROM lexical_state WHERE name = 'pruned_through'").fetchone()
        return int(row[0]) if row else 0

    def applied(self, node: str, seq: int, now: float, *, keep_seconds: float) -> None:
        self.conn.execute(
            "INSERT INTO lexical_nodes (node, applied_seq, seen_at) VALUES (%s, %s, %s) ON CONFLICT (node) "
            "DO UPDATE SET applied_seq = excluded.applied_seq, seen_at = excluded.seen_at",
            (node, seq, now),
        )
        bound = self.conn.execute(
            "SELECT min(applied_seq) FROM lexical_nodes WHERE seen_at >= %s", (now - NODE_TTL_SECONDS,)
        ).fetchone()[0]
        through = self.conn.execute(
            "SELECT max(seq) FROM lexical_outbox WHERE seq <= %s AND at <= %s", (bound, now - keep_seconds)
        ).fetchone()[0]
        if through is None:
            return
        self.conn.execute("DELETE FROM lexical_outbox WHERE seq <= %s", (through,))
        self.conn.execute(
            "INSERT INTO lexical_state (name, value) VALUES ('pruned_through', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (str(through),),
        )


class PgFeeds:
    def __init__(self, db: PostgresDatabase):
        self._db = db

    def reading(self) -> PgLexicalFeed:
        return PgLexicalFeed(self._db.reader().conn)

    @contextmanager
    def writing(self) -> Iterator[PgLexicalFeed]:
        with self._db.transaction("lexical_commit") as unit:
            yield PgLexicalFeed(unit.conn)

    @contextmanager
    def snapshot(self) -> Iterator[PgLexicalFeed]:
        with self._db.snapshot_reader() as store:
            yield PgLexicalFeed(store.conn)
