"""Storage: the repository interfaces (interfaces.py) and their implementations.

``open_database`` is the one place a backend is chosen; everything else depends only on the
protocols in ``interfaces.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from agentmemory_server.storage.interfaces import Database, RecordIndex
from agentmemory_server.storage.sqlite import Database as SqliteDatabase


def open_database(
    path: Path,
    *,
    now: Callable[[], str],
    record_indexes: Iterable[RecordIndex] = (),
    lexical_engine: str = "tantivy",
    lexical_weights: Mapping[str, float] | None = None,
    background: bool = True,
) -> Database:
    """Open (creating and migrating as needed) the database at ``path``.

    :param lexical_engine: ``tantivy`` (kept in ``<path>.tantivy``) or ``fts5``.
    :param lexical_weights: BM25 weight per text column; Tantivy applies them at indexing time.
    :param background: whether derived indexes may keep themselves up to date on threads.
    """
    return SqliteDatabase(
        path,
        now=now,
        record_indexes=record_indexes,
        lexical_engine=lexical_engine,
        lexical_weights=lexical_weights,
        background=background,
    )
