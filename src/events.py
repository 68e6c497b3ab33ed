"""Live event fan-out to WebSocket viewers.

Writers call ``Hub.publish`` after their transaction commits. Each subscriber has a bounded
queue; publishing never blocks: when a subscriber's queue is full it is marked lagging and
dropped, so a slow or dead client can never hold up a writer.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Any


class Subscription:
    def __init__(self, hub: "Hub", maxsize: int):
        self.hub = hub
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = False

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.hub.unsubscribe(self)


class Hub:
    def __init__(self, queue_size: int = 1000):
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._queue_size = queue_size
        self._seq = itertools.count(1)
        self.published = 0
        self.dropped_clients = 0

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._queue_size)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, event_type: str, record: Any) -> None:
        message = {"type": event_type, "seq": next(self._seq), "ts": time.time(), "record": record}
        with self._lock:
            subs = list(self._subs)
        self.published += 1
        for sub in subs:
            try:
                sub.queue.put_nowait(message)
            except queue.Full:
                # Trigger: the client stopped reading. Why: waiting would block the writer.
                # Outcome: the client is dropped and must reconnect (and refetch a snapshot).
                sub.dropped = True
                self.unsubscribe(sub)
                self.dropped_clients += 1
