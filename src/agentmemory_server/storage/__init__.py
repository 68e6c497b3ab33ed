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
    lexical_engine: str = "tantivy",
    lexical_weights: Mapping[str, float] | None = None,
    background: bool = True,
) -> Database:
    """Open (creating and migrating as needed) the database at ``path``.

    :param reserve_bytes: writes are refused while less is free on its disk.
    :param warn_bytes: health warns while less is free.
    :param check_seconds: time budget of the integrity check run first.
    :param fsync_every_commit: every commit durable against OS and disk failures too.
    :param queue_limits: bounds of the durable queues (see ``sqlite.Database``).
    :param lexical_engine: ``tantivy`` (kept in ``<path>.tantivy``) or ``fts5``.
    :param lexical_weights: BM25 weight per text column; Tantivy applies them at indexing time.
    :param background: whether derived indexes may keep themselves up to date on threads.
    """
    return SqliteDatabase(
        path,
        now=now,
        record_indexes=record_indexes,
        reserve_bytes=reserve_bytes,
        warn_bytes=warn_bytes,
        check_seconds=check_seconds,
        fsync_every_commit=fsync_every_commit,
        queue_limits=queue_limits,
        lexical_engine=lexical_engine,
        lexical_weights=lexical_weights,
        background=background,
    )


def preflight(path: Path) -> None:
    """Before serving: refuse a database a newer version wrote, or a file that is no database
    (raises the AppError that says so and what to do)."""
    sqlite_preflight(path)
