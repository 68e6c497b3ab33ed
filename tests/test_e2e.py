"""End to end against a real `python src/app.py` (gunicorn gthread) on a free loopback port."""

import json
import threading

import pytest
import requests

from conftest import hook, post


def test_full_loop_without_auth(live_server):
    server = live_server()
    assert requests.get(server.api("/livez")).json()["status"] == "ok"
    r = post(server.api("/session/start"), {"sessionId": "e2e", "project": "demo", "cwd": "/w"})
    assert r.status_code == 200 and r.json()["session"]["id"] == "e2e"
    r = post(server.api("/observe"), hook("e2e", data={"tool_name": "Bash", "tool_input": {"command": "make test"},
                                                      "tool_output": "flaky test in auth module"}))
    assert r.status_code == 201
    obs = requests.get(server.api("/observations"), params={"sessionId": "e2e"}).json()["observations"]
    assert len(obs) == 1 and obs[0]["type"] == "command_run"
    assert requests.get(server.api("/sessions")).json()["sessions"][0]["observationCount"] == 1
    r = post(server.api("/remember"), {"content": "The auth module test is flaky under load", "project": "demo"})
    assert r.status_code == 201
    hits = post(server.api("/search"), {"query": "flaky auth test"}).json()["results"]
    assert {h["kind"] for h in hits} == {"observation", "memory"}
    post(server.api("/session/end"), {"sessionId": "e2e"})
    ctx = post(server.api("/context"), {"sessionId": "next", "project": "demo"}).json()
    assert "flaky test in auth module" in ctx["context"]
    r = post(server.api("/forget"), {"sessionId": "e2e"})
    assert r.json()["details"]["observations"] == 1
    assert post(server.api("/search"), {"query": "make"}).json()["results"] == []
    health = requests.get(server.api("/health")).json()
    assert health["status"] == "healthy" and health["counts"]["memories"] == 1


def test_auth_on(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": "s3cret-token"})
    good = {"Authorization": "Bearer s3cret-token"}
    assert requests.get(server.api("/livez")).status_code == 200  # always open
    for method, path in [("GET", "/health"), ("GET", "/sessions"), ("POST", "/observe"), ("GET", "/mcp/tools"),
                         ("POST", "/mcp/call"), ("GET", "/nope")]:
        r = requests.request(method, server.api(path), data="{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 401, path
        assert r.json()["code"] == "unauthorized"
        r = requests.request(method, server.api(path), data="{}",
                             headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"})
        assert r.status_code == 401
    r = post(server.api("/observe"), hook(), headers=good)
    assert r.status_code == 201
    assert requests.get(server.api("/sessions"), headers=good).json()["total"] == 1
    assert requests.get(server.url + "/stream/mem-live/viewer").status_code == 401


def test_mcp_http_routes(live_server):
    server = live_server()
    tools = requests.get(server.api("/mcp/tools")).json()["tools"]
    names = {t["name"] for t in tools}
    assert {"memory_save", "memory_recall", "memory_sessions", "agent_observe"} <= names
    assert all(t["inputSchema"]["type"] == "object" for t in tools)
    r = post(server.api("/mcp/call"), {"name": "memory_save", "arguments": {"content": "MCP saved this"}})
    assert r.status_code == 200 and json.loads(r.json()["content"][0]["text"])["success"] is True
    r = post(server.api("/mcp/tools"), {"name": "memory_recall", "arguments": {"query": "MCP", "limit": "5"}})
    assert json.loads(r.json()["content"][0]["text"])["results"]
    r = post(server.api("/mcp/call"), {"name": "memory_recall", "arguments": {}})
    assert r.json()["isError"] is True and "query" in r.json()["content"][0]["text"]
    r = post(server.api("/mcp/call"), {"name": "no_such_tool"})
    assert r.status_code == 404 and r.json()["code"] == "unknown_tool"
    r = post(server.api("/mcp/call"), {"name": "health"})
    assert r.status_code == 400


def test_websocket_stream_and_calls(live_server):
    from websockets.sync.client import connect

    server = live_server()
    with connect(server.url.replace("http", "ws") + "/stream/mem-live/viewer", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        post(server.api("/observe"), hook("ws"))
        event = json.loads(ws.recv(timeout=5))
        assert event["type"] == "observation" and event["record"]["sessionId"] == "ws"
        ws.send(json.dumps({"id": 7, "tool": "memory_sessions", "args": {"limit": 5}}))
        reply = json.loads(ws.recv(timeout=5))
        assert reply == {"id": 7, "ok": True, "result": reply["result"]} and reply["result"]["total"] == 1
        ws.send(json.dumps({"id": 8, "tool": "memory_sessions", "args": {"limit": -5}}))
        error = json.loads(ws.recv(timeout=5))
        # The REST error envelope plus the request id: the same body on every transport.
        assert error["id"] == 8 and error["ok"] is False and error["code"] == "invalid_input"
        assert error["status"] == 400 and error["details"] == {"field": "limit"} and "limit" in error["error"]
        ws.send(json.dumps({"id": 9, "tool": "no_such_tool", "args": {}}))
        assert json.loads(ws.recv(timeout=5))["code"] == "unknown_tool"
        ws.send(json.dumps({"id": 10, "tool": "memory_sessions", "args": {}}))
        assert json.loads(ws.recv(timeout=5))["ok"] is True  # still open after the errors


def test_concurrent_observe_8x250(live_server):
    # Concurrency of the write path, not the flood limit (tests/test_floods.py covers that).
    server = live_server(env={"AGENTMEMORY_RATE_LIMIT": "0"})
    failures: list[str] = []

    def worker(n: int) -> None:
        s = requests.Session()
        for i in range(250):
            body = hook(f"c{n}", timestamp=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                        data={"tool_name": "Bash", "tool_input": f"step {n}-{i}"})
            r = s.post(server.api("/observe"), data=json.dumps(body), headers={"Content-Type": "application/json"})
            if r.status_code != 201:
                failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    sessions = requests.get(server.api("/sessions"), params={"limit": 100}).json()["sessions"]
    assert sum(s["observationCount"] for s in sessions) == 2000
    total = sum(requests.get(server.api("/observations"), params={"sessionId": f"c{n}", "limit": 1000}).json()["total"]
                for n in range(8))
    assert total == 2000
    assert "database is locked" not in server.log()


@pytest.mark.parametrize("threads", ["--dev"])
def test_dev_server_flag(live_server, threads):
    server = live_server(args=[threads])
    assert requests.get(server.api("/livez")).status_code == 200
