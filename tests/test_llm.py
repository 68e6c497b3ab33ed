"""The LLM layer with the Gemini provider against the loopback fake: the real generateContent JSON,
usage counts, one repair round for invalid answers, retries with Retry-After, refusals, the
circuit breaker. (The same behaviour with the other providers: test_llm_providers.py.)"""

import json
import logging
import threading

import pytest

from agentmemory_server.models import llm
from agentmemory_server.kernel import registry
from conftest import GEMINI_TEST_KEY, ManualClock
from fake_gemini import Raw
from fake_http import ErrorReply
from agentmemory_server.providers.chat import ChatRequest
from agentmemory_server.providers.gemini import gemini_transport, post_model
from agentmemory_server.providers.http import ProviderHTTPError, retry_after_seconds
from agentmemory_server.models.llm import CircuitBreaker, Task
from agentmemory_server.kernel.registry import Ctx

NOTE = Task("note", "You write a short note.", {
    "type": "object", "required": ["title", "tags"],
    "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 40},
                   "tags": {"type": "array", "items": {"type": "string"}}}})
GOOD = {"title": "a good note", "tags": ["x"]}


def service(rt) -> llm.LLMService:
    return llm.service(rt)


def test_generate_json_speaks_the_real_generate_content_json(llm_runtime, fake_gemini):
    svc = service(llm_runtime())
    fake_gemini.replies = [GOOD]
    assert svc.generate_json(NOTE, "write about foxes") == GOOD
    call = fake_gemini.calls[-1]
    assert call["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert call["headers"]["x-goog-api-key"] == GEMINI_TEST_KEY and GEMINI_TEST_KEY not in call["path"]
    body = call["body"]
    assert body["contents"] == [{"role": "user", "parts": [{"text": "write about foxes"}]}]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert "thinkingConfig" not in body["generationConfig"]
    system = body["systemInstruction"]["parts"][0]["text"]
    assert system.startswith("You write a short note.") and '"required":["title","tags"]' in system
    health = svc.health()
    assert health["provider"] == "gemini" and health["model"] == "gemini-2.5-flash"
    assert (health["calls"], health["succeeded"], health["failed"]) == (1, 1, 0)
    assert health["promptTokens"] > 0 and health["outputTokens"] > 0
    assert health["totalTokens"] == health["promptTokens"] + health["outputTokens"]
    assert health["breaker"]["state"] == "closed" and health["status"] == "healthy"


def test_model_and_thinking_budget_are_configurable(llm_runtime, fake_gemini):
    svc = service(llm_runtime(gemini_model="gemini-2.0-flash", gemini_thinking_budget=0))
    fake_gemini.replies = [GOOD]
    svc.generate_json(NOTE, "x")
    assert fake_gemini.calls[-1]["path"].endswith("/models/gemini-2.0-flash:generateContent")
    assert fake_gemini.calls[-1]["body"]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}


def test_malformed_answer_gets_one_retry_quoting_the_errors(llm_runtime, fake_gemini):
    svc = service(llm_runtime())
    fake_gemini.replies = [{"title": 5, "tags": "x"}, "```json\n" + json.dumps(GOOD) + "\n```"]
    assert svc.generate_json(NOTE, "write") == GOOD  # a fenced answer is accepted too
    retry = fake_gemini.generations()[-1]["contents"]
    assert [t["role"] for t in retry] == ["user", "model", "user"]
    assert json.loads(retry[1]["parts"][0]["text"]) == {"title": 5, "tags": "x"}
    complaint = retry[2]["parts"][0]["text"]
    assert "title: 5 is not of type 'string'" in complaint and "tags: 'x' is not of type 'array'" in complaint
    usage = svc.health()
    assert (usage["invalidOutputs"], usage["repaired"], usage["calls"]) == (1, 1, 2)


def test_an_answer_invalid_twice_is_an_error_after_exactly_two_calls(llm_runtime, fake_gemini):
    svc = service(llm_runtime())
    fake_gemini.replies = ["this is not json", {"title": ""}]
    with pytest.raises(llm.InvalidOutput) as caught:
        svc.generate_json(NOTE, "write")
    assert "not valid JSON" in fake_gemini.prompts()[-1]
    assert any("tags" in e for e in caught.value.errors) and len(fake_gemini.generations()) == 2
    assert svc.health()["invalidOutputs"] == 2 and svc.breaker.state == "closed"


def test_429_is_retried_after_the_retry_after_delay(llm_runtime, fake_gemini):
    svc = service(llm_runtime())
    slept = []
    svc.clients.transport.sleep = slept.append
    fake_gemini.fail_next = [(429, {"Retry-After": "7"}), 503]
    fake_gemini.replies = [GOOD]
    assert svc.generate_json(NOTE, "write") == GOOD
    assert slept == [7.0, 0.0]  # Retry-After honoured; no header: the (zero) backoff
    assert len(fake_gemini.calls) == 3 and svc.health()["httpRetries"] == 2
    assert svc.health()["failed"] == 0 and svc.breaker.state == "closed"


def gemini_429(*details: dict) -> ErrorReply:
    """Gemini's quota answer: no Retry-After header, typed google.rpc details in the body."""
    return ErrorReply(429, {"error": {"code": 429, "message": "You exceeded your current quota.",
                                      "status": "RESOURCE_EXHAUSTED", "details": list(details)}})


def quota(quota_id: str) -> dict:
    return {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": quota_id}]}


def test_a_gemini_429_waits_its_retry_delay_and_a_used_up_daily_quota_is_not_retried(llm_runtime, fake_gemini):
    """Gemini says how long to wait in the body (RetryInfo.retryDelay), not in a Retry-After
    header: the retries used to come after the 0-2 s backoff and fail again. A daily quota clears
    at midnight Pacific time: retrying it in seconds burnt every attempt of every call."""
    svc = service(llm_runtime(llm_retry_backoff_seconds=1.0))
    slept = []
    svc.clients.transport.sleep = slept.append
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
    fake_gemini.fail_next = [gemini_429(quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"), retry_info)]
    fake_gemini.replies = [GOOD]
    assert svc.generate_json(NOTE, "write") == GOOD
    assert slept == [17.0]
    fake_gemini.fail_next = [gemini_429(quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
                                        {**retry_info, "retryDelay": "3600s"})]
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    assert "HTTP 429 RESOURCE_EXHAUSTED 429: You exceeded your current quota." in caught.value.message
    assert len(fake_gemini.calls) == 3 and slept == [17.0]  # the daily quota: one attempt, no wait


def test_backoff_doubles_and_is_capped():
    slept = []
    transport = gemini_transport(api_key="k", base_url="http://127.0.0.1:9", timeout=0.2, max_backoff=5.0,
                                 sleep=slept.append)
    with pytest.raises(ProviderHTTPError):
        post_model(transport, "m", "generateContent", {}, attempts=5, backoff=1.0)  # nothing listens on port 9
    assert slept == [1.0, 2.0, 4.0, 5.0]
    assert retry_after_seconds("12") == 12.0 and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_400_is_not_retried_and_the_key_is_never_echoed(llm_runtime, fake_gemini, caplog):
    rt = llm_runtime()
    svc = service(rt)
    fake_gemini.fail_next = [400]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    assert "HTTP 400" in caught.value.message and len(fake_gemini.calls) == 1
    transport = gemini_transport(api_key="sekrit-key-123", base_url="http://x", timeout=1)
    assert transport.scrub("failed for sekrit-key-123") == "failed for [REDACTED]"
    ctx = Ctx(rt)
    shown = json.dumps([registry.unwrap(registry.call(ctx, name, {}))[0] for name in ("health", "memory_diagnose")]
                       + [rt.settings.public()])
    assert GEMINI_TEST_KEY not in shown and GEMINI_TEST_KEY not in caplog.text
    assert "HTTP 400" in shown  # the error itself is reported


def test_timeout_counts_as_a_failure(llm_runtime, fake_gemini):
    svc = service(llm_runtime(llm_timeout_seconds=0.3, llm_max_attempts=1))
    fake_gemini.stall()
    try:
        with pytest.raises(llm.LLMError) as caught:
            svc.generate_json(NOTE, "write")
    finally:
        fake_gemini.release()
    assert "Timeout" in caught.value.message and svc.health()["failed"] == 1


@pytest.mark.parametrize("body", [
    {"promptFeedback": {"blockReason": "SAFETY"}},
    {"candidates": [{"content": {"parts": [{"text": "{}"}]}, "finishReason": "SAFETY"}]},
    {"candidates": []},
    {"candidates": [{"content": {"parts": [{"text": "thinking", "thought": True}]}, "finishReason": "STOP"}]},
])
def test_blocked_or_empty_answers_are_refusals_not_outages(llm_runtime, fake_gemini, body):
    svc = service(llm_runtime())
    fake_gemini.replies = [Raw(body)] * 3
    for _ in range(3):
        with pytest.raises(llm.ModelRefused):
            svc.generate_json(NOTE, "write")
    assert svc.breaker.state == "closed" and svc.health()["refused"] == 3


def test_truncated_answer_max_tokens_goes_through_the_repair_round(llm_runtime, fake_gemini):
    svc = service(llm_runtime())
    fake_gemini.replies = [Raw({"candidates": [{"content": {"parts": [{"text": '{"title": "cut'}]},
                                                "finishReason": "MAX_TOKENS"}]}), GOOD]
    assert svc.generate_json(NOTE, "write") == GOOD and svc.health()["repaired"] == 1


def test_breaker_opens_after_three_failures_and_recovers_through_one_trial(llm_runtime, fake_gemini):
    clock = ManualClock()
    svc = service(llm_runtime(clock=clock.clock, llm_max_attempts=2))
    fake_gemini.fail_next = [500] * 6  # three calls of two attempts each
    for _ in range(3):
        with pytest.raises(llm.LLMError):
            svc.generate_json(NOTE, "write")
    assert svc.breaker.state == "open" and len(fake_gemini.calls) == 6
    with pytest.raises(llm.BreakerOpen):
        svc.generate_json(NOTE, "write")
    assert len(fake_gemini.calls) == 6  # nothing was sent
    health = svc.health()
    assert health["status"] == "degraded" and health["skippedBreakerOpen"] == 1 and health["failed"] == 3
    clock.advance(29)
    assert svc.breaker.state == "open"
    clock.advance(1)
    assert svc.breaker.state == "half_open"
    fake_gemini.fail_next = [500, 500]  # the trial fails: open again, for another cooldown
    with pytest.raises(llm.LLMError):
        svc.generate_json(NOTE, "write")
    assert svc.breaker.state == "open" and svc.breaker.times_opened == 2
    clock.advance(30)
    fake_gemini.replies = [GOOD]
    assert svc.generate_json(NOTE, "write") == GOOD
    assert svc.breaker.state == "closed" and svc.health()["status"] == "healthy"


def test_half_open_lets_exactly_one_trial_through_across_threads():
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, window=60, cooldown=30, clock=clock.clock.time)
    for _ in range(3):
        assert breaker.acquire()
        breaker.failure()
    assert not breaker.acquire()
    clock.advance(30)
    granted = []
    threads = [threading.Thread(target=lambda: granted.append(breaker.acquire())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(granted) == [False] * 7 + [True]
    breaker.release()  # the trial ended without a verdict: the slot is free again
    assert breaker.acquire() and not breaker.acquire()
    breaker.success()
    assert breaker.state == "closed" and all(breaker.acquire() for _ in range(3))


def test_failures_outside_the_window_do_not_open_the_breaker():
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, window=60, cooldown=30, clock=clock.clock.time)
    breaker.failure()
    breaker.failure()
    clock.advance(61)
    breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    breaker.failure()
    assert breaker.state == "open" and breaker.snapshot()["retryAt"].endswith("Z")


def test_no_key_means_deterministic_and_healthy(make_runtime):
    rt = make_runtime(auto_compress=True)
    svc = service(rt)
    health = svc.health()
    assert health["provider"] is None and health["mode"] == "deterministic" and health["status"] == "healthy"
    assert not any(f["usesModel"] for f in health["features"].values())
    checks = {c["name"]: c for c in svc.diagnose()}
    assert checks["llm-provider"]["status"] == "pass" and checks["llm-auto-compress"]["status"] == "warn"
    with pytest.raises(llm.LLMError):
        svc.complete("compress", ChatRequest("system", []))
