"""The capture inbox and counters on SQLite: ``storage/capture_sql.py`` with ``?`` marks."""

from __future__ import annotations

from agentmemory_server.storage.capture_sql import SharedCaptureInbox


class SqliteCaptureInbox(SharedCaptureInbox):
    mark = "?"
