"""The audit log on PostgreSQL (``audit_log``)."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.postgres.common import Jsonb, Unit
from agentmemory_server.storage.postgres.records import scrub
from agentmemory_server.storage.postgres.search_index import clean


class PgAuditLog:
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
        # Scrubbed: audit rows may quote anything a client sent.
        self.conn.execute(
            "INSERT INTO audit_log (ts, agent_id, operation, message, targets, details) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                ts,
                None if agent_id is None else clean(agent_id),
                clean(operation),
                clean(message),
                Jsonb(scrub(targets)),
                Jsonb(scrub(details)),
            ),
        )

    def page(
        self, *, operation: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        conditions = [(c, v) for c, v in (("operation = %s", operation), ("agent_id = %s", agent_id)) if v is not None]
        where = ("WHERE " + " AND ".join(c for c, _ in conditions)) if conditions else ""
        params = [v for _, v in conditions]
        total = self.conn.execute(f"SELECT count(*) FROM audit_log {where}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT id, ts, agent_id, operation, message, targets, details FROM audit_log {where} "
            "ORDER BY id DESC LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        entries = [
            {
                "id": r[0],
                "timestamp": r[1],
                "agentId": r[2],
                "operation": r[3],
                "message": r[4],
                "targetIds": r[5],
                "details": r[6],
            }
            for r in rows
        ]
        return entries, int(total)

    def times(self, operation: str, *, limit: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT ts FROM audit_log WHERE operation = %s ORDER BY id DESC LIMIT %s", (operation, limit)
        )
        return [r[0] for r in rows]
