"""HTTP adapter: the checks before every request (its route's body limit, the browser origin,
auth, the write rate limit, a JSON body) and the headers after it, with the paths they treat
apart.

Apart from web.py (the app, its routes and its error rendering) because they are the server's
front door, read on their own when auth or the origin policy change: no route runs before
``guard`` let its request through.
"""

from __future__ import annotations

import hmac

from flask import Response, g, request

from agentmemory_server import errors
from agentmemory_server.adapters.origins import origin_allowed
from agentmemory_server.errors import AppError, Forbidden, Unauthorized
from agentmemory_server.kernel import principals
from agentmemory_server.kernel.limits import client_key
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.settings import Settings

PREFIX = "/agentmemory"
VIEWER_PATHS = ("/viewer", f"{PREFIX}/viewer")
# The viewer page holds no data (it asks for the token itself), so it is open like /livez.
OPEN_PATHS = {f"{PREFIX}/livez", *VIEWER_PATHS}
STREAM_PATH = "/stream/mem-live/viewer"
HOOKS_PATH = f"{PREFIX}/hooks/"
# Requests that count against the client's write rate limit (AGENTMEMORY_RATE_LIMIT).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def guard(rt: Runtime, allowed_origins: tuple[str, ...]) -> Response | None:
    """Before every request: the body limit of its route, the browser-origin policy, then auth
    (the WebSocket may authenticate with its first message instead), the rate limit and JSON.

    A refusal here comes before anything read the body: it is read and dropped first (up to a
    bound), or a client still sending a big body sees a reset connection instead of the 401/429."""
    try:
        return _checks(rt, allowed_origins)
    except AppError:
        if request.method in WRITE_METHODS and not discard_body():
            g.close_connection = True
        raise


def _checks(rt: Runtime, allowed_origins: tuple[str, ...]) -> Response | None:
    request.max_content_length = body_limit(rt.settings, request.path)
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request.host, rt.settings.host, allowed_origins):
        raise Forbidden(
            f"browser origin {origin!r} may not call this server; list it in VIEWER_ALLOWED_ORIGINS to allow it",
            code=errors.ORIGIN_NOT_ALLOWED,
        )
    if request.method == "OPTIONS":
        return Response(status=204)  # a CORS preflight; headers are added after the request
    if request.path in OPEN_PATHS:
        return None
    header = request.headers.get("Authorization")
    token = request.args.get("token") if request.path == STREAM_PATH else None
    if request.path == STREAM_PATH and not (header or token) and is_upgrade():
        g.stream_authenticated = False  # the first message must be {"type":"auth","token":...}
        return None
    presented = None
    if rt.settings.secret:
        presented = token or (header[7:].strip() if header and header[:7].lower() == "bearer " else None)
        principal = principals.authenticate(rt, presented)
        if principal is None:
            rt.deny("missing token" if not (header or token) else "wrong token", request.path, request.remote_addr)
            raise unauthorized()
        g.principal_reset = principals.CALLER.set(principal)
        g.presented_token = presented  # an open WebSocket checks it again (a revocation)
    g.stream_authenticated = True
    if request.method in WRITE_METHODS:
        rt.limiter.take(client_key(presented, request.remote_addr), f"{request.method} {request.path}")
    _require_json_body()
    return None


def body_limit(settings: Settings, path: str) -> int:
    """The largest body a route accepts: imports and raw agent hooks carry more than a tool call."""
    if path == f"{PREFIX}/import":
        return settings.max_import_bytes
    if path.startswith(HOOKS_PATH):
        return settings.hook_max_body_bytes
    return settings.max_body_bytes


def forget_caller(_exc: BaseException | None) -> None:
    reset = g.pop("principal_reset", None)
    if reset is not None:
        principals.CALLER.reset(reset)


def _require_json_body() -> None:
    """Upstream 0.9.30: a write with a body must say it is JSON. A browser can send a "simple"
    cross-site request (form or text/plain, no preflight) to a local server; it cannot send
    application/json without asking first."""
    if request.method not in WRITE_METHODS:
        return
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not (request.content_length or chunked):
        return
    _refuse_encoded_body()
    mimetype = request.mimetype or ""
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return
    raise AppError(
        f"send the body as 'Content-Type: application/json' (got {mimetype or 'no Content-Type'!r})",
        code=errors.UNSUPPORTED_MEDIA_TYPE,
        status=415,
    )


def _refuse_encoded_body() -> None:
    """We read bodies as they arrive: a compressed one would fail as "not valid UTF-8", and a
    plain one labelled compressed would be taken as it is. Either way the header is wrong, so
    say so."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return
    raise AppError(
        f"send the body uncompressed (Content-Encoding {encoding!r} is not accepted)",
        code=errors.UNSUPPORTED_MEDIA_TYPE,
        status=415,
        details={"header": "Content-Encoding"},
    )


def security_headers(response: Response, allowed_origins: tuple[str, ...]) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    origin = request.headers.get("Origin", "").rstrip("/")
    # CORS only for origins listed in VIEWER_ALLOWED_ORIGINS: closed by default.
    if origin and ("*" in allowed_origins or origin in allowed_origins):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Content-Type, Mcp-Session-Id, MCP-Protocol-Version"
        )
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
        response.headers.add("Vary", "Origin")
    return response


def is_upgrade() -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def unauthorized() -> Unauthorized:
    return Unauthorized(
        "unauthorized: send 'Authorization: Bearer <token>' (AGENTMEMORY_SECRET, the token in the server's "
        "secret file, ~/.agentmemory/secret by default, or an API token from `agentmemory tokens create`)"
    )


def check_auth(secret: str | None, header: str | None, token: str | None = None) -> None:
    """Bearer auth against the server's secret alone, with a constant-time comparison; a no-op
    when no secret is configured."""
    if not secret:
        return
    presented = header or (f"Bearer {token}" if token else "")
    if not hmac.compare_digest(presented.encode("utf-8", "replace"), f"Bearer {secret}".encode()):
        raise unauthorized()


# A body over the limit is still read (and thrown away) up to this many bytes before the 413 is
# sent: a client that is still sending when the server answers and closes sees a reset
# connection (EPIPE) instead of the answer. Past it the connection is closed after the answer.
DISCARD_LIMIT = 256 * 1024 * 1024
DISCARD_CHUNK = 1 << 16


def discard_body(limit: int = DISCARD_LIMIT) -> bool:
    """Read and drop what is left of the request body (at most ``limit`` bytes); True when the
    whole body was read, so the connection can stay open."""
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return True
    remaining = request.content_length
    read = 0
    while read < limit:
        want = DISCARD_CHUNK if remaining is None else min(DISCARD_CHUNK, remaining - read)
        if want <= 0:
            return True
        try:
            chunk = stream.read(want)
        except (OSError, ValueError):
            return False
        if not chunk:
            return True
        read += len(chunk)
    return False
