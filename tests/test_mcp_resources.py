"""MCP resources and prompts over upstream's plain HTTP routes (U§2.3)."""

from __future__ import annotations

import json

import pytest

from agentmemory_server.operations import resources as mcp_resources
from agentmemory_server.kernel import registry


def read(client, uri):
    r = client.post("/agentmemory/mcp/resources/read", json={"uri": uri})
    return r, r.get_json()


def payload(body):
    (content,) = body["contents"]
    assert content["mimeType"] == "application/json"
    return json.loads(content["text"])


@pytest.fixture
def seeded(call):
    call("agent_observe", sessionId="r1", project="web app", hookType="prompt_submit",
         data={"prompt": "add a login form"})
    call("agent_observe", sessionId="r1", project="web app", hookType="post_tool_use", data={
        "tool_name": "Edit", "tool_input": {"file_path": "src/login.tsx"}, "tool_output": "ok"})
    call("agent_observe", sessionId="r2", project="other", hookType="prompt_submit", data={"prompt": "unrelated"})
    saved = call("memory_save", content="Login forms use the shared validation hook", project="web app")
    return saved["memory"]["id"]


def test_listing_has_upstreams_six_resources_and_the_templates(client):
    body = client.get("/agentmemory/mcp/resources").get_json()
    uris = [r["uri"] for r in body["resources"]]
    assert len(uris) == 6 and "agentmemory://status" in uris and "agentmemory://project/{name}/profile" in uris
    assert all(r["mimeType"] == "application/json" and r["description"] for r in body["resources"])
    assert [t["uriTemplate"] for t in body["resourceTemplates"]] == [u for u in uris if "{" in u]


def test_status_and_latest_memories(client, seeded):
    r, body = read(client, "agentmemory://status")
    assert r.status_code == 200
    status = payload(body)
    assert status["sessionCount"] == 2 and status["memoryCount"] == 1 and status["healthStatus"] == "healthy"
    assert status["observationCount"] == 3
    latest = payload(read(client, "agentmemory://memories/latest")[1])["memories"]
    assert [m["id"] for m in latest] == [seeded] and set(latest[0]) >= {"title", "type", "strength"}


def test_project_recent_decodes_the_name(client, seeded):
    r, body = read(client, "agentmemory://project/web%20app/recent")
    assert r.status_code == 200 and body["contents"][0]["uri"] == "agentmemory://project/web%20app/recent"
    recent = payload(body)
    assert recent["project"] == "web app" and [s["id"] for s in recent["sessions"]] == ["r1"]
    assert recent["sessions"][0]["firstPrompt"] == "add a login form"


@pytest.mark.parametrize("uri,status,code", [
    ("agentmemory://project/%zz/recent", 400, "invalid_input"),
    ("agentmemory://project/%C3%28/recent", 400, "invalid_input"),
    ("agentmemory://project/%20/recent", 400, "invalid_input"),
    ("agentmemory://nope", 404, "resource_not_found"),
    ("agentmemory://project/a/b/recent", 404, "resource_not_found"),
    ("", 400, "invalid_input"),
])
def test_bad_resource_uris(client, uri, status, code):
    r, body = read(client, uri)
    assert r.status_code == status and body["code"] == code


def test_the_graph_resource_is_what_the_graph_route_serves(client, call, seeded):
    call("graph_extract", sessionId="r1")
    r, body = read(client, "agentmemory://graph/stats")
    assert r.status_code == 200
    stats = payload(body)
    assert stats == client.get("/agentmemory/graph/stats").get_json() and stats["totalNodes"] > 0


def test_the_project_profile_resource_is_what_the_profile_route_serves(client, seeded):
    r, body = read(client, "agentmemory://project/web%20app/profile")
    assert r.status_code == 200
    profile = payload(body)
    assert profile["cached"] is False and "src/login.tsx" in json.dumps(profile["profile"])  # the seeded session
    # The resource ran the route's tool, which cached the profile: the route now serves that copy.
    served = client.get("/agentmemory/profile", query_string={"project": "web app"}).get_json()
    assert served["cached"] is True and served["profile"] == profile["profile"]


def test_team_profile_is_a_clear_501(client):
    r, body = read(client, "agentmemory://team/t1/profile")
    assert r.status_code == 501 and body["code"] == "feature_unavailable" and "team memory" in body["error"]


def test_prompt_listing(client):
    prompts = client.get("/agentmemory/mcp/prompts").get_json()["prompts"]
    assert [p["name"] for p in prompts] == ["recall_context", "session_handoff", "detect_patterns"]
    assert prompts[0]["arguments"] == [{"name": "task_description", "description": "What you are about to work on",
                                        "required": True}]


def get_prompt(client, name, arguments):
    r = client.post("/agentmemory/mcp/prompts/get", json={"name": name, "arguments": arguments})
    return r, r.get_json()


def test_recall_context_prompt(client, seeded):
    r, body = get_prompt(client, "recall_context", {"task_description": "login form validation"})
    assert r.status_code == 200
    (message,) = body["messages"]
    assert message["role"] == "user" and message["content"]["type"] == "text"
    text = message["content"]["text"]
    assert "login form validation" in text and "shared validation hook" in text and seeded in text


def test_session_handoff_prompt(client, seeded):
    _r, body = get_prompt(client, "session_handoff", {"session_id": "r1"})
    text = body["messages"][0]["content"]["text"]
    assert "Hand-off of session r1" in text and "Last 2 of 2 observations" in text and "src/login.tsx" in text
    r, body = get_prompt(client, "session_handoff", {"session_id": "missing"})
    assert r.status_code == 404 and body["code"] == "session_not_found"


def test_detect_patterns_prompt_carries_what_the_patterns_route_finds(client, seeded):
    r, body = get_prompt(client, "detect_patterns", {"project": "web app"})
    assert r.status_code == 200
    text = body["messages"][0]["content"]["text"]
    found = client.post("/agentmemory/patterns", json={"project": "web app"}).get_json()
    assert text.startswith("Recurring patterns agentmemory found in web app")
    assert text.endswith(json.dumps(found, indent=2, ensure_ascii=False))


@pytest.mark.parametrize("name,arguments,status,field", [
    ("recall_context", {}, 400, "task_description"),
    ("recall_context", {"task_description": "  "}, 400, "task_description"),
    ("recall_context", {"task_description": 5}, 400, "task_description"),
    ("recall_context", ["x"], 400, "arguments"),
    ("nope", {}, 404, None),
])
def test_prompt_argument_errors(client, name, arguments, status, field):
    r, body = get_prompt(client, name, arguments)
    assert r.status_code == status
    if field:
        assert body["details"]["field"] == field


def test_resources_respect_agent_isolation(make_runtime):
    from agentmemory_server.kernel.registry import Ctx

    unset = make_runtime(agent_scope="isolated")
    with pytest.raises(registry.AppError) as err:
        mcp_resources.read_resource(Ctx(unset), "agentmemory://memories/latest")
    assert err.value.code == "agent_scope_unset"
    mine, theirs = (make_runtime(agent_scope="isolated", agent_id=a) for a in ("agent-a", "agent-b"))
    for rt, text in ((mine, "agent a decided to use tabs"), (theirs, "agent b prefers spaces always")):
        registry.call(Ctx(rt), "memory_save", {"content": text})
    body = mcp_resources.read_resource(Ctx(mine), "agentmemory://memories/latest")
    assert [m["title"] for m in json.loads(body["contents"][0]["text"])["memories"]] == ["agent a decided to use tabs"]
