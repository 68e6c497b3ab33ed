"""The PostgreSQL database's schema as a store opens it: the check before a server starts
(``preflight``), the migrations and record indexes applied at open (``Schema``), and the guard of
an opening step that needs a table another transaction holds (``Schema.table_lock_waited``).

``migrations.py`` lists the migrations; ``Schema.migrate`` applies the missing ones under
``MIGRATE_LOCK`` (nodes starting together migrate once), each in its own transaction, and refuses
a database written by a newer schema (``SchemaTooNew``). Record indexes it cannot make while a
replace import holds the records' table are owed and made later (``make_owed_indexes``). Kept
apart from database.py, which owns the pool and runs the transactions.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Unavailable
from agentmemory_server.storage import owed_indexes
from agentmemory_server.storage.interfaces import RecordIndex
from agentmemory_server.storage.postgres.advisory_locks import MIGRATE_LOCK
from agentmemory_server.storage.postgres.connections import TxConnection
from agentmemory_server.storage.postgres.faults import reason_of
from agentmemory_server.storage.postgres.migrations import MIGRATIONS
from agentmemory_server.storage.postgres.records import ensure_indexes
from agentmemory_server.storage.urls import without_password

log = logging.getLogger("agentmemory.postgres")

# How long opening a store waits for a table lock its schema steps need (a migration's DDL, a
# record index created or dropped) while another transaction holds the table: a replace import
# holds the records' tables until it commits, and every other opener waits for MIGRATE_LOCK
# meanwhile. A queued DDL lock also holds up the readers behind it, so the wait is short.
SCHEMA_LOCK_WAIT_SECONDS = 5.0
# How long the retry of owed record indexes waits for the records' table: a glance, as SQLite's
# retry waits for its write locks (OWED_INDEXES_WAIT_SECONDS there). Ordinary writes hold the table
# for milliseconds; a replace import holds it until it commits (minutes), and a retry that waited
# SCHEMA_LOCK_WAIT_SECONDS for it held MIGRATE_LOCK meanwhile (a start waited behind it), once a
# minute for as long as the import ran.
OWED_INDEXES_WAIT_SECONDS = 0.05


class SchemaTooNew(AppError):
    status = 503
    code = errors.SCHEMA_TOO_NEW


CONNECT_FIX = "start PostgreSQL, or correct AGENTMEMORY_DATABASE_URL (host, port, user, password, database)"


def preflight(url: str) -> None:
    """Check, before a server starts, that the database at ``url`` answers and was not written by
    a newer version of this server: one clear refusal instead of every request process failing
    to boot with a traceback each.

    :raise Unavailable: the server cannot be reached or refuses the connection.
    :raise SchemaTooNew: written by a newer version of this server.
    """
    location = without_password(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT to_regclass('agentmemory_schema') IS NOT NULL").fetchone()
            row = conn.execute("SELECT version FROM agentmemory_schema").fetchone() if exists and exists[0] else None
    except psycopg.Error as exc:
        reason = reason_of(exc)
        raise Unavailable(f"cannot connect to {location}: {reason}", details={"fix": CONNECT_FIX}) from None
    if row is not None and row[0] > len(MIGRATIONS):
        raise SchemaTooNew(
            f"{location} has schema version {row[0]} but this server knows {len(MIGRATIONS)}",
            details={"fix": "upgrade agentmemory-python before opening it"},
        )


class Schema:
    """The schema of the database at ``url`` as this process opened it (``location``: the URL
    without its password, for messages). ``owed_indexes``: the declared record indexes its
    opening could not make (see ``make_owed_indexes``); retried on a thread."""

    def __init__(self, url: str, location: str):
        self.url = url
        self.location = location
        self.owed_indexes: tuple[RecordIndex, ...] = ()

    def migrate(self, record_indexes: tuple[RecordIndex, ...] | None) -> str:
        """Apply missing migrations and record indexes under an advisory lock; returns the
        database's id (names this node's index directory, so two databases never share one)."""
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise Unavailable(f"cannot connect to {self.location}: {reason_of(exc)}") from exc
        with conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(f"SET lock_timeout = '{int(SCHEMA_LOCK_WAIT_SECONDS * 1000)}ms'")
            conn.execute("CREATE TABLE IF NOT EXISTS agentmemory_schema (version INTEGER NOT NULL, id TEXT NOT NULL)")
            row = conn.execute("SELECT version, id FROM agentmemory_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO agentmemory_schema VALUES (0, %s)", (secrets.token_hex(6),))
                row = conn.execute("SELECT version, id FROM agentmemory_schema").fetchone()
            assert row is not None
            version, database_id = row
            if version > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"{self.location} has schema version {version} but this server knows {len(MIGRATIONS)}; "
                    "upgrade agentmemory-python before opening it"
                )
            for number, (name, fn) in enumerate(MIGRATIONS[version:], start=version + 1):
                with self.table_lock_waited(f"schema migration {number} ({name})"), conn.transaction():
                    fn(conn)
                    conn.execute("UPDATE agentmemory_schema SET version = %s", (number,))
            if record_indexes is not None:  # (None: a tool's connection leaves them as they are)
                self._ensure_indexes(conn, record_indexes)
            self._check_collation(conn)
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
        return str(database_id)

    def _ensure_indexes(self, conn: psycopg.Connection, record_indexes: tuple[RecordIndex, ...]) -> bool:
        """The declared record indexes, or none of the missing ones this time when the records'
        table is held (a replace import): they speed listings up, so the store opens without them
        (a start must not wait for the import to commit) and owes them: a thread makes them once
        the table is free (``make_owed_indexes``). False: they are owed."""
        try:
            with self.table_lock_waited("making the record indexes"):
                ensure_indexes(TxConnection(conn), record_indexes)
        except owed_indexes.LockHeldAtOpen:
            if not self.owed_indexes:
                owed_indexes.announce_owed("another transaction", "the records' table", SCHEMA_LOCK_WAIT_SECONDS)
            self.owed_indexes = record_indexes
            return False
        self.owed_indexes = ()
        return True

    def make_owed_indexes(self) -> bool:
        """Make the record indexes this store was opened without (its start found the records'
        table held), if the table is free at a glance (OWED_INDEXES_WAIT_SECONDS); True when none
        is owed any more. Under MIGRATE_LOCK, as at a start, taken only if free: a starting
        process holds it while it migrates (and may be making them too). While either is held the
        attempt is skipped (False), and the next retry tries again."""
        if not self.owed_indexes:
            return True
        with psycopg.connect(self.url, autocommit=True) as conn:
            taken = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATE_LOCK,)).fetchone()
            if not (taken and taken[0]):
                return False  # a start migrates now (and may make them itself): the next retry
            try:
                conn.execute(f"SET lock_timeout = '{max(1, int(OWED_INDEXES_WAIT_SECONDS * 1000))}ms'")
                made = self._ensure_indexes(conn, self.owed_indexes)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
        if made:
            owed_indexes.announce_made("the records' table")
        return made

    @contextmanager
    def table_lock_waited(self, step: str) -> Iterator[None]:
        """Run ``step`` of opening the store (its statements wait SCHEMA_LOCK_WAIT_SECONDS for a
        table's lock), on the bare connection or through ``TxConnection``.

        :raise owed_indexes.LockHeldAtOpen: another transaction held a table it needs past that
            wait (a replace import holds the records' tables until it commits): a clear refusal
            naming the step, not a traceback.
        """
        try:
            yield
        except (psycopg.errors.LockNotAvailable, AppError) as exc:  # (TxConnection's AppError names its cause)
            held = exc if isinstance(exc, psycopg.errors.LockNotAvailable) else exc.__cause__
            if not isinstance(held, psycopg.errors.LockNotAvailable):
                raise
            raise owed_indexes.LockHeldAtOpen(
                f"{step} of {self.location} waited over {SCHEMA_LOCK_WAIT_SECONDS:g} s for a table another "
                "transaction holds (a replace import holds the records' tables until it commits); start again "
                "once it is done"
            ) from None

    def _check_collation(self, conn: psycopg.Connection) -> None:
        row = conn.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()").fetchone()
        collation = row[0] if row else None
        if collation not in ("C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic"):
            log.warning(
                "database collation is %s: record fields compare as JSON strings in that order; create the "
                "database with LC_COLLATE 'C' (as SQLite compares) for identical listings",
                collation,
            )
