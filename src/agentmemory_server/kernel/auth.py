"""Who may call the server: the bearer token, on by default.

Like upstream agentmemory 0.9.30, auth is on out of the box. The token is ``AGENTMEMORY_SECRET``
when set; otherwise the one in ``AGENTMEMORY_SECRET_FILE`` (``<data dir>/secret``), generated
with mode 0600 on first start so the server, the CLI, the MCP wrapper and ``connect`` all read
the same token without anyone copying it around. ``AGENTMEMORY_AUTH=off`` turns auth off, and
is refused on an interface other than loopback unless ``AGENTMEMORY_ALLOW_OPEN_BIND=true``.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmemory_server.kernel.settings import Settings, SettingsError

log = logging.getLogger("agentmemory.auth")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str | None) -> bool:
    return host is not None and (host in LOOPBACK_HOSTS or host.startswith("127."))


def read_secret_file(path: Path) -> str | None:
    """The token stored at ``path``, or None when there is none."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token or None


def _create_secret_file(path: Path) -> str:
    """Write a new random token to ``path`` (0600, never over an existing file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return read_secret_file(path) or _create_secret_file(path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    log.warning(
        "auth is on: generated a token in %s (send it as 'Authorization: Bearer <token>'; "
        "set AGENTMEMORY_SECRET to choose your own)",
        path,
    )
    return token


def resolve(settings: Settings, *, create: bool = True) -> Settings:
    """The settings with ``secret`` set to the token the server enforces (None: auth off).

    :raise SettingsError: auth off on a non-loopback interface without AGENTMEMORY_ALLOW_OPEN_BIND.
    """
    if settings.auth == "off" and not settings.secret:
        if not is_loopback(settings.host) and not settings.allow_open_bind:
            raise SettingsError(
                f"AGENTMEMORY_AUTH=off with HOST={settings.host}: anyone who reaches the port could read and "
                "write every memory. Bind 127.0.0.1, turn auth on, or set AGENTMEMORY_ALLOW_OPEN_BIND=true."
            )
        return settings
    if settings.secret:
        return settings
    token = read_secret_file(settings.secret_path)
    if token is None and create:
        token = _create_secret_file(settings.secret_path)
    return settings.replace(secret=token)


def client_token(settings: Settings) -> str | None:
    """The token a local client should send: AGENTMEMORY_SECRET, else the secret file's."""
    return settings.secret or read_secret_file(settings.secret_path)


class Denials:
    """Refused requests, counted and reported without letting a flood of them flood the log.

    A client with a wrong or missing token is usually a hook script that exits 0 on a 401, so the
    server is the only place the lost data can show up: every denial is counted (in /health and
    the viewer), logged at most once per ``LOG_EVERY`` seconds with the count since the last line,
    and written to the audit log at most once per ``AUDIT_EVERY`` seconds. Tokens are never logged.
    """

    LOG_EVERY = 10.0
    AUDIT_EVERY = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.total = 0
        self.by_reason: dict[str, int] = {}
        self.last: dict[str, Any] | None = None
        self._since_log = 0
        self._since_audit = 0
        self._logged_at = float("-inf")
        self._audited_at = float("-inf")

    def record(self, reason: str, path: str, remote: str | None, wall_time: str) -> dict[str, Any] | None:
        """Count one denial; returns what to audit now (an aggregate), or None."""
        with self._lock:
            now = self._clock()
            self.total += 1
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            self.last = {"at": wall_time, "reason": reason, "path": path, "remote": remote}
            self._since_log += 1
            self._since_audit += 1
            if now - self._logged_at >= self.LOG_EVERY:
                log.warning(
                    "refused %d request(s) without a valid token (latest: %s %s from %s); clients must "
                    "send 'Authorization: Bearer <token>'",
                    self._since_log,
                    reason,
                    path,
                    remote or "?",
                )
                self._logged_at, self._since_log = now, 0
            if now - self._audited_at < self.AUDIT_EVERY:
                return None
            summary = {"count": self._since_audit, **self.last}
            self._audited_at, self._since_audit = now, 0
            return summary

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"denied": self.total, "byReason": dict(self.by_reason), "lastDenied": self.last}
