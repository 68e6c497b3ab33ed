"""The unit of work of the PostgreSQL backend: the repositories bound to one connection (a
transaction's ``TxConnection``, or the pooled reader).

``PostgresDatabase`` hands one out per write transaction (it collects what it changes for the
transaction's audit row) and per read. Each repository (records.py, search_index.py, ...) holds
its own SQL and reaches the connection, the audit trail and the queue bounds through this
object; kept apart from database.py, which owns the pool and runs the transactions, so the list
of repositories reads in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentmemory_server.storage.blobs import BlobStore
from agentmemory_server.storage.lexical.tantivy_index import TantivyLexical
from agentmemory_server.storage.postgres.admin import PgAdmin
from agentmemory_server.storage.postgres.audit import PgAuditLog
from agentmemory_server.storage.postgres.capture import PgCaptureInbox
from agentmemory_server.storage.postgres.common import SqlConn
from agentmemory_server.storage.postgres.images import PgImageIndex
from agentmemory_server.storage.postgres.jobs import PgJobQueue
from agentmemory_server.storage.postgres.live import PgEventLog
from agentmemory_server.storage.postgres.records import PgCaptureLog, PgRecords
from agentmemory_server.storage.postgres.search_index import PgSearchIndex
from agentmemory_server.storage.postgres.usage import PgModelUsage
from agentmemory_server.storage.postgres.vectors import PgVectorStore
from agentmemory_server.storage.postgres.working import PgWorkingStore
from agentmemory_server.storage.sqlite.bounds import QueueBounds
from agentmemory_server.storage.unit_of_work import UnitOfWorkBase


class PostgresUnitOfWork(UnitOfWorkBase):
    """The repositories bound to one connection (a transaction's, or the pooled reader)."""

    conn: SqlConn

    def __init__(
        self,
        conn: SqlConn,
        *,
        writable: bool,
        engine: TantivyLexical | None = None,
        bounds: QueueBounds | None = None,
        record_indexes: Mapping[str, tuple[tuple[str, ...], ...]] | None = None,
        prefix_indexes: Mapping[str, tuple[tuple[str, ...], ...]] | None = None,
        legacy_images: BlobStore,
    ):
        super().__init__(
            conn, writable=writable, bounds=bounds, record_indexes=record_indexes, prefix_indexes=prefix_indexes
        )
        self.records = PgRecords(self)
        self.events = PgCaptureLog(self)
        self.inbox = PgCaptureInbox(self)
        self.images = PgImageIndex(self, legacy_images)
        self.vectors = PgVectorStore(self)
        self.index = PgSearchIndex(self, self.vectors, engine)
        self.audit = PgAuditLog(self)
        self.jobs = PgJobQueue(self)
        self.usage = PgModelUsage(self)
        self.working = PgWorkingStore(self)
        self.admin = PgAdmin(self, self.index)
        self.live = PgEventLog(self)
