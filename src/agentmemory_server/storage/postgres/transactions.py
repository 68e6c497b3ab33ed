"""How a PostgreSQL transaction starts and ends on its pooled connection (``PostgresDatabase``
runs them; kept apart from database.py, which owns the pool).

A transaction whose pooled connection the server ended while it sat idle (a PostgreSQL restart
that is over, pg_terminate_backend) fails on its first statement, its BEGIN, or for a write on
its write lock, taken with it: ``started`` takes a fresh connection then, once, since nothing of
the transaction's work ran. A failing transaction is rolled back (``rolled_back_on_failure``),
after what its pipeline still had to answer was read (``collect``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import psycopg

from agentmemory_server.storage.postgres.faults import ConnectionEnded

log = logging.getLogger("agentmemory.postgres")


@contextmanager
def started(start: Callable[[ExitStack], psycopg.Connection], what: str) -> Iterator[psycopg.Connection]:
    """The connection ``start`` took and began a transaction on (the contexts it entered on its
    stack held until the caller is done), taken again once on a fresh connection when ``start``
    met one the server had ended (``ConnectionEnded``: by then ``PostgresDatabase._connection_ended``
    has replaced the pool's other idle connections from before). ``start`` runs the transaction's
    first statements only (BEGIN, a write's lock), never the caller's work: that runs after this
    yields, outside the retry, so nothing of it can run twice. ``ConnectionEnded`` only, once: a
    database that does not answer is refused at once, and a second ended connection is refused as
    the first would have been.

    :param what: the transaction, as the log line that says it starts again names it.
    """
    for last_try in (False, True):
        try:
            with ExitStack() as stack:
                conn = start(stack)
                held = stack.pop_all()  # kept past this block: released when the caller is done
            break
        except ConnectionEnded as ended:
            if last_try:
                raise
            log.info("%s starts again on a fresh connection: %s", what, ended.message)
    with held:
        yield conn


def collect(conn: psycopg.Connection) -> None:
    """Wait for what a failing pipelined transaction sent (its first error is being raised
    already), so that leaving the pipeline finds nothing pending."""
    try:
        conn.execute("SELECT 1").fetchone()
    except psycopg.Error:
        pass


@contextmanager
def rolled_back_on_failure(conn: psycopg.Connection) -> Iterator[None]:
    """The block's transaction rolled back when the block fails (``roll_back``)."""
    try:
        yield
    except BaseException:
        roll_back(conn)
        raise


def roll_back(conn: psycopg.Connection) -> None:
    """Roll back unless the server ended the failed transaction itself."""
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # a broken connection: the pool discards it
