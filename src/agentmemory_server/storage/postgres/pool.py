"""PostgreSQL storage: the pooled connections, and whether the database answers.

A mixin of ``database.PostgresDatabase``, apart from it so that module keeps to the units of
work and the transactions. A wait for a pooled connection is taken in turns, and a broken or
missing connection leads to one question, does the database answer: a dropped database or a
stopped server then refuses every request at once with the reason (``gone``), instead of each
waiting the pool's timeout out; a connection the server ended while the database answers is
replaced (and a read runs once more on a fresh one). The attributes below are the database's,
set in ``PostgresDatabase.__init__``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
import psycopg_pool

from agentmemory_server import errors
from agentmemory_server.errors import AppError, StoreOutage, Unavailable
from agentmemory_server.storage.postgres.connections import configure_connection
from agentmemory_server.storage.postgres.faults import ConnectionEnded, connection_ended, gone, reason_of

log = logging.getLogger("agentmemory.postgres")
T = TypeVar("T")

POOL_TIMEOUT_SECONDS = 30.0
# A wait for a pooled connection is taken in turns this long; after a turn without one, the
# database is asked whether it answers (``pooled``): a dropped database or a stopped server ends
# the wait at once with the reason, not at POOL_TIMEOUT_SECONDS (the pool, which tries to
# reconnect in the background, hands out nothing meanwhile).
CHECKOUT_TURN_SECONDS = 1.0
# How long a check waits to learn whether the database still answers (a server that is gone
# refuses at once; a network that drops packets is given this long).
PROBE_SECONDS = 2


def open_pool(url: str, pool_size: int) -> psycopg_pool.ConnectionPool:
    """The process's pool of autocommit connections, each configured (``configure_connection``)."""
    return psycopg_pool.ConnectionPool(
        url,
        min_size=1,
        max_size=max(2, pool_size),
        kwargs={"autocommit": True},
        configure=configure_connection,
        name="agentmemory",
        open=True,
    )


class PoolCheckout:
    """The part of ``PostgresDatabase`` that checks connections out of its pool."""

    url: str
    location: str
    pool: psycopg_pool.ConnectionPool
    _unanswered: bool  # the database did not answer the last check (see PostgresDatabase._init_process_state)

    @contextmanager
    def pooled(self) -> Iterator[psycopg.Connection]:
        """A pooled connection, waiting up to POOL_TIMEOUT_SECONDS for one while the database
        answers (``_checkout``).

        :raise Unavailable: none came free (``database_busy``), or the database does not answer
            (``unavailable``, with its reason; at once while it still does not), or it ended this
            connection (``unavailable``: ``_connection_ended``).
        """
        if self._unanswered:
            self._refuse_if_unanswered()
        conn = self._checkout()
        try:
            with conn:  # as the pool's own connection(): commit, or roll back on an error
                try:
                    yield conn
                except Exception as exc:
                    if conn.broken:  # the server went away under it, or ended it: does it answer?
                        raise self._connection_ended(exc) from exc
                    raise
        finally:
            self.pool.putconn(conn)  # a broken one is replaced by the pool

    def read(self, statement: Callable[[psycopg.Connection], T]) -> T:
        """``statement(conn)``, one read-only statement (a reader's: ``PooledReader``) on a
        pooled connection, run once more on a fresh connection when the server had ended the
        first while the database answers again (``ConnectionEnded``: pg_terminate_backend, a
        restart that is over): a PostgreSQL restart is invisible to reads. By then
        ``_connection_ended`` has replaced the pool's other idle connections from before.

        Safe for a read only: it runs in autocommit and changes nothing, so running it again
        cannot do anything twice, whether its connection ended while idle in the pool (the
        restart's case) or under it. A write's block is not run again (it could have committed
        before its connection broke): only its BEGIN and lock are (``_write_begun``), and a
        connection ended under the block is refused, 503 ``unavailable``. Once only,
        and never while the database does not answer (``gone``, at once, no retry loop): a
        second ended connection is refused as the first would have been.
        """
        try:
            with self.pooled() as conn:
                return statement(conn)
        except ConnectionEnded as ended:
            log.info("a read runs again on a fresh connection: %s", ended.message)
        with self.pooled() as conn:
            return statement(conn)

    def _connection_ended(self, failure: Exception) -> StoreOutage:
        """The refusal of a request whose connection the server ended or lost (``failure``).

        While the database does not answer (stopped, dropped, unreachable), the same refusal
        every request gets until it does (``_refuse_if_unanswered``): which request meets the
        outage first, one on a connection it ended or one after, is a race a client must not see
        (before, the first answered 503 ``database_busy``, which reads as another writer's lock).
        When it answers again (an administrator ended the connection, or a restart is over), the
        pool's idle connections from before were most likely ended too: they are replaced now,
        rather than each failing a request of its own.
        """
        reason = self._unanswered_reason()
        self._unanswered = reason is not None
        if reason is not None:
            return gone(self.location, reason)
        self.pool.check()
        cause = (failure.__cause__ if isinstance(failure, AppError) else None) or failure  # psycopg's own error
        return connection_ended(self.location, cause)

    def _checkout(self) -> psycopg.Connection:
        """A connection from the pool, waited for in turns of CHECKOUT_TURN_SECONDS up to
        POOL_TIMEOUT_SECONDS. After each turn without one, whether the database answers: a
        thread that came in before another found the database gone (and so before the
        ``_unanswered`` mark) would otherwise wait the pool's whole timeout.

        :raise Unavailable: the database does not answer, or no connection came free in time.
        """
        deadline = time.monotonic() + POOL_TIMEOUT_SECONDS
        while True:
            turn = max(0.001, min(CHECKOUT_TURN_SECONDS, deadline - time.monotonic()))
            try:
                return self.pool.getconn(timeout=turn)
            except psycopg_pool.PoolTimeout as exc:
                self._refuse_if_unanswered()
                if time.monotonic() >= deadline:
                    raise Unavailable("no database connection free; retry shortly", code=errors.DATABASE_BUSY) from exc

    def _refuse_if_unanswered(self) -> None:
        reason = self._unanswered_reason()
        if reason is None:
            if self._unanswered:  # back: the pool's idle connections from before are dead
                self.pool.check()
            self._unanswered = False
            return
        self._unanswered = True
        raise gone(self.location, reason)

    def _unanswered_reason(self) -> str | None:
        """Why a new connection to the database fails, or None when it answers."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=PROBE_SECONDS) as conn:
                conn.execute("SELECT 1")
            return None
        except psycopg.Error as exc:
            return reason_of(exc)

    def drop_connections_if_unreachable(self) -> bool:
        # A dropped database or a stopped server: every thread waiting for a pooled connection
        # would wait POOL_TIMEOUT_SECONDS, and the lexical applier's and the event bus's are
        # joined at shutdown. Closing the pool wakes them with PoolClosed.
        reason = self._unanswered_reason()
        if reason is None:
            return False
        log.warning("shutting down without %s, which does not answer: %s", self.location, reason)
        self.pool.close(timeout=0.5)
        return True
