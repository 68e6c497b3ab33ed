"""The connections the PostgreSQL repositories run their SQL through, with psycopg's errors
translated into ``AppError`` where they stand for one (``raise_translated``).

A reader borrows a pooled connection for one statement at a time (``PooledReader``, its rows
fetched before the connection goes back: ``Rows``; run again once on a fresh connection when the
server had ended the first: ``PostgresDatabase.read``); a transaction keeps one connection
(``TxConnection``), in pipeline mode for a write (``PipelinedRows``: a statement's answer is
waited for only when it is read). ``configure_connection`` sets up every pooled connection.
Kept apart from database.py, which owns the pool and runs the transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg
from pgvector.psycopg import register_vector

from agentmemory_server.errors import AppError
from agentmemory_server.storage.postgres.common import Result
from agentmemory_server.storage.postgres.faults import classify

if TYPE_CHECKING:
    from agentmemory_server.storage.postgres.database import PostgresDatabase


def raise_translated(exc: psycopg.Error, meaning: Callable[[psycopg.Error], AppError | None] | None = None) -> NoReturn:
    """Raise the ``AppError`` a psycopg failure stands for (``meaning``, by default
    ``faults.classify``: a lock wait, the server gone, its disk full, a value it cannot store...),
    else the failure itself.

    What ``classify`` does not know is a fault of this code, not of the store: a statement the
    schema refuses (ProgrammingError: a column or table missing), a violated constraint
    (IntegrityError: a CHECK, NOT NULL or foreign key), the server's InternalError or a
    NotSupportedError. Retrying it cannot help, so it is not ``database_busy``: raised as it is,
    it reaches the adapters' handler of unexpected errors (500 ``internal_error``, the traceback
    logged once) and a background job counts it a failure instead of waiting for the store
    (``errors.waits_for_the_store``), as SQLite's unclassified errors do. A unique violation is
    no race between two writers here: every write transaction holds the cluster's write lock
    (database.py) and the upserts say ON CONFLICT, so one is a bug too.
    """
    error = meaning(exc) if meaning is not None else classify(exc, "the database")
    if error is None:
        raise exc
    raise error from exc


def configure_connection(conn: psycopg.Connection) -> None:
    """Every pooled connection: pgvector's type, and HNSW scans that continue past the first
    candidates while a filter (a project, an agent) drops them, so a filtered search still
    returns its k rows (pgvector 0.8's iterative index scans)."""
    register_vector(conn)
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    conn.execute("SET hnsw.ef_search = 100")
    # psycopg prepares a statement run five times; PostgreSQL would then switch it to a generic
    # plan, blind to the parameters: a project's newest rows became a sort of the whole project
    # (bench/cluster.py at 100k: context p50 350 ms). Prepared statements still skip parsing.
    conn.execute("SET plan_cache_mode = force_custom_plan")


class Rows:
    """The rows of one statement, fetched before its pooled connection went back."""

    def __init__(self, rows: list[Any], rowcount: int):
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class PooledReader:
    """A connection-like object for readers: each statement borrows a pooled connection."""

    def __init__(self, db: PostgresDatabase):
        self._db = db

    def execute(self, query: Any, params: Sequence[Any] | None = None) -> Result:
        if not str(query).lstrip()[:6].upper() == "SELECT":
            raise PermissionError(f"a reader cannot run {str(query)[:40]!r}; open a transaction to write")

        def statement(conn: psycopg.Connection) -> Rows:
            cur = conn.execute(query, params)
            return Rows(cur.fetchall() if cur.description is not None else [], cur.rowcount)

        try:
            return self._db.read(statement)  # run again once if the server had ended its connection
        except psycopg.Error as exc:
            raise_translated(exc)


class TxConnection:
    """The connection of one transaction (or snapshot), with errors translated.

    :param pipelined: the transaction runs in pipeline mode: a
        statement is then sent without waiting for its answer, and the round trip is paid only
        when a result is read (``fetch*``, ``rowcount``) or at commit. A write request's inserts
        and updates travel together instead of one round trip each (bench/pg_statements.py).
    """

    def __init__(self, conn: psycopg.Connection, *, pipelined: bool = False):
        self.raw = conn
        self._pipelined = pipelined

    def execute(self, query: Any, params: Sequence[Any] | None = None) -> Result:
        try:
            cursor = self.raw.execute(query, params)
        except psycopg.Error as exc:
            raise_translated(exc)
        if not self._pipelined:
            return cursor
        return PipelinedRows(cursor, self.raw)


class PipelinedRows:
    """A statement sent in pipeline mode: reading its rows or its row count waits for the
    answer; an error of any earlier statement surfaces here, translated."""

    def __init__(self, cursor: psycopg.Cursor, conn: psycopg.Connection):
        self._cursor = cursor
        self._conn = conn

    @property
    def rowcount(self) -> int:
        # The answers come in order: reading a later statement's waits for this one's too.
        try:
            self._conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            raise_translated(exc)
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        try:
            return self._cursor.fetchone()
        except psycopg.Error as exc:
            raise_translated(exc)

    def fetchall(self) -> list[Any]:
        try:
            return self._cursor.fetchall()
        except psycopg.Error as exc:
            raise_translated(exc)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())
