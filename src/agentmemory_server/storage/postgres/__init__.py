"""The PostgreSQL implementation of the storage interface (``AGENTMEMORY_DATABASE_URL``): the
same repositories as the SQLite backend, for many worker processes on many nodes."""

from agentmemory_server.storage.postgres.database import PostgresDatabase
from agentmemory_server.storage.postgres.schema import preflight
from agentmemory_server.storage.postgres.unit_of_work import PostgresUnitOfWork

__all__ = ["PostgresDatabase", "PostgresUnitOfWork", "preflight"]
