"""Every provider (gemini, openai, anthropic) through the one LLM layer, against loopback fakes
that speak each real wire protocol: request and response JSON, usage fields and their
accounting, the repair round, 429 with Retry-After, 529, error bodies, refusals, a slow model, a
model that is down (breaker -> deterministic fallback), per-feature models, the provider as the
``method`` of what the model wrote, and OpenAI-compatible embeddings."""

import json
import logging

import numpy as np
import pytest

from agentmemory_server.errors import Unavailable
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.models import llm
from agentmemory_server.models.llm import Task
from agentmemory_server.models.model_config import choose_provider
from agentmemory_server.retrieval import vectors
from agentmemory_server.retrieval.embeddings import HashEmbedder, OpenAIEmbedder
from conftest import OPENAI_TEST_KEY, ToolCaller, hook, wait_for
from fake_http import Raw
from llm_support import responder

NOTE = Task("note", "You write a short note.", {
    "type": "object", "required": ["title", "tags"],
    "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 40},
                   "tags": {"type": "array", "items": {"type": "string"}}}}, feature="summaries")
GOOD = {"title": "a good note", "tags": ["x"]}
DEFAULT_MODELS = {"gemini": "gemini-2.5-flash", "openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def usage_rows(rt) -> list[dict]:
    return rt.db.reader().usage.rows("0000-01-01", "9999-12-31")


def reported_tokens(name: str, response: dict) -> tuple[int, int]:
    """(prompt, completion) tokens as the provider's usage object says."""
    if name == "gemini":
        return response["usageMetadata"]["promptTokenCount"], response["usageMetadata"]["candidatesTokenCount"]
    if name == "openai":
        return response["usage"]["prompt_tokens"], response["usage"]["completion_tokens"]
    usage = response["usage"]
    return usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"], \
        usage["output_tokens"]


def model_of(name: str, call: dict) -> str:
    return call["path"].split("/models/")[1].split(":")[0] if name == "gemini" else call["body"]["model"]


def assert_wire_shape(name: str, call: dict, key: str) -> None:
    body, headers, path = call["body"], call["headers"], call["path"]
    assert key not in path
    system_hint = 'Answer with a single JSON object that matches this JSON Schema, and nothing else:\n{"type":"object"'
    if name == "gemini":
        assert path == "/v1beta/models/gemini-2.5-flash:generateContent" and headers["x-goog-api-key"] == key
        assert body["contents"] == [{"role": "user", "parts": [{"text": "write about foxes"}]}]
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert system_hint in body["systemInstruction"]["parts"][0]["text"]
    elif name == "openai":
        assert path == "/v1/chat/completions" and headers["Authorization"] == f"Bearer {key}"
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert system_hint in body["messages"][0]["content"] and body["messages"][1]["content"] == "write about foxes"
        assert body["stream"] is False and body["max_tokens"] == 8192 and "max_completion_tokens" not in body
        assert body["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "note", "schema": NOTE.schema, "strict": False}}
    else:
        assert path == "/v1/messages" and headers["x-api-key"] == key
        assert headers["anthropic-version"] == "2023-06-01"
        # The tool definition carries the schema: the system text does not repeat it.
        assert body["system"] == "You write a short note.\n\nAnswer by calling the provided tool with a JSON " \
            "object for its schema."
        assert body["stream"] is False and body["max_tokens"] == 8192
        assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "write about foxes"}]}]
        assert body["tools"] == [{"name": "record_note", "description": "Record the answer as JSON.",
                                  "input_schema": NOTE.schema}]
        assert body["tool_choice"] == {"type": "tool", "name": "record_note"}


def test_each_provider_speaks_its_wire_protocol_and_every_call_is_accounted(provider_runtime, model_api):
    rt = provider_runtime()
    svc = llm.service(rt)
    model_api.fake.replies = [GOOD]
    assert svc.generate_json(NOTE, "write about foxes") == GOOD
    call = model_api.fake.calls[-1]
    assert_wire_shape(model_api.name, call, model_api.key)
    prompt, completion = reported_tokens(model_api.name, call["response"])
    [row] = usage_rows(rt)
    assert (row["provider"], row["model"], row["feature"]) == (model_api.name, DEFAULT_MODELS[model_api.name],
                                                                "summaries")
    assert (row["calls"], row["failed"], row["promptTokens"], row["completionTokens"]) == (1, 0, prompt, completion)
    assert row["latencyMsTotal"] > 0 and row["latencyMsMax"] == row["latencyMsTotal"]
    health = svc.health()
    assert health["provider"] == model_api.name and health["model"] == DEFAULT_MODELS[model_api.name]
    assert health["tokens"]["today"]["totalTokens"] == prompt + completion
    assert health["tokens"]["byFeature"]["summaries"]["calls"] == 1
    assert (health["promptTokens"], health["outputTokens"]) == (prompt, completion)


def test_malformed_json_gets_one_repair_round_in_each_protocol(provider_runtime, model_api):
    rt = provider_runtime()
    svc = llm.service(rt)
    model_api.fake.replies = ["this is not json {", GOOD]
    assert svc.generate_json(NOTE, "write") == GOOD
    retry = model_api.fake.requests()[-1]
    assert [role for role, _ in retry.turns] == ["user", "assistant", "user"]
    assert retry.turns[1][1] == "this is not json {" and "not valid JSON" in retry.turns[2][1]
    health = svc.health()
    assert (health["invalidOutputs"], health["repaired"], health["calls"]) == (1, 1, 2)
    assert sum(r["calls"] for r in usage_rows(rt)) == 2


def test_anthropic_repair_answers_the_tool_call_with_an_error_result(make_runtime, fake_anthropic):
    from conftest import ANTHROPIC_TEST_KEY

    rt = make_runtime(llm_provider="anthropic", anthropic_api_key=ANTHROPIC_TEST_KEY,
                      anthropic_base_url=fake_anthropic.url)
    fake_anthropic.replies = [{"title": 5, "tags": "x"}, GOOD]
    assert llm.service(rt).generate_json(NOTE, "write") == GOOD
    first, retry = fake_anthropic.generations()
    tool_use = retry["messages"][1]["content"][0]
    assert retry["messages"][1]["role"] == "assistant" and tool_use["type"] == "tool_use"
    assert tool_use["input"] == {"title": 5, "tags": "x"} and tool_use["name"] == "record_note"
    [result] = retry["messages"][2]["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == tool_use["id"] and result["is_error"] is True
    assert "title: 5 is not of type 'string'" in result["content"]
    assert first["tool_choice"] == retry["tool_choice"]


def test_an_answer_invalid_twice_fails_after_exactly_two_calls(provider_runtime, model_api):
    svc = llm.service(provider_runtime())
    model_api.fake.replies = ["not json", "still not json"]
    with pytest.raises(llm.InvalidOutput):
        svc.generate_json(NOTE, "write")
    assert len(model_api.fake.generations()) == 2 and svc.breaker.state == "closed"


CUT_OFF = {
    "gemini": {"candidates": [{"content": {"role": "model", "parts": [{"text": '{"title": "a note that never'}]},
                               "finishReason": "MAX_TOKENS"}],
               "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 12, "totalTokenCount": 42}},
    "openai": {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": '{"title": "a note that never', "refusal": None},
         "finish_reason": "length"}], "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}},
    "anthropic": {"id": "x", "type": "message", "role": "assistant", "stop_reason": "max_tokens",
                  "content": [{"type": "text", "text": '{"title": "a note that never'}],
                  "usage": {"input_tokens": 30, "output_tokens": 12}},
}


def test_an_answer_the_output_limit_cut_off_says_so_to_the_model_and_in_the_error(provider_runtime, model_api):
    """An answer cut short by the output limit failed as "not valid JSON (Unterminated string ...)":
    nothing said the limit was the cause, or which setting raises it."""
    svc = llm.service(provider_runtime())
    model_api.fake.replies = [Raw(CUT_OFF[model_api.name])] * 2
    with pytest.raises(llm.InvalidOutput) as caught:
        svc.generate_json(NOTE, "write")
    assert caught.value.message.startswith("note: the answer failed validation twice: the answer was cut off at the "
                                           "output limit after 12 tokens: raise AGENTMEMORY_LLM_MAX_OUTPUT_TOKENS; ")
    assert "cut off at the output limit after 12 tokens: answer more briefly" in model_api.fake.prompts()[1]
    assert "AGENTMEMORY_LLM_MAX_OUTPUT_TOKENS" in svc.health()["lastError"]


def test_429_with_retry_after_and_overload_are_retried(provider_runtime, model_api):
    svc = llm.service(provider_runtime())
    slept: list[float] = []
    svc.clients.transport.sleep = slept.append
    overloaded = 529 if model_api.name == "anthropic" else 503
    model_api.fake.fail_next = [(429, {"Retry-After": "7"}), overloaded]
    model_api.fake.replies = [GOOD]
    assert svc.generate_json(NOTE, "write") == GOOD
    assert slept == [7.0, 0.0]  # Retry-After honoured; no header: the (zero) backoff
    assert len(model_api.fake.calls) == 3 and svc.health()["httpRetries"] == 2
    assert svc.health()["failed"] == 0 and svc.breaker.state == "closed"


@pytest.mark.parametrize("name,code", [("openai", "insufficient_quota"),
                                       ("anthropic", "enforced_spend_limit_reached")])
def test_a_429_that_says_money_ran_out_is_not_retried(make_runtime, name, code, request):
    api = request.getfixturevalue("fake_" + name)
    from conftest import ANTHROPIC_TEST_KEY
    settings = ({"llm_provider": "openai", "openai_api_key": OPENAI_TEST_KEY, "openai_base_url": api.base}
                if name == "openai" else
                {"llm_provider": "anthropic", "anthropic_api_key": ANTHROPIC_TEST_KEY, "anthropic_base_url": api.url})
    svc = llm.service(make_runtime(llm_retry_backoff_seconds=0.0, **settings))
    api.fail_next = [(429, {"Retry-After": "1"}, code)]
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    assert len(api.calls) == 1 and code in caught.value.message and "HTTP 429" in caught.value.message


def test_an_error_in_a_200_body_is_a_failure_that_quotes_it_and_a_502_is_retried(make_runtime, fake_openai):
    """OpenRouter answers 200 once a model took the request, and reports a failure after that as
    {"error": {"code": 502, "message"}} in the body. That used to be a refusal ("the model answered
    without choices"): the provider's message lost, the breaker told the service was fine, and a
    queued compression dropped instead of retried."""
    rt = make_runtime(llm_provider="openai", openai_api_key=OPENAI_TEST_KEY, openai_base_url=fake_openai.base,
                      llm_retry_backoff_seconds=0.0, llm_max_attempts=1)
    svc = llm.service(rt)
    upstream_down = Raw({"error": {"code": 502, "message": "Provider returned error",
                                   "metadata": {"provider_name": "Example"}}})
    fake_openai.replies = [upstream_down]
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    assert not isinstance(caught.value, llm.ModelRefused)
    assert "HTTP 200 with an error in the body: 502: Provider returned error" in caught.value.message
    health = svc.health()
    assert (health["failed"], health["refused"], health["breaker"]["recentFailures"]) == (1, 0, 1)
    patient = llm.service(make_runtime(llm_provider="openai", openai_api_key=OPENAI_TEST_KEY,
                                       openai_base_url=fake_openai.base, llm_retry_backoff_seconds=0.0,
                                       data_dir=str(rt.settings.data_dir) + "-patient"))
    fake_openai.replies = [upstream_down, GOOD]
    assert patient.generate_json(NOTE, "write") == GOOD
    assert patient.health()["httpRetries"] == 1


def test_error_bodies_are_quoted_and_keys_never_leak(provider_runtime, model_api, caplog):
    rt = provider_runtime()
    svc = llm.service(rt)
    model_api.fake.fail_next = [400]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    kind = {"gemini": "INVALID_ARGUMENT", "openai": "invalid_request_error", "anthropic": "invalid_request_error"}
    assert f"HTTP 400 {kind[model_api.name]}" in caught.value.message and "scripted failure" in caught.value.message
    assert len(model_api.fake.calls) == 1  # a 400 is not retried
    shown = json.dumps([svc.health(), svc.diagnose(), rt.settings.public()])
    assert model_api.key not in shown and model_api.key not in caplog.text and "HTTP 400" in shown


def test_a_base_url_that_misses_the_api_says_which_setting_to_check(make_runtime, fake_openai):
    """OPENAI_BASE_URL without its /v1 (http://localhost:11434 for Ollama) reaches a server that
    answers "404 page not found": the error was only that, like a model that does not exist."""
    rt = make_runtime(llm_provider="openai", openai_api_key=OPENAI_TEST_KEY, openai_base_url=fake_openai.url,
                      llm_retry_backoff_seconds=0.0)
    svc = llm.service(rt)
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    assert caught.value.message == (
        f"OpenAI-compatible /chat/completions failed: HTTP 404 404 page not found (nothing serves "
        f"{fake_openai.url}/chat/completions: OPENAI_BASE_URL is the API's base, which usually ends in /v1)")
    assert len(fake_openai.calls) == 1  # a 404 is not retried
    fake_openai.models = {"qwen2.5-coder:7b"}  # the base is right, the model is not: no hint
    right_base = llm.service(make_runtime(llm_provider="openai", openai_api_key=OPENAI_TEST_KEY,
                                          openai_base_url=fake_openai.base,
                                          data_dir=str(rt.settings.data_dir) + "-right"))
    with pytest.raises(llm.LLMError) as caught:
        right_base.generate_json(NOTE, "write")
    assert "model_not_found: The model `gpt-4o-mini` does not exist" in caught.value.message
    assert "OPENAI_BASE_URL" not in caught.value.message


def test_a_wrong_key_is_refused_once_and_not_echoed(provider_runtime, model_api):
    field = {"gemini": "gemini_api_key", "openai": "openai_api_key", "anthropic": "anthropic_api_key"}
    svc = llm.service(provider_runtime(**{field[model_api.name]: "wrong-key-0451"}))
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    assert "HTTP 401" in caught.value.message and "wrong-key-0451" not in caught.value.message
    assert len(model_api.fake.calls) == 1


def test_a_slow_model_times_out_and_one_in_time_has_its_latency_recorded(provider_runtime, model_api):
    rt = provider_runtime(llm_timeout_seconds=0.3, llm_max_attempts=1)
    svc = llm.service(rt)
    model_api.fake.delay = 1.0
    with pytest.raises(llm.LLMError) as caught:
        svc.generate_json(NOTE, "write")
    assert "Timeout" in caught.value.message and svc.health()["failed"] == 1
    [row] = usage_rows(rt)
    assert (row["calls"], row["failed"], row["promptTokens"]) == (1, 1, 0)
    # The fake picks its reply after sleeping: let the abandoned request finish first, or it could
    # take the reply meant for the next one (it did on PostgreSQL, where a runtime starts slowly).
    calls = model_api.fake.calls
    wait_for(lambda: calls and calls[0]["response"] is not None, timeout=10, message="the slow request never ended")
    patient = provider_runtime(data_dir=str(rt.settings.data_dir) + "-patient")
    model_api.fake.delay = 0.25
    model_api.fake.replies = [GOOD]
    assert llm.service(patient).generate_json(NOTE, "write") == GOOD
    [row] = usage_rows(patient)
    assert row["failed"] == 0 and row["latencyMsMax"] >= 250  # the fake slept that long before answering


def test_a_model_that_is_down_opens_the_breaker_and_features_fall_back(provider_runtime, model_api):
    rt = provider_runtime(llm_max_attempts=1, llm_reflect=False)
    call = ToolCaller(rt)
    call("agent_observe", **hook("s1", data={"tool_name": "Edit", "tool_input": {"file_path": "src/a.py"},
                                             "tool_output": "ok"}))
    model_api.fake.close()  # connection refused from now on
    for _ in range(3):
        assert call("summarize", sessionId="s1")["summary"]["method"] == "synthetic"
    svc = llm.service(rt)
    assert svc.breaker.state == "open" and svc.health()["failed"] == 3
    assert call("summarize", sessionId="s1")["summary"]["method"] == "synthetic"  # nothing sent
    health = call("health")["llm"]
    assert health["status"] == "degraded" and health["skippedBreakerOpen"] == 1
    assert sum(r["failed"] for r in usage_rows(rt)) == 3


REFUSALS = {
    "gemini": {"promptFeedback": {"blockReason": "SAFETY"}},
    "openai": {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}},
    "anthropic": {"id": "x", "type": "message", "role": "assistant", "content": [], "stop_reason": "refusal",
                  "usage": {"input_tokens": 20, "output_tokens": 0}},
}


def test_refusals_are_answers_not_outages(provider_runtime, model_api):
    rt = provider_runtime()
    svc = llm.service(rt)
    model_api.fake.replies = [Raw(REFUSALS[model_api.name])] * 3
    for _ in range(3):
        with pytest.raises(llm.ModelRefused):
            svc.generate_json(NOTE, "write")
    assert svc.breaker.state == "closed" and svc.health()["refused"] == 3
    [row] = usage_rows(rt)
    assert (row["calls"], row["failed"]) == (3, 0)
    if model_api.name != "gemini":
        assert row["promptTokens"] == 60  # a refusal still costs its tokens


def test_per_feature_models_and_the_provider_names_the_method(provider_runtime, model_api):
    rt = provider_runtime(llm_model="base-model", llm_model_summaries="summary-model", auto_compress=True,
                          llm_reflect=False)
    call = ToolCaller(rt)
    model_api.fake.responder = responder()
    call("agent_observe", **hook("s1", data={"tool_name": "Edit", "tool_input": {"file_path": "src/a.py"},
                                             "tool_output": "ok"}))
    assert llm.service(rt).drain() == 1
    summary = call("summarize", sessionId="s1")["summary"]
    compress_call, summary_call = model_api.fake.calls
    assert model_of(model_api.name, compress_call) == "base-model"
    assert model_of(model_api.name, summary_call) == "summary-model"
    [obs] = call("memory_observations", sessionId="s1")["observations"]
    assert obs["method"] == model_api.name and summary["method"] == model_api.name
    features = call("health")["llm"]["features"]
    assert features["summaries"]["model"] == "summary-model" and features["compress"]["model"] == "base-model"
    assert {(r["feature"], r["model"]) for r in usage_rows(rt)} == {("compress", "base-model"),
                                                                     ("summaries", "summary-model")}


@pytest.mark.parametrize("values,expected", [
    ({}, (None, None)),
    ({"gemini_api_key": "k"}, ("gemini", None)),
    ({"llm_provider": "none", "gemini_api_key": "k"}, (None, None)),
    ({"llm_provider": "gemini"}, ("gemini", "AGENTMEMORY_LLM_PROVIDER=gemini needs GEMINI_API_KEY or GOOGLE_API_KEY")),
    ({"llm_provider": "openai"}, ("openai", "api.openai.com needs OPENAI_API_KEY (a local server in "
                                            "OPENAI_BASE_URL needs none)")),
    ({"llm_provider": "openai", "openai_base_url": "http://127.0.0.1:11434/v1"}, ("openai", None)),
    ({"llm_provider": "anthropic"}, ("anthropic", "AGENTMEMORY_LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY")),
])
def test_which_provider_is_chosen(values, expected):
    choice = choose_provider(Settings.from_env({}, **values))
    assert (choice.name, choice.problem) == expected


def test_a_provider_without_credentials_is_reported_and_everything_stays_deterministic(make_runtime):
    rt = make_runtime(llm_provider="anthropic", auto_compress=True)
    svc = llm.service(rt)
    health = svc.health()
    assert health["provider"] is None and health["mode"] == "deterministic"
    assert "ANTHROPIC_API_KEY" in health["problem"]
    assert not any(f["usesModel"] for f in health["features"].values())
    [check] = svc.diagnose()
    assert check["name"] == "llm-provider" and check["status"] == "warn" and "ANTHROPIC_API_KEY" in check["message"]
    assert svc.check()["request"] is None
    alerts = ToolCaller(rt)("status")["alerts"]  # it used to say "Nothing is wrong"
    assert {"level": "warn", "message": "AGENTMEMORY_LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY: every LLM "
            "feature runs deterministically", "fix": "set the key, or AGENTMEMORY_LLM_PROVIDER=none if no model "
            "is wanted; then restart"} in alerts


def test_openai_compatible_embeddings_speak_the_real_json(make_runtime, fake_openai):
    rt = make_runtime(embedding_provider="openai", openai_base_url=fake_openai.base, openai_api_key=OPENAI_TEST_KEY,
                      openai_embed_model="nomic-embed-text", openai_embed_dimensions=64)
    call = ToolCaller(rt)
    call("agent_observe", **hook("s1", data={"tool_name": "Bash", "tool_input": {"command": "make zebra"},
                                             "tool_output": "built the zebra module"}))
    svc = vectors.service(rt)
    assert svc.drain() == 1 and svc.model == "openai:nomic-embed-text"
    request = fake_openai.calls[-1]
    assert request["path"] == "/v1/embeddings" and request["headers"]["Authorization"] == f"Bearer {OPENAI_TEST_KEY}"
    body = request["body"]
    assert body["model"] == "nomic-embed-text" and body["encoding_format"] == "float" and body["dimensions"] == 64
    assert isinstance(body["input"], list) and "zebra" in body["input"][0]
    assert rt.db.reader().vectors.counts() == {"openai:nomic-embed-text/64": 1}
    assert call("memory_smart_search", query="zebra module")["results"]


def test_openai_embeddings_are_put_back_in_index_order_and_a_wrong_width_is_explained(fake_openai):
    texts = ["alpha beta", "gamma delta", "epsilon"]
    embedder = OpenAIEmbedder(api_key=OPENAI_TEST_KEY, base_url=fake_openai.base, model="m", dimensions=64)
    got = embedder.embed(texts)
    assert np.allclose(got, HashEmbedder(64).embed(texts), atol=1e-6)  # the fake answers in reverse order
    assert embedder.tokens > 0
    unset = OpenAIEmbedder(api_key=OPENAI_TEST_KEY, base_url=fake_openai.base, model="m", dimensions=None)
    with pytest.raises(Unavailable) as caught:
        unset.embed(["x"])
    assert "set OPENAI_EMBED_DIMENSIONS=64" in caught.value.message
    assert "dimensions" not in fake_openai.calls[-1]["body"]  # not sent unless configured


def test_a_thinking_gemini_models_thoughts_are_counted_as_output(llm_runtime, fake_gemini):
    rt = llm_runtime()
    fake_gemini.replies = [Raw({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "weighing the answer", "thought": True}, {"text": json.dumps(GOOD)}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 15, "thoughtsTokenCount": 400,
                          "totalTokenCount": 535}})]
    assert llm.service(rt).generate_json(NOTE, "write") == GOOD
    [row] = usage_rows(rt)
    assert (row["promptTokens"], row["completionTokens"]) == (120, 415)  # 535 billed, 535 counted
