"""Records (``kv_store``) and the capture log (``capture_events``) on PostgreSQL."""

from __future__ import annotations

import builtins
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from agentmemory_server.storage.interfaces import RecordIndex, Where
from agentmemory_server.storage.postgres.common import Jsonb, SqlConn, Unit, dumps, field, loads, where_sql

TOP = "\U0010ffff"  # above every other character: "scope < prefix + TOP" bounds a prefix range
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(value: Any) -> Any:
    """The value with what ``jsonb`` refuses (NUL, lone surrogates) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value.replace("\x00", "\ufffd"))
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def encode(value: Any) -> tuple[Jsonb, str | None]:
    """(the jsonb to store, the exact JSON text when jsonb cannot hold it, else None)."""
    text = dumps(value)
    if "\\u0000" in text or "\\ud" in text:  # a NUL, or surrogates written as escapes
        return Jsonb(scrub(value), dumps=dumps), text
    return Jsonb(value, dumps=lambda _v: text), None


def encode_text(value: Any) -> tuple[str, str | None]:
    """``encode`` as JSON text (for arrays of rows)."""
    text = dumps(value)
    if "\\u0000" in text or "\\ud" in text:
        return dumps(scrub(value)), text
    return text, None


def decode(value: Any, raw: str | None) -> Any:
    return loads(raw) if raw is not None else value


INDEX_PREFIX = "kv_idx_"


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def index_name(spec: RecordIndex) -> str:
    """The name of a declared record index, derived from its declaration (as SQLite's)."""
    kind = "substr-prefix" if spec.prefix else "key"
    return INDEX_PREFIX + hashlib.sha256(f"{spec.scope}\x00{','.join(spec.fields)}\x00{kind}".encode()).hexdigest()[:12]


def index_statement(spec: RecordIndex) -> str:
    """CREATE INDEX for a declared record index, ending with the key so a listing ordered by the
    fields then the key reads it in order. It is partial: on its scope, or for a scope prefix on
    ``prefix_term``, a term every query of a scope under the prefix repeats word for word (so the
    planner matches it whatever the scope parameter, and queries of other scopes never pick it)."""
    columns = ", ".join([*(f"({field(name)})" for name in spec.fields), "key"])
    if spec.prefix:
        where = prefix_term(spec.scope)
        return f"CREATE INDEX IF NOT EXISTS {index_name(spec)} ON kv_store (scope, {columns}) WHERE {where}"
    return f"CREATE INDEX IF NOT EXISTS {index_name(spec)} ON kv_store ({columns}) WHERE scope = {_quoted(spec.scope)}"


def prefix_term(prefix: str) -> str:
    """The WHERE term of a prefix index; a query of a scope under ``prefix`` repeats it."""
    return f"substr(scope, 1, {len(prefix)}) = {_quoted(prefix)}"


def ensure_indexes(conn: SqlConn, specs: Iterable[RecordIndex]) -> None:
    """Create the declared record indexes that do not exist yet, and drop those no longer
    declared (a no-op when nothing changed)."""
    wanted = {index_name(spec): spec for spec in specs}
    existing = {
        row[0]
        for row in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'kv_store' AND indexname LIKE %s",
            (INDEX_PREFIX.replace("_", "\\_") + "%",),
        )
    }
    for name in existing - wanted.keys():
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    for name, spec in wanted.items():
        if name not in existing:
            conn.execute(index_statement(spec))


class PgRecords:
    def __init__(self, unit: Unit):
        self.unit = unit
        self.conn = unit.conn

    def get(self, scope: str, key: str) -> Any | None:
        row = self.conn.execute(
            "SELECT value, raw FROM kv_store WHERE scope = %s AND key = %s", (scope, key)
        ).fetchone()
        return decode(*row) if row else None

    def get_many(self, scope: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        rows = self.conn.execute(
            "SELECT key, value, raw FROM kv_store WHERE scope = %s AND key = ANY(%s)", (scope, wanted)
        )
        return {k: decode(v, r) for k, v, r in rows}

    def list(self, scope: str) -> builtins.list[tuple[str, Any]]:
        rows = self.conn.execute("SELECT key, value, raw FROM kv_store WHERE scope = %s ORDER BY key", (scope,))
        return [(k, decode(v, r)) for k, v, r in rows]

    def list_prefix(self, scope_prefix: str) -> builtins.list[tuple[str, str, Any]]:
        rows = self.conn.execute(
            "SELECT scope, key, value, raw FROM kv_store WHERE scope >= %s AND scope < %s ORDER BY scope, key",
            (scope_prefix, scope_prefix + TOP),
        )
        return [(s, k, decode(v, r)) for s, k, v, r in rows]

    def iter_scope(self, scope: str, *, batch: int = 500) -> Iterator[tuple[str, Any]]:
        after = ""
        while True:
            rows = self.conn.execute(
                "SELECT key, value, raw FROM kv_store WHERE scope = %s AND key > %s ORDER BY key LIMIT %s",
                (scope, after, batch),
            ).fetchall()
            for key, value, raw in rows:
                yield key, decode(value, raw)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def scopes(self) -> builtins.list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT scope FROM kv_store ORDER BY scope")]

    def count(self, scope: str) -> int:
        return self.conn.execute("SELECT count(*) FROM kv_store WHERE scope = %s", (scope,)).fetchone()[0]

    def scope_counts(self, prefix: str = "") -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT scope, count(*) FROM kv_store WHERE scope >= %s AND scope < %s GROUP BY scope ORDER BY scope",
            (prefix, prefix + TOP),
        )
        return {s: int(n) for s, n in rows}

    def set(self, scope: str, key: str, value: Any, *, now: str) -> None:
        stored, raw = encode(value)
        self.conn.execute(
            "INSERT INTO kv_store (scope, key, value, raw, updated_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, raw = excluded.raw, "
            "updated_at = excluded.updated_at",
            (scope, key, stored, raw, now),
        )
        self.unit.touch(scope, key)

    def set_many(self, items: Sequence[tuple[str, str, Any]], *, now: str) -> None:
        """One statement for the batch (one row per key: a statement may not change a row twice)."""
        latest = {(scope, key): value for scope, key, value in items}
        if not latest:
            return
        columns: list[list[Any]] = [[], [], [], []]
        for (scope, key), value in latest.items():
            stored, raw = encode_text(value)
            for column, item in zip(columns, (scope, key, stored, raw), strict=True):
                column.append(item)
            self.unit.touch(scope, key)
        self.conn.execute(
            "INSERT INTO kv_store (scope, key, value, raw, updated_at) SELECT s, k, v::jsonb, r, %s "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS i(s, k, v, r) "
            "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, raw = excluded.raw, "
            "updated_at = excluded.updated_at",
            (now, *columns),
        )

    def delete(self, scope: str, key: str) -> bool:
        deleted = self.conn.execute("DELETE FROM kv_store WHERE scope = %s AND key = %s", (scope, key)).rowcount > 0
        if deleted:
            self.unit.touch(scope, key)
        return deleted

    def delete_scope(self, scope: str) -> int:
        n = self.conn.execute("DELETE FROM kv_store WHERE scope = %s", (scope,)).rowcount
        if n:
            self.unit.touch(scope, "*")
        return n

    # ---- queries on record fields
    def _scope_terms(self, scope: str, prefix: bool) -> tuple[builtins.list[str], builtins.list[Any]]:
        if prefix:
            return ["scope >= %s", "scope < %s"], [scope, scope + TOP]
        if scope in self.unit.record_indexes:
            # A literal: a partial index (WHERE scope = '...') serves a generic plan only when the
            # query names the same constant.
            return [f"scope = {_quoted(scope)}"], []
        under = [prefix_term(p) for p in self.unit.prefix_indexes if scope.startswith(p)]
        return ["scope = %s", *under], [scope]

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
        # NULLS FIRST ascending and LAST descending: where SQLite puts a missing field.
        order = [f"{field(name)} {'DESC NULLS LAST' if desc else 'ASC NULLS FIRST'}" for name, desc in order_by]
        # Ties go by key in the direction of the last sort field (the order of a declared index).
        tie = "DESC" if order_by and order_by[-1][1] else "ASC"
        order += ["scope", f"key {tie}"] if prefix else [f"key {tie}"]
        sql = (
            f"SELECT value, raw FROM kv_store WHERE {' AND '.join(terms + more_terms)} "
            f"ORDER BY {', '.join(order)} LIMIT %s OFFSET %s"
        )
        rows = self.conn.execute(sql, (*params, *more_params, limit, offset))
        return [decode(v, r) for v, r in rows]

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
        """Keyset paging, newest ``by`` first (see ``Records.newest``)."""
        terms, params = self._scope_terms(scope, False)
        more_terms, more_params = where_sql(where)
        column = field(by)
        if before is not None:
            more_terms += [f"{column} <= %s::jsonb", f"({column} < %s::jsonb OR key < %s)"]
            more_params += [Jsonb(before[0]), Jsonb(before[0]), before[1]]
        sql = (
            f"SELECT key, value, raw FROM kv_store WHERE {' AND '.join(terms + more_terms)} "
            f"ORDER BY {column} DESC NULLS LAST, key DESC LIMIT %s OFFSET %s"
        )
        return [(k, decode(v, r)) for k, v, r in self.conn.execute(sql, (*params, *more_params, limit, offset))]

    def count_where(self, scope: str, where: Sequence[Where] = ()) -> int:
        scope_terms, scope_params = self._scope_terms(scope, False)
        terms, params = where_sql(where)
        sql = f"SELECT count(*) FROM kv_store WHERE {' AND '.join([*scope_terms, *terms])}"
        return self.conn.execute(sql, (*scope_params, *params)).fetchone()[0]

    def keys_where(self, scope: str, where: Sequence[Where]) -> builtins.list[str]:
        scope_terms, scope_params = self._scope_terms(scope, False)
        terms, params = where_sql(where)
        sql = f"SELECT key FROM kv_store WHERE {' AND '.join([*scope_terms, *terms])} ORDER BY key"
        return [r[0] for r in self.conn.execute(sql, (*scope_params, *params))]


class PgCaptureLog:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def get(self, event_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT event_id, session_id, obs_id, created_at, deleted FROM capture_events WHERE event_id = %s",
            (event_id,),
        ).fetchone()
        if not row:
            return None
        return {"eventId": row[0], "sessionId": row[1], "obsId": row[2], "createdAt": row[3], "deleted": bool(row[4])}

    def put(self, event_id: str, session_id: str, obs_id: str, now: str) -> None:
        self.conn.execute(
            "INSERT INTO capture_events (event_id, session_id, obs_id, created_at) VALUES (%s, %s, %s, %s)",
            (event_id, session_id, obs_id, now),
        )

    def put_many(self, events: Sequence[tuple[str, str, str]], now: str) -> None:
        if events:
            columns = [list(column) for column in zip(*events, strict=True)]
            self.conn.execute(
                "INSERT INTO capture_events (event_id, session_id, obs_id, created_at) "
                "SELECT e, s, o, %s FROM unnest(%s::text[], %s::text[], %s::text[]) AS i(e, s, o)",
                (now, *columns),
            )

    def known(self, event_ids: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(event_ids))
        if not wanted:
            return set()
        rows = self.conn.execute("SELECT event_id FROM capture_events WHERE event_id = ANY(%s::text[])", (wanted,))
        return {r[0] for r in rows}

    def mark_deleted(self, obs_ids: list[str]) -> None:
        # The event row stays so that a replay of a deleted event is still a duplicate.
        if obs_ids:
            self.conn.execute("UPDATE capture_events SET deleted = true WHERE obs_id = ANY(%s)", (list(obs_ids),))
