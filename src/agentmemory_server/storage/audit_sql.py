"""The audit log (``audit_log``), written once for both backends. Their SQL differs only in the
parameter mark (``mark``); how a row's text and JSON columns are stored and read back is each
backend's own (``stored``, ``loaded``)."""

from __future__ import annotations

from typing import Any

_COLUMNS = "ts, agent_id, operation, message, targets, details"


class SharedAuditLog:
    """``AuditLog`` on a connection whose ``execute`` returns a cursor (sqlite3, psycopg)."""

    mark: str  # the backend's parameter mark

    def __init__(self, unit: Any):
        self.conn = unit.conn

    def stored(
        self, ts: str, agent_id: str | None, operation: str, message: str, targets: list[str], details: dict[str, Any]
    ) -> tuple[Any, ...]:
        """One row's values as the backend stores them."""
        raise NotImplementedError

    def loaded(self, value: Any) -> Any:
        """A JSON column's value as read back."""
        return value

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
        marks = ", ".join([self.mark] * 6)
        self.conn.execute(
            f"INSERT INTO audit_log ({_COLUMNS}) VALUES ({marks})",
            self.stored(ts, agent_id, operation, message, targets, details),
        )

    def page(
        self, *, operation: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        m = self.mark
        wanted = ((f"operation = {m}", operation), (f"agent_id = {m}", agent_id))
        conditions = [(c, v) for c, v in wanted if v is not None]
        where = ("WHERE " + " AND ".join(c for c, _ in conditions)) if conditions else ""
        params = [v for _, v in conditions]
        total = self.conn.execute(f"SELECT count(*) FROM audit_log {where}", params).fetchone()[0]
        rows = self.conn.execute(
            f"SELECT id, {_COLUMNS} FROM audit_log {where} ORDER BY id DESC LIMIT {m} OFFSET {m}",
            (*params, limit, offset),
        )
        entries = [
            {
                "id": r[0],
                "timestamp": r[1],
                "agentId": r[2],
                "operation": r[3],
                "message": r[4],
                "targetIds": self.loaded(r[5]),
                "details": self.loaded(r[6]),
            }
            for r in rows
        ]
        return entries, int(total)

    def times(self, operation: str, *, limit: int) -> list[str]:
        """Timestamps of the newest ``limit`` rows of one operation, newest first."""
        m = self.mark
        rows = self.conn.execute(
            f"SELECT ts FROM audit_log WHERE operation = {m} ORDER BY id DESC LIMIT {m}", (operation, limit)
        )
        return [r[0] for r in rows]
