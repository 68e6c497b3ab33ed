"""Group commit: the writes several threads of one process ask for at once share one SQLite
transaction.

Why: SQLite has one writer at a time, so under concurrent writes the write lock is the limit.
Measured with 8 observe clients on two request processes, it was held 66-71% of the time and
handed from one holder to the next another 21-24% (a waiting thread must wake, get the GIL and
the lock), each observe paying its own BEGIN, COMMIT (its pages appended to the WAL) and
hand-over. ``Database.write`` queues its work here. The first thread to get the process's
writer lock takes every call queued so far and runs them in one transaction, each in its own
savepoint; the others find theirs done when they get the lock.

What each call keeps of a transaction of its own: its own unit of work (its audit row, its
after-commit callbacks, run on its own thread once the group committed), its context variables
(the caller's identity: the work may run on another thread), and its own failure: a
call that raises is rolled back to its savepoint and only its caller sees the error. What it
shares: the commit. If the commit fails (a full disk), nothing of the group was stored and every
caller gets the error.
"""

from __future__ import annotations

import contextvars
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_SAVEPOINT = "group_item"


class Queued(Generic[T]):
    """One ``write`` call: its work, then its outcome once a group ran it."""

    def __init__(self, operation: str, work: Callable[[Any], T], agent_id: str | None):
        self.operation, self.work, self.agent_id = operation, work, agent_id
        # Another thread may run the work: it runs in the caller's context (who is calling,
        # whether model steps run inline), as it would have on the caller's thread.
        self.context = contextvars.copy_context()
        self.unit: Any = None  # the unit of work it ran with, once it succeeded
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def fail(self, error: BaseException) -> None:
        if not self.finished:
            self.unit, self.error, self.finished = None, error, True

    def committed(self) -> None:
        self.finished = True

    def outcome(self) -> T:
        """On the caller's thread: raise its error, or run its after-commit callbacks and
        return what its work returned."""
        if self.error is not None:
            raise self.error
        self.unit.run_after_commit()
        return self.result


class WriteQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: list[Queued[Any]] = []

    def put(self, operation: str, work: Callable[[Any], T], agent_id: str | None) -> Queued[T]:
        queued = Queued(operation, work, agent_id)
        with self._lock:
            self._queued.append(queued)
        return queued

    def withdraw(self, queued: Queued[Any]) -> bool:
        """Take back a call no group has taken yet (its caller gives up waiting); False when a
        group already has it."""
        with self._lock:
            if queued in self._queued:
                self._queued.remove(queued)
                return True
        return False

    def take(self) -> list[Queued[Any]]:
        with self._lock:
            taken, self._queued = self._queued, []
        return taken


def run_group(
    conn: sqlite3.Connection,
    group: list[Queued[Any]],
    new_unit: Callable[[], Any],
    write_audit: Callable[[Any, str, str | None], None],
    local: threading.local,
    client_error: Callable[[Exception], BaseException],
) -> None:
    """Run each call's work in its own savepoint of the transaction open on ``conn``.

    :param local: the database's thread-local state; ``local.tx`` is the call's unit while it
        runs, so a nested ``transaction`` or ``reader`` in the work joins it.
    :param client_error: what the caller is told of an exception its work raised.
    :raise sqlite3.Error: a failure that ended the whole transaction (the group fails).
    """
    for queued in group:
        unit = new_unit()
        local.tx = unit
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            queued.result = queued.context.run(queued.work, unit)
            if unit.changed:
                write_audit(unit, queued.operation, queued.agent_id)
        except Exception as exc:  # noqa: BLE001 - the caller's error, raised on its own thread
            if not conn.in_transaction:  # SQLite ended the transaction (a full disk, I/O): all fail
                raise
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            queued.fail(client_error(exc))
        else:
            queued.unit = unit
        finally:
            local.tx = None
        conn.execute(f"RELEASE {_SAVEPOINT}")
