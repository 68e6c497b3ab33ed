"""MCP stdio server (official ``mcp`` SDK, 2.x low-level Server) proxying to a running agentmemory.

Point any MCP client at ``python src/mcp_stdio.py``. Every request is forwarded to the REST
server's MCP routes, so the tool list, schemas and behaviour are exactly the server's registry:

    tools/list      -> GET  {AGENTMEMORY_URL}/agentmemory/mcp/tools
    tools/call      -> POST {AGENTMEMORY_URL}/agentmemory/mcp/call        {name, arguments}
    resources/list  -> GET  .../mcp/resources   (templates from the same answer)
    resources/read  -> POST .../mcp/resources/read   {uri}
    prompts/list    -> GET  .../mcp/prompts
    prompts/get     -> POST .../mcp/prompts/get      {name, arguments}

``AGENTMEMORY_URL`` (default http://127.0.0.1:3111), ``AGENTMEMORY_SECRET`` and
``AGENTMEMORY_MCP_TIMEOUT`` (seconds, default 120) are read from the environment on every call,
so a client can start this process before the server is up. Agents list tools once, when they
start: while no server answers, the lists come from this package's own registry (the tools a
server of this version serves, trimmed by AGENTMEMORY_TOOLS in this process's environment), so an
agent started before the server still has its tools, and its calls go through once the server is
up. A server that answers is always asked for its own lists. A server that is down or failing
turns a tool call into an ``isError`` result that says what to do; a server that answers a
listing with an error gets a JSON-RPC error. This process never exits because the server
misbehaves.

This is the only module that imports the ``mcp`` SDK. Of ours it imports the settings and the
token reader, and the registry only to list while no server answers; everything else goes over
HTTP.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import mcp_types as types
import requests
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from agentmemory_server import __version__
from agentmemory_server.kernel import auth
from agentmemory_server.kernel.settings import Settings

DEFAULT_URL = "http://127.0.0.1:3111"
DEFAULT_TIMEOUT = 120.0  # consolidation and reflection can be slow; upstream's 15 s was not enough
VERSION = __version__
log = logging.getLogger("agentmemory.mcp_stdio")


class ProxyError(Exception):
    """The server could not be reached or answered an error; the message says what to do."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None, *, unreachable: bool = False):
        super().__init__(message)
        self.status, self.code = status, code
        self.unreachable = unreachable  # no server answered at all (nothing listens, or no route to it)


def _env(name: str) -> str | None:
    # MCP client configs often pass "${VAR}" through unexpanded; treat that as unset.
    value = (os.environ.get(name) or "").strip()
    return None if not value or (value.startswith("${") and value.endswith("}")) else value


def _secret_file_token() -> str | None:
    """The token the local server generated (``~/.agentmemory/secret`` unless configured), read
    at every call so a server started after this wrapper still works."""
    try:
        return auth.read_secret_file(Settings.from_env(os.environ).secret_path)
    except (OSError, ValueError):
        return None


def _is_local(url: str) -> bool:
    """Whether ``url`` names this machine: only then is the local token file sent (as upstream's
    clients do), so pointing AGENTMEMORY_URL at another server never hands it this machine's token."""
    return auth.is_loopback(urlsplit(url).hostname)


def token_for(url: str) -> str | None:
    """AGENTMEMORY_SECRET, else the local token file when ``url`` is on this machine."""
    return _env("AGENTMEMORY_SECRET") or (_secret_file_token() if _is_local(url) else None)


def base_url() -> str:
    return (_env("AGENTMEMORY_URL") or DEFAULT_URL).rstrip("/")


def _timeout() -> float:
    try:
        return max(1.0, float(_env("AGENTMEMORY_MCP_TIMEOUT") or DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


def rest(method: str, path: str, body: Any = None) -> Any:
    """One blocking call to ``{AGENTMEMORY_URL}/agentmemory{path}``; returns the JSON answer.

    :raise ProxyError: network failure, timeout or an HTTP error status.
    """
    url = f"{base_url()}/agentmemory{path}"
    headers = {"Accept": "application/json"}
    secret = token_for(url)
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    try:
        response = requests.request(method, url, json=body, headers=headers, timeout=_timeout())
    except requests.Timeout:
        raise ProxyError(
            f"agentmemory server at {base_url()} did not answer {method} {path} within "
            f"{_timeout():g}s (raise AGENTMEMORY_MCP_TIMEOUT if the call is slow)"
        ) from None
    except requests.RequestException as exc:
        raise ProxyError(
            f"agentmemory server at {base_url()} is not reachable ({type(exc).__name__}); "
            "start it with 'agentmemory serve' (calls go through once it is up, without restarting "
            "the agent) or set AGENTMEMORY_URL",
            unreachable=True,
        ) from None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code >= 400:
        raise _http_error(method, path, response, payload)
    if payload is None:
        raise ProxyError(
            f"{method} {path} answered {response.status_code} without JSON; is {base_url()} an agentmemory server?",
            status=response.status_code,
        )
    return payload


def _http_error(method: str, path: str, response: requests.Response, payload: Any) -> ProxyError:
    status = response.status_code
    detail = payload.get("error") if isinstance(payload, dict) else None
    code = payload.get("code") if isinstance(payload, dict) else None
    if status == 401:
        hint = (
            "set AGENTMEMORY_SECRET to the server's token (by default it is in ~/.agentmemory/secret)"
            if _is_local(base_url())
            else "set AGENTMEMORY_SECRET to that server's token (the local token file is only sent to this machine)"
        )
        return ProxyError(f"agentmemory server at {base_url()} refused the request (401): {hint}", 401, code)
    text = detail if isinstance(detail, str) else response.text[:300]
    return ProxyError(f"{method} {path} failed with HTTP {status}: {text}", status, code)


async def call_server(
    method: str, path: str, body: Any = None, *, shape: Any = None, pick: Callable[[Any], Any] = lambda data: data
) -> Any:
    """``rest`` off the event loop. With ``shape`` (an mcp_types model) the answer, reduced by
    ``pick``, is validated into it: a server answering something else is a ProxyError."""
    data = await anyio.to_thread.run_sync(rest, method, path, body)
    if shape is None:
        return data
    try:
        return shape.model_validate(pick(data))
    except (ValueError, TypeError, LookupError, AttributeError) as exc:  # pydantic's ValidationError is a ValueError
        raise ProxyError(
            f"{method} {path} answered an unexpected shape for {shape.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def _rpc_error(exc: ProxyError) -> MCPError:
    # Unknown names and URIs are invalid params, as the SDK's own servers answer them.
    code = types.INVALID_PARAMS if exc.status in (400, 404) else types.INTERNAL_ERROR
    return MCPError(code, str(exc))


# -- handlers -------------------------------------------------------------------------------------


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return await _listing("/mcp/tools", "tools", types.ListToolsResult)


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    body = {"name": params.name, "arguments": params.arguments or {}}
    try:
        return await call_server("POST", "/mcp/call", body, shape=types.CallToolResult)
    except ProxyError as exc:
        if exc.code == "unknown_tool":
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}") from None
        return types.CallToolResult(content=[types.TextContent(text=f"Error: {exc}")], is_error=True)


async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
    # The server lists templates among its resources (as upstream does); MCP lists them apart.
    return await _listing(
        "/mcp/resources",
        "resources",
        types.ListResourcesResult,
        lambda data: {"resources": [r for r in data["resources"] if "{" not in r.get("uri", "")]},
    )


async def list_resource_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
    return await _listing(
        "/mcp/resources",
        "resource templates",
        types.ListResourceTemplatesResult,
        lambda data: {"resourceTemplates": data["resourceTemplates"]},
    )


async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    try:
        return await call_server(
            "POST", "/mcp/resources/read", {"uri": str(params.uri)}, shape=types.ReadResourceResult
        )
    except ProxyError as exc:
        raise _rpc_error(exc) from None


async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
    return await _listing("/mcp/prompts", "prompts", types.ListPromptsResult)


async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    body = {"name": params.name, "arguments": params.arguments or {}}
    try:
        return await call_server("POST", "/mcp/prompts/get", body, shape=types.GetPromptResult)
    except ProxyError as exc:
        raise _rpc_error(exc) from None


async def _listing(path: str, what: str, shape: Any, pick: Callable[[Any], Any] = lambda data: data) -> Any:
    """The server's answer at ``path``; while no server answers, this package's own (an agent lists
    once, at its start, and would otherwise have no tools for its whole session)."""
    try:
        return await call_server("GET", path, shape=shape, pick=pick)
    except ProxyError as exc:
        if not exc.unreachable:  # a server answered: its error is the truth, not our guess at its list
            raise MCPError(types.INTERNAL_ERROR, f"cannot list {what}: {exc}") from None
        log.warning("%s; listing %s from this package until it answers", exc, what)
    data = await anyio.to_thread.run_sync(local_listing, path)  # the first call imports every feature
    return shape.model_validate(pick(data))


def local_listing(path: str) -> Any:
    """What a server of this package's version answers at ``path`` (one of the listing routes).

    :raise MCPError: AGENTMEMORY_TOOLS in this process's environment is not a valid value.
    """
    from agentmemory_server import wiring  # noqa: F401 - registers every tool, in the server's order
    from agentmemory_server.adapters import mcp_http
    from agentmemory_server.operations import resources

    if path == "/mcp/resources":
        return resources.resource_listing()
    if path == "/mcp/prompts":
        return resources.prompt_listing()
    try:  # only this setting: an unrelated bad value in the agent's environment must not hide the tools
        which = Settings.from_env({"AGENTMEMORY_TOOLS": os.environ.get("AGENTMEMORY_TOOLS", "")}).tools
    except ValueError as exc:
        raise MCPError(types.INTERNAL_ERROR, f"cannot list tools: {exc}") from None
    return {"tools": mcp_http.tool_list_for(which)}


def build_server() -> Server:
    return Server(
        "agentmemory",
        version=VERSION,
        title="agentmemory-python",
        instructions=(
            "Persistent memory for coding agents, proxied to the agentmemory server at "
            "AGENTMEMORY_URL. Search earlier work before starting; save durable facts."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
    )


async def serve() -> None:
    server = build_server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main() -> None:
    # stdout carries the protocol; logs go to stderr only.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    anyio.run(serve)


if __name__ == "__main__":
    main()
