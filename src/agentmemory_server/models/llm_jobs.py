"""The durable queue of background model work and its workers.

``enqueue(tx, kind, ref)`` writes a row of ``llm_jobs`` in the caller's transaction (so a crash
never loses work that was promised); worker threads (``AGENTMEMORY_LLM_WORKERS``, only with
``AGENTMEMORY_BACKGROUND_JOBS``) claim due jobs one at a time (a lease hides a claimed job; one
whose worker died runs again when it expires) and run the handler registered with
``@job_handler(kind)``. While the model is unreachable (the breaker is open) jobs wait; a
handler may raise ``Retry``; after ``AGENTMEMORY_LLM_JOB_ATTEMPTS`` a job is dropped (its
``on_give_up`` runs) and the deterministic result stands.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentmemory_server.errors import CapacityExceeded
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.util import WorkerFailures
from agentmemory_server.threads import lower_thread_priority

log = logging.getLogger("agentmemory.llm")
JOB_BATCH = 8
JOB_RETRY_CAP = 3600.0


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


def _stamp() -> str:
    """Wall-clock stamp with microseconds: tells a re-queued job from the one that ran."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        if tx.jobs.put(kind, ref, args or {}, _stamp(), not_before):
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
                kind.run(ctx, job["ref"], job["args"])
        except Retry as retry:
            self._retry(ctx, job, kind, retry.reason, retry.not_before)
            return
        except Exception as exc:  # noqa: BLE001 - a job must never kill the worker
            log.exception("LLM job %s %s failed", job["kind"], job["ref"])
            self._retry(ctx, job, kind, f"{type(exc).__name__}: {exc}", None)
            return
        with self.rt.db.transaction("llm_job_done") as tx:
            tx.jobs.done(job["kind"], job["ref"], job["queuedAt"])
        self.count(jobsDone=1)

    def _retry(
        self, ctx: Ctx, job: dict[str, Any], kind: JobKind | None, reason: str, not_before: float | None
    ) -> None:
        attempts = job["attempts"] + 1
        if attempts < self.settings.llm_job_attempts:
            next_try = max(self.rt.clock.time() + min(JOB_RETRY_CAP, 5.0 * 2**attempts), not_before or 0.0)
            with self.rt.db.transaction("llm_job_retry") as tx:
                tx.jobs.retry(job["kind"], job["ref"], strip_text(reason), next_try)
            self.count(jobsRetried=1)
            return
        log.warning("giving up LLM job %s %s after %d attempts: %s", job["kind"], job["ref"], attempts, reason)
        if kind is not None and kind.on_give_up is not None:
            try:
                kind.on_give_up(ctx, job["ref"], job["args"])
            except Exception:  # noqa: BLE001
                log.exception("fallback of LLM job %s %s failed", job["kind"], job["ref"])
        with self.rt.db.transaction("llm_job_abandoned") as tx:
            tx.jobs.done(job["kind"], job["ref"], job["queuedAt"])
        self.count(jobsAbandoned=1)

    def _work(self) -> None:
        lower_thread_priority()  # a job's own work (parsing, merging) yields to requests
        failures = WorkerFailures(log, "LLM job batch")
        while not self._stop.is_set():
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
