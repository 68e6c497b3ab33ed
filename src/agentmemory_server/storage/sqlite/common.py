"""Helpers shared by the SQLite repositories: parameter chunks, record fields."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from agentmemory_server.storage.codec import dumps, loads
from agentmemory_server.storage.interfaces import Where

__all__ = ["CHUNK", "Unit", "dumps", "field", "in_chunks", "loads", "where_sql"]

# SQLite's limit on host parameters is far higher, but a statement this size stays cheap to prepare.
CHUNK = 500


def in_chunks(values: Iterable[Any], size: int = CHUNK) -> Iterator[tuple[list[Any], str]]:
    """Distinct values in chunks small enough for one statement, each with its ``?,?,...``
    placeholder list."""
    distinct = list(dict.fromkeys(values))
    for start in range(0, len(distinct), size):
        chunk = distinct[start : start + size]
        yield chunk, ",".join("?" * len(chunk))


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def field(name: str) -> str:
    """The SQL expression of a top-level field of a stored record. Record indexes are built on
    exactly this text, so queries written with it can use them."""
    if not _FIELD.match(name):
        raise ValueError(f"not a record field name: {name!r}")
    return f"json_extract(value, '$.{name}')"


_OPERATORS = {"=", "!=", "<", "<=", ">", ">="}


def where_sql(conditions: Sequence[Where]) -> tuple[list[str], list[Any]]:
    """SQL terms and parameters for record conditions (``in`` takes any number of values)."""
    terms: list[str] = []
    params: list[Any] = []
    for cond in conditions:
        if cond.op == "in":
            terms.append(f"{field(cond.field)} IN (SELECT value FROM json_each(?))")
            params.append(dumps(list(cond.value)))
        elif cond.op in _OPERATORS:
            terms.append(f"{field(cond.field)} {cond.op} ?")
            params.append(cond.value)
        else:
            raise ValueError(f"unsupported operator {cond.op!r}")
    return terms, params


class Unit(Protocol):
    """What a repository needs from its unit of work: the connection and the audit trail."""

    conn: Any
    changed: list[str]
    bounds: Any  # bounds.QueueBounds of the database (limits on the durable queues)
    lexical_changed: bool
    record_indexes: Mapping[str, tuple[tuple[str, ...], ...]]
    prefix_indexes: Mapping[str, tuple[tuple[str, ...], ...]]

    def touch(self, scope: str, key: str) -> None: ...

    def record_change(self, what: str, message: str | None = None) -> None: ...
