"""Working memory on SQLite (``wm_*`` tables; see working/).

``scope`` is (project, agent, session) and ``now`` epoch seconds: a key whose expires_at <= now
is gone for every read even before the sweep deletes its row. Bulk and destructive statements
are audited; single-key writes are not (a scratch area would drown the audit log).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

from agentmemory_server.storage.interfaces import WMScope
from agentmemory_server.storage.sqlite.common import Unit, dumps

_WM = "project = ? AND agent = ? AND session = ?"
# Every scope with a row in any working-memory table (no parameters: both stores run it as is).
HELD_SCOPES = (
    " UNION ".join(
        f"SELECT project, agent, session FROM {table}"
        for table in ("wm_kv", "wm_task", "wm_scratchpad", "wm_checkpoint")
    )
    + " ORDER BY 1, 2, 3"
)
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
    rows = conn.execute(
        "SELECT value FROM json_each(?) WHERE value GLOB ? ORDER BY value", (dumps(list(names)), pattern)
    )
    return [r[0] for r in rows]


class SqliteWorkingStore:
    def __init__(self, unit: Unit):
        self.unit = unit
        self.conn = unit.conn

    def kv_get(self, scope: WMScope, key: str, now: float) -> tuple[str, float | None] | None:
        row = self.conn.execute(
            f"SELECT value, expires_at FROM wm_kv WHERE {_WM} AND key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (*scope, key, now),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def kv_items(
        self, scope: WMScope, now: float, *, pattern: str | None = None, values: bool = True
    ) -> list[tuple[str, str | None, float | None]]:
        """Live (key, value JSON or None, expires_at) sorted by key; ``pattern`` is a GLOB."""
        sql = (
            f"SELECT key, {'value' if values else 'NULL'}, expires_at FROM wm_kv WHERE {_WM} "
            "AND (expires_at IS NULL OR expires_at > ?)"
        )
        args: list[Any] = [*scope, now]
        if pattern is not None:
            sql += " AND key GLOB ?"
            args.append(pattern)
        return [tuple(r) for r in self.conn.execute(sql + " ORDER BY key", args)]

    def kv_count(self, scope: WMScope, now: float) -> int:
        return self.conn.execute(
            f"SELECT count(*) FROM wm_kv WHERE {_WM} AND (expires_at IS NULL OR expires_at > ?)", (*scope, now)
        ).fetchone()[0]

    def kv_put_many(self, scope: WMScope, rows: Iterable[tuple[str, str, float | None]], stamp: str) -> None:
        self.conn.executemany(
            "INSERT INTO wm_kv (project, agent, session, key, value, expires_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, agent, session, key) DO UPDATE "
            "SET value = excluded.value, expires_at = excluded.expires_at, "
            "updated_at = excluded.updated_at",
            [(*scope, key, value, expires, stamp) for key, value, expires in rows],
        )

    def kv_delete(self, scope: WMScope, key: str, now: float) -> bool:
        """Delete one key; True when a live (unexpired) key was removed."""
        rows = self.conn.execute(
            f"DELETE FROM wm_kv WHERE {_WM} AND key = ? RETURNING expires_at", (*scope, key)
        ).fetchall()
        return bool(rows) and (rows[0][0] is None or rows[0][0] > now)

    def kv_delete_glob(self, scope: WMScope, pattern: str, now: float) -> list[str]:
        """Delete every key matching ``pattern`` (GLOB); returns the live keys removed."""
        live = [key for key, _v, _e in self.kv_items(scope, now, pattern=pattern, values=False)]
        if self.conn.execute(f"DELETE FROM wm_kv WHERE {_WM} AND key GLOB ?", (*scope, pattern)).rowcount:
            self.unit.touch(_wm_target(scope), f"keys:{pattern}")
        return live

    def kv_clear(self, scope: WMScope, now: float) -> int:
        """Delete every user key of the scope; returns how many were live."""
        live = self.kv_count(scope, now)
        if self.conn.execute(f"DELETE FROM wm_kv WHERE {_WM}", scope).rowcount:
            self.unit.touch(_wm_target(scope), "keys")
        return live

    def kv_sweep(self, now: float) -> int:
        return self.conn.execute("DELETE FROM wm_kv WHERE expires_at <= ?", (now,)).rowcount

    def task_get(self, scope: WMScope) -> tuple[str, int] | None:
        row = self.conn.execute(f"SELECT task, version FROM wm_task WHERE {_WM}", scope).fetchone()
        return (row[0], row[1]) if row else None

    def task_put(self, scope: WMScope, task: str, version: int, expected: int | None) -> bool:
        """Compare-and-set: insert when ``expected`` is None, else update only if the stored
        version still equals ``expected``. False when another writer got there first."""
        if expected is None:
            sql = (
                "INSERT INTO wm_task (project, agent, session, task, version) VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING"
            )
            return self.conn.execute(sql, (*scope, task, version)).rowcount == 1
        return (
            self.conn.execute(
                f"UPDATE wm_task SET task = ?, version = ? WHERE {_WM} AND version = ?",
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
        """Append one entry and drop the oldest beyond ``cap``; returns (entries, dropped)."""
        seq = self.conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM wm_scratchpad WHERE {_WM}", scope).fetchone()[0]
        self.conn.execute(
            "INSERT INTO wm_scratchpad (project, agent, session, seq, content, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (*scope, seq, content, created_at),
        )
        dropped = self.conn.execute(
            f"DELETE FROM wm_scratchpad WHERE {_WM} AND seq <= (SELECT seq FROM wm_scratchpad "
            f"WHERE {_WM} ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (*scope, *scope, cap),
        ).rowcount
        return self.scratch_count(scope), dropped

    def scratch_list(self, scope: WMScope, limit: int | None = None) -> list[tuple[str, str]]:
        """(content, created_at) oldest first; ``limit`` keeps the newest entries."""
        rows = self.conn.execute(
            f"SELECT content, created_at FROM wm_scratchpad WHERE {_WM} ORDER BY seq DESC LIMIT ?",
            (*scope, -1 if limit is None else limit),
        ).fetchall()
        return [(r[0], r[1]) for r in reversed(rows)]

    def scratch_count(self, scope: WMScope) -> int:
        return self.conn.execute(f"SELECT count(*) FROM wm_scratchpad WHERE {_WM}", scope).fetchone()[0]

    def scratch_clear(self, scope: WMScope) -> int:
        n = self.conn.execute(f"DELETE FROM wm_scratchpad WHERE {_WM}", scope).rowcount
        if n:
            self.unit.touch(_wm_target(scope), "scratchpad")
        return n

    def scratch_put_many(self, scope: WMScope, entries: list[tuple[str, str]]) -> None:
        """Insert entries (oldest first) into an empty scratchpad."""
        self.conn.executemany(
            "INSERT INTO wm_scratchpad (project, agent, session, seq, content, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(*scope, i, content, at) for i, (content, at) in enumerate(entries, start=1)],
        )

    def checkpoint_insert(self, scope: WMScope, checkpoint_id: str, meta: str, snapshot: str) -> int:
        seq = self.conn.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM wm_checkpoint WHERE {_WM}", scope).fetchone()[0]
        self.conn.execute(
            "INSERT INTO wm_checkpoint (project, agent, session, checkpoint_id, seq, "
            "meta, snapshot) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*scope, checkpoint_id, seq, meta, snapshot),
        )
        return seq

    def checkpoint_get(self, scope: WMScope, checkpoint_id: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            f"SELECT meta, snapshot FROM wm_checkpoint WHERE {_WM} AND checkpoint_id = ?", (*scope, checkpoint_id)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def checkpoint_list(self, scope: WMScope) -> list[tuple[int, str]]:
        """(seq, meta JSON) in creation order."""
        return [
            (r[0], r[1])
            for r in self.conn.execute(f"SELECT seq, meta FROM wm_checkpoint WHERE {_WM} ORDER BY seq", scope)
        ]

    def checkpoint_delete(self, scope: WMScope, checkpoint_id: str) -> bool:
        deleted = (
            self.conn.execute(
                f"DELETE FROM wm_checkpoint WHERE {_WM} AND checkpoint_id = ?", (*scope, checkpoint_id)
            ).rowcount
            > 0
        )
        if deleted:
            self.unit.touch(_wm_target(scope), f"checkpoint:{checkpoint_id}")
        return deleted

    def checkpoint_prune(self, scope: WMScope, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` checkpoints; returns the deleted ids."""
        rows = self.conn.execute(
            f"DELETE FROM wm_checkpoint WHERE {_WM} AND seq <= (SELECT seq FROM wm_checkpoint "
            f"WHERE {_WM} ORDER BY seq DESC LIMIT 1 OFFSET ?) RETURNING checkpoint_id",
            (*scope, *scope, keep),
        ).fetchall()
        for (checkpoint_id,) in rows:
            self.unit.touch(_wm_target(scope), f"checkpoint:{checkpoint_id}")
        return [r[0] for r in rows]

    def counts(self, scope: WMScope, now: float) -> dict[str, int]:
        one = "SELECT count(*) FROM {} WHERE " + _WM
        return {
            "userKeys": self.kv_count(scope, now),
            "expiredKeys": self.conn.execute(one.format("wm_kv") + " AND expires_at <= ?", (*scope, now)).fetchone()[0],
            "scratchpadEntries": self.scratch_count(scope),
            "checkpoints": self.conn.execute(one.format("wm_checkpoint"), scope).fetchone()[0],
            "task": self.conn.execute(one.format("wm_task"), scope).fetchone()[0],
        }

    def session_scopes(self, session: str) -> list[tuple[str, str]]:
        """Every (project, agent) holding working memory for ``session``."""
        rows = self.conn.execute(
            "SELECT project, agent FROM wm_kv WHERE session = ? UNION "
            "SELECT project, agent FROM wm_task WHERE session = ? UNION "
            "SELECT project, agent FROM wm_scratchpad WHERE session = ? ORDER BY 1, 2",
            (session, session, session),
        )
        return [(r[0], r[1]) for r in rows]

    def held_scopes(self) -> list[WMScope]:
        """Every scope holding any working memory (keys, task, scratchpad or checkpoints)."""
        return [(r[0], r[1], r[2]) for r in self.conn.execute(HELD_SCOPES)]
