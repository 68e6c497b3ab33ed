"""An unexpected error (a bug: 500 ``internal_error``) names a short random ``errorId`` in its
answer (``details.errorId``, and ``errorId=<id>`` in the message clients print) and in the server
log line that carries its traceback, on every transport: REST, WebSocket, MCP over HTTP and the
MCP stdio proxy. On a busy server an operator finds the traceback of the request a user reports
by that id alone.

The failure is real: a damaged lesson record (its confidence a string) fails lesson
ranking (a ValueError no handler expects)."""

from __future__ import annotations

import json
import re
import threading
from http.server import ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from agentmemory_server.adapters.web import _ws_request, create_app
from agentmemory_server.wiring import build_runtime
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.retrieval import search
from test_mcp_sdk import _Fake, _listing_cache_in_tmp, stdio_params  # noqa: F401 - the fixture keeps the shim's cache in tmp

ERROR_ID = re.compile(r"^[0-9a-f]{12}$")
RECALL = {"query": "cache"}


def damage_a_lesson(rt) -> None:
    lesson = {"id": "lsn_damaged", "content": "cache warmup", "confidence": "high", "createdAt": "2026-01-01"}
    with rt.db.transaction("test") as tx:
        tx.records.set("mem:lessons", lesson["id"], lesson, now="x")
        search.index_record(tx, "lesson", lesson)


def assert_names_its_id(body: dict, log: str) -> str:
    """``body`` is an internal_error envelope naming an id, and ``log`` has that id on the line
    that starts the traceback of the failure. Returns the id."""
    assert (body["code"], body["status"]) == ("internal_error", 500), body
    error_id = body["details"]["errorId"]
    assert ERROR_ID.match(error_id), body
    assert f"errorId={error_id}" in body["error"], body
    lines = log.splitlines()
    named = [i for i, line in enumerate(lines) if f"errorId={error_id}" in line]
    assert len(named) == 1, log
    after = "\n".join(lines[named[0] + 1:named[0] + 40])
    assert after.startswith("Traceback") and "could not convert string to float" in after, log
    return error_id


def test_a_rest_500_names_an_error_id_logged_with_its_traceback(rt, client, caplog):
    damage_a_lesson(rt)
    first = client.post("/agentmemory/lessons/recall", json=RECALL)
    assert first.status_code == 500
    first_id = assert_names_its_id(first.json, caplog.text)
    assert "unhandled error on POST /agentmemory/lessons/recall errorId=" in caplog.text
    second = client.post("/agentmemory/lessons/recall", json=RECALL)
    assert assert_names_its_id(second.json, caplog.text) != first_id  # one id per failure


def test_an_mcp_http_internal_error_carries_the_error_id_in_its_data(rt, caplog):
    damage_a_lesson(rt)
    client = create_app(runtime=rt).test_client()
    answer = client.post("/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                       "params": {"name": "memory_lesson_recall", "arguments": RECALL}},
                         headers={"Accept": "application/json", "MCP-Protocol-Version": "2025-11-25"})
    error = answer.json["error"]
    assert error["code"] == -32603, answer.json
    error_id = assert_names_its_id(error["data"], caplog.text)
    assert f"errorId={error_id}" in error["message"]
    assert f"MCP method tools/call failed errorId={error_id}" in caplog.text


def test_a_websocket_internal_error_names_an_error_id(rt, caplog):
    damage_a_lesson(rt)
    reply = _ws_request(rt, json.dumps({"id": "q1", "tool": "memory_lesson_recall", "args": RECALL}))
    assert reply["id"] == "q1"
    error_id = assert_names_its_id(reply, caplog.text)
    assert f"unhandled error answering a WebSocket call errorId={error_id}" in caplog.text


async def _stdio_tool_call(url: str) -> str:
    async with stdio_client(stdio_params(url)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("memory_lesson_recall", RECALL)
            assert result.is_error
            return result.content[0].text


def test_the_stdio_proxy_passes_the_servers_error_id_on(live_server, tmp_path):
    """A real server process over a store holding the damaged lesson: the agent's tool call
    through the stdio proxy reads the id the server logged with the traceback."""
    data_dir = tmp_path / "store"
    rt = build_runtime(Settings.from_env({}, data_dir=str(data_dir), background_jobs=False,
                                         embedding_provider="none", auth="off"))
    try:
        damage_a_lesson(rt)
    finally:
        rt.close()
    server = live_server(env={"AGENTMEMORY_DATA_DIR": str(data_dir), "AGENTMEMORY_AUTH": "off"})
    text = anyio.run(_stdio_tool_call, server.url)
    error_id = re.search(r"errorId=([0-9a-f]{12})", text)
    assert error_id and "HTTP 500" in text, text
    assert_names_its_id({"code": "internal_error", "status": 500, "details": {"errorId": error_id[1]},
                         "error": text}, server.log())


class _FailingServer(_Fake):
    """A loopback server whose every answer is a 500 naming an error id, as ours answers a bug."""

    body = json.dumps({"ok": False, "error": "internal error; see the server log for errorId=0123456789ab",
                       "code": "internal_error", "status": 500, "details": {"errorId": "0123456789ab"}}).encode()


async def _listing_error(url: str) -> Any:
    async with stdio_client(stdio_params(url)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            with pytest.raises(MCPError) as failed:
                await session.list_prompts()
            return failed.value.error


def test_the_stdio_proxys_json_rpc_errors_carry_the_servers_envelope_as_data():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FailingServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        error = anyio.run(_listing_error, f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "errorId=0123456789ab" in error.message
    assert error.data["details"] == {"errorId": "0123456789ab"} and error.data["code"] == "internal_error"
