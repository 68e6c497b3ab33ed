"""Long-term memories (versioned by near-duplicate supersede), forgetting, governance, audit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import InvalidInput, NotFound
from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter, stamp_agent, visible_to
from agentmemory_server.kernel.privacy import strip_private_data, strip_text
from agentmemory_server.kernel.registry import (
    AGENT_ID,
    PROJECT,
    SESSION_ID,
    Ctx,
    Reply,
    array,
    boolean,
    integer,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS, SUMMARIES, obs_scope
from agentmemory_server.kernel.util import iso, jaccard, new_id, truncate
from agentmemory_server.retrieval import search

MEMORY_TYPES = ("pattern", "preference", "architecture", "bug", "workflow", "fact")
SUPERSEDE_THRESHOLD = 0.7
# Supersede candidates come from the search index (a near-duplicate shares most terms, so it
# ranks high); comparing against this many keeps remember O(1) in the number of memories. The
# query is the content's first distinct words: a near-duplicate (Jaccard > 0.7) holds most of
# them, and a longer OR query only costs the engine time.
SUPERSEDE_CANDIDATES = 20
SUPERSEDE_QUERY_WORDS = 32
# Run inside remember's transaction once a memory is written: hook(ctx, tx, memory, superseded).
# relations.py records the `supersedes` relation here.

_LIST = array(string(max_length=1024), max_items=200)
REMEMBER = params(
    ["content"],
    content=string("What to remember", max_length=100_000),
    type=string("Kind of memory", enum=MEMORY_TYPES, default="fact"),
    title=string("Title (default: the first 80 characters)", max_length=200),
    concepts=array(string(max_length=200), "Concepts (array or comma-separated)", max_items=100),
    files=array(string(max_length=1024), "Files (array or comma-separated)", max_items=200),
    ttlDays=integer("Forget after this many days", minimum=1, maximum=36_500),
    sourceObservationIds=_LIST,
    sessionId=SESSION_ID,
    project=PROJECT,
    agentId=string("Agent that owns the memory", max_length=128),
)


def _supersede_target(tx, content: str, project: str | None, agent: str | None) -> dict[str, Any] | None:
    """The latest memory this one replaces: Jaccard > 0.7 within the same project (a memory with
    no project matches any project, as upstream) and, with isolated agents, the same agent."""
    query = " ".join(list(dict.fromkeys(content.lower().split()))[:SUPERSEDE_QUERY_WORDS])
    hits = search.bm25(tx, query, limit=SUPERSEDE_CANDIDATES, filters={"kinds": ["memory"], "agent_id": agent})
    best, best_score = None, SUPERSEDE_THRESHOLD
    for _hit, mem in search.hydrate(tx, hits):
        if mem.get("isLatest") is False:
            continue
        if project and mem.get("project") and mem["project"] != project:
            continue
        score = jaccard(content.lower(), mem.get("content", "").lower())
        if score > best_score:
            best, best_score = mem, score
    return best


@tool("memory_save", REMEMBER, http=[("POST", "/remember", 201)], core=True)
def memory_save(ctx: Ctx, args: dict) -> Reply:
    """Save a long-term memory; a near-duplicate in the same project becomes its new version."""
    rt = ctx.rt
    content = strip_text(args["content"]).strip()
    if not content:
        raise InvalidInput("'content' must not be blank", field="content")
    now_dt = rt.clock.now()
    now = rt.clock.iso()
    project = (args.get("project") or "").strip() or None
    agent = stamp_agent(ctx, args.get("agentId"))
    memory: dict[str, Any] = {
        "id": new_id("mem"),
        "createdAt": now,
        "updatedAt": now,
        "type": args["type"],
        "title": truncate(strip_text(args.get("title") or " ".join(content.split())), 80),
        "content": content,
        "concepts": strip_private_data(args.get("concepts") or []),
        "files": args.get("files") or [],
        "sessionIds": [args["sessionId"]] if args.get("sessionId") else [],
        "strength": 7,
        "version": 1,
        "isLatest": True,
    }
    for key, value in (
        ("project", project),
        ("agentId", agent),
        ("sourceObservationIds", args.get("sourceObservationIds")),
    ):
        if value:
            memory[key] = value
    if args.get("ttlDays"):
        memory["forgetAfter"] = iso(now_dt + timedelta(days=args["ttlDays"]))
    with rt.db.transaction("remember", agent_id=agent) as tx:
        old = _supersede_target(tx, content, project, agent_filter(ctx))
        if old is not None:
            memory.update(version=old.get("version", 1) + 1, parentId=old["id"], supersedes=[old["id"]])
            memory["sessionIds"] = list(dict.fromkeys(old.get("sessionIds", []) + memory["sessionIds"]))
            old.update(isLatest=False, updatedAt=now, supersededBy=memory["id"])
            tx.records.set(MEMORIES, old["id"], old, now=now)
            search.index_record(tx, "memory", old)
        tx.records.set(MEMORIES, memory["id"], memory, now=now)
        search.index_record(tx, "memory", memory)
        for hook in ctx.rt.hooks.remember:
            hook(ctx, tx, memory, old)
        tx.audit_message = f"remember {memory['id']}" + (f" (supersedes {old['id']})" if old else "")
        if old is not None:  # the superseded version changed too (isLatest, supersededBy)
            tx.after_commit(lambda: rt.publish("memory", old))
        tx.after_commit(lambda: rt.publish("memory", memory))
    return Reply({"success": True, "memory": memory, "superseded": old["id"] if old else None}, 201)


@tool("agent_remember", REMEMBER)
def agent_remember(ctx: Ctx, args: dict) -> Reply:
    """Save a long-term memory on behalf of an agent (memory_save stamped with agentId)."""
    return memory_save(ctx, args)


@tool(
    "memories_list",
    params(
        latest=boolean("Only the latest version of each memory", default=False),
        project=PROJECT,
        agentId=AGENT_ID,
        limit=integer("Page size", minimum=1, maximum=5000, default=100),
        offset=integer("Rows to skip", minimum=0, maximum=10_000_000, default=0),
    ),
    http=[("GET", "/memories")],
    mcp=False,
)
def memories_list(ctx: Ctx, args: dict) -> dict:
    """List memories, most recently updated first."""
    items, total = listings.memories_page(
        ctx.rt.db.reader(),
        project=args.get("project"),
        agent_id=agent_filter(ctx, args.get("agentId")),
        latest_only=args["latest"],
        limit=args["limit"],
        offset=args["offset"],
    )
    return {
        "memories": items,
        "total": total,
        "offset": args["offset"],
        "limit": args["limit"],
        "hasMore": args["offset"] + len(items) < total,
    }


@tool(
    "memory_get",
    params(["memoryId"], memoryId=string("Memory id", max_length=128)),
    http=[("GET", "/memories/<memoryId>")],
    mcp=False,
)
def memory_get(ctx: Ctx, args: dict) -> dict:
    """One memory with its version chain (oldest first)."""
    store = ctx.rt.db.reader()
    memory = store.records.get(MEMORIES, args["memoryId"])
    if not visible_to(ctx, memory):
        raise NotFound(f"memory {args['memoryId']!r} not found", code=errors.MEMORY_NOT_FOUND)
    chain: list[dict[str, Any]] = []
    seen, parent = {memory["id"]}, memory.get("parentId")
    while parent and parent not in seen and len(chain) < 100:
        seen.add(parent)
        previous = store.records.get(MEMORIES, parent)
        if previous is None:
            break
        chain.insert(0, previous)
        parent = previous.get("parentId")
    return {"memory": memory, "versions": chain + [memory]}


# -- forgetting ------------------------------------------------------------------------------------


def delete_memories(ctx: Ctx, tx, memory_ids: list[str]) -> tuple[list[str], list[str]]:
    return search.delete_indexed(ctx, tx, MEMORIES, memory_ids)


def delete_observations(ctx: Ctx, tx: Any, session_id: str, obs_ids: list[str] | None) -> tuple[list[str], list[str]]:
    """Delete some (or, with None, all) observations of a session the caller may see; keeps the
    session's count honest and their event ids (a replayed event stays a duplicate)."""
    scope = obs_scope(session_id)
    if obs_ids is None:
        obs_ids = [key for key, value in tx.records.list(scope) if visible_to(ctx, value)]
    deleted, missing = search.delete_indexed(ctx, tx, scope, obs_ids)
    tx.events.mark_deleted(deleted)
    session = tx.records.get(SESSIONS, session_id)
    if session is not None and deleted:
        session["observationCount"] = tx.records.count(scope)
        tx.records.set(SESSIONS, session_id, session, now=ctx.rt.clock.iso())
    return deleted, missing


@tool(
    "memory_forget",
    params(
        memoryId=string("A memory to delete", max_length=128),
        memoryIds=array(string(max_length=128), "Memories to delete", max_items=1000),
        sessionId=SESSION_ID,
        observationIds=array(string(max_length=128), "Observations of sessionId to delete", max_items=1000),
    ),
    http=[("POST", "/forget")],
)
def memory_forget(ctx: Ctx, args: dict) -> dict:
    """Delete memories, some observations of a session, or a whole session (with its summary).
    Counts only what was really deleted."""
    memory_ids = ([args["memoryId"]] if args.get("memoryId") else []) + (args.get("memoryIds") or [])
    sid = args.get("sessionId")
    if args.get("observationIds") and not sid:
        raise InvalidInput("'observationIds' needs the 'sessionId' they belong to", field="sessionId")
    if not memory_ids and not sid:
        raise InvalidInput("give 'memoryId', 'memoryIds' or 'sessionId'", field="memoryId")
    result: dict[str, Any] = {"memories": 0, "observations": 0, "sessions": 0, "summaries": 0}
    not_found: list[str] = []
    with ctx.rt.db.transaction("forget", agent_id=ctx.rt.settings.agent_id) as tx:
        if memory_ids:
            deleted, missing = delete_memories(ctx, tx, memory_ids)
            result["memories"] = len(deleted)
            not_found += missing
        if sid:
            whole = not args.get("observationIds")
            session = tx.records.get(SESSIONS, sid)
            deleted, missing = delete_observations(ctx, tx, sid, None if whole else args["observationIds"])
            result["observations"] = len(deleted)
            not_found += missing
            if whole:
                if session is not None and visible_to(ctx, session):
                    result["sessions"] = int(tx.records.delete(SESSIONS, sid))
                    result["summaries"] = int(tx.records.delete(SUMMARIES, sid))
                elif not deleted:
                    not_found.append(sid)
        tx.audit_details = {"deleted": result, "notFound": not_found[:100]}
    total = sum(result.values())
    if total:
        ctx.rt.publish("forget", {"deleted": result})
    return {"success": True, "deleted": total, "details": result, "notFound": not_found}


@tool(
    "memory_governance_delete",
    params(
        ["memoryIds"],
        memoryIds=array(string(max_length=128), "Memory ids", min_items=1, max_items=1000),
        reason=string("Why they are deleted (kept in the audit log)", max_length=1000),
    ),
    http=[("DELETE", "/governance/memories")],
    core=True,
)
def memory_governance_delete(ctx: Ctx, args: dict) -> dict:
    """Delete memories by id with an audited reason."""
    with ctx.rt.db.transaction("governance_delete", agent_id=ctx.rt.settings.agent_id) as tx:
        deleted, missing = delete_memories(ctx, tx, args["memoryIds"])
        tx.audit_details = {"reason": args.get("reason") or "", "deleted": deleted, "notFound": missing}
    if deleted:
        ctx.rt.publish("forget", {"memoryIds": deleted})
    return {
        "success": True,
        "deleted": len(deleted),
        "deletedIds": deleted,
        "notFound": missing,
        "reason": args.get("reason") or "",
    }


@tool(
    "memory_audit",
    params(
        operation=string("Only this operation (observe, remember, forget, ...)", max_length=64),
        limit=integer("Page size", minimum=1, maximum=1000, default=50),
        offset=integer("Rows to skip", minimum=0, maximum=10_000_000, default=0),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/audit")],
    core=True,
)
def memory_audit(ctx: Ctx, args: dict) -> dict:
    """The audit trail, newest first: one entry per change with its operation and targets."""
    entries, total = ctx.rt.db.reader().audit.page(
        operation=args.get("operation"),
        limit=args["limit"],
        offset=args["offset"],
        agent_id=agent_filter(ctx, args.get("agentId")),
    )
    return {
        "success": True,
        "entries": entries,
        "total": total,
        "offset": args["offset"],
        "limit": args["limit"],
        "hasMore": args["offset"] + len(entries) < total,
    }
