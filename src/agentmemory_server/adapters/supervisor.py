"""The server's background worker: spawned, watched, restarted, stopped.

With ``AGENTMEMORY_BACKGROUND=process`` (the default) the request-serving process starts
``agentmemory worker --parent-pid <its pid>`` on the same database, restarts it when it exits
(after 1 s, doubling up to 30 s while it keeps dying young), and stops it on shutdown: SIGTERM
when the request process hears its own stop signal, SIGKILL (logged) if it is still running
``WORKER_STOP_SECONDS`` after that. Nothing queued is lost when the worker dies: the backlog and
the model jobs are durable and their leases expire or are taken over by the next worker.

The whole stop of a request process (its requests finished, this worker stopped, its runtime
closed) must fit in ``SHUTDOWN_GRACE_SECONDS``, gunicorn's graceful timeout (``server.py`` sets
it from this constant): past it gunicorn SIGKILLs the request process, and whatever it was
finishing (the vector index being saved, the WAL checkpoint) is cut. So the worker's share is
counted from the signal, not from when the requests are done, and is a part of that constant.

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
# After a stop signal, how long a request process has to finish its requests, stop its background
# worker and close its runtime before gunicorn SIGKILLs it (gunicorn's graceful_timeout).
SHUTDOWN_GRACE_SECONDS = 20  # whole seconds: gunicorn takes an int
# Counted from that signal, when the background worker must be gone: it is asked to stop at the
# signal and SIGKILLed KILL_WAIT_SECONDS before this if it has not exited. The rest of the grace is
# for closing the runtime, with a margin before gunicorn's SIGKILL.
WORKER_STOP_SECONDS = SHUTDOWN_GRACE_SECONDS * 0.6
KILL_WAIT_SECONDS = 1.0  # reaping a SIGKILLed process is immediate; this is only a bound
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
        self._stop_heard_at: float | None = None  # time.monotonic() when stopping() was first called
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
            if self._stop.is_set():  # a stop signal came while it was spawned: stopping() saw no proc
                proc.send_signal(signal.SIGTERM)
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
        """This process heard a stop signal: the worker's exit from now on is part of the stop, and
        the worker is asked to stop now (SIGTERM), so its share of the graceful timeout runs while
        the requests in flight finish. Called from a signal handler, so it takes no lock (a second
        signal can arrive while the first one's handler runs, or while ``stop()`` runs; sending a
        signal waits for nothing); ``stop()`` still ends the worker and releases the spawn lock."""
        if self._stop_heard_at is None:
            self._stop_heard_at = time.monotonic()
        self._stop.set()
        proc = self.proc
        if proc is not None:
            proc.send_signal(signal.SIGTERM)  # no-op once the watcher has reaped it

    def stop(self, within: float = WORKER_STOP_SECONDS) -> None:
        """End the worker and release the spawn lock. The worker is gone ``within`` seconds of the
        stop signal this process heard (``stopping()``), or of now when it heard none: a worker
        still running ``KILL_WAIT_SECONDS`` before then is SIGKILLed, and that is logged."""
        with self._lock:
            self._stop.set()
            proc = self.proc
        deadline = (self._stop_heard_at or time.monotonic()) + within
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            _end_by(proc, deadline, within - KILL_WAIT_SECONDS)
        if self._thread is not None:  # it only has to notice the stop, or the worker's exit
            self._thread.join(timeout=max(KILL_WAIT_SECONDS, deadline - time.monotonic()))
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock: another request process may spawn
            self._lock_fd = None


def _end_by(proc: subprocess.Popen[bytes], deadline: float, allowed: float) -> None:
    """Wait for ``proc`` (already sent SIGTERM) to exit, SIGKILLing it in time to be gone by
    ``deadline`` (time.monotonic(); ``allowed`` seconds after the stop, for the log). A worker
    that finishes its batch too slowly, hangs or is stopped (SIGSTOP) is killed here, rather than
    left to outlast gunicorn's grace, which would kill this process before it has closed."""
    try:
        proc.wait(timeout=max(0.0, deadline - KILL_WAIT_SECONDS - time.monotonic()))
        return
    except subprocess.TimeoutExpired:
        pass
    log.warning(
        "background worker %d did not stop within %.0f s of the stop; killed it (SIGKILL), so the server "
        "stops within its %.0f s grace; its jobs' leases let the next worker take them over",
        proc.pid,
        allowed,
        SHUTDOWN_GRACE_SECONDS,
    )
    proc.kill()
    try:
        proc.wait(timeout=KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("background worker %d is still there %.0f s after SIGKILL", proc.pid, KILL_WAIT_SECONDS)


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
