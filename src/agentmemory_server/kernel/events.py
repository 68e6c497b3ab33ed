"""Live event fan-out to WebSocket viewers.

Writers call ``Hub.publish`` after their transaction commits. Each subscriber has a bounded
queue and publishing never blocks: when a subscriber's queue is full it is dropped (its stream
closes with ``CLOSE_LAGGING`` and the client reconnects), so a slow or dead client can never
hold up a writer.

Every event gets a sequence number. The hub keeps the most recent events in a ring so a viewer
that reconnects with ``since=<last seq it saw>`` is sent what it missed; when the gap is older
than the ring (or the server restarted, which the ``epoch`` in the hello tells it), the viewer
is told to reload its snapshot instead.
"""

from __future__ import annotations

import collections
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import CapacityExceeded
from agentmemory_server.threads import SignalSafeFlag

# Every event type the server publishes, with what its ``record`` is. README's event table is
# generated from this, and publishing any other type is a programming error.
EVENT_TYPES: dict[str, str] = {
    "observation": "A new observation (the stored record).",
    "observation_updated": "An observation rewritten in place (e.g. by background LLM compression).",
    "session": "A session started, changed or ended (the session record).",
    "memory": "A memory saved, superseded or changed (the memory record).",
    "summary": "A session summary written (the summary record).",
    "lesson": "A lesson saved, reinforced, decayed or deleted (the lesson record).",
    "slot": "A pinned slot created, changed or deleted (the slot; `deleted: true` on delete).",
    "action": "An action created or updated, or unblocked by another's completion (the action).",
    "relation": "A relation between memories recorded (the relation).",
    "crystal": "A crystal (a session's or actions' digest) written (the crystal).",
    "graph": "Knowledge-graph nodes and edges of a session extracted (counts and ids).",
    "forget": "Records deleted (a summary: reason, ids and counts; never the deleted content).",
    "import": "An import finished (strategy and counts).",
    "recompress": "Stored observations compressed again by the current capture code (counts).",
    "token": "An API token revoked (its listing entry, never the token); every process drops its token cache.",
}

log = logging.getLogger("agentmemory.live")

# WebSocket close codes the stream uses (4000-4999 are for applications).
CLOSE_GOING_AWAY = 1001  # the server is shutting down; reconnect later
CLOSE_POLICY = 1008  # authentication failed
CLOSE_TRY_AGAIN = 1013  # too many viewers are connected
CLOSE_LAGGING = 4000  # the client fell behind its queue and was dropped


class Subscription:
    """One viewer's bounded queue of pending events."""

    def __init__(self, hub: Hub, maxsize: int):
        self.hub = hub
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = False
        self.start_seq = 0  # the last event's seq when it subscribed
        self.last_seq = 0  # the last event's seq it took from its queue
        self.replayed = 0  # missed events queued for it on subscribe
        self.complete = True  # False: events after `since` were lost; reload the snapshot

    def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.hub.unsubscribe(self)


class Hub:
    """:param queue_size: events a client may fall behind before it is dropped.
    :param max_clients: open viewer sockets allowed at once, counted from the upgrade (so a
        socket still waiting for its auth message holds a slot too); 0 = no limit.
    :param replay_size: recent events kept for reconnecting clients."""

    def __init__(self, queue_size: int = 1000, max_clients: int = 0, replay_size: int = 500):
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._queue_size = queue_size
        self._max_clients = max_clients
        self._recent: collections.deque = collections.deque(maxlen=replay_size)
        self.epoch = secrets.token_hex(6)  # changes on restart: seq numbers start again
        self.bus: Any = None  # kernel/bus.EventBus when events are shared across processes
        self.seq = 0
        self.published = 0
        self.dropped_clients = 0
        self.refused_clients = 0
        self.sockets = 0
        self.stopping = SignalSafeFlag()  # set by close(), from a SIGTERM handler
        self._listeners: dict[str, list[Callable[[Any], None]]] = {}

    def listen(self, event_type: str, react: Callable[[Any], None]) -> None:
        """Call ``react(record)`` in this process for every event of ``event_type``, whichever
        process published it (through the bus when there is one): how a change one process
        makes reaches the others' caches at once."""
        self._listeners.setdefault(event_type, []).append(react)

    def subscribe(self, since: int | None = None) -> Subscription:
        """Add a subscriber; with ``since``, queue the missed events still in the ring first.

        ``sub.complete`` is False when events after ``since`` were already evicted from the
        ring (or ``since`` is from an earlier run), so the client must reload its snapshot.

        """
        sub = Subscription(self, self._queue_size)
        with self._lock:
            sub.start_seq = sub.last_seq = self.seq
            if since is not None and since > self.seq:
                sub.complete = False  # a seq from before a restart: nothing to match it against
            elif since is not None:
                missed = [e for e in self._recent if e["seq"] > since]
                oldest_kept = self._recent[0]["seq"] if self._recent else self.seq + 1
                sub.complete = oldest_kept <= since + 1 and len(missed) <= self._queue_size
                for event in missed[-self._queue_size :]:
                    sub.queue.put_nowait(event)
                sub.replayed = min(len(missed), self._queue_size)
                sub.last_seq = since
            self._subs.add(sub)
        return sub

    def open_socket(self) -> None:
        """Take a viewer slot for a new socket (release it with ``close_socket``).

        :raise CapacityExceeded: ``max_clients`` sockets are already open.
        """
        with self._lock:
            if self._max_clients and self.sockets >= self._max_clients:
                self.refused_clients += 1
                raise CapacityExceeded(
                    f"too many viewers (AGENTMEMORY_MAX_VIEWERS={self._max_clients}); try again later",
                    code=errors.TOO_MANY_VIEWERS,
                )
            self.sockets += 1

    def close_socket(self) -> None:
        with self._lock:
            self.sockets -= 1

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, event_type: str, record: Any) -> int:
        """Queue ``{type, seq, ts, record}`` for every subscriber without ever waiting.
        Returns the event's sequence number (0 when a bus numbers it: see ``kernel/bus.py``)."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; declare it in EVENT_TYPES")
        if self.bus is not None:
            self.bus.send(event_type, record)
            return 0
        return self.deliver(self.seq + 1, event_type, time.time(), record)

    def deliver(self, seq: int, event_type: str, ts: float, record: Any) -> int:
        """Fan out one event numbered ``seq`` (the next local number, or the bus's)."""
        with self._lock:
            # Sequence, ring and fan-out under one lock: every client sees events in seq order
            # and a subscribe() in between neither misses nor duplicates one. put_nowait never
            # blocks, so the lock is held for O(clients) quick operations.
            self.seq = max(self.seq, seq)
            self.published += 1
            message = {"type": event_type, "seq": seq, "ts": ts, "record": record}
            self._recent.append(message)
            for sub in list(self._subs):
                try:
                    sub.queue.put_nowait(message)
                except queue.Full:
                    # Trigger: the client stopped reading. Why: waiting would block the writer.
                    # Outcome: the client is dropped and must reconnect (and catch up or reload).
                    sub.dropped = True
                    self._subs.discard(sub)
                    self.dropped_clients += 1
        for react in self._listeners.get(event_type, ()):
            try:
                react(record)
            except Exception:  # noqa: BLE001 - the bus's tail thread must go on delivering
                log.exception("a listener of %r events failed", event_type)
        return seq

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "clients": len(self._subs),
                "sockets": self.sockets,
                "maxClients": self._max_clients or None,
                "published": self.published,
                "seq": self.seq,
                "epoch": self.epoch,
                "droppedClients": self.dropped_clients,
                "refusedClients": self.refused_clients,
                "queueSize": self._queue_size,
                "deepestQueue": max((sub.queue.qsize() for sub in self._subs), default=0),
                **({"bus": self.bus.stats()} if self.bus is not None else {}),
            }

    def close(self) -> None:
        """Tell every open stream to say goodbye (server shutdown)."""
        self.stopping.set()
