"""The durable queue of background model work and its workers.

``enqueue(tx, kind, ref)`` writes a row of ``llm_jobs`` in the caller's transaction (so a crash
never loses work that was promised); worker threads (``AGENTMEMORY_LLM_WORKERS``, only with
``AGENTMEMORY_BACKGROUND_JOBS``) claim due jobs one at a time (a lease hides a claimed job; one
whose worker died runs again when it expires) and run the handler registered with
``@job_handler(kind)``.

Three ways a job does not finish, kept apart because an outage is ordinary and a bug is not:

- **The model is unreachable** (the breaker is open, or the handler raised ``Retry``: an HTTP
  error after its retries, a timeout). The job stays queued and is tried again with a backoff
  that grows with its age (half its age, 5 s to ``OUTAGE_RETRY_CAP``); these waits use up no
  attempts, so an outage of minutes or hours loses nothing. While the breaker is open the
  workers claim nothing (only the breaker's trial call goes out). Only a job older than
  ``AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS`` (a day) is given up.
- **Its write found the store busy or not answering** (another writer, a replace import, held
  the write lock past the wait; PostgreSQL restarted or is down: ``errors.waits_for_the_store``).
  The job stays queued and is tried again after ``BUSY_RETRY_SECONDS``, using up no attempt
  while it is younger than the maximum age: the model has answered, and the store's wait is not
  the job's fault. Past the maximum age each such wait uses up an attempt, so a failure that only
  looks like the store's (a bug the store reports as busy) still ends.
- **The handler raised anything else** (a bug, bad data): retried with doubling backoff at most
  ``AGENTMEMORY_LLM_JOB_ATTEMPTS`` times.

A job given up is dropped (its ``on_give_up`` runs) and the deterministic result stands. The
queue is a table, so a restart keeps every waiting job, its age and its attempts.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import CapacityExceeded
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.util import WorkerFailures
from agentmemory_server.threads import lower_thread_priority

log = logging.getLogger("agentmemory.llm")
JOB_BATCH = 8
JOB_RETRY_CAP = 3600.0  # between tries of a job whose handler failed
BUSY_RETRY_SECONDS = 30.0  # a job that found the database busy (a replace import) or not answering
OUTAGE_RETRY_CAP = 600.0  # between tries of a job waiting for the model: it runs at most 10 min after recovery
OUTAGE_RETRY_MIN = 5.0
# True while a background job runs on this thread: its model calls wait for the model, while an
# explicit call (a client waiting on the answer) takes the deterministic path at once while the
# provider is down.
_IN_JOB: ContextVar[bool] = ContextVar("agentmemory_llm_in_job", default=False)


@contextmanager
def running_job() -> Iterator[None]:
    token = _IN_JOB.set(True)
    try:
        yield
    finally:
        _IN_JOB.reset(token)


def in_job() -> bool:
    """Is this thread running a background model job (not serving a caller)?"""
    return _IN_JOB.get()


class Retry(Exception):
    """Raised by a job handler: run the job again later (not before ``not_before``, epoch s)."""

    def __init__(self, reason: str, not_before: float | None = None):
        super().__init__(reason)
        self.reason, self.not_before = reason, not_before


@dataclass(frozen=True)
class JobKind:
    run: Callable[[Ctx, str, dict], None]
    on_give_up: Callable[[Ctx, str, dict], None] | None = None


JOB_KINDS: dict[str, JobKind] = {}


def job_handler(kind: str, *, on_give_up: Callable[[Ctx, str, dict], None] | None = None):
    """Register ``fn(ctx, ref, args)`` as the handler of background jobs of ``kind``."""

    def register(fn: Callable[[Ctx, str, dict], None]) -> Callable[[Ctx, str, dict], None]:
        if kind in JOB_KINDS:
            raise ValueError(f"duplicate LLM job kind {kind!r}")
        JOB_KINDS[kind] = JobKind(fn, on_give_up)
        return fn

    return register


def _stamp(epoch: float) -> str:
    """When a job was queued, on the runtime clock (its age decides when an outage makes us give
    it up), with a random tail: the stamp also tells a re-queued job from the one that ran, and
    two jobs may be queued within one clock tick."""
    when = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{when}~{secrets.token_hex(4)}"


def queued_epoch(stamp: str) -> float | None:
    """The epoch time of a ``_stamp`` (stamps written before the tail existed parse too)."""
    try:
        when = datetime.strptime(stamp.split("~", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return when.replace(tzinfo=UTC).timestamp()


def outage_delay(age: float) -> float:
    """Seconds before a job waiting for the model is tried again: half its age, so the tries
    thin out geometrically through a long outage, between 5 s and 10 minutes."""
    return min(OUTAGE_RETRY_CAP, max(OUTAGE_RETRY_MIN, age / 2))


class JobRunner:
    """:param paused: returns (reason, retry_at) while jobs should wait (breaker open), else None.
    :param count: adds to the LLM layer's usage counters (jobsDone, jobsRetried, jobsAbandoned)."""

    def __init__(
        self,
        rt: Runtime,
        *,
        paused: Callable[[], tuple[str, float | None] | None],
        count: Callable[..., None],
    ):
        self.rt, self.settings = rt, rt.settings
        self.paused, self.count = paused, count
        self._wake, self._stop = threading.Event(), threading.Event()
        self._shed_log = WorkerFailures(log, "LLM job queue")
        # Shared by the worker threads: a busy database fails them all at once, one line a minute
        self._batch_failures = WorkerFailures(log, "LLM job batch")
        self.threads: list[threading.Thread] = []

    def start(self, workers: int) -> None:
        for n in range(workers):
            thread = threading.Thread(target=self._work, name=f"agentmemory-llm-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def enqueue(
        self, tx: Any, kind: str, ref: str, args: dict[str, Any] | None = None, not_before: float = 0.0
    ) -> None:
        """Queue a job inside the caller's transaction (it runs once that commits). When the queue
        is at AGENTMEMORY_LLM_JOBS_MAX the job is shed: the record keeps its deterministic result
        (counted in /health, logged at most once a minute)."""
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown LLM job kind {kind!r}")
        if tx.jobs.put(kind, ref, args or {}, _stamp(self.rt.clock.time()), not_before):
            tx.after_commit(self._wake.set)
        else:
            self._shed_log.failed(
                CapacityExceeded(f"the model job queue is full ({self.settings.llm_jobs_max} jobs): {kind} {ref} shed")
            )

    def drain_once(self, limit: int = JOB_BATCH) -> int:
        """Claim and run due jobs (at most ``limit``); returns how many were taken."""
        now = self.rt.clock.time()
        lease = now + self.settings.llm_timeout_seconds * self.settings.llm_max_attempts * 2 + 60
        with self.rt.db.transaction("llm_job_claim") as tx:
            jobs = tx.jobs.claim(now, limit, lease)
        ctx = Ctx(self.rt, source="llm")
        for job in jobs:
            self._run(ctx, job)
        return len(jobs)

    def drain(self, max_rounds: int = 1000) -> int:
        """Run jobs until none is due (for tests and tools)."""
        total = 0
        for _ in range(max_rounds):
            done = self.drain_once()
            if done == 0:
                break
            total += done
        return total

    def _run(self, ctx: Ctx, job: dict[str, Any]) -> None:
        kind = JOB_KINDS.get(job["kind"])
        try:
            paused = self.paused()
            if kind is None:
                log.warning("dropping an LLM job of unknown kind %r", job["kind"])
            elif paused is not None:
                raise Retry(*paused)
            else:
                with running_job():
                    kind.run(ctx, job["ref"], job["args"])
        except Retry as retry:
            self._wait(ctx, job, kind, retry.reason, retry.not_before)
            return
        except Exception as exc:  # noqa: BLE001 - a job must never kill the worker
            if errors.waits_for_the_store(exc):
                # Another writer (a replace import) held the database's write lock past the wait,
                # or the store did not answer (a PostgreSQL restart or outage): not the job's
                # fault, so it uses up no attempt and logs no traceback. If the database is still
                # busy or gone for this write too, the job's lease runs out and it is taken again
                # then.
                self._wait_for_database(ctx, job, kind, exc.message)
                return
            log.exception("LLM job %s %s failed", job["kind"], job["ref"])
            self._retry(ctx, job, kind, f"{type(exc).__name__}: {exc}")
            return
        with self.rt.db.transaction("llm_job_done") as tx:
            tx.jobs.done(job["kind"], job["ref"], job["queuedAt"])
        self.count(jobsDone=1)

    def max_age(self) -> float:
        return self.settings.llm_job_max_age_hours * 3600

    def _wait(self, ctx: Ctx, job: dict[str, Any], kind: JobKind | None, reason: str, not_before: float | None) -> None:
        """The model could not be reached: keep the job, try it again later, use up no attempt;
        give it up only once it is older than AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS."""
        now = self.rt.clock.time()
        since = queued_epoch(job["queuedAt"])
        age = max(0.0, now - since) if since is not None else 0.0
        if age >= self.max_age():
            self._give_up(ctx, job, kind, f"still waiting for the model after {age / 3600:.1f} h: {reason}")
            return
        next_try = max(now + outage_delay(age), not_before or 0.0)
        with self.rt.db.transaction("llm_job_wait") as tx:
            tx.jobs.retry(job["kind"], job["ref"], strip_text(reason), next_try, counted=False)
        self.count(jobsRetried=1)

    def _wait_for_database(self, ctx: Ctx, job: dict[str, Any], kind: JobKind | None, reason: str) -> None:
        """The job found the database busy or not answering (``errors.waits_for_the_store``):
        keep the job and try it again after BUSY_RETRY_SECONDS, using up no attempt. A busy or
        restarting database is no sign the model is gone, so its wait does not give the job up at
        the maximum age as a model outage does; past that age it uses up attempts instead, so a
        job that never gets past the store (a bug it reports as busy) still ends."""
        since = queued_epoch(job["queuedAt"])
        if since is not None and self.rt.clock.time() - since >= self.max_age():
            self._retry(ctx, job, kind, f"the store refused its write past the job's maximum age: {reason}")
            return
        next_try = self.rt.clock.time() + BUSY_RETRY_SECONDS
        with self.rt.db.transaction("llm_job_wait") as tx:
            tx.jobs.retry(job["kind"], job["ref"], strip_text(reason), next_try, counted=False)
        self.count(jobsRetried=1)

    def _retry(self, ctx: Ctx, job: dict[str, Any], kind: JobKind | None, reason: str) -> None:
        """The handler failed (not the model being unreachable): a limited number of tries."""
        attempts = job["attempts"] + 1
        if attempts < self.settings.llm_job_attempts:
            next_try = self.rt.clock.time() + min(JOB_RETRY_CAP, 5.0 * 2**attempts)
            with self.rt.db.transaction("llm_job_retry") as tx:
                tx.jobs.retry(job["kind"], job["ref"], strip_text(reason), next_try)
            self.count(jobsRetried=1)
            return
        self._give_up(ctx, job, kind, f"after {attempts} attempts: {reason}")

    def _give_up(self, ctx: Ctx, job: dict[str, Any], kind: JobKind | None, why: str) -> None:
        log.warning("giving up LLM job %s %s %s", job["kind"], job["ref"], why)
        if kind is not None and kind.on_give_up is not None:
            try:
                with running_job():
                    kind.on_give_up(ctx, job["ref"], job["args"])
            except Exception:  # noqa: BLE001
                log.exception("fallback of LLM job %s %s failed", job["kind"], job["ref"])
        with self.rt.db.transaction("llm_job_abandoned") as tx:
            tx.jobs.done(job["kind"], job["ref"], job["queuedAt"])
        self.count(jobsAbandoned=1)

    def _work(self) -> None:
        lower_thread_priority()  # a job's own work (parsing, merging) yields to requests
        failures = self._batch_failures
        while not self._stop.is_set():
            paused = self.paused()
            if paused is not None:  # claim nothing while the breaker is open: no job could run
                self._wake.wait(min(OUTAGE_RETRY_CAP, max(1.0, (paused[1] or 0.0) - self.rt.clock.time())))
                self._wake.clear()
                continue
            try:
                done = self.drain_once(limit=1)  # one at a time: a slow call holds up no other job
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                failures.failed(exc)
                done = 0
            if done == 0:
                self._wake.wait(2.0)
                self._wake.clear()

    def alive(self) -> int:
        return sum(t.is_alive() for t in self.threads)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self.threads:
            thread.join(timeout=10)
