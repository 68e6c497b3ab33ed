"""Draining the capture spool where no background worker does: request processes with
``AGENTMEMORY_BACKGROUND_JOBS=false``, or with background jobs on while no worker of this node
is alive (not started, crashed, killed).

A node's background worker drains its capture spool every retry interval (capture/retry.py).
With background jobs off there is no worker, and events spooled while the database refused
writes used to wait for someone to call ``POST /capture/drain``, possibly forever; so did they
while the worker was missing (/health said ``drainedBy: nobody``). Here each request process
drains the spool itself, on a thread of its own (never on a request's path, one drain at a time
per process, at most one a retry interval). With background jobs on it first asks whether a
worker of this node is alive (``CaptureSpool.drained_by``: a heartbeat row read, at most once a
retry interval and only while events wait); a worker that comes back drains beside it (a file is
taken by one process only):

- at start-up, when events wait (kept before a restart, or by a process that died);
- after a write of this process commits (the database takes writes again) while events wait:
  kept by this process since, or found by a look at the folder, made at most once a retry
  interval so that a commit costs no system call.

A drain the database stops part-way (it refuses writes again) leaves the rest for the next
commit. Several processes draining at once take different files (capture/spool.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agentmemory_server.capture.retry import drain_spool
from agentmemory_server.capture.spool import REQUESTS, CaptureSpool
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.util import WorkerFailures

log = logging.getLogger("agentmemory.capture")
JOIN_SECONDS = 10.0  # at close, how long a drain in hand has to put its file back


def drains_here(rt: Any) -> bool:
    """Whether this process may drain the spool itself: it serves requests and runs no
    background loops (``inline``: its own loops drain it, capture/retry.py)."""
    return rt.role == "server" and not rt.runs_background


class SpoolDrainer:
    """Subsystem ``capture_spool_drain``: the drains of this request process (none while a
    background worker of this node drains the spool)."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.spool: CaptureSpool = rt.services["capture_spool"]
        self.enabled = drains_here(rt)
        self.spacing = rt.settings.capture_retry_interval_ms / 1000
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_look = 0.0  # monotonic: a commit before then does not look at the folder
        self._looked_at = 0.0  # monotonic time of the last look (events kept since: look again)
        self._last_drain = float("-inf")
        self._wrote_while_draining = False
        self._failures = WorkerFailures(log, "capture spool drain")
        self.drains = 0
        if self.enabled:
            rt.db.on_commit(self.committed)

    def start(self) -> None:
        """At start-up: drain what waits (events of a process that stopped, or died)."""
        if self.enabled and self.spool.has_waiting(or_taken=True) and self._no_worker_drains():
            self._launch()

    def _no_worker_drains(self) -> bool:
        """True with background jobs off; with them on, when no worker of this node is alive to
        drain the spool (its start-up grace over)."""
        return self.spool.drained_by(verify=True) == REQUESTS

    def committed(self) -> None:
        """A write of this process committed: the database takes writes. Cheap unless events
        may wait (runs on the path of every write)."""
        if self._thread is None and time.monotonic() < self._next_look and self.spool.last_kept <= self._looked_at:
            return
        with self._lock:
            if self._thread is not None:
                self._wrote_while_draining = True
                return
            now = time.monotonic()
            self._looked_at, self._next_look = now, now + self.spacing
            if self._stop.is_set() or not self.spool.has_waiting() or not self._no_worker_drains():
                return
            self._launch_locked()

    def _launch(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._launch_locked()

    def _launch_locked(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agentmemory-spool-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self._last_drain + self.spacing - time.monotonic())):
            self._drain()
            with self._lock:  # decided under the lock: a commit after it starts the next drain itself
                if not self._again():
                    self._thread = None
                    return
        with self._lock:
            self._thread = None

    def _drain(self) -> None:
        """One drain, no sooner than a retry interval after the last (``_run`` waits)."""
        with self._lock:
            self._wrote_while_draining = False
        self._last_drain = time.monotonic()
        try:
            drain_spool(Ctx(self.rt, source="capture_spool"), self._stop)
            self.drains += 1
        except Exception as exc:  # noqa: BLE001 - a bug in draining must not end the process
            self._failures.failed(exc)

    def _again(self) -> bool:
        """After a drain (under the lock): whether to drain again, because events still wait and
        a write committed meanwhile (the database stopped the drain, then took writes again)."""
        if not self.spool.has_waiting():
            self._next_look = time.monotonic() + self.spacing
            return False
        self._next_look = 0.0  # events wait: the next commit starts a drain again
        return self._wrote_while_draining and not self._stop.is_set()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=JOIN_SECONDS)
