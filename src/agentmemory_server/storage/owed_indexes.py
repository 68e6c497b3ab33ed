"""Record indexes a store was opened without, made later by the running process.

A store opened while another transaction held the records' table (a replace import holds it
until it commits) skips the record indexes it would have made or dropped, rather than wait for
the import: they only make listings faster. Each backend then keeps trying from a thread of its
own, once every ``RETRY_SECONDS``, until the indexes are made or the store is closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agentmemory_server import errors
from agentmemory_server.errors import Unavailable

log = logging.getLogger("agentmemory.storage")

RETRY_SECONDS = 60.0


class LockHeldAtOpen(Unavailable):
    """A step of opening a store (a schema migration, the record indexes) waited past its lock
    wait for a lock another transaction holds (a replace import holds it until it commits). A
    migration lets it through: the start is refused (503 ``database_busy``), not a traceback.
    The record indexes catch it, and are owed (``announce_owed``, ``make_later``)."""

    def __init__(self, message: str):
        super().__init__(message, code=errors.DATABASE_BUSY, retry_after=30)


def announce_owed(holder: str, lock: str, waited: float) -> None:
    """Say that a store opened without its record indexes: ``holder`` kept ``lock`` past
    ``waited`` seconds; ``make_later``'s thread makes them once it is free."""
    log.warning(
        "record indexes not brought up to date: %s (a replace import?) held %s for over %g s; tried again "
        "every %g s until it is free",
        holder,
        lock,
        waited,
        RETRY_SECONDS,
    )


def announce_made(lock: str) -> None:
    """Say that the record indexes owed since the start (``lock`` was held then) are made."""
    log.info("record indexes brought up to date (%s was held when this process started)", lock)


def make_later(make: Callable[[], bool], stop: threading.Event) -> None:
    """Start the thread that calls ``make()`` (True once nothing is owed) every RETRY_SECONDS
    until it succeeds or ``stop`` is set."""

    def keep_trying() -> None:
        while not stop.wait(RETRY_SECONDS):
            try:
                if make():
                    return
            except Exception as exc:  # noqa: BLE001 - a database that does not answer, a full disk: try again
                log.warning("record indexes not brought up to date yet: %s", getattr(exc, "message", exc))

    threading.Thread(target=keep_trying, name="agentmemory-record-indexes", daemon=True).start()
