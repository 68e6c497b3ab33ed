"""Exclusive ``flock`` locks on files: a try that never waits, and a wait that can be called off.

A lock lives as long as its descriptor: closing it, or the process dying, releases it (the
kernel does so even after a SIGKILL, so a crashed holder never leaves a lock behind). Both
functions open the file with ``O_CLOEXEC``: a child process (the background worker, a
subprocess a job runs) does not inherit the lock and so cannot keep it past its holder.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class StopMark(Protocol):
    """What ``wait_for_lock`` needs of its ``stop``: a ``threading.Event`` or a
    ``threads.SignalSafeFlag`` (one a signal handler sets)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


def try_lock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if missing) if nobody holds it, as an open
    descriptor: closing it, or the process dying, releases it. None when another holder has it;
    OSError when the file cannot be created (a read-only directory)."""
    fd = _open(path)
    if _locked(fd):
        return fd
    os.close(fd)
    return None


def wait_for_lock(
    path: Path | str,
    stop: StopMark,
    poll_seconds: float,
    *,
    give_up: Callable[[], bool] = lambda: False,
    on_wait: Callable[[], None] | None = None,
) -> int | None:
    """Wait for an exclusive ``flock`` on ``path`` (created if missing), trying every
    ``poll_seconds``; the descriptor that holds it (the caller keeps it open for as long as it
    needs the lock). None, with nothing held, once ``stop`` is set or ``give_up()`` says so first.
    ``on_wait`` runs once, when the first try finds the lock taken. OSError when the file
    cannot be created."""
    fd = _open(path)
    waiting = False
    while not stop.is_set() and not give_up():
        if _locked(fd):
            return fd
        if not waiting and on_wait is not None:
            on_wait()
        waiting = True
        stop.wait(poll_seconds)
    os.close(fd)
    return None


def _open(path: Path | str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _locked(fd: int) -> bool:
    """Whether this try took the lock (it never waits)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
