"""Storage: the repository interfaces (interfaces.py) and their implementations.

``open_database`` is the one place a backend is chosen; everything else depends only on the
protocols in ``interfaces.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from agentmemory_server.storage.interfaces import Database, RecordIndex
from agentmemory_server.storage.sqlite import Database as SqliteDatabase
from agentmemory_server.storage.sqlite import preflight as sqlite_preflight


def open_database(
    path: Path,
    *,
    now: Callable[[], str],
    record_indexes: Iterable[RecordIndex] = (),
    reserve_bytes: int = 0,
    warn_bytes: int = 0,
    check_seconds: float = 0.0,
    fsync_every_commit: bool = False,
    queue_limits: Mapping[str, int] | None = None,
) -> Database:
    """Open (creating and migrating as needed) the database at ``path``: writes are refused
    while less than ``reserve_bytes`` is free, health warns below ``warn_bytes``, and an
    integrity check of at most ``check_seconds`` runs first; ``fsync_every_commit`` makes every
    commit durable against OS and disk failures too; ``queue_limits`` bound the durable queues
    (see ``sqlite.Database``)."""
    return SqliteDatabase(
        path,
        now=now,
        record_indexes=record_indexes,
        reserve_bytes=reserve_bytes,
        warn_bytes=warn_bytes,
        check_seconds=check_seconds,
        fsync_every_commit=fsync_every_commit,
        queue_limits=queue_limits,
    )


def preflight(path: Path) -> None:
    """Before serving: refuse a database a newer version wrote, or a file that is no database
    (raises the AppError that says so and what to do)."""
    sqlite_preflight(path)
