"""SQLite storage: the faults of the file as the rest of the server sees them: damage (found by
integrity.py's checks, here or in another process), a full or read-only disk (``faults.FreeSpace``),
the bounded queues (bounds.py), and what a storage failure means to a client (``app_error``).

A mixin of ``database.Database``, apart from it so that module keeps to opening the file, handing
out units of work and the write path. It holds no state of its own: the attributes below are the
database's, set in ``Database.__init__``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError
from agentmemory_server.storage.sqlite.bounds import QueueBounds
from agentmemory_server.storage.sqlite.faults import FreeSpace, classify, damaged
from agentmemory_server.storage.sqlite.integrity import IntegrityChecks


class StorageFaults:
    """The part of ``Database`` that reports its faults and refuses writes while they last."""

    path: Path
    integrity: IntegrityChecks
    space: FreeSpace
    bounds: QueueBounds

    @property
    def damage(self) -> dict[str, Any] | None:
        """What made the file count as damaged (here or in another process), or None."""
        return self.integrity.damage

    @property
    def last_check(self) -> dict[str, Any] | None:
        """This process's last integrity check (or the pass of another's it took over)."""
        return self.integrity.last_check

    def periodic_integrity_check(self, budget_seconds: float, passed_within: float) -> list[str] | None:
        return self.integrity.periodic_check(budget_seconds, passed_within)

    def run_integrity_check(self, budget_seconds: float, source: str) -> list[str] | None:
        return self.integrity.run_check(budget_seconds, source)

    def mark_damaged(self, problems: list[str], source: str) -> None:
        self.integrity.mark_damaged(problems, source)

    def app_error(self, exc: BaseException) -> AppError | None:
        """What a storage failure means to the client (None: not a storage failure). Damage
        found this way marks the database damaged."""
        error = classify(exc, self.path)
        if error is not None and error.code == errors.DATABASE_DAMAGED:
            self.mark_damaged(error.details["problems"], "a query")
        elif error is not None and error.code == errors.DISK_FULL:
            self.space.note_full()
        elif error is not None and error.code == errors.STORAGE_READ_ONLY:
            self.space.read_only_seen = True
        return error

    def close_queue(self, name: str) -> None:
        """Accept no entries into queue ``name`` from now on (see ``QueueBounds.close``)."""
        self.bounds.close(name)

    def queue_stats(self) -> dict[str, Any]:
        """Size, bound and entries shed of each bounded queue."""
        return self.bounds.stats()

    def storage_health(self) -> dict[str, Any]:
        """Disk space and integrity, for /health."""
        return {"disk": self.space.health(), "integrity": self.integrity.health()}

    def _refuse_writes_if_unsafe(self) -> None:
        if self.damage is not None:
            raise damaged(self.path, self.damage["problems"])
        self.space.check_write()
