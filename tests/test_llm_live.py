"""End to end: a real server process with the fake Gemini. An observation is stored at once and
upgraded by the model in the background; a session end produces a model-written summary."""

import json
import sqlite3
import time

import requests

from conftest import GEMINI_TEST_KEY, OPENAI_TEST_KEY, hook, post, wait_for
from llm_support import responder, task_of
from test_cli import cli


def test_live_server_compresses_in_the_background_and_summarises_with_the_model(live_server, fake_gemini):
    fake_gemini.responder = responder()
    server = live_server(env={"GEMINI_API_KEY": GEMINI_TEST_KEY, "GEMINI_API_BASE": fake_gemini.url,
                              "AGENTMEMORY_AUTO_COMPRESS": "true", "GEMINI_RETRY_BACKOFF_SECONDS": "0"})
    body = hook("live", data={"tool_name": "Edit", "tool_input": {"file_path": "src/auth.py"}, "tool_output": "ok"})
    created = post(server.api("/observe"), body)
    assert created.status_code == 201

    def observations():
        return requests.get(server.api("/observations"), params={"sessionId": "live"}, timeout=10).json()

    def rewritten() -> dict | None:
        obs = observations()["observations"][0]
        return obs if obs.get("method") == "gemini" else None

    obs = wait_for(rewritten, interval=0.1, message="the model never rewrote the observation")
    assert obs["method"] == "gemini" and obs["title"] == "Model: switched auth to tokens"
    assert obs["id"] == created.json()["observationId"]

    assert post(server.api("/session/end"), {"sessionId": "live"}).json()["ended"] is True

    def session():
        return requests.get(server.api("/session"), params={"sessionId": "live"}, timeout=10).json()["session"]

    def model_summary() -> dict | None:
        summary = session().get("summary") or {}
        return summary if summary.get("method") == "gemini" else None

    summary = wait_for(model_summary, interval=0.1, message="the session never got a model-written summary")
    assert summary["method"] == "gemini" and summary["title"] == "Model summary title"

    health = requests.get(server.api("/health"), timeout=10)
    assert health.json()["llm"]["provider"] == "gemini"

    def worker_llm() -> dict | None:  # the background worker made the calls; its heartbeat says so
        workers = requests.get(server.api("/health"), timeout=10).json()["background"]["workers"]
        usage = workers[0].get("llm", {}) if workers else {}
        return usage if usage.get("succeeded", 0) >= 2 else None

    section = wait_for(worker_llm, timeout=30, interval=0.5, message="the worker's heartbeat shows no model calls")
    assert section["totalTokens"] > 0 and section["breaker"] == "closed" and section["workers"] == 2
    assert GEMINI_TEST_KEY not in health.text and GEMINI_TEST_KEY not in server.log()
    assert all(c["headers"]["x-goog-api-key"] == GEMINI_TEST_KEY for c in fake_gemini.calls)


def test_live_server_with_an_openai_compatible_model(live_server, fake_openai):
    """A local-model setup (Ollama, llama.cpp, vLLM ...): no key, a base URL on loopback."""
    fake_openai.api_key = None  # local servers take no key
    fake_openai.responder = responder()
    server = live_server(env={"AGENTMEMORY_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": fake_openai.base,
                              "AGENTMEMORY_LLM_MODEL": "qwen2.5-coder:7b", "AGENTMEMORY_AUTO_COMPRESS": "true"})
    body = hook("local", data={"tool_name": "Edit", "tool_input": {"file_path": "src/auth.py"}, "tool_output": "ok"})
    assert post(server.api("/observe"), body).status_code == 201

    def rewritten() -> dict | None:
        obs = requests.get(server.api("/observations"), params={"sessionId": "local"}, timeout=10).json()
        first = obs["observations"][0]
        return first if first.get("method") == "openai" else None

    assert wait_for(rewritten, interval=0.1, message="the model never rewrote the observation")["title"] \
        == "Model: switched auth to tokens"
    [call] = fake_openai.calls
    assert call["body"]["model"] == "qwen2.5-coder:7b" and "Authorization" not in call["headers"]
    section = requests.get(server.api("/health"), timeout=10).json()["llm"]
    assert section["provider"] == "openai" and section["features"]["compress"]["usesModel"] is True
    usage = call["response"]["usage"]
    assert section["tokens"]["byFeature"]["compress"]["totalTokens"] == usage["total_tokens"]


def server_with_a_wrong_key_and_three_edits(live_server, fake_openai, session: str):
    """A server whose background worker compresses three edits with a key the provider refuses:
    its breaker opens on them (cooldown 10 minutes)."""
    server = live_server(env={"AGENTMEMORY_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": fake_openai.base,
                              "OPENAI_API_KEY": "oa-wrong-key-5e1d0c", "AGENTMEMORY_AUTO_COMPRESS": "true",
                              "AGENTMEMORY_LLM_RETRY_BACKOFF_SECONDS": "0", "LLM_BREAKER_COOLDOWN_SECONDS": "600"})
    for n in range(3):
        body = hook(session, data={"tool_name": "Edit", "tool_input": {"file_path": f"src/m{n}.py"},
                                   "tool_output": f"edited {n}"})
        assert post(server.api("/observe"), body).status_code == 201
    return server


def test_health_shows_the_open_breaker_and_the_error_of_the_worker_that_makes_the_calls(live_server, fake_openai):
    """In the default process mode the background worker makes every background call and holds
    the breaker they wait on: a wrong key must show in /health and /status of the request
    process a user asks, not only in the worker's heartbeat row."""
    server = server_with_a_wrong_key_and_three_edits(live_server, fake_openai, "wrong-key")

    def health_once_the_worker_breaker_opened() -> dict | None:
        health = requests.get(server.api("/health"), timeout=10).json()
        workers = health["background"]["workers"]
        return health if workers and workers[0]["llm"]["breaker"] == "open" else None

    health = wait_for(health_once_the_worker_breaker_opened, interval=0.2,
                      message="the worker's breaker never opened on a wrong key")
    section = health["llm"]
    assert section["status"] == "degraded" and health["status"] == "degraded"
    assert section["breaker"]["state"] == "open" and section["breaker"]["process"] == "worker"
    assert section["failed"] >= 3 and "HTTP 401" in section["lastError"]
    assert section["mode"].startswith("deterministic until ")
    assert section["features"]["compress"]["usesModel"] is False
    alerts = requests.get(server.api("/status"), timeout=10).json()["alerts"]
    assert any("llm is degraded" in a["message"] and "HTTP 401" in a["message"] for a in alerts), alerts
    assert "oa-wrong-key-5e1d0c" not in json.dumps(health)


def queued_consolidation(server) -> float | None:
    """When the queued session-end consolidation may run (epoch s), read from the server's file."""
    conn = sqlite3.connect(f"{server.db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT next_try FROM llm_jobs WHERE kind = 'consolidate'").fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def test_the_consolidation_cooldown_holds_across_processes_and_restarts(live_server, fake_openai):
    """Session ends queue consolidation at most once per project per cooldown. The time of the
    last run was kept in the memory of the process that ran it (the worker) while the request
    process that queues read its own, always empty copy: every session end consolidated again,
    and a restart forgot the time anyway."""
    fake_openai.responder = responder()
    server = live_server(env={"AGENTMEMORY_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": fake_openai.base,
                              "OPENAI_API_KEY": OPENAI_TEST_KEY, "AGENTMEMORY_LLM_RETRY_BACKOFF_SECONDS": "0",
                              "AGENTMEMORY_CONSOLIDATION_COOLDOWN_MS": "3600000"})

    def end_a_session(sid: str) -> None:
        for n in range(6):  # consolidation needs five important observations
            body = hook(sid, data={"tool_name": "Edit", "tool_input": {"file_path": "src/auth.py"},
                                   "tool_output": f"token auth step {n}"})
            assert post(server.api("/observe"), body).status_code == 201
        assert post(server.api("/session/end"), {"sessionId": sid}).json()["ended"] is True

    def consolidations() -> int:
        return sum(task_of(p) == "consolidate" for p in fake_openai.requests())

    end_a_session("first")
    wait_for(consolidations, message="the first session end never consolidated")
    wait_for(lambda: queued_consolidation(server) is None, message="the first consolidation never finished")
    end_a_session("second")
    assert queued_consolidation(server) > time.time() + 3000  # waits out the hour from the first run
    server.stop()
    server.start()
    end_a_session("third")
    assert queued_consolidation(server) > time.time() + 3000
    assert consolidations() == 1


def test_recompress_with_model_sends_nothing_while_the_background_workers_breaker_is_open(live_server, fake_openai):
    """``agentmemory recompress --with-model`` runs in a process of its own, whose breaker is
    closed; the server's background worker (a process too) makes the background calls and holds
    the breaker that opened on them. The run reads the worker's heartbeat and stops before its
    first call, instead of paying a failed call per record until its own breaker opens."""
    server = server_with_a_wrong_key_and_three_edits(live_server, fake_openai, "worker-down")

    def worker_breaker_open() -> bool:
        workers = requests.get(server.api("/health"), timeout=10).json()["background"]["workers"]
        return bool(workers) and workers[0]["llm"]["breaker"] == "open"

    wait_for(worker_breaker_open, interval=0.2, message="the worker's breaker never opened on a wrong key")
    sent = len(fake_openai.calls)
    run = cli("-q", "recompress", "--with-model", env=server.env)
    assert run.returncode == 1, run.stderr  # stopped because the provider is down
    report = json.loads(run.stdout)
    assert report["selected"]["observations"] == 3 and report["remaining"] == 3, report
    assert report["stopped"] == {"reason": "providerDown", "message": "the model provider is down (its breaker is open)"}
    assert sum(report["skipped"].values()) == 0, report  # no record was tried
    assert len(fake_openai.calls) == sent  # nothing was sent to the provider
