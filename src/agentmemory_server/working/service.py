"""Working-memory storage: the scope, value encoding, checkpoint snapshots, the SQLite backend
and the ``working_memory`` subsystem that picks a backend and falls back loudly.

Backends (``SqliteBackend`` here, ``RedisBackend`` in working_redis.py) expose the same methods
and make every one of them atomic on their own store: one SQLite transaction, or one Redis
MULTI/EXEC block or Lua script. They deal in JSON text for user values so a value is encoded
exactly once (``encode_value``) and decoded into a fresh copy on every read.

Fallback rule: with ``WORKING_MEMORY_BACKEND=redis``, an unreachable Redis at start-up or a
connection failure later switches the process to the SQLite backend for good (until restart).
The switch is logged at ERROR and reported in every working-memory response
(``usingFallback``), in /health (status ``degraded``) and by ``diagnose()``. It never switches
back on its own: flipping back would hide whatever was written to SQLite during the outage, so
a session's data would silently split across two stores.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agentmemory_server.errors import CapacityExceeded, Conflict, InvalidInput, NotFound, PayloadTooLarge
from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.storage import codec
from agentmemory_server.storage.interfaces import Database

log = logging.getLogger("agentmemory.working")

DEFAULT_SCOPE_PART = "default"
MAX_VALUE_BYTES = 1_048_576
MAX_DEPTH = 64
SWEEP_SECONDS = 60.0
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class Scope:
    """Where a working-memory operation applies: project > agent instance > session."""

    project: str
    agent: str
    session: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project, self.agent, self.session)

    def public(self) -> dict[str, str]:
        return {"project": self.project, "agentId": self.agent, "sessionId": self.session}


class BackendDown(Exception):
    """The backend's server cannot be reached (connection refused, reset or timed out)."""


# -- values ---------------------------------------------------------------------------------------


def _check_json(value: Any, path: str, depth: int) -> None:
    field = path.split(".")[0].split("[")[0]
    if depth > MAX_DEPTH:
        raise InvalidInput(f"'{field}' is nested deeper than {MAX_DEPTH} levels", field=field)
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"'{path}' is {value}, which JSON cannot represent", field=field)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                # json.dumps would turn 1 into "1": the value would not come back as stored.
                raise InvalidInput(f"'{path}' has a non-string key {k!r}; JSON object keys are strings", field=field)
            _check_json(item, f"{path}.{k}", depth + 1)
        return
    raise InvalidInput(
        f"'{path}' is a {type(value).__name__}, which is not JSON "
        "(use strings, numbers, booleans, null, lists and objects)",
        field=field,
    )


def encode_value(value: Any, field: str = "value") -> str:
    """Validate, privacy-strip and encode a value for storage (tuples become lists).

    :raise InvalidInput: not representable as JSON. :raise PayloadTooLarge: over 1 MiB.
    """
    _check_json(value, field, 0)
    text = codec.dumps(strip_private_data(json.loads(json.dumps(value, allow_nan=False))))
    if len(text.encode("utf-8")) > MAX_VALUE_BYTES:
        raise PayloadTooLarge(f"'{field}' is larger than {MAX_VALUE_BYTES} bytes as JSON", details={"field": field})
    return text


# -- checkpoints: one snapshot format for both backends ------------------------------------------


def build_snapshot(
    items: list[tuple[str, str, float | None]], task: dict | None, task_version: int, scratch: list[dict]
) -> dict[str, Any]:
    """The stored body of a checkpoint: live keys with their absolute expiry, task, scratchpad."""
    return {
        "format": SNAPSHOT_FORMAT,
        "keys": [list(row) for row in items],
        "task": task,
        "taskVersion": task_version,
        "scratchpad": scratch,
    }


def checkpoint_meta(checkpoint_id: str, description: str, created_at: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "checkpointId": checkpoint_id,
        "description": description,
        "createdAt": created_at,
        "keys": len(snapshot["keys"]),
        "scratchpadEntries": len(snapshot["scratchpad"]),
        "hasTaskState": snapshot["task"] is not None,
    }


def restore_rows(
    snapshot: dict[str, Any], now: float, max_keys: int
) -> tuple[list[tuple[str, str, float | None]], int]:
    """The keys a restore writes (already-expired ones are not resurrected) and how many were
    dropped. Raises before anything changes if they would not fit the key capacity."""
    rows = [(k, v, e) for k, v, e in snapshot["keys"] if e is None or e > now]
    if len(rows) > max_keys:
        raise CapacityExceeded(
            f"the checkpoint holds {len(rows)} live keys but the scope allows "
            f"{max_keys} (WORKING_MEMORY_MAX_KEYS_PER_SESSION); nothing was restored",
            details={"keys": len(rows), "limit": max_keys},
        )
    return rows, len(snapshot["keys"]) - len(rows)


def restored(
    meta: dict[str, Any], rows: list, dropped: int, snapshot: dict[str, Any], task_version: int | None
) -> dict[str, Any]:
    return {
        "checkpoint": meta,
        "restoredKeys": len(rows),
        "droppedExpiredKeys": dropped,
        "scratchpadEntries": len(snapshot["scratchpad"]),
        "hasTaskState": snapshot["task"] is not None,
        "taskVersion": task_version,
    }


def capacity_error(scope: Scope, max_keys: int) -> CapacityExceeded:
    return CapacityExceeded(
        f"working memory of session {scope.session!r} already holds {max_keys} keys "
        "(WORKING_MEMORY_MAX_KEYS_PER_SESSION); delete some or raise the limit. Nothing was "
        "evicted.",
        details={"limit": max_keys, **scope.public()},
    )


def checkpoint_missing(checkpoint_id: str) -> NotFound:
    return NotFound(f"checkpoint {checkpoint_id!r} not found in this scope", code="checkpoint_not_found")


# -- the SQLite backend ---------------------------------------------------------------------------


class SqliteBackend:
    """Working memory in the server's SQLite file (wm_* tables); every method is one
    transaction (reads: one statement or one read transaction)."""

    name = "sqlite"

    def __init__(self, database: Database, clock_iso: Callable[[], str]):
        self.db = database
        self._iso = clock_iso

    def _tx(self, operation: str, scope: Scope):
        return self.db.transaction(f"working_{operation}", agent_id=scope.agent)

    def set_key(self, scope: Scope, key: str, value: str, expires_at: float | None, now: float, max_keys: int) -> bool:
        with self._tx("set", scope) as tx:
            exists = tx.working.kv_get(scope.key, key, now) is not None
            if not exists and tx.working.kv_count(scope.key, now) >= max_keys:
                raise capacity_error(scope, max_keys)
            tx.working.kv_put_many(scope.key, [(key, value, expires_at)], self._iso())
        return not exists

    def get_key(self, scope: Scope, key: str, now: float) -> tuple[str, float | None] | None:
        return self.db.reader().working.kv_get(scope.key, key, now)

    def items(
        self, scope: Scope, now: float, pattern: str | None = None, values: bool = True
    ) -> list[tuple[str, str | None, float | None]]:
        return self.db.reader().working.kv_items(scope.key, now, pattern=pattern, values=values)

    def delete_key(self, scope: Scope, key: str, now: float) -> bool:
        with self._tx("delete", scope) as tx:
            return tx.working.kv_delete(scope.key, key, now)

    def delete_glob(self, scope: Scope, pattern: str, now: float) -> list[str]:
        with self._tx("delete_pattern", scope) as tx:
            return tx.working.kv_delete_glob(scope.key, pattern, now)

    def clear_keys(self, scope: Scope, now: float) -> int:
        with self._tx("clear", scope) as tx:
            return tx.working.kv_clear(scope.key, now)

    def task_get(self, scope: Scope) -> tuple[dict, int] | None:
        row = self.db.reader().working.task_get(scope.key)
        return (json.loads(row[0]), row[1]) if row else None

    def task_write(self, scope: Scope, mutate: Callable[[dict | None, int], dict]) -> tuple[dict, int]:
        """Read-modify-write of the task under the write lock, committed by compare-and-set."""
        with self._tx("task", scope) as tx:
            row = tx.working.task_get(scope.key)
            current, version = (json.loads(row[0]), row[1]) if row else (None, 0)
            task = mutate(current, version)
            if not tx.working.task_put(scope.key, codec.dumps(task), version + 1, version if row else None):
                raise Conflict("the task state changed during the update; retry", code="task_conflict")
        return task, version + 1

    def task_clear(self, scope: Scope) -> bool:
        with self._tx("task_clear", scope) as tx:
            return tx.working.task_delete(scope.key)

    def scratch_append(self, scope: Scope, entry: dict, cap: int) -> tuple[int, int]:
        with self._tx("scratchpad_append", scope) as tx:
            return tx.working.scratch_append(scope.key, entry["content"], entry["timestamp"], cap)

    def scratch_get(self, scope: Scope, limit: int | None) -> list[dict]:
        rows = self.db.reader().working.scratch_list(scope.key, limit)
        return [{"content": c, "timestamp": t} for c, t in rows]

    def scratch_clear(self, scope: Scope) -> int:
        with self._tx("scratchpad_clear", scope) as tx:
            return tx.working.scratch_clear(scope.key)

    def checkpoint_create(
        self, scope: Scope, checkpoint_id: str, description: str, now: float, keep: int, created_at: str
    ) -> tuple[dict, list[str]]:
        # BEGIN IMMEDIATE holds the writer lock: no write lands between the reads below, so
        # the snapshot is one point in time.
        with self._tx("checkpoint_create", scope) as tx:
            task = tx.working.task_get(scope.key)
            snapshot = build_snapshot(
                tx.working.kv_items(scope.key, now),
                json.loads(task[0]) if task else None,
                task[1] if task else 0,
                [{"content": c, "timestamp": t} for c, t in tx.working.scratch_list(scope.key)],
            )
            meta = checkpoint_meta(checkpoint_id, description, created_at, snapshot)
            tx.working.checkpoint_insert(scope.key, checkpoint_id, codec.dumps(meta), codec.dumps(snapshot))
            pruned = tx.working.checkpoint_prune(scope.key, keep)
        return meta, pruned

    def checkpoint_restore(self, scope: Scope, checkpoint_id: str, now: float, max_keys: int) -> dict[str, Any]:
        with self._tx("checkpoint_restore", scope) as tx:
            found = tx.working.checkpoint_get(scope.key, checkpoint_id)
            if found is None:
                raise checkpoint_missing(checkpoint_id)
            meta, snapshot = json.loads(found[0]), json.loads(found[1])
            rows, dropped = restore_rows(snapshot, now, max_keys)
            tx.working.kv_clear(scope.key, now)
            tx.working.kv_put_many(scope.key, rows, self._iso())
            current = tx.working.task_get(scope.key)
            tx.working.task_delete(scope.key)
            version = None
            if snapshot["task"] is not None:
                # A new version number (never the snapshot's) so a stale expectedVersion
                # taken before the restore cannot match by accident.
                version = max(current[1] if current else 0, snapshot["taskVersion"]) + 1
                tx.working.task_put(scope.key, codec.dumps(snapshot["task"]), version, None)
            tx.working.scratch_clear(scope.key)
            tx.working.scratch_put_many(scope.key, [(e["content"], e["timestamp"]) for e in snapshot["scratchpad"]])
            tx.record_change(
                "working/" + "/".join(scope.key), f"working memory of {scope.session!r} restored to {checkpoint_id}"
            )
        return restored(meta, rows, dropped, snapshot, version)

    def checkpoint_list(self, scope: Scope) -> list[dict]:
        return [json.loads(meta) for _seq, meta in self.db.reader().working.checkpoint_list(scope.key)]

    def checkpoint_delete(self, scope: Scope, checkpoint_id: str) -> bool:
        with self._tx("checkpoint_delete", scope) as tx:
            return tx.working.checkpoint_delete(scope.key, checkpoint_id)

    def counts(self, scope: Scope, now: float) -> dict[str, int]:
        return self.db.reader().working.counts(scope.key, now)

    def sweep(self, now: float) -> int:
        with self.db.transaction("working_sweep") as tx:
            return tx.working.kv_sweep(now)

    def session_scopes(self, session: str) -> list[Scope]:
        return [Scope(p, a, session) for p, a in self.db.reader().working.session_scopes(session)]

    def close(self) -> None:
        """The database belongs to the runtime; nothing to release."""


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
        from agentmemory_server.working.redis_backend import RedisBackend

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
        from agentmemory_server.working.redis_backend import probe

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
