"""Retention: auto-forget (TTL, near-duplicates, low-value observations) and eviction caps, with
dry runs, audit rows and timers."""

import pytest

from conftest import ToolCaller
from agentmemory_server.errors import NotFound
from agentmemory_server.kernel.util import Clock

DAY = 86_400.0
T0 = 1_790_000_000.0  # 2026-09-21


@pytest.fixture
def clocked(make_runtime):
    now = [T0]
    return ToolCaller(make_runtime(clock=Clock(lambda: now[0]))), now


def _import(call, **lists):
    call("import", exportData={"version": "0.9.29", **lists})


def test_auto_forget_ttl_near_duplicates_and_low_value(clocked):
    call, now = clocked
    ttl = call("memory_save", content="temporary note about the staging password rotation", ttlDays=1)["memory"]
    keep = call("memory_save", content="permanent architecture decision about queues")["memory"]
    text = "the billing service retries failed charges three times with exponential backoff before alerting"
    _import(call, memories=[
        {"id": "mem_old", "content": text, "title": "old", "project": "pay", "isLatest": True, "type": "fact",
         "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z", "concepts": ["billing"]},
        {"id": "mem_new", "content": text + " now", "title": "new", "project": "pay", "isLatest": True,
         "type": "fact", "createdAt": "2026-02-01T00:00:00.000Z", "updatedAt": "2026-02-01T00:00:00.000Z"}],
        observations={"old-session": [
            {"id": "obs_low", "sessionId": "old-session", "timestamp": "2025-01-01T00:00:00.000Z", "type": "other",
             "title": "noise", "narrative": "noise", "importance": 1},
            {"id": "obs_important", "sessionId": "old-session", "timestamp": "2025-01-01T00:00:00.000Z",
             "type": "error", "title": "real error", "narrative": "kept", "importance": 8}]})
    now[0] += 2 * DAY
    dry = call("auto_forget", dryRun=True)
    assert dry["expiredMemories"] == [ttl["id"]] and dry["lowValueObservations"] == ["obs_low"]
    assert dry["demoted"] == [{"id": "mem_old", "supersededBy": "mem_new"}]
    assert call("memory_get", memoryId=ttl["id"])  # dry run deleted nothing
    call.rt.jobs.run_now("auto_forget")  # the timer's job does the real run
    assert {m["id"] for m in call("memories_list")["memories"]} == {keep["id"], "mem_old", "mem_new"}
    old = call("memory_get", memoryId="mem_old")["memory"]
    assert old["isLatest"] is False and old["supersededBy"] == "mem_new"
    assert [r["type"] for r in call("relations_list", memoryId="mem_old")["relations"]] == ["supersedes"]
    assert [o["id"] for o in call("memory_observations", sessionId="old-session")["observations"]] == ["obs_important"]
    assert call("memory_recall", query="billing retries")["results"][0]["observation"]["id"] == "mem_new"
    audit = call("memory_audit", operation="auto_forget")["entries"]
    assert len(audit) == 1 and audit[0]["details"]["expiredMemories"] == [ttl["id"]]
    again = call("auto_forget")
    assert again["expiredMemories"] == [] and again["demoted"] == [] and again["lowValueObservations"] == []


def test_evict_caps_and_stale_sessions(clocked, make_hook):
    call, now = clocked
    kinds = [("post_tool_failure", {"tool_name": "Bash", "error": "boom"}),          # importance 7
             ("post_tool_use", {"tool_name": "Edit", "tool_input": {"file_path": "a.py"}}),  # 6
             ("post_tool_use", {"tool_name": "Bash", "tool_input": "ls"}),                 # 5
             ("post_tool_use", {"tool_name": "Read", "tool_input": {"file_path": "b.py"}}),  # 4
             ("post_tool_use", {"tool_name": "Grep", "tool_input": "x"})]                   # 4
    for i, (hook_type, data) in enumerate(kinds):
        call("agent_observe", **make_hook("busy", hook_type, project="p", timestamp=f"2026-09-0{i + 1}T00:00:00Z",
                                          data=data))
    call("session_start", sessionId="empty", project="p")
    now[0] += 40 * DAY
    dry = call("evict", dryRun=True, maxObservationsPerProject=3)
    assert dry["overCap"] == 2 and dry["emptySessions"] == ["empty"] and dry["summarised"] == ["busy"]
    out = call("evict", maxObservationsPerProject=3)
    left = [o["type"] for o in call("memory_observations", sessionId="busy")["observations"]]
    assert left == ["error", "file_edit", "command_run"]  # the two lowest-importance went first
    with pytest.raises(NotFound):
        call("session_get", sessionId="empty")
    # The idle session was summarised (from all 5 observations) before the cap trimmed it.
    assert call("session_get", sessionId="busy")["session"]["summary"]["observationCount"] == 5
    assert out["observations"] == 2 and call("memory_audit", operation="evict")["total"] == 1
    assert call("session_get", sessionId="busy")["session"]["observationCount"] == 3


def test_evict_removes_old_superseded_versions(clocked):
    call, now = clocked
    base = "The integration tests need a running redis server on port 6379 before pytest starts"
    v1 = call("memory_save", content=base, project="api")["memory"]
    v2 = call("memory_save", content=base + " locally", project="api")["memory"]
    assert call("evict", dryRun=True)["memories"] == []
    now[0] += 91 * DAY
    assert call("evict")["memories"] == [v1["id"]]
    assert [m["id"] for m in call("memories_list")["memories"]] == [v2["id"]]


def test_retention_jobs_are_registered(rt):
    names = {job["name"] for job in rt.jobs.status()}
    assert {"auto_forget", "evict", "lesson_decay"} <= names
