"""Nothing lost, nothing silent in the capture pipeline: unknown hook types, capture filters, cut
fields, and events that could not be stored (retried, dead letters), all visible in GET /capture."""

from __future__ import annotations

import pytest

from agentmemory_server.adapters.web import create_app
from agentmemory_server.capture import filters
from agentmemory_server.kernel.hooks import Hooks
from agentmemory_server.kernel.privacy import REDACTED_SECRET
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.wiring import HOOKS, build_runtime
from conftest import hook


def observations(client, session="s1"):
    return client.get(f"/agentmemory/observations?sessionId={session}").json["observations"]


# -- unknown hook types ---------------------------------------------------------------------------


def test_unknown_hook_type_is_stored_as_other_with_its_name_and_counted(client):
    """On main an unknown hookType was stored as is (201) with nothing telling anyone."""
    r = client.post("/agentmemory/observe", json=hook(hook_type="pre_compaction_v2", data={"summary": "ctx"}))
    assert r.status_code == 201 and r.json["hookType"] == "other" and "pre_compaction_v2" in r.json["warning"]
    stored = observations(client)[0]
    assert stored["hookType"] == "other" and stored["originalHookType"] == "pre_compaction_v2"
    client.post("/agentmemory/observe", json=hook(hook_type="PreCompactionV2", timestamp="2026-11-01T10:00:01Z"))
    capture = client.get("/agentmemory/capture").json
    assert capture["counts"]["unknown_hook"] == {"pre_compaction_v2": 1, "PreCompactionV2": 1}
    assert client.get("/agentmemory/health").json["capture"]["unknownHookTypes"] == 2


@pytest.mark.parametrize("name,stored", [
    ("PostToolUse", "post_tool_use"), ("post-tool-use", "post_tool_use"), ("UserPromptSubmit", "other"),
    ("session_end", "session_end"), ("PermissionRequest", "permission_request"), ("observation", "observation"),
])
def test_hook_type_names_are_normalised(name, stored):
    assert filters.classify_hook_type(name)[0] == stored


# -- capture filters -------------------------------------------------------------------------------


@pytest.mark.parametrize("tool,refused", [
    ("memory_smart_search", True), ("mcp__agentmemory__memory_save", True), ("ToolSearch", True),
    ("ListMcpResources", True), ("Bash", False), ("mcp__github__create_issue", False), ("my_memory_tool", False),
])
def test_default_deny_list_skips_the_servers_own_tools(tool, refused):
    assert bool(filters.ToolFilter.from_settings("", "").refuses(tool)) is refused


def test_allow_list_is_exclusive_and_deny_globs(make_runtime):
    allow = filters.ToolFilter.from_settings("Bash, Edit", "")
    assert not allow.refuses("bash") and allow.refuses("Read") and not allow.refuses("mcp__x__edit")
    assert allow.refuses("memory_save")
    # an allow-list replaces every deny rule, the built-in ones included, as upstream
    assert not filters.ToolFilter.from_settings("memory_*", "").refuses("memory_save")
    deny = filters.ToolFilter.from_settings("", "mcp__*__secret*, Web*")
    assert deny.refuses("mcp__vault__secret_get") and deny.refuses("WebFetch") and not deny.refuses("Bash")


def test_a_filtered_event_is_kept_visible_and_can_be_stored_anyway(client):
    body = hook(data={"tool_name": "mcp__agentmemory__memory_smart_search", "tool_input": {"query": "auth"},
                      "tool_output": "3 results"})
    r = client.post("/agentmemory/observe", json=body)
    assert r.status_code == 202 and r.json["filtered"] is True and "memory_*" in r.json["reason"]
    assert observations(client) == []
    capture = client.get("/agentmemory/capture?status=filtered").json
    assert capture["inbox"]["filtered"] == 1 and capture["items"][0]["eventId"] == r.json["eventId"]
    assert capture["counts"]["filtered_tool"] == {"mcp__agentmemory__memory_smart_search": 1}
    out = client.post("/agentmemory/capture/retry", json={"eventId": r.json["eventId"]}).json
    assert out["recovered"] == 1 and len(observations(client)) == 1
    assert client.get("/agentmemory/capture").json["inbox"]["filtered"] == 0


def test_env_filters_reach_the_server(make_runtime):
    rt = make_runtime(capture_deny="Read", capture_allow="")
    client = create_app(runtime=rt).test_client()
    r = client.post("/agentmemory/observe", json=hook(data={"tool_name": "Read", "tool_input": {"file_path": "a"}}))
    assert r.status_code == 202 and "AGENTMEMORY_CAPTURE_DENY" in r.json["reason"]


# -- cut fields ---------------------------------------------------------------------------------------


def test_tool_output_is_cut_like_upstreams_hooks(make_runtime):
    rt = make_runtime(capture_output_max=100)
    client = create_app(runtime=rt).test_client()
    r = client.post("/agentmemory/observe", json=hook(data={"tool_name": "Bash", "tool_input": {"command": "ls"},
                                                            "tool_output": "x" * 5000}))
    assert r.status_code == 201 and r.json["truncated"]["fields"] == ["tool_output"]
    raw = observations(client)[0]["raw"]
    assert len(raw["tool_output"]) == 100 and raw["tool_output"].endswith("\n[...truncated]")
    r = client.post("/agentmemory/observe", json=hook(timestamp="2026-11-01T10:00:05Z", data={
        "tool_name": "Read", "tool_input": {"file_path": "a"}, "tool_response": {"content": "y" * 500}}))
    cut = observations(client)[1]["raw"]["tool_response"]
    assert isinstance(cut, str) and len(cut) == 100 and cut.endswith("...[truncated]")


def test_an_oversized_field_is_cut_with_a_marker_never_dropped(make_runtime):
    rt = make_runtime(max_field_chars=1000)
    client = create_app(runtime=rt).test_client()
    content = "line of a very large file\n" * 4000  # a Write of ~100 KB
    r = client.post("/agentmemory/observe", json=hook(data={"tool_name": "Write",
                                                            "tool_input": {"file_path": "big.txt", "content": content}}))
    assert r.status_code == 201 and r.json["truncated"]["fields"] == ["tool_input.content"]
    stored = observations(client)[0]
    kept = stored["raw"]["tool_input"]["content"]
    assert len(kept) == 1000 and f"truncated {len(content) - 1000} characters" in kept
    assert stored["title"] == "Write big.txt: 38 lines" and stored["truncated"]["chars"] == len(content) - 1000
    assert client.get("/agentmemory/capture").json["counts"]["truncated"] == {"content": 1}
    note = client.post("/agentmemory/observe", json={"sessionId": "n", "content": "z" * 5000}).json
    assert note["truncated"]["chars"] == 4000


def test_a_huge_field_is_cut_before_stripping_and_a_secret_at_the_cut_is_still_stripped(make_runtime):
    """Stripping secrets reads every character, so text far past its limit is shortened first
    (a 12 MB Write took seconds); a secret that starts before the cut point must still go, and the
    counts must be those of the text as sent."""
    rt = make_runtime(max_field_chars=1000, capture_output_max=500)
    client = create_app(runtime=rt).test_client()
    secret = "ghp_" + "A1b2C3d4E5" * 4  # a GitHub token across the cut point
    content = "x " * 460 + secret + "\n" + "y" * 3_000_000  # the kept head would end inside the token
    output = "z " * 235 + secret + "\n" + "w" * 2_000_000
    r = client.post("/agentmemory/observe", json=hook(data={
        "tool_name": "Write", "tool_input": {"file_path": "big.txt", "content": content}, "tool_output": output}))
    assert r.status_code == 201
    assert sorted(r.json["truncated"]["fields"]) == ["tool_input.content", "tool_output"]
    shorter = len(secret) - len(REDACTED_SECRET)  # the counts are of the stripped text, as before
    assert r.json["truncated"]["chars"] == (len(content) - 1000) + (len(output) - 500) - 2 * shorter
    raw = observations(client)[0]["raw"]
    kept = raw["tool_input"]["content"]
    assert f"truncated {len(content) - 1000 - shorter} characters" in kept and "A1b2C3" not in kept
    assert len(raw["tool_output"]) == 500 and "A1b2C3" not in raw["tool_output"]


# -- events that could not be stored ------------------------------------------------------------------


class FlakyStore:
    """An observe hook (the real extension point inside the observation's transaction) that fails
    while ``failing`` is set: as a full disk or a bug would, the transaction rolls back."""

    def __init__(self) -> None:
        self.failing = True

    def __call__(self, ctx, tx, obs) -> None:
        if self.failing:
            raise OSError("disk I/O error (injected)")


@pytest.fixture
def flaky(tmp_path):
    breaker = FlakyStore()
    hooks = Hooks(**{**HOOKS.__dict__, "observe": (*HOOKS.observe, breaker)})
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), background_jobs=False,
                                 embedding_provider="none", auth="off", capture_max_attempts=3)
    rt = build_runtime(settings, hooks=hooks)
    yield rt, breaker
    rt.close()


def test_a_failed_event_is_kept_and_stored_by_a_retry(flaky):
    rt, breaker = flaky
    client = create_app(runtime=rt).test_client()
    r = client.post("/agentmemory/observe", json=hook())
    assert r.status_code == 202 and r.json["retrying"] is True and "disk I/O error" in r.json["error"]
    assert r.json["durableAfterMs"] == 0 and r.json["bootId"] == rt.hub.epoch  # upstream reads them from every 2xx
    assert observations(client) == []
    capture = client.get("/agentmemory/capture").json
    assert capture["inbox"]["pending"] == 1 and capture["inbox"]["lastError"].startswith("OSError")
    assert client.get("/agentmemory/status").json["alerts"][0]["message"].startswith("1 hook event(s)")
    assert rt.services["capture_retry"].run()["matched"] == 0  # its retry is not due yet
    breaker.failing = False
    out = client.post("/agentmemory/capture/drain", json={}).json  # drain: every pending entry, now
    assert (out["matched"], out["recovered"]) == (1, 1)
    assert len(observations(client)) == 1 and client.get("/agentmemory/capture").json["inbox"]["pending"] == 0
    # The client resending the same event later is a duplicate, not a second copy.
    assert client.post("/agentmemory/observe", json=hook()).status_code == 200


def test_retries_end_in_a_dead_letter_and_retry_all_revives_them(flaky):
    rt, breaker = flaky
    client = create_app(runtime=rt).test_client()
    assert client.post("/agentmemory/observe", json=hook()).status_code == 202
    now = [4e9]  # far in the future: the first retry is due
    rt.clock = type(rt.clock)(lambda: now[0])
    worker = rt.services["capture_retry"]
    assert worker.run()["waiting"] == 1  # attempt 2 of 3
    now[0] += 25  # past the doubled backoff (20 s)
    assert worker.run()["dead"] == 1  # attempt 3: out of attempts
    dead = client.get("/agentmemory/capture?status=dead").json
    assert dead["inbox"]["dead"] == 1 and dead["items"][0]["attempts"] == 3
    assert worker.run()["matched"] == 0  # dead letters wait for a person
    breaker.failing = False
    out = client.post("/agentmemory/capture/retry", json={"all": True}).json
    assert out == {"success": True, "matched": 1, "recovered": 1, "dead": 0, "waiting": 0}
    assert len(observations(client)) == 1


def test_a_full_session_keeps_the_event_as_a_dead_letter(make_runtime):
    rt = make_runtime(max_obs_per_session=1)
    client = create_app(runtime=rt).test_client()
    client.post("/agentmemory/observe", json=hook())
    r = client.post("/agentmemory/observe", json=hook(timestamp="2026-11-01T10:00:09Z"))
    assert r.status_code == 409 and r.json["details"]["keptInCaptureInbox"] is True
    dead = client.get("/agentmemory/capture?status=dead").json["items"]
    assert len(dead) == 1 and "MAX_OBS_PER_SESSION" in dead[0]["reason"] and dead[0]["eventId"] == r.json["details"]["eventId"]


def test_a_full_inbox_answers_503_so_hooks_keep_the_event(flaky, tmp_path):
    rt, _breaker = flaky
    rt.services["capture"].inbox_max = 1
    client = create_app(runtime=rt).test_client()
    assert client.post("/agentmemory/observe", json=hook()).status_code == 202
    r = client.post("/agentmemory/observe", json=hook(timestamp="2026-11-01T11:00:00Z"))
    assert r.status_code == 503 and r.json["code"] == "capture_inbox_full"


def test_retry_needs_a_target_and_unknown_events_are_404(client):
    assert client.post("/agentmemory/capture/retry", json={}).status_code == 400
    r = client.post("/agentmemory/capture/retry", json={"eventId": "evc_missing"})
    assert r.status_code == 404 and r.json["code"] == "capture_event_not_found"
