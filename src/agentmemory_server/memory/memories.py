"""Long-term memories (versioned by near-duplicate supersede), forgetting, governance, audit."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

from agentmemory_server import errors
from agentmemory_server.errors import InvalidInput, NotFound
from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter, stamp_agent, visible_to
from agentmemory_server.kernel.hooks import Block, BlockRequest
from agentmemory_server.kernel.privacy import strip_private_data, strip_text
from agentmemory_server.kernel.registry import (
    AGENT_ID,
    PROJECT,
    SESSION_ID,
    Ctx,
    Reply,
    anything,
    array,
    boolean,
    integer,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS, SUMMARIES, obs_scope
from agentmemory_server.kernel.util import cut_text, iso, new_id, truncate
from agentmemory_server.retrieval import search
from agentmemory_server.similarity import jaccard_of, jaccard_tokens
from agentmemory_server.storage.interfaces import Where, equal

log = logging.getLogger("agentmemory.memories")
MEMORY_TYPES = ("pattern", "preference", "architecture", "bug", "workflow", "fact")
SUPERSEDE_THRESHOLD = 0.7
# Supersede candidates are the memories sharing the most MinHash band keys with the new one,
# looked up in the lexical index by a few exact keys (similarity.py). A memory at the threshold
# shares at least one of the 50 keys with probability 0.9999 and about 8 on average; one at a
# Jaccard of 0.5 about 1.6, at 0.3 hardly any: the ten sharing the most hold the near-duplicates,
# and comparing against only those keeps remember O(1) in the number of memories. Where that
# index cannot answer (FTS5 only, or rebuilding), a BM25 search for the content's first distinct
# words finds them instead (a near-duplicate holds most of them, so it ranks high), looking a
# little further down its ranking.
SUPERSEDE_CANDIDATES = 10
SUPERSEDE_BM25_CANDIDATES = 20
SUPERSEDE_QUERY_WORDS = 32
# Memories written between that search (on a reader) and the write lock are compared one by one,
# up to this many; past it the search runs again under the lock.
RECHECK_LIMIT = 32
# Run inside remember's transaction once a memory is written: hook(ctx, tx, memory, superseded).
# relations.py records the `supersedes` relation here.

_IDS = array(string(max_length=1024, min_length=None), max_items=200)
REMEMBER = params(
    ["content"],
    content=string("What to remember (cut past AGENTMEMORY_MAX_FIELD_CHARS, with a marker)", max_length=16_777_216),
    type=string(
        "Kind of memory: " + ", ".join(MEMORY_TYPES) + " (anything else is stored as fact, as upstream does)",
        max_length=200,
        default="fact",
        min_length=None,
    ),
    title=string("Title (default: the first 80 characters)", max_length=200),
    concepts=array(string(max_length=200), "Concepts (array or comma-separated)", max_items=100),
    files=array(string(max_length=1024), "Files (array or comma-separated)", max_items=200),
    ttlDays=anything("Forget after this many days (ignored unless a positive number)"),
    sourceObservationIds=_IDS,
    sessionId=SESSION_ID,
    project=string("Project name (trimmed; blank means none)", max_length=512, min_length=None),
    agentId=string("Agent that owns the memory (trimmed, at most 128 characters kept)", max_length=4096),
)


def coerce_remember(args: dict[str, Any], field_max: int) -> dict[str, Any]:
    """upstream's rules for a memory's arguments (U§4.4), applied before anything is stored:
    a type outside the six is ``fact``; the project is trimmed and a blank one is none; a
    ``ttlDays`` that is not a positive number is ignored; empty source ids are dropped; the agent
    id is trimmed and cut to 128 characters; content past the field limit is cut with a marker."""
    out = dict(args)
    out["type"] = args.get("type") if args.get("type") in MEMORY_TYPES else "fact"
    out["project"] = (args.get("project") or "").strip() or None
    out["ttlDays"] = _positive_number(args.get("ttlDays"))
    out["sourceObservationIds"] = [i for i in args.get("sourceObservationIds") or [] if isinstance(i, str) and i]
    out["agentId"] = (args.get("agentId") or "").strip()[:128] or None
    out["content"], cut = cut_text(args["content"], field_max)
    out["truncatedChars"] = cut
    return out


def _positive_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 < number <= 36_500 else None


def _supersede_target(store, content: str, project: str | None, agent: str | None) -> dict[str, Any] | None:
    """The latest memory this one replaces: Jaccard > 0.7 within the same project (a memory with
    no project matches any project, as upstream) and, with isolated agents, the same agent."""
    # In a project: its memories and those with no project; with no project: every memory.
    filters = {"kinds": ["memory"], "agent_id": agent, **({"project": project} if project else {})}
    hits = store.index.near_duplicates(content, limit=SUPERSEDE_CANDIDATES, filters=filters)
    if hits is None:
        query = " ".join(list(dict.fromkeys(content.lower().split()))[:SUPERSEDE_QUERY_WORDS])
        hits = search.bm25(store, query, limit=SUPERSEDE_BM25_CANDIDATES, filters=filters)
    return _closest([mem for _hit, mem in search.hydrate(store, hits)], content, project, agent)


def _closest(memories: list[dict[str, Any]], content: str, project: str | None, agent: str | None) -> Any:
    best, best_score = None, SUPERSEDE_THRESHOLD
    lowered = content.lower()  # texts without long words match when equal but for case
    words = jaccard_tokens(lowered)
    for mem in memories:
        if mem.get("isLatest") is False or (agent is not None and mem.get("agentId") != agent):
            continue
        if project and mem.get("project") and mem["project"] != project:
            continue
        score = jaccard_of(words, lowered, mem.get("content", "").lower())
        if score > best_score:
            best, best_score = mem, score
    return best


def _confirm_target(
    tx, found: dict[str, Any] | None, content: str, project: str | None, agent: str | None, since: str
) -> dict[str, Any] | None:
    """Under the writer lock: ``found`` (the search's answer on a reader) as it is now, or a
    memory written since the search began that is closer; after a burst of writes, the search
    again. ``since`` is the newest ``updatedAt`` the reader saw before searching; remember reads
    its timestamp under the lock, so a memory committed later carries one at least as late (on
    one clock: nodes whose clocks disagree may each keep a near-duplicate written at once)."""
    # Only what was written since is read (and decoded): this runs while the lock is held.
    written_since = [*equal(isLatest=True), Where("updatedAt", ">=", since)]
    recent = [
        m
        for _key, m in tx.records.newest(MEMORIES, written_since, by="updatedAt", before=None, limit=RECHECK_LIMIT + 1)
    ]
    if len(recent) > RECHECK_LIMIT:
        return _supersede_target(tx, content, project, agent)
    current = tx.records.get(MEMORIES, found["id"]) if found is not None else None
    return _closest([*recent, *([current] if current is not None else [])], content, project, agent)


# ``method`` and ``model`` of the model that drafted what remember saves (consolidation), else None
_WRITER: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("memory_writer", default=None)


@contextmanager
def drafted_by(writer: dict[str, str]) -> Iterator[None]:
    """Within this block remember stamps each memory it saves with ``writer`` (``method``, the
    provider, and ``model``: the model that drafted it), as consolidation's model drafts are."""
    token = _WRITER.set(writer)
    try:
        yield
    finally:
        _WRITER.reset(token)


@tool("memory_save", REMEMBER, http=[("POST", "/remember", 201)], core=True)
def memory_save(ctx: Ctx, args: dict) -> Reply:
    """Save a long-term memory; a near-duplicate in the same project becomes its new version."""
    rt = ctx.rt
    args = coerce_remember(args, rt.settings.max_field_chars)
    content = strip_text(args["content"]).strip()
    if not content:
        raise InvalidInput("'content' must not be blank", field="content")
    project = args["project"]
    agent = stamp_agent(ctx, args["agentId"])
    memory = _new_memory(args, content, agent, rt.clock.now())
    # The near-duplicate search, most of remember's work, runs on a reader: the writer lock
    # (cluster-wide on PostgreSQL) is held only for the writes and a check of what changed since.
    agents = agent_filter(ctx)
    reader = rt.db.reader()
    seen = reader.records.newest(MEMORIES, equal(isLatest=True), by="updatedAt", before=None, limit=1)
    since = (seen[0][1].get("updatedAt") or "") if seen else ""
    found = _supersede_target(reader, content, project, agents)

    def store(tx: Any) -> dict[str, Any] | None:
        return _store_memory(ctx, tx, memory, _Found(found, content, project, agents, since))

    # Concurrent remembers commit together (each re-checks what the ones before it wrote).
    old = rt.db.write("remember", store, agent_id=agent)
    reply: dict[str, Any] = {"success": True, "memory": memory, "superseded": old["id"] if old else None}
    if args["truncatedChars"]:
        reply["truncated"] = {"fields": ["content"], "chars": args["truncatedChars"]}
    return Reply(reply, 201)


def _new_memory(args: dict, content: str, agent: str | None, now_dt: datetime) -> dict[str, Any]:
    """The memory remember saves, from its coerced arguments: version 1, the latest; project,
    agent and source observations only when given; a forget date when it has a time to live."""
    memory: dict[str, Any] = {
        "id": new_id("mem"),
        "type": args["type"],
        "title": truncate(strip_text(args.get("title") or " ".join(content.split())), 80),
        "content": content,
        "concepts": strip_private_data(args.get("concepts") or []),
        "files": args.get("files") or [],
        "sessionIds": [args["sessionId"]] if args.get("sessionId") else [],
        "strength": 7,
        "version": 1,
        "isLatest": True,
        **(_WRITER.get() or {}),
    }
    for key, value in (
        ("project", args["project"]),
        ("agentId", agent),
        ("sourceObservationIds", args.get("sourceObservationIds")),
    ):
        if value:
            memory[key] = value
    if args["ttlDays"]:
        memory["forgetAfter"] = iso(now_dt + timedelta(days=args["ttlDays"]))
    return memory


@dataclass
class _Found:
    """What remember's search found before the write, and what to check it against under the lock."""

    target: Any
    content: str
    project: str | None
    agents: Any
    since: str


def _store_memory(ctx: Ctx, tx: Any, memory: dict[str, Any], found: _Found) -> dict[str, Any] | None:
    """remember inside its write transaction: stamps ``memory`` (id first), supersedes the
    near-duplicate confirmed under the lock and stores both; returns the superseded version."""
    rt = ctx.rt
    now = rt.clock.iso()
    stamped = {"id": memory.pop("id"), "createdAt": now, "updatedAt": now, **memory}
    memory.clear()
    memory.update(stamped)
    old = _confirm_target(tx, found.target, found.content, found.project, found.agents, found.since)
    if old is not None:
        memory.update(version=old.get("version", 1) + 1, parentId=old["id"], supersedes=[old["id"]])
        memory["sessionIds"] = list(dict.fromkeys(old.get("sessionIds", []) + memory["sessionIds"]))
        old.update(isLatest=False, updatedAt=now, supersededBy=memory["id"])
        tx.records.set(MEMORIES, old["id"], old, now=now)
        search.index_record(tx, "memory", old)
    tx.records.set(MEMORIES, memory["id"], memory, now=now)
    search.index_record(tx, "memory", memory)
    for hook in rt.hooks.remember:
        hook(ctx, tx, memory, old)
    tx.audit_message = f"remember {memory['id']}" + (f" (supersedes {old['id']})" if old else "")
    if old is not None:  # the superseded version changed too (isLatest, supersededBy)
        tx.after_commit(lambda: rt.publish("memory", old))
    tx.after_commit(lambda: rt.publish("memory", memory))
    return old


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
        cursor=string("nextCursor of the previous page", max_length=1000),
        offset=integer("Rows to skip (without a cursor)", minimum=0, maximum=10_000_000, default=0),
        count=boolean("Also count every match (the first page always does)", default=False),
    ),
    http=[("GET", "/memories")],
    mcp=False,
)
def memories_list(ctx: Ctx, args: dict) -> dict:
    """List memories newest first (by creation). Page with ``cursor`` = the previous page's
    ``nextCursor`` (each page costs the same at any depth); ``offset`` still works."""
    store = ctx.rt.db.reader()
    where = equal(
        project=args.get("project"),
        agentId=agent_filter(ctx, args.get("agentId")),
        isLatest=True if args["latest"] else None,
    )
    before = listings.decode_cursor(args["cursor"]) if args.get("cursor") else None
    offset = 0 if before is not None else args["offset"]
    pairs = store.records.newest(MEMORIES, where, by="createdAt", before=before, limit=args["limit"] + 1, offset=offset)
    more = len(pairs) > args["limit"]
    page = [value for _key, value in pairs[: args["limit"]]]
    last = pairs[args["limit"] - 1] if more else None
    body: dict[str, Any] = {
        "memories": page,
        "nextCursor": listings.encode_cursor(last[1].get("createdAt"), last[0]) if last else None,
        "hasMore": more,
        "offset": args["offset"],
        "limit": args["limit"],
    }
    if before is None or args["count"]:
        body["total"] = store.records.count_where(MEMORIES, where)
    return body


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


def delete_memories(
    ctx: Ctx, tx, memory_ids: list[str], failures: list[dict[str, str]] | None = None
) -> tuple[list[str], list[str]]:
    """Delete memories one by one: (deleted, not found); an id whose delete raised goes to
    ``failures`` (upstream 0.9.30 reports them instead of failing the whole request)."""
    deleted: list[str] = []
    missing: list[str] = []
    for memory_id in dict.fromkeys(memory_ids):
        try:
            gone, absent = search.delete_indexed(ctx, tx, MEMORIES, [memory_id])
        except Exception:  # noqa: BLE001 - reported per id; the statement was rolled back
            log.exception("deleting memory %s failed", memory_id)
            if failures is None:
                raise
            failures.append({"id": memory_id, "error": "delete_failed"})
            continue
        deleted += gone
        missing += absent
    return deleted, missing


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
    failures: list[dict[str, str]] = []
    with ctx.rt.db.transaction("forget", agent_id=ctx.rt.settings.agent_id) as tx:
        if memory_ids:
            deleted, missing = delete_memories(ctx, tx, memory_ids, failures)
            result["memories"] = len(deleted)
            not_found += missing
        if sid:
            not_found += _forget_in_session(ctx, tx, sid, args.get("observationIds"), result)
        tx.audit_details = {"deleted": result, "notFound": not_found[:100], "failed": len(failures)}
    total = sum(result.values())
    if total:
        ctx.rt.publish("forget", {"deleted": result})
    reply: dict[str, Any] = {
        "success": not failures,
        "deleted": total,
        "details": result,
        "notFound": not_found,
        "failed": len(failures),
    }
    if failures:
        reply["failures"] = failures
    return reply


def _forget_in_session(
    ctx: Ctx, tx: Any, sid: str, observation_ids: list[str] | None, result: dict[str, Any]
) -> list[str]:
    """Forget the given observations of a session, or (none given) all of them with the session
    and its summary, counted in ``result``. Returns the ids not found."""
    whole = not observation_ids
    session = tx.records.get(SESSIONS, sid)
    deleted, not_found = delete_observations(ctx, tx, sid, None if whole else observation_ids)
    result["observations"] = len(deleted)
    if whole:
        if session is not None and visible_to(ctx, session):
            result["sessions"] = int(tx.records.delete(SESSIONS, sid))
            result["summaries"] = int(tx.records.delete(SUMMARIES, sid))
        elif not deleted:
            not_found.append(sid)
    return not_found


@tool(
    "memory_governance_delete",
    params(
        ["memoryIds"],
        memoryIds=array(string(max_length=128), "Memory ids", min_items=1, max_items=1000),
        reason=string("Why they are deleted (kept in the audit log)", max_length=1000),
    ),
    http=[("DELETE", "/governance/memories")],
    core=True,
    answers_with_records=False,
    right="admin",
)
def memory_governance_delete(ctx: Ctx, args: dict) -> dict:
    """Delete memories by id with an audited reason."""
    failures: list[dict[str, str]] = []
    with ctx.rt.db.transaction("governance_delete", agent_id=ctx.rt.settings.agent_id) as tx:
        deleted, missing = delete_memories(ctx, tx, args["memoryIds"], failures)
        tx.audit_details = {
            "reason": args.get("reason") or "",
            "deleted": deleted,
            "notFound": missing,
            "failed": len(failures),
        }
    if deleted:
        ctx.rt.publish("forget", {"memoryIds": deleted})
    reply: dict[str, Any] = {
        "success": not failures,
        "deleted": len(deleted),
        "total": len(args["memoryIds"]),
        "deletedIds": deleted,
        "notFound": missing,
        "failed": len(failures),
        "reason": args.get("reason") or "",
    }
    if failures:
        reply["failures"] = failures
    return reply


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
    answers_with_records=True,
    right="admin",
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
        # upstream 0.9.30 moved its audit into monthly scopes and reports a frozen legacy log;
        # this server's audit log was always one table, so nothing is frozen.
        "legacyFrozen": False,
        "legacyFrozenBytes": 0,
        "total": total,
        "offset": args["offset"],
        "limit": args["limit"],
        "hasMore": args["offset"] + len(entries) < total,
    }


# -- the memories context block ------------------------------------------------------------------

CONTEXT_MEMORIES = 8
CONTEXT_MEMORY_CHARS = 240


def relevant_memories(req: BlockRequest, limit: int = CONTEXT_MEMORIES) -> list[dict[str, Any]]:
    """The latest memories of the request's project (and global ones): those matching the
    session's first prompt first, then the newest."""
    if not req.project:
        return []  # memories belong to projects; none leaks into a session without one
    store = req.ctx.rt.db.reader()
    filters: dict[str, Any] = {"kinds": ["memory"], "project": req.project, "agent_id": req.agent_id}
    session = store.records.get(SESSIONS, req.session_id) if req.session_id else None
    prompt = (session or {}).get("firstPrompt") or ""
    found: dict[str, dict[str, Any]] = {}
    if prompt.strip():
        for _hit, memory in search.hydrate(store, search.bm25(store, prompt, limit=limit * 2, filters=filters)):
            found.setdefault(memory["id"], memory)
    if len(found) < limit:
        for _hit, memory in search.hydrate(store, store.index.recent(limit=limit * 2, filters=filters)):
            found.setdefault(memory["id"], memory)
    latest = [m for m in found.values() if m.get("isLatest", True)]
    return latest[:limit]


def memories_block(req: BlockRequest) -> list[Block]:
    """Saved memories worth knowing at the start of a session (before: only pre-tool enrichment
    showed them). Ranked above dated history: its recency is now."""
    chosen = relevant_memories(req)
    if not chosen:
        return []
    lines = ["## Memories"]
    for memory in chosen:
        text = " ".join(str(memory.get("content") or "").split())
        lines.append(f"- [{escape(str(memory.get('type') or 'fact'))}] {escape(truncate(text, CONTEXT_MEMORY_CHARS))}")
    return [Block("memories", "\n".join(lines), req.ctx.rt.clock.iso(), [m["id"] for m in chosen])]
