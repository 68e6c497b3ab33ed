"""What an agentmemory server last listed over MCP, kept on disk for the stdio proxy.

``agentmemory-mcp`` (``mcp_stdio.py``) lists tools, resources and prompts from the server; while
no server answers it lists what that server listed last, from here, so an agent started before
the server sees the server's own tools (``AGENTMEMORY_TOOLS=core`` on the server included).

One small JSON file per server URL, ``listing-<hash of the URL>.json`` under
``$XDG_CACHE_HOME/agentmemory-python/`` (else ``~/.cache/agentmemory-python/``). It holds the
server's answers at the listing routes and the server's address without user-info or query,
never a token or password. It is written atomically (a temporary file renamed over it), so a
reader never sees half of one. A file that is missing, unreadable, not JSON or not of this format
counts as no cache; a cache that cannot be written is logged and skipped. Nothing here raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FORMAT = 1
DIR_NAME = "agentmemory-python"
log = logging.getLogger("agentmemory.mcp_stdio")
_writing = threading.Lock()  # one read-modify-write at a time in this process


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/agentmemory-python``, else ``~/.cache/agentmemory-python`` (the XDG base
    directory rules: a relative XDG_CACHE_HOME is ignored)."""
    xdg = (os.environ if env is None else env).get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / DIR_NAME


def path_for(url: str) -> Path:
    """The cache file of the server at ``url`` (named by a hash: a URL may carry a password)."""
    return cache_dir() / f"listing-{hashlib.sha256(url.encode()).hexdigest()[:32]}.json"


def shown(url: str) -> str:
    """``url`` without user-info, query and fragment: which server it is, and nothing secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _load(path: Path, url: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        log.warning("ignoring the listing cache %s: %s", path, exc)
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or doc.get("server") != shown(url)
        or not isinstance(doc.get("listings"), dict)
    ):
        log.warning("ignoring the listing cache %s: not a listing cache of this format for %s", path, shown(url))
        return None
    return doc


def read(url: str, route: str) -> Any | None:
    """What the server at ``url`` last answered at ``route`` (``/mcp/tools``...), or None."""
    try:
        doc = _load(path_for(url), url)
    except RuntimeError as exc:  # no home directory to find the cache in
        log.warning("no listing cache: %s", exc)
        return None
    return None if doc is None else doc["listings"].get(route)


def write(url: str, route: str, answer: Any) -> None:
    """Keep ``answer`` as what the server at ``url`` answers at ``route``; the other routes'
    answers stay. Does nothing when the file already holds it."""
    try:
        path = path_for(url)
    except RuntimeError as exc:
        log.warning("cannot keep the server's listing: %s", exc)
        return
    with _writing:
        _write(path, url, route, answer)


def _write(path: Path, url: str, route: str, answer: Any) -> None:
    doc = _load(path, url)
    listings = dict(doc["listings"]) if doc is not None else {}
    if listings.get(route) == answer:
        return
    listings[route] = answer
    text = json.dumps({"format": FORMAT, "server": shown(url), "listings": listings}, ensure_ascii=False)
    tmp: str | None = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".listing-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        log.warning("cannot keep the server's listing in %s: %s", path, exc)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
