"""The LLM layer: one chat interface over Gemini, OpenAI-compatible servers and Anthropic, behind a
circuit breaker and a daily token budget; JSON answers checked against a schema (one repair
round); token accounting; and a durable queue of background model work.

Everything built on it has a deterministic path. With no provider, with the breaker open, with
the budget used up, or on any model failure the caller gets None from ``answer`` (or an
``LLMError`` it turns into the fallback), never an error for its own caller; nothing here runs
on the request path of ``observe``. The subsystem ``llm`` reports the provider, the model of
each feature, calls, tokens per day and feature, the budget, the breaker and the job queue in
/health and diagnose.

- **Providers** (providers/: gemini.py, openai.py, anthropic.py over one http.py transport)
  take a ``ChatRequest`` (system, turns, schema) and return a ``Generation`` (text, tokens);
  model_config.py picks the provider and each feature's model from the settings.
- **Breaker** (breaker.py). A refusal is an answer, so it counts as a success.
- **Budget and accounting** (accounting.py): checked before every call, every call recorded.
- **Privacy.** Prompts are built from stored (already stripped) records and stripped again as
  a whole; every parsed answer goes through ``strip_private_data`` before anyone stores it.
  Keys are only ever in request headers and scrubbed from every error.
- **Jobs** (llm_jobs.py): ``enqueue(tx, kind, ref)`` in the caller's transaction; they wait
  while the breaker is open, and a job whose model steps fell back after a failure that may
  pass runs again (``passing_failures`` and ``retry_for``), for up to
  ``AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS``. The job workers run where the
  background loops run (the worker process by default, see ``kernel/background.py``), never
  in a request process.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from agentmemory_server.kernel.privacy import strip_private_data, strip_text
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.schema_check import SchemaValidator
from agentmemory_server.kernel.util import parse_time, truncate
from agentmemory_server.models.accounting import ZERO_BUDGET, Accounting
from agentmemory_server.models.breaker import CircuitBreaker
from agentmemory_server.models.llm_health import LLMHealth, Usage
from agentmemory_server.models.llm_jobs import JOB_KINDS, JobRunner, Retry, in_job, job_handler
from agentmemory_server.models.model_config import FEATURES, PROVIDERS, Clients
from agentmemory_server.providers.chat import USER, ChatRequest, Generation, Refusal, Turn
from agentmemory_server.providers.http import ProviderHTTPError

__all__ = ["FEATURES", "JOB_KINDS", "PROVIDERS", "Generation", "LLMService", "Retry", "Task", "job_handler", "service"]

log = logging.getLogger("agentmemory.llm")
MAX_REPAIR_ECHO = 4000  # characters of a bad answer quoted back to the model


class LLMError(Exception):
    """The model gave no usable answer (transport, HTTP, refusal, breaker open, budget, invalid output)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BreakerOpen(LLMError):
    def __init__(self, retry_at: float | None):
        super().__init__("the model circuit breaker is open")
        self.retry_at = retry_at


class BudgetReached(LLMError):
    """A daily token budget is used up: no call was made."""


class ModelRefused(LLMError):
    """A blocked prompt, a safety stop or an empty answer."""


class InvalidOutput(LLMError):
    def __init__(self, task: str, errors: list[str]):
        super().__init__(f"{task}: the answer failed validation twice: {'; '.join(errors)[:500]}")
        self.errors = errors


# Failures that asking again soon would not change: the model's own answer, or the day's budget.
LASTING_FAILURES = (InvalidOutput, ModelRefused, BudgetReached)
# The passing failures ``answer`` turned into the deterministic path, while a job watches.
_PASSING_FAILURES: ContextVar[list[LLMError] | None] = ContextVar("agentmemory_llm_failures", default=None)


@contextmanager
def passing_failures() -> Iterator[list[LLMError]]:
    """The model failures that may pass (an outage, a timeout, the breaker open) which model
    steps turned into their deterministic result inside the block, on this thread: a job that
    sees one runs again later, instead of keeping the deterministic result for good."""
    failures: list[LLMError] = []
    token = _PASSING_FAILURES.set(failures)
    try:
        yield failures
    finally:
        _PASSING_FAILURES.reset(token)


def passing_failure_count() -> int | None:
    """How many passing failures ``passing_failures`` has seen so far on this thread (None: no
    job is watching, so a model step's fallback is final)."""
    watching = _PASSING_FAILURES.get()
    return None if watching is None else len(watching)


def retry_for(failures: list[LLMError]) -> None:
    """:raise Retry: when the model failed in a way that may pass (see ``passing_failures``)."""
    if failures:
        last = failures[-1]
        raise Retry(last.message, last.retry_at if isinstance(last, BreakerOpen) else None)


# -- tasks: a JSON answer of a known shape ----------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """:param name: for stats and logs. :param instructions: the system instruction.
    :param schema: JSON Schema of the answer. :param check: extra checks -> error messages.
    :param feature: the LLM feature it serves (its model, its budget, its token account)."""

    name: str
    instructions: str
    schema: dict[str, Any]
    check: Callable[[Any], list[str]] | None = None
    feature: str = "other"


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def validate_answer(task: Task, text: str) -> tuple[Any, list[str]]:
    """(value, errors): the parsed JSON and everything wrong with it (empty when valid)."""
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError as exc:
        return None, [f"the answer is not valid JSON ({exc})"]
    validator = SchemaValidator(task.schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {truncate(e.message, 200)}"
        for e in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not errors and task.check is not None:
        errors = task.check(value)
    return value, errors[:10]


OUTPUT_LIMIT_FIX = "raise AGENTMEMORY_LLM_MAX_OUTPUT_TOKENS"


def cut_off_note(generation: Generation, advice: str) -> list[str]:
    """Why an answer cut short by the output limit is invalid (its JSON has no end), and what
    to do: the model is asked to be brief; a person is told the setting."""
    if not generation.cut_off:
        return []
    return [f"the answer was cut off at the output limit after {generation.output_tokens} tokens: {advice}"]


def repair_request(errors: list[str]) -> str:
    lines = "\n".join(f"- {e}" for e in errors)
    return (
        f"Your answer does not match the required JSON Schema:\n{lines}\n"
        "Reply again with only the corrected JSON object."
    )


# -- the subsystem ---------------------------------------------------------------------------------------------

PING = Task(
    "ping",
    'You answer connectivity checks. Reply with the JSON object {"ok": true} and nothing else.',
    {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
    feature="test",
)
PING_OUTPUT_TOKENS = 256  # room for a model that thinks before its five-token answer


class LLMService:
    """The ``llm`` subsystem: provider clients (none without a provider), breaker, budget,
    usage, job workers."""

    def __init__(self, rt: Runtime):
        s = rt.settings
        self.rt, self.settings = rt, s
        self.usage = Usage()
        self.breaker = CircuitBreaker(
            threshold=s.llm_breaker_failures,
            window=s.llm_breaker_window_seconds,
            cooldown=s.llm_breaker_cooldown_seconds,
            clock=rt.clock.time,
        )
        self.clients = Clients(s)
        self.accounting = Accounting(rt)
        self.jobs = JobRunner(rt, paused=self._paused, count=self.usage.add)
        self.report = LLMHealth(self)
        if s.llm_daily_token_budget == 0 and self.has_model:
            log.warning("%s", ZERO_BUDGET)
        if s.background_jobs:
            rt.every(86_400, "llm-usage-prune", self.accounting.prune)
        self.enqueue, self.drain, self.drain_once = self.jobs.enqueue, self.jobs.drain, self.jobs.drain_once

    def start(self) -> None:
        """Start the job workers, once every subsystem is built: a job queued before a restart
        runs at once, and its handler looks this service up in ``rt.services``."""
        if self.rt.runs_background:  # the worker process (or inline threads), never a request process
            self.jobs.start(self.settings.llm_workers)

    # ---- provider, features and flags
    @property
    def provider(self) -> str | None:
        """The provider every feature uses (None: deterministic only)."""
        return self.clients.provider

    @property
    def has_model(self) -> bool:
        return self.clients.provider is not None

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
        return flag == "true" or (flag == "auto" and self.has_model)

    def uses_model(self, feature: str) -> bool:
        """Would ``feature`` ask the model (a provider, its flag on)? The budget is checked per call."""
        return self.has_model and self.feature_on(feature)

    def plan(self, feature: str, budget: dict[str, Any], breaker_open: bool = False) -> dict[str, Any]:
        """What ``feature`` would use now: provider, model, whether it is on, the tokens it has left."""
        cap = budget["features"].get(feature)
        lefts = [left for left in (budget["left"], cap["left"] if cap else None) if left is not None]
        reached = budget["reached"] or bool(cap and cap["reached"])
        return {
            "enabled": self.feature_on(feature),
            "usesModel": self.uses_model(feature) and not reached and not breaker_open,
            "provider": self.provider,
            "model": self.clients.model_for(feature),
            "budgetReached": reached,
            "budgetLeft": min(lefts) if lefts else None,
        }

    def skip_low_value(self, feature: str, reason: str) -> None:
        """Count a model call not made because its input was judged low-value (triage.py)."""
        self.usage.add(skippedLowValue=1)
        self.usage.reason(reason)
        self.accounting.skipped(self.provider or "", self.clients.model_for(feature) or "", feature, low_value=1)

    def provider_down(self) -> bool:
        """Whether an explicit model call (a caller waits on it) should take the deterministic
        path at once: the breaker of this process or of the background worker (its heartbeat)
        is open, so waiting on the provider would only end there after its timeouts and retries.
        This process's own breaker already stopped its calls; the worker's, which the background
        calls open, did not. A background job waits for the model instead (``in_job``)."""
        if in_job():
            return False
        now, breaker = self.rt.clock.time(), self.report.breaker()
        parsed = parse_time(breaker.get("retryAt") or "")
        if breaker["state"] != CircuitBreaker.OPEN or parsed is None or parsed.timestamp() <= now:
            return False  # closed, or half-open: this call may be the trial
        self.usage.add(skippedBreakerOpen=1)
        log.info(
            "the %s model provider is down (breaker opened by %s until %s): the deterministic path answers",
            self.provider,
            "this process" if breaker["process"] == "this" else "the background worker",
            breaker["retryAt"],
        )
        return True

    def _paused(self) -> tuple[str, float | None] | None:
        if self.has_model and self.breaker.state == CircuitBreaker.OPEN:
            return "the model circuit breaker is open", self.breaker.retry_at()
        return None

    # ---- one model call
    def complete(self, feature: str, request: ChatRequest) -> Generation:
        """One call for ``feature`` through the budget and the breaker, accounted.
        :raise LLMError: no usable answer (BudgetReached / BreakerOpen: nothing was sent)."""
        client = self.clients.client(feature)
        if client is None:
            raise LLMError(self.clients.choice.problem or "no model provider is configured")
        self._admit(client, feature)
        verdict = False
        try:
            self.usage.add(calls=1)
            started = time.perf_counter()
            try:
                generation = client.generate(request)
            except Refusal as exc:
                self.breaker.success()  # the service answered; the content was the problem
                verdict = True
                self._account(client, feature, started, exc.prompt_tokens, exc.output_tokens)
                self.usage.add(refused=1)
                self.usage.error(exc.message, self.rt.clock.iso())
                raise ModelRefused(exc.message) from None
            except Exception as exc:  # noqa: BLE001 - any transport or decoding failure counts
                self.breaker.failure()
                verdict = True
                self._account(client, feature, started, failed=1)
                message = exc.message if isinstance(exc, ProviderHTTPError) else f"{type(exc).__name__}: {exc}"
                message = self.clients.scrub(message)
                self.usage.add(failed=1)
                self.usage.error(message, self.rt.clock.iso())
                raise LLMError(message) from None
            self.breaker.success()
            verdict = True
            self._account(client, feature, started, generation.prompt_tokens, generation.output_tokens)
            self.usage.add(succeeded=1)
            self.usage.answered(self.rt.clock.iso())
            return generation
        finally:
            if not verdict:
                self.breaker.release()

    def _admit(self, client: Any, feature: str) -> None:
        """Let a call through the budget, then the breaker (which it then holds until a verdict).
        :raise BudgetReached, BreakerOpen: counted as skipped; nothing is sent."""
        blocked = self.accounting.blocked(feature)
        if blocked is not None:
            self.usage.add(skippedBudget=1)
            self.accounting.skipped(client.provider, client.model, feature, budget=1)
            raise BudgetReached(blocked)
        if not self.breaker.acquire():
            self.usage.add(skippedBreakerOpen=1)
            raise BreakerOpen(self.breaker.retry_at())

    def _account(self, client: Any, feature: str, started: float, prompt: int = 0, output: int = 0, failed: int = 0):
        latency = (time.perf_counter() - started) * 1000
        self.usage.add(promptTokens=prompt, outputTokens=output, totalTokens=prompt + output)
        self.accounting.call(
            client.provider,
            client.model,
            feature,
            failed=failed,
            prompt_tokens=prompt,
            completion_tokens=output,
            latency_ms=latency,
        )

    def generate_json(self, task: Task, prompt: str) -> Any:
        """The model's answer to ``prompt``, valid against ``task.schema`` and privacy-stripped.
        An invalid answer gets one repair round quoting what is wrong.

        :raise LLMError: (BreakerOpen, BudgetReached, ModelRefused, InvalidOutput, ...) no valid answer.
        """
        limit = self.settings.llm_max_prompt_chars
        prompt = strip_text(prompt if len(prompt) <= limit else truncate(prompt, limit))
        system = self.system_text(task)
        request = ChatRequest(system, [Turn(USER, prompt)], task.schema, task.name)
        generation = self.complete(task.feature, request)
        value, errors = validate_answer(task, generation.text)
        if errors:
            self.usage.add(invalidOutputs=1)
            echo = Turn(
                generation.turn().role,
                strip_text(generation.text[:MAX_REPAIR_ECHO]),
                strip_private_data(generation.native),
            )
            complaint = repair_request([*errors, *cut_off_note(generation, "answer more briefly")])
            turns = [*request.turns, echo, Turn(USER, strip_text(complaint))]
            retry = ChatRequest(system, turns, task.schema, task.name)
            repaired = self.complete(task.feature, retry)
            value, errors = validate_answer(task, repaired.text)
            if errors:
                self.usage.add(invalidOutputs=1)
                failure = InvalidOutput(task.name, [*cut_off_note(repaired, OUTPUT_LIMIT_FIX), *errors])
                self.usage.error(failure.message, self.rt.clock.iso())
                raise failure
            self.usage.add(repaired=1)
        return strip_private_data(value)

    def system_text(self, task: Task) -> str:
        """The task's instructions and how to answer. The schema is spelled out unless the provider
        hands it to the model itself (Anthropic's tool definition): sent twice it costs ~250 tokens
        a call for nothing. OpenAI-compatible servers get it in the text too, because some of
        them (Ollama) ignore ``response_format``'s schema."""
        client = self.clients.client(task.feature)
        if client is not None and client.carries_schema:
            return f"{task.instructions}\n\nAnswer by calling the provided tool with a JSON object for its schema."
        return (
            f"{task.instructions}\n\nAnswer with a single JSON object that matches this JSON Schema, "
            f"and nothing else:\n{json.dumps(task.schema, separators=(',', ':'))}"
        )

    def answer(self, task: Task, prompt: str) -> Any | None:
        """``generate_json`` for a model step: None (use the deterministic path) when the model
        gives no valid answer."""
        try:
            return self.generate_json(task, prompt)
        except LLMError as exc:
            log.warning("%s: model step fell back to the deterministic path: %s", task.name, exc.message)
            watching = _PASSING_FAILURES.get()
            if watching is not None and not isinstance(exc, LASTING_FAILURES):
                watching.append(exc)
            return None

    def probe(self, feature: str | None = None) -> dict[str, Any]:
        """One tiny request to the model ``feature`` uses (None: the provider-wide one) for
        ``agentmemory llm test``: whether it answered, how fast, and what it said. Bypasses the
        breaker and the budget (a person asked for it) but is accounted under feature ``test``."""
        client = self.clients.client(feature)
        if client is None:
            return {"ok": False, "provider": self.clients.choice.name, "error": self.clients.choice.problem}
        request = ChatRequest(PING.instructions, [Turn(USER, "ping")], PING.schema, PING.name, PING_OUTPUT_TOKENS)
        started = time.perf_counter()
        result: dict[str, Any] = {"provider": client.provider, "model": client.model}
        try:
            generation = client.generate(request)
        except Refusal as exc:
            self._account(client, PING.feature, started, exc.prompt_tokens, exc.output_tokens)
            return {**result, "ok": False, "reachable": True, "error": exc.message, "latencyMs": _ms(started)}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            self._account(client, PING.feature, started, failed=1)
            message = exc.message if isinstance(exc, ProviderHTTPError) else f"{type(exc).__name__}: {exc}"
            return {**result, "ok": False, "reachable": False, "error": self.clients.scrub(message)}
        latency = _ms(started)
        self._account(client, PING.feature, started, generation.prompt_tokens, generation.output_tokens)
        _value, errors = validate_answer(PING, generation.text)
        return {
            **result,
            "ok": True,
            "reachable": True,
            "latencyMs": latency,
            "validJson": not errors,
            "answer": truncate(strip_text(generation.text), 200),
            "promptTokens": generation.prompt_tokens,
            "completionTokens": generation.output_tokens,
        }

    def check(self) -> dict[str, Any]:
        """``agentmemory llm test``: the provider, one tiny request to its model and one to each
        other model an enabled feature uses, and what each feature would use."""
        budget = self.accounting.budget(FEATURES)
        return {
            "provider": self.clients.choice.name,
            "baseUrl": self.clients.transport.base if self.clients.transport else None,
            "problem": self.clients.choice.problem,
            "request": self.probe() if self.has_model else None,
            "otherModels": self._probe_feature_models() if self.has_model else [],
            "features": {f: self.plan(f, budget) for f in FEATURES},
            "budget": budget,
        }

    def _probe_feature_models(self) -> list[dict[str, Any]]:
        """A request to each model of AGENTMEMORY_LLM_MODEL_<FEATURE> that an enabled feature
        uses: a name the server does not serve would otherwise pass the test and fail every
        call of that feature."""
        users: dict[str, list[str]] = {}
        for feature in FEATURES:
            model = self.clients.model_for(feature)
            if self.feature_on(feature) and model and model != self.clients.model_for(None):
                users.setdefault(model, []).append(feature)
        return [{**self.probe(features[0]), "features": features} for features in users.values()]

    # ---- subsystem contract
    def heartbeat(self) -> dict[str, Any]:
        """This process's model work for a background worker's heartbeat row: counters, last
        error, breaker and job threads. Request processes fold it into /health and diagnose."""
        return {
            **self.usage.snapshot(),
            "httpRetries": self.http_retries(),
            "breaker": self.breaker.state,
            "breakerDetail": self.breaker.snapshot(),
            "workers": self.jobs.alive(),
        }

    def http_retries(self) -> int:
        return self.clients.transport.retries if self.clients.transport else 0

    def health(self) -> dict[str, Any]:
        return self.report.health()

    def diagnose(self) -> list[dict[str, Any]]:
        return self.report.diagnose()

    def close(self) -> None:
        self.jobs.close()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def service(rt: Runtime) -> LLMService:
    return rt.services["llm"]
