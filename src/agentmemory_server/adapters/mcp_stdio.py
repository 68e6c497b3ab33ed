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
start. A server that answers is always asked for its own lists, and each answer is kept on disk
(``listing_cache``). While no server answers, the lists are what that server listed last, else
(it never answered this user) this package's own (the tools a server of this version serves,
trimmed by AGENTMEMORY_TOOLS in this process's environment), so an agent started before the
server still has its tools, and its calls go through once the server is up. Once the server
answers, each list it gives differently from the one given without it is announced with
``notifications/{tools,resources,prompts}/list_changed`` (``listChanged`` is declared), and the
client lists again. A server that is down or failing
turns a tool call into an ``isError`` result that says what to do; a server that answers a
listing with an error gets a JSON-RPC error. This process never exits because the server
misbehaves.

This is the only module that imports the ``mcp`` SDK. Of ours it imports the settings, the
token reader and the listing cache, and the registry only to list while no server answers and
none listed before; everything else goes over HTTP.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import mcp_types as types
import requests
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError

from agentmemory_server import __version__
from agentmemory_server.adapters import listing_cache
from agentmemory_server.kernel import auth
from agentmemory_server.kernel.settings import Settings

DEFAULT_URL = "http://127.0.0.1:3111"
DEFAULT_TIMEOUT = 120.0  # consolidation and reflection can be slow; upstream's 15 s was not enough
VERSION = __version__
log = logging.getLogger("agentmemory.mcp_stdio")


class ProxyError(Exception):
    """The server could not be reached or answered an error; the message says what to do."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        *,
        unreachable: bool = False,
        envelope: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.code = status, code
        self.unreachable = unreachable  # no server answered at all (nothing listens, or no route to it)
        # The server's error envelope, when it answered one: a JSON-RPC error's ``data``, so the
        # client reads its ``code`` and ``details`` (a 500's ``errorId``) as over the server's /mcp.
        self.envelope = envelope


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


def rest(method: str, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
    """One blocking call to ``{AGENTMEMORY_URL}/agentmemory{path}``; returns the JSON answer.
    ``timeout`` (seconds) defaults to AGENTMEMORY_MCP_TIMEOUT.

    :raise ProxyError: network failure, timeout or an HTTP error status.
    """
    url = f"{base_url()}/agentmemory{path}"
    headers = {"Accept": "application/json"}
    secret = token_for(url)
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    timeout = _timeout() if timeout is None else timeout
    try:
        response = requests.request(method, url, json=body, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise ProxyError(
            f"agentmemory server at {base_url()} did not answer {method} {path} within "
            f"{timeout:g}s (raise AGENTMEMORY_MCP_TIMEOUT if the call is slow)"
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
    envelope = payload if isinstance(detail, str) and isinstance(code, str) else None
    return ProxyError(f"{method} {path} failed with HTTP {status}: {text}", status, code, envelope=envelope)


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
    return MCPError(code, str(exc), exc.envelope)


# -- listings: the server's, else what it listed last, else this package's ------------------------


def _everything(data: Any) -> Any:
    return data


def _resources_only(data: Any) -> Any:
    # The server lists templates among its resources (as upstream does); MCP lists them apart.
    return {"resources": [r for r in data["resources"] if "{" not in r.get("uri", "")]}


def _templates_only(data: Any) -> Any:
    return {"resourceTemplates": data["resourceTemplates"]}


# Each listing route, the kind its list_changed notification names, and the MCP lists it answers.
ROUTES: dict[str, tuple[str, tuple[tuple[Any, Callable[[Any], Any]], ...]]] = {
    "/mcp/tools": ("tools", ((types.ListToolsResult, _everything),)),
    "/mcp/resources": (
        "resources",
        ((types.ListResourcesResult, _resources_only), (types.ListResourceTemplatesResult, _templates_only)),
    ),
    "/mcp/prompts": ("prompts", ((types.ListPromptsResult, _everything),)),
}
_CHANGED: dict[str, tuple[str, ServerEvent]] = {
    "tools": ("send_tool_list_changed", ToolsListChanged()),
    "resources": ("send_resource_list_changed", ResourcesListChanged()),
    "prompts": ("send_prompt_list_changed", PromptsListChanged()),
}
FIRST_POLL, LAST_POLL = 0.5, 10.0  # seconds between tries while a listing given without the server waits
POLL_TIMEOUT = 10.0  # a try never keeps this process alive longer than this after the client leaves


def as_listed(route: str, data: Any) -> tuple[Any, ...]:
    """What MCP clients see of ``data``, the answer at ``route``: one normalised dump per list.

    :raise ValueError: ``data`` is not the shape that route answers.
    """
    try:
        return tuple(
            shape.model_validate(pick(data)).model_dump(mode="json", by_alias=True, exclude_none=True)
            for shape, pick in ROUTES[route][1]
        )
    except (ValueError, TypeError, LookupError, AttributeError) as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


class Listings:
    """The lists this process gives: the server's when it answers (kept on disk), else what that
    server listed last, else this package's own. A list given without the server is remembered;
    once the server answers, a list that differs is announced with ``notifications/<kind>/list_changed``
    (to a handshake-era client on the connection, to a 2026-07-28 client on its
    ``subscriptions/listen`` stream), so the client lists again and sees the server's."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self.session: Any = None  # the connection's session, to notify a handshake-era client
        self.given: dict[str, tuple[Any, ...]] = {}  # route -> what was listed there without the server
        self._event: anyio.Event | None = None  # made in the event loop, by the first to need it
        self._reported: set[str] = set()

    @property
    def _wake(self) -> anyio.Event:
        if self._event is None:
            self._event = anyio.Event()
        return self._event

    async def answer(self, ctx: Any, route: str, what: str, shape: Any, pick: Callable[[Any], Any]) -> Any:
        """The list ``shape`` at ``route`` (``pick`` cuts it out of the route's answer).

        :raise MCPError: a server answered an error or something that is no listing, or (no server,
            no cache) AGENTMEMORY_TOOLS in this process's environment is not a valid value.
        """
        self.session = getattr(ctx, "session", None) or self.session
        url = base_url()
        try:
            data = await call_server("GET", route)
            listed = as_listed(route, data)
        except ProxyError as exc:
            if not exc.unreachable:  # a server answered: its error is the truth, not our guess at its list
                raise MCPError(types.INTERNAL_ERROR, f"cannot list {what}: {exc}", exc.envelope) from None
            data, listed = await anyio.to_thread.run_sync(self._without_server, url, route, str(exc), what)
            self.given[route] = listed
            self._wake.set()
        except ValueError as exc:
            raise MCPError(
                types.INTERNAL_ERROR, f"cannot list {what}: GET {route} answered an unexpected shape: {exc}"
            ) from None
        else:
            self.given.pop(route, None)  # the client has the server's list now
            await anyio.to_thread.run_sync(listing_cache.write, url, route, data)
        return shape.model_validate(pick(data))

    @staticmethod
    def _without_server(url: str, route: str, reason: str, what: str) -> tuple[Any, tuple[Any, ...]]:
        cached = listing_cache.read(url, route)
        if cached is not None:
            try:
                listed = as_listed(route, cached)
                log.warning("%s; listing %s as that server last listed them until it answers", reason, what)
                return cached, listed
            except ValueError as exc:
                log.warning("ignoring the listing cache of %s at %s: %s", listing_cache.shown(url), route, exc)
        log.warning("%s; listing %s from this package until it answers", reason, what)
        data = local_listing(route)  # the first call imports every feature
        return data, as_listed(route, data)

    def server_answered(self) -> None:
        """A call went through: look at the lists now rather than at the next poll."""
        if self.given:
            self._wake.set()

    async def watch(self) -> None:
        """Runs for the life of the process: while some list was given without the server, ask
        the server for it (sooner after a call went through, else at growing intervals up to
        LAST_POLL seconds) and announce the lists that differ."""
        delay = FIRST_POLL
        while True:
            if not self.given:
                delay = FIRST_POLL
                await self._wake.wait()
            self._event = anyio.Event()
            try:
                answered = await self._check()
            except Exception:  # this process never exits because the server misbehaves
                log.exception("comparing the lists given without the server failed")
                answered = False
            if not answered:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                delay = min(delay * 2, LAST_POLL)

    async def _check(self) -> bool:
        """Compare each list given without the server with the server's; False while it does not answer."""
        url = base_url()
        for route, given in list(self.given.items()):
            try:
                data = await anyio.to_thread.run_sync(
                    partial(rest, "GET", route, timeout=min(POLL_TIMEOUT, _timeout())), abandon_on_cancel=True
                )
            except ProxyError as exc:
                if not exc.unreachable and str(exc) not in self._reported:  # once: this is asked again and again
                    self._reported.add(str(exc))
                    log.warning("cannot compare the %s listed without the server: %s", ROUTES[route][0], exc)
                return False
            try:
                listed: tuple[Any, ...] | None = as_listed(route, data)
            except ValueError as exc:  # the client's next listing gets the error; nothing to keep
                log.warning("GET %s answered an unexpected shape: %s", route, exc)
                listed = None
            else:
                await anyio.to_thread.run_sync(listing_cache.write, url, route, data)
            if self.given.get(route) is not given:
                continue  # listed again meanwhile, from the server or without it
            del self.given[route]
            if listed != given:
                await self.announce(ROUTES[route][0])
        return True

    async def announce(self, kind: str) -> None:
        """``notifications/<kind>/list_changed`` to the client, in the era it speaks."""
        method, event = _CHANGED[kind]
        if self.session is not None:  # a 2026-07-28 connection drops it: that era listens on the bus
            try:
                await getattr(self.session, method)()
            except Exception as exc:  # noqa: BLE001 - the client went away; nothing to tell
                log.debug("could not send %s list_changed: %s", kind, exc)
        await self.bus.publish(event)


LISTINGS = Listings()


# -- handlers -------------------------------------------------------------------------------------


async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return await LISTINGS.answer(ctx, "/mcp/tools", "tools", types.ListToolsResult, _everything)


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    body = {"name": params.name, "arguments": params.arguments or {}}
    try:
        result = await call_server("POST", "/mcp/call", body, shape=types.CallToolResult)
    except ProxyError as exc:
        if not exc.unreachable:
            LISTINGS.server_answered()
        if exc.code == "unknown_tool":
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}") from None
        return types.CallToolResult(content=[types.TextContent(text=f"Error: {exc}")], is_error=True)
    LISTINGS.server_answered()
    return result


async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
    return await LISTINGS.answer(ctx, "/mcp/resources", "resources", types.ListResourcesResult, _resources_only)


async def list_resource_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
    return await LISTINGS.answer(
        ctx, "/mcp/resources", "resource templates", types.ListResourceTemplatesResult, _templates_only
    )


async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    try:
        result = await call_server(
            "POST", "/mcp/resources/read", {"uri": str(params.uri)}, shape=types.ReadResourceResult
        )
    except ProxyError as exc:
        raise _rpc_error(exc) from None
    LISTINGS.server_answered()
    return result


async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
    return await LISTINGS.answer(ctx, "/mcp/prompts", "prompts", types.ListPromptsResult, _everything)


async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    body = {"name": params.name, "arguments": params.arguments or {}}
    try:
        result = await call_server("POST", "/mcp/prompts/get", body, shape=types.GetPromptResult)
    except ProxyError as exc:
        raise _rpc_error(exc) from None
    LISTINGS.server_answered()
    return result


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


class ProxyServer(Server):
    """The SDK's low-level Server, advertising only what this process serves.

    On 2026-07-28 the SDK derives ``resources.subscribe`` from ``subscriptions/listen`` being
    served (``server/discover`` said it true). This process serves that method to announce list
    changes, but never publishes a resource's update: the server has no per-resource
    subscriptions to forward (its own /mcp says ``subscribe: false``). A client told true would
    subscribe to ``agentmemory://status`` and wait for updates that never come, so both eras
    say false; ``listChanged`` stays as the SDK derives it."""

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        served = super().get_capabilities(
            notification_options, experimental_capabilities, extensions, protocol_version=protocol_version
        )
        if served.resources is None:
            return served
        return served.model_copy(update={"resources": served.resources.model_copy(update={"subscribe": False})})


def build_server() -> Server:
    return ProxyServer(
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
        on_subscriptions_listen=ListenHandler(LISTINGS.bus),  # where a 2026-07-28 client hears list_changed
    )


async def serve() -> None:
    server = build_server()
    # Handshake-era clients are told listChanged here; 2026-07-28 ones by subscriptions/listen being served.
    options = server.create_initialization_options(
        NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
    )
    async with stdio_server() as (read_stream, write_stream), anyio.create_task_group() as tasks:
        tasks.start_soon(LISTINGS.watch)
        await server.run(read_stream, write_stream, options)
        tasks.cancel_scope.cancel()


def main() -> None:
    # stdout carries the protocol; logs go to stderr only.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    anyio.run(serve)


if __name__ == "__main__":
    main()
