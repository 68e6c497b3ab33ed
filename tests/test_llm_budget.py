"""Token accounting, the daily budget and the low-value filter of model compression: every call is
counted per UTC day, provider, model and feature; /health and stats show tokens per day and per
feature; a reached budget (or a feature's cap) stops calls before anything is sent, the
deterministic path answers, health says so, and midnight UTC (on the runtime clock) resets it;
low-value observations never reach the model."""

from datetime import datetime, timezone

import pytest

from agentmemory_server.kernel.settings import Settings, SettingsError
from agentmemory_server.models import llm
from agentmemory_server.models.triage import low_value_reason, trivial_command
from conftest import ManualClock, ToolCaller, hook
from llm_support import responder

ZERO_ENV = "AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET"
ELEVEN_PM = datetime(2026, 11, 1, 23, 0, tzinfo=timezone.utc).timestamp()


def usage_rows(rt) -> list[dict]:
    return rt.db.reader().usage.rows("0000-01-01", "9999-12-31")


def edit(sid: str, path: str, ts: str) -> dict:
    return hook(sid, timestamp=ts, data={"tool_name": "Edit", "tool_input": {"file_path": path, "old_string": "a",
                                                                            "new_string": "b"}, "tool_output": "ok"})


def seed_session(call, sid: str = "s1") -> None:
    call("agent_observe", **edit(sid, "src/auth.py", "2026-11-01T22:00:00Z"))
    call("agent_observe", **edit(sid, "src/cart.py", "2026-11-01T22:01:00Z"))


def test_tokens_are_counted_per_day_and_feature_and_shown_in_health_and_stats(llm_runtime, fake_gemini):
    clock = ManualClock(ELEVEN_PM)
    rt = llm_runtime(clock=clock.clock, auto_compress=True, llm_reflect=False)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    seed_session(call)
    assert llm.service(rt).drain() == 2
    assert call("summarize", sessionId="s1")["summary"]["method"] == "gemini"
    sent = [c["response"]["usageMetadata"] for c in fake_gemini.calls]
    total = sum(u["promptTokenCount"] + u["candidatesTokenCount"] for u in sent)
    tokens = call("health")["llm"]["tokens"]
    assert tokens["day"] == "2026-11-01" and tokens["today"]["totalTokens"] == total
    assert set(tokens["byFeature"]) == {"compress", "summaries"}
    assert tokens["byFeature"]["compress"]["calls"] == 2 and tokens["byFeature"]["summaries"]["calls"] == 1
    assert [d["day"] for d in tokens["byDay"]] == [f"2026-10-{d}" for d in range(26, 32)] + ["2026-11-01"]
    assert tokens["byDay"][-1]["totalTokens"] == total
    assert tokens["byDay"][-1]["byFeature"]["summaries"] == sent[-1]["promptTokenCount"] + sent[-1][
        "candidatesTokenCount"]
    assert call("stats")["llm"]["today"]["totalTokens"] == total

    clock.advance(2 * 3600)  # 01:00 UTC the next day
    tokens = call("health")["llm"]["tokens"]
    assert tokens["day"] == "2026-11-02" and tokens["today"]["totalTokens"] == 0 and tokens["byFeature"] == {}
    assert tokens["byDay"][-2]["day"] == "2026-11-01" and tokens["byDay"][-2]["totalTokens"] == total


def test_the_daily_budget_stops_calls_before_sending_and_resets_at_midnight_utc(llm_runtime, fake_gemini):
    clock = ManualClock(ELEVEN_PM)
    rt = llm_runtime(clock=clock.clock, llm_daily_token_budget=50, llm_reflect=False)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    seed_session(call)
    assert call("summarize", sessionId="s1")["summary"]["method"] == "gemini"  # crosses the budget
    assert len(fake_gemini.calls) == 1
    assert call("summarize", sessionId="s1")["summary"]["method"] == "synthetic"
    assert len(fake_gemini.calls) == 1  # nothing was sent
    health = call("health")["llm"]
    assert health["status"] == "healthy" and health["budget"]["reached"] is True
    assert health["budget"]["daily"] == 50 and health["budget"]["left"] == 0
    assert health["mode"] == "deterministic until 2026-11-02T00:00:00.000Z: the daily token budget is used up"
    assert health["features"]["summaries"] == {"enabled": True, "usesModel": False, "provider": "gemini",
                                               "model": "gemini-2.5-flash", "budgetReached": True, "budgetLeft": 0}
    assert health["skippedBudget"] == 1 and health["tokens"]["byFeature"]["summaries"]["skippedBudget"] == 1
    checks = {c["name"]: c for c in llm.service(rt).diagnose()}
    assert checks["llm-budget"]["status"] == "warn" and "used up" in checks["llm-budget"]["message"]

    clock.advance(3600)  # midnight UTC: a new day, a new budget
    assert call("summarize", sessionId="s1")["summary"]["method"] == "gemini"
    usage = fake_gemini.calls[-1]["response"]["usageMetadata"]
    budget = call("health")["llm"]["budget"]
    assert len(fake_gemini.calls) == 2 and budget["used"] == usage["totalTokenCount"]  # only today's call counts
    assert budget["resetsAt"] == "2026-11-03T00:00:00.000Z"


def test_status_says_why_nothing_is_model_written_while_a_budget_is_used_up(llm_runtime, fake_gemini):
    """GET /status ("what needs attention") said "Nothing is wrong" all day once the budget was
    used up, though every model feature had gone deterministic."""
    rt = llm_runtime(clock=ManualClock(ELEVEN_PM).clock, llm_daily_token_budget=50, llm_reflect=False)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    seed_session(call)
    assert not [a for a in call("status")["alerts"] if "budget" in a["message"]]
    assert call("summarize", sessionId="s1")["summary"]["method"] == "gemini"  # crosses the budget
    [alert] = [a for a in call("status")["alerts"] if "budget" in a["message"]]
    assert alert["level"] == "info" and alert["message"] == (
        "the daily model token budget (50) is used up: those model features run deterministically until "
        "2026-11-02T00:00:00.000Z")
    assert "AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET" in alert["fix"]


def test_a_feature_cap_stops_only_that_feature(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True, llm_daily_token_budget_compress=1, llm_reflect=False)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    seed_session(call)
    svc = llm.service(rt)
    assert svc.drain() == 2  # the first compression crosses the cap; the second is not sent
    methods = [o.get("method") for o in call("memory_observations", sessionId="s1")["observations"]]
    assert sorted(methods, key=str) == [None, "gemini"]
    assert rt.db.reader().jobs.stats()["pending"] == 0  # dropped, not retried: the synthetic record stands
    assert call("summarize", sessionId="s1")["summary"]["method"] == "gemini"  # other features unaffected
    health = call("health")["llm"]
    assert health["features"]["compress"]["budgetReached"] is True and health["features"]["compress"]["usesModel"] is False
    assert health["features"]["summaries"]["budgetReached"] is False
    assert health["budget"]["features"]["compress"]["reached"] is True
    assert [r["skippedBudget"] for r in usage_rows(rt) if r["feature"] == "compress"] == [1]


def test_no_budget_means_no_limit(llm_runtime, fake_gemini):
    rt = llm_runtime(llm_daily_token_budget=Settings.from_env({ZERO_ENV: "unlimited"}).llm_daily_token_budget)
    fake_gemini.responder = responder()
    call = ToolCaller(rt)
    seed_session(call)
    for _ in range(3):
        assert call("summarize", sessionId="s1")["summary"]["method"] == "gemini"
    budget = call("health")["llm"]["budget"]
    assert budget["daily"] is None and budget["left"] is None and budget["reached"] is False


def test_the_account_outlives_the_runtime(llm_runtime, fake_gemini, make_runtime):
    rt = llm_runtime(llm_reflect=False)
    fake_gemini.responder = responder()
    call = ToolCaller(rt)
    seed_session(call)
    call("summarize", sessionId="s1")
    before = call("health")["llm"]["tokens"]["today"]
    data_dir = rt.settings.data_dir
    rt.close()
    again = make_runtime(data_dir=data_dir)  # no provider now: the account is still there
    assert ToolCaller(again)("health")["llm"]["tokens"]["today"] == before and before["calls"] == 1


# -- the low-value filter --------------------------------------------------------------------------------------


def tool(sid: str, minute: int, name: str, tool_input, output=None, hook_type: str = "post_tool_use") -> dict:
    data = {"tool_name": name, "tool_input": tool_input}
    if output is not None:
        data["tool_output" if hook_type == "post_tool_use" else "error"] = output
    return hook(sid, hook_type, timestamp=f"2026-11-01T10:{minute:02d}:00Z", data=data)


SESSION = [  # (event, expected reason it is skipped, or None: the model compresses it)
    (lambda s: tool(s, 1, "Read", {"file_path": "src/a.py"}, "x = 1"), None),
    (lambda s: tool(s, 2, "Read", {"file_path": "src/a.py", "offset": 0}, "x = 1"), "unchanged-read"),
    (lambda s: tool(s, 3, "Edit", {"file_path": "src/a.py", "old_string": "1", "new_string": "2"}, "ok"), None),
    (lambda s: tool(s, 4, "Read", {"file_path": "src/a.py"}, "x = 2"), None),
    (lambda s: tool(s, 5, "Bash", {"command": "pytest -q"}, "1 failed"), None),
    (lambda s: tool(s, 6, "Bash", {"command": "pytest -q"}, "1 failed"), "duplicate"),
    (lambda s: tool(s, 7, "Bash", {"command": "cd src && ls -la"}, "a.py b.py"), "trivial"),
    (lambda s: tool(s, 8, "TodoWrite", {"todos": [{"content": "fix a", "status": "in_progress"}]}, "ok"), "trivial"),
    (lambda s: tool(s, 9, "Bash", "ls /nope", "No such file", "post_tool_failure"), None),
    (lambda s: hook(s, "prompt_submit", timestamp="2026-11-01T10:10:00Z", data={"prompt": "fix it"}), None),
    (lambda s: hook(s, "prompt_submit", timestamp="2026-11-01T10:11:00Z", data={"prompt": "fix it"}), None),
    (lambda s: tool(s, 12, "Read", {"file_path": "src/b.py"}), None),
    (lambda s: tool(s, 13, "Read", {"file_path": "src/b.py"}), "unchanged-read"),
    (lambda s: tool(s, 14, "Write", {"file_path": "src/b.py", "content": "y = 1"}, "ok"), None),
    (lambda s: tool(s, 15, "Read", {"file_path": "src/b.py"}), None),  # no output, but written since
    (lambda s: hook(s, "session_start", timestamp="2026-11-01T10:16:00Z", data={}), "empty"),
]


def test_low_value_observations_never_reach_the_model(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    for event, _ in SESSION:
        assert call("agent_observe", **event("s1"))["duplicate"] is False
    svc = llm.service(rt)
    assert svc.drain() == len(SESSION)
    expected = [reason for _, reason in SESSION]
    assert len(fake_gemini.calls) == expected.count(None)
    observations = call("memory_observations", sessionId="s1")["observations"]
    assert [o.get("method") for o in observations] == ["gemini" if r is None else None for r in expected]
    health = svc.health()
    skipped = [r for r in expected if r]
    assert health["skippedLowValue"] == len(skipped)
    assert health["lowValueReasons"] == {r: skipped.count(r) for r in set(skipped)}
    assert health["tokens"]["byFeature"]["compress"]["skippedLowValue"] == len(skipped)
    assert health["tokens"]["byFeature"]["compress"]["calls"] == expected.count(None)


def test_the_filter_can_be_turned_off(llm_runtime, fake_gemini):
    rt = llm_runtime(auto_compress=True, compress_skip_low_value=False)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    for event, _ in SESSION:
        call("agent_observe", **event("s1"))
    assert llm.service(rt).drain() == len(SESSION) and len(fake_gemini.calls) == len(SESSION)


def test_the_filter_decides_from_stored_records_alone(make_runtime):
    rt = make_runtime()
    call = ToolCaller(rt)
    for event, _ in SESSION:
        call("agent_observe", **event("s1"))
        call("agent_observe", **event("s2"))  # another session: never a repeat of s1's events
    store = rt.db.reader()
    for sid in ("s1", "s2"):
        observations = call("memory_observations", sessionId=sid)["observations"]
        assert [low_value_reason(store, o) for o in observations] == [reason for _, reason in SESSION]


@pytest.mark.parametrize("command,trivial", [
    ("ls", True), ("cd src && ls -la", True), ("pwd; echo hi | tree", True), ("ls || true", True),
    ("ls && rm -rf build", False), ("git status", False), ("", False), ("lsof -i", False),
])
def test_trivial_commands(command, trivial):
    assert trivial_command(command) is trivial


def test_old_usage_rows_are_pruned_after_400_days(make_runtime):
    from agentmemory_server.storage.interfaces import ModelCall

    clock = ManualClock(ELEVEN_PM)
    rt = make_runtime(clock=clock.clock)
    accounting = llm.service(rt).accounting
    with rt.db.transaction("test") as tx:
        for day in ("2025-09-26", "2025-09-27", "2026-11-01"):
            tx.usage.add(ModelCall(day, "gemini", "m", "compress", calls=1, prompt_tokens=10))
    assert accounting.prune() == 1  # 2026-11-01 minus 400 days is 2025-09-27: older rows go
    assert [r["day"] for r in usage_rows(rt)] == ["2025-09-27", "2026-11-01"]


def test_a_budget_of_0_means_no_tokens_for_the_day_as_for_a_feature(llm_runtime, fake_gemini, caplog):
    """A feature's cap of 0 stopped the feature while a daily budget of 0 meant no limit: the same
    kind of setting with two meanings of 0, and an operator who set the budget to 0 to stop the
    spending removed the limit instead. 0 now means no tokens for both, `unlimited` means no
    limit, and a deployment still at 0 is told (log, /status, diagnose) that its meaning changed."""
    rt = llm_runtime(llm_daily_token_budget=Settings.from_env({ZERO_ENV: "0"}).llm_daily_token_budget,
                     llm_reflect=False)
    fake_gemini.responder = responder()
    call = ToolCaller(rt)
    seed_session(call)
    assert call("summarize", sessionId="s1")["summary"]["method"] == "synthetic"
    assert fake_gemini.generations() == []  # nothing was sent
    assert any("means no model tokens at all" in r.message and "unlimited" in r.message for r in caplog.records)
    health = call("health")["llm"]
    assert health["budget"]["daily"] == 0 and health["budget"]["reached"] is True
    assert health["mode"].startswith("deterministic") and health["features"]["summaries"]["usesModel"] is False
    [alert] = [a for a in call("status")["alerts"] if ZERO_ENV in a["message"]]
    assert alert["level"] == "warn" and "0 meant no limit" in alert["message"] and "unlimited" in alert["fix"]
    check = {c["name"]: c for c in call("memory_diagnose")["checks"]}["llm-budget"]
    assert check["status"] == "warn" and "until 2026-12, 0 meant no limit" in check["message"]

    parsed = Settings.from_env({f"{ZERO_ENV}_COMPRESS": "0", f"{ZERO_ENV}_GRAPH": "Unlimited"})
    assert parsed.llm_daily_token_budget_compress == 0 and parsed.llm_daily_token_budget_graph is None
    assert parsed.llm_daily_token_budget == 2_000_000
    with pytest.raises(SettingsError, match="'unlimited'"):
        Settings.from_env({ZERO_ENV: "-1"})
