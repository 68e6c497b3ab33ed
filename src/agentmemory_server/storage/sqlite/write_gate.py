"""Writers of one SQLite file queue on a shared file lock instead of SQLite's busy handler.

With several processes on one file (``AGENTMEMORY_WORKERS`` > 1, the background worker, the
CLI) a ``BEGIN IMMEDIATE`` that finds the write lock taken falls into SQLite's busy handler,
which sleeps 1, 2, 5, 10 ... up to 100 ms between tries. Transactions here last well under a
millisecond, so those sleeps, not the work, set the latency of concurrent writers. Taking an
exclusive ``flock`` on a side file just before ``BEGIN IMMEDIATE`` and polling it every
0.1-0.3 ms keeps a waiting writer within a fraction of a millisecond of the release; the kernel drops
the lock when a process dies, even by SIGKILL.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone orders the writers
    fcntl = None  # type: ignore[assignment]

from agentmemory_server import errors
from agentmemory_server.errors import Unavailable

# The longest sleep between tries. A waiting writer sleeps this long at most after the holder
# releases, and the lock is busy most of the time when writers queue (measured: 8 observe
# clients on two processes hold it half the time), so every millisecond lost between holders
# is throughput lost. A try costs a few microseconds, so polling this often is cheap.
MAX_POLL_SECONDS = 0.0003


class ProcessWriteGate:
    """An exclusive lock on ``<database>.writer-lock`` held around each write transaction.

    The file is opened per process (a descriptor inherited across ``fork`` would share one lock
    between parent and child) and the lock is taken while the caller holds its in-process
    writer lock, so one thread per process ever waits on it.
    """

    def __init__(self, database: Path, *, timeout: float = 30.0):
        self.path = Path(f"{database}.writer-lock")
        self.timeout = timeout
        self._fd: int | None = None
        self._pid = 0
        self._guard = threading.Lock()

    def _descriptor(self) -> int:
        with self._guard:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            return self._fd

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (default: the gate's own)."""
        if fcntl is None:
            return
        fd = self._descriptor()
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        pause = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            # Bounded: a writer that holds the lock this long is stuck or suspended, and a
            # request must fail clearly rather than hang (a blocking flock has no timeout).
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"another process held the database's write lock ({self.path}) past this write's wait for it "
                    f"({wait:.1f} s); retry shortly",
                    code=errors.DATABASE_BUSY,
                    retry_after=1,
                )
            time.sleep(pause)
            pause = min(pause * 2, MAX_POLL_SECONDS)

    def __enter__(self) -> ProcessWriteGate:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def release(self) -> None:
        if fcntl is not None and self._fd is not None and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._guard:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None
