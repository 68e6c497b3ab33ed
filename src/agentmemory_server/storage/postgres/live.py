"""Live events shared by every worker process and node (``live_events``), and the signal that
wakes their tails: PostgreSQL's LISTEN/NOTIFY (a NOTIFY is delivered when its transaction
commits, to every node)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from agentmemory_server.storage.postgres.common import Unit

CHANNEL = "agentmemory_live"
log = logging.getLogger("agentmemory.postgres")


class PgEventLog:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def append(self, events: Sequence[tuple[str, str, float, str]]) -> int:
        if not events:
            return 0
        # One statement for the batch; sequence numbers follow the batch's order.
        types, records, stamps, origins = (list(column) for column in zip(*events, strict=True))
        row = self.conn.execute(
            "WITH added AS (INSERT INTO live_events (type, record, ts, origin) "
            "SELECT t, r, s, o FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[]) "
            "WITH ORDINALITY AS e(t, r, s, o, n) ORDER BY n RETURNING seq) SELECT max(seq) FROM added",
            (types, records, stamps, origins),
        ).fetchone()
        return int(row[0])

    def after(self, seq: int, limit: int) -> list[tuple[int, str, str, float, str]]:
        rows = self.conn.execute(
            "SELECT seq, type, record, ts, origin FROM live_events WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit)
        )
        return [(int(r[0]), r[1], r[2], float(r[3]), r[4]) for r in rows]

    def newest(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM live_events").fetchone()[0])

    def prune(self, keep: int) -> int:
        return self.conn.execute(
            "DELETE FROM live_events WHERE seq <= (SELECT max(seq) FROM live_events) - %s", (keep,)
        ).rowcount


class NotifySignal:
    """A connection of its own that LISTENs; reconnects after losing it (a poll meanwhile).
    The thread inside ``wait`` owns the connection; ``close`` from another thread closes it at
    once when nobody waits, else the waiter closes it on its way out."""

    def __init__(self, url: str):
        self._url = url
        self._conn: psycopg.Connection | None = None
        self._closed = False
        self._waiting = False
        self._lock = threading.Lock()

    def _listening(self) -> psycopg.Connection | None:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._url, autocommit=True)
                self._conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as exc:
                log.warning("cannot LISTEN for live events (%s); polling", exc)
                self._drop()
        return self._conn

    def wait(self, timeout: float) -> None:
        with self._lock:
            conn = None if self._closed else self._listening()
            self._waiting = conn is not None
        if conn is None:
            time.sleep(min(timeout, 1.0))
            return
        try:
            for _note in conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error:
            with self._lock:
                self._drop()
        finally:
            with self._lock:
                self._waiting = False
                if self._closed:
                    self._drop()

    def notify(self, unit: Any) -> None:
        unit.conn.execute(f"NOTIFY {CHANNEL}")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting = self._waiting
            if not waiting:
                self._drop()
        if waiting:  # wake the waiter now rather than at its timeout (other listeners just look once more)
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(f"NOTIFY {CHANNEL}")
            except psycopg.Error:
                pass
