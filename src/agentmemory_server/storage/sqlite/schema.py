"""The SQLite file's schema as a store opens it: the check before a server starts (``preflight``),
the migrations applied at open (``migrate``), and the guard of an opening step that needs the
write lock (``write_lock_waited``).

``migrations.py`` lists the migrations; this module runs them, one transaction each, and refuses
a file written by a newer schema (``SchemaTooNew``) before anything is written into it. Kept
apart from database.py, which owns the open file's connections and transactions.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agentmemory_server import errors
from agentmemory_server.errors import AppError
from agentmemory_server.storage import owed_indexes
from agentmemory_server.storage.sqlite.faults import classify
from agentmemory_server.storage.sqlite.migrations import MIGRATIONS


class SchemaTooNew(AppError):
    status = 503
    code = errors.SCHEMA_TOO_NEW


def preflight(path: Path) -> None:
    """Check, before a server starts, that ``path`` can be served: not written by a newer schema,
    and a SQLite database at all. A missing file is fine (it will be created).

    :raise SchemaTooNew: written by a newer version of this server.
    :raise AppError: ``database_damaged`` (not a database), ``storage_read_only``, ...
    """
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(str(path), timeout=30)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise classify(exc, path) or exc from None
    if version > len(MIGRATIONS):
        raise _too_new(path, version)


def _too_new(path: Path, version: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"{path} has schema version {version} but this server knows {len(MIGRATIONS)}: it was written by a "
        "newer agentmemory-python. Upgrade agentmemory-python before opening it (a downgrade would lose data); "
        "nothing was changed",
        details={"schemaVersion": version, "supported": len(MIGRATIONS)},
    )


def migrate(conn: sqlite3.Connection, path: Path, lock: threading.RLock, lock_wait: float) -> None:
    """Apply the migrations ``conn``'s file lacks, one transaction each, under this process's
    writer ``lock`` and the file's write lock (waited for at most ``lock_wait``).

    :raise SchemaTooNew: the file was written by a newer version of this server.
    :raise owed_indexes.LockHeldAtOpen: another process held the write lock past the wait.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise _too_new(path, version)
    while version < len(MIGRATIONS):
        with lock:
            with write_lock_waited(path, lock_wait, f"schema migration {version + 1}"):
                conn.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another process (a worker starting at the
                # same moment) may have applied it meanwhile.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < len(MIGRATIONS):
                    MIGRATIONS[version][1](conn)
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise


@contextmanager
def write_lock_waited(path: Path, lock_wait: float, step: str) -> Iterator[None]:
    """Run ``step`` of opening the store at ``path``, which needs the write lock.

    :raise owed_indexes.LockHeldAtOpen: another process held the write lock past this
        opener's busy wait (``lock_wait``; a replace import holds it until it commits): a clear
        refusal naming the step, not a "database is locked" traceback.
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        if not errors.is_database_busy(classify(exc, path)):
            raise
        raise owed_indexes.LockHeldAtOpen(
            f"{step} of {path} waited over {lock_wait:g} s for the write lock another process holds "
            "(a replace import holds it until it commits); start again once it is done"
        ) from None
