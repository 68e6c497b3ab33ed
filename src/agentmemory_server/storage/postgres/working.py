"""Working memory on PostgreSQL (``wm_*`` tables; see working/). Same contract as the SQLite
store: ``scope`` is (project, agent, session) and ``now`` epoch seconds; an expired key is gone
for every read before the sweep deletes it. Glob patterns use SQLite's GLOB rules exactly
(``storage.sqlite.working.glob_filter``), as the Redis backend does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agentmemory_server.storage.interfaces import WMScope
from agentmemory_server.storage.postgres.common import Unit
from agentmemory_server.storage.sqlite.working import HELD_SCOPES, glob_filter

_WM = "project = %s AND agent = %s AND session = %s"
_LIVE = "(expires_at IS NULL OR expires_at > %s)"


def _wm_target(scope: WMScope) -> str:
    return "working/" + "/".join(scope)


class PgWorkingStore:
    def __init__(self, unit: Unit):
        self.unit = unit
        self.conn = unit.conn

    def kv_get(self, scope: WMScope, key: str, now: float) -> tuple[str, float | None] | None:
        row = self.conn.execute(
            f"SELECT value, expires_at FROM wm_kv WHERE {_WM} AND key = %s AND {_LIVE}", (*scope, key, now)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def kv_items(
        self, scope: WMScope, now: float, *, pattern: str | None = None, values: bool = True
    ) -> list[tuple[str, str | None, float | None]]:
        rows = self.conn.execute(
            f"SELECT key, {'value' if values else 'NULL'}, expires_at FROM wm_kv WHERE {_WM} AND {_LIVE} ORDER BY key",
            (*scope, now),
        ).fetchall()
        if pattern is not None:
            keep = set(glob_filter([r[0] for r in rows], pattern))
            rows = [r for r in rows if r[0] in keep]
        return [(r[0], r[1], r[2]) for r in rows]

    def kv_count(self, scope: WMScope, now: float) -> int:
        return int(
            self.conn.execute(f"SELECT count(*) FROM wm_kv WHERE {_WM} AND {_LIVE}", (*scope, now)).fetchone()[0]
        )

    def kv_put_many(self, scope: WMScope, rows: Iterable[tuple[str, str, float | None]], stamp: str) -> None:
        for key, value, expires in rows:
            self.conn.execute(
                "INSERT INTO wm_kv (project, agent, session, key, value, expires_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (project, agent, session, key) DO UPDATE "
                "SET value = excluded.value, expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                (*scope, key, value, expires, stamp),
            )

    def kv_delete(self, scope: WMScope, key: str, now: float) -> bool:
        rows = self.conn.execute(
            f"DELETE FROM wm_kv WHERE {_WM} AND key = %s RETURNING expires_at", (*scope, key)
        ).fetchall()
        return bool(rows) and (rows[0][0] is None or rows[0][0] > now)

    def kv_delete_glob(self, scope: WMScope, pattern: str, now: float) -> list[str]:
        live = [key for key, _v, _e in self.kv_items(scope, now, pattern=pattern, values=False)]
        every = [r[0] for r in self.conn.execute(f"SELECT key FROM wm_kv WHERE {_WM}", scope)]
        matching = glob_filter(every, pattern)
        if (
            matching
            and self.conn.execute(f"DELETE FROM wm_kv WHERE {_WM} AND key = ANY(%s)", (*scope, matching)).rowcount
        ):
            self.unit.touch(_wm_target(scope), f"keys:{pattern}")
        return live

    def kv_clear(self, scope: WMScope, now: float) -> int:
        live = self.kv_count(scope, now)
        if self.conn.execute(f"DELETE FROM wm_kv WHERE {_WM}", scope).rowcount:
            self.unit.touch(_wm_target(scope), "keys")
        return live

    def kv_sweep(self, now: float) -> int:
        return self.conn.execute("DELETE FROM wm_kv WHERE expires_at <= %s", (now,)).rowcount

    def task_get(self, scope: WMScope) -> tuple[str, int] | None:
        row = self.conn.execute(f"SELECT task, version FROM wm_task WHERE {_WM}", scope).fetchone()
        return (row[0], row[1]) if row else None

    def task_put(self, scope: WMScope, task: str, version: int, expected: int | None) -> bool:
        if expected is None:
            sql = (
                "INSERT INTO wm_task (project, agent, session, task, version) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING"
            )
            return self.conn.execute(sql, (*scope, task, version)).rowcount == 1
        return (
            self.conn.execute(
                f"UPDATE wm_task SET task = %s, version = %s WHERE {_WM} AND version = %s",
                (task, version, *scope, expected),
            ).rowcount
            == 1
        )

    def task_delete(self, scope: WMScope) -> bool:
        deleted = self.conn.execute(f"DELETE FROM wm_task WHERE {_WM}", scope).rowcount > 0
        if deleted:
            self.unit.touch(_wm_target(scope), "task")
        return deleted

    def scratch_append(self, scope: WMScope, content: str, created_at: str, cap: int) -> tuple[int, int]:
        seq = self.conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM wm_scratchpad WHERE {_WM}", scope).fetchone()[0]
        self.conn.execute(
            "INSERT INTO wm_scratchpad (project, agent, session, seq, content, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (*scope, seq, content, created_at),
        )
        dropped = self.conn.execute(
            f"DELETE FROM wm_scratchpad WHERE {_WM} AND seq <= (SELECT seq FROM wm_scratchpad "
            f"WHERE {_WM} ORDER BY seq DESC LIMIT 1 OFFSET %s)",
            (*scope, *scope, cap),
        ).rowcount
        return self.scratch_count(scope), dropped

    def scratch_list(self, scope: WMScope, limit: int | None = None) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            f"SELECT content, created_at FROM wm_scratchpad WHERE {_WM} ORDER BY seq DESC LIMIT %s", (*scope, limit)
        ).fetchall()
        return [(r[0], r[1]) for r in reversed(rows)]

    def scratch_count(self, scope: WMScope) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM wm_scratchpad WHERE {_WM}", scope).fetchone()[0])

    def scratch_clear(self, scope: WMScope) -> int:
        n = self.conn.execute(f"DELETE FROM wm_scratchpad WHERE {_WM}", scope).rowcount
        if n:
            self.unit.touch(_wm_target(scope), "scratchpad")
        return n

    def scratch_put_many(self, scope: WMScope, entries: list[tuple[str, str]]) -> None:
        for i, (content, at) in enumerate(entries, start=1):
            self.conn.execute(
                "INSERT INTO wm_scratchpad (project, agent, session, seq, content, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (*scope, i, content, at),
            )

    def checkpoint_insert(self, scope: WMScope, checkpoint_id: str, meta: str, snapshot: str) -> int:
        seq = self.conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM wm_checkpoint WHERE {_WM}", scope).fetchone()[0]
        self.conn.execute(
            "INSERT INTO wm_checkpoint (project, agent, session, checkpoint_id, seq, meta, snapshot) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (*scope, checkpoint_id, seq, meta, snapshot),
        )
        return int(seq)

    def checkpoint_get(self, scope: WMScope, checkpoint_id: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            f"SELECT meta, snapshot FROM wm_checkpoint WHERE {_WM} AND checkpoint_id = %s", (*scope, checkpoint_id)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def checkpoint_list(self, scope: WMScope) -> list[tuple[int, str]]:
        rows = self.conn.execute(f"SELECT seq, meta FROM wm_checkpoint WHERE {_WM} ORDER BY seq", scope)
        return [(r[0], r[1]) for r in rows]

    def checkpoint_delete(self, scope: WMScope, checkpoint_id: str) -> bool:
        deleted = (
            self.conn.execute(
                f"DELETE FROM wm_checkpoint WHERE {_WM} AND checkpoint_id = %s", (*scope, checkpoint_id)
            ).rowcount
            > 0
        )
        if deleted:
            self.unit.touch(_wm_target(scope), f"checkpoint:{checkpoint_id}")
        return deleted

    def checkpoint_prune(self, scope: WMScope, keep: int) -> list[str]:
        rows = self.conn.execute(
            f"DELETE FROM wm_checkpoint WHERE {_WM} AND seq <= (SELECT seq FROM wm_checkpoint "
            f"WHERE {_WM} ORDER BY seq DESC LIMIT 1 OFFSET %s) RETURNING checkpoint_id, seq",
            (*scope, *scope, keep),
        ).fetchall()
        rows.sort(key=lambda r: r[1])
        for checkpoint_id, _seq in rows:
            self.unit.touch(_wm_target(scope), f"checkpoint:{checkpoint_id}")
        return [r[0] for r in rows]

    def counts(self, scope: WMScope, now: float) -> dict[str, int]:
        one = "SELECT count(*) FROM {} WHERE " + _WM
        count: Any = lambda sql, params: int(self.conn.execute(sql, params).fetchone()[0])  # noqa: E731
        return {
            "userKeys": self.kv_count(scope, now),
            "expiredKeys": count(one.format("wm_kv") + " AND expires_at <= %s", (*scope, now)),
            "scratchpadEntries": self.scratch_count(scope),
            "checkpoints": count(one.format("wm_checkpoint"), scope),
            "task": count(one.format("wm_task"), scope),
        }

    def session_scopes(self, session: str) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            "SELECT project, agent FROM wm_kv WHERE session = %s UNION "
            "SELECT project, agent FROM wm_task WHERE session = %s UNION "
            "SELECT project, agent FROM wm_scratchpad WHERE session = %s ORDER BY 1, 2",
            (session, session, session),
        )
        return [(r[0], r[1]) for r in rows]

    def held_scopes(self) -> list[WMScope]:
        return [(r[0], r[1], r[2]) for r in self.conn.execute(HELD_SCOPES)]
