"""Working memory in the export document: the ``working`` section.

Working memory lives in its own tables (``wm_*``), not in ``kv_store``, so the record export
missed it: a round trip or an ``agentmemory migrate`` dropped every session's keys, task state,
scratchpad and checkpoints without a word. The section holds one entry per scope (project >
agent > session) with everything the scope holds, the stored JSON decoded:

    {"project", "agentId", "sessionId",
     "keys": [{"key", "value", "expiresAt"}],       expiresAt: epoch seconds or null
     "task": {"state", "version"} | null,
     "scratchpad": [{"content", "timestamp"}],      oldest first
     "checkpoints": [{"id", "meta", "snapshot"}]}   oldest first

It is read from where working memory lives: the database's working-memory tables
(``WORKING_MEMORY_BACKEND=sqlite``, the default, and the Redis backend's fallback), or Redis
through the working-memory subsystem (``outside_database``), which also writes an import there.
Keys that have expired are not exported. ``merge`` lets the file's keys, task and scratchpad
win in each scope it holds, ``skip`` keeps what a scope already has; checkpoints are added by id
in both. ``replace`` makes working memory what the file holds: every scope is emptied first
(``wipe``), those the file does not hold included, as the records it does not hold are gone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from agentmemory_server.errors import InvalidInput
from agentmemory_server.storage import codec
from agentmemory_server.storage.interfaces import UnitOfWork, WMScope

SECTION = "working"
# The scope the Redis fallback's mark lives in (working/sqlite_backend.FALLBACK_SCOPE): state of
# this store, not anyone's working memory, so it never travels.
_RESERVED_SCOPE = ("", "", "")
RESERVED_SCOPE = _RESERVED_SCOPE  # the store's own state kept there too (``transfer_lease``)


def scope_key(scope: WMScope) -> str:
    """The key a scope's entry is counted and checked under."""
    return "/".join(scope)


def export_entries(store: UnitOfWork, now: float, keep_agent: Callable[[str], bool]) -> Iterator[dict[str, Any]]:
    """One entry per scope holding working memory (of the agents ``keep_agent`` accepts)."""
    for scope in store.working.held_scopes():
        if scope == _RESERVED_SCOPE or not keep_agent(scope[1]):
            continue
        yield _entry(store, scope, now)


def _entry(store: UnitOfWork, scope: WMScope, now: float) -> dict[str, Any]:
    working = store.working
    checkpoints = []
    for _seq, meta in working.checkpoint_list(scope):
        checkpoint_id = json.loads(meta)["checkpointId"]
        found = working.checkpoint_get(scope, checkpoint_id)
        if found is not None:
            checkpoints.append((checkpoint_id, found[0], found[1]))
    return make_entry(
        scope,
        keys=[(key, value, expires) for key, value, expires in working.kv_items(scope, now) if value is not None],
        task=working.task_get(scope),
        scratchpad=[{"content": c, "timestamp": t} for c, t in working.scratch_list(scope)],
        checkpoints=checkpoints,
    )


def make_entry(
    scope: WMScope,
    *,
    keys: list[tuple[str, str, float | None]],
    task: tuple[str, int] | None,
    scratchpad: list[dict[str, Any]],
    checkpoints: list[tuple[str, str, str]],
) -> dict[str, Any]:
    """One scope's entry from what a backend stores (values, task, meta and snapshots as JSON
    text): the one place the entry's shape is written, for the database and for Redis."""
    return {
        "project": scope[0],
        "agentId": scope[1],
        "sessionId": scope[2],
        "keys": [{"key": key, "value": json.loads(value), "expiresAt": expires} for key, value, expires in keys],
        "task": {"state": json.loads(task[0]), "version": task[1]} if task else None,
        "scratchpad": [{"content": e["content"], "timestamp": e["timestamp"]} for e in scratchpad],
        "checkpoints": [
            {"id": checkpoint_id, "meta": json.loads(meta), "snapshot": json.loads(snapshot)}
            for checkpoint_id, meta, snapshot in checkpoints
        ],
    }


def outside_database(rt: Any) -> Any | None:
    """The working-memory subsystem when it keeps working memory outside the database (Redis),
    else None. Looked up by name: the subsystem is a feature above this one, and an export or
    import must read and write working memory where it lives, not where the database would keep it."""
    service = rt.services.get("working_memory")
    return service if service is not None and service.outside_database() else None


def on_redis_fallback(rt: Any) -> Any | None:
    """The working-memory subsystem when it is configured for Redis but serves from the database
    (the fallback): a replace import must then also empty Redis, once it answers again."""
    service = rt.services.get("working_memory")
    return service if service is not None and service.on_fallback() else None


def before_replace(rt: Any) -> None:
    """Before a replace import's transaction while the store is on the Redis fallback: wait
    until every process has followed the fallback (a few seconds at its start), so none writes to
    Redis after the import, which empties Redis when the fallback is healed."""
    service = on_redis_fallback(rt)
    if service is not None:
        service.await_followers()


def check_still_on_fallback(rt: Any, tx: UnitOfWork) -> None:
    """In an import's transaction that writes working memory to the database's tables: if this
    process serves it from the Redis fallback, refuse once the fallback was healed (a process
    that has not yet followed the heal must not write a scope Redis holds no copy of)."""
    service = on_redis_fallback(rt)
    if service is not None:
        service.check_still_on_fallback(tx)


# -- import --------------------------------------------------------------------------------------


def _fail(i: int, what: str) -> InvalidInput:
    return InvalidInput(f"exportData.working[{i}]{what}", field=f"exportData.working[{i}]")


def _check_list(entry: dict, i: int, name: str, fields: dict[str, tuple[type, ...]]) -> None:
    items = entry.get(name, [])
    if not isinstance(items, list):
        raise _fail(i, f".{name} must be a list")
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise _fail(i, f".{name}[{n}] must be an object")
        for field, types in fields.items():
            if not isinstance(item.get(field), types) or isinstance(item.get(field), bool):
                raise _fail(i, f".{name}[{n}].{field} is missing or of the wrong type")


def entries(export: dict[str, Any]) -> Iterator[tuple[str, str, dict]]:
    """(SECTION, scope key, entry) of every working-memory entry; raises InvalidInput naming the
    entry and field."""
    section = export.get(SECTION) or []
    if not isinstance(section, list):
        raise InvalidInput(f"exportData.{SECTION} must be a list", field=f"exportData.{SECTION}")
    for i, entry in enumerate(section):
        if not isinstance(entry, dict):
            raise _fail(i, " must be an object")
        scope: WMScope = (entry.get("project", ""), entry.get("agentId", ""), entry.get("sessionId", ""))
        if not all(isinstance(part, str) and part for part in scope):
            raise _fail(i, ": project, agentId and sessionId must be non-empty strings")
        _check_list(entry, i, "keys", {"key": (str,), "expiresAt": (int, float, type(None))})
        if any(item["key"].startswith("_") or "value" not in item for item in entry.get("keys", [])):
            raise _fail(i, ".keys: every key needs a value, and keys starting with '_' are reserved")
        _check_list(entry, i, "scratchpad", {"content": (str,), "timestamp": (str,)})
        _check_list(entry, i, "checkpoints", {"id": (str,), "meta": (dict,), "snapshot": (dict,)})
        task = entry.get("task")
        if task is not None and not (
            isinstance(task, dict) and isinstance(task.get("version"), int) and "state" in task
        ):
            raise _fail(i, ".task must be null or {state, version}")
        yield SECTION, scope_key(scope), entry


def wipe(tx: UnitOfWork, now: float) -> int:
    """Empty every scope of the database's working memory (a ``replace`` import); returns how
    many scopes held any. The Redis fallback's mark is the store's state, not working memory: kept."""
    working, emptied = tx.working, 0
    for scope in working.held_scopes():
        if scope == _RESERVED_SCOPE:
            continue
        working.kv_clear(scope, now)
        working.task_delete(scope)
        working.scratch_clear(scope)
        working.checkpoint_prune(scope, 0)
        emptied += 1
    return emptied


def write(tx: UnitOfWork, entry: dict[str, Any], strategy: str, *, now: float, stamp: str) -> None:
    """Write one scope's entry (``strategy`` merge or replace: the file wins; skip: the scope
    keeps what it has)."""
    scope: WMScope = (entry["project"], entry["agentId"], entry["sessionId"])
    working, keep_ours = tx.working, strategy == "skip"
    keys = [
        (item["key"], codec.dumps(item["value"]), item.get("expiresAt"))
        for item in entry.get("keys", [])
        if not (keep_ours and working.kv_get(scope, item["key"], now) is not None)
    ]
    working.kv_put_many(scope, keys, stamp)
    task = entry.get("task")
    if task is not None and not (keep_ours and working.task_get(scope) is not None):
        working.task_delete(scope)
        working.task_put(scope, codec.dumps(task["state"]), task["version"], None)
    scratchpad = [(e["content"], e["timestamp"]) for e in entry.get("scratchpad", [])]
    if scratchpad and not (keep_ours and working.scratch_count(scope)):
        working.scratch_clear(scope)  # the file's pad whole: appending would repeat it on a re-run
        working.scratch_put_many(scope, scratchpad)
    for checkpoint in entry.get("checkpoints", []):
        if working.checkpoint_get(scope, checkpoint["id"]) is None:
            meta, snapshot = codec.dumps(checkpoint["meta"]), codec.dumps(checkpoint["snapshot"])
            working.checkpoint_insert(scope, checkpoint["id"], meta, snapshot)
