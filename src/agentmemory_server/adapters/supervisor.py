"""The server's background worker: spawned, watched, restarted, stopped.

With ``AGENTMEMORY_BACKGROUND=process`` (the default) the request-serving process starts
``agentmemory worker --parent-pid <its pid>`` on the same database, restarts it when it exits
(after 1 s, doubling up to 30 s while it keeps dying young), and stops it on shutdown: SIGTERM,
then SIGKILL after a grace period. Nothing queued is lost when the worker dies: the backlog and
the model jobs are durable and their leases expire or are taken over by the next worker.

With several gunicorn worker processes (AGENTMEMORY_WORKERS) each has a supervisor, but only the
one holding ``<db>.supervisor.lock`` (an exclusive ``flock``) spawns: one background worker per
node, not one per request process. The others stand by and take the lock over within seconds
when its holder exits (the kernel releases a dead process's lock).

A stop of the node (SIGTERM or SIGINT to the whole process group: systemd, ``kill -TERM -<pgid>``,
Ctrl-C) reaches the worker and the request process at once, and the worker often exits first.
That is the stop, not a crash: the request process marks itself stopping when it hears the
signal (``stopping()``, from the server's signal hooks), and a worker that exits cleanly (0) is
given ``STOP_NOTICE_SECONDS`` for that mark to appear before it counts as having left on its own.
Either way the exit is logged at INFO and nothing is spawned. A worker that dies otherwise (a
crash, SIGKILL, the OOM killer) is restarted with the backoff.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import agentmemory_server
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.storage.file_locks import wait_for_lock
from agentmemory_server.threads import SignalSafeFlag

log = logging.getLogger("agentmemory.supervisor")
STOP_GRACE_SECONDS = 15.0
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0  # a worker that lived this long resets the backoff
STANDBY_POLL_SECONDS = 2.0
# A worker that exited 0 stopped on a signal; how long to wait for this process to hear the node's
# stop too before taking it for a signal sent to the worker alone (and restarting it).
STOP_NOTICE_SECONDS = 2.0


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.last_exit: dict[str, Any] | None = None
        # Set by stopping() from a signal handler, where an Event could deadlock (SignalSafeFlag).
        self._stop = SignalSafeFlag()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None  # the spawn lock, once this process holds it
        self.standby = True  # another request process of this node holds the spawn lock

    def _take_spawn_lock(self) -> bool:
        """Hold ``<db>.supervisor.lock`` (its descriptor kept open until ``stop()``, or the
        process's end), or wait for it; False when stopped meanwhile."""
        path = f"{self.settings.database_path}.supervisor.lock"
        fd = wait_for_lock(path, self._stop, STANDBY_POLL_SECONDS)
        if fd is None:
            return False
        self._lock_fd, self.standby = fd, False
        return True

    def command(self) -> list[str]:
        """The worker's command line (run with ``worker_env()``)."""
        return [
            sys.executable,
            "-m",
            "agentmemory_server.adapters.cli",
            "--db",
            str(self.settings.database_path),
            "worker",
            "--parent-pid",
            str(os.getpid()),
        ]

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._watch, name="agentmemory-supervisor", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Same environment and settings; the worker's output joins the server's log.
        proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, env=worker_env())
        self.starts += 1
        log.info("background worker started (pid %d, start %d)", proc.pid, self.starts)
        return proc

    def _watch(self) -> None:
        if not self._take_spawn_lock():
            return
        backoff = 1.0
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self.proc = proc = self._spawn()
            started = time.monotonic()
            code = proc.wait()
            lived = time.monotonic() - started
            self.last_exit = {"pid": proc.pid, "code": code, "at": time.time(), "livedSeconds": round(lived, 1)}
            if code == 0 and not self._stop.is_set():
                # A clean exit follows a stop signal; when the whole node is stopping, this
                # process hears it too, often a moment after the worker has finished.
                self._stop.wait(STOP_NOTICE_SECONDS)
            if self._stop.is_set():
                log.info("background worker %d exited with %s: the server is stopping; not restarted", proc.pid, code)
                return
            backoff = 1.0 if lived >= HEALTHY_AFTER_SECONDS else min(MAX_BACKOFF_SECONDS, backoff * 2)
            log.warning(
                "background worker %d exited with %s after %.0f s; restarting in %.0f s", proc.pid, code, lived, backoff
            )
            self._stop.wait(backoff)

    def status(self) -> dict[str, Any]:
        proc = self.proc
        return {
            "pid": proc.pid if proc is not None else None,
            "alive": proc is not None and proc.poll() is None,
            "standby": self.standby,
            "starts": self.starts,
            "restarts": max(0, self.starts - 1),
            "lastExit": self.last_exit,
            "command": " ".join(self.command()[1:4]) + " worker",
        }

    def stopping(self) -> None:
        """This process heard a stop signal: the worker's exit from now on is part of the stop.
        Called from a signal handler, so it takes no lock (a second signal can arrive while the
        first one's handler runs, or while ``stop()`` runs); ``stop()`` still ends the worker and
        releases the spawn lock."""
        self._stop.set()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock: another request process may spawn
            self._lock_fd = None


def start_for(settings: Settings, rt: Any) -> Supervisor | None:
    """Start the worker for a server runtime when the settings say so (and attach the
    supervisor to ``rt`` for /health)."""
    if not (settings.background_jobs and settings.background == "process"):
        return None
    supervisor = Supervisor(settings).start()
    rt.supervisor = supervisor
    return supervisor


def worker_env() -> dict[str, str]:
    """This process's environment with the directory holding ``agentmemory_server`` first on
    PYTHONPATH. README's quick start runs ``python src/app.py`` from a checkout without installing
    the package: the server finds it beside its script, but ``python -m`` in a child would not."""
    root = str(Path(agentmemory_server.__file__).resolve().parent.parent)
    inherited = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, inherited) if p)}
