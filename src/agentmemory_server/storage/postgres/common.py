"""Helpers shared by the PostgreSQL repositories: the connection seen by a repository, record
fields as SQL, and the unit-of-work protocol."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from psycopg.types.json import Jsonb

from agentmemory_server.storage.codec import dumps, loads
from agentmemory_server.storage.interfaces import Where

__all__ = ["Jsonb", "Result", "SqlConn", "Unit", "dumps", "field", "loads", "where_sql"]


class Result(Protocol):
    """What ``execute`` returns: a psycopg cursor, or the rows a pooled reader already fetched."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class SqlConn(Protocol):
    def execute(self, query: Any, params: Sequence[Any] | None = None) -> Result: ...


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def field(name: str) -> str:
    """The SQL expression of a top-level field of a stored record: its JSON value, with JSON null
    counted as missing (SQLite's ``json_extract`` semantics). Record indexes are built on exactly
    this text, so queries written with it can use them."""
    if not _FIELD.match(name):
        raise ValueError(f"not a record field name: {name!r}")
    return f"nullif(value -> '{name}', 'null'::jsonb)"


_OPERATORS = {"=", "!=", "<", "<=", ">", ">="}


def where_sql(conditions: Sequence[Where]) -> tuple[list[str], list[Any]]:
    """SQL terms and parameters for record conditions. Values compare as JSON (numbers as
    numbers, strings in the database's collation: C, as SQLite compares them)."""
    terms: list[str] = []
    params: list[Any] = []
    for cond in conditions:
        if cond.op == "in":
            terms.append(f"{field(cond.field)} IN (SELECT jsonb_array_elements(%s::jsonb))")
            params.append(Jsonb(list(cond.value)))
        elif cond.op in _OPERATORS:
            op = "<>" if cond.op == "!=" else cond.op
            terms.append(f"{field(cond.field)} {op} %s::jsonb")
            params.append(Jsonb(cond.value))
        else:
            raise ValueError(f"unsupported operator {cond.op!r}")
    return terms, params


class Unit(Protocol):
    """What a repository needs from its unit of work: the connection and the audit trail."""

    conn: SqlConn
    changed: list[str]
    bounds: Any  # storage/bounds.QueueBounds of the database (limits on the durable queues)
    lexical_changed: bool
    record_indexes: Mapping[str, tuple[tuple[str, ...], ...]]
    prefix_indexes: Mapping[str, tuple[tuple[str, ...], ...]]

    def touch(self, scope: str, key: str) -> None: ...

    def record_change(self, what: str, message: str | None = None) -> None: ...
