"""Agent isolation: with AGENTMEMORY_AGENT_SCOPE=isolated, agent A cannot read anything of agent B
through any route, and every read fails closed without an AGENT_ID.

The sweep iterates over the registry at run time, so tools added later are covered without
touching this file: every REST route and every MCP tool is called as agent A with B's ids,
B's project and a query that matches B's records, with and without an explicit agentId.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from agentmemory_server.kernel import registry
from agentmemory_server.adapters.web import _ws_request, create_app
from agentmemory_server.operations import resources as mcp_resources
from conftest import ToolCaller, clean_environ, hook, post

MARK = "qqleakqq"          # in the text of every record agent B writes
WORD = "zebracorn"         # what A's queries use to find B's records
PROJECT = "shared-project"  # both agents work on a project of the same name
B_MEMORY = f"{WORD} deployment checklist requires the blue green switch and a smoke test {MARK}"


def seed_agent_b(b: ToolCaller) -> dict[str, str]:
    """One of everything, written by agent B."""
    sid = "session-b"
    b("session_start", sessionId=sid, project=PROJECT, cwd="/b", title=f"{WORD} work {MARK}")
    for i, (tool_name, data) in enumerate([
        ("prompt_submit", {"prompt": f"fix {WORD} TODO: rotate {WORD} keys {MARK}"}),
        ("post_tool_use", {"tool_name": "Bash", "tool_input": {"command": f"pytest {WORD}"}, "tool_output": f"1 failed {MARK}"}),
        ("post_tool_use", {"tool_name": "Edit", "tool_input": {"file_path": f"src/{WORD}.py"}, "tool_output": MARK}),
        ("post_tool_use", {"tool_name": "Bash", "tool_input": {"command": f"pytest {WORD}"}, "tool_output": f"ok {MARK}"}),
        ("post_tool_failure", {"tool_name": "Bash", "tool_input": {"command": "make"}, "error": f"{WORD} {MARK}"}),
        ("post_tool_use", {"tool_name": "Edit", "tool_input": {"file_path": f"src/{WORD}.py"}, "tool_output": MARK}),
    ]):
        b("agent_observe", **hook(sid, tool_name, project=PROJECT, timestamp=f"2026-11-01T10:0{i}:00Z", data=data))
    obs = b("memory_observations", sessionId=sid)["observations"][0]["id"]
    memory = b("memory_save", content=B_MEMORY, project=PROJECT, concepts=[WORD])["memory"]
    b("memory_save", content=f"{WORD} rollout needs a feature flag {MARK}", project=PROJECT)
    memory2 = b("memory_save", content=f"{WORD} incidents are reviewed weekly {MARK}", project=PROJECT)["memory"]
    b("relation_create", sourceId=memory["id"], targetId=memory2["id"], type="related", metadata={"why": MARK})
    lesson = b("memory_lesson_save", content=f"{WORD} lesson {MARK}", project=PROJECT, tags=[WORD])["lesson"]
    b("memory_slot_create", label="b_notes", content=f"{WORD} {MARK}", project=PROJECT)
    b("memory_slot_replace", label="persona", content=f"{WORD} persona {MARK}")
    done = b("memory_action_create", title=f"{WORD} done {MARK}", project=PROJECT)["action"]
    b("memory_action_update", actionId=done["id"], status="done", result=f"lesson: {WORD} {MARK}")
    action = b("memory_action_create", title=f"{WORD} open {MARK}", project=PROJECT, requires=done["id"])["action"]
    b("memory_crystallize", actionIds=[done["id"]])
    b("session_end", sessionId=sid)  # summary + slot reflection
    b("graph_extract", sessionId=sid)  # knowledge-graph nodes named after B's words (incl. the marker)
    crystal = b("memory_crystallize", sessionId=sid)["crystal"]
    b("memory_consolidate", project=PROJECT, minObservations=1)
    b("memory_reflect", project=PROJECT)
    # A second session in a project whose very name is B's: A must not learn it either.
    b("agent_observe", **hook("session-b2", "post_tool_use", project=f"b-only-{MARK}",
                              data={"tool_name": "Bash", "tool_input": {"command": WORD}, "tool_output": MARK}))
    return {"session": sid, "session2": "session-b2", "obs": obs, "memory": memory["id"], "memory2": memory2["id"], "lesson": lesson["id"],
            "slot": "b_notes", "action": action["id"], "done": done["id"], "crystal": crystal["id"]}


def known_values(ids: dict[str, str]) -> dict[str, Any]:
    return {
        "sessionId": ids["session2"], "memoryId": ids["memory"], "memoryIds": [ids["memory"]],
        "lessonId": ids["lesson"], "actionId": ids["action"], "actionIds": [ids["done"]],
        "label": ids["slot"], "query": WORD, "project": PROJECT, "sourceId": ids["memory"],
        "targetId": ids["memory2"], "sourceActionId": ids["action"], "targetActionId": ids["done"],
        "observationIds": [ids["obs"]], "expandIds": [ids["obs"]], "parentId": ids["action"],
        "anchor": "2026-11-01T10:03:00Z", "files": [f"src/{WORD}.py"], "terms": [WORD],
        "crystalId": ids["crystal"], "id": ids["memory"], "content": B_MEMORY.replace(f" {MARK}", ""),
        "text": f"{WORD} probe", "title": f"{WORD} probe", "cwd": "/b",
    }


def sample(schema: dict) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "integer":
        return schema.get("default", schema.get("minimum", 1))
    if kind == "number":
        return schema.get("default", schema.get("minimum", 0.5))
    if kind == "boolean":
        return False
    if kind == "array":
        return [sample(schema.get("items", {}))] if schema.get("minItems") else []
    if kind == "object":
        return {}
    return "probe"


def arguments(tool: registry.Tool, ids: dict[str, str]) -> list[dict[str, Any]]:
    """Argument sets for one tool: B's ids wherever the schema takes them, with and without an
    explicit agentId of B (and the '*' wildcard)."""
    props, known = tool.schema.get("properties", {}), known_values(ids)
    required = tool.schema.get("required", [])
    base = {k: v for k, v in known.items() if k in props}
    for name in required:
        base.setdefault(name, sample(props.get(name, {})))
    bare = {k: v for k, v in base.items() if k in required}  # unfiltered lists
    variants = [base] if bare == base else [base, bare]
    if "agentId" in props:
        variants += [{**v, "agentId": agent} for v in variants for agent in ("agent-beta", "*")]
    return variants


_ID = re.compile(r"\b(?:obs|mem|act|ae|crys|lsn|rel|ins)_[0-9a-z_]+")


def secret_ids(b: ToolCaller, ids: dict[str, str]) -> set[str]:
    """Ids of B's records that A is never given: seeing one in an answer to A is a leak."""
    return set(_ID.findall(json.dumps(b("memory_export")))) - set(ids.values())


def leaked(text: str, secrets: set[str]) -> list[str]:
    """B's marker (in the text of every B record) or one of B's secret ids."""
    return ([MARK] if MARK in text else []) + sorted(i for i in secrets if i in text)


@pytest.fixture
def agents(make_runtime):
    a = ToolCaller(make_runtime(agent_id="agent-alpha", agent_scope="isolated"))
    b = ToolCaller(make_runtime(agent_id="agent-beta", agent_scope="isolated"))
    ids = seed_agent_b(b)
    secrets = secret_ids(b, ids)
    assert len(secrets) > 10  # B's other observations, memories, edges, relations, insights, ...
    return a, b, ids, secrets


def _request(client, route: registry.Route, args: dict[str, Any]):
    path = "/agentmemory" + route.path
    for name in list(args):
        if f"<{name}>" in path:
            path = path.replace(f"<{name}>", str(args[name]))
    if route.method == "GET":
        query = {k: ",".join(map(str, v)) if isinstance(v, list) else json.dumps(v) if isinstance(v, bool) else v
                 for k, v in args.items()}
        return client.get(path, query_string=query)
    return client.open(path, method=route.method, json=args)


def test_agent_a_cannot_read_agent_b_through_any_route(agents):
    a, b, ids, secrets = agents
    a("memory_save", content="alphamark private note", project=PROJECT)  # A's own data stays visible to A
    a("memory_lesson_save", content="alphamark global rule")  # so A's context blocks are never empty
    a("memory_slot_replace", label="persona", content="alphamark persona")
    client = create_app(runtime=a.rt).test_client()
    answered: set[str] = set()
    calls = 0
    for tool in registry.REGISTRY.all():
        for args in arguments(tool, ids):
            for route in tool.routes:
                r = _request(client, route, args)
                calls += 1
                assert r.status_code < 500, (tool.name, route, r.get_data(as_text=True)[:300])
                assert not leaked(r.get_data(as_text=True), secrets), (tool.name, route.path, args)
                if r.status_code < 300:
                    answered.add(tool.name)
            if tool.mcp:
                r = client.post("/agentmemory/mcp/call", json={"name": tool.name, "arguments": args})
                assert not leaked(r.get_data(as_text=True), secrets), (tool.name, "mcp", args)
    must_answer = {"memory_sessions", "memory_observations", "memory_recall", "memories_list", "memory_export",
                   "memory_audit", "context", "memory_lessons", "memory_lesson_recall", "memory_lesson_search",
                   "memory_slot_list", "actions_list", "memory_frontier", "relations_list", "crystals_list",
                   "insights_list", "memory_diagnose"}
    assert must_answer <= answered, must_answer - answered  # the sweep really exercised the read tools
    assert calls > 100
    # Positive controls: A still reads its own records, and B's are findable by B.
    assert "alphamark" in json.dumps(a("memory_export")) and a("memory_recall", query="alphamark")["results"]
    assert MARK in json.dumps(b("memory_recall", query=WORD)) and MARK in json.dumps(b("memory_export"))
    # A's writes with B's ids changed nothing of B's.
    memory = b("memory_get", memoryId=ids["memory"])["memory"]
    assert memory["isLatest"] is True and memory["version"] == 1  # A's near-duplicate did not supersede it
    assert b("action_get", actionId=ids["action"])["action"]["status"] == "pending"
    assert b("memory_slot_get", label="b_notes", project=PROJECT)["slot"]["content"] == f"{WORD} {MARK}"
    lessons = {x["id"]: x for x in b("memory_lessons")["lessons"]}
    assert lessons[ids["lesson"]]["reinforcements"] == 0 and not lessons[ids["lesson"]].get("deleted")
    assert b("session_get", sessionId=ids["session"])["session"]["observationCount"] == 6


def _rpc(client, method: str, params: dict[str, Any], rid: int = 1):
    return client.post("/mcp", json={"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
                       headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"})


def resource_uris(ids: dict[str, str]) -> list[tuple[str, str]]:
    """(uri, name asked for) of every resource, templates filled with B's project names."""
    uris = []
    for resource in mcp_resources.RESOURCES:
        for name in (PROJECT, f"b-only-{MARK}"):
            uris.append((resource.uri.replace("{name}", quote(name, safe="")).replace("{id}", ids["session"]), name))
    return list(dict.fromkeys(uris))


PROMPT_ARGUMENTS = [("recall_context", {"task_description": f"{WORD} checklist"}),
                    ("session_handoff", {"session_id": "session-b"}),
                    ("session_handoff", {"session_id": "session-b2"}),
                    ("detect_patterns", {"project": PROJECT}), ("detect_patterns", {})]


def test_agent_a_cannot_read_agent_b_through_mcp_resources_prompts_jsonrpc_or_the_websocket(agents):
    """The other transports: MCP resources and prompts (REST and JSON-RPC), JSON-RPC tools/call,
    and the WebSocket call protocol (``_ws_request`` is exactly what a socket message runs)."""
    a, b, ids, secrets = agents
    a("memory_save", content="alphamark private note", project=PROJECT)
    client = create_app(runtime=a.rt).test_client()
    b_client = create_app(runtime=b.rt).test_client()
    # The status resource counts only A's records (it once counted every agent's).
    status = json.loads(client.post("/agentmemory/mcp/resources/read", json={"uri": "agentmemory://status"})
                        .get_json()["contents"][0]["text"])
    assert status["sessionCount"] == 0 and status["memoryCount"] == 1
    b_status = json.loads(b_client.post("/agentmemory/mcp/resources/read", json={"uri": "agentmemory://status"})
                          .get_json()["contents"][0]["text"])
    assert b_status["sessionCount"] == 2 and b_status["memoryCount"] >= 3
    checked = 0
    for uri, name in resource_uris(ids):
        for r in (client.post("/agentmemory/mcp/resources/read", json={"uri": uri}),
                  _rpc(client, "resources/read", {"uri": uri})):
            # A's own question (the URI, the project name) comes back; nothing else of B's may.
            answer = r.get_data(as_text=True).replace(uri, "").replace(name, "")
            assert r.status_code in (200, 400, 404, 501) and not leaked(answer, secrets), (uri, answer[:400])
            checked += 1
    for name, arguments_ in PROMPT_ARGUMENTS:
        for r in (client.post("/agentmemory/mcp/prompts/get", json={"name": name, "arguments": arguments_}),
                  _rpc(client, "prompts/get", {"name": name, "arguments": arguments_})):
            assert r.status_code < 500 and not leaked(r.get_data(as_text=True), secrets), (name, arguments_)
            checked += 1
    for tool in registry.REGISTRY.all():
        for args in arguments(tool, ids):
            if tool.mcp:
                r = _rpc(client, "tools/call", {"name": tool.name, "arguments": args})
                assert r.status_code < 500 and not leaked(r.get_data(as_text=True), secrets), (tool.name, "jsonrpc")
            reply = json.dumps(_ws_request(a.rt, json.dumps({"id": 1, "tool": tool.name, "args": args})))
            assert not leaked(reply, secrets), (tool.name, "ws", args)
            checked += 1
    assert checked > 150
    # Positive controls: the same channels show each agent its own records.
    recall = _rpc(client, "prompts/get", {"name": "recall_context", "arguments": {"task_description": "alphamark"}})
    assert "alphamark" in recall.get_data(as_text=True)
    b_recall = _rpc(b_client, "prompts/get", {"name": "recall_context", "arguments": {"task_description": WORD}})
    assert MARK in b_recall.get_data(as_text=True)
    handoff = _rpc(b_client, "prompts/get", {"name": "session_handoff", "arguments": {"session_id": "session-b"}})
    assert MARK in handoff.get_data(as_text=True)
    ws = _ws_request(b.rt, json.dumps({"id": 2, "tool": "memory_recall", "args": {"query": WORD}}))
    assert ws["ok"] is True and MARK in json.dumps(ws)
    assert "alphamark" in json.dumps(_ws_request(a.rt, '{"id": 3, "tool": "memory_recall", "args": {"query": "alphamark"}}'))


def test_the_cli_keeps_agents_apart(agents, make_runtime, tmp_path):
    """The admin CLI on the same file: in isolated scope its export holds only AGENT_ID's records
    and stats (every agent's counts) are refused; without isolation an operator sees everything."""
    a, _b, _ids, secrets = agents
    a("memory_save", content="alphamark private note", project=PROJECT)
    db = str(a.rt.db.path)
    base = {**clean_environ(), "AGENTMEMORY_DB": db, "EMBEDDING_PROVIDER": "none"}
    if a.rt.settings.database_url:  # the same PostgreSQL database
        base["AGENTMEMORY_DATABASE_URL"] = a.rt.settings.database_url
    isolated = {**base, "AGENTMEMORY_AGENT_SCOPE": "isolated", "AGENT_ID": "agent-alpha"}
    agentmemory = str(Path(sys.executable).with_name("agentmemory"))
    run = lambda env, *args: subprocess.run([agentmemory, "-q", *args], env=env, capture_output=True, text=True,  # noqa: E731
                                            timeout=120)
    export = run(isolated, "export")
    assert export.returncode == 0, export.stderr
    assert "alphamark" in export.stdout and not leaked(export.stdout, secrets)
    stats = run(isolated, "stats", "--json")
    assert stats.returncode != 0 and "isolated agent scope" in stats.stderr and MARK not in stats.stdout
    nobody = run({**base, "AGENTMEMORY_AGENT_SCOPE": "isolated"}, "export")
    assert nobody.returncode != 0 and "AGENT_ID is not set" in nobody.stderr and MARK not in nobody.stdout
    everything = run(base, "export")  # shared scope: the operator's own tool sees every agent
    assert everything.returncode == 0 and MARK in everything.stdout and "alphamark" in everything.stdout


def test_isolated_without_agent_id_fails_closed(agents, make_runtime):
    _a, _b, ids, secrets = agents
    nobody = make_runtime(agent_scope="isolated")
    client = create_app(runtime=nobody).test_client()
    refused = set()
    for tool in registry.REGISTRY.all():
        for args in arguments(tool, ids)[:1]:
            for route in tool.routes:
                r = _request(client, route, args)
                assert r.status_code < 500 and not leaked(r.get_data(as_text=True), secrets), tool.name
                if r.status_code == 403 and r.json["code"] == "agent_scope_unset":
                    refused.add(tool.name)
    assert {"memory_sessions", "memory_recall", "memory_export", "context", "memory_lessons",
            "memory_slot_list", "memory_frontier", "memory_observations", "memory_audit"} <= refused


def test_shared_scope_agent_filter_and_wildcard(make_runtime):
    a = ToolCaller(make_runtime(agent_id="agent-alpha"))
    b = ToolCaller(make_runtime(agent_id="agent-beta"))
    a("memory_lesson_save", content=f"{WORD} alpha rule")
    b("memory_lesson_save", content=f"{WORD} beta rule")
    assert len(a("memory_lessons")["lessons"]) == 2 and len(a("memory_lessons", agentId="*")["lessons"]) == 2
    assert [x["content"] for x in a("memory_lessons", agentId="agent-beta")["lessons"]] == [f"{WORD} beta rule"]
    hits = a("memory_lesson_recall", query=WORD, agentId="agent-alpha")["lessons"]
    assert [x["agentId"] for x in hits] == ["agent-alpha"]


def test_two_real_servers_on_one_database(live_server, tmp_path):
    db = str(tmp_path / "shared.db")
    env = {"AGENTMEMORY_DB": db, "AGENTMEMORY_AGENT_SCOPE": "isolated"}
    server_b = live_server(env={**env, "AGENT_ID": "agent-beta"})
    server_a = live_server(env={**env, "AGENT_ID": "agent-alpha"})
    assert post(server_b.api("/remember"), {"content": f"{WORD} secret plan {MARK}"}).status_code == 201
    assert post(server_b.api("/lessons"), {"content": f"{WORD} lesson {MARK}"}).status_code == 201
    assert post(server_a.api("/remember"), {"content": f"{WORD} alpha plan"}).status_code == 201
    for method, path, body in [("POST", "/search", {"query": WORD}), ("GET", "/memories", None),
                               ("GET", "/export", None), ("POST", "/lessons/search", {"query": WORD}),
                               ("GET", "/lessons", None), ("GET", "/audit", None)]:
        r = requests.request(method, server_a.api(path), json=body, timeout=30)
        assert r.status_code == 200 and MARK not in r.text, path
    assert "alpha plan" in requests.get(server_a.api("/memories"), timeout=30).text
    assert MARK in post(server_b.api("/search"), {"query": WORD}).text
