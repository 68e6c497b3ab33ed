"""The Gemini LLM layer: one model client behind a circuit breaker, JSON answers checked against a
schema (one repair round), usage counts, and a durable queue of background model work.

Everything built on it has a deterministic path. With no key, with the breaker open, or on any
model failure the caller gets None from ``answer`` (or an ``LLMError`` it turns into the
fallback), never an error for its own caller; nothing here runs on the request path of
``observe``. The subsystem ``llm`` reports calls, tokens, failures, the breaker and the job queue
in /health and diagnose.

- **Client.** ``generateContent`` on ``{GEMINI_API_BASE}/v1beta/models/{GEMINI_MODEL}`` with
  ``systemInstruction``, ``contents`` (user/model turns) and ``generationConfig`` asking for
  ``application/json``; the answer is ``candidates[0].content.parts[].text``; ``usageMetadata``
  feeds the token counts; a ``promptFeedback.blockReason`` or a safety ``finishReason`` is a
  refusal. Transport retries (429/5xx, Retry-After) are in ``gemini_client.py``, shared with
  the embeddings.
- **Breaker.** Closed; open after ``LLM_BREAKER_FAILURES`` failed calls within
  ``LLM_BREAKER_WINDOW_SECONDS``; after ``LLM_BREAKER_COOLDOWN_SECONDS`` half-open: exactly one
  trial call goes through, its success closes the breaker, its failure opens it again. A
  refusal is an answer, so it counts as a success for the breaker.
- **Privacy.** Prompts are built from stored (already stripped) records and stripped again as
  a whole; every parsed answer goes through ``strip_private_data`` before anyone stores it.
  The key is only ever in a request header.
- **Jobs.** ``enqueue(tx, kind, ref)`` writes a row of ``llm_jobs`` in the caller's
  transaction; worker threads (``AGENTMEMORY_LLM_WORKERS``, only with
  ``AGENTMEMORY_BACKGROUND_JOBS``) claim due jobs one at a time (a lease hides a claimed job;
  one whose worker died runs again when it expires) and run the handler registered with
  ``@job_handler(kind)``. While the breaker is open, jobs wait for it; a
  handler may raise ``Retry``; after ``AGENTMEMORY_LLM_JOB_ATTEMPTS`` a job is dropped (its
  ``on_give_up`` runs) and the deterministic result stands.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonschema

from agentmemory_server.errors import CapacityExceeded
from agentmemory_server.kernel.privacy import strip_private_data, strip_text
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.util import WorkerFailures, truncate
from agentmemory_server.providers.gemini import GeminiHTTPError, GeminiTransport

log = logging.getLogger("agentmemory.llm")
PROVIDER = "gemini"
# finishReasons that mean the model declined to answer (MAX_TOKENS is parsed: it may be usable).
REFUSALS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "IMAGE_SAFETY", "OTHER"}
)
FEATURES = ("compress", "summaries", "reflect", "crystallize", "consolidation", "graph")
MAX_REPAIR_ECHO = 4000  # characters of a bad answer quoted back to the model
JOB_BATCH = 8
JOB_RETRY_CAP = 3600.0


class LLMError(Exception):
    """The model gave no usable answer (transport, HTTP, refusal, breaker open, invalid output)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BreakerOpen(LLMError):
    def __init__(self, retry_at: float | None):
        super().__init__("the Gemini circuit breaker is open")
        self.retry_at = retry_at


class ModelRefused(LLMError):
    """A blocked prompt, a safety stop or an empty answer."""


class InvalidOutput(LLMError):
    def __init__(self, task: str, errors: list[str]):
        super().__init__(f"{task}: the answer failed validation twice: {'; '.join(errors)[:500]}")
        self.errors = errors


# -- the circuit breaker ----------------------------------------------------------------------------


class CircuitBreaker:
    """Thread-safe closed -> open -> half-open breaker on an injectable clock."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, *, threshold: int, window: float, cooldown: float, clock: Callable[[], float]):
        self.threshold, self.window, self.cooldown = threshold, window, cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._trial = False  # the half-open trial call is in flight
        self.times_opened = 0

    def _state(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        return self.HALF_OPEN if self._clock() - self._opened_at >= self.cooldown else self.OPEN

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def retry_at(self) -> float | None:
        """When an open breaker lets its trial call through (None when closed)."""
        with self._lock:
            return None if self._opened_at is None else self._opened_at + self.cooldown

    def acquire(self) -> bool:
        """May a call go now? In half-open state only the first caller may (the trial)."""
        with self._lock:
            state = self._state()
            if state == self.CLOSED:
                return True
            if state == self.HALF_OPEN and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures.clear()
            self._opened_at, self._trial = None, False

    def failure(self) -> None:
        with self._lock:
            now = self._clock()
            if self._opened_at is not None:  # the trial (or a straggler) failed: open again
                self._opened_at, self._trial = now, False
                self.times_opened += 1
                return
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.window:
                self._failures.popleft()
            if len(self._failures) >= self.threshold:
                self._opened_at = now
                self._failures.clear()
                self.times_opened += 1

    def release(self) -> None:
        """Give the trial slot back when a call ended without a verdict."""
        with self._lock:
            self._trial = False

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = self._state()
            retry = None if self._opened_at is None else self._opened_at + self.cooldown
            return {
                "state": state,
                "recentFailures": len(self._failures),
                "timesOpened": self.times_opened,
                "retryAt": _iso(retry) if retry is not None else None,
            }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- usage counters -------------------------------------------------------------------------------------


class Usage:
    """Counters shown in /health; thread-safe."""

    FIELDS = (
        "calls",
        "succeeded",
        "failed",
        "refused",
        "skippedBreakerOpen",
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
        self.last_error: str | None = None
        self.last_error_at: str | None = None

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    def error(self, message: str, when: str) -> None:
        with self._lock:
            self.last_error, self.last_error_at = truncate(strip_text(message), 300), when

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "lastError": self.last_error, "lastErrorAt": self.last_error_at}


# -- the model client ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


def parse_generation(data: dict[str, Any]) -> Generation:
    """The text of ``candidates[0]`` and the usage counts. :raise ModelRefused: blocked or empty."""
    blocked = (data.get("promptFeedback") or {}).get("blockReason")
    if blocked:
        raise ModelRefused(f"Gemini blocked the prompt: {blocked}")
    candidates = data.get("candidates") or []
    if not candidates or not isinstance(candidates[0], dict):
        raise ModelRefused("Gemini answered without candidates")
    first = candidates[0]
    reason = str(first.get("finishReason") or "STOP")
    parts = (first.get("content") or {}).get("parts") or []
    text = "".join(p.get("text") or "" for p in parts if isinstance(p, dict) and not p.get("thought"))
    if reason in REFUSALS:
        raise ModelRefused(f"Gemini stopped the answer: finishReason {reason}")
    if not text.strip():
        raise ModelRefused(f"Gemini answered with no text (finishReason {reason})")
    usage = data.get("usageMetadata") or {}
    return Generation(
        text,
        reason,
        int(usage.get("promptTokenCount") or 0),
        int(usage.get("candidatesTokenCount") or 0),
        int(usage.get("totalTokenCount") or 0),
    )


class GeminiModel:
    """generateContent for one model."""

    def __init__(
        self,
        transport: GeminiTransport,
        model: str,
        *,
        attempts: int,
        backoff: float,
        max_output_tokens: int,
        thinking_budget: int | None,
    ):
        self.transport, self.model = transport, model
        self.attempts, self.backoff = attempts, backoff
        self.max_output_tokens, self.thinking_budget = max_output_tokens, thinking_budget

    def request(self, system: str, contents: list[dict[str, Any]]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "responseMimeType": "application/json",
            "temperature": 0.2,
            "candidateCount": 1,
            "maxOutputTokens": self.max_output_tokens,
        }
        if self.thinking_budget is not None:
            config["thinkingConfig"] = {"thinkingBudget": self.thinking_budget}
        return {"systemInstruction": {"parts": [{"text": system}]}, "contents": contents, "generationConfig": config}

    def generate(self, system: str, contents: list[dict[str, Any]]) -> Generation:
        data = self.transport.post(
            self.model, "generateContent", self.request(system, contents), attempts=self.attempts, backoff=self.backoff
        )
        return parse_generation(data)


# -- tasks: a JSON answer of a known shape ----------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """:param name: for stats and logs. :param instructions: the system instruction.
    :param schema: JSON Schema of the answer. :param check: extra checks -> error messages."""

    name: str
    instructions: str
    schema: dict[str, Any]
    check: Callable[[Any], list[str]] | None = None


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def validate_answer(task: Task, text: str) -> tuple[Any, list[str]]:
    """(value, errors): the parsed JSON and everything wrong with it (empty when valid)."""
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError as exc:
        return None, [f"the answer is not valid JSON ({exc})"]
    validator = jsonschema.Draft202012Validator(task.schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {truncate(e.message, 200)}"
        for e in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not errors and task.check is not None:
        errors = task.check(value)
    return value, errors[:10]


def repair_request(errors: list[str]) -> str:
    lines = "\n".join(f"- {e}" for e in errors)
    return (
        f"Your answer does not match the required JSON Schema:\n{lines}\n"
        "Reply again with only the corrected JSON object."
    )


# -- the subsystem ---------------------------------------------------------------------------------------------


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


class LLMService:
    """The ``llm`` subsystem: model client (None without a key), breaker, usage, job worker."""

    def __init__(self, rt: Runtime):
        s = rt.settings
        self.rt, self.settings = rt, s
        self.usage = Usage()
        self._shed_log = WorkerFailures(log, "LLM job queue")
        self.breaker = CircuitBreaker(
            threshold=s.llm_breaker_failures,
            window=s.llm_breaker_window_seconds,
            cooldown=s.llm_breaker_cooldown_seconds,
            clock=rt.clock.time,
        )
        self.model: GeminiModel | None = None
        if s.gemini_api_key:
            transport = GeminiTransport(
                api_key=s.gemini_api_key, base_url=s.gemini_api_base, timeout=s.gemini_timeout_seconds
            )
            self.model = GeminiModel(
                transport,
                s.gemini_model,
                attempts=s.gemini_max_attempts,
                backoff=s.gemini_retry_backoff_seconds,
                max_output_tokens=s.gemini_max_output_tokens,
                thinking_budget=s.gemini_thinking_budget,
            )
        self.last_consolidation: dict[str, float] = {}
        self._wake, self._stop = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        if s.background_jobs:
            for n in range(s.llm_workers):
                thread = threading.Thread(target=self._work, name=f"agentmemory-llm-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)

    # ---- features and flags
    def feature_on(self, feature: str) -> bool:
        s = self.settings
        return {
            "compress": s.auto_compress,
            "summaries": s.llm_summaries,
            "reflect": s.llm_reflect,
            "crystallize": s.llm_crystallize,
            "consolidation": self.consolidation_on(),
            "graph": s.graph_extraction_enabled,
        }[feature]

    def consolidation_on(self) -> bool:
        flag = self.settings.consolidation_enabled
        return flag == "true" or (flag == "auto" and self.model is not None)

    def uses_model(self, feature: str) -> bool:
        """Would ``feature`` ask the model now (a key, its flag on)?"""
        return self.model is not None and self.feature_on(feature)

    # ---- one model call
    def complete(self, system: str, contents: list[dict[str, Any]]) -> Generation:
        """One generateContent call through the breaker. :raise LLMError: no usable answer."""
        if self.model is None:
            raise LLMError("no Gemini key is configured")
        if not self.breaker.acquire():
            self.usage.add(skippedBreakerOpen=1)
            raise BreakerOpen(self.breaker.retry_at())
        verdict = False
        try:
            self.usage.add(calls=1)
            try:
                generation = self.model.generate(system, contents)
            except ModelRefused as exc:
                self.breaker.success()  # the service answered; the content was the problem
                verdict = True
                self.usage.add(refused=1)
                self.usage.error(exc.message, self.rt.clock.iso())
                raise
            except Exception as exc:  # noqa: BLE001 - any transport or decoding failure counts
                self.breaker.failure()
                verdict = True
                message = exc.message if isinstance(exc, GeminiHTTPError) else f"{type(exc).__name__}: {exc}"
                message = self.model.transport.scrub(message)
                self.usage.add(failed=1)
                self.usage.error(message, self.rt.clock.iso())
                raise LLMError(message) from None
            self.breaker.success()
            verdict = True
            self.usage.add(
                succeeded=1,
                promptTokens=generation.prompt_tokens,
                outputTokens=generation.output_tokens,
                totalTokens=generation.total_tokens,
            )
            return generation
        finally:
            if not verdict:
                self.breaker.release()

    def generate_json(self, task: Task, prompt: str) -> Any:
        """The model's answer to ``prompt``, valid against ``task.schema`` and privacy-stripped.
        An invalid answer gets one repair round quoting what is wrong.

        :raise LLMError: (BreakerOpen, ModelRefused, InvalidOutput, ...) no valid answer.
        """
        limit = self.settings.llm_max_prompt_chars
        prompt = strip_text(prompt if len(prompt) <= limit else truncate(prompt, limit))
        system = (
            f"{task.instructions}\n\nAnswer with a single JSON object that matches this JSON Schema, "
            f"and nothing else:\n{json.dumps(task.schema, separators=(',', ':'))}"
        )
        contents = [{"role": "user", "parts": [{"text": prompt}]}]
        generation = self.complete(system, contents)
        value, errors = validate_answer(task, generation.text)
        if errors:
            self.usage.add(invalidOutputs=1)
            contents += [
                {"role": "model", "parts": [{"text": strip_text(generation.text[:MAX_REPAIR_ECHO])}]},
                {"role": "user", "parts": [{"text": strip_text(repair_request(errors))}]},
            ]
            value, errors = validate_answer(task, self.complete(system, contents).text)
            if errors:
                self.usage.add(invalidOutputs=1)
                failure = InvalidOutput(task.name, errors)
                self.usage.error(failure.message, self.rt.clock.iso())
                raise failure
            self.usage.add(repaired=1)
        return strip_private_data(value)

    def answer(self, task: Task, prompt: str) -> Any | None:
        """``generate_json`` for a model step: None (use the deterministic path) when the model
        gives no valid answer."""
        try:
            return self.generate_json(task, prompt)
        except LLMError as exc:
            log.warning("%s: model step fell back to the deterministic path: %s", task.name, exc.message)
            return None

    # ---- background jobs
    def enqueue(
        self, tx: Any, kind: str, ref: str, args: dict[str, Any] | None = None, not_before: float = 0.0
    ) -> None:
        """Queue a job inside the caller's transaction (it runs once that commits). When the queue
        is at AGENTMEMORY_LLM_JOBS_MAX the job is shed: the record keeps its deterministic result
        (counted in /health as ``jobsShed``, logged at most once a minute)."""
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
        lease = now + self.settings.gemini_timeout_seconds * self.settings.gemini_max_attempts * 2 + 60
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
            if kind is None:
                log.warning("dropping an LLM job of unknown kind %r", job["kind"])
            elif self.model is not None and self.breaker.state == CircuitBreaker.OPEN:
                raise Retry("the Gemini circuit breaker is open", self.breaker.retry_at())
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
        self.usage.add(jobsDone=1)

    def _retry(
        self, ctx: Ctx, job: dict[str, Any], kind: JobKind | None, reason: str, not_before: float | None
    ) -> None:
        attempts = job["attempts"] + 1
        if attempts < self.settings.llm_job_attempts:
            next_try = max(self.rt.clock.time() + min(JOB_RETRY_CAP, 5.0 * 2**attempts), not_before or 0.0)
            with self.rt.db.transaction("llm_job_retry") as tx:
                tx.jobs.retry(job["kind"], job["ref"], strip_text(reason), next_try)
            self.usage.add(jobsRetried=1)
            return
        log.warning("giving up LLM job %s %s after %d attempts: %s", job["kind"], job["ref"], attempts, reason)
        if kind is not None and kind.on_give_up is not None:
            try:
                kind.on_give_up(ctx, job["ref"], job["args"])
            except Exception:  # noqa: BLE001
                log.exception("fallback of LLM job %s %s failed", job["kind"], job["ref"])
        with self.rt.db.transaction("llm_job_abandoned") as tx:
            tx.jobs.done(job["kind"], job["ref"], job["queuedAt"])
        self.usage.add(jobsAbandoned=1)

    def _work(self) -> None:
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

    # ---- subsystem contract
    def health(self) -> dict[str, Any]:
        breaker = self.breaker.snapshot()
        degraded = self.model is not None and breaker["state"] != CircuitBreaker.CLOSED
        return {
            "status": "degraded" if degraded else "healthy",
            "provider": PROVIDER if self.model else None,
            "model": self.model.model if self.model else None,
            "mode": "model with deterministic fallback" if self.model else "deterministic",
            "features": {f: {"enabled": self.feature_on(f), "usesModel": self.uses_model(f)} for f in FEATURES},
            "breaker": breaker,
            **self.usage.snapshot(),
            "httpRetries": self.model.transport.retries if self.model else 0,
            "jobs": {
                **self.rt.db.reader().jobs.stats(),
                "max": self.settings.llm_jobs_max,
                "shed": self.rt.db.queue_stats().get("llm_jobs", {}).get("shed", 0),
            },
            "workers": sum(t.is_alive() for t in self._threads),
        }

    def diagnose(self) -> list[dict[str, Any]]:
        s, checks = self.settings, []
        if self.model is None:
            checks.append(
                _check(
                    "llm-provider",
                    "pass",
                    "no Gemini key: compression, summaries, consolidation, "
                    "graph extraction, reflection and crystals run deterministically",
                    "",
                )
            )
            if s.auto_compress:
                checks.append(
                    _check(
                        "llm-auto-compress",
                        "warn",
                        "AGENTMEMORY_AUTO_COMPRESS is on but no "
                        "GEMINI_API_KEY / GOOGLE_API_KEY is set: observations keep the synthetic "
                        "compression",
                        "set GEMINI_API_KEY, or turn AGENTMEMORY_AUTO_COMPRESS off",
                    )
                )
            return checks
        usage, breaker = self.usage.snapshot(), self.breaker.snapshot()
        checks.append(
            _check(
                "llm-provider",
                "pass",
                f"Gemini model {self.model.model}: {usage['succeeded']} "
                f"answer(s), {usage['failed']} failure(s) since start",
                "",
            )
        )
        closed = breaker["state"] == CircuitBreaker.CLOSED
        checks.append(
            _check(
                "llm-breaker",
                "pass" if closed else "warn",
                "circuit breaker closed"
                if closed
                else f"circuit breaker {breaker['state']} (last error: {usage['lastError']}); model "
                f"features use their deterministic paths until {breaker['retryAt']}",
                "" if closed else "check GEMINI_API_KEY, GEMINI_API_BASE and the Gemini quota",
            )
        )
        jobs = self.rt.db.reader().jobs.stats()
        checks.append(
            _check(
                "llm-jobs",
                "warn" if jobs["waiting"] else "pass",
                f"{jobs['pending']} background model job(s) queued, {jobs['waiting']} waiting to "
                "retry" + (f" (last error: {jobs['lastError']})" if jobs["lastError"] else ""),
                "they run when the model answers again" if jobs["waiting"] else "",
            )
        )
        return checks

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)


def _check(name: str, status: str, message: str, fix: str) -> dict[str, Any]:
    return {"name": name, "category": "llm", "status": status, "message": message, "fix": fix, "fixable": False}


def service(rt: Runtime) -> LLMService:
    return rt.services["llm"]
