"""Live events across worker processes and nodes: the database's event log as the bus.

With one worker process over a SQLite file (the default) the hub fans out in process and this
module is idle. With several worker processes, or on PostgreSQL (any number of nodes), the hub
hands each event to the bus instead: a publisher thread appends events in batches to the
``live_events`` table (one short transaction per batch), and in every process a tail thread reads
the table after the last sequence number it saw and fans the events out to that process's
viewers. So every viewer, on any node, sees every event once, in one global order, numbered by
the table's sequence: a viewer that reconnects to another node with ``since=<seq>`` is replayed
what it missed. The tail wakes on PostgreSQL's NOTIFY (or polls SQLite every 50 ms).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from typing import Any

from agentmemory_server.errors import LastError
from agentmemory_server.kernel.events import Hub
from agentmemory_server.storage.codec import dumps, loads
from agentmemory_server.storage.interfaces import Database

log = logging.getLogger("agentmemory.live")
BATCH = 200
KEEP_EVENTS = 20_000
PRUNE_EVERY_SECONDS = 60.0
WAIT_SECONDS = 0.5
# After the first event of a batch, the publisher waits this long for more: each batch is a write
# transaction of its own, competing for the writer lock with the requests that made the events
# (under 350 remembers/s a batch held one or two events). Viewers see events this much later.
GATHER_SECONDS = 0.01


class EventBus:
    """:param origin: names this process in the event rows (host:pid)."""

    def __init__(self, db: Database, hub: Hub, *, origin: str | None = None):
        self.db = db
        self.hub = hub
        self.origin = origin or f"{os.uname().nodename}:{os.getpid()}"
        self._outbox: queue.Queue[tuple[str, str, float, str] | None] = queue.Queue()  # None: stop
        self._signal = db.event_signal()
        self._stop = threading.Event()
        self._pruned_at = time.monotonic()
        self.sent = 0
        self.received = 0
        self._queued = 0  # events this process sent, and of those, how many came back through the log
        self._returned = 0
        self._returned_changed = threading.Condition()
        self.errors = 0
        self.last_error = LastError()
        self.last_seq = db.reader().live.newest()  # viewers see what happens from now on
        hub.seq = self.last_seq
        hub.epoch = hashlib.sha256(db.location.encode()).hexdigest()[:12]  # the same on every node
        hub.bus = self
        self._threads = [
            threading.Thread(target=self._publish_loop, name="agentmemory-bus-out", daemon=True),
            threading.Thread(target=self._tail_loop, name="agentmemory-bus-in", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def send(self, event_type: str, record: Any) -> None:
        """Queue an event for the bus (never waits; the publisher thread writes it)."""
        with self._returned_changed:
            self._queued += 1
        self._outbox.put((event_type, dumps(record), time.time(), self.origin))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event this process sent so far has reached its own viewers (through
        the log, as other processes get it); False if ``timeout`` passed first."""
        with self._returned_changed:
            target = self._queued
            return self._returned_changed.wait_for(lambda: self._returned >= target, timeout)

    # ---- out: this process's events into the log
    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._outbox.get(timeout=WAIT_SECONDS)
            except queue.Empty:
                continue
            if first is None:
                return
            batch = [first]
            until = time.monotonic() + GATHER_SECONDS
            while len(batch) < BATCH:
                try:
                    event = self._outbox.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if event is None:
                    self._append(batch)
                    return
                batch.append(event)
            self._append(batch)

    def _append(self, batch: list[tuple[str, str, float, str]]) -> None:
        for attempt in range(5):
            try:
                with self.db.transaction("live_events") as tx:
                    tx.live.append(batch)
                    self._signal.notify(tx)
                    if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                        tx.live.prune(KEEP_EVENTS)
                        self._pruned_at = time.monotonic()
                self.sent += len(batch)
                self.last_error.succeeded()
                return
            except Exception as exc:  # noqa: BLE001 - the bus must survive a database hiccup
                self.errors += 1
                self.last_error.failed(f"{type(exc).__name__}: {exc}")
                log.warning("publishing %d live event(s) failed (attempt %d): %s", len(batch), attempt + 1, exc)
                if self._stop.wait(0.2 * 2**attempt):
                    return
        log.error("dropped %d live event(s) the database would not take", len(batch))

    # ---- in: everyone's events to this process's viewers
    def _tail_loop(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.db.reader().live.after(self.last_seq, BATCH)
            except Exception as exc:  # noqa: BLE001
                self.errors += 1
                self.last_error.failed(f"{type(exc).__name__}: {exc}")
                self._stop.wait(1.0)
                continue
            self.last_error.succeeded()
            own = 0
            for seq, event_type, record, ts, origin in rows:
                self.hub.deliver(seq, event_type, ts, loads(record))
                self.last_seq = seq
                self.received += 1
                own += origin == self.origin
            if own:
                with self._returned_changed:
                    self._returned += own
                    self._returned_changed.notify_all()
            if len(rows) < BATCH:
                self._signal.wait(WAIT_SECONDS)

    def stats(self) -> dict[str, Any]:
        return {
            "bus": "database",
            "origin": self.origin,
            "sent": self.sent,
            "received": self.received,
            "pending": self._outbox.qsize(),
            "lastSeq": self.last_seq,
            "errors": self.errors,
            **self.last_error.fields(),
        }

    def close(self) -> None:
        """Publish what is queued, then stop both threads."""
        deadline = time.monotonic() + 5.0
        while not self._outbox.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._outbox.put(None)  # wakes the publisher now rather than at its next poll
        self._signal.close()
        for thread in self._threads:
            thread.join(timeout=5.0)
