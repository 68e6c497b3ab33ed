"""The SQLite implementation of the storage interface (the default backend)."""

from agentmemory_server.storage.sqlite.database import Database
from agentmemory_server.storage.sqlite.migrations import MIGRATIONS
from agentmemory_server.storage.sqlite.schema import SchemaTooNew, preflight
from agentmemory_server.storage.sqlite.unit_of_work import SqliteUnitOfWork

__all__ = ["MIGRATIONS", "Database", "SchemaTooNew", "SqliteUnitOfWork", "preflight"]
