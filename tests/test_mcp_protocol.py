"""The Streamable HTTP MCP endpoint at /mcp: JSON-RPC 2.0, both protocol eras, JSON responses.

Results are checked against the official SDK's wire schemas for the version in use
(``mcp_types.methods.validate_server_result``), so a shape the SDK would reject fails here.
"""

from __future__ import annotations

import json

from agentmemory_server.errors import CATALOGUE

import pytest

from mcp_types.methods import validate_server_result

from agentmemory_server.adapters import mcp_http as mp, mcp_sessions
from agentmemory_server.kernel.util import Clock
from mcp_support import call_order, check_result, client_poster, sample_args, seed, tool_error
from agentmemory_server.adapters.web import create_app

MODERN = "2026-07-28"
ENVELOPE = {mp.META_VERSION: MODERN, mp.META_CAPABILITIES: {}}


def rpc(client, method, params=None, *, rid=1, headers=None, raw=None):
    body = raw if raw is not None else json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": method, **({"params": params} if params is not None else {})})
    r = client.post("/mcp", data=body, headers={"Content-Type": "application/json",
                                                "Accept": "application/json, text/event-stream",
                                                **(headers or {})})
    return r, (r.get_json() if r.data else None)


def modern(client, method, params=None, *, headers=None):
    name_key = mp.NAME_PARAMS.get(method)
    routing = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name_key and params and name_key in params:
        routing["Mcp-Name"] = params[name_key]
    return rpc(client, method, {**(params or {}), "_meta": ENVELOPE}, headers={**routing, **(headers or {})})


def initialize(client, version="2025-11-25"):
    return rpc(client, "initialize", {"protocolVersion": version, "capabilities": {},
                                      "clientInfo": {"name": "pytest", "version": "1"}})


# -- handshake era ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("offered,agreed", [("2024-11-05", "2024-11-05"), ("2025-03-26", "2025-03-26"),
                                            ("2025-06-18", "2025-06-18"), ("2025-11-25", "2025-11-25"),
                                            ("1999-01-01", "2025-11-25"), (MODERN, "2025-11-25")])
def test_initialize_negotiates_a_handshake_version(client, offered, agreed):
    r, body = initialize(client, offered)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    result = body["result"]
    assert result["protocolVersion"] == agreed and result["serverInfo"]["name"] == "agentmemory"
    assert set(result["capabilities"]) == {"tools", "resources", "prompts"}
    assert len(r.headers["Mcp-Session-Id"]) == 32
    validate_server_result("initialize", agreed, result)


def test_session_lifecycle(client):
    r, _ = initialize(client)
    sid = r.headers["Mcp-Session-Id"]
    r = client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                    headers={"Mcp-Session-Id": sid})
    assert r.status_code == 202 and r.data == b"" and "Content-Type" not in r.headers
    r, body = rpc(client, "ping", headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
    assert r.status_code == 200 and body == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert client.delete("/mcp", headers={"Mcp-Session-Id": sid}).status_code == 204
    r, body = rpc(client, "ping", headers={"Mcp-Session-Id": sid})
    assert r.status_code == 404 and body["error"]["code"] == mp.INVALID_REQUEST  # re-initialise
    assert body["error"]["data"]["code"] == "session_expired" and body["error"]["data"]["status"] == 404
    assert client.delete("/mcp", headers={"Mcp-Session-Id": sid}).status_code == 404
    assert client.delete("/mcp").status_code == 400
    r, body = rpc(client, "ping")  # sessions are optional: a stateless client works too
    assert r.status_code == 200 and body["result"] == {}


def test_a_session_opened_by_one_process_is_served_by_another(make_runtime):
    # Two gunicorn workers (or two nodes) share no memory: a session table per process answered
    # 404 to every request that reached the other one, and the client's new initialize, landing
    # anywhere, did not help (half of a Claude Code session's MCP calls failed).
    first, second = (create_app(runtime=make_runtime()).test_client() for _ in range(2))
    r, _ = initialize(first, "2025-03-26")
    sid = r.headers["Mcp-Session-Id"]
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}]
    r = second.post("/mcp", json=batch, headers={"Mcp-Session-Id": sid})  # batches exist only in 2025-03-26
    assert r.status_code == 200 and [m["id"] for m in r.get_json()] == [1, 2], r.get_json()
    assert second.delete("/mcp", headers={"Mcp-Session-Id": sid}).status_code == 204
    r, body = rpc(second, "ping", headers={"Mcp-Session-Id": sid})
    assert r.status_code == 404 and body["error"]["code"] == mp.INVALID_REQUEST


def test_a_session_ended_in_one_process_is_ended_in_every_process(make_runtime):
    # The spec: once a session is ended, requests carrying its id MUST get 404. DELETE used to end
    # it only in the process that answered, so the client's next request, landing on a sibling
    # process or another node, was served under the ended session.
    first, second = (create_app(runtime=make_runtime()).test_client() for _ in range(2))
    ended, kept = (initialize(first)[0].headers["Mcp-Session-Id"] for _ in range(2))
    assert rpc(second, "ping", headers={"Mcp-Session-Id": ended})[0].status_code == 200  # seen there before
    assert first.delete("/mcp", headers={"Mcp-Session-Id": ended}).status_code == 204
    for client in (first, second):
        r, body = rpc(client, "ping", headers={"Mcp-Session-Id": ended})
        assert r.status_code == 404 and body["error"]["data"]["code"] == "session_expired"
        assert rpc(client, "ping", headers={"Mcp-Session-Id": kept})[0].status_code == 200
    assert second.delete("/mcp", headers={"Mcp-Session-Id": ended}).status_code == 404
    third = create_app(runtime=make_runtime()).test_client()  # a process started afterwards
    assert rpc(third, "ping", headers={"Mcp-Session-Id": ended})[0].status_code == 404


def test_the_store_keeps_only_the_newest_ended_sessions(make_runtime):
    ticks = iter(range(1_790_000_000, 1_790_001_000))  # a second a call: the order of ending is plain
    rt = make_runtime(clock=Clock(lambda: float(next(ticks))))
    sessions = mcp_sessions.Sessions(capacity=3, db=rt.db, now=rt.clock.iso)
    ids = [sessions.open("2025-06-18") for _ in range(5)]
    assert all(sessions.end(sid) for sid in ids)
    fresh = mcp_sessions.Sessions(capacity=3, db=rt.db, now=rt.clock.iso)  # another process: only the store
    assert [fresh.version(sid) for sid in ids] == ["2025-06-18", "2025-06-18", None, None, None]


def test_session_ids_say_their_version_and_ended_ones_are_remembered_within_a_bound():
    sessions = mcp_sessions.Sessions(capacity=2)
    ids = [sessions.open(version) for version in mp.HANDSHAKE_VERSIONS]
    assert all(len(sid) == 32 and int(sid, 16) >= 0 for sid in ids) and len(set(ids)) == len(ids)
    assert [mcp_sessions.Sessions().version(sid) for sid in ids] == list(mp.HANDSHAKE_VERSIONS)  # any process reads them
    assert mcp_sessions.Sessions().version("0" * 32) is None and mcp_sessions.Sessions().version("not-ours") is None
    first, second, third = (sessions.open("2025-11-25") for _ in range(3))
    assert all(sessions.end(sid) for sid in (first, second, third)) and not sessions.end(third)
    assert sessions.version(third) is None and sessions.version(second) is None
    assert sessions.version(first) == "2025-11-25"  # the oldest ended id was let go: the table is bounded


@pytest.mark.parametrize("version", mp.HANDSHAKE_VERSIONS)
def test_every_method_answers_valid_results(client, version):
    headers = {"MCP-Protocol-Version": version}
    checks = [("tools/list", {}), ("resources/list", {}), ("resources/templates/list", {}),
              ("prompts/list", {}), ("ping", {}),
              ("tools/call", {"name": "memory_recall", "arguments": {"query": "anything"}}),
              ("resources/read", {"uri": "agentmemory://status"}),
              ("prompts/get", {"name": "recall_context", "arguments": {"task_description": "x"}})]
    for method, params in checks:
        if method == "resources/templates/list" and version == "2024-11-05":
            continue  # no such method in that revision's schema
        r, body = rpc(client, method, params, headers=headers)
        assert r.status_code == 200 and "result" in body, (method, body)
        validate_server_result(method, version, body["result"])


def test_tools_call_runs_the_registry_tool(client, call):
    _, body = rpc(client, "tools/call", {"name": "memory_save", "arguments": {
        "content": "JSON-RPC saved this", "concepts": "rpc,http"}})
    memory = json.loads(body["result"]["content"][0]["text"])["memory"]
    assert "isError" not in body["result"] and memory["concepts"] == ["rpc", "http"]
    assert call("memory_get", memoryId=memory["id"])["memory"]["content"] == "JSON-RPC saved this"


@pytest.mark.parametrize("raw,code,status", [
    (b"{not json", mp.PARSE_ERROR, 400),
    (b"\xff\xfe", mp.PARSE_ERROR, 400),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "x": NaN}', mp.PARSE_ERROR, 400),
    (b'"a string"', mp.INVALID_REQUEST, 400),
    (b'{"id": 1, "method": "ping"}', mp.INVALID_REQUEST, 400),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', mp.INVALID_REQUEST, 400),
    (b'{"jsonrpc": "2.0", "id": 1, "method": 7}', mp.INVALID_REQUEST, 400),
    (b'{"jsonrpc": "2.0", "id": null, "method": "ping"}', mp.INVALID_REQUEST, 400),
    (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', mp.INVALID_REQUEST, 400),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "nope/nope"}', mp.METHOD_NOT_FOUND, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}', mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": "abc"}}', mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}', mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}}', mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "livez"}}', mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "memory_recall", "arguments": 3}}',
     mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {}}', mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "agentmemory://nope"}}',
     mp.RESOURCE_NOT_FOUND, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "agentmemory://project/%zz/recent"}}',
     mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "nope"}}', mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "session_handoff"}}',
     mp.INVALID_PARAMS, 200),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}', None, 200),
])
def test_jsonrpc_errors(client, raw, code, status):
    r, body = rpc(client, None, raw=raw)
    assert r.status_code == status, body
    if code is None:
        assert "result" in body
        return
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == code and body["error"]["message"]
    data = body["error"]["data"]  # the REST error envelope rides inside every JSON-RPC error
    assert data["ok"] is False and data["code"] in CATALOGUE and data["error"] and data["status"] >= 400
    try:
        sent = json.loads(raw)
    except ValueError:
        sent = None
    valid_id = code != mp.PARSE_ERROR and isinstance(sent, dict) and type(sent.get("id")) is int
    assert body["id"] == (1 if valid_id else None)  # echoed whenever it can be read


def test_tool_failures_are_results_not_protocol_errors(client):
    _, body = rpc(client, "tools/call", {"name": "memory_observations", "arguments": {"limit": 0}})
    assert body["result"]["isError"] is True
    error = json.loads(body["result"]["content"][0]["text"])
    assert error["details"]["field"] == "sessionId"


def test_notifications_and_client_responses_get_202(client):
    for message in ({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}},
                    {"jsonrpc": "2.0", "id": 9, "result": {}}):
        r = client.post("/mcp", json=message)
        assert r.status_code == 202 and r.data == b""


def test_batches_only_in_2025_03_26(client):
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"},
             {"jsonrpc": "2.0", "method": "notifications/initialized"},
             {"jsonrpc": "2.0", "id": 2, "method": "nope"}, 5]
    r = client.post("/mcp", json=batch, headers={"MCP-Protocol-Version": "2025-03-26"})
    assert r.status_code == 200
    answers = r.get_json()
    assert [a.get("id") for a in answers] == [1, 2, None]
    assert answers[0]["result"] == {} and answers[1]["error"]["code"] == mp.METHOD_NOT_FOUND
    assert answers[2]["error"]["code"] == mp.INVALID_REQUEST
    only_notes = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    assert client.post("/mcp", json=only_notes, headers={"MCP-Protocol-Version": "2025-03-26"}).status_code == 202
    r = client.post("/mcp", json=[], headers={"MCP-Protocol-Version": "2025-03-26"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == mp.INVALID_REQUEST
    r = client.post("/mcp", json=[{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}],
                    headers={"MCP-Protocol-Version": "2025-03-26"})
    assert r.get_json()[0]["error"]["code"] == mp.INVALID_REQUEST
    for version in ("2025-06-18", "2025-11-25"):
        r = client.post("/mcp", json=batch, headers={"MCP-Protocol-Version": version})
        assert r.status_code == 400 and "2025-03-26" in r.get_json()["error"]["message"]
    # A session negotiated at 2025-06-18 may not batch even without the header.
    r, _ = initialize(client, "2025-06-18")
    r = client.post("/mcp", json=batch, headers={"Mcp-Session-Id": r.headers["Mcp-Session-Id"]})
    assert r.status_code == 400


def test_unknown_protocol_version_header_is_400(client):
    r, body = rpc(client, "ping", headers={"MCP-Protocol-Version": "2099-01-01"})
    assert r.status_code == 400 and body["error"]["code"] == mp.UNSUPPORTED_PROTOCOL_VERSION
    data = body["error"]["data"]
    assert data["supported"] == list(mp.SUPPORTED_VERSIONS) and data["requested"] == "2099-01-01"
    assert data["code"] == "unsupported_protocol_version" and data["status"] == 400 and data["ok"] is False


def test_http_level_rules(client):
    r = client.get("/mcp")
    assert r.status_code == 405 and r.headers["Allow"] == "POST, DELETE"
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"Accept": "text/html"})
    assert r.status_code == 406
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.get_json()["error"]["data"]["code"] == "origin_not_allowed"
    # A browser MCP client on another local port (e.g. the Inspector UI) must be listed in
    # VIEWER_ALLOWED_ORIGINS, which also gives it the CORS headers it needs to read answers.
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"Origin": "http://localhost:5173"})
    assert r.status_code == 403
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"Origin": "http://localhost"})  # the server's own origin
    assert r.status_code == 200


def test_listed_browser_origin_may_use_mcp(make_runtime):
    from agentmemory_server.adapters.web import create_app

    client = create_app(runtime=make_runtime(viewer_allowed_origins="http://localhost:6274")).test_client()
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    headers={"Origin": "http://localhost:6274"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://localhost:6274"


def test_origin_rule_for_servers_bound_beyond_loopback():
    assert mp.origin_allowed(None, "x", "127.0.0.1")
    assert not mp.origin_allowed("https://space.example", "space.example", "127.0.0.1")
    assert mp.origin_allowed("https://space.example", "space.example", "0.0.0.0")
    assert not mp.origin_allowed("https://evil.example", "space.example", "0.0.0.0")


def test_auth_applies_to_mcp(tmp_path):
    app = create_app({"AGENTMEMORY_DATA_DIR": str(tmp_path), "AGENTMEMORY_SECRET": "tok",
                      "AGENTMEMORY_BACKGROUND_JOBS": "false"})
    try:
        client = app.test_client()
        r, body = rpc(client, "ping")
        assert r.status_code == 401 and body["error"]["code"] == mp.INVALID_REQUEST and body["id"] is None
        assert body["error"]["message"].startswith("unauthorized") and body["error"]["data"]["status"] == 401
        r, body = rpc(client, "ping", headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200 and body["result"] == {}
    finally:
        app.extensions["agentmemory"].close()


def test_body_size_limit(tmp_path):
    app = create_app({"AGENTMEMORY_DATA_DIR": str(tmp_path), "AGENTMEMORY_MAX_BODY_BYTES": "1000", "AGENTMEMORY_AUTH": "off",
                      "AGENTMEMORY_BACKGROUND_JOBS": "false"})
    try:
        r = app.test_client().post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "memory_save", "arguments": {"content": "x" * 5000}}})
        assert r.status_code == 413 and r.get_json()["jsonrpc"] == "2.0"
        data = r.get_json()["error"]["data"]
        assert data["code"] == "payload_too_large" and data["details"]["setting"] == "AGENTMEMORY_MAX_BODY_BYTES"
    finally:
        app.extensions["agentmemory"].close()


# -- 2026-07-28 (per-request envelope) ------------------------------------------------------------------


def test_discover_and_modern_results(client):
    r, body = modern(client, "server/discover")
    assert r.status_code == 200 and "Mcp-Session-Id" not in r.headers
    result = body["result"]
    assert result["supportedVersions"] == list(mp.SUPPORTED_VERSIONS)
    assert result["_meta"][mp.META_SERVER_INFO]["name"] == "agentmemory"
    validate_server_result("server/discover", MODERN, result)
    for method, params in [("tools/list", {}), ("resources/list", {}), ("resources/templates/list", {}),
                           ("prompts/list", {}),
                           ("tools/call", {"name": "memory_sessions", "arguments": {"limit": 1}}),
                           ("resources/read", {"uri": "agentmemory://memories/latest"}),
                           ("prompts/get", {"name": "recall_context", "arguments": {"task_description": "x"}})]:
        r, body = modern(client, method, params)
        assert r.status_code == 200 and body["result"]["resultType"] == "complete", (method, body)
        validate_server_result(method, MODERN, body["result"])


@pytest.mark.parametrize("case,code,status", [
    ("no_meta", mp.INVALID_PARAMS, 400),
    ("version_header_mismatch", mp.HEADER_MISMATCH, 400),
    ("method_header_mismatch", mp.HEADER_MISMATCH, 400),
    ("name_header_mismatch", mp.HEADER_MISMATCH, 400),
    ("old_version_in_envelope", mp.HEADER_MISMATCH, 400),
    ("removed_method", mp.METHOD_NOT_FOUND, 404),
    ("unknown_resource", mp.INVALID_PARAMS, 400),
    ("batch", mp.INVALID_REQUEST, 400),
])
def test_modern_envelope_errors(client, case, code, status):
    routing = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "memory_recall"}
    params = {"name": "memory_recall", "arguments": {"query": "x"}, "_meta": ENVELOPE}
    body = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": params}
    if case == "no_meta":
        del params["_meta"]
    elif case == "version_header_mismatch":
        params["_meta"] = {**ENVELOPE, mp.META_VERSION: "2099-01-01"}
    elif case == "method_header_mismatch":
        routing["Mcp-Method"] = "tools/list"
    elif case == "name_header_mismatch":
        routing["Mcp-Name"] = "memory_save"
    elif case == "old_version_in_envelope":
        params["_meta"] = {**ENVELOPE, mp.META_VERSION: "2025-06-18"}
    elif case == "removed_method":
        body.update(method="ping", params={"_meta": ENVELOPE})
        routing["Mcp-Method"] = "ping"
    elif case == "unknown_resource":
        body.update(method="resources/read", params={"uri": "agentmemory://nope", "_meta": ENVELOPE})
        routing.update({"Mcp-Method": "resources/read", "Mcp-Name": "agentmemory://nope"})
    elif case == "batch":
        body = [body]
    r = client.post("/mcp", json=body, headers=routing)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["error"]["code"] == code


def test_modern_name_header_may_be_base64(client):
    routing = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "prompts/get",
               "Mcp-Name": "=?base64?cmVjYWxsX2NvbnRleHQ=?="}
    body = {"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {
        "name": "recall_context", "arguments": {"task_description": "x"}, "_meta": ENVELOPE}}
    r = client.post("/mcp", json=body, headers=routing)
    assert r.status_code == 200 and r.get_json()["result"]["messages"]


def test_modern_notification_is_accepted(client):
    r = client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}},
                    headers={"MCP-Protocol-Version": MODERN})
    assert r.status_code == 202


def test_every_tool_is_callable_with_arguments_generated_from_its_schema(client):
    seeds = seed(client_poster(client))
    _r, listed = rpc(client, "tools/list")
    problems: list[str] = []
    for tool in call_order(listed["result"]["tools"]):
        args = sample_args(tool["inputSchema"], seeds)
        r, body = rpc(client, "tools/call", {"name": tool["name"], "arguments": args})
        if r.status_code != 200 or "result" not in body:
            problems.append(f"{tool['name']}: protocol error {body}")
            continue
        result = body["result"]
        if result.get("isError"):
            assert tool_error(result["content"][0]["text"]) is not None, result  # errors are our JSON envelope
        check_result(tool["name"], result["content"][0]["text"], problems)
    assert not problems, "\n".join(problems)
