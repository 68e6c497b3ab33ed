"""Local snapshots of the database, and restoring the last good state.

``take`` writes ``<dir>/agentmemory-<UTC time>.db`` through SQLite's online backup API (a
consistent copy while the server writes), checks its integrity, and only then prunes the oldest
beyond ``keep``, so a damaged database never rotates the good snapshots out. It checks free
space first: a snapshot is skipped, with a clear error, when it would leave less than the
reserve free on the disk (backups never fill the disk the database needs).

``restore_last_good`` is ``agentmemory restore --from-backup``: the newest snapshot that passes
its integrity check, locally or in the HF dataset (whichever is newer), replaces the database;
the replaced file is kept as ``<db>.pre-restore``. It refuses while the server has the file
open, and refuses to replace a database that passes its integrity check unless ``force``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from agentmemory_server.storage.sqlite import hf_sync
from agentmemory_server.storage.sqlite.backup_files import directory_lock, file_lock, remove_leftovers
from agentmemory_server.storage.sqlite.faults import disk_usage
from agentmemory_server.storage.sqlite.hf_sync import Refused, SyncError

PREFIX = "agentmemory-"
PARTIAL_PATTERN = f".{PREFIX}*.db.partial"  # a snapshot being written (or left by a killed run)
log = logging.getLogger("agentmemory.backup")


class NoRoom(SyncError):
    """Not enough free space for a snapshot; nothing was written."""


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def snapshots(directory: Path) -> list[Path]:
    """Local snapshots, newest first (their names sort in time order)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{PREFIX}*.db"), reverse=True)


def ensure_room(db: Path, directory: Path, reserve_bytes: int) -> int:
    """:return: the bytes a snapshot of ``db`` may take (file + WAL: an upper bound).
    :raise NoRoom: taking it would leave less than ``reserve_bytes`` free."""
    needed = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    free = disk_usage(directory).free
    if free - needed < reserve_bytes:
        raise NoRoom(
            f"not taking a snapshot of {db}: it needs up to {_mb(needed)} and {directory} has {_mb(free)} free "
            f"(at least {_mb(reserve_bytes)} must stay free); free some space or point AGENTMEMORY_LOCAL_BACKUP_DIR "
            "at another disk"
        )
    return needed


def take(db: Path, directory: Path, *, keep: int, reserve_bytes: int) -> dict[str, Any]:
    """A verified snapshot of ``db`` in ``directory``; the oldest beyond ``keep`` are pruned.

    :raise NoRoom: not enough free space (nothing written).
    :raise SyncError: no database, or the copy failed its integrity check (nothing kept).
    """
    if not db.exists():
        raise SyncError(f"no database at {db}: nothing to snapshot")
    with directory_lock(directory):
        remove_leftovers(directory, PARTIAL_PATTERN)  # before ensure_room: a killed run's copy holds room
        return _take(db, directory, keep=keep, reserve_bytes=reserve_bytes)


def _take(db: Path, directory: Path, *, keep: int, reserve_bytes: int) -> dict[str, Any]:
    ensure_room(db, directory, reserve_bytes)
    final = directory / f"{PREFIX}{hf_sync.stamp(time.time())}.db"
    partial = directory / f".{final.name}.partial"
    try:
        info = hf_sync.snapshot(db, partial)  # backup API, then integrity_check of the copy
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    pruned = [str(p) for p in snapshots(directory)[keep:]]
    for name in pruned:
        Path(name).unlink(missing_ok=True)
    log.info("local snapshot %s (%d bytes), pruned %d", final, info["size"], len(pruned))
    return {
        "status": "snapshot",
        "file": str(final),
        "size": info["size"],
        "schemaVersion": info["schemaVersion"],
        "tables": info["tables"],
        "pruned": pruned,
    }


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def problems_of(db: Path) -> list[str]:
    """``["ok"]`` for a sound database file, else what quick_check (or opening it) found."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]


def newest_good(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest local snapshot that passes ``PRAGMA integrity_check`` (damaged ones are skipped,
    with a warning), and its description."""
    for candidate in snapshots(directory):
        try:
            return candidate, hf_sync.inspect(candidate)
        except SyncError as exc:
            log.warning("skipping local snapshot %s: %s", candidate.name, exc)
    return None


def _taken_at(snapshot: Path) -> float:
    stamp = snapshot.name[len(PREFIX) : -len(".db")]
    return datetime.strptime(stamp[:-1] + "+0000", "%Y%m%dT%H%M%S.%f%z").timestamp()


def restore_last_good(db: Path, directory: Path, hub: hf_sync.Config | None, *, force: bool = False) -> dict[str, Any]:
    """Replace ``db`` with the newest good backup: a local snapshot in ``directory``, or the HF
    dataset's latest (``hub`` configured) when that one is newer.

    :raise Refused: ``db`` passes its integrity check (use ``force``).
    :raise SyncError: no backup anywhere, the server has the file open, or a Hub failure.
    """
    if db.exists() and not force and problems_of(db) == ["ok"]:
        raise Refused(
            f"{db} passes its integrity check: restoring would throw away every change since the backup. "
            "Use `restore --from-backup --force` to do it anyway."
        )
    if hf_sync.db_in_use(db):
        raise SyncError(f"{db} is open in another process (is the server running?); stop it first")
    local = newest_good(directory)
    remote_at = hf_sync.latest_backup_time(hub) if hub is not None and hub.repo else None
    if local is None and remote_at is None:
        unset = "" if hub and hub.repo else " and AGENTMEMORY_DATASET_REPO is unset"
        raise SyncError(f"nothing to restore from: no good snapshot in {directory}{unset}")
    reason = "the database is damaged" if db.exists() and not force else "--force" if db.exists() else "no database"
    if local is None or (remote_at is not None and remote_at > _taken_at(local[0])):
        assert hub is not None
        result = hf_sync.restore(hub, force=True)
        return {**result, "source": "hf", "reason": reason}
    snapshot, info = local
    with file_lock(db), tempfile.TemporaryDirectory(dir=db.parent, prefix=hf_sync.RESTORE_SCRATCH) as scratch:
        copy = Path(scratch) / db.name
        shutil.copyfile(snapshot, copy)  # the snapshot itself stays, for the next time
        kept = hf_sync.install(copy, db)
    log.warning("restored %s from local snapshot %s (%s)", db, snapshot, reason)
    return {
        "status": "restored",
        "source": "local",
        "file": str(snapshot),
        "size": info["size"],
        "tables": info["tables"],
        "kept": str(kept) if kept else None,
        "reason": reason,
    }
