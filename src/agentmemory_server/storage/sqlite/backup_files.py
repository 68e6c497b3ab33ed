"""The backup sidecar's work on local files: fingerprints, locks, consistent snapshots through
SQLite's backup API, installing a restored file, and where images live. Part of ``hf_sync``."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows; locks become no-ops there
    fcntl = None  # type: ignore[assignment]

from agentmemory_server.storage.sqlite.backup_config import SyncError

LATEST = "agentmemory.db"
# The server's image store (capture/image_store.py; not imported: this process stays standalone).
IMAGES_DIR = "images"
IMAGES_PREFIX = IMAGES_DIR + "/"
DAMAGE_MARKER = ".damaged"  # faults.DamageMarker: a restored file is no longer damaged
log = logging.getLogger("agentmemory.sync")

# -- the local database file -------------------------------------------------------------------------


def _sidecar(db: Path, suffix: str) -> Path:
    return db.with_name(db.name + suffix)


def _quick_hash(db: Path) -> str:
    """Fingerprint of the database's on-disk state: inode, size and mtime of the file and its
    WAL. Any committed write changes one of them, so equal fingerprints mean "unchanged"
    without reading the data. An empty WAL holds nothing and counts as no WAL: opening the
    database (as the snapshot does) may create one without changing any data."""
    parts = []
    for path in (db, _sidecar(db, "-wal")):
        try:
            st = path.stat()
        except FileNotFoundError:
            parts.append("-")
            continue
        empty_wal = path != db and st.st_size == 0
        parts.append("-" if empty_wal else f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def last_change(db: Path) -> float:
    """When the database (or its WAL) was last written, as a Unix time."""
    times = [p.stat().st_mtime for p in (db, _sidecar(db, "-wal")) if p.exists()]
    return max(times) if times else 0.0


def db_in_use(db: Path) -> bool:
    """True when another process has the database open. Every SQLite connection to a WAL
    database holds a shared lock on byte 128 of the ``-shm`` file (the "dead man switch"), so
    an exclusive lock there is only granted when nobody else has it open."""
    shm = _sidecar(db, "-shm")
    if fcntl is None or not shm.exists():
        return False
    fd = os.open(shm, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe lock
    return False


@contextlib.contextmanager
def file_lock(db: Path) -> Iterator[None]:
    """Serialise backup/restore runs on one database (the loop and a manual run, say)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(_sidecar(db, ".sync.lock"), "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Serialise the local snapshots written into ``directory`` (the server's periodic one and
    ``agentmemory backup --local``), so a leftover found while holding it is nobody's work."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = os.open(directory, os.O_RDONLY)  # the folder itself: a refused snapshot writes no file
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def remove_leftovers(directory: Path, pattern: str) -> list[str]:
    """Remove the scratch files and folders matching ``pattern`` in ``directory``: what a run
    that was killed (SIGKILL, OOM, a power cut) left behind, each up to a whole database copy
    that nothing else would ever delete. Call it only while holding the lock every run that
    writes such names holds (``file_lock``, ``directory_lock``): then none is in use."""
    removed = []
    for leftover in sorted(directory.glob(pattern)) if directory.is_dir() else []:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover.name)
    if removed:
        log.warning("removed %d leftover(s) of an interrupted run in %s: %s", len(removed), directory, removed)
    return removed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect(path: Path) -> dict[str, Any]:
    """Integrity-check a database file (read-only) and describe it.

    :raise SyncError: not a database, or ``PRAGMA integrity_check`` is not ok.
    """
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            tables = {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise SyncError(f"{path.name} is not a usable SQLite database: {exc}") from None
    if result != ["ok"]:
        raise SyncError(f"{path.name} failed PRAGMA integrity_check: {'; '.join(result[:5])}")
    return {"sha256": sha256_file(path), "size": path.stat().st_size, "schemaVersion": version, "tables": tables}


def check_room(db: Path, reserve_bytes: int) -> None:
    """Refuse a snapshot next to ``db`` that would leave less than ``reserve_bytes`` free: the
    copy is at most the database plus its WAL, and the disk is the one the server writes to.

    :raise SyncError: not enough room (nothing was written).
    """
    needed = sum(p.stat().st_size for p in (db, _sidecar(db, "-wal")) if p.exists())
    free = shutil.disk_usage(db.parent).free
    if free - needed < reserve_bytes:
        raise SyncError(
            f"not enough free space for a snapshot of {db}: it needs up to {needed // 1048576 + 1} MB, "
            f"{free // 1048576} MB are free and {reserve_bytes // 1048576} MB must stay free "
            "(AGENTMEMORY_DISK_RESERVE_MB); nothing was written"
        )


def snapshot(db: Path, dest: Path) -> dict[str, Any]:
    """A consistent copy of ``db`` at ``dest`` through SQLite's online backup API, switched to
    rollback-journal mode so it is one self-contained file, cleared of deleted data
    (``scrub``), then integrity-checked."""
    try:
        source = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            target = sqlite3.connect(dest)
            try:
                source.backup(target)  # all pages in one step: one read transaction, one state
                target.execute("PRAGMA journal_mode = DELETE")
                scrub(target)
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise SyncError(f"could not snapshot {db}: {exc}") from None
    return inspect(dest)


def scrub(copy: sqlite3.Connection) -> None:
    """Leave nothing deleted in a snapshot that leaves this disk. A page-for-page copy carries
    what the database deleted but has not overwritten yet: an FTS5 delete only adds a tombstone,
    so a forgotten record's words stay in the full-text index's segments until they are merged,
    and freed pages keep their old bytes. ``optimize`` merges every full-text index into one
    segment without the deleted entries, and ``VACUUM`` rewrites the file without free pages. On
    the copy only: the server's file is never held up by it."""
    full_text = [
        name
        for (name,) in copy.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%USING fts5%'"
        )
    ]
    for name in full_text:
        copy.execute(f'INSERT INTO "{name}"("{name}") VALUES (\'optimize\')')
    copy.commit()
    copy.execute("VACUUM")


def install(new: Path, db: Path) -> Path | None:
    """Atomically put ``new`` in place of ``db``. The old database (with its WAL) is kept as
    ``<db>.pre-restore``; stale ``-wal``/``-shm`` files never meet the new file."""
    kept = None
    if db.exists():
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(db)  # fold the WAL into the file while we can
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        kept = _sidecar(db, ".pre-restore")
        for stale in (kept, _sidecar(kept, "-wal"), _sidecar(kept, "-shm")):
            stale.unlink(missing_ok=True)
        try:
            os.link(db, kept)
        except OSError:
            shutil.copy2(db, kept)
        if _sidecar(db, "-wal").exists():
            os.replace(_sidecar(db, "-wal"), _sidecar(kept, "-wal"))
    for stale in (_sidecar(db, "-wal"), _sidecar(db, "-shm"), _sidecar(db, DAMAGE_MARKER)):
        stale.unlink(missing_ok=True)
    with open(new, "rb+") as handle:  # on disk before it takes the real name
        os.fsync(handle.fileno())
    os.replace(new, db)
    with contextlib.suppress(OSError):
        fd = os.open(db.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return kept


# -- the image store ---------------------------------------------------------------------------------------


def image_ids(snapshot_db: Path) -> set[str]:
    """The images a database file knows and still keeps (an older schema has none)."""
    try:
        conn = sqlite3.connect(f"{snapshot_db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images'").fetchone():
                return set()
            return {r[0] for r in conn.execute("SELECT id FROM images WHERE evicted_at IS NULL")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise SyncError(f"could not list the images of {snapshot_db.name}: {exc}") from None


def image_path(db: Path, image_id: str) -> Path:
    return db.parent / IMAGES_DIR / image_id[:2] / image_id


def remote_image_name(image_id: str) -> str:
    return f"{IMAGES_PREFIX}{image_id[:2]}/{image_id}"
