"""What a PostgreSQL failure means to a client (the counterpart of ``storage/sqlite/faults.py``).

The server owns its disk and its pages, so the faults a node sees are: the server out of disk
(SQLSTATE class 53, 507 ``disk_full``), a read-only server (a hot standby, 25006: 503
``storage_read_only``), damaged pages or indexes (XX001/XX002: 503 ``database_damaged``), and
lock contention or the pool exhausted (503 ``database_busy``, retry shortly), and the server
unreachable, stopped, its database dropped or the connection ended (503 ``unavailable``, "does not
answer", ``Retry-After``: ``gone``). A value the server cannot store (a data exception) is the
client's 400. Anything else (``classify`` answers None: a statement the schema refuses, a
violated constraint, the server's internal error) is a bug, not a wait: it goes through as
psycopg's own error, a 500 ``internal_error`` (``connections.raise_translated``).
"""

from __future__ import annotations

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from agentmemory_server import errors
from agentmemory_server.errors import AppError, InsufficientStorage, InvalidInput, StoreOutage, Unavailable

RESTORE_HINT = (
    "the PostgreSQL server reports damaged data: check its logs, run amcheck/REINDEX there, or restore the "
    "database from its backups; this node refuses writes until it restarts"
)


def damaged(location: str, problems: list[str]) -> Unavailable:
    return Unavailable(
        f"the database {location} is damaged ({'; '.join(problems[:3])[:300]}): writes are refused",
        code=errors.DATABASE_DAMAGED,
        details={"problems": problems[:20], "fix": RESTORE_HINT},
    )


# Retry-After while the database does not answer: a restarted PostgreSQL takes seconds to accept
# connections again, and every request meanwhile is refused at once (hook events are spooled).
GONE_RETRY_SECONDS = 5
# Failures that are waits for another transaction, retried shortly (503 ``database_busy``): a lock
# not granted within its wait (``lock_timeout``), a serialization failure or deadlock (class 40), a
# statement cancelled (its ``statement_timeout``, or by an administrator).
CONTENTION = (pg_errors.LockNotAvailable, pg_errors.TransactionRollback, pg_errors.QueryCanceled)
# SQLSTATEs of a connection the server ended: an administrator (pg_terminate_backend, a dropped
# database's FORCE), a crash or a shutdown (57P01-57P05), an idle transaction's timeout (25P03).
# Class 08 (connection exceptions) and libpq's own errors (no SQLSTATE: "server closed the
# connection unexpectedly", "the connection is closed") are failures of the connection too.
ENDED_BY_THE_SERVER = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "25P03"})
# The pool's own refusals (psycopg counts them OperationalErrors): about this process's pool, not
# the connection to the server.
POOL_ERRORS = (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed, psycopg_pool.TooManyRequests)


def gone(location: str, reason: str) -> StoreOutage:
    """The refusal of every request while the database does not answer, whichever meets the
    outage first: a request on a connection the outage ended says the same as one that finds
    the database already known to be gone (``PostgresDatabase.pooled``)."""
    return StoreOutage(f"{location} does not answer: {reason}; retry when it is back", retry_after=GONE_RETRY_SECONDS)


class ConnectionEnded(StoreOutage):
    """The server ended or lost the request's pooled connection (pg_terminate_backend, a restart
    that is over by now) while the database itself answers a new connection. A read-only
    statement that meets it runs again once on a fresh connection (``PostgresDatabase.read``),
    and so does a transaction that meets it on its BEGIN or its lock, before anything of its
    work ran (``transactions.started``); a write whose connection ended under its work is
    refused with it (503 ``unavailable``, ``Retry-After: 1``)."""


def connection_ended(location: str, failure: BaseException) -> ConnectionEnded:
    """The refusal of a request whose connection ended (``failure``, psycopg's own error) while
    the database still takes new connections."""
    return ConnectionEnded(
        f"{location} does not answer on this request's connection ({type(failure).__name__}: "
        f"{reason_of(failure)}), though it takes new ones: retry",
        retry_after=1,
    )


def connection_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the connection itself (lost, ended by the server, never
    made), not of the statement it ran: never lock contention, whatever its psycopg class."""
    if isinstance(exc, psycopg.InterfaceError):  # the connection in a state no statement can run in
        return True
    if not isinstance(exc, psycopg.Error) or isinstance(exc, (*CONTENTION, *POOL_ERRORS)):
        return False
    sqlstate = exc.sqlstate
    if sqlstate is None:
        # A statement sent after an earlier one failed in the same pipeline (PipelineAborted) is
        # a fault of the code that went on, on a healthy connection: not an outage to wait out.
        return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, pg_errors.PipelineAborted)
    return sqlstate.startswith("08") or sqlstate in ENDED_BY_THE_SERVER


def reason_of(exc: BaseException) -> str:
    """The first line of a failure's message (psycopg adds hints below it), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def classify(exc: BaseException, location: str) -> AppError | None:
    """The client-facing error a PostgreSQL failure stands for, or None for anything else."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return Unavailable("no database connection free; retry shortly", code=errors.DATABASE_BUSY, retry_after=1)
    if isinstance(exc, psycopg_pool.PoolClosed):  # closed at shutdown (drop_connections_if_unreachable, close)
        return Unavailable("database is closed", code=errors.DATABASE_CLOSED)
    if not isinstance(exc, psycopg.Error):
        return None
    first_line = (str(exc).splitlines() or [""])[0][:200]
    if isinstance(exc, pg_errors.InsufficientResources):  # class 53: disk full, out of memory, too many connections
        if isinstance(exc, pg_errors.DiskFull):
            return InsufficientStorage(
                f"the PostgreSQL server holding {location} is out of disk: nothing was written",
                details={"fix": "free space on the database server"},
            )
        return Unavailable(f"the database server is out of resources ({first_line}); retry shortly",
                           code=errors.DATABASE_BUSY, retry_after=1)  # fmt: skip
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return Unavailable(
            f"the database {location} is read-only (a standby?): nothing was written; reads still work",
            code=errors.STORAGE_READ_ONLY,
        )
    if isinstance(exc, (pg_errors.DataCorrupted, pg_errors.IndexCorrupted)):
        return damaged(location, [first_line])
    if isinstance(exc, psycopg.DataError):
        return InvalidInput(f"the database refused a value: {first_line}")
    reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    if connection_failed(exc):
        # Not "busy": a client told to retry a lock wait would meet the outage again, and a
        # request that finds the database already known to be gone says "does not answer".
        return gone(location, reason)
    if isinstance(exc, CONTENTION):
        return Unavailable(f"the database is busy ({reason}); retry shortly", code=errors.DATABASE_BUSY, retry_after=1)
    if isinstance(exc, psycopg.OperationalError):  # the server failed otherwise (its I/O, its configuration...)
        return Unavailable(f"the database server failed ({reason}); retry shortly", retry_after=1)
    return None
