"""``agentmemory worker``: the process where background work runs.

It builds a runtime in the ``worker`` role (the backlog embedder, the LLM job workers and the
periodic jobs run; no HTTP), writes a heartbeat, and stops cleanly on SIGTERM or SIGINT: the
batch in hand finishes or, if it is killed, its lease expires and another worker (or this one
restarted) takes it over. The process keeps normal priority: the threads that compute (the
embedding model and its onnxruntime threads, LLM jobs, periodic jobs) lower their own, while
the database writes that hold the write lock run at normal priority, so no request waits for a
lock held by a thread that cannot get a core. Started by the server (``AGENTMEMORY_BACKGROUND=process``,
``--parent-pid`` makes it leave when that server goes away) or by hand (``external``).

A worker started by a server (``--parent-pid``) holds ``<db>.worker.lock`` (an exclusive
``flock``) from before its runtime is built until its process is gone, and one started while another holds
it waits: when a request process is killed, its worker is still finishing while a sibling
request process spawns the next one, and the two never run jobs at the same time. The old one
leaves at once: on Linux the kernel sends it SIGTERM when the server that started it dies
(``PR_SET_PDEATHSIG``); elsewhere it notices within a second.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmemory_server import storage
from agentmemory_server.adapters import logs
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.storage.file_locks import wait_for_lock
from agentmemory_server.threads import SignalSafeFlag
from agentmemory_server.wiring import build_runtime

log = logging.getLogger("agentmemory.worker")
LOCK_POLL_SECONDS = 0.05
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_worker(settings: Settings, *, parent_pid: int | None = None) -> int:
    logs.configure(settings.log_level)
    logs.dump_stacks_on_signal()
    stop = SignalSafeFlag()  # set by the signal handler, where an Event could deadlock

    def orphaned() -> bool:
        return parent_pid is not None and os.getppid() != parent_pid

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a node's stop often signals twice (the group, then the supervisor)
            return
        if orphaned():
            log.warning("worker %d: the server that started it (%d) is gone; stopping", os.getpid(), parent_pid)
        else:
            log.info("worker %d: signal %d, stopping", os.getpid(), signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if parent_pid is not None:
        _stop_with_parent()
        if not _take_worker_lock(f"{settings.database_path}.worker.lock", stop, orphaned):
            return 0
    rt = build_runtime(settings, role="worker")
    store = storage.location(settings.database_path, settings.database_url)  # PostgreSQL: the URL, no password
    log.info("background worker %d running on %s (mode %s)", os.getpid(), store, settings.background)
    try:
        while not stop.wait(1.0):
            if orphaned():
                log.warning("worker %d: the server that started it (%d) is gone; stopping", os.getpid(), parent_pid)
                break
    finally:
        rt.close()
    return 0


def _stop_with_parent() -> None:
    """Ask the kernel for SIGTERM when the server that started this worker dies (Linux only;
    elsewhere the main loop's once-a-second look at the parent pid is what notices). The kernel
    watches the thread that spawned the worker, not the whole process: the supervisor's thread,
    which lives until the worker has exited, so it fires only when the server dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        log.debug("worker %d: PR_SET_PDEATHSIG unavailable (%s)", os.getpid(), exc)


def _take_worker_lock(path: str, stop: SignalSafeFlag, orphaned: Callable[[], bool]) -> bool:
    """Hold ``path`` exclusively until this process has exited (a bare descriptor, never closed:
    the kernel releases the lock only once the process is gone), waiting while the previous
    worker of this node is still running. False when told to stop, or orphaned, meanwhile."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # a first start: the data directory may not exist yet
    waited = False

    def say_waiting() -> None:
        nonlocal waited
        waited = True
        log.info("worker %d: waiting for the previous background worker of this node to stop", os.getpid())

    fd = wait_for_lock(path, stop, LOCK_POLL_SECONDS, give_up=orphaned, on_wait=say_waiting)
    if fd is None:
        return False
    if waited:
        log.info("worker %d: the previous background worker has stopped; starting", os.getpid())
    return True  # fd stays open, unreferenced, until the process exits
