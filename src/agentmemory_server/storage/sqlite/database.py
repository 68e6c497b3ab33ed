"""SQLite storage: connections, schema migrations and every SQL statement of the server.

Concurrency discipline (the Datasette one): reads run on per-thread read-only connections, so
they never wait for writers (WAL); all writes go through a single writer connection guarded by a
lock, each in a short ``BEGIN IMMEDIATE`` transaction. ``busy_timeout`` covers the other
processes that may touch the file (the backup sidecar, the CLI).

Records live in ``kv_store(scope, key, value JSON)`` (the upstream StateKV model). Every
transaction that changes anything writes one ``audit_log`` row naming what it touched, so no
mutation can forget to be audited. Search tables (``search_docs`` + the FTS5 ``search_fts``)
live in the same file and change in the same transaction as the record they index.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from agentmemory_server.errors import AppError

# -- schema migrations ------------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    """Register a schema migration. Order of registration is the order applied; PRAGMA
    user_version records how many have run. Names must be unique."""

    def register(fn: Migration) -> Migration:
        if any(existing == name for existing, _ in MIGRATIONS):
            raise ValueError(f"duplicate migration {name!r}")
        MIGRATIONS.append((name, fn))
        return fn

    return register


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute several statements inside the caller's transaction (``executescript`` would
    commit first, which would make a failed migration half-applied)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement[:80]!r}")


@migration("core")
def _m001_core(conn: sqlite3.Connection) -> None:
    run_script(conn, 
        """
        CREATE TABLE kv_store (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL CHECK (json_valid(value)),
            updated_at TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        );
        CREATE INDEX kv_sessions_started ON kv_store (json_extract(value, '$.startedAt'))
            WHERE scope = 'mem:sessions';
        CREATE INDEX kv_memories_updated ON kv_store (json_extract(value, '$.updatedAt'))
            WHERE scope = 'mem:memories';

        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            agent_id TEXT,
            operation TEXT NOT NULL,
            message TEXT NOT NULL,
            targets TEXT NOT NULL DEFAULT '[]',
            details TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_log_operation ON audit_log (operation, id);

        CREATE TABLE capture_events (
            event_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            obs_id TEXT,
            created_at TEXT NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        );

        CREATE TABLE search_docs (
            id INTEGER PRIMARY KEY,
            doc_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            session_id TEXT,
            project TEXT,
            agent_id TEXT,
            type TEXT,
            ts TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX search_docs_project_ts ON search_docs (project, ts);
        CREATE INDEX search_docs_session_ts ON search_docs (session_id, ts);
        CREATE INDEX search_docs_kind_ts ON search_docs (kind, ts);
        -- context: the text just before a record in its session (a reply rarely restates
        -- the question it answers), weighted low in bm25.
        CREATE VIRTUAL TABLE search_fts USING fts5 (
            title, body, concepts, files, context,
            tokenize = 'porter unicode61 remove_diacritics 2'
        );
        """
    )


@migration("working_memory")
def _m002_working_memory(conn: sqlite3.Connection) -> None:
    # Session-scoped working memory (working.py). Every primary key starts with the scope
    # (project, agent, session); reserved data (task, scratchpad, checkpoints) has its own table,
    # so no key pattern can reach it and checkpoints sit outside key TTL and key capacity.
    run_script(conn,
        """
        CREATE TABLE wm_kv (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL CHECK (json_valid(value)),
            expires_at REAL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (project, agent, session, key)
        ) WITHOUT ROWID;
        CREATE INDEX wm_kv_expires ON wm_kv (expires_at) WHERE expires_at IS NOT NULL;

        CREATE TABLE wm_scratchpad (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            seq INTEGER NOT NULL,
            content TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (project, agent, session, seq)
        ) WITHOUT ROWID;

        CREATE TABLE wm_task (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            task TEXT NOT NULL CHECK (json_valid(task)),
            version INTEGER NOT NULL,
            PRIMARY KEY (project, agent, session)
        ) WITHOUT ROWID;

        CREATE TABLE wm_checkpoint (
            project TEXT NOT NULL,
            agent TEXT NOT NULL,
            session TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            meta TEXT NOT NULL CHECK (json_valid(meta)),
            snapshot TEXT NOT NULL CHECK (json_valid(snapshot)),
            PRIMARY KEY (project, agent, session, checkpoint_id)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX wm_checkpoint_order ON wm_checkpoint (project, agent, session, seq);
        """
    )


@migration("vectors")
def _m003_vectors(conn: sqlite3.Connection) -> None:
    """Embeddings keyed to their search row (deleted with it) and the durable embedding backlog.

    Every row already indexed is queued, so an upgraded database gets its vectors in the
    background instead of at start-up."""
    run_script(conn,
        """
        CREATE TABLE search_vectors (
            doc_rowid INTEGER PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX search_vectors_model ON search_vectors (model);
        CREATE TABLE embed_backlog (
            doc_rowid INTEGER PRIMARY KEY REFERENCES search_docs (id) ON DELETE CASCADE,
            queued_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try REAL NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE INDEX embed_backlog_next ON embed_backlog (next_try, doc_rowid);
        INSERT INTO embed_backlog (doc_rowid, queued_at)
            SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM search_docs;
        """
    )


@migration("memory_model_indexes")
def _m004_memory_model(conn: sqlite3.Connection) -> None:
    # Relations are looked up from either end; retention finds expired memories; diagnostics
    # and retention join search rows back to their record by (scope, key).
    run_script(conn,
        """
        CREATE INDEX kv_relations_source ON kv_store (json_extract(value, '$.sourceId'))
            WHERE scope = 'mem:relations';
        CREATE INDEX kv_relations_target ON kv_store (json_extract(value, '$.targetId'))
            WHERE scope = 'mem:relations';
        CREATE INDEX kv_memories_forget ON kv_store (json_extract(value, '$.forgetAfter'))
            WHERE scope = 'mem:memories';
        CREATE INDEX search_docs_scope_key ON search_docs (scope, key);
        """
    )


@migration("llm_jobs")
def _m005_llm_jobs(conn: sqlite3.Connection) -> None:
    # Durable queue of background model work (llm.py): an observation to compress, a session to
    # summarise or graph, a project to consolidate. Written in the same transaction as the
    # record it is about, so a crash never loses pending work.
    run_script(conn,
        """
        CREATE TABLE llm_jobs (
            kind TEXT NOT NULL,
            ref TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(args)),
            queued_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            PRIMARY KEY (kind, ref)
        );
        CREATE INDEX llm_jobs_next ON llm_jobs (next_try, queued_at);
        """
    )


class SchemaTooNew(AppError):
    status = 503
    code = "schema_too_new"


# -- JSON helpers ---------------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON for storage. Falls back to ASCII escapes when a string holds a lone
    surrogate, which UTF-8 (and therefore SQLite) cannot carry."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def loads(text: str) -> Any:
    return json.loads(text)


def in_chunks(values: Iterable[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
    """Distinct values in chunks small enough for SQLite's parameter limit, each with its
    ``?,?,...`` placeholder list."""
    values = list(dict.fromkeys(values))
    for start in range(0, len(values), size):
        chunk = values[start:start + size]
        yield chunk, ",".join("?" * len(chunk))


def _stamp() -> str:
    """Wall-clock stamp with microseconds: orders backlog entries against a running batch."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the store: all SQL, bound to one connection --------------------------------------------------


class Store:
    """SQL operations on one connection. A Store handed out by ``Database.transaction`` can
    write and tracks what it changes for the audit row; one from ``Database.reader`` is
    read-only (the connection is opened with ``mode=ro``)."""

    def __init__(self, conn: sqlite3.Connection, *, writable: bool):
        self.conn = conn
        self.writable = writable
        self.changed: list[str] = []
        self.audit_message: str | None = None
        self.audit_details: dict[str, Any] = {}
        self._after_commit: list[Callable[[], None]] = []

    # ---- transaction bookkeeping
    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the transaction has committed (e.g. broadcast to live viewers)."""
        self._after_commit.append(fn)

    def _touch(self, scope: str, key: str) -> None:
        self.changed.append(f"{scope}/{key}")

    def record_change(self, what: str, message: str | None = None) -> None:
        """Audit a change made outside kv_store (Redis, index repairs, ...) with this
        transaction's row."""
        self.changed.append(what)
        if message:
            self.audit_message = message

    # ---- kv_store
    def get(self, scope: str, key: str) -> Any | None:
        row = self.conn.execute(
            "SELECT value FROM kv_store WHERE scope = ? AND key = ?", (scope, key)
        ).fetchone()
        return loads(row[0]) if row else None

    def get_many(self, scope: str, keys: Iterable[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for chunk, marks in in_chunks(keys):
            rows = self.conn.execute(
                f"SELECT key, value FROM kv_store WHERE scope = ? AND key IN ({marks})",
                (scope, *chunk),
            )
            found.update((k, loads(v)) for k, v in rows)
        return found

    def list(self, scope: str) -> list[tuple[str, Any]]:
        rows = self.conn.execute(
            "SELECT key, value FROM kv_store WHERE scope = ? ORDER BY key", (scope,)
        )
        return [(k, loads(v)) for k, v in rows]

    def list_prefix(self, scope_prefix: str) -> list[tuple[str, str, Any]]:
        """Every (scope, key, value) whose scope starts with ``scope_prefix``."""
        rows = self.conn.execute(
            "SELECT scope, key, value FROM kv_store WHERE scope >= ? AND scope < ? "
            "ORDER BY scope, key",
            (scope_prefix, scope_prefix + "\U0010ffff"),
        )
        return [(s, k, loads(v)) for s, k, v in rows]

    def scopes(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT scope FROM kv_store ORDER BY scope")]

    def count(self, scope: str) -> int:
        return self.conn.execute("SELECT count(*) FROM kv_store WHERE scope = ?", (scope,)).fetchone()[0]

    def set(self, scope: str, key: str, value: Any, *, now: str) -> None:
        self.conn.execute(
            "INSERT INTO kv_store (scope, key, value, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (scope, key, dumps(value), now),
        )
        self._touch(scope, key)

    def delete(self, scope: str, key: str) -> bool:
        deleted = self.conn.execute(
            "DELETE FROM kv_store WHERE scope = ? AND key = ?", (scope, key)
        ).rowcount > 0
        if deleted:
            self._touch(scope, key)
        return deleted

    def delete_scope(self, scope: str) -> int:
        n = self.conn.execute("DELETE FROM kv_store WHERE scope = ?", (scope,)).rowcount
        if n:
            self._touch(scope, "*")
        return n

    # ---- sessions and memories (expression-indexed listings)
    def sessions_page(self, *, project: str | None, agent_id: str | None, status: str | None,
                      limit: int, offset: int) -> tuple[list[Any], int]:
        where, params = ["scope = 'mem:sessions'"], []
        for field, value in (("project", project), ("agentId", agent_id), ("status", status)):
            if value is not None:
                where.append(f"json_extract(value, '$.{field}') = ?")
                params.append(value)
        clause = " AND ".join(where)
        total = self.conn.execute(f"SELECT count(*) FROM kv_store WHERE {clause}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT value FROM kv_store WHERE {clause} "
            "ORDER BY json_extract(value, '$.startedAt') DESC, key LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [loads(r[0]) for r in rows], total

    def observations_page(self, session_id: str, *, limit: int, offset: int,
                          agent_id: str | None = None) -> tuple[list[Any], int]:
        scope = f"mem:obs:{session_id}"
        where, params = "scope = ?", [scope]
        if agent_id is not None:
            where += " AND json_extract(value, '$.agentId') = ?"
            params.append(agent_id)
        total = self.conn.execute(f"SELECT count(*) FROM kv_store WHERE {where}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT value FROM kv_store WHERE {where} "
            "ORDER BY json_extract(value, '$.timestamp'), key LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [loads(r[0]) for r in rows], total

    def top_observations(self, session_id: str, *, min_importance: int, limit: int) -> list[Any]:
        rows = self.conn.execute(
            "SELECT value FROM kv_store WHERE scope = ? "
            "AND json_extract(value, '$.importance') >= ? "
            "ORDER BY json_extract(value, '$.importance') DESC, key LIMIT ?",
            (f"mem:obs:{session_id}", min_importance, limit),
        )
        return [loads(r[0]) for r in rows]

    def session_ids_with(self, field: str, value: str) -> list[str]:
        """Ids of sessions whose ``field`` (project, cwd, agentId) equals ``value``."""
        if field not in ("project", "cwd", "agentId", "status"):
            raise ValueError(f"unsupported session field {field!r}")
        rows = self.conn.execute(
            f"SELECT key FROM kv_store WHERE scope = 'mem:sessions' "
            f"AND json_extract(value, '$.{field}') = ?", (value,))
        return [r[0] for r in rows]

    def memories_page(self, *, project: str | None, agent_id: str | None, latest_only: bool,
                      limit: int, offset: int) -> tuple[list[Any], int]:
        where, params = ["scope = 'mem:memories'"], []
        if project is not None:
            where.append("json_extract(value, '$.project') = ?")
            params.append(project)
        if agent_id is not None:
            where.append("json_extract(value, '$.agentId') = ?")
            params.append(agent_id)
        if latest_only:
            where.append("json_extract(value, '$.isLatest') = 1")
        clause = " AND ".join(where)
        total = self.conn.execute(f"SELECT count(*) FROM kv_store WHERE {clause}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT value FROM kv_store WHERE {clause} "
            "ORDER BY json_extract(value, '$.updatedAt') DESC, key LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [loads(r[0]) for r in rows], total

    # ---- capture events (event-id dedup)
    def event_get(self, event_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT event_id, session_id, obs_id, created_at, deleted FROM capture_events "
            "WHERE event_id = ?", (event_id,),
        ).fetchone()
        if not row:
            return None
        return {"eventId": row[0], "sessionId": row[1], "obsId": row[2], "createdAt": row[3],
                "deleted": bool(row[4])}

    def event_put(self, event_id: str, session_id: str, obs_id: str, now: str) -> None:
        self.conn.execute(
            "INSERT INTO capture_events (event_id, session_id, obs_id, created_at) VALUES (?,?,?,?)",
            (event_id, session_id, obs_id, now),
        )

    def events_mark_deleted(self, obs_ids: list[str]) -> None:
        # The event row stays so that a replay of a deleted event is still a duplicate.
        for start in range(0, len(obs_ids), 500):
            chunk = obs_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"UPDATE capture_events SET deleted = 1 WHERE obs_id IN ({marks})", chunk)

    # ---- search index
    def index_upsert(self, doc: dict[str, Any], text: dict[str, str]) -> int:
        """Insert or replace the search row of one record; returns its numeric doc rowid."""
        row = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc["doc_id"],)).fetchone()
        fields = ("kind", "scope", "key", "session_id", "project", "agent_id", "type", "ts", "active")
        values = [doc.get(f) for f in fields]
        values[-1] = 1 if doc.get("active", True) else 0
        if row:
            rowid = row[0]
            self.conn.execute(
                f"UPDATE search_docs SET {', '.join(f + ' = ?' for f in fields)} WHERE id = ?",
                (*values, rowid),
            )
            self.conn.execute("DELETE FROM search_fts WHERE rowid = ?", (rowid,))
        else:
            rowid = self.conn.execute(
                f"INSERT INTO search_docs (doc_id, {', '.join(fields)}) "
                f"VALUES (?, {', '.join('?' * len(fields))})",
                (doc["doc_id"], *values),
            ).lastrowid
        self.conn.execute(
            "INSERT INTO search_fts (rowid, title, body, concepts, files, context) VALUES (?, ?, ?, ?, ?, ?)",
            (rowid, text.get("title", ""), text.get("body", ""), text.get("concepts", ""),
             text.get("files", ""), text.get("context", "")),
        )
        self.backlog_put(rowid, _stamp())  # every (re-)indexed record needs a (new) vector
        return rowid

    def text_before(self, session_id: str, ts: str, doc_id: str, count: int = 1) -> list[str]:
        """Bodies of the ``count`` records just before (ts, doc_id) in a session, nearest first."""
        row = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc_id,)).fetchone()
        rowid = row[0] if row else 2 ** 62
        rows = self.conn.execute(
            "SELECT f.body FROM search_docs d JOIN search_fts f ON f.rowid = d.id "
            "WHERE d.session_id = ? AND d.doc_id != ? AND (d.ts < ? OR (d.ts = ? AND d.id < ?)) "
            "ORDER BY d.ts DESC, d.id DESC LIMIT ?", (session_id, doc_id, ts, ts, rowid, count))
        return [r[0] for r in rows]

    def index_set_active(self, doc_id: str, active: bool) -> None:
        self.conn.execute("UPDATE search_docs SET active = ? WHERE doc_id = ?", (1 if active else 0, doc_id))

    def index_delete(self, doc_ids: Iterable[str]) -> int:
        removed = 0
        for doc_id in doc_ids:
            row = self.conn.execute("SELECT id FROM search_docs WHERE doc_id = ?", (doc_id,)).fetchone()
            if row:
                self.conn.execute("DELETE FROM search_fts WHERE rowid = ?", (row[0],))
                self.conn.execute("DELETE FROM search_docs WHERE id = ?", (row[0],))
                removed += 1
        return removed

    def index_delete_session(self, session_id: str) -> int:
        ids = [r[0] for r in self.conn.execute(
            "SELECT id FROM search_docs WHERE session_id = ? AND kind = 'observation'", (session_id,))]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"DELETE FROM search_fts WHERE rowid IN ({marks})", chunk)
            self.conn.execute(f"DELETE FROM search_docs WHERE id IN ({marks})", chunk)
        return len(ids)

    def fts_search(self, match: str, *, weights: tuple[float, ...], limit: int,
                   filters: dict[str, Any]) -> list[dict[str, Any]]:
        """BM25-ranked rows for an FTS5 MATCH expression. ``score`` is positive, higher better.

        ``filters`` keys: kinds (list), project, agent_id, session_ids (list), exclude_session.
        """
        where, params = ["search_fts MATCH ?", "d.active = 1"], [match]
        where, params = _doc_filters(where, params, filters)
        # bm25() sits in the projection, so SQLite computes it only for rows that pass the filters.
        sql = (
            "SELECT d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts, d.id, "
            f"-bm25(search_fts, {', '.join(str(float(w)) for w in weights)}) AS score "
            "FROM search_fts JOIN search_docs d ON d.id = search_fts.rowid "
            f"WHERE {' AND '.join(where)} ORDER BY score DESC, d.ts DESC LIMIT ?"
        )
        cols = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts", "rowid", "score")
        return [dict(zip(cols, row)) for row in self.conn.execute(sql, (*params, limit))]

    def fts_match_count(self, match: str, cap: int) -> int:
        """How many index rows an FTS5 expression matches, counting no further than ``cap``
        (walking a posting list is cheap; scoring it is what costs)."""
        return self.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM search_fts WHERE search_fts MATCH ? LIMIT ?)",
            (match, cap)).fetchone()[0]

    def docs_recent(self, *, limit: int, offset: int = 0, filters: dict[str, Any]) -> list[dict[str, Any]]:
        where, params = _doc_filters(["d.active = 1"], [], filters)
        sql = (
            "SELECT d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts FROM search_docs d "
            f"WHERE {' AND '.join(where)} ORDER BY d.ts DESC, d.id DESC LIMIT ? OFFSET ?"
        )
        cols = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts")
        return [dict(zip(cols, row)) for row in self.conn.execute(sql, (*params, limit, offset))]

    def doc_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT kind, count(*) FROM search_docs GROUP BY kind")
        return {kind: n for kind, n in rows}

    def fts_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM search_docs").fetchone()[0]


    # ---- vectors and the embedding backlog (the vector index subsystem's SQL)
    def backlog_put(self, rowid: int, now: str) -> None:
        """Queue one search row for (re-)embedding; a queued row is retried from scratch."""
        self.conn.execute(
            "INSERT INTO embed_backlog (doc_rowid, queued_at) VALUES (?, ?) ON CONFLICT (doc_rowid) "
            "DO UPDATE SET queued_at = excluded.queued_at, attempts = 0, next_try = 0, last_error = NULL",
            (rowid, now))

    def backlog_take(self, limit: int, now_epoch: float) -> list[dict[str, Any]]:
        """Due backlog rows with the text and metadata of their search row, oldest first."""
        rows = self.conn.execute(
            "SELECT b.doc_rowid, b.attempts, f.title, f.body, f.concepts, f.context, d.kind, d.project, "
            "d.agent_id, d.session_id FROM embed_backlog b JOIN search_docs d ON d.id = b.doc_rowid "
            "JOIN search_fts f ON f.rowid = b.doc_rowid WHERE b.next_try <= ? "
            "ORDER BY b.next_try, b.doc_rowid LIMIT ?", (now_epoch, limit))
        cols = ("rowid", "attempts", "title", "body", "concepts", "context", "kind", "project",
                "agent_id", "session_id")
        return [dict(zip(cols, r)) for r in rows]

    def backlog_done(self, rowids: list[int], queued_before: str) -> None:
        """Drop rows embedded by this batch, unless they were re-queued while it ran."""
        for start in range(0, len(rowids), 500):
            chunk = rowids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            self.conn.execute(f"DELETE FROM embed_backlog WHERE doc_rowid IN ({marks}) AND queued_at <= ?",
                              (*chunk, queued_before))

    def backlog_failed(self, rowids: list[int], error: str, retry_at: float) -> None:
        for rowid in rowids:
            self.conn.execute(
                "UPDATE embed_backlog SET attempts = attempts + 1, next_try = ?, last_error = ? "
                "WHERE doc_rowid = ?", (retry_at, error[:500], rowid))

    def backlog_stats(self) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT count(*), coalesce(sum(attempts > 0), 0), max(attempts), "
            "(SELECT last_error FROM embed_backlog WHERE last_error IS NOT NULL "
            " ORDER BY next_try DESC LIMIT 1) FROM embed_backlog").fetchone()
        return {"pending": row[0], "failing": row[1], "maxAttempts": row[2] or 0, "lastError": row[3]}

    def backlog_requeue_missing(self, model: str, now: str, *, everything: bool = False) -> int:
        """Queue every search row without a vector of ``model`` (or every row); returns how many."""
        # "WHERE 1": SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT.
        where = "WHERE 1" if everything else (
            "WHERE NOT EXISTS (SELECT 1 FROM search_vectors v WHERE v.doc_rowid = d.id AND v.model = ?)")
        params: tuple = (now,) if everything else (now, model)
        return self.conn.execute(
            "INSERT INTO embed_backlog (doc_rowid, queued_at) SELECT d.id, ? FROM search_docs d "
            f"{where} ON CONFLICT (doc_rowid) DO UPDATE SET attempts = 0, next_try = 0, last_error = NULL",
            params).rowcount

    def vector_put(self, rowid: int, model: str, vector: bytes, dim: int, now: str) -> bool:
        """Store a vector if its search row still exists; False when the row is gone."""
        return self.conn.execute(
            "INSERT INTO search_vectors (doc_rowid, model, dim, vector, updated_at) "
            "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM search_docs WHERE id = ?) "
            "ON CONFLICT (doc_rowid) DO UPDATE SET model = excluded.model, dim = excluded.dim, "
            "vector = excluded.vector, updated_at = excluded.updated_at",
            (rowid, model, dim, vector, now, rowid)).rowcount > 0

    def vectors_load(self, model: str, dim: int) -> Iterator[tuple]:
        """(rowid, vector bytes, kind, project, agent_id, session_id) of every vector of ``model``."""
        return self.conn.execute(
            "SELECT v.doc_rowid, v.vector, d.kind, d.project, d.agent_id, d.session_id "
            "FROM search_vectors v JOIN search_docs d ON d.id = v.doc_rowid "
            "WHERE v.model = ? AND v.dim = ? ORDER BY v.doc_rowid", (model, dim))

    def vector_counts(self) -> dict[str, int]:
        return {m: n for m, n in self.conn.execute(
            "SELECT model || '/' || dim, count(*) FROM search_vectors GROUP BY model, dim")}

    def docs_without_vector(self, model: str) -> int:
        """Search rows with no vector of ``model`` and no backlog entry (lost work)."""
        return self.conn.execute(
            "SELECT count(*) FROM search_docs d WHERE NOT EXISTS (SELECT 1 FROM search_vectors v "
            "WHERE v.doc_rowid = d.id AND v.model = ?) AND NOT EXISTS "
            "(SELECT 1 FROM embed_backlog b WHERE b.doc_rowid = d.id)", (model,)).fetchone()[0]

    def docs_by_rowid(self, rowids: list[int], filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Active, filter-passing search rows among ``rowids``."""
        if not rowids:
            return []
        where = [f"d.id IN ({','.join('?' * len(rowids))})", "d.active = 1"]
        where, params = _doc_filters(where, list(rowids), filters)
        sql = ("SELECT d.id, d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts "
               f"FROM search_docs d WHERE {' AND '.join(where)}")
        cols = ("rowid", "doc_id", "kind", "scope", "key", "session_id", "project", "ts")
        return [dict(zip(cols, r)) for r in self.conn.execute(sql, params)]

    def docs_lookup(self, doc_ids: list[str], filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Search rows by record id (active or not) that pass ``filters``."""
        if not doc_ids:
            return []
        where, params = _doc_filters([f"d.doc_id IN ({','.join('?' * len(doc_ids))})"], list(doc_ids), filters)
        sql = ("SELECT d.id, d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts "
               f"FROM search_docs d WHERE {' AND '.join(where)}")
        cols = ("rowid", "doc_id", "kind", "scope", "key", "session_id", "project", "ts")
        return [dict(zip(cols, r)) for r in self.conn.execute(sql, params)]

    def docs_around(self, ts: str, *, rowid: int, before: int, after: int,
                    filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Active rows at or before the anchor (ts, rowid) (the newest ``before``+1) and after it
        (the oldest ``after``), in (ts, rowid) order."""
        cols = ("rowid", "doc_id", "kind", "scope", "key", "session_id", "project", "ts")
        select = "SELECT d.id, d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts FROM search_docs d"
        where, params = _doc_filters(["d.active = 1", "(d.ts < ? OR (d.ts = ? AND d.id <= ?))"],
                                     [ts, ts, rowid], filters)
        older = self.conn.execute(f"{select} WHERE {' AND '.join(where)} ORDER BY d.ts DESC, d.id DESC LIMIT ?",
                                  (*params, before + 1)).fetchall()
        where, params = _doc_filters(["d.active = 1", "(d.ts > ? OR (d.ts = ? AND d.id > ?))"],
                                     [ts, ts, rowid], filters)
        newer = self.conn.execute(f"{select} WHERE {' AND '.join(where)} ORDER BY d.ts, d.id LIMIT ?",
                                  (*params, after)).fetchall()
        return [dict(zip(cols, r)) for r in list(reversed(older)) + newer]

    # ---- audit
    def audit_insert(self, *, ts: str, agent_id: str | None, operation: str, message: str,
                     targets: list[str], details: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO audit_log (ts, agent_id, operation, message, targets, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ts, agent_id, operation, message, dumps(targets), dumps(details)),
        )

    def audit_page(self, *, operation: str | None, limit: int, offset: int,
                   agent_id: str | None = None) -> tuple[list[dict], int]:
        conditions = [(c, v) for c, v in (("operation = ?", operation), ("agent_id = ?", agent_id))
                      if v is not None]
        where = ("WHERE " + " AND ".join(c for c, _ in conditions)) if conditions else ""
        params = [v for _, v in conditions]
        total = self.conn.execute(f"SELECT count(*) FROM audit_log {where}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT id, ts, agent_id, operation, message, targets, details FROM audit_log {where} "
            "ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        entries = [
            {"id": r[0], "timestamp": r[1], "agentId": r[2], "operation": r[3], "message": r[4],
             "targetIds": loads(r[5]), "details": loads(r[6])}
            for r in rows
        ]
        return entries, total

    # ---- maintenance
    def wipe_records(self) -> None:
        """Remove every record and index row (import with strategy=replace). Audit is kept."""
        for table in ("kv_store", "search_docs", "search_fts", "capture_events"):
            self.conn.execute(f"DELETE FROM {table}")
        self._touch("*", "*")

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    # ---- working memory (wm_* tables; see working.py). ``scope`` is (project, agent, session)
    # and ``now`` epoch seconds: a key whose expires_at <= now is gone for every read even
    # before the sweep deletes its row. Bulk and destructive statements are audited (_touch);
    # single-key writes are not (a scratch area would drown the audit log).
    def wm_kv_get(self, scope: WMScope, key: str, now: float) -> tuple[str, float | None] | None:
        row = self.conn.execute(
            f"SELECT value, expires_at FROM wm_kv WHERE {_WM} AND key = ? "
            "AND (expires_at IS NULL OR expires_at > ?)", (*scope, key, now)).fetchone()
        return (row[0], row[1]) if row else None

    def wm_kv_items(self, scope: WMScope, now: float, *, pattern: str | None = None,
                    values: bool = True) -> list[tuple[str, str | None, float | None]]:
        """Live (key, value JSON or None, expires_at) sorted by key; ``pattern`` is a GLOB."""
        sql = (f"SELECT key, {'value' if values else 'NULL'}, expires_at FROM wm_kv WHERE {_WM} "
               "AND (expires_at IS NULL OR expires_at > ?)")
        args: list[Any] = [*scope, now]
        if pattern is not None:
            sql += " AND key GLOB ?"
            args.append(pattern)
        return [tuple(r) for r in self.conn.execute(sql + " ORDER BY key", args)]

    def wm_kv_count(self, scope: WMScope, now: float) -> int:
        return self.conn.execute(
            f"SELECT count(*) FROM wm_kv WHERE {_WM} AND (expires_at IS NULL OR expires_at > ?)",
            (*scope, now)).fetchone()[0]

    def wm_kv_put_many(self, scope: WMScope, rows: Iterable[tuple[str, str, float | None]],
                       stamp: str) -> None:
        self.conn.executemany(
            "INSERT INTO wm_kv (project, agent, session, key, value, expires_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, agent, session, key) DO UPDATE "
            "SET value = excluded.value, expires_at = excluded.expires_at, "
            "updated_at = excluded.updated_at",
            [(*scope, key, value, expires, stamp) for key, value, expires in rows])

    def wm_kv_delete(self, scope: WMScope, key: str, now: float) -> bool:
        """Delete one key; True when a live (unexpired) key was removed."""
        rows = self.conn.execute(f"DELETE FROM wm_kv WHERE {_WM} AND key = ? RETURNING expires_at",
                                 (*scope, key)).fetchall()
        return bool(rows) and (rows[0][0] is None or rows[0][0] > now)

    def wm_kv_delete_glob(self, scope: WMScope, pattern: str, now: float) -> list[str]:
        """Delete every key matching ``pattern`` (GLOB); returns the live keys removed."""
        live = [key for key, _v, _e in self.wm_kv_items(scope, now, pattern=pattern, values=False)]
        if self.conn.execute(f"DELETE FROM wm_kv WHERE {_WM} AND key GLOB ?",
                             (*scope, pattern)).rowcount:
            self._touch(_wm_target(scope), f"keys:{pattern}")
        return live

    def wm_kv_clear(self, scope: WMScope, now: float) -> int:
        """Delete every user key of the scope; returns how many were live."""
        live = self.wm_kv_count(scope, now)
        if self.conn.execute(f"DELETE FROM wm_kv WHERE {_WM}", scope).rowcount:
            self._touch(_wm_target(scope), "keys")
        return live

    def wm_kv_sweep(self, now: float) -> int:
        return self.conn.execute("DELETE FROM wm_kv WHERE expires_at <= ?", (now,)).rowcount

    def wm_task_get(self, scope: WMScope) -> tuple[str, int] | None:
        row = self.conn.execute(f"SELECT task, version FROM wm_task WHERE {_WM}", scope).fetchone()
        return (row[0], row[1]) if row else None

    def wm_task_put(self, scope: WMScope, task: str, version: int, expected: int | None) -> bool:
        """Compare-and-set: insert when ``expected`` is None, else update only if the stored
        version still equals ``expected``. False when another writer got there first."""
        if expected is None:
            sql = ("INSERT INTO wm_task (project, agent, session, task, version) VALUES (?,?,?,?,?) "
                   "ON CONFLICT DO NOTHING")
            return self.conn.execute(sql, (*scope, task, version)).rowcount == 1
        return self.conn.execute(
            f"UPDATE wm_task SET task = ?, version = ? WHERE {_WM} AND version = ?",
            (task, version, *scope, expected)).rowcount == 1

    def wm_task_delete(self, scope: WMScope) -> bool:
        deleted = self.conn.execute(f"DELETE FROM wm_task WHERE {_WM}", scope).rowcount > 0
        if deleted:
            self._touch(_wm_target(scope), "task")
        return deleted

    def wm_scratch_append(self, scope: WMScope, content: str, created_at: str,
                          cap: int) -> tuple[int, int]:
        """Append one entry and drop the oldest beyond ``cap``; returns (entries, dropped)."""
        seq = self.conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM wm_scratchpad WHERE {_WM}",
                                scope).fetchone()[0]
        self.conn.execute("INSERT INTO wm_scratchpad (project, agent, session, seq, content, "
                          "created_at) VALUES (?, ?, ?, ?, ?, ?)", (*scope, seq, content, created_at))
        dropped = self.conn.execute(
            f"DELETE FROM wm_scratchpad WHERE {_WM} AND seq <= (SELECT seq FROM wm_scratchpad "
            f"WHERE {_WM} ORDER BY seq DESC LIMIT 1 OFFSET ?)", (*scope, *scope, cap)).rowcount
        return self.wm_scratch_count(scope), dropped

    def wm_scratch_list(self, scope: WMScope, limit: int | None = None) -> list[tuple[str, str]]:
        """(content, created_at) oldest first; ``limit`` keeps the newest entries."""
        rows = self.conn.execute(
            f"SELECT content, created_at FROM wm_scratchpad WHERE {_WM} ORDER BY seq DESC LIMIT ?",
            (*scope, -1 if limit is None else limit)).fetchall()
        return [(r[0], r[1]) for r in reversed(rows)]

    def wm_scratch_count(self, scope: WMScope) -> int:
        return self.conn.execute(f"SELECT count(*) FROM wm_scratchpad WHERE {_WM}", scope).fetchone()[0]

    def wm_scratch_clear(self, scope: WMScope) -> int:
        n = self.conn.execute(f"DELETE FROM wm_scratchpad WHERE {_WM}", scope).rowcount
        if n:
            self._touch(_wm_target(scope), "scratchpad")
        return n

    def wm_scratch_put_many(self, scope: WMScope, entries: list[tuple[str, str]]) -> None:
        """Insert entries (oldest first) into an empty scratchpad."""
        self.conn.executemany(
            "INSERT INTO wm_scratchpad (project, agent, session, seq, content, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(*scope, i, content, at) for i, (content, at) in enumerate(entries, start=1)])

    def wm_checkpoint_insert(self, scope: WMScope, checkpoint_id: str, meta: str, snapshot: str) -> int:
        seq = self.conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM wm_checkpoint WHERE {_WM}",
                                scope).fetchone()[0]
        self.conn.execute("INSERT INTO wm_checkpoint (project, agent, session, checkpoint_id, seq, "
                          "meta, snapshot) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (*scope, checkpoint_id, seq, meta, snapshot))
        return seq

    def wm_checkpoint_get(self, scope: WMScope, checkpoint_id: str) -> tuple[str, str] | None:
        row = self.conn.execute(f"SELECT meta, snapshot FROM wm_checkpoint WHERE {_WM} "
                                "AND checkpoint_id = ?", (*scope, checkpoint_id)).fetchone()
        return (row[0], row[1]) if row else None

    def wm_checkpoint_list(self, scope: WMScope) -> list[tuple[int, str]]:
        """(seq, meta JSON) in creation order."""
        return [(r[0], r[1]) for r in self.conn.execute(
            f"SELECT seq, meta FROM wm_checkpoint WHERE {_WM} ORDER BY seq", scope)]

    def wm_checkpoint_delete(self, scope: WMScope, checkpoint_id: str) -> bool:
        deleted = self.conn.execute(f"DELETE FROM wm_checkpoint WHERE {_WM} AND checkpoint_id = ?",
                                    (*scope, checkpoint_id)).rowcount > 0
        if deleted:
            self._touch(_wm_target(scope), f"checkpoint:{checkpoint_id}")
        return deleted

    def wm_checkpoint_prune(self, scope: WMScope, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` checkpoints; returns the deleted ids."""
        rows = self.conn.execute(
            f"DELETE FROM wm_checkpoint WHERE {_WM} AND seq <= (SELECT seq FROM wm_checkpoint "
            f"WHERE {_WM} ORDER BY seq DESC LIMIT 1 OFFSET ?) RETURNING checkpoint_id",
            (*scope, *scope, keep)).fetchall()
        for (checkpoint_id,) in rows:
            self._touch(_wm_target(scope), f"checkpoint:{checkpoint_id}")
        return [r[0] for r in rows]

    def wm_counts(self, scope: WMScope, now: float) -> dict[str, int]:
        one = "SELECT count(*) FROM {} WHERE " + _WM
        return {
            "userKeys": self.wm_kv_count(scope, now),
            "expiredKeys": self.conn.execute(one.format("wm_kv") + " AND expires_at <= ?",
                                             (*scope, now)).fetchone()[0],
            "scratchpadEntries": self.wm_scratch_count(scope),
            "checkpoints": self.conn.execute(one.format("wm_checkpoint"), scope).fetchone()[0],
            "task": self.conn.execute(one.format("wm_task"), scope).fetchone()[0],
        }

    def wm_session_scopes(self, session: str) -> list[tuple[str, str]]:
        """Every (project, agent) holding working memory for ``session``."""
        rows = self.conn.execute(
            "SELECT project, agent FROM wm_kv WHERE session = ? UNION "
            "SELECT project, agent FROM wm_task WHERE session = ? UNION "
            "SELECT project, agent FROM wm_scratchpad WHERE session = ? ORDER BY 1, 2",
            (session, session, session))
        return [(r[0], r[1]) for r in rows]

    # ---- viewer overviews (overview.py)
    def scope_counts(self) -> dict[str, int]:
        """Records per kv scope."""
        return {scope: n for scope, n in self.conn.execute("SELECT scope, count(*) FROM kv_store GROUP BY scope")}

    def audit_times(self, operation: str, *, limit: int) -> list[str]:
        """Timestamps of the newest ``limit`` audit rows of one operation, newest first."""
        rows = self.conn.execute("SELECT ts FROM audit_log WHERE operation = ? ORDER BY id DESC LIMIT ?",
                                 (operation, limit))
        return [r[0] for r in rows]

    def docs_total(self, *, filters: dict[str, Any]) -> int:
        """How many active index rows match ``filters`` (see ``fts_search``)."""
        where, params = _doc_filters(["d.active = 1"], [], filters)
        return self.conn.execute(f"SELECT count(*) FROM search_docs d WHERE {' AND '.join(where)}",
                                 params).fetchone()[0]

    def doc_concepts(self, *, limit: int, filters: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
        """(project, session_id, concepts text) of the newest ``limit`` active index rows that
        have concepts."""
        where, params = _doc_filters(["d.active = 1", "f.concepts != ''"], [], filters)
        rows = self.conn.execute(
            "SELECT d.project, d.session_id, f.concepts FROM search_docs d "
            f"JOIN search_fts f ON f.rowid = d.id WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?",
            (*params, limit))
        return [(r[0], r[1], r[2]) for r in rows]


    # ---- admin scans (the CLI: paged reads, index repair, counts)
    def iter_scope(self, scope: str, *, batch: int = 500) -> Iterator[tuple[str, Any]]:
        """Every (key, value) of a scope in key order, read ``batch`` rows at a time (keyset
        paging), so a big scope is never in memory at once and no cursor stays open between
        batches."""
        after: str | None = None
        while True:
            if after is None:
                rows = self.conn.execute(
                    "SELECT key, value FROM kv_store WHERE scope = ? ORDER BY key LIMIT ?", (scope, batch)
                ).fetchall()
            else:
                rows = self.conn.execute(
                    "SELECT key, value FROM kv_store WHERE scope = ? AND key > ? ORDER BY key LIMIT ?",
                    (scope, after, batch),
                ).fetchall()
            for key, value in rows:
                yield key, loads(value)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def scope_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT scope, count(*) FROM kv_store GROUP BY scope ORDER BY scope")
        return {scope: n for scope, n in rows}

    def table_counts(self) -> dict[str, int]:
        """Rows per table of the schema (FTS5 shadow tables left out)."""
        names = [r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE 'search_fts_%' ORDER BY name")]
        return {name: self.conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}

    def index_refs(self, *, after_id: int, limit: int) -> list[tuple[int, str, str, str]]:
        """(rowid, doc_id, scope, key) of search_docs rows after ``after_id``, in rowid order."""
        return self.conn.execute(
            "SELECT id, doc_id, scope, key FROM search_docs WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()

    def index_prune_orphans(self) -> int:
        """Delete FTS rows no search_docs row points at; returns how many."""
        return self.conn.execute(
            "DELETE FROM search_fts WHERE rowid NOT IN (SELECT id FROM search_docs)").rowcount

    def quick_check(self) -> list[str]:
        return [r[0] for r in self.conn.execute("PRAGMA quick_check(20)")]

    # ---- memory model: relations, retention, consistency (lessons/slots/actions use get/list)
    def relations_touching(self, ids: Iterable[str]) -> list[Any]:
        """Relations whose sourceId or targetId is one of ``ids`` (expression-indexed)."""
        found: dict[str, Any] = {}
        for chunk, marks in in_chunks(ids, 400):
            rows = self.conn.execute(
                "SELECT key, value FROM kv_store WHERE scope = 'mem:relations' AND "
                f"(json_extract(value, '$.sourceId') IN ({marks}) "
                f"OR json_extract(value, '$.targetId') IN ({marks}))", (*chunk, *chunk))
            found.update((k, loads(v)) for k, v in rows)
        return list(found.values())

    def memories_where(self, *, forget_before: str | None = None, superseded_before: str | None = None,
                       agent_id: str | None = None, limit: int) -> list[Any]:
        """Memories past their forgetAfter, or non-latest ones last updated before a cutoff."""
        wanted = [(clause, value) for clause, value in (
            ("json_extract(value, '$.forgetAfter') < ?", forget_before),
            ("json_extract(value, '$.isLatest') = 0 AND json_extract(value, '$.updatedAt') < ?", superseded_before),
            ("json_extract(value, '$.agentId') = ?", agent_id)) if value is not None]
        where = " AND ".join(["scope = 'mem:memories'", *(clause for clause, _ in wanted)])
        rows = self.conn.execute(f"SELECT value FROM kv_store WHERE {where} LIMIT ?",
                                 (*(value for _, value in wanted), limit))
        return [loads(r[0]) for r in rows]

    def observations_where(self, *, before: str | None = None, max_importance: float | None = None,
                           project: str | None = None, agent_id: str | None = None,
                           lowest_value_first: bool = False, limit: int) -> list[Any]:
        """Observations found through the index (kind, ts) filtered on their stored fields."""
        where, params = ["d.kind = 'observation'"], []
        for clause, value in (("d.ts < ?", before), ("d.project = ?", project),
                              ("d.agent_id = ?", agent_id),
                              ("json_extract(k.value, '$.importance') <= ?", max_importance)):
            if value is not None:
                where.append(clause)
                params.append(value)
        order = ("json_extract(k.value, '$.importance'), d.ts" if lowest_value_first else "d.ts")
        rows = self.conn.execute(
            "SELECT k.value FROM search_docs d JOIN kv_store k ON k.scope = d.scope AND k.key = d.key "
            f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?", (*params, limit))
        return [loads(r[0]) for r in rows]

    def observation_counts(self, by: str, agent_id: str | None = None) -> dict[str | None, int]:
        """Indexed observation counts grouped by ``project`` or ``session_id``."""
        if by not in ("project", "session_id"):
            raise ValueError(f"unsupported grouping {by!r}")
        where, params = "kind = 'observation'", []
        if agent_id is not None:
            where += " AND agent_id = ?"
            params.append(agent_id)
        rows = self.conn.execute(f"SELECT {by}, count(*) FROM search_docs WHERE {where} GROUP BY {by}", params)
        return {key: n for key, n in rows}

    def stored_observation_counts(self) -> dict[str, int]:
        """Observations actually stored per session (``mem:obs:{id}`` row counts)."""
        rows = self.conn.execute(
            "SELECT substr(scope, 9), count(*) FROM kv_store WHERE scope >= 'mem:obs:' "
            "AND scope < 'mem:obs;' GROUP BY scope")
        return {sid: n for sid, n in rows}

    def unindexed_records(self, scopes: Iterable[str], *, limit: int) -> list[tuple[str, str, Any]]:
        """Records of indexed scopes (every ``mem:obs:*`` plus ``scopes``) with no search row."""
        scopes = list(scopes) or [""]
        rows = self.conn.execute(
            "SELECT k.scope, k.key, k.value FROM kv_store k LEFT JOIN search_docs d "
            "ON d.scope = k.scope AND d.key = k.key WHERE d.id IS NULL AND "
            f"((k.scope >= 'mem:obs:' AND k.scope < 'mem:obs;') OR k.scope IN ({','.join('?' * len(scopes))})) "
            "LIMIT ?", (*scopes, limit))
        return [(s, k, loads(v)) for s, k, v in rows]

    def orphan_index_rows(self, *, limit: int) -> list[str]:
        """doc_ids of search rows whose record no longer exists."""
        rows = self.conn.execute(
            "SELECT d.doc_id FROM search_docs d LEFT JOIN kv_store k ON k.scope = d.scope AND k.key = d.key "
            "WHERE k.key IS NULL LIMIT ?", (limit,))
        return [r[0] for r in rows]

    def docs_without_text(self, *, limit: int) -> list[tuple[str, str]]:
        """(scope, key) of search rows whose FTS text row is missing."""
        rows = self.conn.execute(
            "SELECT d.scope, d.key FROM search_docs d WHERE NOT EXISTS "
            "(SELECT 1 FROM search_fts f WHERE f.rowid = d.id) LIMIT ?", (limit,))
        return [(s, k) for s, k in rows]

    def text_without_docs(self, *, limit: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT rowid FROM search_fts WHERE rowid NOT IN (SELECT id FROM search_docs) LIMIT ?", (limit,))
        return [r[0] for r in rows]

    def delete_text_rows(self, rowids: Iterable[int]) -> int:
        removed = 0
        for rowid in rowids:
            removed += self.conn.execute("DELETE FROM search_fts WHERE rowid = ?", (rowid,)).rowcount
        if removed:
            self.record_change(f"search_fts/{removed} row(s)")
        return removed


    # ---- the LLM job queue (llm.py)
    def llm_job_put(self, kind: str, ref: str, args: dict[str, Any], now: str, not_before: float = 0.0) -> None:
        """Queue (or re-queue from scratch) one job; ``not_before`` is an epoch time."""
        self.conn.execute(
            "INSERT INTO llm_jobs (kind, ref, args, queued_at, next_try) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, ref) DO UPDATE SET args = excluded.args, queued_at = excluded.queued_at, "
            "attempts = 0, next_try = excluded.next_try, last_error = NULL",
            (kind, ref, dumps(args), now, not_before))

    def llm_jobs_claim(self, now_epoch: float, limit: int, lease_until: float) -> list[dict[str, Any]]:
        """Take up to ``limit`` due jobs, oldest first, and hide them from other workers until
        ``lease_until`` (a worker that dies mid-job leaves it to be retried then)."""
        rows = self.conn.execute(
            "SELECT kind, ref, args, queued_at, attempts FROM llm_jobs WHERE next_try <= ? "
            "ORDER BY next_try, queued_at LIMIT ?", (now_epoch, limit)).fetchall()
        for kind, ref, *_rest in rows:
            self.conn.execute("UPDATE llm_jobs SET next_try = ? WHERE kind = ? AND ref = ?", (lease_until, kind, ref))
        return [{"kind": k, "ref": r, "args": loads(a), "queuedAt": q, "attempts": n} for k, r, a, q, n in rows]

    def llm_job_done(self, kind: str, ref: str, queued_at: str) -> None:
        """Drop a finished job, unless it was queued again while it ran."""
        self.conn.execute("DELETE FROM llm_jobs WHERE kind = ? AND ref = ? AND queued_at = ?",
                          (kind, ref, queued_at))

    def llm_job_retry(self, kind: str, ref: str, error: str, next_try: float) -> None:
        self.conn.execute("UPDATE llm_jobs SET attempts = attempts + 1, next_try = ?, last_error = ? "
                          "WHERE kind = ? AND ref = ?", (next_try, error[:500], kind, ref))

    def llm_job_stats(self) -> dict[str, Any]:
        by_kind = {k: n for k, n in self.conn.execute("SELECT kind, count(*) FROM llm_jobs GROUP BY kind")}
        row = self.conn.execute(
            "SELECT coalesce(sum(attempts > 0), 0), (SELECT last_error FROM llm_jobs WHERE last_error "
            "IS NOT NULL ORDER BY next_try DESC LIMIT 1) FROM llm_jobs").fetchone()
        return {"pending": sum(by_kind.values()), "byKind": by_kind, "waiting": row[0], "lastError": row[1]}


# -- working-memory helpers -----------------------------------------------------------------------

WMScope = tuple[str, str, str]
_WM = "project = ? AND agent = ? AND session = ?"
_glob_local = threading.local()


def _wm_target(scope: WMScope) -> str:
    return "working/" + "/".join(scope)


def glob_filter(names: Iterable[str], pattern: str) -> list[str]:
    """The names matching ``pattern`` under SQLite GLOB rules, sorted.

    The Redis working-memory backend filters with this so both backends share one glob
    dialect exactly (SQLite's own matcher, not a re-implementation of it).
    """
    conn = getattr(_glob_local, "conn", None)
    if conn is None:
        conn = _glob_local.conn = sqlite3.connect(":memory:", check_same_thread=False)
    rows = conn.execute("SELECT value FROM json_each(?) WHERE value GLOB ? ORDER BY value",
                        (dumps(list(names)), pattern))
    return [r[0] for r in rows]


def _doc_filters(where: list[str], params: list[Any], filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    def one_of(column: str, values: list[Any]) -> None:
        where.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(values)

    def compare(clause: str, value: Any) -> None:
        where.append(clause)
        params.append(value)

    if filters.get("kinds"):
        one_of("d.kind", filters["kinds"])
    if filters.get("types"):
        one_of("d.type", filters["types"])
    if filters.get("project") is not None:
        # Memories and lessons saved without a project are global: visible from every project.
        compare("(d.project = ? OR (d.project IS NULL AND d.kind != 'observation'))", filters["project"])
    if filters.get("agent_id") is not None:
        compare("d.agent_id = ?", filters["agent_id"])
    if filters.get("session_ids") is not None:
        one_of("d.session_id", list(filters["session_ids"]) or [""])
    if filters.get("exclude_session") is not None:
        compare("(d.session_id IS NULL OR d.session_id != ?)", filters["exclude_session"])
    if filters.get("months"):
        one_of("CAST(substr(d.ts, 6, 2) AS INTEGER)", filters["months"])
    if filters.get("since") is not None:
        compare("d.ts >= ?", filters["since"])
    if filters.get("until") is not None:
        compare("d.ts <= ?", filters["until"])
    return where, params


# -- the database: connections, lock, transactions --------------------------------------------


class Database:
    """Owns the SQLite file.

    :param path: database file; parent directories are created.
    :param now: callable returning the current ISO-8601 timestamp (injectable for tests).
    :raise SchemaTooNew: the file was written by a newer version of this server.
    """

    def __init__(self, path: Path | str, *, now: Callable[[], str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._now = now
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self.last_write = 0.0  # monotonic time of the last commit that changed something
        self._writer = self._connect(readonly=False)
        self._migrate()

    # ---- connections
    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA cache_size = -4000")
        else:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -16000")
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _migrate(self) -> None:
        conn = self._writer
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"{self.path} has schema version {version} but this server knows {len(MIGRATIONS)}; "
                "upgrade agentmemory-python before opening it"
            )
        for number, (_name, fn) in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    fn(conn)
                    conn.execute(f"PRAGMA user_version = {number}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        return self._writer.execute("PRAGMA user_version").fetchone()[0]

    def reader(self) -> Store:
        """A read-only Store on this thread's own connection (inside a write transaction on
        this thread, the transaction's Store, so a handler sees its own writes)."""
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            return tx
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise AppError("database is closed", code="unavailable", status=503)
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return Store(conn, writable=False)

    @contextmanager
    def snapshot_reader(self) -> Iterator[Store]:
        """A read-only Store whose queries all see one state (a single read transaction), for
        long multi-query reads such as a streaming export. Writers are not blocked (WAL)."""
        store = self.reader()
        if store.writable:  # inside this thread's write transaction: already one state
            yield store
            return
        store.conn.execute("BEGIN")
        try:
            yield store
        finally:
            store.conn.execute("COMMIT")

    @contextmanager
    def transaction(self, operation: str, *, agent_id: str | None = None) -> Iterator[Store]:
        """One short write transaction. Nested calls on the same thread join the outer one.

        On commit, one audit row records ``operation``, the agent and the touched keys.
        """
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        with self._lock:
            if self._closed:
                raise AppError("database is closed", code="unavailable", status=503)
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            store = Store(conn, writable=True)
            self._local.tx = store
            try:
                yield store
                if store.changed:
                    self._write_audit(store, operation, agent_id)
                conn.execute("COMMIT")
                self.last_write = time.monotonic()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._local.tx = None
        for fn in store._after_commit:
            fn()

    def _write_audit(self, store: Store, operation: str, agent_id: str | None) -> None:
        targets = list(dict.fromkeys(store.changed))
        message = store.audit_message or f"{operation}: {len(targets)} record(s) changed"
        details = dict(store.audit_details)
        if len(targets) > 50:
            details["targetCount"] = len(targets)
            targets = targets[:50]
        store.audit_insert(ts=self._now(), agent_id=agent_id, operation=operation,
                           message=message, targets=targets, details=details)

    # ---- file facts and lifecycle
    def file_sizes(self) -> dict[str, int]:
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            sizes["db" if not suffix else suffix[1:]] = p.stat().st_size if p.exists() else 0
        return sizes

    def checkpoint(self) -> None:
        with self._lock:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                for conn in self._readers:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
                self._readers.clear()
            try:
                self._writer.execute("PRAGMA optimize")
                self._writer.close()
            except sqlite3.Error:
                pass
