"""The capture inbox (``capture_inbox``) and the capture pipeline's counters (``capture_counts``),
written once for both backends: their SQL differs only in the parameter mark (``mark``) and in
what a text column may hold (``clean``: PostgreSQL's text cannot hold NUL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentmemory_server.storage.codec import dumps, loads

_COLUMNS = (
    "event_id",
    "status",
    "reason",
    "session_id",
    "hook_type",
    "tool_name",
    "agent_id",
    "body",
    "attempts",
    "next_try",
    "last_error",
    "created_at",
    "updated_at",
)
_KEYS = (
    "eventId",
    "status",
    "reason",
    "sessionId",
    "hookType",
    "toolName",
    "agentId",
    "body",
    "attempts",
    "nextTry",
    "lastError",
    "createdAt",
    "updatedAt",
)
_COLUMN_OF = dict(zip(_KEYS, _COLUMNS, strict=True))
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM capture_inbox"


def _entry(row: tuple) -> dict[str, Any]:
    entry = dict(zip(_KEYS, row, strict=True))
    entry["body"] = loads(entry["body"])
    return entry


def unchanged(value: Any) -> Any:
    return value


def without_nul(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL; the body is JSON text, where NUL is already escaped."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


class SharedCaptureInbox:
    """``CaptureInbox`` on a connection whose ``execute`` returns a cursor (sqlite3, psycopg)."""

    mark: str  # the backend's parameter mark
    clean = staticmethod(unchanged)  # what a text value becomes before it is stored

    def __init__(self, unit: Any):
        self.unit = unit
        self.conn = unit.conn

    def _agent_terms(self, agent_id: str | None) -> tuple[str, list[Any]]:
        return ("", []) if agent_id is None else (f" AND agent_id = {self.mark}", [agent_id])

    def put(self, entry: dict[str, Any], now: str) -> None:
        """Insert or replace one entry (its first ``createdAt`` is kept)."""
        values = {key: self.clean(entry.get(key)) for key in _KEYS}
        values["body"] = dumps(entry.get("body") or {})
        values["attempts"] = int(entry.get("attempts") or 0)
        values["nextTry"] = float(entry.get("nextTry") or 0)
        values["createdAt"] = entry.get("createdAt") or now
        values["updatedAt"] = now
        marks = ", ".join([self.mark] * len(_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in ("event_id", "created_at"))
        self.conn.execute(
            f"INSERT INTO capture_inbox ({', '.join(_COLUMNS)}) VALUES ({marks}) "
            f"ON CONFLICT (event_id) DO UPDATE SET {updates}",
            tuple(values[k] for k in _KEYS),
        )
        self.unit.record_change(f"capture_inbox/{entry['eventId']}")

    def get(self, event_id: str) -> dict[str, Any] | None:
        m = self.mark
        row = self.conn.execute(f"{_SELECT} WHERE event_id = {m}", (event_id,)).fetchone()
        return _entry(row) if row else None

    def update(self, event_id: str, changes: Mapping[str, Any], now: str) -> None:
        m = self.mark
        sets = [f"{_COLUMN_OF[key]} = {m}" for key in changes]
        params = [dumps(v) if key == "body" else self.clean(v) for key, v in changes.items()]
        self.conn.execute(
            f"UPDATE capture_inbox SET {', '.join([*sets, f'updated_at = {m}'])} WHERE event_id = {m}",
            (*params, now, event_id),
        )
        self.unit.record_change(f"capture_inbox/{event_id}")

    def delete(self, event_id: str) -> bool:
        m = self.mark
        gone = self.conn.execute(f"DELETE FROM capture_inbox WHERE event_id = {m}", (event_id,)).rowcount > 0
        if gone:
            self.unit.record_change(f"capture_inbox/{event_id}")
        return gone

    def due(self, now_epoch: float, limit: int) -> list[dict[str, Any]]:
        """Pending entries whose next attempt is due, oldest first."""
        m = self.mark
        rows = self.conn.execute(
            f"{_SELECT} WHERE status = 'pending' AND next_try <= {m} ORDER BY next_try, created_at LIMIT {m}",
            (now_epoch, limit),
        )
        return [_entry(r) for r in rows]

    def page(
        self, *, status: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Entries most recently updated first, and how many match."""
        m = self.mark
        terms, params = ["1 = 1"], []
        if status:
            terms.append(f"status = {m}")
            params.append(status)
        agent_sql, agent_params = self._agent_terms(agent_id)
        where = " AND ".join(terms) + agent_sql
        rows = self.conn.execute(
            f"{_SELECT} WHERE {where} ORDER BY updated_at DESC, event_id LIMIT {m} OFFSET {m}",
            (*params, *agent_params, limit, offset),
        )
        total = self.conn.execute(
            f"SELECT count(*) FROM capture_inbox WHERE {where}", (*params, *agent_params)
        ).fetchone()[0]
        return [_entry(r) for r in rows], int(total)

    def event_ids(self, status: str, *, agent_id: str | None = None, limit: int) -> list[str]:
        m = self.mark
        agent_sql, agent_params = self._agent_terms(agent_id)
        rows = self.conn.execute(
            f"SELECT event_id FROM capture_inbox WHERE status = {m}{agent_sql} ORDER BY created_at LIMIT {m}",
            (status, *agent_params, limit),
        )
        return [r[0] for r in rows]

    def summary(self, agent_id: str | None = None) -> dict[str, Any]:
        """Entries per status, the oldest waiting one, the next retry and the last error."""
        agent_sql, agent_params = self._agent_terms(agent_id)
        by_status = {
            s: int(n)
            for s, n in self.conn.execute(
                f"SELECT status, count(*) FROM capture_inbox WHERE 1 = 1{agent_sql} GROUP BY status", agent_params
            )
        }
        oldest, next_try = self.conn.execute(
            f"SELECT min(created_at), min(next_try) FROM capture_inbox WHERE status = 'pending'{agent_sql}",
            agent_params,
        ).fetchone()
        last = self.conn.execute(
            f"SELECT last_error FROM capture_inbox WHERE last_error IS NOT NULL{agent_sql} "
            "ORDER BY updated_at DESC LIMIT 1",
            agent_params,
        ).fetchone()
        return {
            "byStatus": by_status,
            "oldestPendingAt": oldest,
            "nextTry": next_try,
            "lastError": last[0] if last else None,
        }

    def trim(self, status: str, keep: int) -> int:
        """Delete the oldest entries of ``status`` beyond the newest ``keep``."""
        m = self.mark
        n = self.conn.execute(
            f"DELETE FROM capture_inbox WHERE status = {m} AND event_id NOT IN "
            f"(SELECT event_id FROM capture_inbox WHERE status = {m} ORDER BY updated_at DESC LIMIT {m})",
            (status, status, keep),
        ).rowcount
        if n:
            self.unit.record_change(f"capture_inbox/{status}", None)
        return n

    def bump(self, kind: str, name: str, now: str, by: int = 1) -> None:
        m = self.mark
        self.conn.execute(
            f"INSERT INTO capture_counts (kind, name, count, last_at) VALUES ({m}, {m}, {m}, {m}) "
            "ON CONFLICT (kind, name) DO UPDATE SET count = capture_counts.count + excluded.count, "
            "last_at = excluded.last_at",
            (self.clean(kind), self.clean(name), by, now),
        )

    def counters(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for kind, name, count in self.conn.execute("SELECT kind, name, count FROM capture_counts ORDER BY kind, name"):
            found.setdefault(kind, {})[name] = int(count)
        return found
