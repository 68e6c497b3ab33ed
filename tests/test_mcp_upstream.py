"""Real upstream clients against a real server: the MCP shim of ``@agentmemory/mcp@0.9.29`` and
the MCP Inspector CLI 0.15.0 (Node). The packages come from tests/node-packages.txt, installed by
tests/run.sh into a cache outside the repository; without node/npm these tests fail and say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable

import pytest
import requests

from agentmemory_server.kernel import registry
from conftest import SRC, LiveServer, post, wait_for
from mcp_support import (StdioPeer, call_order, check_result, live_poster, node_modules, sample_args,
                         seed)

SECRET = "upstream-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}
# The shim's seven "implemented" tools call plain REST routes instead of /mcp/call (U§2.1); when a
# call fails it silently falls back to a local in-memory store, so each needs its route here.
SHIM_REST_TOOLS = {
    "memory_save": ("POST", "/remember"), "memory_recall": ("POST", "/search"),
    "memory_smart_search": ("POST", "/smart-search"), "memory_sessions": ("GET", "/sessions"),
    "memory_export": ("GET", "/export"), "memory_audit": ("GET", "/audit"),
    "memory_governance_delete": ("DELETE", "/governance/memories"),
}


@pytest.fixture(scope="module")
def node_dir():
    return node_modules()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def upstream(tmp_path_factory, node_dir, request):
    """A live server with auth (on SQLite, then on PostgreSQL), seeded, and the shim connected
    to it over stdio."""
    tmp = tmp_path_factory.mktemp("shim")
    server_env = {"AGENTMEMORY_SECRET": SECRET}
    cluster = request.getfixturevalue("pg_cluster") if request.param == "postgresql" else None
    if cluster is not None:
        server_env["AGENTMEMORY_DATABASE_URL"] = cluster.create_database()
    server = LiveServer(tmp, server_env, [])
    try:
        seeds = seed(live_poster(server, AUTH))
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "AGENTMEMORY_URL": server.url,
               "AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_DEBUG": "1"}
        shim = StdioPeer(["node", str(node_dir / "@agentmemory" / "mcp" / "bin.mjs")], env)
        try:
            init = shim.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                               "clientInfo": {"name": "pytest", "version": "1"}})
            assert init["result"]["protocolVersion"] == "2025-06-18"
            shim.notify("notifications/initialized")
            yield server, shim, seeds
        finally:
            shim.close()
    finally:
        server.stop()
        if cluster is not None:
            cluster.drop_database(server_env["AGENTMEMORY_DATABASE_URL"])


def stderr_barrier(shim: StdioPeer) -> None:
    """Wait until everything the shim wrote to stderr so far has been collected.

    stdout and stderr are separate pipes read by separate threads, so an answer can arrive
    before the warning written just ahead of it. With AGENTMEMORY_DEBUG=1 the shim logs every
    tools/list; once that line is collected, every earlier stderr line is too (one pipe keeps
    its order).
    """
    mark = len(shim.stderr)
    shim.request("tools/list")
    wait_for(lambda: any("tools/list: returning" in line for line in shim.stderr[mark:]), interval=0.01,
             message="the shim's tools/list debug line never arrived")


def shim_call(shim: StdioPeer, name: str, arguments: dict) -> tuple[dict, str]:
    """(result, the shim's stderr written during the call)."""
    before = len(shim.stderr)
    answer = shim.request("tools/call", {"name": name, "arguments": arguments})
    assert "result" in answer, answer  # never a JSON-RPC (transport) error
    stderr_barrier(shim)
    return answer["result"], "".join(shim.stderr[before:])


def test_shim_proxies_the_whole_registry(upstream):
    _server, shim, _seeds = upstream
    tools = shim.request("tools/list")["result"]["tools"]
    expected = registry.REGISTRY.mcp_tools("all")
    assert [t["name"] for t in tools] == [t.name for t in expected]
    assert [t["inputSchema"] for t in tools] == [t.schema for t in expected]
    stderr_barrier(shim)
    assert "proxying to agentmemory server at " + upstream[0].url in "".join(shim.stderr)


def _core_case(name: str, server, seeds: dict) -> tuple[dict, Callable[[dict], Any]]:
    """Arguments for one of the shim's REST tools and a check that our server answered."""
    if name == "memory_save":
        return {"content": "the shim saved this through /remember", "concepts": "shim,rest"}, \
            lambda body: requests.get(server.api(f"/memories/{body['memory']['id']}"), headers=AUTH).ok
    if name == "memory_recall":
        return {"query": "pytest fixtures conftest"}, \
            lambda body: body["mode"] == "bm25" and seeds["memoryId"] in json.dumps(body["results"])
    if name == "memory_sessions":
        return {"limit": 5}, lambda body: body["limit"] == 5 and "mcp-seed" in [s["id"] for s in body["sessions"]]
    if name == "memory_export":
        return {}, lambda body: body["version"] == "agentmemory-python/1" and "mcp-seed" in body["observations"]
    if name == "memory_audit":
        return {"limit": 3}, lambda body: body["limit"] == 3 and body["entries"][0]["operation"]
    if name == "memory_governance_delete":
        doomed = post(server.api("/remember"), {"content": "delete me via the shim"}, headers=AUTH).json()
        mid = doomed["memory"]["id"]
        return {"memoryIds": f"{mid}, mem_missing", "reason": "shim test"}, \
            lambda body: body["deletedIds"] == [mid] and requests.get(
                server.api(f"/memories/{mid}"), headers=AUTH).status_code == 404
    return {"query": "pytest fixtures"}, lambda body: isinstance(body, dict)


@pytest.mark.parametrize("name", list(SHIM_REST_TOOLS))
def test_shim_rest_tools_reach_our_routes(upstream, name):
    server, shim, seeds = upstream
    method, path = SHIM_REST_TOOLS[name]
    arguments, answered_by_server = _core_case(name, server, seeds)
    result, stderr = shim_call(shim, name, arguments)
    assert registry.REGISTRY.for_route(method, path) is not None, f"{method} {path} is not served"
    assert "proxy call failed" not in stderr, stderr  # no silent fallback to the shim's local store
    body = json.loads(result["content"][0]["text"])
    assert answered_by_server(body), body


def test_shim_calls_every_tool_with_schema_generated_arguments(upstream):
    _server, shim, seeds = upstream
    problems: list[str] = []
    tools = shim.request("tools/list")["result"]["tools"]
    for tool in call_order(tools):
        name = tool["name"]
        if name in SHIM_REST_TOOLS and registry.REGISTRY.for_route(*SHIM_REST_TOOLS[name]) is None:
            continue  # reported by test_shim_rest_tools_reach_our_routes
        result, stderr = shim_call(shim, name, sample_args(tool["inputSchema"], seeds))
        text = result["content"][0]["text"]
        if "proxy call failed" in stderr or text.startswith("Error:"):
            problems.append(f"{name}: {text[:200]} {stderr[:300]}")
            continue
        check_result(name, text, problems)
    assert not problems, "\n".join(problems)


# -- MCP Inspector CLI against src/mcp_stdio.py ------------------------------------------------------------


def inspector(node_dir, server, *args: str) -> dict:
    cli = node_dir / "@modelcontextprotocol" / "inspector" / "cli" / "build" / "cli.js"
    argv = ["node", str(cli), "--cli", "-e", f"AGENTMEMORY_URL={server.url}", "-e", f"AGENTMEMORY_SECRET={SECRET}",
            "-e", f"XDG_CACHE_HOME={server.data_dir.parent / 'cache'}",  # the listing cache: not the user's
            sys.executable, str(SRC / "mcp_stdio.py"), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_inspector_cli_lists_and_calls_tools(upstream, node_dir):
    server, _shim, _seeds = upstream
    listed = inspector(node_dir, server, "--method", "tools/list")
    assert [t["name"] for t in listed["tools"]] == [t.name for t in registry.REGISTRY.mcp_tools("all")]
    saved = inspector(node_dir, server, "--method", "tools/call", "--tool-name", "memory_save",
                      "--tool-arg", "content=the inspector saved this", "--tool-arg", "concepts=inspector,cli",
                      "--tool-arg", 'files=["a.py", "b.py"]')
    assert saved["isError"] is False
    memory = json.loads(saved["content"][0]["text"])["memory"]
    assert memory["concepts"] == ["inspector", "cli"] and memory["files"] == ["a.py", "b.py"]
    failed = inspector(node_dir, server, "--method", "tools/call", "--tool-name", "memory_observations",
                       "--tool-arg", "limit=5")
    assert failed["isError"] is True and json.loads(failed["content"][0]["text"])["details"]["field"] == "sessionId"
