"""The audit log on PostgreSQL: ``storage/audit_sql.py`` with ``%s`` marks, JSON as ``jsonb``."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.audit_sql import SharedAuditLog
from agentmemory_server.storage.postgres.common import Jsonb
from agentmemory_server.storage.postgres.records import scrub
from agentmemory_server.storage.postgres.search_index import clean


class PgAuditLog(SharedAuditLog):
    mark = "%s"

    def stored(
        self, ts: str, agent_id: str | None, operation: str, message: str, targets: list[str], details: dict[str, Any]
    ) -> tuple[Any, ...]:
        # Scrubbed: audit rows may quote anything a client sent, and PostgreSQL's text and jsonb
        # refuse NUL and lone surrogates.
        agent = None if agent_id is None else clean(agent_id)
        return (ts, agent, clean(operation), clean(message), Jsonb(scrub(targets)), Jsonb(scrub(details)))
