"""Local snapshots of the database, and restoring the last good state.

``take`` writes ``<dir>/agentmemory-<UTC time>.db`` through SQLite's online backup API (a
consistent copy while the server writes), checks its integrity, and only then prunes the oldest
beyond ``keep``, so a damaged database never rotates the good snapshots out. It checks free
space first: a snapshot is skipped, with a clear error, when it would leave less than the
reserve free on the disk (backups never fill the disk the database needs).

The image store beside the database (``images/<2 hex>/<sha256>``, content-addressed) is carried
in ``<dir>/images/``, one store shared by every snapshot: before a snapshot takes its name, the
images it knows (not evicted) that the folder lacks are added (a hard link when the folder is on
the database's disk, else a copy), and pruning a snapshot removes the images no remaining
snapshot knows. A restore puts back the images the restored database knows and the server's
store lacks, each checked against its sha256 name.

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
from agentmemory_server.storage.sqlite.backup_files import (
    IMAGES_DIR,
    directory_lock,
    file_lock,
    image_ids,
    image_path,
    remove_leftovers,
    sha256_file,
)
from agentmemory_server.storage.sqlite.faults import disk_usage
from agentmemory_server.storage.sqlite.hf_sync import Refused, SyncError

PREFIX = "agentmemory-"
PARTIAL_PATTERN = f".{PREFIX}*.db.partial"  # a snapshot being written (or left by a killed run)
IMAGE_PARTIAL_PATTERN = f"{IMAGES_DIR}/*/.tmp-*"  # an image being copied in (or left by a killed run)
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
        remove_leftovers(directory, IMAGE_PARTIAL_PATTERN)
        return _take(db, directory, keep=keep, reserve_bytes=reserve_bytes)


def _take(db: Path, directory: Path, *, keep: int, reserve_bytes: int) -> dict[str, Any]:
    ensure_room(db, directory, reserve_bytes)
    final = directory / f"{PREFIX}{hf_sync.stamp(time.time())}.db"
    partial = directory / f".{final.name}.partial"
    try:
        info = hf_sync.snapshot(db, partial)  # backup API, then integrity_check of the copy
        # Before the snapshot takes its name: a snapshot on disk always has its images beside it.
        images = carry_images(db, image_ids(partial), directory, reserve_bytes)
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
    images["pruned"] = prune_images(directory)
    log.info("local snapshot %s (%d bytes), pruned %d", final, info["size"], len(pruned))
    return {
        "status": "snapshot",
        "file": str(final),
        "size": info["size"],
        "schemaVersion": info["schemaVersion"],
        "tables": info["tables"],
        "pruned": pruned,
        "images": images,
    }


# -- the images the snapshots know ----------------------------------------------------------------


def _store_path(directory: Path, image_id: str) -> Path:
    """Where ``directory``'s shared image folder keeps an image (the server's own layout)."""
    return directory / IMAGES_DIR / image_id[:2] / image_id


def _place(source: Path, target: Path, reserve_bytes: int | None) -> None:
    """Put ``source``'s bytes at ``target`` under a temporary name first, so a reader never sees
    half a file: a hard link (no room taken; an image file is never changed in place, only
    written whole and deleted), else a copy, refused when it would eat into ``reserve_bytes``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".tmp-{target.name}")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # another disk (EXDEV), or a filesystem without hard links
        size = source.stat().st_size
        if reserve_bytes is not None and disk_usage(target.parent).free - size < reserve_bytes:
            raise NoRoom(
                f"not copying image {target.name} ({_mb(size)}) into {target.parent}: it would leave less than "
                f"{_mb(reserve_bytes)} free; the snapshot was not kept"
            ) from None
        try:
            shutil.copyfile(source, temporary)
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, target)


def carry_images(db: Path, wanted: set[str], directory: Path, reserve_bytes: int) -> dict[str, int]:
    """Add the ``wanted`` images the snapshot folder lacks, from the server's store beside ``db``."""
    added = missing = 0
    for image_id in sorted(wanted):
        target = _store_path(directory, image_id)
        if target.is_file():
            continue
        source = image_path(db, image_id)
        if not source.is_file():
            missing += 1  # deleted or evicted since the snapshot's read: its record keeps the reference
            continue
        _place(source, target, reserve_bytes)
        added += 1
    if missing:
        log.warning("local snapshot: %d image(s) the database knows are not in %s", missing, db.parent / IMAGES_DIR)
    return {"images": len(wanted), "added": added, "missing": missing}


def prune_images(directory: Path) -> int:
    """Remove the images no remaining snapshot knows; none while a snapshot cannot be read (what
    it knows is then unknown, and a missing image cannot be made again)."""
    store = directory / IMAGES_DIR
    if not store.is_dir():
        return 0
    known: set[str] = set()
    try:
        for snapshot_file in snapshots(directory):
            known |= image_ids(snapshot_file)
    except SyncError as exc:
        log.warning("local snapshot: not pruning images: %s", exc)
        return 0
    removed = 0
    for sub in sorted(store.iterdir()):
        for entry in sorted(sub.iterdir()) if sub.is_dir() else []:
            if entry.name not in known and not entry.name.startswith(".tmp-"):
                entry.unlink(missing_ok=True)
                removed += 1
        with contextlib.suppress(OSError):
            sub.rmdir()  # only when empty
    return removed


def restore_images(db: Path, directory: Path) -> dict[str, int]:
    """Put back the images the (restored) database knows and the server's store lacks, from the
    snapshot folder, each checked against its sha256 name."""
    restored = missing = 0
    for image_id in sorted(image_ids(db)):
        target = image_path(db, image_id)
        if target.is_file():
            continue
        source = _store_path(directory, image_id)
        if not source.is_file():
            missing += 1
            continue
        if sha256_file(source) != image_id:
            log.warning("local snapshot image %s does not match its sha256 name; not restored", source)
            missing += 1
            continue
        _place(source, target, None)
        restored += 1
    if missing:
        log.warning("%d image(s) the restored database knows are in no snapshot (records keep the reference)", missing)
    return {"restored": restored, "missing": missing}


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


def newest_taken_at(directory: Path) -> float | None:
    """When the newest local snapshot in ``directory`` was taken (epoch seconds, from its name)."""
    found = snapshots(directory)
    return _taken_at(found[0]) if found else None


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
    return _restore_snapshot(db, directory, snapshot, info, reason)


def _restore_snapshot(db: Path, directory: Path, snapshot: Path, info: dict[str, Any], reason: str) -> dict[str, Any]:
    """Install a copy of the local ``snapshot`` (with its images) in place of ``db``."""
    # The folder's lock too: a snapshot taken meanwhile (`backup --local`) must not prune the images read here.
    with (
        file_lock(db),
        directory_lock(directory),
        tempfile.TemporaryDirectory(dir=db.parent, prefix=hf_sync.RESTORE_SCRATCH) as scratch,
    ):
        copy = Path(scratch) / db.name
        shutil.copyfile(snapshot, copy)  # the snapshot itself stays, for the next time
        kept = hf_sync.install(copy, db)
        images = restore_images(db, directory)
    log.warning("restored %s from local snapshot %s (%s)", db, snapshot, reason)
    return {
        "status": "restored",
        "source": "local",
        "file": str(snapshot),
        "size": info["size"],
        "tables": info["tables"],
        "kept": str(kept) if kept else None,
        "reason": reason,
        "images": images,
    }
