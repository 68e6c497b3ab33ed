"""``agentmemory worker``: the process where background work runs.

It builds a runtime in the ``worker`` role (the backlog embedder, the LLM job workers and the
periodic jobs run; no HTTP), writes a heartbeat, and stops cleanly on SIGTERM or SIGINT: the
batch in hand finishes or, if it is killed, its lease expires and another worker (or this one
restarted) takes it over. The process keeps normal priority: the threads that compute (the
embedding model and its onnxruntime threads, LLM jobs, periodic jobs) lower their own, while
the database writes that hold the write lock run at normal priority, so no request waits for a
lock held by a thread that cannot get a core. Started by the server (``AGENTMEMORY_BACKGROUND=process``,
``--parent-pid`` makes it leave when that server goes away) or by hand (``external``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from agentmemory_server import storage
from agentmemory_server.adapters import logs
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.wiring import build_runtime

log = logging.getLogger("agentmemory.worker")


def run_worker(settings: Settings, *, parent_pid: int | None = None) -> int:
    logs.configure(settings.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("worker %d: signal %d, stopping", os.getpid(), signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rt = build_runtime(settings, role="worker")
    store = storage.location(settings.database_path, settings.database_url)  # PostgreSQL: the URL, no password
    log.info("background worker %d running on %s (mode %s)", os.getpid(), store, settings.background)
    try:
        while not stop.wait(1.0):
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("worker %d: the server that started it (%d) is gone; stopping", os.getpid(), parent_pid)
                break
    finally:
        rt.close()
    return 0
