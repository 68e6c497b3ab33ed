"""The PostgreSQL implementation of the storage interface (``AGENTMEMORY_DATABASE_URL``): the
same repositories as the SQLite backend, for many worker processes on many nodes."""

from agentmemory_server.storage.postgres.database import PostgresDatabase, PostgresUnitOfWork, preflight

__all__ = ["PostgresDatabase", "PostgresUnitOfWork", "preflight"]
