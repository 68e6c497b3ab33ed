"""What the two backends' units of work share: the state of one transaction that is not a
repository's.

A write transaction collects what it changes (``touch``, ``record_change``) and writes one audit
row from it before it commits (``write_audit``), and keeps what should run once it has committed
(``after_commit``: a cache to drop, a listener to wake). A reader carries the same fields, empty.
Each backend's unit of work (sqlite/unit_of_work.py, postgres/unit_of_work.py) adds its
repositories, which hold that backend's SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agentmemory_server.storage.sqlite.bounds import QueueBounds

# An audit row names at most this many targets; with more, ``targetCount`` counts them all.
AUDIT_TARGETS_MAX = 50


class UnitOfWorkBase:
    """The fields and methods of a unit of work that are not a repository's (``audit`` is the
    backend's audit repository, which each subclass sets)."""

    audit: Any

    def __init__(
        self,
        conn: Any,
        *,
        writable: bool,
        bounds: QueueBounds | None,
        record_indexes: Mapping[str, tuple[tuple[str, ...], ...]] | None,
        prefix_indexes: Mapping[str, tuple[tuple[str, ...], ...]] | None,
    ):
        self.conn = conn
        self.writable = writable
        self.bounds = bounds or QueueBounds({})
        self.record_indexes = record_indexes or {}  # scope -> the field lists of its declared indexes
        self.prefix_indexes = prefix_indexes or {}  # scope prefix -> the same
        self.lexical_changed = False  # the lexical outbox grew: wake the engine after commit
        self.changed: list[str] = []
        self.audit_message: str | None = None
        self.audit_details: dict[str, Any] = {}
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._after_commit.append(fn)

    def run_after_commit(self) -> None:
        """Run what waited for the commit, in the order it was asked for."""
        for fn in self._after_commit:
            fn()

    def touch(self, scope: str, key: str) -> None:
        self.changed.append(f"{scope}/{key}")

    def record_change(self, what: str, message: str | None = None) -> None:
        self.changed.append(what)
        if message:
            self.audit_message = message

    def write_audit(self, ts: str, operation: str, agent_id: str | None) -> None:
        """The transaction's audit row, in the transaction: what changed (distinct, the first
        AUDIT_TARGETS_MAX) and why."""
        targets = list(dict.fromkeys(self.changed))
        message = self.audit_message or f"{operation}: {len(targets)} record(s) changed"
        details = dict(self.audit_details)
        if len(targets) > AUDIT_TARGETS_MAX:
            details["targetCount"] = len(targets)  # distinct; one that cut ``changed`` short has ``changeCount``
            targets = targets[:AUDIT_TARGETS_MAX]
        self.audit.insert(
            ts=ts, agent_id=agent_id, operation=operation, message=message, targets=targets, details=details
        )
