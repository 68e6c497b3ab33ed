"""Working memory end to end: REST routes and MCP tools of a real server process, on SQLite and
on a real redis-server, and the fallback when Redis stops under a running server."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from conftest import post

WORKING_TOOLS = {"memory_working_set", "memory_working_get", "memory_working_delete",
                 "memory_working_task", "memory_working_scratchpad", "memory_working_checkpoint",
                 "memory_working_stats"}


def mcp(server, name: str, arguments: dict) -> tuple[dict, bool]:
    r = post(server.api("/mcp/call"), {"name": name, "arguments": arguments})
    assert r.status_code == 200
    body = r.json()
    return json.loads(body["content"][0]["text"]), bool(body.get("isError"))


def _rest_flow(server, backend: str) -> None:
    s = {"sessionId": "live", "project": "demo"}
    r = post(server.api("/working/set"), {**s, "key": "plan", "value": {"steps": [1, 2]}, "ttlSeconds": 60})
    assert r.status_code == 200 and r.json()["backend"] == backend and r.json()["created"] is True
    r = requests.get(server.api("/working/get"), params={**s, "key": "plan"})
    assert r.json()["value"] == {"steps": [1, 2]} and r.json()["ttlRemainingSeconds"] <= 60
    r = post(server.api("/working/set"), {**s, "key": "_task", "value": 1})
    assert r.status_code == 400 and r.json()["code"] == "reserved_key"
    for key in ("p2", "notes"):
        assert post(server.api("/working/set"), {**s, "key": key, "value": key}).status_code == 200
    r = post(server.api("/working/set"), {**s, "key": "one-too-many", "value": 1})
    assert r.status_code == 409 and r.json()["code"] == "capacity_exceeded"
    keys = requests.get(server.api("/working/get"), params={**s, "operation": "list", "pattern": "p*"})
    assert keys.json()["keys"] == ["p2", "plan"]
    r = post(server.api("/working/task"), {**s, "operation": "set", "taskId": "T1", "totalSteps": 2})
    assert r.json()["version"] == 1
    post(server.api("/working/task"), {**s, "operation": "update_progress", "advance": 1})
    task = requests.get(server.api("/working/task"), params=s).json()
    assert task["task"]["progressPercent"] == 50 and task["version"] == 2
    assert post(server.api("/working/scratchpad"), {**s, "operation": "append", "content": "hi"}).json()["count"] == 1
    pad = requests.get(server.api("/working/scratchpad"), params={**s, "withTimestamps": "true"}).json()
    assert pad["entries"][0]["content"] == "hi" and pad["entries"][0]["timestamp"]
    r = post(server.api("/working/checkpoint"), {**s, "operation": "create", "description": "before clear"})
    assert r.status_code == 201
    cid = r.json()["checkpointId"]
    assert requests.get(server.api("/working/checkpoints"), params=s).json()["checkpoints"][0]["checkpointId"] == cid
    assert post(server.api("/working/delete"), {**s, "operation": "clear"}).json()["cleared"] == 3
    r = post(server.api("/working/checkpoint"), {**s, "operation": "restore", "checkpointId": str(uuid.uuid4())})
    assert r.status_code == 404 and r.json()["code"] == "checkpoint_not_found"
    r = post(server.api("/working/checkpoint"), {**s, "operation": "restore", "checkpointId": cid})
    assert r.status_code == 200 and r.json()["restoredKeys"] == 3
    r = post(server.api("/working/delete"), {**s, "operation": "pattern", "pattern": "*"})
    assert r.status_code == 400 and r.json()["code"] == "confirmation_required"
    stats = requests.get(server.api("/working/stats"), params=s).json()
    assert stats["userKeys"] == 3 and stats["checkpointCount"] == 1 and stats["hasTaskState"]
    assert stats["backend"] == backend and stats["usingFallback"] is False


def _mcp_flow(server, backend: str) -> None:
    tools = {t["name"]: t for t in requests.get(server.api("/mcp/tools")).json()["tools"]}
    assert WORKING_TOOLS <= set(tools)
    assert tools["memory_working_checkpoint"]["inputSchema"]["properties"]["operation"]["enum"] == [
        "create", "restore", "list", "delete"]
    s = {"sessionId": "mcp-session"}
    body, err = mcp(server, "memory_working_set", {**s, "key": "k", "value": [1, {"x": "ü"}]})
    assert not err and body["backend"] == backend
    body, err = mcp(server, "memory_working_get", {**s, "key": "k"})
    assert not err and body["value"] == [1, {"x": "ü"}]
    body, err = mcp(server, "memory_working_set", {**s, "key": "_reserved", "value": 1})
    assert err and body["code"] == "reserved_key" and body["status"] == 400
    body, err = mcp(server, "memory_working_scratchpad", {**s, "operation": "append", "content": "note"})
    assert not err and body["count"] == 1
    body, err = mcp(server, "memory_working_checkpoint", {**s, "operation": "restore", "checkpointId": "nope"})
    assert err and body["status"] == 404
    body, err = mcp(server, "memory_working_task", {**s, "operation": "set", "taskId": "t", "progressPercent": 120})
    assert not err and body["task"]["progressPercent"] == 100
    body, err = mcp(server, "memory_working_delete", {**s, "key": "k"})
    assert not err and body["deleted"] is True
    body, err = mcp(server, "memory_working_stats", s)
    assert not err and body["userKeys"] == 0 and body["scratchpadEntries"] == 1 and body["hasTaskState"]


@pytest.mark.parametrize("working_backend", ["sqlite", "redis"])
def test_rest_and_mcp_end_to_end(live_server, request, working_backend):
    env = {"WORKING_MEMORY_BACKEND": working_backend, "WORKING_MEMORY_MAX_KEYS_PER_SESSION": "3"}
    if working_backend == "redis":
        env.update(REDIS_URL=request.getfixturevalue("redis_server").url,
                   WORKING_MEMORY_REDIS_PREFIX=f"live-{uuid.uuid4().hex}")
    server = live_server(env=env)
    _rest_flow(server, working_backend)
    _mcp_flow(server, working_backend)
    health = requests.get(server.api("/health")).json()
    assert health["status"] == "healthy"
    assert health["working_memory"] == {"status": "ok", "backend": working_backend, "configuredBackend": working_backend,
                                        "usingFallback": False,
                                        **({"redisUrl": env["REDIS_URL"], "lastError": None, "lastErrorAt": None,
                                            "recoveredAt": None} if working_backend == "redis" else {})}


def test_live_server_falls_back_when_redis_stops(live_server, own_redis):
    server = live_server(env={"WORKING_MEMORY_BACKEND": "redis", "REDIS_URL": own_redis.url})
    s = {"sessionId": "fb"}
    assert post(server.api("/working/set"), {**s, "key": "a", "value": 1}).json()["backend"] == "redis"
    own_redis.stop()
    r = post(server.api("/working/set"), {**s, "key": "b", "value": 2})
    assert r.status_code == 200 and r.json()["backend"] == "sqlite" and r.json()["usingFallback"] is True
    stats = requests.get(server.api("/working/stats"), params=s).json()
    assert stats["usingFallback"] is True and stats["userKeys"] == 1
    health = requests.get(server.api("/health"))
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    section = health.json()["working_memory"]
    assert section["usingFallback"] is True and section["backend"] == "sqlite" and section["fallbackReason"]
    assert "SQLite fallback" in server.log()
