"""Model calls per day on PostgreSQL: ``storage/usage_sql.py`` with ``%s`` marks."""

from __future__ import annotations

from agentmemory_server.storage.usage_sql import SharedModelUsage


class PgModelUsage(SharedModelUsage):
    mark = "%s"
    larger = "greatest"
