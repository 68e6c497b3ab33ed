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
from agentmemory_server.storage.urls import without_password

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(POSTGRES_SCHEMES)


def open_database(
    path: Path,
    *,
    now: Callable[[], str],
    record_indexes: Iterable[RecordIndex] | None = None,
    reserve_bytes: int = 0,
    warn_bytes: int = 0,
    check_seconds: float = 0.0,
    fsync_every_commit: bool = False,
    checkpoint_seconds: float = 0.0,
    queue_limits: Mapping[str, int] | None = None,
    lexical_engine: str = "tantivy",
    lexical_weights: Mapping[str, float] | None = None,
    background: bool = True,
    url: str | None = None,
    pool_size: int = 10,
    node: str | None = None,
    lock_wait: float | None = None,
) -> Database:
    """Open (creating and migrating as needed) the database: PostgreSQL when ``url`` is a
    ``postgresql://`` URL, else the SQLite file at ``path``.

    :param path: the SQLite file; with PostgreSQL, where this node keeps local state beside it.
    :param record_indexes: the record indexes the features declare: those missing are created,
        those no longer declared dropped. None (a tool opening the file) leaves them as they are,
        so the server does not have to build them again (seconds at 1M records).
    :param reserve_bytes: writes are refused while less is free on its disk (SQLite; on
        PostgreSQL health turns critical while less is free on this node's disk).
    :param warn_bytes: health warns while less is free (on PostgreSQL: on this node's disk).
    :param check_seconds: time budget of the integrity check run first (SQLite).
    :param fsync_every_commit: every commit durable against OS and disk failures too (SQLite;
        PostgreSQL's durability is the server's ``synchronous_commit``).
    :param checkpoint_seconds: SQLite: a thread checkpoints the WAL this often instead of the
        commits (0: the commits, SQLite's default).
    :param queue_limits: bounds of the durable queues (see ``sqlite.Database``).
    :param lexical_engine: ``tantivy`` (an index on this node), or the database's own full text
        (``builtin``; ``fts5`` is its name on SQLite).
    :param lexical_weights: BM25 weight per text column; Tantivy applies them at indexing time.
    :param background: whether derived indexes may keep themselves up to date on threads.
    :param pool_size: PostgreSQL connections this process may open.
    :param node: PostgreSQL: this node's name among those sharing the database (default: host
        name and index directory).
    :param lock_wait: seconds a write waits for the write lock (SQLite's, or the PostgreSQL
        store's advisory lock) before ``database_busy`` (default 30).
    """
    builtin = lexical_engine in ("builtin", "fts5")
    if url:
        if not is_postgres_url(url):
            raise ValueError(f"AGENTMEMORY_DATABASE_URL must start with postgresql://, got {url.split(':')[0]!r}")
        from agentmemory_server.storage.postgres import PostgresDatabase

        return PostgresDatabase(
            url,
            local_path=path,
            now=now,
            record_indexes=record_indexes,
            lexical_engine="builtin" if builtin else lexical_engine,
            lexical_weights=lexical_weights,
            background=background,
            pool_size=pool_size,
            node=node,
            queue_limits=queue_limits,
            disk_reserve_bytes=reserve_bytes,
            disk_warn_bytes=warn_bytes,
            lock_wait=lock_wait,
        )
    return SqliteDatabase(
        path,
        now=now,
        record_indexes=record_indexes,
        reserve_bytes=reserve_bytes,
        warn_bytes=warn_bytes,
        check_seconds=check_seconds,
        fsync_every_commit=fsync_every_commit,
        checkpoint_seconds=checkpoint_seconds,
        queue_limits=queue_limits,
        lexical_engine="fts5" if builtin else lexical_engine,
        lexical_weights=lexical_weights,
        background=background,
        lock_wait=lock_wait,
    )


def preflight(path: Path, url: str | None = None) -> None:
    """Before serving: refuse a database a newer version wrote, a file that is no database, or a
    PostgreSQL server that does not answer (raises the AppError that says so and what to do)."""
    if url:
        from agentmemory_server.storage.postgres import preflight as postgres_preflight  # psycopg only when used

        postgres_preflight(url)
    else:
        sqlite_preflight(path)


def location(path: Path, url: str | None = None) -> str:
    """Where the store is, as a person reads it: the SQLite file, or the URL without its password."""
    if not url:
        return str(path)
    return without_password(url)
