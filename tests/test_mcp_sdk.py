"""The official MCP SDK as the client: its stdio client spawning src/mcp_stdio.py against a live
server, and its Streamable HTTP client against /mcp, in both protocol eras, with and without auth."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import requests
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agentmemory_server.adapters import mcp_http as mcp_protocol
from agentmemory_server.adapters import mcp_stdio
from agentmemory_server.kernel import registry
from agentmemory_server.kernel import runtime
from conftest import SRC, free_port

SECRET = "sdk-secret"
CACHE: dict[str, str] = {}  # the environment that puts a shim's listing cache in the test's own directory


@pytest.fixture(autouse=True)
def _listing_cache_in_tmp(tmp_path):
    """Every shim this module starts keeps the server's listings under the test's directory,
    never in the user's ~/.cache."""
    CACHE["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    yield
    CACHE.clear()


def registry_tools() -> list[str]:
    return [t.name for t in registry.REGISTRY.mcp_tools("all")]


def stdio_params(url: str, secret: str | None = None, **extra: str) -> StdioServerParameters:
    env = {"AGENTMEMORY_URL": url, "PYTHONUNBUFFERED": "1", **CACHE, **extra}
    if secret:
        env["AGENTMEMORY_SECRET"] = secret
    return StdioServerParameters(command=sys.executable, args=[str(SRC / "mcp_stdio.py")], env=env)


def text_of(result: Any) -> dict[str, Any]:
    return json.loads(result.content[0].text)


async def _stdio_session_checks(url: str) -> None:
    async with stdio_client(stdio_params(url, SECRET)) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.protocol_version in mcp_protocol.HANDSHAKE_VERSIONS
            assert init.server_info.name == "agentmemory" and init.server_info.version == runtime.VERSION
            tools = (await session.list_tools()).tools
            assert [t.name for t in tools] == registry_tools()
            assert all(t.input_schema == registry.REGISTRY.get(t.name).schema for t in tools)
            # Five tools, each result checked.
            r = await session.call_tool("agent_observe", {"sessionId": "sdk-1", "content": "ran the sdk test",
                                                           "project": "sdk"})
            assert not r.is_error and text_of(r)["duplicate"] is False
            r = await session.call_tool("memory_save", {"content": "The SDK stdio client works",
                                                         "concepts": "sdk,stdio"})
            memory = text_of(r)["memory"]
            assert memory["concepts"] == ["sdk", "stdio"]
            r = await session.call_tool("memory_recall", {"query": "sdk stdio client"})
            assert memory["id"] in [h["observation"]["id"] for h in text_of(r)["results"]]
            r = await session.call_tool("memory_observations", {"sessionId": "sdk-1"})
            assert [o["narrative"] for o in text_of(r)["observations"]] == ["ran the sdk test"]
            r = await session.call_tool("memory_sessions", {"limit": 5})
            assert [s["id"] for s in text_of(r)["sessions"]] == ["sdk-1"]
            r = await session.call_tool("memory_audit", {"limit": 2})
            assert {e["operation"] for e in text_of(r)["entries"]} == {"observe", "remember"}
            # Tool errors are results naming the field; an unknown tool is a protocol error.
            r = await session.call_tool("memory_recall", {"limit": 3})
            assert r.is_error and text_of(r)["details"]["field"] == "query"
            with pytest.raises(MCPError, match="Unknown tool: no_such_tool"):
                await session.call_tool("no_such_tool", {})
            # Resources and prompts are proxied too.
            listed = (await session.list_resources()).resources
            assert "agentmemory://status" in [str(r.uri) for r in listed]
            templates = (await session.list_resource_templates()).resource_templates
            assert "agentmemory://project/{name}/recent" in [t.uri_template for t in templates]
            status = json.loads((await session.read_resource("agentmemory://status")).contents[0].text)
            assert status["sessionCount"] == 1 and status["memoryCount"] == 1
            with pytest.raises(MCPError, match="unknown resource"):
                await session.read_resource("agentmemory://nope")
            prompt = await session.get_prompt("session_handoff", {"session_id": "sdk-1"})
            assert "ran the sdk test" in prompt.messages[0].content.text
            assert [p.name for p in (await session.list_prompts()).prompts][0] == "recall_context"


def test_sdk_stdio_client_against_a_live_server(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    anyio.run(_stdio_session_checks, server.url)


async def _down_then_up(server) -> None:
    async with stdio_client(stdio_params(server.url)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()  # the proxy starts without the server
            # The agent lists once, at its start: it gets the tools even though no server answers.
            tools = (await session.list_tools()).tools
            assert [t.name for t in tools] == registry_tools()
            assert all(t.input_schema == registry.REGISTRY.get(t.name).schema for t in tools)
            assert "agentmemory://status" in [str(r.uri) for r in (await session.list_resources()).resources]
            assert "session_handoff" in [p.name for p in (await session.list_prompts()).prompts]
            r = await session.call_tool("memory_sessions", {})
            text = r.content[0].text
            assert r.is_error and f"server at {server.url} is not reachable" in text and "AGENTMEMORY_URL" in text
            assert "agentmemory serve" in text  # the command the installed shim comes with
            with pytest.raises(MCPError, match="not reachable"):
                await session.read_resource("agentmemory://status")
            await anyio.to_thread.run_sync(server.start)
            r = await session.call_tool("memory_sessions", {})  # same process, server now up
            assert not r.is_error and text_of(r)["total"] == 0
            assert len((await session.list_tools()).tools) == len(registry_tools())
    # The lists this package gives without the server are the ones a server of its version gives
    # (compared as MCP clients see them), so a server with the same settings is announced as no change.
    for route in mcp_stdio.ROUTES:
        answer = requests.get(f"{server.url}/agentmemory{route}", timeout=30).json()
        assert mcp_stdio.as_listed(route, answer) == mcp_stdio.as_listed(route, mcp_stdio.local_listing(route))


def test_sdk_stdio_started_before_the_server_lists_tools_then_calls_go_through(live_server):
    server = live_server()
    server.stop()
    anyio.run(_down_then_up, server)


async def _tool_names(url: str, env: dict[str, str], first: list[str], between: Any = ()) -> list[list[str]]:
    """The tool names one shim lists: ``first`` (asserted), then again after each of ``between`` ran."""
    async with stdio_client(stdio_params(url, SECRET, **env)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = [[t.name for t in (await session.list_tools()).tools]]
            assert names[0] == first
            for step in between:
                step()
                names.append([t.name for t in (await session.list_tools()).tools])
            return names


def test_sdk_stdio_lists_what_the_server_last_listed_while_it_is_down(live_server):
    core = [t.name for t in registry.REGISTRY.mcp_tools("core")]
    assert 0 < len(core) < len(registry_tools())
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_TOOLS": "core"})
    # A server that answers is the one asked, whatever this process's environment says; its list is kept.
    anyio.run(_tool_names, server.url, {"AGENTMEMORY_TOOLS": "all"}, core)
    server.stop()
    cache = Path(CACHE["XDG_CACHE_HOME"]) / "agentmemory-python"

    def kept() -> Path:
        [path] = cache.iterdir()  # one file for this server, no temporary file left behind
        return path

    def secret_free() -> None:
        assert json.loads(kept().read_text())["server"] == server.url and SECRET not in kept().read_text()

    def garbage() -> None:
        kept().write_text('{"format": 1, "listi')

    def wrong_shape() -> None:
        kept().write_text(json.dumps({"format": 1, "server": server.url, "listings": {"/mcp/tools": {"tools": 7}}}))

    # Down: what that server listed last, whatever the shim's own environment says; a cache that
    # cannot be used gives the package's list trimmed by that environment, and nothing breaks.
    steps = [secret_free, garbage, wrong_shape, lambda: kept().unlink()]
    assert anyio.run(_tool_names, server.url, {}, core, steps) == [
        core, core, registry_tools(), registry_tools(), registry_tools()]
    assert not list(cache.iterdir())
    anyio.run(_tool_names, server.url, {"AGENTMEMORY_TOOLS": "core"}, core)


def test_listing_cache_keeps_no_secret_and_never_raises(tmp_path, monkeypatch, caplog):
    from agentmemory_server.adapters import listing_cache

    url = "http://me:pw-123@127.0.0.1:1/?password=pw-456"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    listing_cache.write(url, "/mcp/tools", {"tools": []})
    listing_cache.write(url, "/mcp/prompts", {"prompts": []})
    assert listing_cache.read(url, "/mcp/tools") == {"tools": []} and listing_cache.read(url, "/mcp/prompts")
    assert listing_cache.read("http://127.0.0.1:1", "/mcp/tools") is None  # another address, another file
    [kept] = (tmp_path / "cache" / "agentmemory-python").iterdir()
    assert "pw-" not in kept.read_text() and json.loads(kept.read_text())["server"] == "http://127.0.0.1:1/"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache directory cannot be made
    listing_cache.write(url, "/mcp/tools", {"tools": []})
    assert listing_cache.read(url, "/mcp/tools") is None and "cannot keep the server's listing" in caplog.text
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG rules say
    assert listing_cache.cache_dir() == Path.home() / ".cache" / "agentmemory-python"


async def _told_when_the_server_is_up(server, core: list[str]) -> None:
    """Two agents started before the server, one of each protocol era: each lists everything this
    package has, is told the tool list changed once the server (AGENTMEMORY_TOOLS=core) is up, and
    lists again to get the server's few. Resources and prompts are the same, so nothing is said of them."""
    heard: dict[str, list[str]] = {"legacy": [], "modern": []}
    listed = anyio.Event()
    ready = [0]

    async def note(message: Any) -> None:
        method = getattr(message, "method", None)
        if isinstance(method, str) and method.endswith("/list_changed"):
            heard["legacy"].append(method)

    async def legacy() -> list[str]:
        async with stdio_client(stdio_params(server.url)) as (read, write):
            async with ClientSession(read, write, message_handler=note) as session:
                init = await session.initialize()
                caps = init.capabilities
                assert caps.tools.list_changed and caps.resources.list_changed and caps.prompts.list_changed
                await session.list_resources()
                await session.list_resource_templates()
                await session.list_prompts()
                assert [t.name for t in (await session.list_tools()).tools] == registry_tools()
                ready[0] += 1
                await listed.wait()
                with anyio.fail_after(30):
                    while not heard["legacy"]:
                        await anyio.sleep(0.1)
                assert heard["legacy"] == ["notifications/tools/list_changed"]
                return [t.name for t in (await session.list_tools()).tools]

    async def modern() -> list[str]:
        async with Client(stdio_params(server.url)) as client:
            assert client.server_capabilities.tools.list_changed
            async with client.listen(tools_list_changed=True, resources_list_changed=True,
                                     prompts_list_changed=True) as changes:
                await client.list_resources()
                await client.list_prompts()
                assert [t.name for t in (await client.list_tools()).tools] == registry_tools()
                ready[0] += 1
                await listed.wait()
                with anyio.fail_after(30):
                    event = await changes.__anext__()
                heard["modern"].append(type(event).__name__)
                assert heard["modern"] == ["ToolsListChanged"]
                return [t.name for t in (await client.list_tools()).tools]

    results: dict[str, list[str]] = {}

    async def run(name: str, agent: Any) -> None:
        results[name] = await agent()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run, "legacy", legacy)
        tasks.start_soon(run, "modern", modern)
        with anyio.fail_after(60):
            while ready[0] < 2:
                await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(server.start)
        listed.set()
    assert results == {"legacy": core, "modern": core}


def test_sdk_stdio_tells_the_client_when_the_servers_lists_differ_from_the_ones_given_while_down(live_server):
    core = [t.name for t in registry.REGISTRY.mcp_tools("core")]
    server = live_server(env={"AGENTMEMORY_TOOLS": "core"})
    server.stop()
    anyio.run(_told_when_the_server_is_up, server, core)


async def _capabilities_in_both_eras(url: str) -> dict[str, dict[str, Any]]:
    async with stdio_client(stdio_params(url)) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.protocol_version in mcp_protocol.HANDSHAKE_VERSIONS
            legacy = init.capabilities.model_dump(by_alias=True, exclude_none=True)
    async with Client(stdio_params(url)) as client:
        assert client.protocol_version in mcp_protocol.MODERN_VERSIONS
        modern = client.server_capabilities.model_dump(by_alias=True, exclude_none=True)
    return {"legacy": legacy, "modern": modern}


def test_sdk_stdio_advertises_only_what_it_serves_in_both_eras():
    """On 2026-07-28 the shim said resources.subscribe true (the SDK derives it from
    subscriptions/listen being served), but it never publishes a resource's update: a client
    subscribing to agentmemory://status would wait forever. Both eras now say false, as the
    server's /mcp does, and keep listChanged, which the shim does announce. No server is needed:
    the shim answers its capabilities itself."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    said = anyio.run(_capabilities_in_both_eras, url)
    served = {"tools": {"listChanged": True}, "resources": {"subscribe": False, "listChanged": True},
              "prompts": {"listChanged": True}}
    assert said == {"legacy": served, "modern": served}
    assert mcp_protocol.CAPABILITIES["resources"]["subscribe"] is False  # the server's /mcp says the same


async def _wrong_secret(url: str) -> None:
    async with stdio_client(stdio_params(url, "wrong")) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            r = await session.call_tool("memory_sessions", {})
            assert r.is_error and "(401)" in r.content[0].text and "AGENTMEMORY_SECRET" in r.content[0].text


def test_sdk_stdio_wrong_secret(live_server):
    anyio.run(_wrong_secret, live_server(env={"AGENTMEMORY_SECRET": SECRET}).url)


class _Fake(BaseHTTPRequestHandler):
    """A loopback stand-in for a broken server: every request gets ``status`` and ``body``."""

    status, body = 500, b'{"ok": false, "error": "database exploded", "code": "internal_error", "status": 500}'

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


class _Junk(_Fake):
    status, body = 200, b'["not", "an", "agentmemory", "answer"]'


async def _broken(url: str, expected: str) -> None:
    async with stdio_client(stdio_params(url)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            r = await session.call_tool("memory_sessions", {})
            assert r.is_error and expected in r.content[0].text
            for listing in (session.list_tools, session.list_resources, session.list_prompts):
                with pytest.raises(MCPError, match=expected):
                    await listing()
            r = await session.call_tool("memory_sessions", {})  # still serving after all that
            assert r.is_error


@pytest.mark.parametrize("handler,expected", [(_Fake, "HTTP 500: database exploded"),
                                              (_Junk, "unexpected shape")])
def test_sdk_stdio_broken_server_gives_clear_errors(handler, expected):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        anyio.run(_broken, f"http://127.0.0.1:{httpd.server_address[1]}", expected)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_stdio_reads_its_environment_at_call_time(monkeypatch):
    monkeypatch.setenv("AGENTMEMORY_URL", "http://127.0.0.1:1/")
    assert mcp_stdio.base_url() == "http://127.0.0.1:1"
    monkeypatch.setenv("AGENTMEMORY_URL", "${AGENTMEMORY_URL}")  # unexpanded placeholder = unset
    assert mcp_stdio.base_url() == mcp_stdio.DEFAULT_URL
    port = free_port()
    monkeypatch.setenv("AGENTMEMORY_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(mcp_stdio.ProxyError, match=f"127.0.0.1:{port} is not reachable"):
        mcp_stdio.rest("GET", "/livez")
    assert mcp_stdio.VERSION == runtime.VERSION


def test_only_mcp_stdio_imports_the_sdk():
    package = SRC / "agentmemory_server"
    for path in package.rglob("*.py"):
        imports_sdk = any(line.startswith(("import mcp", "from mcp")) and not line.startswith(("import mcp_", "from mcp_"))
                          or line.startswith(("import mcp_types", "from mcp_types"))
                          for line in path.read_text().splitlines())
        assert imports_sdk == (path.relative_to(package).as_posix() == "adapters/mcp_stdio.py"), path


# -- the SDK's Streamable HTTP client against /mcp --------------------------------------------------------


async def _http_checks(url: str, secret: str | None, mode: str) -> str:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client:
            assert [t.name for t in (await client.list_tools()).tools] == registry_tools()
            r = await client.call_tool("memory_save", {"content": f"saved over streamable http in {mode} mode"})
            assert not r.is_error and text_of(r)["memory"]["title"].endswith(f"{mode} mode")
            r = await client.call_tool("memory_recall", {"query": "streamable http", "format": "compact"})
            assert any(h["title"].endswith(f"{mode} mode") for h in text_of(r)["results"])
            r = await client.call_tool("memory_audit", {"limit": "x"})
            assert r.is_error and text_of(r)["details"]["field"] == "limit"
            status = json.loads((await client.read_resource("agentmemory://status")).contents[0].text)
            assert status["memoryCount"] >= 1
            prompt = await client.get_prompt("recall_context", {"task_description": "streamable http"})
            assert "streamable http" in prompt.messages[0].content.text
            return client.protocol_version


def test_sdk_streamable_http_client_with_auth(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    assert anyio.run(_http_checks, server.url, SECRET, "auto") == "2026-07-28"
    assert anyio.run(_http_checks, server.url, SECRET, "legacy") == "2025-11-25"


def test_sdk_streamable_http_client_without_auth(live_server):
    server = live_server()
    assert anyio.run(_http_checks, server.url, None, "auto") == "2026-07-28"
    assert anyio.run(_http_checks, server.url, None, "legacy") == "2025-11-25"


async def _refused(url: str) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer wrong"}, timeout=30) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http), mode="legacy"):
            raise AssertionError("connected with a wrong token")


def test_sdk_streamable_http_client_wrong_token_is_refused(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    with pytest.raises(BaseException) as err:
        anyio.run(_refused, server.url)
    leaves = [err.value]
    while hasattr(leaves[-1], "exceptions"):
        leaves.append(leaves[-1].exceptions[0])
    assert isinstance(leaves[-1], MCPError) and leaves[-1].message.startswith("unauthorized: send 'Authorization")


def documented_mcp_configs() -> list[dict[str, Any]]:
    """Every `mcpServers` entry of a JSON block in README.md and docs/mcp.md."""
    from conftest import ROOT

    entries = []
    for path in (ROOT / "README.md", ROOT / "docs" / "mcp.md"):
        for block in path.read_text().split("```json\n")[1:]:
            entries.append(json.loads(block.split("```")[0])["mcpServers"]["agentmemory"])
    return entries


async def _run_config(entry: dict[str, Any], url: str, token_file: str) -> list[str]:
    from conftest import ROOT

    def fix(text: str) -> str:
        if text == "agentmemory-mcp":  # the installed command, from this virtualenv
            return str(Path(sys.executable).with_name("agentmemory-mcp"))
        return text.replace("/opt/agentmemory-python/.venv/bin/python", sys.executable).replace(
            "/opt/agentmemory-python", str(ROOT))

    env = {k: (url if k == "AGENTMEMORY_URL" else SECRET) for k in entry["env"]} | CACHE
    if "AGENTMEMORY_SECRET" not in env:  # the wrapper reads the server's token file itself
        env["AGENTMEMORY_SECRET_FILE"] = token_file
    params = StdioServerParameters(command=fix(entry["command"]), args=[fix(a) for a in entry.get("args", [])],
                                   env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return [t.name for t in (await session.list_tools()).tools]


def test_documented_client_configs_work(live_server, tmp_path):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    token_file = tmp_path / "secret"
    token_file.write_text(SECRET + "\n")
    configs = documented_mcp_configs()
    stdio = [c for c in configs if "command" in c]
    http = [c for c in configs if "url" in c]
    assert len(stdio) == 3 and len(http) == 1
    assert http[0]["url"].endswith("/mcp") and http[0]["headers"]["Authorization"].startswith("Bearer ")
    assert [c["command"] for c in stdio].count("agentmemory-mcp") == 2
    assert any(c.get("args", [""])[-1].endswith("src/mcp_stdio.py") for c in stdio)
    for entry in stdio:
        assert "AGENTMEMORY_URL" in entry["env"] and set(entry["env"]) <= {"AGENTMEMORY_URL", "AGENTMEMORY_SECRET"}
        assert anyio.run(_run_config, entry, server.url, str(token_file)) == registry_tools()
