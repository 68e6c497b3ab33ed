"""MCP over HTTP: the protocol revisions this server speaks, and the sessions of the
handshake-era ones (``Mcp-Session-Id``).

Apart from mcp_http.py (the routes, the JSON-RPC methods and the transport) because a session
is state shared by every request process of every node, through the store, while the rest of
MCP over HTTP answers one request from what it carries.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agentmemory_server.errors import AppError
from agentmemory_server.kernel import scopes

log = logging.getLogger("agentmemory.mcp")

HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first
MODERN_VERSIONS = ("2026-07-28",)
SUPPORTED_VERSIONS = HANDSHAKE_VERSIONS + MODERN_VERSIONS
BATCH_VERSIONS = ("2025-03-26",)  # batching was added in 2025-03-26 and removed in 2025-06-18
DEFAULT_VERSION = "2025-03-26"  # what the spec says to assume when a request names none


class Sessions:
    """Handshake-era sessions. A session only remembers the negotiated version (for batching), so
    its id carries it: 24 random hex digits, then the version's eight digits (2025-03-26:
    ``20250326``). Any request process of any node reads an id another one issued; gunicorn's
    workers and a team's nodes share no memory, and a table per process answered 404 to every
    request that reached another process (the client's new initialize, landing anywhere, did not
    help). An id that names no version we speak is unknown (404: initialize again).

    DELETE ends a session everywhere: the ended id is a record in the shared store
    (``MCP_ENDED_SESSIONS``), which every process reads for a request that carries an id it has
    not seen ended (the spec says an ended session MUST get 404, on whichever process a request
    lands). The newest ``capacity`` ended ids are kept, in the store and in each process's memory;
    without a store (``db`` None) the process's memory is all there is.
    """

    def __init__(self, capacity: int = 1000, db: Any = None, now: Callable[[], str] | None = None):
        self.capacity = capacity
        self.db = db
        self.now = now
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, version: str) -> str:
        return uuid.uuid4().hex[:24] + version.replace("-", "")

    def version(self, sid: str) -> str | None:
        """The session's version, or None when the id is not one of ours or was ended."""
        digits = sid[-8:]
        version = f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
        if len(sid) != 32 or version not in HANDSHAKE_VERSIONS:
            return None
        with self._lock:
            if sid in self._ended:
                return None
        if self._ended_elsewhere(sid):
            self._remember(sid)
            return None
        return version

    def end(self, sid: str) -> bool:
        if self.version(sid) is None:
            return False
        if self.db is not None:
            self.db.write("mcp_session_end", lambda tx: self._record_end(tx, sid))
        self._remember(sid)
        return True

    def _ended_elsewhere(self, sid: str) -> bool:
        if self.db is None:
            return False
        try:
            return self.db.reader().records.get(scopes.MCP_ENDED_SESSIONS, sid) is not None
        except AppError as exc:
            # The store being down must not take MCP down with it: this process's own view stands.
            log.debug("could not read the ended MCP sessions: %s", exc)
            return False

    def _record_end(self, tx: Any, sid: str) -> None:
        assert self.now is not None
        tx.records.set(scopes.MCP_ENDED_SESSIONS, sid, {"sessionId": sid, "endedAt": self.now()}, now=self.now())
        over = tx.records.count(scopes.MCP_ENDED_SESSIONS) - self.capacity
        if over > 0:
            oldest = tx.records.query(scopes.MCP_ENDED_SESSIONS, order_by=[("endedAt", False)], limit=over)
            for record in oldest:
                tx.records.delete(scopes.MCP_ENDED_SESSIONS, record["sessionId"])

    def _remember(self, sid: str) -> None:
        with self._lock:
            self._ended[sid] = None
            while len(self._ended) > self.capacity:
                self._ended.popitem(last=False)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "ended": len(self._ended), "versions": list(SUPPORTED_VERSIONS)}


def sessions_of(rt: Any) -> Sessions:
    sessions = rt.services.get("mcp_sessions")
    if sessions is None:
        sessions = rt.services.setdefault("mcp_sessions", Sessions(db=rt.db, now=rt.clock.iso))
    return sessions
