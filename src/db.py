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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from errors import AppError

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
        CREATE VIRTUAL TABLE search_fts USING fts5 (
            title, body, concepts, files,
            tokenize = 'porter unicode61 remove_diacritics 2'
        );
        """
    )


@migration("memory_model_indexes")
def _m002_memory_model(conn: sqlite3.Connection) -> None:
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

    def record_change(self, what: str) -> None:
        """Count a change made outside kv_store (index repairs) so the audit row is written."""
        self.changed.append(what)

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
            "INSERT INTO search_fts (rowid, title, body, concepts, files) VALUES (?, ?, ?, ?, ?)",
            (rowid, text.get("title", ""), text.get("body", ""), text.get("concepts", ""),
             text.get("files", "")),
        )
        return rowid

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
        sql = (
            "SELECT d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts, "
            f"-bm25(search_fts, {', '.join(str(float(w)) for w in weights)}) AS score "
            "FROM search_fts JOIN search_docs d ON d.id = search_fts.rowid "
            f"WHERE {' AND '.join(where)} ORDER BY score DESC, d.ts DESC LIMIT ?"
        )
        cols = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts", "score")
        return [dict(zip(cols, row)) for row in self.conn.execute(sql, (*params, limit))]

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


def _doc_filters(where: list[str], params: list[Any], filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    kinds = filters.get("kinds")
    if kinds:
        where.append(f"d.kind IN ({','.join('?' * len(kinds))})")
        params.extend(kinds)
    if filters.get("project") is not None:
        # Memories and lessons saved without a project are global: visible from every project.
        where.append("(d.project = ? OR (d.project IS NULL AND d.kind != 'observation'))")
        params.append(filters["project"])
    if filters.get("agent_id") is not None:
        where.append("d.agent_id = ?")
        params.append(filters["agent_id"])
    session_ids = filters.get("session_ids")
    if session_ids is not None:
        session_ids = list(session_ids) or [""]
        where.append(f"d.session_id IN ({','.join('?' * len(session_ids))})")
        params.extend(session_ids)
    if filters.get("exclude_session") is not None:
        where.append("(d.session_id IS NULL OR d.session_id != ?)")
        params.append(filters["exclude_session"])
    if filters.get("since") is not None:
        where.append("d.ts >= ?")
        params.append(filters["since"])
    if filters.get("until") is not None:
        where.append("d.ts <= ?")
        params.append(filters["until"])
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
