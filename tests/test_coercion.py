"""Every coercion rule of the upstream contract, applied as upstream applies it (one test each).

A client written against upstream agentmemory sends loosely typed arguments (MCP tools send lists
as comma-separated strings, booleans as "true", numbers as text) and values upstream quietly
repairs instead of refusing. Refusing them here would lose what that client meant to store.

| # | rule (upstream source)                                                     | test                          |
|---|----------------------------------------------------------------------------|-------------------------------|
| 1 | remember: a type outside the six is `fact` (U§4.4, remember.ts)             | test_invalid_memory_type...   |
| 2 | remember: project trimmed, blank -> none (U§4.4)                            | test_blank_project...         |
| 3 | remember: concepts/files/sourceObservationIds as csv strings -> lists (U§2.2)| test_csv_strings...          |
| 4 | remember: ttlDays not a positive number -> no expiry (remember.ts)          | test_ttl_days...              |
| 5 | remember: empty or non-string source ids dropped (remember.ts)              | test_source_ids...            |
| 6 | remember: agentId trimmed, cut to 128 characters (remember.ts)              | test_agent_id...              |
| 7 | lessons: confidence outside [0, 1] or not a number -> 0.5 (U§4.5)            | test_lesson_confidence...     |
| 8 | lessons: tags csv or array (U§1.2 /lessons); blank project -> none          | test_lesson_tags..., ..._blank_project |
| 9 | actions: priority 0 -> 5, below 1 -> 1, above 10 -> 10 (U§4.7)             | test_action_priority...       |
|10 | booleans and numbers sent as text ("true", "5") (MCP registry, U§2.2)       | test_text_booleans...         |
|11 | a JSON array sent as a string -> the array (MCP clients)                    | test_json_array_string...     |
|12 | null means "not given" (upstream's optional fields)                         | test_null_is_not_given        |
|13 | agentId "*" means every agent (U§1.1)                                       | test_agent_wildcard           |
|14 | observe: an unknown hookType -> `other`, name kept (0.9.30 contract, here)  | test_capture.py               |
|15 | observe: blank project -> none (it joins the session's project)             | test_blank_observe_project... |
|16 | session/end: unknown or completed session -> 200 {ended:false} (0.9.30)     | test_sessions.py              |
|17 | smart-search/governance: expandIds, memoryIds as csv (U§2.2)                | test_csv_id_lists             |
"""

from __future__ import annotations

import pytest


def test_invalid_memory_type_becomes_fact(client):
    """On the previous main this was a 400: an upstream client lost the memory."""
    for sent in ("nonsense", "Pattern", "", "decision"):
        r = client.post("/agentmemory/remember", json={"content": f"kept whatever the type {sent!r}", "type": sent})
        assert r.status_code == 201 and r.json["memory"]["type"] == "fact", sent
    assert client.post("/agentmemory/remember", json={"content": "a real bug", "type": "bug"}).json["memory"]["type"] == "bug"


def test_blank_project_means_none(client):
    for sent in ("", "   "):
        memory = client.post("/agentmemory/remember", json={"content": f"global note {len(sent)}", "project": sent}).json["memory"]
        assert "project" not in memory
    trimmed = client.post("/agentmemory/remember", json={"content": "scoped", "project": "  api  "}).json["memory"]
    assert trimmed["project"] == "api"


def test_csv_strings_become_lists(call):
    memory = call("memory_save", content="csv lists", concepts="auth, tokens,,", files="a.py,b.py",
                  sourceObservationIds="obs_1,obs_2")["memory"]
    assert memory["concepts"] == ["auth", "tokens"] and memory["files"] == ["a.py", "b.py"]
    assert memory["sourceObservationIds"] == ["obs_1", "obs_2"]


@pytest.mark.parametrize("ttl,expires", [(3, True), ("3", True), (0, False), (-2, False), ("soon", False),
                                         (None, False), (True, False)])
def test_ttl_days_is_used_only_when_a_positive_number(call, ttl, expires):
    memory = call("memory_save", content=f"ttl {ttl!r}", ttlDays=ttl)["memory"]
    assert ("forgetAfter" in memory) is expires


def test_source_ids_drop_empty_entries(call):
    memory = call("memory_save", content="sources", sourceObservationIds=["obs_1", "", "obs_2"])["memory"]
    assert memory["sourceObservationIds"] == ["obs_1", "obs_2"]


def test_agent_id_is_trimmed_and_cut(call):
    memory = call("memory_save", content="agent stamp", agentId="  " + "a" * 300 + "  ")["memory"]
    assert memory["agentId"] == "a" * 128


@pytest.mark.parametrize("sent,kept", [(0.8, 0.8), ("0.25", 0.25), (1.5, 0.5), (-1, 0.5), ("high", 0.5), (1, 1.0)])
def test_lesson_confidence_outside_the_range_starts_at_half(call, sent, kept):
    lesson = call("memory_lesson_save", content=f"lesson for {sent!r}", confidence=sent)["lesson"]
    assert lesson["confidence"] == kept


def test_lesson_blank_project_means_none(call):
    assert "project" not in call("memory_lesson_save", content="global lesson", project="  ")["lesson"]


def test_lesson_tags_csv_or_array(call):
    assert call("memory_lesson_save", content="csv tags", tags="ci, git")["lesson"]["tags"] == ["ci", "git"]
    assert call("memory_lesson_save", content="list tags", tags=["ci"])["lesson"]["tags"] == ["ci"]


@pytest.mark.parametrize("sent,kept", [(0, 5), (-3, 1), (15, 10), ("7", 7), (None, 5)])
def test_action_priority_is_clamped(call, sent, kept):
    action = call("memory_action_create", title=f"priority {sent!r}", priority=sent)["action"]
    assert action["priority"] == kept


def test_text_booleans_and_numbers(client):
    client.post("/agentmemory/remember", json={"content": "first of two"})
    client.post("/agentmemory/remember", json={"content": "second of two entirely different"})
    page = client.get("/agentmemory/memories?latest=true&limit=1").json
    assert len(page["memories"]) == 1 and page["hasMore"] is True
    r = client.post("/agentmemory/mcp/call", json={"name": "memory_sessions", "arguments": {"limit": "1"}})
    assert r.status_code == 200 and "isError" not in r.json


def test_json_array_string_is_the_array(call):
    memory = call("memory_save", content="json list", concepts='["a", "b"]')["memory"]
    assert memory["concepts"] == ["a", "b"]


def test_null_is_not_given(call):
    memory = call("memory_save", content="nulls", type=None, project=None, concepts=None)["memory"]
    assert memory["type"] == "fact" and "project" not in memory and memory["concepts"] == []


def test_agent_wildcard(call):
    call("memory_save", content="by alpha", agentId="alpha")
    call("memory_save", content="by beta, unrelated words", agentId="beta")
    assert len(call("memories_list", agentId="*")["memories"]) == 2
    assert len(call("memories_list", agentId="alpha")["memories"]) == 1


def test_blank_observe_project_joins_the_sessions_project(client):
    client.post("/agentmemory/session/start", json={"sessionId": "p1", "project": "api", "cwd": "/api"})
    r = client.post("/agentmemory/observe", json={"sessionId": "p1", "hookType": "post_tool_use", "project": "  ",
                                                  "data": {"tool_name": "Bash", "tool_input": {"command": "ls"}}})
    assert r.status_code == 201
    obs = client.get("/agentmemory/observations?sessionId=p1").json["observations"][0]
    assert obs["project"] == "api"


def test_csv_id_lists(call):
    a = call("memory_save", content="first memory to delete")["memory"]["id"]
    b = call("memory_save", content="second memory, nothing alike")["memory"]["id"]
    out = call("memory_governance_delete", memoryIds=f"{a},{b}")
    assert out["deleted"] == 2 and out["notFound"] == []
    assert call("memory_smart_search", expandIds="obs_x,obs_y")["mode"] == "expanded"
