"""The storage interface, part three: the ledgers of background and model work.

``AuditLog`` (one row per transaction that changed something), ``JobQueue`` (durable background
jobs, periodic jobs run once per database, worker heartbeats) and ``ModelUsage`` with its
``ModelCall`` (model calls and tokens summed per day, provider, model and feature).
Re-exported by ``interfaces``, which describes the whole interface and holds the unit of work
and the database; import these names from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class AuditLog(Protocol):
    def insert(
        self,
        *,
        ts: str,
        agent_id: str | None,
        operation: str,
        message: str,
        targets: list[str],
        details: dict[str, Any],
    ) -> None: ...
    def page(
        self, *, operation: str | None, limit: int, offset: int, agent_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]: ...
    def times(self, operation: str, *, limit: int) -> list[str]: ...


class JobQueue(Protocol):
    """Durable background jobs keyed by (kind, ref), claimed with a lease; periodic jobs that
    run once per database whichever worker claims them; the heartbeats of background workers."""

    def claim_periodic(
        self, name: str, now_epoch: float, lease_until: float, holder: str, first_run: float | None = None
    ) -> bool:
        """Claim the run of periodic job ``name`` that is due at ``now_epoch`` for ``holder``:
        its next run moves to ``lease_until``, when the claim lapses unless the holder renews it
        (``hold_periodic``) or records the run (``periodic_done``). False when it is not due or
        another worker claimed it first. A job never seen is recorded as due at ``first_run``
        (default ``lease_until``)."""
        ...

    def hold_periodic(self, name: str, now_epoch: float, lease_until: float, holder: str) -> bool:
        """Renew ``holder``'s claim of ``name``'s run until ``lease_until``, or take the run up
        if its claim lapsed (it is due); False when another worker has claimed it since."""
        ...

    def periodic_due_at(self, name: str) -> float | None:
        """When the run of ``name`` now due, or under way, became due (epoch seconds): its period's
        start. Claims, renewals and take-ups keep it (``next_run`` moves to each lease's end);
        recording a claimed run sets it to the next run's time. None: a job never seen."""
        ...

    def periodic_next_run(self, name: str) -> float | None:
        """When ``name`` may next be claimed (epoch seconds): its next run's time, or while a
        run goes on, when its claim lapses unless renewed. None: a job never seen."""
        ...

    def holds_periodic(self, name: str, holder: str) -> bool:
        """Whether ``holder`` still holds the claim of ``name``'s run (lapsed or not: nobody took
        it up). Read inside a write transaction, the answer stands until it commits: claims are
        written under the same write lock."""
        ...

    def periodic_done(
        self,
        name: str,
        now_epoch: float,
        error: str | None,
        *,
        holder: str | None = None,
        next_run: float | None = None,
    ) -> bool:
        """Count a finished run of ``name``: a failure records its message and time (``lastError``,
        ``lastErrorAt``) and clears ``recoveredAt``; a success after a standing error sets it.
        With ``holder`` and ``next_run``: the run was claimed, and while ``holder`` still holds
        the claim its next run moves to ``next_run`` (one period after the claim). False, and
        nothing recorded, when another worker has taken the run up since: its own run is the one
        counted, and its claim sets the schedule."""
        ...

    def periodic_status(self) -> list[dict[str, Any]]: ...
    def worker_beat(
        self, worker_id: str, host: str, pid: int, started_at: float, now_epoch: float, info: dict[str, Any]
    ) -> None: ...
    def worker_gone(self, worker_id: str) -> None: ...
    def workers(self, since_epoch: float) -> list[dict[str, Any]]:
        """Workers whose last heartbeat is at or after ``since_epoch``."""
        ...

    def put(self, kind: str, ref: str, args: dict[str, Any], now: str, not_before: float = 0.0) -> bool: ...
    def claim(self, now_epoch: float, limit: int, lease_until: float) -> list[dict[str, Any]]: ...
    def done(self, kind: str, ref: str, queued_at: str) -> None: ...
    def retry(self, kind: str, ref: str, error: str, next_try: float, counted: bool = True) -> None:
        """Put a job back until ``next_try`` with its error; ``counted``: it uses up an attempt
        (False while it only waits for the model to answer again)."""
        ...

    def stats(self) -> dict[str, Any]:
        """pending, byKind, waiting (jobs tried and put back), the oldest waiting job's
        ``queued_at`` stamp and the latest error."""
        ...


@dataclass(frozen=True)
class ModelCall:
    """What to add to one day's account of a provider, model and feature: calls made (and how
    many failed), their tokens and latency, and calls not made (budget reached, low-value
    input skipped)."""

    day: str  # UTC date, YYYY-MM-DD
    provider: str
    model: str
    feature: str
    calls: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    skipped_budget: int = 0
    skipped_low_value: int = 0


class ModelUsage(Protocol):
    """Model calls summed per (day, provider, model, feature): one small row per combination,
    so adding a call is one upsert and a day's budget check reads a handful of rows."""

    def add(self, call: ModelCall) -> None: ...
    def rows(self, first_day: str, last_day: str) -> list[dict[str, Any]]:
        """Rows of days in [first_day, last_day], each with day, provider, model, feature, calls,
        failed, promptTokens, completionTokens, latencyMsTotal, latencyMsMax, skippedBudget,
        skippedLowValue."""
        ...

    def prune(self, before_day: str) -> int: ...
