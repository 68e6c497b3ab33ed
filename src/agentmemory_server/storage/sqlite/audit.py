"""The audit log on SQLite: ``storage/audit_sql.py`` with ``?`` marks, JSON stored as text."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.audit_sql import SharedAuditLog
from agentmemory_server.storage.sqlite.common import dumps, loads


class SqliteAuditLog(SharedAuditLog):
    mark = "?"

    def stored(
        self, ts: str, agent_id: str | None, operation: str, message: str, targets: list[str], details: dict[str, Any]
    ) -> tuple[Any, ...]:
        return (ts, agent_id, operation, message, dumps(targets), dumps(details))

    def loaded(self, value: Any) -> Any:
        return loads(value)
