"""What the ``llm`` subsystem reports: its counters since start (``Usage``), and the /health
section, /status's sentence on waiting model work and the diagnose checks built from them.

In the default process mode the background worker makes every model call, so a request process
answering /health would see none of them on its own: the report folds in the counters, the last
error and the breaker each live worker writes into its heartbeat row (``heartbeat`` in llm.py).
The calls themselves, the breaker, the budget and the queue are in llm.py, accounting.py,
breaker.py and llm_jobs.py; this module only reads them.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agentmemory_server.errors import LastError
from agentmemory_server.kernel.background import WORKER_ALIVE_SECONDS
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.util import truncate
from agentmemory_server.models.breaker import CircuitBreaker
from agentmemory_server.models.llm_jobs import queued_epoch
from agentmemory_server.models.model_config import FEATURES

if TYPE_CHECKING:
    from agentmemory_server.models.llm import LLMService


class Usage:
    """Counters shown in /health; thread-safe."""

    FIELDS = (
        "calls",
        "succeeded",
        "failed",
        "refused",
        "skippedBreakerOpen",
        "skippedBudget",
        "skippedLowValue",
        "invalidOutputs",
        "repaired",
        "promptTokens",
        "outputTokens",
        "totalTokens",
        "jobsDone",
        "jobsRetried",
        "jobsAbandoned",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)
        self._reasons: dict[str, int] = {}
        self.last_error = LastError()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    def reason(self, name: str) -> None:
        with self._lock:
            self._reasons[name] = self._reasons.get(name, 0) + 1

    def error(self, message: str, when: str) -> None:
        self.last_error.failed(truncate(strip_text(message), 300), when)

    def answered(self, when: str) -> None:
        """The model answered: a standing last error is recovered from."""
        self.last_error.succeeded(when)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._counts,
                "lowValueReasons": dict(self._reasons),
                **self.last_error.fields(),
            }


def merged_usage(own: dict[str, Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """This process's counters plus those the background workers report, and the newest last
    error of them all (with its ``recoveredAt``). In the default process mode the worker makes
    every background call, so a request process alone would show none of them."""
    out = {**own, "lowValueReasons": dict(own["lowValueReasons"])}
    for report in reports:
        for name in Usage.FIELDS:
            out[name] += int(report.get(name) or 0)
        for reason, n in (report.get("lowValueReasons") or {}).items():
            out["lowValueReasons"][reason] = out["lowValueReasons"].get(reason, 0) + int(n or 0)
        if report.get("lastErrorAt") and report["lastErrorAt"] > (out["lastErrorAt"] or ""):
            out["lastError"], out["lastErrorAt"] = report.get("lastError"), report["lastErrorAt"]
            out["recoveredAt"] = report.get("recoveredAt")
    return out


_BREAKER_RANK = {CircuitBreaker.CLOSED: 0, CircuitBreaker.HALF_OPEN: 1, CircuitBreaker.OPEN: 2}


def worst_breaker(own: dict[str, Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The breaker that holds back the most model work: this process's or a worker's. Each
    process has its own breaker, and the worker's is the one the background jobs wait on."""
    chosen = {**own, "process": "this"}
    for report in reports:
        detail = report.get("breakerDetail")
        if isinstance(detail, dict) and _BREAKER_RANK.get(str(detail.get("state")), 0) > _BREAKER_RANK[chosen["state"]]:
            chosen = {**detail, "process": "worker"}
    return chosen


class LLMHealth:
    """The ``llm`` subsystem's /health section and diagnose checks, read from ``llm``'s parts
    and the live workers' heartbeats."""

    def __init__(self, llm: LLMService):
        self.llm = llm

    def breaker(self) -> dict[str, Any]:
        """The breaker that holds back the most model work now: this process's or a live worker's."""
        return worst_breaker(self.llm.breaker.snapshot(), self.worker_reports())

    def worker_reports(self) -> list[dict[str, Any]]:
        """The heartbeats of the live background workers (none where this process runs the jobs)."""
        if self.llm.rt.runs_background:
            return []
        since = time.time() - WORKER_ALIVE_SECONDS
        return [w["llm"] for w in self.llm.rt.db.reader().jobs.workers(since) if isinstance(w.get("llm"), dict)]

    def mode(self, budget: dict[str, Any], breaker: dict[str, Any] | None = None) -> str:
        if not self.llm.has_model:
            return "deterministic"
        if budget["zero"]:
            return "deterministic: the daily token budget is 0 (AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET)"
        if budget["reached"]:
            return f"deterministic until {budget['resetsAt']}: the daily token budget is used up"
        if breaker is not None and breaker["state"] == CircuitBreaker.OPEN:
            return f"deterministic until {breaker['retryAt']}: the model failed repeatedly (circuit breaker open)"
        return "model with deterministic fallback"

    def health(self) -> dict[str, Any]:
        reports = self.worker_reports()
        breaker = worst_breaker(self.llm.breaker.snapshot(), reports)
        degraded = self.llm.has_model and breaker["state"] != CircuitBreaker.CLOSED
        tokens = self.llm.accounting.report(FEATURES)
        budget = tokens.pop("budget")
        breaker_open = breaker["state"] == CircuitBreaker.OPEN
        usage = merged_usage(self.llm.usage.snapshot(), reports)
        return {
            "status": "degraded" if degraded else "healthy",
            "provider": self.llm.provider,
            "model": self.llm.clients.model_for(None),
            "problem": self.llm.clients.choice.problem,
            "mode": self.mode(budget, breaker),
            "features": {f: self.llm.plan(f, budget, breaker_open) for f in FEATURES},
            "breaker": breaker,
            **usage,
            "httpRetries": self.llm.http_retries() + sum(int(r.get("httpRetries") or 0) for r in reports),
            "tokens": tokens,
            "budget": budget,
            "jobs": self.jobs_report(breaker, usage["lastError"]),
            "workers": self.llm.jobs.alive() + sum(int(r.get("workers") or 0) for r in reports),
        }

    def diagnose(self) -> list[dict[str, Any]]:
        if not self.llm.has_model:
            return self._diagnose_without_model()
        reports = self.worker_reports()
        usage = merged_usage(self.llm.usage.snapshot(), reports)
        breaker = worst_breaker(self.llm.breaker.snapshot(), reports)
        checks = [
            _check(
                "llm-provider",
                "pass",
                f"{self.llm.provider} model {self.llm.clients.model_for(None)}: {usage['succeeded']} "
                f"answer(s), {usage['failed']} failure(s) since start",
                "",
            )
        ]
        checks.append(self._breaker_check(breaker, usage["lastError"]))
        checks.append(self._budget_check(self.llm.accounting.budget(FEATURES)))
        checks.append(self._jobs_check(self.jobs_report(breaker, usage["lastError"])))
        return checks

    def _breaker_check(self, breaker: dict[str, Any], last_error: str | None) -> dict[str, Any]:
        """Closed (a pass), or open or half-open with the model's last error (a warning)."""
        closed = breaker["state"] == CircuitBreaker.CLOSED
        return _check(
            "llm-breaker",
            "pass" if closed else "warn",
            "circuit breaker closed"
            if closed
            else f"circuit breaker {breaker['state']} (last error: {last_error}); model "
            f"features use their deterministic paths until {breaker['retryAt']}",
            "" if closed else f"check the {self.llm.provider} key, base URL and quota",
        )

    def _jobs_check(self, jobs: dict[str, Any]) -> dict[str, Any]:
        """The queued model work: a warning, saying why, while it waits for the model."""
        return _check(
            "llm-jobs",
            "warn" if jobs["why"] else "pass",
            jobs["why"] or f"{jobs['pending']} background model job(s) queued",
            f"nothing is lost: they run by themselves once the {self.llm.provider} model answers (each is kept "
            f"{self.llm.settings.llm_job_max_age_hours:g} h, AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS); check the "
            "provider's key, base URL and quota"
            if jobs["why"]
            else "",
        )

    @staticmethod
    def _budget_check(budget: dict[str, Any]) -> dict[str, Any]:
        if budget["zero"]:
            return _check("llm-budget", "warn", budget["zero"], "set AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET=unlimited")
        capped = sorted(f for f, cap in budget["features"].items() if cap["reached"])
        return _check(
            "llm-budget",
            "warn" if budget["reached"] or capped else "pass",
            f"{budget['used']:,} tokens used today"
            + (f" of {budget['daily']:,}" if budget["daily"] is not None else " (no daily budget)")
            + (f"; used up, deterministic until {budget['resetsAt']}" if budget["reached"] else "")
            + (f"; feature caps reached: {', '.join(capped)}" if capped else ""),
            "raise AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET (or a feature's cap) or wait for midnight UTC"
            if budget["reached"] or capped
            else "",
        )

    def jobs_report(self, breaker: dict[str, Any], last_model_error: str | None) -> dict[str, Any]:
        """The queue of model work: how much, how much waits to be tried again, since when and
        why (``why``: one sentence for /status and diagnose: the breaker and the model's last
        error), and its bound."""
        jobs = self.llm.rt.db.reader().jobs.stats()
        since = queued_epoch(jobs.pop("oldestWaitingQueuedAt") or "")
        age = max(0.0, self.llm.rt.clock.time() - since) if since is not None else None
        report = {
            **jobs,
            "oldestWaitingSince": _iso(since) if since is not None else None,
            "oldestWaitingSeconds": round(age) if age is not None else None,
            "maxAgeHours": self.llm.settings.llm_job_max_age_hours,
            "max": self.llm.settings.llm_jobs_max,
            "shed": self.llm.rt.db.queue_stats().get("llm_jobs", {}).get("shed", 0),
        }
        # Waiting: put back after a try, or, while the breaker is open, every queued job (the
        # workers claim none then, so the jobs queued since were never tried).
        stalled = jobs["waiting"] or (jobs["pending"] and breaker["state"] == CircuitBreaker.OPEN)
        report["why"] = self._waiting_why(report, breaker, last_model_error) if stalled else None
        return report

    @staticmethod
    def _waiting_why(jobs: dict[str, Any], breaker: dict[str, Any], last_model_error: str | None) -> str:
        """One sentence: how much model work waits, of which kinds, for how long, and why."""
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(jobs["byKind"].items()))
        cause = {
            CircuitBreaker.OPEN: f"the model failed repeatedly (circuit breaker open until {breaker['retryAt']})",
            CircuitBreaker.HALF_OPEN: "the model failed repeatedly (circuit breaker half-open: the next call is "
            "its trial)",
        }.get(breaker["state"], "the model's last calls failed")
        tried = (
            f"; {jobs['waiting']} tried and put back, the oldest queued "
            f"{_duration(jobs['oldestWaitingSeconds'] or 0)} ago"
            if jobs["waiting"]
            else ""
        )
        error = last_model_error or jobs["lastError"]
        return f"{jobs['pending']} background model job(s) wait for the model ({kinds}{tried}): {cause}" + (
            f"; last error: {error}" if error else ""
        )

    def _diagnose_without_model(self) -> list[dict[str, Any]]:
        problem = self.llm.clients.choice.problem
        if problem:
            return [_check("llm-provider", "warn", f"{problem}: every LLM feature runs deterministically", problem)]
        checks = [
            _check(
                "llm-provider",
                "pass",
                "no model provider: compression, summaries, consolidation, "
                "graph extraction, reflection and crystals run deterministically",
                "",
            )
        ]
        if self.llm.settings.auto_compress:
            checks.append(
                _check(
                    "llm-auto-compress",
                    "warn",
                    "AGENTMEMORY_AUTO_COMPRESS is on but no model provider is configured: observations "
                    "keep the synthetic compression",
                    "set AGENTMEMORY_LLM_PROVIDER and its key (or GEMINI_API_KEY), or turn "
                    "AGENTMEMORY_AUTO_COMPRESS off",
                )
            )
        return checks


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _check(name: str, status: str, message: str, fix: str) -> dict[str, Any]:
    return {"name": name, "category": "llm", "status": status, "message": message, "fix": fix, "fixable": False}
