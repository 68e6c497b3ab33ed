"""The one error model shared by REST, MCP, WebSocket and the CLI.

Domain code raises an ``AppError`` subclass; each adapter has exactly one renderer that turns it
into its own envelope. The JSON body is always::

    {"ok": false, "error": "<human message>", "code": "<stable_snake_case>", "status": 400,
     "details": {...}}          # details only when there is something to add

``error`` stays a plain string because upstream agentmemory clients print ``body.error``.
Callers may add keys but must not remove these.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None, status: int | None = None
    ):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error": self.message, "code": self.code, "status": self.status}
        if self.details:
            body["details"] = self.details
        return body


class InvalidInput(AppError):
    """Bad input from the caller (400). ``field`` names the offending argument."""

    status = 400
    code = "invalid_input"

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any):
        details = kwargs.pop("details", None) or {}
        if field:
            details = {"field": field, **details}
        super().__init__(message, details=details, **kwargs)


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class CapacityExceeded(AppError):
    """A hard cap was hit. Nothing is evicted to make room; the caller must act."""

    status = 409
    code = "capacity_exceeded"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class Unavailable(AppError):
    status = 503
    code = "unavailable"


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """Envelope for errors that do not start as AppError (HTTP routing, body limits)."""
    return AppError(message, code=code, status=status).to_dict()
