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

log = logging.getLogger("agentmemory.storage")

RETRY_SECONDS = 60.0


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
