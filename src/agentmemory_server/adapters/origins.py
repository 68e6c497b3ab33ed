"""Which browser origins may call the server (CSRF and DNS-rebinding guard).

Requests without an ``Origin`` header (hooks, curl, MCP clients, the CLI) are not browsers and
pass. A browser origin passes when it is listed in VIEWER_ALLOWED_ORIGINS (``*`` opens the
server to every origin), or when it is loopback (the viewer on this machine), or — only on a
server bound beyond loopback, which must run behind AGENTMEMORY_SECRET — when it is the page's
own origin (the viewer served by this server, e.g. on a HuggingFace Space). A loopback origin
must also use this server's port: another local web app is not trusted. A loopback-bound
server never trusts a non-loopback origin even if its Host header matches: that is exactly what
a DNS-rebinding page looks like.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from agentmemory_server.kernel.auth import LOOPBACK_HOSTS as LOOPBACK
from agentmemory_server.kernel.auth import is_loopback

__all__ = ["LOOPBACK", "is_loopback", "origin_allowed", "parse_allowed"]


def parse_allowed(text: str | None) -> tuple[str, ...]:
    """VIEWER_ALLOWED_ORIGINS: comma- or space-separated origins, without trailing slashes."""
    return tuple(o.strip().rstrip("/") for o in (text or "").replace(",", " ").split() if o.strip())


def origin_allowed(origin: str | None, host_header: str | None, bind_host: str, allowed: Iterable[str] = ()) -> bool:
    if origin is None:
        return True
    allowed = tuple(allowed)
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    parts, host = urlsplit(origin), urlsplit("//" + (host_header or ""))
    hostname = parts.hostname
    if is_loopback(hostname):
        return _port(parts) == _port(host, default=80)
    if is_loopback(bind_host):
        return False
    return hostname is not None and hostname == host.hostname


def _port(parts, default: int | None = None) -> int | None:
    try:
        port = parts.port
    except ValueError:
        return -1
    if port is None:
        return {"http": 80, "https": 443}.get(parts.scheme, default)
    return port
