"""Live events shared by the worker processes of one node (``live_events``), and the signal
that wakes their tails: a short poll (SQLite has no notifications across processes)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from agentmemory_server.storage.sqlite.common import Unit

POLL_SECONDS = 0.05


class SqliteEventLog:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def append(self, events: Sequence[tuple[str, str, float, str]]) -> int:
        self.conn.executemany("INSERT INTO live_events (type, record, ts, origin) VALUES (?, ?, ?, ?)", list(events))
        return self.newest()

    def after(self, seq: int, limit: int) -> list[tuple[int, str, str, float, str]]:
        rows = self.conn.execute(
            "SELECT seq, type, record, ts, origin FROM live_events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def newest(self) -> int:
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM live_events").fetchone()[0]

    def prune(self, keep: int) -> int:
        return self.conn.execute(
            "DELETE FROM live_events WHERE seq <= (SELECT max(seq) FROM live_events) - ?", (keep,)
        ).rowcount


class PollSignal:
    """Waits at most POLL_SECONDS (or until this process published)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, timeout: float) -> None:
        self._event.wait(min(timeout, POLL_SECONDS))
        self._event.clear()

    def notify(self, unit: Any) -> None:
        unit.after_commit(self._event.set)

    def close(self) -> None:
        self._event.set()
