"""The SQLite implementation of the storage interface (the default backend)."""

from agentmemory_server.storage.sqlite.database import Database, SchemaTooNew, SqliteUnitOfWork, preflight
from agentmemory_server.storage.sqlite.migrations import MIGRATIONS

__all__ = ["MIGRATIONS", "Database", "SchemaTooNew", "SqliteUnitOfWork", "preflight"]
