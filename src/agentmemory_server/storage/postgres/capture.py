"""The capture inbox and counters on PostgreSQL: ``storage/capture_sql.py`` with ``%s`` marks,
and NUL kept out of text columns (PostgreSQL's text cannot hold it)."""

from __future__ import annotations

from agentmemory_server.storage.capture_sql import SharedCaptureInbox, without_nul


class PgCaptureInbox(SharedCaptureInbox):
    mark = "%s"
    clean = staticmethod(without_nul)
