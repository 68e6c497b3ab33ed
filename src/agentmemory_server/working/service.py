"""The ``working_memory`` subsystem: it picks a backend and falls back loudly.

Fallback rule: with ``WORKING_MEMORY_BACKEND=redis``, an unreachable Redis at start-up or a
connection failure later switches the process to the SQLite backend for good (until restart).
The switch is logged at ERROR and reported in every working-memory response
(``usingFallback``), in /health (status ``degraded``) and by ``diagnose()``. It never switches
back on its own: flipping back would hide whatever was written to SQLite during the outage, so
a session's data would silently split across two stores.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentmemory_server.working.model import SWEEP_SECONDS, BackendDown, Scope
from agentmemory_server.working.redis_backend import RedisBackend, probe
from agentmemory_server.working.sqlite_backend import SqliteBackend

log = logging.getLogger("agentmemory.working")


# -- the subsystem ---------------------------------------------------------------------------------


def mask_url(url: str | None) -> str | None:
    """A Redis URL without its password, for health and logs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class WorkingMemory:
    """The working-memory subsystem: the active backend, the SQLite fallback and the sweep."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.settings = rt.settings
        self.configured: str = self.settings.working_memory_backend
        self.sqlite = SqliteBackend(rt.db, rt.clock.iso)
        self.backend: Any = self.sqlite
        self.fallback_reason: str | None = None
        self.fallback_since: str | None = None
        self._lock = threading.Lock()
        if self.configured == "redis":
            self._connect_redis()
        rt.every(SWEEP_SECONDS, "working_memory_sweep", self.sweep)

    def _connect_redis(self) -> None:

        try:
            self.backend = RedisBackend(
                self.settings.redis_url, self.settings.working_memory_redis_prefix, audit=self._audit
            )
            log.info("working memory: Redis backend at %s", mask_url(self.settings.redis_url))
        except BackendDown as exc:
            self._fall_back(None, exc)

    @property
    def using_fallback(self) -> bool:
        return self.fallback_reason is not None

    def describe(self) -> dict[str, Any]:
        """The part of every response that says where the data lives."""
        out: dict[str, Any] = {"backend": self.backend.name, "usingFallback": self.using_fallback}
        if self.using_fallback:
            out["warning"] = (
                f"Redis is unavailable ({self.fallback_reason}); working memory is "
                f"served from the SQLite fallback since {self.fallback_since} "
                "until the server restarts"
            )
        return out

    def run(self, op: Callable[[Any], Any]) -> Any:
        """Run ``op(backend)``; if Redis is down, switch to SQLite (once, loudly) and rerun."""
        backend = self.backend
        try:
            return op(backend)
        except BackendDown as exc:
            if backend is self.sqlite:
                raise
            self._fall_back(backend, exc)
            return op(self.sqlite)

    def _fall_back(self, failed: Any, exc: Exception) -> None:
        with self._lock:
            if self.fallback_reason is None:
                self.fallback_reason = str(exc)[:300] or type(exc).__name__
                self.fallback_since = self.rt.clock.iso()
                log.error(
                    "working memory: Redis at %s is unavailable (%s); using the SQLite "
                    "fallback until restart. Working memory written to Redis before now is "
                    "not visible through this server until then.",
                    mask_url(self.settings.redis_url),
                    self.fallback_reason,
                )
            self.backend = self.sqlite
        if failed is not None:
            failed.close()

    def _audit(self, operation: str, scope: Scope, message: str) -> None:
        """Audit row for a destructive Redis operation (SQLite ones audit in their transaction)."""
        with self.rt.db.transaction(f"working_{operation}", agent_id=scope.agent) as tx:
            tx.record_change("working/" + "/".join(scope.key), message)

    def sweep(self) -> int:
        """Delete expired keys (reads already ignore them); returns how many were removed."""
        now = self.rt.clock.time()
        removed = self.sqlite.sweep(now)
        if self.backend is not self.sqlite:
            removed += self.run(lambda b: b.sweep(now) if b is not self.sqlite else 0)
        return removed

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "degraded" if self.using_fallback else "ok",
            "backend": self.backend.name,
            "configuredBackend": self.configured,
            "usingFallback": self.using_fallback,
        }
        if self.configured == "redis":
            body["redisUrl"] = mask_url(self.settings.redis_url)
        if self.using_fallback:
            body.update(
                fallbackReason=self.fallback_reason,
                fallbackSince=self.fallback_since,
                recovery="stays on SQLite until restart",
            )
        return body

    def diagnose(self) -> list[dict[str, Any]]:
        check = {"name": "working_memory_backend", "category": "working_memory", "fixable": False}
        if self.configured == "sqlite":
            return [{**check, "status": "pass", "message": "SQLite backend (the server's database file)", "fix": None}]
        if not self.using_fallback:
            return [
                {
                    **check,
                    "status": "pass",
                    "message": f"Redis backend at {mask_url(self.settings.redis_url)}",
                    "fix": None,
                },
                self.backend.eviction_check(),
            ]

        back = probe(self.settings.redis_url)
        where = mask_url(self.settings.redis_url)
        if back:
            return [
                {
                    **check,
                    "status": "warn",
                    "message": f"Redis at {where} answers again, but working memory stays on the SQLite "
                    f"fallback (since {self.fallback_since}) until the server restarts",
                    "fix": "restart the server to return to Redis; working memory written during the "
                    "outage stays in SQLite (wm_* tables) and is not copied to Redis",
                }
            ]
        return [
            {
                **check,
                "status": "fail",
                "message": f"WORKING_MEMORY_BACKEND=redis but Redis at {where} is unreachable "
                f"({self.fallback_reason}); using the SQLite fallback since {self.fallback_since}",
                "fix": "start Redis or correct REDIS_URL, then restart the server",
            }
        ]

    def close(self) -> None:
        if self.backend is not self.sqlite:
            self.backend.close()
