"""The one error model shared by REST, MCP, the WebSocket and the CLI, and the catalogue of
every error code a client can see.

Code raises an ``AppError`` subclass; each adapter has exactly one renderer that turns it into
its transport's envelope, and every envelope carries the same body::

    {"ok": false, "error": "<human message>", "code": "<stable_snake_case>", "status": 400,
     "details": {...}}          # details only when there is something to add

- REST: that body with ``status`` as the HTTP status;
- WebSocket: that body plus the request's ``id``;
- MCP tools: a result with ``isError: true`` whose text is that body;
- JSON-RPC (``POST /mcp``): a JSON-RPC error whose ``data`` is that body.

An unexpected error (a bug) is the 500 ``internal_error`` of ``unexpected``, whose
``details.errorId`` is also on the log line of its traceback.

``error`` stays a plain string because upstream agentmemory clients print ``body.error``.
Callers may add keys but must not remove these. Every ``code`` is declared in ``CATALOGUE``
(README's error-code table is generated from it and a test checks the code uses no other).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    meaning: str


CATALOGUE: dict[str, ErrorCode] = {}


def _declare(code: str, status: int, meaning: str) -> str:
    if code in CATALOGUE:
        raise ValueError(f"duplicate error code {code!r}")
    CATALOGUE[code] = ErrorCode(code, status, meaning)
    return code


# -- generic codes (one per AppError subclass) ----------------------------------------------------
INVALID_INPUT = _declare(
    "invalid_input", 400, "A field is missing, malformed or out of range; `details.field` names it."
)
UNAUTHORIZED = _declare("unauthorized", 401, "No valid `Authorization: Bearer <token>`.")
FORBIDDEN = _declare("forbidden", 403, "The caller may not do this.")
NOT_FOUND = _declare("not_found", 404, "No such record or route.")
CONFLICT = _declare("conflict", 409, "The request conflicts with the stored state.")
CAPACITY_EXCEEDED = _declare("capacity_exceeded", 409, "A hard cap was reached; nothing was evicted to make room.")
PAYLOAD_TOO_LARGE = _declare(
    "payload_too_large", 413, "The request body is over the limit; `details` names the setting."
)
EXPORT_TOO_LARGE = _declare(
    "export_too_large",
    413,
    "GET /export would answer more than AGENTMEMORY_MAX_EXPORT_BYTES; `details` say where it stopped "
    "(page it with maxSessions/offset, or stream it with `agentmemory export`).",
)
UNAVAILABLE = _declare(
    "unavailable",
    503,
    "A dependency is down (PostgreSQL that does not answer: the message names why, with `Retry-After`) or the "
    "server is stopping; retry later.",
)
INTERNAL_ERROR = _declare(
    "internal_error",
    500,
    "A bug: the server log has the traceback on the line naming `details.errorId` (`errorId=<id>`).",
)

# -- transport ------------------------------------------------------------------------------------
METHOD_NOT_ALLOWED = _declare("method_not_allowed", 405, "The route exists but not with this HTTP method.")
NOT_ACCEPTABLE = _declare("not_acceptable", 406, "`/mcp` answers application/json only; send a matching Accept.")
HTTP_ERROR = _declare(
    "http_error",
    400,
    "Another HTTP-level refusal (the message says which), also a request the HTTP parser refused before the app "
    "ran, with the parser's status (a request line over 4094 bytes 414, too many or too long headers 431).",
)
UNSUPPORTED_MEDIA_TYPE = _declare(
    "unsupported_media_type",
    415,
    "A request body must be sent as `Content-Type: application/json` (upstream 0.9.30), uncompressed (no "
    "`Content-Encoding`).",
)
ORIGIN_NOT_ALLOWED = _declare("origin_not_allowed", 403, "A browser origin not listed in VIEWER_ALLOWED_ORIGINS.")
DATABASE_BUSY = _declare(
    "database_busy",
    503,
    "The database stayed locked past the busy timeout; retry. While an import or migration holds it, "
    "`details.heldBy` names it (`operation`, `since`, `host`, `pid`).",
)
DATABASE_CLOSED = _declare("database_closed", 503, "The server is shutting down.")
SCHEMA_TOO_NEW = _declare("schema_too_new", 503, "The database was written by a newer version of this server.")
DISK_FULL = _declare(
    "disk_full",
    507,
    "The disk holding the database is full (or below AGENTMEMORY_DISK_RESERVE_MB free): nothing was written. "
    "Reads still work; writes resume by themselves once space is freed (`Retry-After`).",
)
STORAGE_READ_ONLY = _declare(
    "storage_read_only", 503, "The database's filesystem is read-only: writes are refused, reads still work."
)
STORAGE_IO_ERROR = _declare(
    "storage_io_error", 503, "The disk reported an I/O error; nothing was written. Retry later."
)
DATABASE_DAMAGED = _declare(
    "database_damaged",
    503,
    "The database file failed its integrity check: writes are refused until it is restored "
    "(`agentmemory restore --from-backup`); `details.fix` says what to do.",
)
RATE_LIMITED = _declare(
    "rate_limited", 429, "Too many writes from this client (AGENTMEMORY_RATE_LIMIT); retry after `Retry-After` seconds."
)
TOO_MANY_CONNECTIONS = _declare(
    "too_many_connections",
    503,
    "AGENTMEMORY_MAX_CONNECTIONS connections are open; the server answered at once and closed (`Retry-After`).",
)
REQUEST_TIMEOUT = _declare(
    "request_timeout", 408, "The request head or body did not arrive within AGENTMEMORY_REQUEST_TIMEOUT seconds."
)
TOO_MANY_VIEWERS = _declare("too_many_viewers", 409, "AGENTMEMORY_MAX_VIEWERS live streams are already open.")
FEATURE_UNAVAILABLE = _declare(
    "feature_unavailable", 501, "The resource or prompt needs a feature this server does not have."
)
# JSON-RPC protocol failures on POST /mcp (the JSON-RPC error code is in `error.code`).
INVALID_JSON = _declare("invalid_json", 400, "JSON-RPC parse error: the body is not UTF-8 JSON.")
INVALID_REQUEST = _declare("invalid_request", 400, "Not a valid JSON-RPC 2.0 request.")
METHOD_NOT_FOUND = _declare("method_not_found", 404, "No such JSON-RPC method in the negotiated protocol version.")
HEADER_MISMATCH = _declare("header_mismatch", 400, "MCP headers disagree with the JSON-RPC body.")
UNSUPPORTED_PROTOCOL_VERSION = _declare(
    "unsupported_protocol_version", 400, "An MCP protocol version this server does not speak."
)
SESSION_EXPIRED = _declare("session_expired", 404, "Unknown `Mcp-Session-Id`: initialize again.")

# -- tools, resources, prompts -----------------------------------------------------------------------
UNKNOWN_TOOL = _declare("unknown_tool", 404, "No tool (or no MCP tool) by that name.")
RESOURCE_NOT_FOUND = _declare("resource_not_found", 404, "No MCP resource matches the URI.")
PROMPT_NOT_FOUND = _declare("prompt_not_found", 404, "No MCP prompt by that name.")

# -- access ---------------------------------------------------------------------------------------------
AGENT_SCOPE_UNSET = _declare(
    "agent_scope_unset", 403, "AGENTMEMORY_AGENT_SCOPE=isolated without AGENT_ID: reads fail closed."
)
AGENT_SCOPE_VIOLATION = _declare(
    "agent_scope_violation", 403, "Isolated agent scope: another agent's id was asked for."
)
TOKEN_RIGHTS = _declare("token_rights", 403, "The caller's API token lacks the right this call needs.")
TOKEN_PROJECT = _declare("token_project", 403, "The caller's API token is not valid for that project.")
SESSION_OWNED_BY_OTHER_AGENT = _declare(
    "session_owned_by_other_agent", 409, "Isolated agent scope: the session belongs to another agent."
)

# -- records -------------------------------------------------------------------------------------------
SESSION_NOT_FOUND = _declare("session_not_found", 404, "No session with that id (visible to the caller).")
MEMORY_NOT_FOUND = _declare("memory_not_found", 404, "No memory with that id.")
LESSON_NOT_FOUND = _declare("lesson_not_found", 404, "No live lesson with that id.")
ACTION_NOT_FOUND = _declare("action_not_found", 404, "No action with that id.")
NODE_NOT_FOUND = _declare("node_not_found", 404, "No knowledge-graph node with that id.")
NO_OBSERVATIONS = _declare("no_observations", 409, "The session has no observations to work from.")
DEPENDENCY_CYCLE = _declare("dependency_cycle", 409, "The action edge would make the dependencies circular.")
CONFIRMATION_REQUIRED = _declare("confirmation_required", 400, "A bulk delete of everything needs `confirm: true`.")

# -- slots ----------------------------------------------------------------------------------------------
SLOT_NOT_FOUND = _declare("slot_not_found", 404, "No slot with that label in that scope.")
SLOT_EXISTS = _declare("slot_exists", 409, "A slot with that label already exists in that scope.")
SLOT_READ_ONLY = _declare("slot_read_only", 403, "The slot is read-only.")
SLOT_TOO_LARGE = _declare(
    "slot_too_large", 413, "The slot's content would exceed its sizeLimit; `details` has the sizes."
)

# -- connecting coding agents (`agentmemory connect`, `agentmemory service`) --------------------------
CLIENT_CONFIG_UNREADABLE = _declare(
    "client_config_unreadable",
    400,
    "An agent's config file is not plain JSON/TOML/YAML (comments, syntax errors); nothing was written.",
)
CLIENT_CONFIG_CONFLICT = _declare(
    "client_config_conflict", 409, "A file `connect` would create already exists and is not agentmemory's."
)
CLIENT_SCOPE_UNSUPPORTED = _declare(
    "client_scope_unsupported", 400, "The agent has no config file for that --scope (the message names the one it has)."
)
CONFIRMATION_DECLINED = _declare(
    "confirmation_declined", 400, "The change was shown but not applied (declined, or --yes missing off a terminal)."
)

# -- working memory -------------------------------------------------------------------------------------
RESERVED_KEY = _declare("reserved_key", 400, "Working-memory keys starting with `_` are reserved.")
TASK_NOT_FOUND = _declare("task_not_found", 404, "The working-memory scope has no task state.")
TASK_CONFLICT = _declare("task_conflict", 409, "The task state changed during the update; retry.")
TASK_VERSION_CONFLICT = _declare("task_version_conflict", 409, "`expectedVersion` is not the stored version.")
CHECKPOINT_NOT_FOUND = _declare("checkpoint_not_found", 404, "No checkpoint with that id in that scope.")
WORKING_MEMORY_UNAVAILABLE = _declare("working_memory_unavailable", 503, "The Redis working-memory backend failed.")

# -- capture and images ---------------------------------------------------------------------------------
CAPTURE_INBOX_FULL = _declare(
    "capture_inbox_full", 503, "Storing an event failed and the capture inbox is full; resend it later."
)
CAPTURE_EVENT_NOT_FOUND = _declare("capture_event_not_found", 404, "No event with that id in the capture inbox.")
IMAGE_NOT_FOUND = _declare("image_not_found", 404, "No image with that id (sha256) in the image store.")
IMAGE_EVICTED = _declare(
    "image_evicted", 410, "The image store quota (AGENTMEMORY_IMAGE_STORE_MAX_BYTES) evicted this image's file."
)

# -- embeddings and imports ---------------------------------------------------------------------------
EMBEDDING_FAILED = _declare("embedding_failed", 503, "The embedding provider failed; search answers with BM25.")
MODEL_CHECKSUM = _declare("model_checksum", 503, "The bundled embedding model does not match its checksum.")
ANTIGRAVITY_NOT_FOUND = _declare("antigravity_not_found", 404, "ANTIGRAVITY_DIR holds no brain/ folder.")
CONVERSATION_NOT_FOUND = _declare("conversation_not_found", 404, "No Antigravity conversation with that id.")
TRANSFER_RUNNING = _declare(
    "transfer_running", 409, "Another import or migration of this store is running; `details` say which and since when."
)
IMPORT_FAILED = _declare(
    "import_failed", 500, "A bulk import stopped part-way (its parsing process died); run it again to finish it."
)


class AppError(Exception):
    """``retry_after`` (seconds) becomes a ``Retry-After`` header on REST and
    ``details.retryAfterSeconds`` on every transport."""

    status = 500
    code = INTERNAL_ERROR
    retry_after: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status: int | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        if retry_after is not None:
            self.retry_after = retry_after
        self.details = details or {}
        if self.retry_after is not None:
            self.details.setdefault("retryAfterSeconds", self.retry_after)

    def to_dict(self) -> dict[str, Any]:
        return envelope(self.status, self.message, self.code, self.details)


class InvalidInput(AppError):
    """Bad input from the caller (400). ``field`` names the offending argument."""

    status = 400
    code = INVALID_INPUT

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any):
        details = kwargs.pop("details", None) or {}
        if field:
            details = {"field": field, **details}
        super().__init__(message, details=details, **kwargs)


class Unauthorized(AppError):
    status = 401
    code = UNAUTHORIZED


class Forbidden(AppError):
    status = 403
    code = FORBIDDEN


class NotFound(AppError):
    status = 404
    code = NOT_FOUND


class Conflict(AppError):
    status = 409
    code = CONFLICT


class CapacityExceeded(AppError):
    """A hard cap was hit. Nothing is evicted to make room; the caller must act."""

    status = 409
    code = CAPACITY_EXCEEDED


class PayloadTooLarge(AppError):
    status = 413
    code = PAYLOAD_TOO_LARGE


class Unavailable(AppError):
    status = 503
    code = UNAVAILABLE


class StoreOutage(Unavailable):
    """The store does not answer (a PostgreSQL server stopped or restarting, its database
    dropped, or the connection ended under the request): 503 ``unavailable`` like any other
    dependency that is down, with ``Retry-After``. Raised by storage only, so that a background
    job tells the store's outage apart from a model provider's or Redis's ``unavailable`` (the
    same code): the job waits for the store, at no cost, rather than failing."""


class InsufficientStorage(AppError):
    """The disk is full: nothing was written; retry once space is freed."""

    status = 507
    code = DISK_FULL
    retry_after = 30


class RateLimited(AppError):
    status = 429
    code = RATE_LIMITED


def is_database_busy(exc: BaseException | None) -> TypeGuard[AppError]:
    """Whether ``exc`` says another writer (a replace import, another process) held the
    database's write lock past this one's wait: not a failure of the work that ran into it,
    which waits and goes on once the lock is free (each caller says how it waits)."""
    return isinstance(exc, AppError) and exc.code == DATABASE_BUSY


def is_store_outage(exc: BaseException | None) -> TypeGuard[StoreOutage]:
    """Whether ``exc`` says the store does not answer (``StoreOutage``), whatever ran into it."""
    return isinstance(exc, StoreOutage)


def waits_for_the_store(exc: BaseException | None) -> TypeGuard[AppError]:
    """Whether ``exc`` is a wait for the store, not a failure of the work that ran into it: its
    write lock held past the wait (``is_database_busy``) or the store not answering
    (``is_store_outage``). A background job that meets it waits and goes on, using up none of
    its tries."""
    return is_database_busy(exc) or is_store_outage(exc)


# Every message and detail a client sees passes this filter; ``wiring.py`` installs the privacy
# filter (errors.py sits below kernel/privacy.py, so it cannot import it). An error message may
# quote input ("unknown tool 'sk-...'"), and must not hand a secret back or into a log.
_redact: Callable[[Any], Any] = lambda value: value  # noqa: E731 - replaced at start-up


def redact_with(fn: Callable[[Any], Any]) -> None:
    """Set the filter applied to every error message and its details (decoded JSON in, out)."""
    global _redact
    _redact = fn


def envelope(status: int, message: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The error body every transport carries (see the module docstring)."""
    body: dict[str, Any] = {"ok": False, "error": _redact(message), "code": code, "status": status}
    if details:
        body["details"] = _redact(details)
    return body


def unexpected(log: logging.Logger, what: str, *args: Any) -> dict[str, Any]:
    """Log the exception being handled (``what % args``, then its traceback) and return the
    500 ``internal_error`` envelope that names it. Called from an ``except`` block.

    The answer and the log line share a short random ``errorId`` (``details.errorId``, and
    ``errorId=<id>`` in the log line and the message, which clients print): on a busy server
    an operator finds the traceback of the request a user reports by that id alone."""
    error_id = secrets.token_hex(6)
    log.exception(what + " errorId=%s", *args, error_id, stacklevel=2)  # the caller's line, not this one
    message = f"internal error; see the server log for errorId={error_id}"
    return envelope(500, message, INTERNAL_ERROR, {"errorId": error_id})


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """Envelope for errors that do not start as an AppError (HTTP routing, body limits)."""
    return envelope(status, message, code)


class LastError:
    """A part's last error and whether it has recovered since, as /health shows it: ``lastError``
    (the message, kept after recovery so an outage can still be read about), ``lastErrorAt``
    (when it happened) and ``recoveredAt`` (when the part next succeeded; None while it is still
    failing). /status alerts only on an error not recovered from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.message: str | None = None
        self.at: str | None = None
        self.recovered_at: str | None = None

    def failed(self, message: str, when: str | None = None) -> None:
        with self._lock:
            self.message, self.at, self.recovered_at = message[:300], when or _now_iso(), None

    def succeeded(self, when: str | None = None) -> None:
        """A success: the last error, if still standing, is recovered from now."""
        if self.message is not None and self.recovered_at is None:  # a cheap test on every success
            with self._lock:
                if self.message is not None and self.recovered_at is None:
                    self.recovered_at = when or _now_iso()

    @property
    def active(self) -> bool:
        """An error not recovered from."""
        return self.message is not None and self.recovered_at is None

    def fields(self) -> dict[str, str | None]:
        with self._lock:
            return {"lastError": self.message, "lastErrorAt": self.at, "recoveredAt": self.recovered_at}


def unrecovered(section: dict[str, Any]) -> str | None:
    """A health section's ``lastError`` when it has not recovered from it (see ``LastError``)."""
    return None if section.get("recoveredAt") else section.get("lastError")


def _now_iso() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
