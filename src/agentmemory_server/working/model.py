"""The working-memory model both backends share: the scope, value encoding, checkpoint
snapshots and the errors a backend raises.

Backends (``SqliteBackend`` in sqlite_backend.py, ``RedisBackend`` in redis_backend.py) expose
the same methods and make every one of them atomic on their own store: one SQLite transaction,
or one Redis MULTI/EXEC block or Lua script. They deal in JSON text for user values so a value
is encoded exactly once (``encode_value``) and decoded into a fresh copy on every read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, CapacityExceeded, InvalidInput, NotFound, PayloadTooLarge
from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.storage import codec

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


@dataclass(frozen=True)
class ScopeCopy:
    """Everything one scope holds, as stored (JSON text), for moving it between backends."""

    keys: list[tuple[str, str, float | None]]  # live (key, value JSON, absolute expiry)
    task: tuple[str, int] | None  # (task JSON, version)
    scratch: list[dict]  # {content, timestamp}, oldest first
    checkpoints: list[tuple[str, str, str]]  # (checkpoint id, meta JSON, snapshot JSON), oldest first

    @property
    def empty(self) -> bool:
        return not (self.keys or self.task or self.scratch or self.checkpoints)


class BackendDown(Exception):
    """The backend's server cannot be reached (connection refused, reset or timed out)."""


class FallbackEnded(Exception):
    """A write to the database's working memory found the store's fallback mark gone: the
    fallback was healed and working memory lives in Redis again (the process had not followed
    yet). Nothing was written; the subsystem follows and writes to Redis."""


def reason_of(exc: Exception) -> str:
    """What a backend's failure says, for a log line or an error naming it."""
    return exc.message if isinstance(exc, AppError) else str(exc)


# -- an export's working-memory entry (memory/working_transfer.py), as a backend stores it --------


def entry_scope(entry: dict[str, Any]) -> Scope:
    return Scope(entry["project"], entry["agentId"], entry["sessionId"])


def entry_copy(entry: dict[str, Any]) -> ScopeCopy:
    """An export entry (values decoded) as a backend stores it (JSON text)."""
    task = entry.get("task")
    return ScopeCopy(
        keys=[(item["key"], codec.dumps(item["value"]), item.get("expiresAt")) for item in entry.get("keys", [])],
        task=(codec.dumps(task["state"]), task["version"]) if task else None,
        scratch=[{"content": e["content"], "timestamp": e["timestamp"]} for e in entry.get("scratchpad", [])],
        checkpoints=[
            (c["id"], codec.dumps(c["meta"]), codec.dumps(c["snapshot"])) for c in entry.get("checkpoints", [])
        ],
    )


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
    return NotFound(f"checkpoint {checkpoint_id!r} not found in this scope", code=errors.CHECKPOINT_NOT_FOUND)
