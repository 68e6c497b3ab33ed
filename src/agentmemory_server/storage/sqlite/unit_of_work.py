"""The unit of work of the SQLite backend: the repositories bound to one connection.

``Database`` hands one out per write transaction (it can write, and collects what it changes for
the transaction's audit row) and per reading thread (read-only, on that thread's ``mode=ro``
connection). Each repository (records.py, search_index.py, ...) holds its own SQL and reaches the
connection, the audit trail and the queue bounds through this object; kept apart from
database.py, which opens the file and runs the transactions, so the list of repositories reads
in one place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from agentmemory_server.storage.blobs import BlobStore
from agentmemory_server.storage.lexical.tantivy_index import TantivyLexical
from agentmemory_server.storage.sqlite.admin import SqliteAdmin
from agentmemory_server.storage.sqlite.audit import SqliteAuditLog
from agentmemory_server.storage.sqlite.bounds import QueueBounds
from agentmemory_server.storage.sqlite.capture import SqliteCaptureInbox
from agentmemory_server.storage.sqlite.images import SqliteImageIndex
from agentmemory_server.storage.sqlite.jobs import SqliteJobQueue
from agentmemory_server.storage.sqlite.live import SqliteEventLog
from agentmemory_server.storage.sqlite.records import SqliteCaptureLog, SqliteRecords
from agentmemory_server.storage.sqlite.search_index import SqliteSearchIndex
from agentmemory_server.storage.sqlite.usage import SqliteModelUsage
from agentmemory_server.storage.sqlite.vectors import SqliteVectorStore
from agentmemory_server.storage.sqlite.working import SqliteWorkingStore
from agentmemory_server.storage.unit_of_work import UnitOfWorkBase


class SqliteUnitOfWork(UnitOfWorkBase):
    """The repositories bound to one connection. One handed out by ``Database.transaction`` can
    write and tracks what it changes for the audit row; one from ``Database.reader`` is read-only
    (the connection is opened with ``mode=ro``)."""

    conn: sqlite3.Connection

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        writable: bool,
        engine: TantivyLexical | None = None,
        vector_index: Any = None,
        record_indexes: Mapping[str, tuple[tuple[str, ...], ...]] | None = None,
        prefix_indexes: Mapping[str, tuple[tuple[str, ...], ...]] | None = None,
        bounds: QueueBounds | None = None,
        blobs: BlobStore,
    ):
        super().__init__(
            conn, writable=writable, bounds=bounds, record_indexes=record_indexes, prefix_indexes=prefix_indexes
        )
        self.vector_index = vector_index  # Database.vector_index: the ANN behind vectors.search
        self.records = SqliteRecords(self)
        self.events = SqliteCaptureLog(self)
        self.inbox = SqliteCaptureInbox(self)
        self.images = SqliteImageIndex(self, blobs)
        self.vectors = SqliteVectorStore(self)
        self.index = SqliteSearchIndex(self, self.vectors, engine, self.images)
        self.audit = SqliteAuditLog(self)
        self.jobs = SqliteJobQueue(self)
        self.usage = SqliteModelUsage(self)
        self.working = SqliteWorkingStore(self)
        self.admin = SqliteAdmin(self, self.index)
        self.live = SqliteEventLog(self)
