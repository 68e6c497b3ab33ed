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
from pathlib import Path

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
