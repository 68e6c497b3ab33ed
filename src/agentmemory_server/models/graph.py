"""The knowledge graph: entities (files, concepts, libraries, errors, ...) and the relations
between them, extracted from each session's observations (upstream's GraphNode / GraphEdge).

With a model provider the model names the entities and typed relations (schema-checked, one repair
round); without one, or when the model fails, the deterministic graph links the files and
concepts (the observations' own and the session's recurring words) that occur in the same
observation (``related_to``). Extraction runs after a session ends when
``GRAPH_EXTRACTION_ENABLED`` (a background job), or on ``POST /graph/extract``.

How an extraction is written (the ids of nodes and edges, each session's share of them, a
session extracted again replacing its share instead of counting it twice) is graph_writes.py's.
"""

from __future__ import annotations

import logging
import re
from itertools import combinations
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import NotFound
from agentmemory_server.kernel.access import agent_filter, visible_to
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, SESSION_ID, Ctx, integer, params, string, tool
from agentmemory_server.kernel.scopes import GRAPH_EDGES as EDGES
from agentmemory_server.kernel.scopes import GRAPH_NODES as NODES
from agentmemory_server.memory import summaries
from agentmemory_server.models import llm, llm_steps
from agentmemory_server.models.graph_writes import MAX_SOURCE_IDS, Extraction, write_session_graph
from agentmemory_server.models.llm import Task
from agentmemory_server.storage.interfaces import Where

log = logging.getLogger("agentmemory.graph")
NODE_TYPES = (
    "file",
    "function",
    "concept",
    "error",
    "decision",
    "pattern",
    "library",
    "person",
    "project",
    "preference",
    "location",
    "organization",
    "event",
)
EDGE_TYPES = (
    "uses",
    "imports",
    "modifies",
    "causes",
    "fixes",
    "depends_on",
    "related_to",
    "works_at",
    "prefers",
    "blocked_by",
    "caused_by",
    "optimizes_for",
    "rejected",
    "avoids",
    "located_in",
    "succeeded_by",
)
MAX_ENTITIES_PER_OBSERVATION = 8
_WORD = re.compile(r"[a-z][a-z0-9_\-]{3,}")


def _name(text: str) -> str:
    return " ".join(str(text).split())[:200]


# -- extraction ------------------------------------------------------------------------------------------


def deterministic_extraction(observations: list[dict]) -> Extraction:
    """Files and concepts that occur together in an observation, linked ``related_to``."""
    found = Extraction("synthetic")
    recurring = summaries.top_terms(observations, 12)
    for obs in observations:
        words = set(_WORD.findall(f"{obs.get('title', '')} {obs.get('narrative', '')}".lower()))
        keys = [("file", _name(f)) for f in obs.get("files") or []]
        keys += [("concept", _name(c).lower()) for c in obs.get("concepts") or []]
        keys += [("concept", t) for t in recurring if t in words]
        keys = list(dict.fromkeys(k for k in keys if k[1]))[:MAX_ENTITIES_PER_OBSERVATION]
        for key in keys:
            found.entity(key, obs["id"])
        for a, b in combinations(sorted(keys), 2):
            found.relation(a, b, "related_to", [obs["id"]])
    return found


def _check_graph(value: dict[str, Any]) -> list[str]:
    names = {e["name"].strip().lower() for e in value["entities"]}
    return [
        f"relations/{n}: '{r[end]}' is not the name of a listed entity"
        for n, r in enumerate(value["relations"])
        for end in ("source", "target")
        if r[end].strip().lower() not in names
    ][:10]


GRAPH = Task(
    "graph",
    "You extract a knowledge graph from an AI coding agent's session: the entities that matter (files, "
    "functions, libraries, concepts, errors, decisions, people, ...) and typed relations between them. "
    "Use short canonical names (a file by its path); every relation's source and target must be the name "
    "of a listed entity.",
    {
        "type": "object",
        "required": ["entities", "relations"],
        "properties": {
            "entities": {
                "type": "array",
                "maxItems": 40,
                "items": {
                    "type": "object",
                    "required": ["name", "type"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "type": {"enum": list(NODE_TYPES)},
                    },
                },
            },
            "relations": {
                "type": "array",
                "maxItems": 60,
                "items": {
                    "type": "object",
                    "required": ["source", "target", "type"],
                    "properties": {
                        "source": {"type": "string", "minLength": 1},
                        "target": {"type": "string", "minLength": 1},
                        "type": {"enum": list(EDGE_TYPES)},
                    },
                },
            },
        },
    },
    check=_check_graph,
    feature="graph",
)


def model_extraction(ctx: Ctx, session: dict[str, Any], observations: list[dict]) -> Extraction:
    """The model's graph; provenance: the observations whose text names an entity.
    :raise llm.LLMError: no valid answer."""
    prompt = llm_steps.session_prompt(ctx, session, observations, "Extract the knowledge graph.")
    answer = llm.service(ctx.rt).generate_json(GRAPH, prompt)
    texts = {
        o["id"]: f"{o.get('title', '')} {o.get('narrative', '')} {' '.join(o.get('files') or [])}".lower()
        for o in observations
    }
    svc = llm.service(ctx.rt)
    found, keys = Extraction(svc.provider or "synthetic", model=svc.clients.model_for(GRAPH.feature)), {}
    for entity in answer["entities"]:
        name = _name(entity["name"])
        if not name:
            continue
        key = (entity["type"], name if entity["type"] == "file" else name.lower())
        keys[name.lower()] = key
        found.entities.setdefault(key, [i for i, t in texts.items() if key[1].lower() in t][:MAX_SOURCE_IDS])
    for rel in answer["relations"]:
        a, b = keys.get(_name(rel["source"]).lower()), keys.get(_name(rel["target"]).lower())
        if a is not None and b is not None and a != b:
            shared = [i for i in found.entities[a] if i in found.entities[b]]
            found.relation(a, b, rel["type"], shared)
    return found


def extract_session(ctx: Ctx, session_id: str, *, use_model: bool, wait_for_model: bool = False) -> dict:
    """Extract one session's graph: the model's when ``use_model`` and it answers, else the
    deterministic one. ``wait_for_model`` (the background job): a failure that may pass (an
    open breaker, an HTTP error after its retries, a timeout) raises ``llm.Retry`` instead."""
    store = ctx.rt.db.reader()
    session = summaries.load_session(ctx, store, session_id)
    observations = summaries.session_observations(ctx, store, session_id)
    found = None
    # A caller waiting on the answer gets the deterministic graph at once while the provider is down.
    if use_model and observations and (wait_for_model or not llm.service(ctx.rt).provider_down()):
        try:
            found = model_extraction(ctx, session, observations)
        except llm.LLMError as exc:
            if wait_for_model and not isinstance(exc, llm.LASTING_FAILURES):
                llm.retry_for([exc])
            log.warning("graph extraction of %s falls back to the deterministic graph: %s", session_id, exc.message)
    return write_session_graph(ctx, session, found or deterministic_extraction(observations))


# -- session end ------------------------------------------------------------------------------------------


def queue_graph_extraction(ctx: Ctx, session: dict[str, Any]) -> None:
    if ctx.rt.settings.graph_extraction_enabled and session.get("observationCount"):
        svc = llm.service(ctx.rt)
        with ctx.rt.db.transaction("llm_queue") as tx:
            svc.enqueue(tx, "graph", session["id"])


def _graph_fallback(ctx: Ctx, session_id: str, args: dict) -> None:
    extract_session(ctx, session_id, use_model=False)


@llm.job_handler("graph", on_give_up=_graph_fallback)
def _graph_job(ctx: Ctx, session_id: str, args: dict) -> None:
    try:
        extract_session(ctx, session_id, use_model=llm.service(ctx.rt).uses_model("graph"), wait_for_model=True)
    except NotFound:
        pass  # the session was deleted since


# -- reading the graph --------------------------------------------------------------------------------------


def _visible(ctx: Ctx, store, args: dict) -> tuple[dict[str, dict], list[dict]]:
    agent = agent_filter(ctx, args.get("agentId"))

    def keep(record: dict) -> bool:
        return (agent is None or record.get("agentId") == agent) and (
            not args.get("project") or record.get("project") == args["project"]
        )

    # Imported records (upstream exports) may lack fields; give them the shape the readers expect.
    nodes = {
        k: {**n, "id": k, "name": str(n.get("name") or k), "type": str(n.get("type") or "concept")}
        for k, n in store.records.list(NODES)
        if isinstance(n, dict) and keep(n)
    }
    edges = [
        {**e, "id": k, "type": str(e.get("type") or "related_to")}
        for k, e in store.records.list(EDGES)
        if isinstance(e, dict) and keep(e)
    ]
    return nodes, edges


def _neighbourhood(start: str, edges: list[dict], depth: int) -> set[str]:
    reached, frontier = {start}, {start}
    for _ in range(depth):
        nxt = {
            str(e[end])
            for e in edges
            for end, other in (("targetNodeId", "sourceNodeId"), ("sourceNodeId", "targetNodeId"))
            if e.get(other) in frontier and e.get(end) is not None
        } - reached
        if not nxt:
            break
        reached |= nxt
        frontier = nxt
    return reached


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _node_view(n: dict) -> dict[str, Any]:
    return {k: n.get(k) for k in ("id", "type", "name", "mentions", "project", "method", "model", "updatedAt")}


def _edge_view(e: dict) -> dict[str, Any]:
    return {
        k: e.get(k) for k in ("id", "type", "sourceNodeId", "targetNodeId", "weight", "method", "model", "updatedAt")
    }


@tool(
    "memory_graph_query",
    params(
        project=PROJECT,
        sessionId=SESSION_ID | {"description": "Only nodes this session contributed to"},
        nodeType=string("Only nodes of this type", enum=NODE_TYPES),
        query=string("Only nodes whose name contains this text", max_length=200),
        startNodeId=string("Walk the graph from this node", max_length=64),
        maxDepth=integer("Hops from startNodeId", minimum=1, maximum=5, default=2),
        minWeight=integer("Only edges at least this heavy", minimum=1, maximum=1_000_000, default=1),
        limit=integer("Most nodes returned (the most mentioned first)", minimum=1, maximum=1000, default=100),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/graph"), ("POST", "/graph/query")],
    right="read",
)
def memory_graph_query(ctx: Ctx, args: dict) -> dict:
    """The knowledge graph (entities and relations extracted from sessions) as nodes and edges,
    for drawing: filtered by project, session, type or name, or walked from a start node."""
    nodes, edges = _visible(ctx, ctx.rt.db.reader(), args)
    if args.get("startNodeId"):
        if args["startNodeId"] not in nodes:
            raise NotFound(f"graph node {args['startNodeId']!r} not found", code=errors.NODE_NOT_FOUND)
        candidates = [nodes[i] for i in _neighbourhood(args["startNodeId"], edges, args["maxDepth"])]
    else:
        needle = (args.get("query") or "").lower()
        candidates = [
            n
            for n in nodes.values()
            if (not args.get("nodeType") or n["type"] == args["nodeType"])
            and needle in n["name"].lower()
            and (not args.get("sessionId") or args["sessionId"] in (n.get("sessions") or {}))
        ]
    candidates.sort(key=lambda n: (-_number(n.get("mentions")), n["name"]))
    chosen = {n["id"] for n in candidates[: args["limit"]]}
    links = [
        e
        for e in edges
        if e.get("sourceNodeId") in chosen
        and e.get("targetNodeId") in chosen
        and _number(e.get("weight")) >= args["minWeight"]
    ]
    links.sort(key=lambda e: (-_number(e.get("weight")), e["id"]))
    return {
        "success": True,
        "nodes": [_node_view(n) for n in candidates[: args["limit"]]],
        "edges": [_edge_view(e) for e in links],
        "totalNodes": len(candidates),
        "totalEdges": len(links),
        "truncated": len(candidates) > args["limit"],
    }


@tool("graph_stats", params(project=PROJECT, agentId=AGENT_ID), http=[("GET", "/graph/stats")], mcp=False)
def graph_stats(ctx: Ctx, args: dict) -> dict:
    """Knowledge-graph node and edge counts, by type."""
    nodes, edges = _visible(ctx, ctx.rt.db.reader(), args)
    by_node: dict[str, int] = {}
    by_edge: dict[str, int] = {}
    for n in nodes.values():
        by_node[n["type"]] = by_node.get(n["type"], 0) + 1
    for e in edges:
        by_edge[e["type"]] = by_edge.get(e["type"], 0) + 1
    return {"totalNodes": len(nodes), "totalEdges": len(edges), "nodesByType": by_node, "edgesByType": by_edge}


@tool("graph_extract", params(["sessionId"], sessionId=SESSION_ID), http=[("POST", "/graph/extract")], mcp=False)
def graph_extract(ctx: Ctx, args: dict) -> dict:
    """Extract a session's entities and relations into the knowledge graph now (by the model with a
    model provider, else deterministically); re-extracting replaces the session's share."""
    result = extract_session(ctx, args["sessionId"], use_model=llm.service(ctx.rt).has_model)
    return {"success": True, **result}


@tool(
    "graph_node",
    params(["nodeId"], nodeId=string("Node id", max_length=64), agentId=AGENT_ID),
    http=[("GET", "/graph/node")],
    mcp=False,
)
def graph_node(ctx: Ctx, args: dict) -> dict:
    """One knowledge-graph node with its edges and neighbours (the viewer's node panel)."""
    store = ctx.rt.db.reader()
    node = store.records.get(NODES, args["nodeId"])
    if not isinstance(node, dict) or not visible_to(ctx, node, args.get("agentId")):
        raise NotFound(f"graph node {args['nodeId']!r} not found", code=errors.NODE_NOT_FOUND)
    edges = [
        e
        for end in ("sourceNodeId", "targetNodeId")
        for e in store.records.query(EDGES, [Where(end, "=", args["nodeId"])], limit=500)
        if isinstance(e, dict) and visible_to(ctx, e, args.get("agentId"))
    ]
    others = {str(e.get(end)) for e in edges for end in ("sourceNodeId", "targetNodeId")} - {args["nodeId"]}
    neighbours = [n for n in store.records.get_many(NODES, others).values() if visible_to(ctx, n, args.get("agentId"))]
    edges.sort(key=lambda e: (-_number(e.get("weight")), str(e.get("id"))))
    return {
        "success": True,
        "node": {**node, "id": args["nodeId"]},
        "edges": [_edge_view({**e, "id": e.get("id")}) for e in edges],
        "neighbors": [_node_view(n) for n in sorted(neighbours, key=lambda n: str(n.get("name")))],
    }


@tool(
    "graph_compact",
    params(
        scope=string(
            "What to compact: nodes or edges (history and snapshot are accepted, nothing to do)",
            enum=["nodes", "edges", "history", "snapshot"],
            default="nodes",
        ),
        offset=integer(
            "Records to skip (the nextOffset of the previous call)", minimum=0, maximum=10_000_000, default=0
        ),
        limit=integer("Records to look at in this call", minimum=1, maximum=5000, default=500),
    ),
    http=[("POST", "/graph/compact")],
    mcp=False,
    answers_with_records=False,
    right="admin",
)
def graph_compact(ctx: Ctx, args: dict) -> dict:
    """Trim each node's or edge's provenance to 32 observation ids, the newest (upstream 0.9.30).
    New records never hold more; ones imported from an older upstream may hold thousands. Call
    again with ``nextOffset`` until it is null."""
    agent_filter(ctx)  # a write for everyone's graph: not in isolated scope without an agent id
    scope = {"nodes": NODES, "edges": EDGES}.get(args["scope"])
    if scope is None:  # this server keeps no graph history or snapshot records
        return {"success": True, "scope": args["scope"], "scanned": 0, "compacted": 0, "nextOffset": None}
    scanned = compacted = 0
    with ctx.rt.db.transaction("graph_compact") as tx:
        for index, (key, record) in enumerate(tx.records.iter_scope(scope)):
            if index < args["offset"]:
                continue
            if scanned == args["limit"]:
                return _compacted(args, scanned, compacted, args["offset"] + scanned)
            scanned += 1
            ids = record.get("sourceObservationIds") if isinstance(record, dict) else None
            if isinstance(ids, list) and len(ids) > MAX_SOURCE_IDS:
                tx.records.set(
                    scope, key, {**record, "sourceObservationIds": ids[:MAX_SOURCE_IDS]}, now=ctx.rt.clock.iso()
                )
                compacted += 1
    return _compacted(args, scanned, compacted, None)


def _compacted(args: dict, scanned: int, compacted: int, next_offset: int | None) -> dict:
    return {
        "success": True,
        "scope": args["scope"],
        "scanned": scanned,
        "compacted": compacted,
        "nextOffset": next_offset,
    }
