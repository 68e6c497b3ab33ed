"""Periodic background jobs: the runs, their claims across workers, and the claims' renewal.

``Runtime.every`` registers a job here (``Jobs``); its thread runs each job when due. Apart from
runtime.py because it is a machine of its own (a run claimed once per database, renewed while
it goes on, taken up by another worker when its worker dies, stopped at a checkpoint when its
claim was lost) that the runtime only feeds with the database-backed claim callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, LastError
from agentmemory_server.kernel.util import WorkerFailures
from agentmemory_server.threads import lower_thread_priority

log = logging.getLogger("agentmemory")


# How long a claimed periodic run keeps the other workers off it (a job with a shorter period:
# its period). The worker running it renews the claim every third of that, so a run may take
# longer (a large local snapshot); a worker that dies mid-run (SIGKILL, out of memory, its node
# lost) stops renewing, and any worker takes the run up once the claim lapses, instead of the
# run being lost until the next period (a day for the daily jobs).
CLAIM_LEASE_SECONDS = 300.0


def claim_lease(every: float) -> float:
    """How long a claim of a run of a job run every ``every`` seconds lasts unless renewed."""
    return min(every, CLAIM_LEASE_SECONDS)


def held_until(job: dict[str, Any], renewed_at: float) -> float:
    """Until when a claim renewed at ``renewed_at`` surely keeps other workers off the run: two
    thirds of its lease, the last third left for the clocks of other nodes running ahead."""
    return renewed_at + claim_lease(job["every"]) * 2 / 3


class ClaimLost(Exception):
    """Raised at a periodic job's checkpoint (``Jobs.checkpoint``, ``Jobs.fence``): this worker's
    claim of the run lapsed (the worker was stopped or starved past its lease) and another worker
    took the run up. The run stops here; the other worker's run is the one that counts."""

    def __init__(self, name: str):
        super().__init__(f"another worker took up the run of background job {name}")
        self.name = name


class _ClaimKeeper:
    """Renews the claim of the periodic run going on (jobs run one at a time, on one thread) on
    a thread of its own, started with the first claimed run: a run may then outlast its lease."""

    def __init__(self, hold: Callable[[str, float], bool], failures: WorkerFailures):
        self._hold, self._failures = hold, failures
        self._changed = threading.Condition()
        self._job: dict[str, Any] | None = None  # the job whose claimed run is going on
        self._renewing = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    def keep(self, job: dict[str, Any]) -> None:
        with self._changed:
            self._job = job
            self._changed.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="agentmemory-job-claims", daemon=True)
            self._thread.start()

    def release(self) -> None:
        """The run is over: no renewal starts after this, and one under way is waited for (landing
        after the run is recorded, it would hold the next run for this worker until it lapsed)."""
        with self._changed:
            self._job = None
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._renewing)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _loop(self) -> None:
        while (job := self._next_renewal()) is not None:
            held = True
            try:
                renewed_at = time.time()
                held = self._hold(job["name"], job["every"])
                if held:
                    job["heldUntil"] = held_until(job, renewed_at)
            except Exception as exc:  # noqa: BLE001 - a busy database: the claim may lapse, the run goes on
                self._failures.failed(exc)
            if not held:
                job["lost"] = True  # its next checkpoint stops the run; its finish is not recorded
                log.warning("background job %s: its claim lapsed and another worker took the run up", job["name"])
            with self._changed:
                if not held and self._job is job:
                    self._job = None  # the run goes on here, but its claim is the other worker's now
                self._renewing = False
                self._changed.notify_all()

    def _next_renewal(self) -> dict[str, Any] | None:
        """Wait until the run going on has had a third of its lease; None once stopped."""
        with self._changed:
            while not self._stopped:
                job = self._job
                if job is None:
                    self._changed.wait()
                    continue
                wait = max(claim_lease(job["every"]) / 3, Jobs.POLL_SECONDS)
                if not self._changed.wait_for(lambda: self._job is not job or self._stopped, wait):  # noqa: B023
                    self._renewing = True
                    return job
        return None


class Jobs:
    """Periodic background jobs on one daemon thread; a failing job is logged, never fatal.

    With ``claim`` (the runtime passes one backed by the database) a due run must be claimed
    first, so however many workers run, each run happens once per database, and a restart
    neither repeats a run nor forgets the schedule. A claim lasts ``claim_lease`` seconds and is
    renewed (``hold``) while the run goes on; recording the run (``done``) schedules the next
    one a period after the claim. A run whose worker died is taken up by any worker once its
    claim lapses: a worker whose claim was refused polls the job again when the schedule says
    it may next be claimed (``next_run``: its next run, or when the claim holding it lapses),
    if that comes before its usual poll a minute on. ``run_now`` runs a job here without asking.

    A worker stopped or starved past its lease (SIGSTOP, a stalled VM, a renewal thread that got
    no CPU) finds on waking that another worker took its run up: its finish is not recorded
    (``done`` refuses it), and a job stops at its next ``checkpoint`` (between steps) or ``fence``
    (inside its write transaction) rather than doing the run's work a second time."""

    POLL_SECONDS = 0.5

    def __init__(
        self,
        claim: Callable[[str, float], bool] | None = None,
        done: Callable[[str, str | None, float | None], bool] | None = None,
        hold: Callable[[str, float], bool] | None = None,
        holds: Callable[[Any, str], bool] | None = None,
        due_at: Callable[[str], float | None] | None = None,
        next_run: Callable[[str], float | None] | None = None,
    ) -> None:
        self._jobs: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claim, self._done, self._hold, self._holds = claim, done, hold, holds
        self._due_at = due_at  # when a job's run now due or under way became due, from the shared schedule
        self._next_run = next_run  # when a job may next be claimed, from the shared schedule
        self._here = threading.local()  # the claimed run going on on this thread (``job``), if any
        # A database that refuses writes (busy with a replace import, or not answering) refuses
        # every job's claim: one line a minute for all of them, not one per job
        self._claim_failures = WorkerFailures(log, "could not claim background job runs")
        renew_failures = WorkerFailures(log, "could not renew the claim of a background job run")
        self._keeper = _ClaimKeeper(hold, renew_failures) if hold is not None else None

    def every(self, seconds: float, name: str, fn: Callable[[], Any], *, per_node: bool = False) -> None:
        """Run ``fn`` every ``seconds``: once per database, or with ``per_node`` in every process
        that runs jobs (work on this node's own files)."""
        self._jobs.append(
            {
                "name": name,
                "every": seconds,
                "fn": fn,
                "perNode": per_node,
                "next": time.monotonic() + min(seconds, 60.0),
                "runs": 0,
                "errors": 0,
                "lastError": LastError(),
                "claimedAt": None,  # when this worker claimed the run it holds (epoch seconds)
                "heldUntil": 0.0,  # until when that claim surely holds without asking (epoch seconds)
                "lost": False,  # another worker took up the run claimed here
                "owed": False,  # a run claimed here that the database kept busy (or did not answer)
                "unrecorded": None,  # (error, next run) of a finished run the database kept busy
            }
        )

    def start(self) -> None:
        if self._thread is None and self._jobs:
            self._thread = threading.Thread(target=self._loop, name="agentmemory-jobs", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        lower_thread_priority()  # sweeps, consolidation and backups yield to requests
        while not self._stop.wait(self.POLL_SECONDS):
            for job in self._jobs:
                if time.monotonic() >= job["next"]:
                    self._due(job)

    def _due(self, job: dict[str, Any]) -> None:
        # Ask the database again within a minute at most: another worker may own the schedule.
        job["next"] = time.monotonic() + min(job["every"], 60.0)
        if job["perNode"] or self._claim is None:
            self.run(job)
            return
        try:
            if job["unrecorded"] is not None:
                self._record(job)
            taken = self._take(job)
        except AppError as exc:  # the database does not answer, or is busy: no traceback
            self._claim_failures.failed(exc)
            return
        except Exception:  # noqa: BLE001 - a database hiccup: try at the next poll
            log.exception("claiming background job %s failed", job["name"])
            return
        if taken:
            self.run(job)

    def _take(self, job: dict[str, Any]) -> bool:
        """Claim the job's due run, or keep the claim of the run owed here."""
        assert self._claim is not None
        started = time.time()
        if job["owed"]:
            if self._hold is None or self._hold(job["name"], job["every"]):
                job["heldUntil"] = held_until(job, started)
                return True
            # The database stayed busy past the claim, and another worker took the run up.
            log.info("background job %s: another worker took up the run this one waited to do", job["name"])
            job["owed"], job["claimedAt"] = False, None
            return False
        if self._claim(job["name"], job["every"]):
            job["claimedAt"], job["heldUntil"], job["lost"] = started, held_until(job, started), False
            return True
        self._poll_when_claimable(job)
        return False

    def _poll_when_claimable(self, job: dict[str, Any]) -> None:
        """After a refused claim: poll the job again when its run may next be claimed, if that
        is before the usual poll (a minute on at most). Another worker's claim lapses at the
        end of its lease, so a run whose worker died is taken up at the first poll after that,
        not up to a minute later. Safe to ask early: a claim is one conditional write under the
        write lock, granted to one worker only, and only once the claim it replaces has lapsed."""
        if self._next_run is None:
            return
        claimable = self._next_run(job["name"])
        if claimable is not None:
            wait = max(claimable - time.time(), self.POLL_SECONDS)
            job["next"] = min(job["next"], time.monotonic() + wait)

    def run(self, job: dict[str, Any]) -> None:
        claimed_at = job["claimedAt"]
        claimed = claimed_at is not None and not job["perNode"]
        keeper = self._keeper if claimed else None
        if keeper is not None:
            keeper.keep(job)
        self._here.job = job if claimed else None
        try:
            finished, error = self._call(job)
        finally:
            self._here.job = None
            if keeper is not None:
                keeper.release()
        if not finished:  # kept for the next poll (the database was busy or did not answer)
            return
        job["owed"], job["claimedAt"] = False, None
        if claimed and job["lost"]:
            # The run is the other worker's now: it records it and sets the next one.
            job["lost"] = False
            return
        if self._claim is None or job["perNode"]:
            job["next"] = time.monotonic() + job["every"]
        if self._done is not None and not job["perNode"]:
            job["unrecorded"] = (error, None if claimed_at is None else claimed_at + job["every"])
            try:
                self._record(job)
            except AppError as exc:  # busy or unreachable: recorded at the job's next poll
                log.warning("could not record background job %s's run yet: %s", job["name"], exc.message)
            except Exception:  # noqa: BLE001
                job["unrecorded"] = None
                log.exception("recording background job %s failed", job["name"])

    def _call(self, job: dict[str, Any]) -> tuple[bool, str | None]:
        """Run the job once: (False, None) when the database kept it busy or did not answer (the run is owed),
        else (True, its error for the shared schedule if it failed)."""
        try:
            job["fn"]()
        except ClaimLost:
            log.warning(
                "background job %s: stopped, as another worker took its run up while this one was stopped "
                "or starved past its claim",
                job["name"],
            )
            return True, None
        except AppError as exc:  # a known condition (disk full, damaged file): one line, no traceback
            if errors.waits_for_the_store(exc):  # busy, or not answering: the run waits for it
                self._owe(job, exc)
                return False, None
            job["errors"] += 1
            error = exc.message[:300]  # the shared schedule records it too (it counted as a success)
            job["lastError"].failed(error)
            log.warning("background job %s: %s", job["name"], exc.message)
            return True, error
        except Exception as exc:  # noqa: BLE001 - a job must not kill the scheduler
            job["errors"] += 1
            job["lastError"].failed(str(exc)[:300])
            log.exception("background job %s failed", job["name"])
            return True, str(exc)[:300]
        job["runs"] += 1
        job["lastError"].succeeded()
        return True, None

    def _record(self, job: dict[str, Any]) -> None:
        """Count the finished run in the shared schedule and set its next one (a claimed run's:
        a period after the claim)."""
        assert self._done is not None
        error, next_run = job["unrecorded"]
        if not self._done(job["name"], error, next_run):
            log.warning("background job %s: its run was taken up by another worker, whose run is recorded", job["name"])
        job["unrecorded"] = None

    def _owe(self, job: dict[str, Any], exc: AppError) -> None:
        """The database stayed busy (another writer, such as a replace import, held its write lock
        past the wait) or did not answer (a PostgreSQL restart or outage): not a failure of the
        job. The run is kept (this worker claimed it) and tried again at its next poll, within a
        minute, renewing its claim rather than claiming it again; a job whose period is longer
        would otherwise lose this run until the next period. Should the claim lapse meanwhile and
        another worker take the run up, it is that worker's."""
        if not job["owed"]:
            log.warning("background job %s waits for the database: %s", job["name"], exc.message)
        job["owed"] = True
        job["next"] = time.monotonic() + min(job["every"], 60.0)

    def checkpoint(self) -> None:
        """A periodic job's check between steps (before a model call, a snapshot, each item of a
        batch): raise ``ClaimLost`` when another worker took up the run going on on this thread.
        The database is asked only once the claim's last renewal is two thirds of a lease old
        (``held_until``), which a worker that was stopped or starved finds on waking. A no-op
        outside a claimed run: a tool called by hand, a per-node job, ``run_now``."""
        job = getattr(self._here, "job", None)
        if job is None:
            return
        if not job["lost"] and time.time() >= job["heldUntil"] and self._hold is not None:
            renewed_at = time.time()
            if self._hold(job["name"], job["every"]):
                job["heldUntil"] = held_until(job, renewed_at)
            else:
                job["lost"] = True
        if job["lost"]:
            raise ClaimLost(job["name"])

    def fence(self, tx: Any) -> None:
        """A periodic job's check inside its write transaction ``tx``: raise ``ClaimLost`` (which
        rolls the transaction back) unless this worker still holds the run's claim. Claims are
        written under the same write lock, so no other worker can take the run up between this
        check and the commit: what the transaction writes is written by one run only. A no-op
        outside a claimed run."""
        job = getattr(self._here, "job", None)
        if job is None or self._holds is None:
            return
        if job["lost"] or not self._holds(tx, job["name"]):
            job["lost"] = True
            raise ClaimLost(job["name"])

    def period_began(self) -> float | None:
        """When the period of the claimed run going on on this thread began: when the run became
        due, never after its claim. A run taken up after another worker's claim lapsed has the
        period of that claim, so work the other worker did before stalling counts as this
        period's (a local snapshot). A due time more than a period before the claim is not
        taken: one left by a version that did not record it, or a run long overdue (the node was
        down), whose work done before then belongs to an earlier period. None outside a claimed
        run."""
        job = getattr(self._here, "job", None)
        if job is None or job["claimedAt"] is None:
            return None
        claimed = job["claimedAt"]
        due = self._due_at(job["name"]) if self._due_at is not None else None
        return claimed if due is None else min(max(due, claimed - job["every"]), claimed)

    def run_now(self, name: str) -> None:
        for job in self._jobs:
            if job["name"] == name:
                self.run(job)

    def status(self) -> list[dict[str, Any]]:
        return [
            {**{k: j[k] for k in ("name", "every", "runs", "errors")}, **j["lastError"].fields()} for j in self._jobs
        ]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
