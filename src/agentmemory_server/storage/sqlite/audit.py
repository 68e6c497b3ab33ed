"""The audit log on SQLite (``audit_log``)."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.sqlite.common import Unit, dumps, loads


class SqliteAuditLog:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def insert(
        self,
        *,
        ts: str,
        agent_id: str | None,
        operation: str,
        message: str,
        targets: list[str],
        details: dict[str, Any],
    ) -> None:
        self.conn.execute(
            "INSERT INTO audit_log (ts, agent_id, operation, message, targets, details) VALUES (?, ?, ?, ?, ?, ?)",
            (ts, agent_id, operation, message, dumps(targets), dumps(details)),
        )

    def page(
        self, *, operation: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        conditions = [(c, v) for c, v in (("operation = ?", operation), ("agent_id = ?", agent_id)) if v is not None]
        where = ("WHERE " + " AND ".join(c for c, _ in conditions)) if conditions else ""
        params = [v for _, v in conditions]
        total = self.conn.execute(f"SELECT count(*) FROM audit_log {where}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT id, ts, agent_id, operation, message, targets, details FROM audit_log {where} "
            "ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        entries = [
            {
                "id": r[0],
                "timestamp": r[1],
                "agentId": r[2],
                "operation": r[3],
                "message": r[4],
                "targetIds": loads(r[5]),
                "details": loads(r[6]),
            }
            for r in rows
        ]
        return entries, total

    def times(self, operation: str, *, limit: int) -> list[str]:
        """Timestamps of the newest ``limit`` rows of one operation, newest first."""
        rows = self.conn.execute(
            "SELECT ts FROM audit_log WHERE operation = ? ORDER BY id DESC LIMIT ?", (operation, limit)
        )
        return [r[0] for r in rows]
