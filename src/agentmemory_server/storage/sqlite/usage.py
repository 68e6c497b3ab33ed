"""Model calls per day on SQLite: ``storage/usage_sql.py`` with ``?`` marks."""

from __future__ import annotations

from agentmemory_server.storage.usage_sql import SharedModelUsage


class SqliteModelUsage(SharedModelUsage):
    mark = "?"
    larger = "max"
