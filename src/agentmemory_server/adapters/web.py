"""HTTP adapter: REST routes, MCP over HTTP and the live WebSocket, all over the tool registry.

Views only parse, authenticate and delegate: every REST route is generated from the tools'
``http`` bindings and dispatched through ``registry.call``. ``python src/app.py`` serves the
app with gunicorn's gthread worker (flask-sock needs it; waitress cannot serve WebSockets).
The checks before every request and the headers after it are web_guards.py's.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from flask_sock import Sock
from gunicorn.http.errors import ParseException as GunicornParseError
from werkzeug.exceptions import HTTPException

from agentmemory_server import errors
from agentmemory_server.adapters import mcp_http as mcp_protocol
from agentmemory_server.adapters import openapi
from agentmemory_server.adapters.origins import parse_allowed
from agentmemory_server.adapters.stream import ReaderThread, StreamSession
from agentmemory_server.adapters.web_guards import (
    HOOKS_PATH,
    PREFIX,
    STREAM_PATH,
    VIEWER_PATHS,
    discard_body,
    forget_caller,
    guard,
    is_upgrade,
    security_headers,
)
from agentmemory_server.errors import AppError, InvalidInput
from agentmemory_server.kernel import principals, registry
from agentmemory_server.kernel.limits import caller_key
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.registry import Ctx, Tool
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.kernel.util import (
    MAX_JSON_DEPTH,
    WRAPPING_DEPTH,
    UnstorableJson,
    clean_json,
    clean_text,
    reject_json_constant,
)
from agentmemory_server.wiring import build_runtime

VIEWER_FILE = Path(__file__).resolve().parent.parent / "viewer" / "index.html"
NONCE_MARK = "__CSP_NONCE__"
AUTH_MARK = "__AUTH_MODE__"
# Pings let the socket notice a peer that vanished without closing (and free its thread).
WS_PING_SECONDS = 25
MCP_PATH = "/mcp"
log = logging.getLogger("agentmemory.http")


# -- request parsing ------------------------------------------------------------------------------


def parse_json(raw: bytes, what: str = "request body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity (nor a number that overflows to it), bounded
    nesting; lone surrogates and NULs are cleaned so nothing un-storable reaches the database."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=reject_json_constant)
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise InvalidInput(f"malformed JSON in {what}: {exc}") from None
    try:
        return clean_json(value, max_depth=max_depth)
    except UnstorableJson as exc:
        raise unstorable(exc, what) from None


def unstorable(exc: UnstorableJson, what: str) -> InvalidInput:
    """The 400 for a body we parsed but cannot keep, naming the field (``data.tool_input.n``)."""
    if not exc.field:
        return InvalidInput(f"{what} {exc.problem}")
    return InvalidInput(f"'{exc.field}' {exc.problem}", field=exc.field)


def json_body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    # an import's document wraps the observations it carries in a few levels of its own
    wrapped = request.path == f"{PREFIX}/import"
    value = parse_json(raw, max_depth=MAX_JSON_DEPTH + (WRAPPING_DEPTH if wrapped else 0))
    if not isinstance(value, dict):
        raise InvalidInput("request body must be a JSON object")
    return value


def query_args() -> dict[str, Any]:
    """The query string's parameters, cleaned as a body's strings are: a NUL (``%00``), which
    PostgreSQL text cannot hold, is dropped, so both backends answer the same."""
    return clean_json({k: (v if len(v) > 1 else v[0]) for k, v in request.args.lists()})


def respond(data: Any, status: int) -> Response:
    return Response(json_bytes(data), status=status, mimetype="application/json")


def json_bytes(data: Any) -> bytes:
    """``data`` as UTF-8 JSON. A lone surrogate that reached the store before requests were
    cleaned (or through a path that does not clean) cannot be UTF-8: it is sent as ``?``, as a
    request's would have been stored, rather than failing every read of that record (an escaped
    ``\\ud800`` is refused by strict parsers, Rust's serde_json among them)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return clean_text(text).encode("utf-8")


# -- app factory ------------------------------------------------------------------------------------


def create_app(settings: Settings | dict | None = None, *, runtime: Runtime | None = None) -> Flask:
    """Build the Flask app.

    :param settings: a Settings, a mapping of environment variables, or None for os.environ.
    :param runtime: an already-built Runtime to serve (tests share one with in-process calls).
    """
    if runtime is None:
        if not isinstance(settings, Settings):
            settings = Settings.from_env(settings)
        runtime = build_runtime(settings)
    rt = runtime
    app = Flask(__name__, static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = max(
        rt.settings.max_body_bytes, rt.settings.max_import_bytes, rt.settings.hook_max_body_bytes
    )
    app.extensions["agentmemory"] = rt
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": WS_PING_SECONDS,
        "max_message_size": 1 << 20,
        "thread_class": ReaderThread,
    }
    allowed_origins = parse_allowed(rt.settings.viewer_allowed_origins)
    if rt.activity is not None:  # the background worker backs off while requests are served
        _count_activity(app, rt.activity)
    app.before_request(lambda: guard(rt, allowed_origins))
    app.teardown_request(forget_caller)
    app.after_request(lambda response: security_headers(response, allowed_origins))
    _register_error_handlers(app, rt)
    _register_tool_routes(app, rt)
    _register_mcp_http(app, rt)
    _register_stream(app, rt)
    _register_viewer(app, rt)
    _register_openapi(app, rt)
    return app


def _register_tool_routes(app: Flask, rt: Runtime) -> None:
    """Every REST route the registry's tools declare, each endpoint named tool:method."""
    for tool in registry.REGISTRY.all():
        for route in tool.routes:
            app.add_url_rule(
                PREFIX + route.path,
                endpoint=f"{tool.name}:{route.method}",
                view_func=_tool_view(rt, tool, route.status),
                methods=[route.method],
            )


def _count_activity(app: Flask, board: Any) -> None:
    """Requests in flight on the activity board; an open viewer WebSocket is not a request."""

    def begin() -> None:
        if not is_upgrade():
            board.begin()
            g.activity_counted = True

    def end(_exc: BaseException | None) -> None:
        if g.pop("activity_counted", False):
            board.end()

    app.before_request(begin)
    app.teardown_request(end)


def _tool_view(rt: Runtime, tool: Tool, default_status: int):
    def view(**path_args: Any) -> Response:
        args = query_args()
        if request.method != "GET":
            args.update(json_body())
        args.update(clean_json(path_args))  # /memories/<id>: cleaned as the query string is
        result = registry.call(Ctx(rt, source="rest"), tool.name, args)
        data, status = registry.unwrap(result)
        content = result.content if isinstance(result, registry.Reply) else None
        if content is not None and (not content[1].startswith("text/html") or prefers_html()):
            return _content_response(content, status or default_status)
        return respond(data, status or default_status)

    view.__name__ = f"view_{tool.name}"
    return view


def prefers_html() -> bool:
    """Whether the client asked for HTML (a browser's Accept, or ``?format=html``)."""
    if request.args.get("format"):
        return request.args["format"].lower() == "html"
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and request.accept_mimetypes["text/html"] > request.accept_mimetypes["application/json"]


def _content_response(content: tuple[bytes | str, str], status: int) -> Response:
    body, mimetype = content
    response = Response(body, status=status, mimetype=mimetype)
    if mimetype.startswith("text/html"):
        nonce = secrets.token_urlsafe(18)
        response.set_data(response.get_data(as_text=True).replace(NONCE_MARK, nonce))
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
    return response


# HTTP-level refusals (routing, body limits) and the catalogue code each one gets.
HTTP_ERROR_CODES = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED, 413: errors.PAYLOAD_TOO_LARGE}


def render_error(body: dict[str, Any]) -> Response:
    """One error envelope, in the transport's own shape: JSON-RPC on ``/mcp`` (MCP clients show
    a JSON-RPC error's message to the user), the REST body everywhere else."""
    if request.path == MCP_PATH:
        return respond(mcp_protocol.error_reply(body), body["status"])
    return respond(body, body["status"])


def _http_error_body(exc: HTTPException) -> dict[str, Any]:
    status = exc.code or 500
    if status == 413:
        limit = request.max_content_length
        setting = (
            "AGENTMEMORY_MAX_IMPORT_BYTES"
            if request.path == f"{PREFIX}/import"
            else "AGENTMEMORY_HOOK_MAX_BODY_BYTES"
            if request.path.startswith(HOOKS_PATH)
            else "AGENTMEMORY_MAX_BODY_BYTES"
        )
        return errors.envelope(
            413,
            f"request body larger than {limit} bytes (raise {setting} to accept more)",
            errors.PAYLOAD_TOO_LARGE,
            {"limitBytes": limit, "setting": setting},
        )
    messages = {
        404: f"no route {request.method} {request.path}",
        405: f"method {request.method} not allowed on {request.path}",
    }
    message = messages.get(status) or exc.description or exc.name or "HTTP error"
    return errors.envelope(status, message, HTTP_ERROR_CODES.get(status, errors.HTTP_ERROR))


def _closing(body: dict[str, Any]) -> Response:
    """An error answer after which the connection is closed: the rest of the request's body
    cannot be told from the next request."""
    response = render_error(body)
    response.headers["Connection"] = "close"
    return response


def _register_error_handlers(app: Flask, rt: Runtime) -> None:
    @app.errorhandler(AppError)
    def _app_error(exc: AppError) -> Response:
        exc = registry.naming_the_lock_holder(rt, exc)
        response = render_error(exc.to_dict())
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if g.get("close_connection"):  # the body was too big to drop: the connection cannot be reused
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        drained = discard_body() if exc.code == 413 else True
        response = render_error(_http_error_body(exc))
        if not drained:
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(TimeoutError)
    def _timeout(exc: TimeoutError) -> Response:
        # A body over the preread limit stalled mid-read (the socket timeout of the connection worker).
        message = f"the request body did not arrive within {rt.settings.request_timeout:g}s"
        return _closing(errors.envelope(408, message, errors.REQUEST_TIMEOUT))

    @app.errorhandler(GunicornParseError)
    def _malformed_body(exc: GunicornParseError) -> Response:
        # gunicorn reads a chunked body only as the route reads it, so a malformed one fails
        # inside the route; the connection's framing is lost, so it is closed.
        message = f"the request body is malformed: {strip_text(str(exc))}"
        return _closing(errors.envelope(400, message, errors.HTTP_ERROR))

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Response:
        fault = rt.db.app_error(exc)  # disk full, read-only, damaged or busy storage: the client can act on it
        if fault is not None:
            return _app_error(fault)
        return render_error(
            errors.unexpected(log, "unhandled error on %s %s", request.method, strip_text(request.path))
        )


# -- MCP over HTTP: upstream's simple JSON routes and the Streamable HTTP endpoint ---------------------


def _register_mcp_http(app: Flask, rt: Runtime) -> None:
    @app.get(f"{PREFIX}/mcp/tools")
    def mcp_tools() -> Response:
        """List MCP tools with their JSON Schemas (honours AGENTMEMORY_TOOLS)."""
        return respond({"tools": mcp_protocol.tool_list(rt)}, 200)

    def call() -> Response:
        """Call an MCP tool: {name, arguments} -> {content:[{type:"text", text}], isError?}."""
        body = json_body()
        return respond(mcp_protocol.call_tool(rt, body.get("name"), body.get("arguments"), "mcp"), 200)

    app.add_url_rule(f"{PREFIX}/mcp/call", "mcp_call", call, methods=["POST"])
    app.add_url_rule(f"{PREFIX}/mcp/tools", "mcp_tools_call", call, methods=["POST"])

    @app.route(MCP_PATH, methods=["GET", "POST", "DELETE"])
    def mcp_streamable_http() -> Response:
        """MCP Streamable HTTP: JSON-RPC 2.0 over POST, JSON responses (GET is 405); DELETE ends a session."""
        if request.method == "GET":
            return Response(status=405, headers={"Allow": "POST, DELETE"})
        if request.method == "DELETE":
            reply = mcp_protocol.handle_delete(rt, dict(request.headers))
        elif not mcp_protocol.accepts_json(request.headers.get("Accept")):
            return render_error(
                errors.envelope(406, "this endpoint answers application/json only", errors.NOT_ACCEPTABLE)
            )
        else:
            reply = mcp_protocol.handle_post(rt, request.get_data(cache=False), dict(request.headers))
        if reply.body is None:
            empty = Response(status=reply.status, headers=reply.headers)
            empty.headers.pop("Content-Type", None)
            return empty
        response = respond(reply.body, reply.status)
        response.headers.update(reply.headers)
        return response


# -- the OpenAPI document ---------------------------------------------------------------------------

_RPC = {"type": ["object", "array"], "description": "A JSON-RPC 2.0 message or batch"}
# Request/response shapes of the adapter routes (tool routes are described from the registry).
ADAPTER_DOCS: dict[str, dict[str, Any]] = {
    "mcp_tools": {
        "response": {
            "type": "object",
            "required": ["tools"],
            "properties": {"tools": {"type": "array", "items": {"type": "object"}}},
        }
    },
    "mcp_call": {
        "request": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
        },
        "response": {"type": "object", "required": ["content"]},
    },
    # Errors on /mcp are JSON-RPC responses (what MCP clients parse), not the REST envelope.
    "mcp_streamable_http": {
        "POST": {
            "request": _RPC,
            "response": _RPC,
            "success": (200, 202),
            "error": _RPC,
            "extra": {406: "Accept must allow application/json"},
        },
        "DELETE": {"success": (200, 204), "error": _RPC},
        "GET": {"success": (), "error": _RPC, "extra": {405: "No server-sent event stream; use POST"}},
    },
    "stream": {"success": (), "extra": {101: "Switching to the WebSocket protocol"}},
    "openapi_json": {"response": {"type": "object", "required": ["openapi", "paths"]}},
}
ADAPTER_DOCS["mcp_tools_call"] = ADAPTER_DOCS["mcp_call"]
ADAPTER_DOCS.update({path: {"html": True} for path in VIEWER_PATHS})


def _register_openapi(app: Flask, rt: Runtime) -> None:
    @app.get(f"{PREFIX}/openapi.json")
    def openapi_json() -> Response:
        """This OpenAPI 3.1 document, generated from the routes and the tool registry."""
        return respond(openapi.build(app.url_map, app.view_functions, rt.version), 200)

    for endpoint, doc in ADAPTER_DOCS.items():
        if endpoint in app.view_functions:
            app.view_functions[endpoint].openapi = doc  # type: ignore[union-attr]


# -- live stream --------------------------------------------------------------------------------------


def _register_stream(app: Flask, rt: Runtime) -> None:
    sock = Sock(app)

    @sock.route(STREAM_PATH)
    def stream(ws: Any) -> None:
        """WebSocket: hello, then live events as JSON {type, seq, ts, record}; also answers
        {id, tool, args} calls (auth: bearer header, ?token= or a first {type:"auth"} message)."""
        remote = request.remote_addr  # read here, where the request context is

        def answer(raw: Any) -> dict[str, Any]:
            return _ws_request(rt, raw, remote)

        StreamSession(
            rt,
            ws,
            authenticated=g.get("stream_authenticated", False),
            query=query_args(),
            answer=answer,
            token=g.get("presented_token"),
        ).run()


def _ws_request(rt: Runtime, raw: Any, remote: str | None = None) -> dict[str, Any]:
    """Answer one client message (``remote``: the client's address, its write-rate bucket when
    auth is off): ``{id, tool, args}`` runs a tool through the registry and
    answers ``{id, ok: true, result}``; any failure answers the REST error envelope with the
    request's ``id`` (an unexpected exception too: the socket stays open)."""
    request_id = None
    try:
        message = parse_json(raw.encode() if isinstance(raw, str) else raw, "message")
        if not isinstance(message, dict):
            raise InvalidInput("message must be a JSON object")
        request_id = message.get("id")
        if message.get("type") == "ping":
            return {"id": request_id, "type": "pong"}
        if message.get("type") == "auth":  # already authenticated (or no secret): harmless
            return {"id": request_id, "type": "auth", "ok": True}
        rt.limiter.take(caller_key(principals.current(), rt.settings.secret, remote), f"ws {message.get('tool')}")
        result = registry.call(Ctx(rt, source="ws"), str(message.get("tool") or ""), message.get("args") or {})
        data, _status = registry.unwrap(result)
        return {"id": request_id, "ok": True, "result": data}
    except AppError as exc:
        return {"id": request_id, **registry.naming_the_lock_holder(rt, exc).to_dict()}
    except Exception as exc:
        fault = rt.db.app_error(exc)  # a storage failure the client can act on, as on REST
        if fault is not None:
            return {"id": request_id, **registry.naming_the_lock_holder(rt, fault).to_dict()}
        return {"id": request_id, **errors.unexpected(log, "unhandled error answering a WebSocket call")}


# -- the viewer page -------------------------------------------------------------------------------------


def viewer_csp(nonce: str) -> str:
    """Only our own nonce-tagged inline script and style run; data goes to this origin only."""
    return (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self' ws: wss:; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _register_viewer(app: Flask, rt: Runtime) -> None:
    # The page only learns whether to ask for a token; it never holds one or any data.
    template = VIEWER_FILE.read_text(encoding="utf-8").replace(AUTH_MARK, "required" if rt.settings.secret else "none")

    def viewer() -> Response:
        """The live viewer: one self-contained HTML page (it holds no data, so it opens without a
        token and asks for one when the server has a secret)."""
        nonce = secrets.token_urlsafe(18)
        response = Response(template.replace(NONCE_MARK, nonce), mimetype="text/html")
        response.headers["Content-Security-Policy"] = viewer_csp(nonce)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    viewer.public = True  # type: ignore[attr-defined]  # open by design (tests/test_security.py)
    for path in VIEWER_PATHS:  # the endpoint is the path, as for other open adapter routes
        app.add_url_rule(path, path, viewer, methods=["GET"])
