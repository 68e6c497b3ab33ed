"""Records (``kv_store``) and the capture log (``capture_events``) on SQLite."""

from __future__ import annotations

import builtins
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from agentmemory_server.storage.interfaces import RecordIndex, Where
from agentmemory_server.storage.sqlite.common import Unit, dumps, field, in_chunks, loads, where_sql


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


INDEX_PREFIX = "kv_idx_"

UPSERT = (
    "INSERT INTO kv_store (scope, key, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


def index_name(spec: RecordIndex) -> str:
    """The name of a declared record index, derived from its declaration (and layout version)."""
    kind = "substr-prefix" if spec.prefix else "key"
    return INDEX_PREFIX + hashlib.sha256(f"{spec.scope}\x00{','.join(spec.fields)}\x00{kind}".encode()).hexdigest()[:12]


def index_statement(spec: RecordIndex) -> str:
    """CREATE INDEX for a declared record index, ending with the key, so a listing ordered by the
    fields then the key reads the index in order and stops at its LIMIT. It is partial, so rows of
    other scopes cost nothing: on its scope, or for a scope prefix on ``prefix_term`` (SQLite
    cannot tell that ``scope = 'mem:obs:x'`` falls in a range, but it does match a term the query
    repeats word for word), which also keeps queries of other scopes from ever choosing it."""
    columns = ", ".join([*(field(name) for name in spec.fields), "key"])
    if spec.prefix:
        where = prefix_term(spec.scope)
        return f"CREATE INDEX IF NOT EXISTS {index_name(spec)} ON kv_store (scope, {columns}) WHERE {where}"
    return f"CREATE INDEX IF NOT EXISTS {index_name(spec)} ON kv_store ({columns}) WHERE scope = {_quoted(spec.scope)}"


def prefix_term(prefix: str) -> str:
    """The WHERE term of a prefix index; a query of a scope under ``prefix`` repeats it."""
    return f"substr(scope, 1, {len(prefix)}) = {_quoted(prefix)}"


def ensure_indexes(conn: sqlite3.Connection, specs: Iterable[RecordIndex]) -> None:
    """Create the declared record indexes that do not exist yet, and drop record indexes no
    longer declared (a no-op when nothing changed)."""
    wanted = {index_name(spec): spec for spec in specs}
    existing = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'kv\\_idx\\_%' ESCAPE '\\'"
        )
    }
    for name in existing - wanted.keys():
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    for name, spec in wanted.items():
        if name not in existing:
            conn.execute(index_statement(spec))


class SqliteRecords:
    def __init__(self, unit: Unit):
        self.unit = unit
        self.conn = unit.conn

    def get(self, scope: str, key: str) -> Any | None:
        row = self.conn.execute("SELECT value FROM kv_store WHERE scope = ? AND key = ?", (scope, key)).fetchone()
        return loads(row[0]) if row else None

    def get_many(self, scope: str, keys: Iterable[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for chunk, marks in in_chunks(keys):
            rows = self.conn.execute(
                f"SELECT key, value FROM kv_store WHERE scope = ? AND key IN ({marks})", (scope, *chunk)
            )
            found.update((k, loads(v)) for k, v in rows)
        return found

    def list(self, scope: str) -> builtins.list[tuple[str, Any]]:
        rows = self.conn.execute("SELECT key, value FROM kv_store WHERE scope = ? ORDER BY key", (scope,))
        return [(k, loads(v)) for k, v in rows]

    def list_prefix(self, scope_prefix: str) -> builtins.list[tuple[str, str, Any]]:
        """Every (scope, key, value) whose scope starts with ``scope_prefix``."""
        rows = self.conn.execute(
            "SELECT scope, key, value FROM kv_store WHERE scope >= ? AND scope < ? ORDER BY scope, key",
            (scope_prefix, scope_prefix + "\U0010ffff"),
        )
        return [(s, k, loads(v)) for s, k, v in rows]

    def iter_scope(self, scope: str, *, batch: int = 500) -> Iterator[tuple[str, Any]]:
        """Every (key, value) of a scope in key order, read ``batch`` rows at a time (keyset
        paging), so a big scope is never in memory at once and no cursor stays open between
        batches."""
        after = ""
        while True:
            rows = self.conn.execute(
                "SELECT key, value FROM kv_store WHERE scope = ? AND key > ? ORDER BY key LIMIT ?",
                (scope, after, batch),
            ).fetchall()
            for key, value in rows:
                yield key, loads(value)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def scopes(self) -> builtins.list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT scope FROM kv_store ORDER BY scope")]

    def count(self, scope: str) -> int:
        return self.conn.execute("SELECT count(*) FROM kv_store WHERE scope = ?", (scope,)).fetchone()[0]

    def scope_counts(self, prefix: str = "") -> dict[str, int]:
        """Records per scope (only scopes starting with ``prefix``), in scope order."""
        rows = self.conn.execute(
            "SELECT scope, count(*) FROM kv_store WHERE scope >= ? AND scope < ? GROUP BY scope ORDER BY scope",
            (prefix, prefix + "\U0010ffff"),
        )
        return dict(rows.fetchall())

    def set(self, scope: str, key: str, value: Any, *, now: str) -> None:
        self.conn.execute(UPSERT, (scope, key, dumps(value), now))
        self.unit.touch(scope, key)

    def set_many(self, items: Sequence[tuple[str, str, Any]], *, now: str) -> None:
        """One prepared statement stepped over every row, in order (a later row of the same key
        wins, as with ``set`` one at a time)."""
        self.conn.executemany(UPSERT, [(scope, key, dumps(value), now) for scope, key, value in items])
        for scope, key, _value in items:
            self.unit.touch(scope, key)

    def delete(self, scope: str, key: str) -> bool:
        deleted = self.conn.execute("DELETE FROM kv_store WHERE scope = ? AND key = ?", (scope, key)).rowcount > 0
        if deleted:
            self.unit.touch(scope, key)
        return deleted

    def delete_scope(self, scope: str) -> int:
        n = self.conn.execute("DELETE FROM kv_store WHERE scope = ?", (scope,)).rowcount
        if n:
            self.unit.touch(scope, "*")
        return n

    # ---- queries on record fields
    def _scope_terms(self, scope: str, prefix: bool = False) -> tuple[builtins.list[str], builtins.list[Any]]:
        if prefix:
            return ["scope >= ?", "scope < ?"], [scope, scope + "\U0010ffff"]
        if scope in self.unit.record_indexes:
            # A literal: SQLite uses a partial index (WHERE scope = '...') only when the query's
            # own WHERE names the same constant; a bound parameter would hide it.
            return [f"scope = {_quoted(scope)}"], []
        under = [prefix_term(p) for p in self.unit.prefix_indexes if scope.startswith(p)]
        return ["scope = ?", *under], [scope]

    def query(
        self,
        scope: str,
        where: Sequence[Where] = (),
        *,
        order_by: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
        prefix: bool = False,
    ) -> builtins.list[Any]:
        terms, params = self._scope_terms(scope, prefix)
        more_terms, more_params = where_sql(where)
        order = [f"{field(name)} {'DESC' if descending else 'ASC'}" for name, descending in order_by]
        # Ties go by key in the direction of the last sort field, the order of a declared index.
        tie = "DESC" if order_by and order_by[-1][1] else "ASC"
        order += ["scope", f"key {tie}"] if prefix else [f"key {tie}"]
        hint = "" if prefix else self._ordered_index(scope, where, order_by)
        sql = (
            f"SELECT value FROM kv_store{hint} WHERE {' AND '.join(terms + more_terms)} "
            f"ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
        )
        rows = self.conn.execute(sql, (*params, *more_params, -1 if limit is None else limit, offset))
        return [loads(r[0]) for r in rows]

    def newest(
        self,
        scope: str,
        where: Sequence[Where],
        *,
        by: str,
        before: tuple[Any, str] | None,
        limit: int,
        offset: int = 0,
    ) -> builtins.list[tuple[str, Any]]:
        terms, params = self._scope_terms(scope)
        more_terms, more_params = where_sql(where)
        column = field(by)
        if before is not None:
            # The first term is a range the record index serves; the second breaks ties by key.
            more_terms += [f"{column} <= ?", f"({column} < ? OR key < ?)"]
            more_params += [before[0], before[0], before[1]]
        hint = self._ordered_index(scope, where, [(by, True)])
        sql = (
            f"SELECT key, value FROM kv_store{hint} WHERE {' AND '.join(terms + more_terms)} "
            f"ORDER BY {column} DESC, key DESC LIMIT ? OFFSET ?"
        )
        return [(k, loads(v)) for k, v in self.conn.execute(sql, (*params, *more_params, limit, offset))]

    def _ordered_index(self, scope: str, where: Sequence[Where], order_by: Sequence[tuple[str, bool]]) -> str:
        """``INDEXED BY`` the declared index that reads this listing in order: its fields are
        equality-filtered fields followed by the sort fields (all sorted one way). Without the
        hint SQLite, lacking statistics, often prefers the primary key and sorts the scope."""
        sort = tuple(name for name, _descending in order_by)
        if not sort or len({descending for _name, descending in order_by}) > 1:
            return ""
        equal_fields = {w.field for w in where if w.op == "="}
        best: RecordIndex | None = None
        for spec in self._declared(scope):
            lead = spec.fields[: len(spec.fields) - len(sort)]
            fits = spec.fields[len(lead) :] == sort and set(lead) <= equal_fields
            if fits and (best is None or len(spec.fields) > len(best.fields)):
                best = spec
        return f" INDEXED BY {index_name(best)}" if best else ""

    def _declared(self, scope: str) -> builtins.list[RecordIndex]:
        """The declared indexes serving ``scope``: its own, and those of prefixes it starts with."""
        specs = [RecordIndex(scope, fields) for fields in self.unit.record_indexes.get(scope, ())]
        for prefix, fields_list in self.unit.prefix_indexes.items():
            if scope.startswith(prefix):
                specs += [RecordIndex(prefix, fields, prefix=True) for fields in fields_list]
        return specs

    def count_where(self, scope: str, where: Sequence[Where] = ()) -> int:
        scope_terms, scope_params = self._scope_terms(scope)
        terms, params = where_sql(where)
        sql = f"SELECT count(*) FROM kv_store WHERE {' AND '.join([*scope_terms, *terms])}"
        return self.conn.execute(sql, (*scope_params, *params)).fetchone()[0]

    def keys_where(self, scope: str, where: Sequence[Where]) -> builtins.list[str]:
        scope_terms, scope_params = self._scope_terms(scope)
        terms, params = where_sql(where)
        sql = f"SELECT key FROM kv_store WHERE {' AND '.join([*scope_terms, *terms])} ORDER BY key"
        return [r[0] for r in self.conn.execute(sql, (*scope_params, *params))]


class SqliteCaptureLog:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def get(self, event_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT event_id, session_id, obs_id, created_at, deleted FROM capture_events WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        if not row:
            return None
        return {"eventId": row[0], "sessionId": row[1], "obsId": row[2], "createdAt": row[3], "deleted": bool(row[4])}

    def put(self, event_id: str, session_id: str, obs_id: str, now: str) -> None:
        self.conn.execute(
            "INSERT INTO capture_events (event_id, session_id, obs_id, created_at) VALUES (?,?,?,?)",
            (event_id, session_id, obs_id, now),
        )

    def put_many(self, events: Sequence[tuple[str, str, str]], now: str) -> None:
        self.conn.executemany(
            "INSERT INTO capture_events (event_id, session_id, obs_id, created_at) VALUES (?,?,?,?)",
            [(*event, now) for event in events],
        )

    def known(self, event_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk, marks in in_chunks(list(dict.fromkeys(event_ids))):
            rows = self.conn.execute(f"SELECT event_id FROM capture_events WHERE event_id IN ({marks})", chunk)
            found.update(r[0] for r in rows)
        return found

    def mark_deleted(self, obs_ids: list[str]) -> None:
        # The event row stays so that a replay of a deleted event is still a duplicate.
        for chunk, marks in in_chunks(obs_ids):
            self.conn.execute(f"UPDATE capture_events SET deleted = 1 WHERE obs_id IN ({marks})", chunk)
