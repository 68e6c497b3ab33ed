"""``agentmemory llm test`` (one tiny request to the configured provider: latency and what each
feature would use) and the model tokens in ``agentmemory stats``, run as real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import OPENAI_TEST_KEY, clean_environ, free_port
from llm_support import responder

AGENTMEMORY = str(Path(sys.executable).with_name("agentmemory"))


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTMEMORY, *args], env=env, capture_output=True, text=True, timeout=120)


def openai_env(tmp_path: Path, base: str, **extra: str) -> dict[str, str]:
    return {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "data"), "AGENTMEMORY_LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": base, "OPENAI_API_KEY": OPENAI_TEST_KEY, "AGENTMEMORY_LLM_RETRY_BACKOFF_SECONDS": "0",
            **extra}


def test_llm_test_sends_one_tiny_request_and_shows_every_feature(tmp_path, fake_openai):
    fake_openai.responder = responder()
    env = openai_env(tmp_path, fake_openai.base, AGENTMEMORY_LLM_MODEL_COMPRESS="small-model",
                     AGENTMEMORY_AUTO_COMPRESS="true", AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET="100000")
    proc = cli("llm", "test", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"provider   openai  {fake_openai.base}" in out
    assert re.search(r"request    ok: gpt-4o-mini answered in [\d.]+ ms \(\d+ prompt \+ \d+ completion tokens, "
                     r"valid JSON\)", out), out
    assert re.search(r"^compress\s+yes\s+yes\s+openai\s+small-model\s+[\d,]+$", out, re.MULTILINE), out
    assert re.search(r"^graph\s+no\s+no\s+openai\s+gpt-4o-mini\s+[\d,]+$", out, re.MULTILINE), out
    assert re.search(r"^request    ok: small-model \(compress\) answered in", out, re.MULTILINE), out
    provider_wide, compress_model = fake_openai.calls
    assert compress_model["body"]["model"] == "small-model"
    body = provider_wide["body"]
    assert body["max_tokens"] == 256 and body["messages"][-1] == {"role": "user", "content": "ping"}
    assert OPENAI_TEST_KEY not in out + proc.stderr

    report = json.loads(cli("llm", "test", "--json", env=env).stdout)
    assert report["request"]["ok"] is True and report["request"]["latencyMs"] > 0
    assert report["features"]["compress"]["model"] == "small-model"
    assert report["budget"]["used"] > 0  # the first test's request counts

    stats = cli("stats", env=env)
    assert stats.returncode == 0, stats.stderr
    assert "model tokens per UTC day (budget 100,000/day" in stats.stdout
    assert re.search(r"^  test\s+[\d,]+ tokens\s+4 calls\s+0 failed", stats.stdout, re.MULTILINE), stats.stdout
    tokens = json.loads(cli("stats", "--json", env=env).stdout)["llm"]
    second_run = [report["request"], *report["otherModels"]]
    assert tokens["byFeature"]["test"]["calls"] == 4 and tokens["today"]["totalTokens"] == report["budget"]["used"] \
        + sum(r["promptTokens"] + r["completionTokens"] for r in second_run)


def test_llm_test_fails_clearly_when_the_model_is_down_or_missing(tmp_path):
    down = cli("llm", "test", env=openai_env(tmp_path, f"http://127.0.0.1:{free_port()}/v1",
                                             AGENTMEMORY_LLM_MAX_ATTEMPTS="1"))
    assert down.returncode == 1
    assert "request    FAILED: gpt-4o-mini: OpenAI-compatible /chat/completions failed: ConnectionError" in down.stdout
    assert OPENAI_TEST_KEY not in down.stdout + down.stderr
    none = cli("llm", "test", env={**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "none")})
    assert none.returncode == 1 and none.stdout.startswith("provider   none")
    missing = cli("llm", "test", env={**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "none"),
                                      "AGENTMEMORY_LLM_PROVIDER": "anthropic"})
    assert missing.returncode == 1 and "problem    AGENTMEMORY_LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY" \
        in missing.stdout


def test_llm_test_asks_every_model_an_enabled_feature_uses(tmp_path, fake_openai):
    """A feature's own model that the server does not serve (a typo, a model not pulled) used to
    pass `llm test`, which asked only the provider-wide model, and then failed every call of
    that feature."""
    fake_openai.responder = responder()
    fake_openai.models = {"gpt-4o-mini", "summary-model"}
    env = openai_env(tmp_path, fake_openai.base, AGENTMEMORY_AUTO_COMPRESS="true",
                     AGENTMEMORY_LLM_MODEL_COMPRESS="qwen2.5-coder:7bb",
                     AGENTMEMORY_LLM_MODEL_SUMMARIES="summary-model",
                     AGENTMEMORY_LLM_MODEL_GRAPH="graph-model")  # graph extraction is off: not asked
    proc = cli("llm", "test", env=env)
    out = proc.stdout
    assert proc.returncode == 1, out
    assert re.search(r"^request    ok: gpt-4o-mini answered in", out, re.MULTILINE), out
    assert "request    FAILED: qwen2.5-coder:7bb (compress): OpenAI-compatible /chat/completions failed: HTTP 404 " \
           "model_not_found: The model `qwen2.5-coder:7bb` does not exist" in out
    assert re.search(r"^request    ok: summary-model \(summaries\) answered in", out, re.MULTILINE), out
    asked = sorted(c["body"]["model"] for c in fake_openai.calls)
    assert asked == ["gpt-4o-mini", "qwen2.5-coder:7bb", "summary-model"]
    report = json.loads(cli("llm", "test", "--json", env=env).stdout)
    assert [(r["model"], r["features"], r["ok"]) for r in report["otherModels"]] == \
        [("qwen2.5-coder:7bb", ["compress"], False), ("summary-model", ["summaries"], True)]
