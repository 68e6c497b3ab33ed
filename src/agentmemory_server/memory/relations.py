"""Relations between memories: a small knowledge graph with confidence (U§4.11).

Types: ``supersedes`` (a newer version replaces an older one; remember records it itself),
``extends``, ``derives``, ``contradicts`` and ``related``. A relation's id is derived from
(type, source, target), so recording the same relation twice updates it. Without an explicit
confidence one is computed: 0.5 + 0.1 per shared session (at most 0.3) + 0.1 when both
memories changed within 7 days (- 0.1 when both are older than 90 days) + 0.1 for supersedes
- 0.05 for contradicts, clamped to 0-1.
"""

from __future__ import annotations

import hashlib
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import NotFound
from agentmemory_server.kernel.access import agent_filter, in_token_projects, stamp_agent, token_projects, visible_to
from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.kernel.registry import AGENT_ID, Ctx, Reply, integer, number, obj, params, string, tool
from agentmemory_server.kernel.scopes import MEMORIES, RELATIONS
from agentmemory_server.kernel.util import parse_time
from agentmemory_server.storage.interfaces import UnitOfWork, Where

TYPES = ("supersedes", "extends", "derives", "contradicts", "related")
DAY = 86_400.0


def relation_id(rel_type: str, source: str, target: str) -> str:
    digest = hashlib.sha256(f"{rel_type}\x00{source}\x00{target}".encode()).hexdigest()[:16]
    return f"rel_{digest}"


def _age_days(memory: dict[str, Any], now_ts: float) -> float | None:
    when = parse_time(memory.get("updatedAt") or memory.get("createdAt") or "")
    return None if when is None else (now_ts - when.timestamp()) / DAY


def relation_confidence(rel_type: str, a: dict[str, Any], b: dict[str, Any], now_ts: float) -> float:
    shared = len(set(a.get("sessionIds") or []) & set(b.get("sessionIds") or []))
    score = 0.5 + min(0.1 * shared, 0.3)
    ages = [_age_days(a, now_ts), _age_days(b, now_ts)]
    if all(age is not None and age <= 7 for age in ages):
        score += 0.1
    elif all(age is not None and age > 90 for age in ages):
        score -= 0.1
    score += {"supersedes": 0.1, "contradicts": -0.05}.get(rel_type, 0.0)
    return round(min(1.0, max(0.0, score)), 3)


def add_relation(
    ctx: Ctx,
    tx,
    rel_type: str,
    source: dict[str, Any],
    target: dict[str, Any],
    *,
    confidence: float | None = None,
    metadata: dict | None = None,
    agent: str | None = None,
) -> dict[str, Any]:
    """Record (or update) one relation inside the caller's transaction."""
    now = ctx.rt.clock.iso()
    rid = relation_id(rel_type, source["id"], target["id"])
    relation = tx.records.get(RELATIONS, rid) or {
        "id": rid,
        "type": rel_type,
        "sourceId": source["id"],
        "targetId": target["id"],
        "createdAt": now,
    }
    relation["confidence"] = (
        confidence if confidence is not None else relation_confidence(rel_type, source, target, ctx.rt.clock.time())
    )
    relation["updatedAt"] = now
    if metadata:
        relation["metadata"] = strip_private_data(metadata)
    agent = agent or stamp_agent(ctx, None)
    if agent:
        relation["agentId"] = agent
    tx.records.set(RELATIONS, rid, relation, now=now)
    return relation


def record_supersede_relation(ctx: Ctx, tx, memory: dict, superseded: dict | None) -> None:
    if superseded is not None:
        add_relation(ctx, tx, "supersedes", memory, superseded, agent=memory.get("agentId"))


def _memory(ctx: Ctx, store, memory_id: str, field: str) -> dict[str, Any]:
    memory = store.records.get(MEMORIES, memory_id)
    if not visible_to(ctx, memory):
        raise NotFound(f"memory {memory_id!r} not found", code=errors.MEMORY_NOT_FOUND, details={"field": field})
    return memory


def supersede_chain(store, memory: dict[str, Any]) -> list[dict[str, Any]]:
    """Every version of a memory, oldest first: back through parentId, forward through supersededBy."""
    chain, seen = [memory], {memory["id"]}
    for link, prepend in (("parentId", True), ("supersededBy", False)):
        node = memory
        while node.get(link) and node[link] not in seen and len(chain) < 200:
            nxt = store.records.get(MEMORIES, node[link])
            if nxt is None:
                break
            seen.add(nxt["id"])
            chain.insert(0, nxt) if prepend else chain.append(nxt)
            node = nxt
    return [
        {
            "id": m["id"],
            "version": m.get("version", 1),
            "isLatest": m.get("isLatest", True),
            "title": m.get("title", ""),
            "updatedAt": m.get("updatedAt"),
        }
        for m in chain
    ]


# -- tools ------------------------------------------------------------------------------------------------


@tool(
    "relation_create",
    params(
        ["sourceId", "targetId", "type"],
        sourceId=string("Memory the relation starts from", max_length=128),
        targetId=string("Memory it points to", max_length=128),
        type=string("Relation type", enum=TYPES),
        confidence=number("0-1 (default: computed)", minimum=0, maximum=1),
        metadata=obj("Free-form details"),
    ),
    http=[("POST", "/relations", 201)],
    mcp=False,
)
def relation_create(ctx: Ctx, args: dict) -> Reply:
    """Record a relation between two memories (the same type, source and target updates it)."""
    rt = ctx.rt
    with rt.db.transaction("relation_create", agent_id=rt.settings.agent_id) as tx:
        source = _memory(ctx, tx, args["sourceId"], "sourceId")
        target = _memory(ctx, tx, args["targetId"], "targetId")
        relation = add_relation(
            ctx, tx, args["type"], source, target, confidence=args.get("confidence"), metadata=args.get("metadata")
        )
    rt.publish("relation", relation)
    return Reply({"success": True, "relation": relation}, 201)


def relations_touching(store: UnitOfWork, ids: list[str]) -> list[dict]:
    """Relations with ``ids`` at either end (each end is indexed)."""
    found: dict[str, dict] = {}
    for end in ("sourceId", "targetId"):
        found.update((r["id"], r) for r in store.records.query(RELATIONS, [Where(end, "in", ids)]))
    return list(found.values())


def in_token_projects_only(ctx: Ctx, store: Any, relations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The relations a token limited to projects may see: both memories of one of its projects
    (or of none). A relation has no project of its own, and its principal's memories may lie in
    projects its other tokens chose; a relation whose memory is gone is left out."""
    if token_projects(ctx) is None or not relations:
        return relations
    ends = store.records.get_many(MEMORIES, sorted({r[k] for r in relations for k in ("sourceId", "targetId")}))
    return [
        r
        for r in relations
        if all(end in ends and in_token_projects(ctx, ends[end]) for end in (r["sourceId"], r["targetId"]))
    ]


def _walk(ctx: Ctx, store, start: str, hops: int, args: dict) -> list[dict[str, Any]]:
    agent = agent_filter(ctx, args.get("agentId"))
    found: dict[str, dict] = {}
    frontier, seen = [start], {start}
    for _ in range(hops):
        nxt = []
        for rel in in_token_projects_only(ctx, store, relations_touching(store, frontier)):
            if (agent is not None and rel.get("agentId") != agent) or rel["id"] in found:
                continue
            if float(rel.get("confidence", 0)) < args["minConfidence"]:
                continue
            if args.get("type") and rel.get("type") != args["type"]:
                continue
            found[rel["id"]] = rel
            for end in (rel["sourceId"], rel["targetId"]):
                if end not in seen:
                    seen.add(end)
                    nxt.append(end)
        frontier = nxt
        if not frontier:
            break
    return list(found.values())


@tool(
    "relations_list",
    params(
        memoryId=string("Relations of this memory (omit to list all)", max_length=128),
        type=string("Only this type", enum=TYPES),
        minConfidence=number("Lowest confidence", minimum=0, maximum=1, default=0),
        maxHops=integer("How far to follow relations from memoryId", minimum=1, maximum=5, default=1),
        limit=integer("Maximum relations", minimum=1, maximum=1000, default=100),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/relations")],
    mcp=False,
)
def relations_list(ctx: Ctx, args: dict) -> dict:
    """Relations of a memory (following up to maxHops, with its supersede chain), or all of them."""
    store = ctx.rt.db.reader()
    if args.get("memoryId"):
        memory = _memory(ctx, store, args["memoryId"], "memoryId")
        relations = _walk(ctx, store, memory["id"], args["maxHops"], args)
        ids = {r[k] for r in relations for k in ("sourceId", "targetId")} - {memory["id"]}
        related = [m for m in store.records.get_many(MEMORIES, sorted(ids)).values() if visible_to(ctx, m)]
        return {
            "success": True,
            "memoryId": memory["id"],
            "relations": relations[: args["limit"]],
            "memories": [{k: m.get(k) for k in ("id", "title", "type", "isLatest", "version")} for m in related],
            "chain": supersede_chain(store, memory),
        }
    agent = agent_filter(ctx, args.get("agentId"))
    relations = [
        r
        for _k, r in store.records.list(RELATIONS)
        if (agent is None or r.get("agentId") == agent)
        and float(r.get("confidence", 0)) >= args["minConfidence"]
        and (not args.get("type") or r.get("type") == args["type"])
    ]
    relations = in_token_projects_only(ctx, store, relations)
    relations.sort(key=lambda r: (r.get("updatedAt") or "", r["id"]), reverse=True)
    return {"success": True, "relations": relations[: args["limit"]], "total": len(relations)}


# -- subsystem: relations whose memories are gone ------------------------------------------------------


class RelationChecks:
    def __init__(self, rt: Any):
        self.rt = rt

    def _dangling(self) -> list[str]:
        store = self.rt.db.reader()
        relations = [r for _k, r in store.records.list(RELATIONS)]
        ends = {r[k] for r in relations for k in ("sourceId", "targetId") if r.get(k)}
        alive = set(store.records.get_many(MEMORIES, sorted(ends)))
        return [r["id"] for r in relations if r.get("sourceId") not in alive or r.get("targetId") not in alive]

    def diagnose(self) -> list[dict[str, Any]]:
        dangling = self._dangling()
        return [
            {
                "name": "relation_endpoints",
                "category": "relations",
                "status": "warn" if dangling else "pass",
                "message": f"{len(dangling)} relation(s) point at deleted memories"
                if dangling
                else "every relation connects two existing memories",
                "fix": "heal deletes them" if dangling else "",
                "fixable": bool(dangling),
            }
        ]

    def heal(self, dry_run: bool) -> list[dict[str, Any]]:
        dangling = self._dangling()
        if dangling and not dry_run:
            with self.rt.db.transaction("heal_relations", agent_id=self.rt.settings.agent_id) as tx:
                for rid in dangling:
                    tx.records.delete(RELATIONS, rid)
        return (
            [
                {
                    "name": "relation_endpoints",
                    "category": "relations",
                    "wouldFix": len(dangling),
                    "fixed": 0 if dry_run else len(dangling),
                }
            ]
            if dangling
            else []
        )
