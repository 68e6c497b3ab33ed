"""What a PostgreSQL failure means to a client (the counterpart of ``storage/sqlite/faults.py``).

The server owns its disk and its pages, so the faults a node sees are: the server out of disk
(SQLSTATE class 53, 507 ``disk_full``), a read-only server (a hot standby, 25006: 503
``storage_read_only``), damaged pages or indexes (XX001/XX002: 503 ``database_damaged``), and
the server unreachable or the pool exhausted (503 ``database_busy``, retry). A value the server
cannot store (a data exception) is the client's 400.
"""

from __future__ import annotations

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from agentmemory_server import errors
from agentmemory_server.errors import AppError, InsufficientStorage, InvalidInput, Unavailable

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


def reason_of(exc: BaseException) -> str:
    """The first line of a failure's message (psycopg adds hints below it), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def classify(exc: BaseException, location: str) -> AppError | None:
    """The client-facing error a PostgreSQL failure stands for, or None for anything else."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return Unavailable("no database connection free; retry shortly", code=errors.DATABASE_BUSY, retry_after=1)
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
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, pg_errors.LockNotAvailable)):
        # The first line says which: "server closed the connection unexpectedly", "terminating
        # connection due to administrator command", a lock not granted...
        reason = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        return Unavailable(f"the database is unavailable ({reason}); retry shortly",
                           code=errors.DATABASE_BUSY, retry_after=1)  # fmt: skip
    return None
