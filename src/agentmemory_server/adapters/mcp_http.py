"""MCP over HTTP without Flask: upstream's simple JSON routes and a Streamable HTTP endpoint.

Two shapes share the tool registry (resources and prompts are tools too):

- upstream's plain JSON (``GET /mcp/tools``, ``POST /mcp/call`` ...): ``tool_list`` / ``call_tool``;
- JSON-RPC 2.0 at ``POST /mcp`` (MCP Streamable HTTP, always answered with application/json,
  never SSE): ``handle_post`` / ``handle_delete``.

Protocol eras. Revisions 2024-11-05 .. 2025-11-25 start with an ``initialize`` handshake; the
server answers with a ``Mcp-Session-Id`` (optional for the client to send back; an unknown one
is a 404 so the client re-initialises). JSON-RPC batches exist only in 2025-03-26. Revision
2026-07-28 has no handshake: every request carries ``MCP-Protocol-Version``, ``Mcp-Method``
(and ``Mcp-Name``) headers and a ``params._meta`` envelope, ``server/discover`` replaces
``initialize``, results carry ``resultType`` and list/read results carry cache hints. The list
of revisions and the handshake-era sessions are mcp_sessions.py's.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentmemory_server import errors
from agentmemory_server.adapters.mcp_sessions import (
    BATCH_VERSIONS,
    DEFAULT_VERSION,
    HANDSHAKE_VERSIONS,
    MODERN_VERSIONS,
    SUPPORTED_VERSIONS,
    sessions_of,
)
from agentmemory_server.adapters.origins import LOOPBACK, origin_allowed  # noqa: F401 - re-exported for callers
from agentmemory_server.errors import AppError, InvalidInput
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.util import (
    MAX_JSON_DEPTH,
    WRAPPING_DEPTH,
    UnstorableJson,
    clean_json,
    reject_json_constant,
)

log = logging.getLogger("agentmemory.mcp")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)
RESOURCE_NOT_FOUND = -32002  # 2024-11-05 .. 2025-11-25; 2026-07-28 retired it for -32602
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# 2026-07-28 maps JSON-RPC errors to HTTP statuses; earlier revisions answer them with 200.
MODERN_ERROR_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}
CAPABILITIES = {
    "tools": {"listChanged": False},
    "resources": {"subscribe": False, "listChanged": False},
    "prompts": {"listChanged": False},
}
INSTRUCTIONS = (
    "agentmemory: persistent memory for coding agents. Search what earlier sessions did "
    "before starting work, save durable decisions and facts, and read the "
    "agentmemory:// resources for status and per-project history."
)


# -- upstream's plain JSON shape ---------------------------------------------------------------------


def tool_list(rt: Any) -> list[dict[str, Any]]:
    """Every MCP tool (honouring AGENTMEMORY_TOOLS) with its JSON Schema."""
    return tool_list_for(rt.settings.tools)


def tool_list_for(which: str) -> list[dict[str, Any]]:
    """The MCP tools a server with AGENTMEMORY_TOOLS=``which`` lists (``all`` or ``core``)."""
    return [
        {"name": t.name, "description": t.description, "inputSchema": t.schema}
        for t in registry.REGISTRY.mcp_tools(which)
    ]


def mcp_tool(name: Any) -> registry.Tool:
    """The MCP tool called ``name``. Tools hidden by AGENTMEMORY_TOOLS=core stay callable: the
    setting trims what clients advertise to the model, it is not access control."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("missing required field 'name'", field="name")
    found = registry.REGISTRY.get(name)
    if not found.mcp:
        raise InvalidInput(f"{name!r} is not an MCP tool", field="name", code=errors.UNKNOWN_TOOL)
    return found


def call_tool(rt: Any, name: Any, arguments: Any, source: str) -> dict[str, Any]:
    """Run an MCP tool; a tool failure is a result with isError, as MCP specifies.

    :raise AppError: the name is missing or unknown, or ``arguments`` is not an object.
    """
    mcp_tool(name)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise InvalidInput("'arguments' must be an object", field="arguments")
    _refuse_deeper_than_a_body(arguments)
    try:
        result = registry.call(Ctx(rt, source=source), name, arguments)
    except AppError as exc:
        return {"content": [{"type": "text", "text": registry.error_text(exc)}], "isError": True}
    return {"content": [{"type": "text", "text": registry.mcp_text(result)}]}


def _refuse_deeper_than_a_body(arguments: dict[str, Any]) -> None:
    """A REST body's nesting limit, for a tool's arguments. The message was parsed with room
    for its JSON-RPC envelope, which an observation sent through MCP must not use: its export
    would nest too deeply for the import to take it again."""
    try:
        clean_json(arguments, max_depth=MAX_JSON_DEPTH)
    except UnstorableJson as exc:
        raise InvalidInput(f"'{exc.field}' {exc.problem}", field=exc.field) from None


# -- JSON-RPC plumbing ------------------------------------------------------------------------------------


# JSON-RPC error codes and the catalogue code (and HTTP-like status) their ``data`` carries.
RPC_CODES = {
    PARSE_ERROR: (errors.INVALID_JSON, 400),
    INVALID_REQUEST: (errors.INVALID_REQUEST, 400),
    METHOD_NOT_FOUND: (errors.METHOD_NOT_FOUND, 404),
    INVALID_PARAMS: (errors.INVALID_INPUT, 400),
    INTERNAL_ERROR: (errors.INTERNAL_ERROR, 500),
    RESOURCE_NOT_FOUND: (errors.RESOURCE_NOT_FOUND, 404),
    HEADER_MISMATCH: (errors.HEADER_MISMATCH, 400),
    UNSUPPORTED_PROTOCOL_VERSION: (errors.UNSUPPORTED_PROTOCOL_VERSION, 400),
}


class RpcError(Exception):
    """A JSON-RPC error. ``data`` is always the server's error envelope (errors.py), so a client
    reads the same ``code``, ``status`` and ``details`` as over REST."""

    def __init__(
        self,
        code: int,
        message: str,
        data: dict[str, Any] | None = None,
        *,
        app_code: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.code, self.message = code, message
        default_code, status = RPC_CODES.get(code, (errors.INTERNAL_ERROR, 500))
        envelope = data if data is not None else errors.envelope(status, message, app_code or default_code)
        self.data = {**envelope, **(extra or {})}  # extra: keys the MCP spec defines for this error
        self.message = envelope.get("error", message)  # the envelope's, which passed the privacy filter

    def body(self, request_id: Any) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {"code": self.code, "message": self.message, "data": self.data},
        }


@dataclass
class HttpReply:
    status: int
    body: Any = None  # JSON-able; None means no body
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    """One JSON-RPC request being served."""

    rt: Any
    method: str
    params: dict[str, Any]
    version: str
    modern: bool
    new_session: str | None = None

    @property
    def ctx(self) -> Ctx:
        return Ctx(self.rt, source="mcp")


def _from_app_error(exc: AppError, not_found: int = INVALID_PARAMS) -> RpcError:
    data = exc.to_dict()
    if exc.status == 404:
        return RpcError(not_found, exc.message, data)
    if exc.status == 400:
        return RpcError(INVALID_PARAMS, exc.message, data)
    return RpcError(INTERNAL_ERROR, exc.message, data)


def _no_cursor(params: dict[str, Any]) -> None:
    if params.get("cursor") is not None:
        raise RpcError(INVALID_PARAMS, "invalid cursor: this server returns every item in one page")


def _require_str(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise RpcError(INVALID_PARAMS, f"params.{key} must be a non-empty string")
    return value


# -- methods ------------------------------------------------------------------------------------------------


def _initialize(call: Call) -> dict[str, Any]:
    requested = call.params.get("protocolVersion")
    version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
    call.new_session = sessions_of(call.rt).open(version)
    return {
        "protocolVersion": version,
        "capabilities": CAPABILITIES,
        "serverInfo": server_info(call.rt),
        "instructions": INSTRUCTIONS,
    }


def _discover(call: Call) -> dict[str, Any]:
    return {"supportedVersions": list(SUPPORTED_VERSIONS), "capabilities": CAPABILITIES, "instructions": INSTRUCTIONS}


def _ping(call: Call) -> dict[str, Any]:
    return {}


def _tools_list(call: Call) -> dict[str, Any]:
    _no_cursor(call.params)
    return {"tools": tool_list(call.rt)}


def _tools_call(call: Call) -> dict[str, Any]:
    name = _require_str(call.params, "name")
    arguments = call.params.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise RpcError(INVALID_PARAMS, "params.arguments must be an object")
    try:
        mcp_tool(name)
    except AppError:
        raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}", app_code=errors.UNKNOWN_TOOL) from None
    return call_tool(call.rt, name, arguments, "mcp")


def _run(call: Call, tool_name: str, args: dict[str, Any]) -> Any:
    """Resources and prompts are tools too: JSON-RPC reaches them through the registry."""
    data, _status = registry.unwrap(registry.call(call.ctx, tool_name, args))
    return data


def _resources_list(call: Call) -> dict[str, Any]:
    _no_cursor(call.params)
    return {"resources": [r for r in _run(call, "mcp_resources", {})["resources"] if "{" not in r["uri"]]}


def _resource_templates(call: Call) -> dict[str, Any]:
    _no_cursor(call.params)
    return {"resourceTemplates": _run(call, "mcp_resources", {})["resourceTemplates"]}


def _resources_read(call: Call) -> dict[str, Any]:
    uri = _require_str(call.params, "uri")
    try:
        return _run(call, "mcp_resource_read", {"uri": uri})
    except AppError as exc:
        raise _from_app_error(exc, INVALID_PARAMS if call.modern else RESOURCE_NOT_FOUND) from None


def _prompts_list(call: Call) -> dict[str, Any]:
    _no_cursor(call.params)
    return _run(call, "mcp_prompts", {})


def _prompts_get(call: Call) -> dict[str, Any]:
    name = _require_str(call.params, "name")
    arguments = call.params.get("arguments")
    try:
        return _run(
            call, "mcp_prompt_get", {"name": name, **({"arguments": arguments} if arguments is not None else {})}
        )
    except AppError as exc:
        raise _from_app_error(exc) from None


Handler = Callable[[Call], dict[str, Any]]
COMMON: dict[str, Handler] = {
    "server/discover": _discover,
    "tools/list": _tools_list,
    "tools/call": _tools_call,
    "resources/list": _resources_list,
    "resources/templates/list": _resource_templates,
    "resources/read": _resources_read,
    "prompts/list": _prompts_list,
    "prompts/get": _prompts_get,
}
HANDSHAKE_METHODS: dict[str, Handler] = {**COMMON, "initialize": _initialize, "ping": _ping}
MODERN_METHODS: dict[str, Handler] = COMMON  # 2026-07-28 removed initialize and ping
CACHEABLE = {
    "server/discover",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "prompts/list",
}


def server_info(rt: Any) -> dict[str, str]:
    return {"name": "agentmemory", "title": "agentmemory-python", "version": rt.version}


def _modern_result(call: Call, result: dict[str, Any]) -> dict[str, Any]:
    out = {**result, "resultType": "complete", "_meta": {META_SERVER_INFO: server_info(call.rt)}}
    if call.method in CACHEABLE:
        out.update(ttlMs=0, cacheScope="private")  # results change with every write
    return out


def dispatch(call: Call) -> dict[str, Any]:
    """Run one request's method; raise RpcError for protocol-level failures."""
    methods = MODERN_METHODS if call.modern else HANDSHAKE_METHODS
    handler = methods.get(call.method)
    if handler is None:
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {call.method}")
    try:
        result = handler(call)
    except RpcError:
        raise
    except AppError as exc:
        raise _from_app_error(exc) from None
    except Exception:
        data = errors.unexpected(log, "MCP method %s failed", call.method)
        raise RpcError(INTERNAL_ERROR, data["error"], data) from None
    return _modern_result(call, result) if call.modern else result


# -- Streamable HTTP transport (JSON responses only) ---------------------------------------------------


def accepts_json(accept: str | None) -> bool:
    if not accept:
        return True
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {"application/json", "application/*", "*/*"})


def _decode_header(value: str | None) -> str | None:
    """Mcp-Name values that are not plain ASCII arrive as ``=?base64?...?=``."""
    if value and value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
    return value


def _request_id(message: Any) -> Any:
    if isinstance(message, dict):
        rid = message.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool):
            return rid
    return None


def _parse(raw: bytes) -> Any:
    """The body as JSON, or a parse error that says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RpcError(PARSE_ERROR, "Parse error: the body is not valid UTF-8") from None
    try:
        # a tool's arguments sit inside the envelope (params.arguments): call_tool holds them to a body's limit
        return clean_json(
            json.loads(text, parse_constant=reject_json_constant), max_depth=MAX_JSON_DEPTH + WRAPPING_DEPTH
        )
    except RecursionError:
        raise RpcError(PARSE_ERROR, "Parse error: the body is nested too deeply") from None
    except UnstorableJson as exc:
        where = f"'{exc.field}'" if exc.field else "the body"
        raise RpcError(PARSE_ERROR, f"Parse error: {where} {exc.problem}") from None
    except ValueError as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: the body is not valid JSON ({exc})") from None


def serve_message(
    rt: Any, message: Any, version: str, modern: bool, in_batch: bool = False
) -> tuple[dict[str, Any] | None, Call | None]:
    """Answer one JSON-RPC message: (response or None for notifications/responses, the call)."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object").body(
            _request_id(message)
        ), None
    method = message.get("method")
    if method is None and ("result" in message or "error" in message):
        return None, None  # a reply to a server request; this server sends none, so drop it
    if not isinstance(method, str):
        return RpcError(INVALID_REQUEST, "Invalid Request: 'method' must be a string").body(_request_id(message)), None
    if "id" not in message:
        return None, None  # notifications (initialized, cancelled, ...) need no action here
    rid = _request_id(message)
    if rid is None:
        return RpcError(INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer").body(None), None
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return RpcError(INVALID_PARAMS, "params must be an object").body(rid), None
    if in_batch and method == "initialize":
        return RpcError(INVALID_REQUEST, "initialize must not be part of a batch").body(rid), None
    call = Call(rt, method, params, version, modern)
    try:
        return {"jsonrpc": "2.0", "id": rid, "result": dispatch(call)}, call
    except RpcError as exc:
        return exc.body(rid), call


def handle_post(rt: Any, raw: bytes, headers: Mapping[str, str]) -> HttpReply:
    """Serve ``POST /mcp``: one JSON-RPC message (or a 2025-03-26 batch) -> an HttpReply."""
    headers = {k.lower(): v for k, v in headers.items()}
    try:
        message = _parse(raw)
    except RpcError as exc:
        return HttpReply(400, exc.body(None))
    requested = headers.get("mcp-protocol-version")
    if requested is not None and requested not in SUPPORTED_VERSIONS:
        return HttpReply(400, _unsupported(requested).body(_request_id(message)))
    if requested in MODERN_VERSIONS:
        return _handle_modern(rt, message, headers, requested)
    return _handle_handshake_era(rt, message, headers, requested)


def _unsupported(requested: Any) -> RpcError:
    return RpcError(
        UNSUPPORTED_PROTOCOL_VERSION,
        "Unsupported protocol version",
        extra={"supported": list(SUPPORTED_VERSIONS), "requested": requested},
    )


def _handle_handshake_era(rt: Any, message: Any, headers: dict[str, str], requested: str | None) -> HttpReply:
    sid = headers.get("mcp-session-id")
    session_version = None
    starts_session = isinstance(message, dict) and message.get("method") == "initialize"
    if sid and not starts_session:
        session_version = sessions_of(rt).version(sid)
        if session_version is None:  # the spec's signal to start a new session
            return _session_not_found("Session not found: send initialize again", _request_id(message))
    version = requested or session_version or DEFAULT_VERSION
    if isinstance(message, list):
        return _batch(rt, message, version)
    reply, call = serve_message(rt, message, version, modern=False)
    if reply is None:
        return HttpReply(202)
    status = 400 if "error" in reply and reply["error"]["code"] in (PARSE_ERROR, INVALID_REQUEST) else 200
    extra = {"Mcp-Session-Id": call.new_session} if call and call.new_session else {}
    return HttpReply(status, reply, extra)


def _batch(rt: Any, messages: list[Any], version: str) -> HttpReply:
    if version not in BATCH_VERSIONS:
        return HttpReply(
            400,
            RpcError(
                INVALID_REQUEST,
                f"JSON-RPC batches are not part of MCP {version} (only 2025-03-26 has them); send one message per POST",
            ).body(None),
        )
    if not messages:
        return HttpReply(400, RpcError(INVALID_REQUEST, "Invalid Request: empty batch").body(None))
    replies = [
        reply
        for reply, _call in (serve_message(rt, m, version, False, in_batch=True) for m in messages)
        if reply is not None
    ]
    return HttpReply(200, replies) if replies else HttpReply(202)


def _envelope_error(message: dict[str, Any], headers: dict[str, str]) -> RpcError | None:
    """2026-07-28 per-request checks: the ``_meta`` envelope and the routing headers."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or META_VERSION not in meta or META_CAPABILITIES not in meta:
        return RpcError(INVALID_PARAMS, f"params._meta must carry {META_VERSION!r} and {META_CAPABILITIES!r}")
    method = message.get("method")
    if headers.get("mcp-protocol-version") != meta[META_VERSION]:
        return RpcError(HEADER_MISMATCH, "MCP-Protocol-Version header does not match params._meta")
    if headers.get("mcp-method") != method:
        return RpcError(HEADER_MISMATCH, "Mcp-Method header does not match the request's method")
    name_key = NAME_PARAMS.get(method) if isinstance(method, str) else None
    named = params.get(name_key) if name_key and isinstance(params, dict) else None
    if named is not None and _decode_header(headers.get("mcp-name")) != named:
        return RpcError(HEADER_MISMATCH, f"Mcp-Name header does not match params.{name_key}")
    if meta[META_VERSION] not in MODERN_VERSIONS:
        return _unsupported(meta[META_VERSION])
    return None


def _handle_modern(rt: Any, message: Any, headers: dict[str, str], version: str) -> HttpReply:
    if not isinstance(message, dict):
        return HttpReply(
            400, RpcError(INVALID_REQUEST, "Body must be a single JSON-RPC request or notification object").body(None)
        )
    if "id" not in message:
        return HttpReply(202)
    if isinstance(message.get("method"), str) and message.get("jsonrpc") == "2.0":
        problem = _envelope_error(message, headers)
        if problem is not None:
            return HttpReply(MODERN_ERROR_STATUS.get(problem.code, 400), problem.body(_request_id(message)))
    reply, _call = serve_message(rt, message, version, modern=True)
    if reply is None:
        return HttpReply(202)
    status = MODERN_ERROR_STATUS.get(reply["error"]["code"], 200) if "error" in reply else 200
    return HttpReply(status, reply)


def error_reply(envelope: dict[str, Any]) -> dict[str, Any]:
    """The JSON-RPC body for a request refused before it was read (auth, origin, body limits,
    routing): the envelope rides in ``data``."""
    status = envelope["status"]
    code = METHOD_NOT_FOUND if status in (404, 405) else INVALID_REQUEST if status < 500 else INTERNAL_ERROR
    return RpcError(code, envelope["error"], envelope).body(None)


def handle_delete(rt: Any, headers: Mapping[str, str]) -> HttpReply:
    """``DELETE /mcp`` ends a handshake-era session."""
    sid = {k.lower(): v for k, v in headers.items()}.get("mcp-session-id")
    if not sid:
        return HttpReply(400, RpcError(INVALID_REQUEST, "Mcp-Session-Id header required").body(None))
    if sessions_of(rt).end(sid):
        return HttpReply(204)
    return _session_not_found("Session not found", None)


def _session_not_found(message: str, request_id: Any) -> HttpReply:
    """A 404 whose envelope says 404 too (an invalid request's default would say 400)."""
    envelope = errors.envelope(404, message, errors.SESSION_EXPIRED)
    return HttpReply(404, RpcError(INVALID_REQUEST, message, envelope).body(request_id))
