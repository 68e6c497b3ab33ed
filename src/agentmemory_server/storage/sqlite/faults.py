"""Storage faults: what a failing disk or a damaged file means to a client.

SQLite reports a full disk as ``SQLITE_FULL``, a filesystem that went read-only as
``SQLITE_READONLY*`` or ``SQLITE_IOERR_WRITE`` (EROFS on a write), and damage as
``SQLITE_CORRUPT`` / ``SQLITE_NOTADB``. Unclassified, each of them used to reach the client as
a 500. ``classify`` turns them into the catalogue's codes (507 ``disk_full``, 503
``storage_read_only`` / ``storage_io_error`` / ``database_damaged`` / ``database_busy``), so a
client knows the write was not stored and whether retrying can help.

``FreeSpace`` is the guard in front of every write transaction: below the reserve, writes are
refused before SQLite runs out of room mid-transaction, which keeps space for the WAL
checkpoint and lets writes resume by themselves once space returns.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, InsufficientStorage, Unavailable
from agentmemory_server.storage.file_locks import try_lock

log = logging.getLogger("agentmemory.storage")
RECENTLY_FULL_SECONDS = 30.0
DAMAGE_MARKER_SUFFIX = ".damaged"  # backup_files.py (standalone) spells it out too
RESTORE_HINT = (
    "stop the server and run `agentmemory restore --from-backup` (the newest good local snapshot or "
    "HF dataset backup; the damaged file is kept as <db>.pre-restore), or salvage it with "
    "`sqlite3 agentmemory.db .recover`"
)


@dataclass(frozen=True)
class DiskUsage:
    free: int
    total: int
    read_only: bool


def disk_usage(path: Path) -> DiskUsage:
    """Free bytes for an unprivileged writer (``f_bavail``), total size and the read-only flag
    of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return DiskUsage(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, bool(st.f_flag & os.ST_RDONLY))


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def disk_full(path: Path, free: int | None = None, reserve: int = 0) -> InsufficientStorage:
    where = path.parent
    if free is None:
        message = f"the disk holding {path} is full: nothing was written"
    else:
        message = (
            f"only {_mb(free)} free on the disk holding {where} (writes stop below "
            f"AGENTMEMORY_DISK_RESERVE_MB={reserve // 1048576}): nothing was written"
        )
    details: dict[str, Any] = {"fix": f"free space next to {path} (or move AGENTMEMORY_DATA_DIR)"}
    if free is not None:
        details |= {"freeBytes": free, "reserveBytes": reserve}
    return InsufficientStorage(message + "; reads still work and writes resume once space is freed", details=details)


def damaged(path: Path, problems: list[str]) -> Unavailable:
    return Unavailable(
        f"the database {path} is damaged ({'; '.join(problems[:3])[:300]}): writes are refused",
        code=errors.DATABASE_DAMAGED,
        details={"problems": problems[:20], "fix": RESTORE_HINT},
    )


def classify(exc: BaseException, path: Path) -> AppError | None:
    """The client-facing error a SQLite failure stands for, or None for anything else (a bug)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name == "SQLITE_FULL" or "database or disk is full" in text:
        return disk_full(path)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "disk image is malformed" in text:
        return damaged(path, [text])
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
        return Unavailable("the database is busy; retry shortly", code=errors.DATABASE_BUSY, retry_after=1)
    if name.startswith("SQLITE_READONLY") or name.startswith("SQLITE_IOERR") or name == "SQLITE_CANTOPEN":
        return _io_error(path, text)
    return None


def classify_os_error(exc: BaseException, path: Path) -> AppError | None:
    """What a failed write of a file beside the database means (None: not a storage fault).
    Native libraries (faiss) report the errno only in their message."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or os.strerror(errno.ENOSPC) in text:
        return disk_full(path)
    if code == errno.EROFS or os.strerror(errno.EROFS) in text:
        return storage_read_only(path)
    return None


def writable(directory: Path) -> bool:
    """Whether a file can be created in ``directory`` right now. statvfs does not always tell:
    ext4 turned read-only by an error (errors=remount-ro) still reports ``rw`` there."""
    probe = directory / f".agentmemory-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        return exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM)
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def read_only(path: Path) -> bool:
    try:
        return disk_usage(path.parent).read_only or not writable(path.parent)
    except OSError:
        return False


def storage_read_only(path: Path) -> Unavailable:
    return Unavailable(
        f"the filesystem holding {path} is read-only: nothing was written; reads still work",
        code=errors.STORAGE_READ_ONLY,
        details={"fix": "check the disk (dmesg), repair it and mount it read-write, then restart the server"},
        retry_after=60,
    )


def _io_error(path: Path, text: str) -> AppError:
    if read_only(path):
        return storage_read_only(path)
    return Unavailable(
        f"the disk holding {path} reported an I/O error ({text}): nothing was written",
        code=errors.STORAGE_IO_ERROR,
        details={"fix": "check the disk (dmesg) and the server log"},
        retry_after=30,
    )


class FreeSpace:
    """Free-space thresholds of the database's disk.

    :param path: the database file (its directory's filesystem is measured).
    :param reserve: writes are refused below this many free bytes.
    :param warn: /health and the viewer warn below this many free bytes.
    """

    def __init__(self, path: Path, *, reserve: int, warn: int):
        self.path = path
        self.reserve = reserve
        self.warn = max(warn, reserve)
        self.refused = 0  # writes refused for lack of space since start
        self.last_full: float | None = None  # monotonic time SQLite last found the disk full
        self.read_only_seen = False  # a write failed on a read-only filesystem (until one succeeds)

    def note_full(self) -> None:
        self.refused += 1
        self.last_full = time.monotonic()

    def note_written(self) -> None:
        """A write committed: the disk had room and the filesystem took it, whatever failed before."""
        self.last_full = None
        self.read_only_seen = False

    def check_write(self) -> None:
        """:raise InsufficientStorage: less than the reserve is free."""
        if self.reserve <= 0:
            return
        try:
            free = disk_usage(self.path.parent).free
        except OSError:
            return  # cannot measure: let SQLite find out
        if free < self.reserve:
            self.note_full()
            raise disk_full(self.path, free, self.reserve)

    def check_room(self, needed: int, what: str) -> None:
        """Before writing a file of up to ``needed`` bytes (``what``) beside the database.

        :raise InsufficientStorage: it would leave less than the reserve free (nothing written).
        """
        try:
            free = disk_usage(self.path.parent).free
        except OSError:
            return
        if free - needed < self.reserve:
            raise InsufficientStorage(
                f"not writing {what} ({_mb(needed)}): {_mb(free)} free on the disk holding {self.path.parent} "
                f"and at least {_mb(self.reserve)} must stay free; it is written once space is freed",
                details={"fix": f"free space next to {self.path}", "freeBytes": free, "neededBytes": needed},
            )

    def health(self) -> dict[str, Any]:
        usage = disk_usage(self.path.parent)
        recently_full = self.last_full is not None and time.monotonic() - self.last_full < RECENTLY_FULL_SECONDS
        if usage.read_only or self.read_only_seen:
            status, message = "critical", "the filesystem is read-only: writes are refused"
        elif usage.free < self.reserve:
            status, message = "critical", f"{_mb(usage.free)} free: writes are refused until space is freed"
        elif recently_full and usage.free < self.warn:
            # No write has committed since the disk was found full: the space measured may not last.
            assert self.last_full is not None
            ago = time.monotonic() - self.last_full
            status, message = "critical", f"a write found the disk full {ago:.0f} s ago; {_mb(usage.free)} free now"
        elif usage.free < self.warn:
            limit = f"below {_mb(self.reserve)}" if self.reserve else "when the disk is full"
            status, message = "degraded", f"only {_mb(usage.free)} free: writes stop {limit}"
        else:
            status, message = "healthy", f"{_mb(usage.free)} free"
        return {
            "status": status,
            "message": message,
            "path": str(self.path.parent),
            "freeBytes": usage.free,
            "totalBytes": usage.total,
            "readOnly": usage.read_only or self.read_only_seen,
            "warnBelowBytes": self.warn,
            "reserveBytes": self.reserve,
            "refusedWrites": self.refused,
        }


class DamageMarker:
    """``<db>.damaged``: damage one process found, seen by every process using the file.

    The periodic check runs in one process of those using the file (``CheckStamp``), and a
    request may hit a damaged page in any server process: each of them writes this file, and every
    process looks for it (at most once a second) before a write and in /health, so all of them
    stop writing within a second. A restore removes it (``backup_files.install``), and a start-up
    check that finds the file sound removes a stale one.
    """

    POLL_SECONDS = 1.0

    def __init__(self, db: Path):
        self.path = Path(str(db) + DAMAGE_MARKER_SUFFIX)
        self._polled = 0.0

    def write(self, damage: dict[str, Any]) -> None:
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            partial.write_text(json.dumps(damage))
            os.replace(partial, self.path)
        except OSError as exc:  # a full or read-only disk: this process still refuses writes
            log.warning("could not write %s: %s", self.path, exc)
            partial.unlink(missing_ok=True)

    def poll(self) -> dict[str, Any] | None:
        """The damage another process recorded (None: none, or looked less than a second ago)."""
        now = time.monotonic()
        if now - self._polled < self.POLL_SECONDS:
            return None
        self._polled = now
        try:
            found = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # half-written by hand, unreadable: still damage
            found = {"problems": [f"unreadable damage marker {self.path}: {exc}"]}
        return found if isinstance(found, dict) and found.get("problems") else None

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", self.path, exc)


class CheckStamp:
    """``<db>.integrity-check``: when the last periodic integrity check of the file passed, in any
    process using it. The file is also the lock a process holds while it runs that check: the
    stamp is read and written only through the locked descriptor, so nobody reads it half-written
    (and one torn by a crash reads as no stamp: the next process checks)."""

    def __init__(self, db: Path):
        self.path = Path(f"{db}.integrity-check")

    def claim(self) -> int | None:
        """The lock as a descriptor, None while another process checks (OSError: no lock file)."""
        return try_lock(self.path)

    @staticmethod
    def passed_within(fd: int, seconds: float) -> dict[str, Any] | None:
        """The last check recorded, if it passed less than ``seconds`` ago by the wall clock."""
        try:
            stamp = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
        except (OSError, ValueError):
            return None
        if not isinstance(stamp, dict) or not isinstance(stamp.get("passed"), int | float):
            return None
        age = time.time() - stamp["passed"]
        return stamp if 0 <= age < seconds and isinstance(stamp.get("check"), dict) else None

    @staticmethod
    def record_pass(fd: int, check: dict[str, Any]) -> None:
        try:
            data = json.dumps({"passed": time.time(), "pid": os.getpid(), "check": check}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:  # a full disk: the other processes check for themselves next time
            log.warning("could not record the integrity check's pass: %s", exc)
