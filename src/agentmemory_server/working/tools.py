"""Working memory: a scratch area for a live agent session (SPEC §8).

Every operation is addressed by a scope, project > agent instance > session: ``sessionId`` is
required, ``project`` defaults to ``default`` and ``agentId`` to AGENT_ID (else ``default``).
A scope holds JSON values under keys with a TTL, one task state, a scratchpad and checkpoints.
The tools below are thin: they resolve the scope, validate and encode, and run one atomic
backend operation through the ``working_memory`` subsystem (working_service.py), which also
owns the Redis -> SQLite fallback. Every response says which backend answered
(``backend``, ``usingFallback``).

Each MCP tool is also ``POST /agentmemory/working/<name>`` with the same JSON arguments; the
read-only views answer GET with query parameters.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import Conflict, Forbidden, InvalidInput, NotFound
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.access import agent_filter, isolated
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.registry import (
    ID_PATTERN,
    SESSION_ID,
    Ctx,
    Reply,
    anything,
    boolean,
    integer,
    number,
    obj,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.util import iso, truncate
from agentmemory_server.memory import memories
from agentmemory_server.working.model import DEFAULT_SCOPE_PART, Scope, encode_value
from agentmemory_server.working.service import WorkingMemory

log = logging.getLogger("agentmemory.working")

TASK_STATUSES = ("pending", "in_progress", "blocked", "completed", "failed", "cancelled")
MAX_TTL_SECONDS = 10 * 365 * 86400

SCOPE_ARGS = {
    "sessionId": SESSION_ID,
    "project": string("Project (default 'default')", max_length=512, pattern=ID_PATTERN),
    "agentId": string("Agent instance (default AGENT_ID, else 'default')", max_length=128, pattern=ID_PATTERN),
}
KEY = string("Key; keys starting with '_' are reserved", max_length=512, pattern=ID_PATTERN)
PATTERN = string(
    "Glob over key names, SQLite GLOB rules: * any run, ? one character, [abc], "
    "[a-z], [^abc]; case-sensitive; no backslash escape (match a literal * with [*])",
    max_length=512,
)


def wm_params(required: tuple[str, ...] = (), **properties: dict) -> dict:
    return params(["sessionId", *required], **SCOPE_ARGS, **properties)


# -- shared plumbing ---------------------------------------------------------------------------------


def service(ctx: Ctx) -> WorkingMemory:
    return ctx.rt.services["working_memory"]


def resolve_scope(ctx: Ctx, args: dict[str, Any]) -> Scope:
    """The scope of a call. In isolated agent scope the agent is always AGENT_ID; asking for
    another agent's working memory is refused rather than silently redirected."""
    settings = ctx.rt.settings
    requested = args.get("agentId")
    if requested == "*":
        raise InvalidInput("'agentId' must name one agent instance, not '*'", field="agentId")
    if isolated(ctx):
        own = agent_filter(ctx)
        if requested and requested != own:
            raise Forbidden(
                f"AGENTMEMORY_AGENT_SCOPE=isolated: working memory of agent {requested!r} "
                "is not accessible from this server",
                code=errors.AGENT_SCOPE_VIOLATION,
            )
        agent = own or DEFAULT_SCOPE_PART
    else:
        agent = requested or settings.agent_id or DEFAULT_SCOPE_PART
    project = (args.get("project") or "").strip() or DEFAULT_SCOPE_PART
    return Scope(project, agent, args["sessionId"])


def user_key(args: dict[str, Any]) -> str:
    key = args.get("key")
    if not key:
        raise InvalidInput("missing required field 'key'", field="key")
    if key.startswith("_"):
        raise InvalidInput(
            f"key {key!r} is reserved: keys starting with '_' belong to the server",
            field="key",
            code=errors.RESERVED_KEY,
        )
    return key


def reply(ctx: Ctx, scope: Scope, body: dict[str, Any], status: int | None = None) -> Any:
    data = {"success": True, **body, "scope": scope.public(), **service(ctx).describe()}
    return Reply(data, status) if status else data


def expiry_fields(expires_at: float | None, now: float) -> dict[str, Any]:
    if expires_at is None:
        return {"expiresAt": None, "ttlRemainingSeconds": None}
    return {
        "expiresAt": iso(datetime.fromtimestamp(expires_at, tz=UTC)),
        "ttlRemainingSeconds": round(max(expires_at - now, 0.0), 3),
    }


def _run(ctx: Ctx, op) -> Any:
    return service(ctx).run(op)


# -- keys ----------------------------------------------------------------------------------------------


@tool(
    "memory_working_set",
    wm_params(
        ("key", "value"),
        key=KEY,
        value=anything("Any JSON value (null is not a value: use memory_working_delete)"),
        ttlSeconds=integer(
            "Seconds until the key expires; 0 = never; default WORKING_MEMORY_DEFAULT_TTL_SECONDS",
            minimum=0,
            maximum=MAX_TTL_SECONDS,
        ),
    ),
    http=[("POST", "/working/set")],
)
def memory_working_set(ctx: Ctx, args: dict) -> Any:
    """Set a working-memory key of a session to a JSON value, with an optional TTL. A full
    scope is a 409 (nothing is evicted); keys starting with '_' are reserved."""
    scope, key = resolve_scope(ctx, args), user_key(args)
    value = encode_value(args["value"])
    settings, now = ctx.rt.settings, ctx.rt.clock.time()
    ttl = args.get("ttlSeconds", settings.working_memory_default_ttl_seconds)
    expires_at = round(now + ttl, 3) if ttl else None
    created = _run(ctx, lambda b: b.set_key(scope, key, value, expires_at, now, settings.working_memory_max_keys))
    return reply(ctx, scope, {"key": key, "created": created, **expiry_fields(expires_at, now)})


@tool(
    "memory_working_get",
    wm_params(
        operation=string(
            "get one key, check it exists, list key names, or get all values",
            enum=("get", "exists", "list", "all"),
            default="get",
        ),
        key=KEY,
        default=anything("Returned (with found=false) when the key is missing or expired"),
        pattern={**PATTERN, "description": "For list: " + PATTERN["description"], "default": "*"},
    ),
    http=[("GET", "/working/get"), ("POST", "/working/get")],
    right="read",
)
def memory_working_get(ctx: Ctx, args: dict) -> Any:
    """Read working memory: one key (with a default), whether a key exists, key names matching
    a glob, or every key and value of the session."""
    scope, now, op = resolve_scope(ctx, args), ctx.rt.clock.time(), args["operation"]
    if op in ("get", "exists"):
        key = user_key(args)
        found = _run(ctx, lambda b: b.get_key(scope, key, now))
        if op == "exists":
            return reply(ctx, scope, {"key": key, "exists": found is not None})
        value = json.loads(found[0]) if found else args.get("default")
        return reply(
            ctx,
            scope,
            {"key": key, "found": found is not None, "value": value, **expiry_fields(found[1] if found else None, now)},
        )
    if op == "list":
        rows = _run(ctx, lambda b: b.items(scope, now, args["pattern"], values=False))
        return reply(ctx, scope, {"pattern": args["pattern"], "keys": [k for k, _v, _e in rows], "count": len(rows)})
    rows = _run(ctx, lambda b: b.items(scope, now))
    return reply(ctx, scope, {"values": {k: json.loads(v) for k, v, _e in rows}, "count": len(rows)})


@tool(
    "memory_working_delete",
    wm_params(
        operation=string(
            "key: one key; pattern: every key matching a glob; clear: every key "
            "(task state, scratchpad and checkpoints are kept)",
            enum=("key", "pattern", "clear"),
            default="key",
        ),
        key=KEY,
        pattern=PATTERN,
        confirm=boolean("Required for a pattern of only '*'s (every key)", default=False),
    ),
    http=[("POST", "/working/delete")],
)
def memory_working_delete(ctx: Ctx, args: dict) -> Any:
    """Delete working-memory keys: one key, every key matching a glob, or all keys (clear keeps
    task state, scratchpad and checkpoints and returns how many keys it removed)."""
    scope, now, op = resolve_scope(ctx, args), ctx.rt.clock.time(), args["operation"]
    if op == "key":
        key = user_key(args)
        deleted = _run(ctx, lambda b: b.delete_key(scope, key, now))
        return reply(ctx, scope, {"key": key, "deleted": deleted})
    if op == "clear":
        return reply(ctx, scope, {"cleared": _run(ctx, lambda b: b.clear_keys(scope, now))})
    pattern = args.get("pattern")
    if not pattern:
        raise InvalidInput("operation 'pattern' needs a non-empty 'pattern'", field="pattern")
    if set(pattern) == {"*"} and not args["confirm"]:
        raise InvalidInput(
            f"pattern {pattern!r} deletes every key; send confirm=true to do that",
            field="confirm",
            code=errors.CONFIRMATION_REQUIRED,
        )
    deleted = _run(ctx, lambda b: b.delete_glob(scope, pattern, now))
    return reply(ctx, scope, {"pattern": pattern, "deleted": len(deleted), "keys": deleted})


# -- task state ----------------------------------------------------------------------------------------

TASK_FIELDS = {
    "taskId": string("Task id (set)", max_length=256, pattern=ID_PATTERN),
    "description": string("What the task is (set)", min_length=None, max_length=10_000),
    "status": string("Task status", enum=TASK_STATUSES),
    "currentStep": integer("Current step", minimum=0, maximum=1_000_000),
    "totalSteps": integer("Total steps (set)", minimum=0, maximum=1_000_000),
    "progressPercent": number("Progress; clamped to 0-100. Default: currentStep / totalSteps"),
    "context": obj("Free-form JSON context (set)"),
    "contextUpdate": obj("Keys merged into the context (update_progress)"),
    "advance": integer("Add this to currentStep (update_progress)", minimum=-1_000_000, maximum=1_000_000),
    "expectedVersion": integer("Only apply if the task state is at this version (else 409)", minimum=0),
}


def _progress(args: dict[str, Any], task: dict[str, Any], steps_changed: bool) -> float:
    if args.get("progressPercent") is not None:
        value = args["progressPercent"]
        if not math.isfinite(value):
            raise InvalidInput("'progressPercent' must be a finite number", field="progressPercent")
    elif task["status"] == "completed":
        value = 100
    elif steps_changed and task["totalSteps"] > 0:
        value = task["currentStep"] * 100 / task["totalSteps"]
    else:
        value = task.get("progressPercent", 0)
    return round(min(max(float(value), 0.0), 100.0), 2)


def _check_version(args: dict[str, Any], version: int) -> None:
    expected = args.get("expectedVersion")
    if expected is not None and expected != version:
        raise Conflict(
            f"task state is at version {version}, not {expected}; re-read and retry",
            code=errors.TASK_VERSION_CONFLICT,
            details={"version": version, "expected": expected},
        )


def _new_task(ctx: Ctx, args: dict[str, Any]):
    if not args.get("taskId"):
        raise InvalidInput("operation 'set' needs 'taskId'", field="taskId")
    stamp = ctx.rt.clock.iso()
    context = json.loads(encode_value(args.get("context") or {}, "context"))

    def mutate(current: dict | None, version: int) -> dict:
        _check_version(args, version)
        same = current is not None and current.get("taskId") == args["taskId"]
        task = {
            "taskId": args["taskId"],
            "description": strip_text(args.get("description") or ""),
            "status": args.get("status") or "in_progress",
            "currentStep": args.get("currentStep", 0),
            "totalSteps": args.get("totalSteps", 0),
            "startedAt": current["startedAt"] if same and current is not None else stamp,
            "updatedAt": stamp,
            "context": context,
        }
        task["progressPercent"] = _progress(args, task, True)
        return task

    return mutate


def _progress_update(ctx: Ctx, args: dict[str, Any]):
    stamp = ctx.rt.clock.iso()
    update = json.loads(encode_value(args.get("contextUpdate") or {}, "contextUpdate"))

    def mutate(current: dict | None, version: int) -> dict:
        if current is None:
            raise NotFound("no task state in this scope; set one first", code=errors.TASK_NOT_FOUND)
        _check_version(args, version)
        task = dict(current)
        step = args["currentStep"] if "currentStep" in args else task["currentStep"]
        task["currentStep"] = max(step + args.get("advance", 0), 0)
        if args.get("status"):
            task["status"] = args["status"]
        if update:
            task["context"] = {**task.get("context", {}), **update}
        changed = "currentStep" in args or "advance" in args
        task.update(progressPercent=_progress(args, task, changed), updatedAt=stamp)
        return task

    return mutate


@tool(
    "memory_working_task",
    wm_params(
        ("operation",),
        operation=string("What to do with the session's task state", enum=("set", "get", "update_progress", "clear")),
        **TASK_FIELDS,
    ),
    http=[("POST", "/working/task")],
)
def memory_working_task(ctx: Ctx, args: dict) -> Any:
    """The session's task state (taskId, description, status, currentStep, totalSteps,
    progressPercent 0-100, startedAt, updatedAt, context): set, get, update_progress
    (atomic compare-and-set, never a lost update) or clear."""
    scope, op = resolve_scope(ctx, args), args["operation"]
    if op == "get":
        found = _run(ctx, lambda b: b.task_get(scope))
        return reply(ctx, scope, {"task": found[0] if found else None, "version": found[1] if found else None})
    if op == "clear":
        return reply(ctx, scope, {"cleared": _run(ctx, lambda b: b.task_clear(scope))})
    mutate = _new_task(ctx, args) if op == "set" else _progress_update(ctx, args)
    task, version = _run(ctx, lambda b: b.task_write(scope, mutate))
    return reply(ctx, scope, {"task": task, "version": version})


@tool("working_task_get", wm_params(), http=[("GET", "/working/task")], mcp=False)
def working_task_get(ctx: Ctx, args: dict) -> Any:
    """The session's task state and its version (null when none is set)."""
    return memory_working_task(ctx, {**args, "operation": "get"})


# -- scratchpad ----------------------------------------------------------------------------------------


@tool(
    "memory_working_scratchpad",
    wm_params(
        ("operation",),
        operation=string("append an entry, get entries or clear them", enum=("append", "get", "clear")),
        content=string("Entry text (append)", max_length=100_000),
        withTimestamps=boolean("get: entries as {content, timestamp} instead of plain strings", default=False),
        limit=integer("get: only the newest N entries", minimum=1, maximum=100_000),
    ),
    http=[("POST", "/working/scratchpad")],
)
def memory_working_scratchpad(ctx: Ctx, args: dict) -> Any:
    """The session's scratchpad: append a timestamped entry (capped at
    WORKING_MEMORY_MAX_ITEMS_PER_SESSION, oldest dropped and counted), get entries, clear."""
    scope, op = resolve_scope(ctx, args), args["operation"]
    if op == "append":
        if not args.get("content"):
            raise InvalidInput("operation 'append' needs 'content'", field="content")
        entry = {"content": strip_text(args["content"]), "timestamp": ctx.rt.clock.iso()}
        cap = ctx.rt.settings.working_memory_max_items_per_session
        count, dropped = _run(ctx, lambda b: b.scratch_append(scope, entry, cap))
        return reply(ctx, scope, {"entry": entry, "count": count, "dropped": dropped})
    if op == "clear":
        return reply(ctx, scope, {"cleared": _run(ctx, lambda b: b.scratch_clear(scope))})
    entries = _run(ctx, lambda b: b.scratch_get(scope, args.get("limit")))
    shown = entries if args["withTimestamps"] else [e["content"] for e in entries]
    return reply(ctx, scope, {"entries": shown, "count": len(entries)})


@tool(
    "working_scratchpad_get",
    wm_params(
        withTimestamps=boolean("Entries as {content, timestamp}", default=False),
        limit=integer("Only the newest N entries", minimum=1, maximum=100_000),
    ),
    http=[("GET", "/working/scratchpad")],
    mcp=False,
)
def working_scratchpad_get(ctx: Ctx, args: dict) -> Any:
    """The session's scratchpad entries, oldest first."""
    return memory_working_scratchpad(ctx, {**args, "operation": "get"})


# -- checkpoints ---------------------------------------------------------------------------------------


@tool(
    "memory_working_checkpoint",
    wm_params(
        ("operation",),
        operation=string("create, restore, list or delete checkpoints", enum=("create", "restore", "list", "delete")),
        checkpointId=string("Checkpoint id (restore, delete)", max_length=64),
        description=string("What this checkpoint is (create)", min_length=None, max_length=2000),
    ),
    http=[("POST", "/working/checkpoint")],
)
def memory_working_checkpoint(ctx: Ctx, args: dict) -> Any:
    """Checkpoints of a session's working memory: create (a point-in-time snapshot of keys with
    their expiry, task state and scratchpad; returns a uuid4), restore (exact and all-or-nothing;
    expired keys stay gone), list (oldest first) or delete."""
    scope, op, now = resolve_scope(ctx, args), args["operation"], ctx.rt.clock.time()
    settings = ctx.rt.settings
    if op == "list":
        items = _run(ctx, lambda b: b.checkpoint_list(scope))
        return reply(ctx, scope, {"checkpoints": items, "count": len(items)})
    if op == "create":
        cid, note, stamp = str(uuid.uuid4()), strip_text(args.get("description") or ""), ctx.rt.clock.iso()
        meta, pruned = _run(
            ctx, lambda b: b.checkpoint_create(scope, cid, note, now, settings.working_memory_max_checkpoints, stamp)
        )
        return reply(ctx, scope, {"checkpointId": cid, "checkpoint": meta, "pruned": pruned}, 201)
    cid = str(args.get("checkpointId") or "")
    if not cid:
        raise InvalidInput(f"operation {op!r} needs 'checkpointId'", field="checkpointId")
    if op == "restore":
        result = _run(ctx, lambda b: b.checkpoint_restore(scope, cid, now, settings.working_memory_max_keys))
        return reply(ctx, scope, result)
    if not _run(ctx, lambda b: b.checkpoint_delete(scope, cid)):
        raise NotFound(f"checkpoint {cid!r} not found in this scope", code=errors.CHECKPOINT_NOT_FOUND)
    return reply(ctx, scope, {"checkpointId": cid, "deleted": True})


@tool("working_checkpoints_list", wm_params(), http=[("GET", "/working/checkpoints")], mcp=False)
def working_checkpoints_list(ctx: Ctx, args: dict) -> Any:
    """The session's checkpoints, oldest first (metadata only)."""
    return memory_working_checkpoint(ctx, {**args, "operation": "list"})


# -- stats ---------------------------------------------------------------------------------------------


@tool("memory_working_stats", wm_params(), http=[("GET", "/working/stats"), ("POST", "/working/stats")], right="read")
def memory_working_stats(ctx: Ctx, args: dict) -> Any:
    """Working-memory statistics of a session: backend (and whether it is the SQLite fallback),
    total and user keys, checkpoints, scratchpad entries, whether task state is set, limits."""
    scope, settings = resolve_scope(ctx, args), ctx.rt.settings
    counts = _run(ctx, lambda b: b.counts(scope, ctx.rt.clock.time()))
    return reply(
        ctx,
        scope,
        {
            "totalKeys": counts["userKeys"] + counts["task"] + counts["scratchpadEntries"] + counts["checkpoints"],
            "userKeys": counts["userKeys"],
            "checkpointCount": counts["checkpoints"],
            "scratchpadEntries": counts["scratchpadEntries"],
            "hasTaskState": bool(counts["task"]),
            "expiredKeysPendingSweep": counts["expiredKeys"],
            "limits": {
                "maxKeys": settings.working_memory_max_keys,
                "maxScratchpadItems": settings.working_memory_max_items_per_session,
                "maxCheckpoints": settings.working_memory_max_checkpoints,
                "defaultTtlSeconds": settings.working_memory_default_ttl_seconds,
            },
        },
    )


# -- session end: summarise into long-term memory (opt-in) --------------------------------------------


def summarise(ctx: Ctx, scope: Scope) -> str | None:
    """A plain-text account of what a scope's working memory holds; None when it is empty."""
    svc, now = service(ctx), ctx.rt.clock.time()
    task = svc.run(lambda b: b.task_get(scope))
    entries = svc.run(lambda b: b.scratch_get(scope, 30))
    rows = svc.run(lambda b: b.items(scope, now))
    if not (task or entries or rows):
        return None
    lines = [
        f"Working memory of session {scope.session} (project {scope.project}, agent {scope.agent}) at session end."
    ]
    if task:
        t = task[0]
        lines.append(
            f"Task {t['taskId']}: {t['description']} - {t['status']}, step {t['currentStep']}"
            f"/{t['totalSteps']}, {t['progressPercent']}%"
        )
        if t.get("context"):
            lines.append("Task context: " + truncate(json.dumps(t["context"], ensure_ascii=False), 1000))
    if entries:
        lines.append(f"Scratchpad (latest {len(entries)}):")
        lines += [f"- {e['timestamp']}: {truncate(e['content'], 500)}" for e in entries]
    if rows:
        lines.append(f"Keys ({len(rows)}):")
        lines += [f"- {k} = {truncate(v or '', 300)}" for k, v, _e in rows[:100]]
    return truncate("\n".join(lines), 100_000)


def summarise_on_session_end(ctx: Ctx, session: dict[str, Any]) -> None:
    """Session-end hook: with WORKING_MEMORY_SUMMARIZE_ON_END, save what every working-memory
    scope of the ended session holds as a long-term memory (memory_save)."""
    if not ctx.rt.settings.working_memory_summarize_on_end:
        return
    sid, own = session["id"], (agent_filter(ctx) if isolated(ctx) else None)
    try:
        scopes = service(ctx).run(lambda b: b.session_scopes(sid))
    except Exception:  # noqa: BLE001 - the session has ended already; the failure is logged
        log.exception("working memory: listing the scopes of session %s failed", sid)
        return
    for scope in scopes:
        if own is not None and scope.agent != own:
            continue
        try:
            text = summarise(ctx, scope)
            if text:
                registry.run(
                    memories.memory_save,
                    ctx,
                    {
                        "content": text,
                        "type": "workflow",
                        "sessionId": sid,
                        "title": f"Working memory of session {sid}",
                        "concepts": ["working-memory"],
                        "project": None if scope.project == DEFAULT_SCOPE_PART else scope.project,
                        "agentId": None if scope.agent == DEFAULT_SCOPE_PART else scope.agent,
                    },
                )
        except Exception:  # noqa: BLE001 - a summary must not fail the session end; logged
            log.exception("working memory: summarising session %s (%s) failed", sid, scope)
