"""Where background work runs, and how it keeps out of the way of requests.

``AGENTMEMORY_BACKGROUND`` decides where the loops run (embedding the backlog, LLM jobs,
periodic jobs):

- ``process`` (default): a separate worker process (``agentmemory worker``) that the server
  spawns, restarts when it dies and stops on shutdown (``adapters/supervisor.py``). It runs at
  the lowest CPU priority and has its own GIL, so embedding cannot take a request's core or
  interpreter; request processes run none of those loops.
- ``external``: the same, but the operator runs ``agentmemory worker`` (one per machine, e.g.
  beside several server processes or nodes); the server spawns nothing.
- ``inline``: the loops run as threads inside the server process (tests that need determinism,
  or a single-process deployment).

``AGENTMEMORY_BACKGROUND_JOBS=false`` turns every loop off (tests drive the work by hand, the
CLI's admin commands do theirs and exit). Only the capture spool still drains: request processes
do it after a write commits (capture/spool_drain.py), so hook events kept on disk are not left there.

The **activity board** tells the worker when requests are being served: each request-serving
process keeps a 24-byte file in ``<database>.activity/`` (requests in flight, monotonic time the
last one ended, records its bounded embedding backlog shed; written through ``mmap``, no system
call per request), and the worker reads them all. While any process is busy the worker embeds in
small slices and rests between them; when requests stop it drains at full speed. A process that
shed records (the backlog was full) tells the worker to queue them again once it has drained.
The board is per machine, which is where CPU contention is: several server processes and one
worker on a node share it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentmemory_server.kernel.util import process_alive

ROLES = ("server", "worker", "tool")
# A worker whose heartbeat is older than this counts as gone (it beats every 5 s).
WORKER_ALIVE_SECONDS = 30.0
# requests in flight, monotonic ns when the last one ended, embedding-backlog entries shed
_SLOT = struct.Struct("<qqq")


# How much later than a worker row's ``startedAt`` its process may seem to have started and
# still be that process: the boot time in /proc/stat is whole seconds and process start times
# are clock ticks, so the start time read back is only good to about a second.
START_TIME_SLACK_SECONDS = 5.0


def process_ended(host: Any, pid: Any, started_at: Any = None) -> bool:
    """Whether the process ``pid`` of ``host`` is known to have ended: on this host no process
    has that id any more, or only a zombie (killed, not yet reaped by its parent), or the
    process that has it now started after ``started_at`` (epoch seconds, when the ended one's
    runtime started, which is after its process did): the id was reused by another process.
    False where that is unknown (another host, no pid)."""
    if host != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    if not process_alive(pid):
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return False  # no /proc to tell more: it runs
    if fields[:1] and fields[0] in ("Z", "X"):
        return True
    began = _start_epoch(fields)
    if began is None or not isinstance(started_at, (int, float)):
        return False
    return began > started_at + START_TIME_SLACK_SECONDS


def process_start_epoch(pid: int) -> float | None:
    """When process ``pid`` of this host started, in epoch seconds (None: unknown, or no such
    process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return _start_epoch(stat.read().rsplit(")", 1)[1].split())
    except (OSError, IndexError):
        return None


def _start_epoch(stat_fields_after_name: list[str]) -> float | None:
    """When a process started, in epoch seconds, from the fields of its /proc/PID/stat after
    the command name (field 22 of the file, ``starttime``, is clock ticks since boot; the boot
    time is ``btime`` of /proc/stat). None when either cannot be read."""
    try:
        ticks = int(stat_fields_after_name[19])  # field 22; the list starts at field 3 (state)
        with open("/proc/stat", encoding="ascii", errors="replace") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def still_running(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workers (rows of ``JobQueue.workers``) whose process is not known to have ended: a
    worker killed on this host is gone at once, whatever its last heartbeat said (a replace
    import keeps the live ones from beating, so their beats alone cannot tell), and so is one
    whose pid now belongs to a process started after the worker's runtime (a reused pid)."""
    return [
        worker
        for worker in workers
        if not process_ended(worker.get("host"), worker.get("pid"), worker.get("startedAt"))
    ]


def runs_loops(background: str, background_jobs: bool, role: str) -> bool:
    """Do the background loops run in a process of ``role`` with these settings?"""
    if not background_jobs or role == "tool":
        return False
    return role == "worker" or background == "inline"


def board_dir(database_path: Path) -> Path:
    return Path(str(database_path) + ".activity")


class ActivityBoard:
    """This process's slot on the board (request-serving processes only)."""

    def __init__(self, database_path: Path):
        self.path = board_dir(database_path) / f"{os.getpid()}.bin"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as fh:
            fh.write(_SLOT.pack(0, time.monotonic_ns(), 0))
        self._file = open(self.path, "r+b")  # noqa: SIM115 - kept open for the mmap's lifetime
        self._map = mmap.mmap(self._file.fileno(), _SLOT.size)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False

    def begin(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._write(0, struct.pack("<q", self._in_flight))

    def end(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._write(0, struct.pack("<qq", self._in_flight, time.monotonic_ns()))

    def post_shed(self, shed: int) -> None:
        """How many embedding-backlog entries this process has shed so far."""
        with self._lock:
            self._write(16, struct.pack("<q", shed))

    def _write(self, offset: int, data: bytes) -> None:
        # A thread still running while the process shuts down (a follower between two steps)
        # finds the board gone: nothing to post any more, and no error to log for it.
        if not self._closed:
            self._map[offset : offset + len(data)] = data

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        try:
            self._map.close()
            self._file.close()
        finally:
            self.path.unlink(missing_ok=True)


def _slots(database_path: Path) -> Iterator[tuple[int, int, int, int]]:
    """(pid, in flight, last end, shed) of each live slot; slots of dead processes are removed."""
    try:
        entries = list(os.scandir(board_dir(database_path)))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            pid = int(entry.name.removesuffix(".bin"))
        except ValueError:
            continue
        if not process_alive(pid):
            Path(entry.path).unlink(missing_ok=True)
            continue
        try:
            with open(entry.path, "rb") as fh:
                in_flight, last_end, shed = _SLOT.unpack(fh.read(_SLOT.size))
        except (OSError, struct.error):  # being created, or an older server's shorter slot
            continue
        yield pid, in_flight, last_end, shed


def busy(database_path: Path, quiet_seconds: float) -> bool:
    """Is any request-serving process on this machine serving a request, or did one end less
    than ``quiet_seconds`` ago?"""
    now = time.monotonic_ns()
    return any(
        in_flight > 0 or now - last_end < quiet_seconds * 1e9 for _, in_flight, last_end, _ in _slots(database_path)
    )


def shed_by_process(database_path: Path) -> dict[int, int]:
    """Embedding-backlog entries shed so far by each live request-serving process."""
    return {pid: shed for pid, _, _, shed in _slots(database_path)}


def lower_priority(niceness: int = 19) -> None:
    """The whole process (and every thread it starts later) yields the CPU to others."""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(current, niceness))
    except (AttributeError, OSError):
        pass
