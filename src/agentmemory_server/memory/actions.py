"""Actions: work items with priorities and dependency edges, and the frontier of what to do next
(U§4.7).

An action is ``pending``, ``active``, ``blocked``, ``done`` or ``cancelled`` (``completed`` and
``discarded`` are accepted as aliases). Edges go from an action to another: ``requires`` (the
source cannot start before the target is done), ``unlocks`` (finishing the source helps the
target), ``spawned_by`` and ``conflicts_with`` (not while the other is active). The frontier is
every unfinished action without a blocker, scored by priority, age, what it unlocks and whether
it is already active.
"""

from __future__ import annotations

from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import Conflict, InvalidInput, NotFound
from agentmemory_server.kernel.access import stamp_agent, visible_to
from agentmemory_server.kernel.privacy import strip_private_data, strip_text
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, Ctx, Reply, array, integer, obj, params, string, tool
from agentmemory_server.kernel.scopes import ACTION_EDGES as EDGES
from agentmemory_server.kernel.scopes import ACTIONS
from agentmemory_server.kernel.util import new_id, parse_time

STATUSES = ("pending", "active", "done", "blocked", "cancelled")
STATUS_ALIASES = {
    "completed": "done",
    "complete": "done",
    "discarded": "cancelled",
    "canceled": "cancelled",
    "in_progress": "active",
}
EDGE_TYPES = ("requires", "unlocks", "spawned_by", "conflicts_with")
FINISHED = ("done", "cancelled")


def clamp_priority(value: int | None) -> int:
    """Upstream's rule: missing or 0 -> 5, otherwise clamped into 1-10."""
    return 5 if not value else max(1, min(10, int(value)))


def normalise_status(value: str) -> str:
    return STATUS_ALIASES.get(value, value)


class Graph:
    """The actions and edges one caller can see, loaded once per request."""

    def __init__(self, ctx: Ctx, store, requested_agent: str | None = None):
        self.actions = {k: v for k, v in store.records.list(ACTIONS) if visible_to(ctx, v, requested_agent)}
        self.edges: list[dict] = []
        self._out: dict[str, list[dict]] = {}
        self._in: dict[str, list[dict]] = {}
        for _k, edge in store.records.list(EDGES):
            if edge.get("sourceActionId") in self.actions and edge.get("targetActionId") in self.actions:
                self.add_edge(edge)

    def add_edge(self, edge: dict[str, Any]) -> None:
        self.edges.append(edge)
        self._out.setdefault(edge["sourceActionId"], []).append(edge)
        self._in.setdefault(edge["targetActionId"], []).append(edge)

    def get(self, action_id: str, field: str = "actionId") -> dict[str, Any]:
        action = self.actions.get(action_id)
        if action is None:
            raise NotFound(f"action {action_id!r} not found", code=errors.ACTION_NOT_FOUND, details={"field": field})
        return action

    def out(self, action_id: str, edge_type: str) -> list[dict]:
        return [e for e in self._out.get(action_id, ()) if e["type"] == edge_type]

    def into(self, action_id: str, edge_type: str) -> list[dict]:
        return [e for e in self._in.get(action_id, ()) if e["type"] == edge_type]

    def touching(self, action_id: str) -> list[dict]:
        return self._out.get(action_id, []) + self._in.get(action_id, [])

    def blockers(self, action_id: str) -> list[str]:
        found = [
            f"requires:{e['targetActionId']}"
            for e in self.out(action_id, "requires")
            if self.actions[e["targetActionId"]].get("status") != "done"
        ]
        for e in self.out(action_id, "conflicts_with") + self.into(action_id, "conflicts_with"):
            other = e["targetActionId"] if e["sourceActionId"] == action_id else e["sourceActionId"]
            if self.actions[other].get("status") == "active":
                found.append(f"conflicts_with:{other}")
        return found

    def reaches(self, start: str, goal: str) -> bool:
        """Whether ``requires`` edges lead from ``start`` to ``goal`` (cycle check)."""
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(e["targetActionId"] for e in self.out(node, "requires"))
        return False


def _new_edge(ctx: Ctx, edge_type: str, source: str, target: str, now: str) -> dict[str, Any]:
    edge = {"id": new_id("ae"), "type": edge_type, "sourceActionId": source, "targetActionId": target, "createdAt": now}
    agent = stamp_agent(ctx, None)
    if agent:
        edge["agentId"] = agent
    return edge


def _check_edge(graph: Graph, edge_type: str, source: str, target: str, field: str) -> None:
    if edge_type not in EDGE_TYPES:
        raise InvalidInput(f"'{field}.type' must be one of: {', '.join(EDGE_TYPES)}", field=f"{field}.type")
    if target not in graph.actions:
        raise InvalidInput(
            f"'{field}.targetActionId' {target!r} is not an existing action", field=f"{field}.targetActionId"
        )
    if source == target:
        raise InvalidInput("an action cannot have an edge to itself", field=f"{field}.targetActionId")
    if edge_type == "requires" and graph.reaches(target, source):
        raise Conflict(f"{source} requires {target} would make a dependency cycle", code=errors.DEPENDENCY_CYCLE)


# -- tools ----------------------------------------------------------------------------------------------

_EDGE = {
    "type": "object",
    "required": ["type", "targetActionId"],
    "properties": {
        "type": string("Edge type", enum=EDGE_TYPES),
        "targetActionId": string("The other action", max_length=128),
    },
}
_IDS = array(string(max_length=128), max_items=200)
_PRIORITY = integer("1-10 (0 or missing = 5; out of range is clamped)", minimum=-1_000_000, maximum=1_000_000)
STATUS = string("Status", enum=STATUSES + tuple(STATUS_ALIASES))


@tool(
    "memory_action_create",
    params(
        ["title"],
        title=string("What to do", max_length=500),
        description=string("Details", min_length=0, max_length=20_000),
        priority=_PRIORITY,
        createdBy=string("Who created it", max_length=128),
        assignedTo=string("Who does it", max_length=128),
        project=PROJECT,
        tags=array(string(max_length=100), "Tags", max_items=50),
        parentId=string("Parent action", max_length=128),
        edges=array(_EDGE, "Edges from the new action: [{type, targetActionId}]", max_items=100),
        requires=_IDS | {"description": "Actions that must be done first (csv or array)"},
        metadata=obj("Free-form metadata"),
        sourceObservationIds=_IDS,
        sourceMemoryIds=_IDS,
    ),
    http=[("POST", "/actions", 201)],
)
def memory_action_create(ctx: Ctx, args: dict) -> Reply:
    """Create an action with optional parent and edges; an unmet `requires` edge starts it blocked."""
    rt, now = ctx.rt, ctx.rt.clock.iso()
    agent = stamp_agent(ctx, None)
    action = _new_action(args, agent, now)
    wanted = [(e["type"], e["targetActionId"], f"edges[{i}]") for i, e in enumerate(args.get("edges") or [])]
    wanted += [("requires", t, f"requires[{i}]") for i, t in enumerate(args.get("requires") or [])]
    with rt.db.transaction("action_create", agent_id=agent) as tx:
        graph = Graph(ctx, tx)
        if action.get("parentId") and action["parentId"] not in graph.actions:
            raise InvalidInput(f"parent action {action['parentId']!r} does not exist", field="parentId")
        edges = []
        for edge_type, target, field in wanted:
            _check_edge(graph, edge_type, action["id"], target, field)
            edges.append(_new_edge(ctx, edge_type, action["id"], target, now))
        blocked = any(
            e["type"] == "requires" and graph.actions[e["targetActionId"]].get("status") != "done" for e in edges
        )
        action["status"] = "blocked" if blocked else "pending"
        tx.records.set(ACTIONS, action["id"], action, now=now)
        for edge in edges:
            tx.records.set(EDGES, edge["id"], edge, now=now)
        tx.audit_message = f"action created: {action['id']} ({len(edges)} edge(s))"
    rt.publish("action", action)
    return Reply({"success": True, "action": action, "edges": edges}, 201)


def _new_action(args: dict, agent: str | None, now: str) -> dict[str, Any]:
    """The action as created, before its status: the optional fields only when given."""
    action = {
        "id": new_id("act"),
        "title": strip_text(args["title"]),
        "description": strip_text(args.get("description") or ""),
        "priority": clamp_priority(args.get("priority")),
        "createdAt": now,
        "updatedAt": now,
        "createdBy": args.get("createdBy") or agent or "agent",
        "tags": args.get("tags") or [],
        "sourceObservationIds": args.get("sourceObservationIds") or [],
        "sourceMemoryIds": args.get("sourceMemoryIds") or [],
    }
    for key in ("assignedTo", "project", "parentId"):
        if args.get(key):
            action[key] = args[key]
    if args.get("metadata"):
        action["metadata"] = strip_private_data(args["metadata"])
    if agent:
        action["agentId"] = agent
    return action


def _unblock_dependants(graph: Graph, done_id: str) -> list[dict[str, Any]]:
    """Blocked actions that no longer have a blocker once ``done_id`` is done."""
    candidates = [e["sourceActionId"] for e in graph.into(done_id, "requires")]
    candidates += [e["targetActionId"] for e in graph.out(done_id, "unlocks")]
    freed = []
    for action_id in dict.fromkeys(candidates):
        action = graph.actions[action_id]
        if action.get("status") == "blocked" and not graph.blockers(action_id):
            action["status"] = "pending"
            freed.append(action)
    return freed


@tool(
    "memory_action_update",
    params(
        ["actionId"],
        actionId=string("Action id", max_length=128),
        status=STATUS,
        title=string("New title", max_length=500),
        description=string("New details", min_length=0, max_length=20_000),
        priority=_PRIORITY,
        assignedTo=string("Who does it", max_length=128),
        result=string("Outcome", min_length=0, max_length=20_000),
        tags=array(string(max_length=100), max_items=50),
    ),
    http=[("POST", "/actions/update")],
)
def memory_action_update(ctx: Ctx, args: dict) -> dict:
    """Update an action; marking it done unblocks the actions that were waiting only for it."""
    rt, now = ctx.rt, ctx.rt.clock.iso()
    with rt.db.transaction("action_update", agent_id=rt.settings.agent_id) as tx:
        graph = Graph(ctx, tx)
        action = graph.get(args["actionId"])
        for key in ("title", "description", "result"):
            if key in args:
                action[key] = strip_text(args[key])
        for key in ("assignedTo", "tags"):
            if key in args:
                action[key] = args[key]
        if "priority" in args:
            action["priority"] = clamp_priority(args["priority"])
        if "status" in args:
            action["status"] = normalise_status(args["status"])
        action["updatedAt"] = now
        freed = _unblock_dependants(graph, action["id"]) if action.get("status") == "done" else []
        for changed in [action, *freed]:
            changed["updatedAt"] = now
            tx.records.set(ACTIONS, changed["id"], changed, now=now)
        tx.audit_message = f"action updated: {action['id']} -> {action.get('status')}"
    for changed in [action, *freed]:
        rt.publish("action", changed)
    return {"success": True, "action": action, "unblocked": [a["id"] for a in freed]}


@tool(
    "actions_list",
    params(
        status=STATUS,
        project=PROJECT,
        parentId=string("Children of this action", max_length=128),
        limit=integer("Maximum actions", minimum=1, maximum=1000, default=50),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/actions")],
    mcp=False,
)
def actions_list(ctx: Ctx, args: dict) -> dict:
    """List actions, most recently updated first (filters: status, project, parentId)."""
    graph = Graph(ctx, ctx.rt.db.reader(), args.get("agentId"))
    status = normalise_status(args["status"]) if args.get("status") else None
    items = [
        a
        for a in graph.actions.values()
        if (status is None or a.get("status") == status)
        and all(args.get(k) is None or a.get(k) == args[k] for k in ("project", "parentId"))
    ]
    items.sort(key=lambda a: (a.get("updatedAt") or "", a["id"]), reverse=True)
    return {"success": True, "actions": items[: args["limit"]], "total": len(items)}


@tool(
    "action_get",
    params(["actionId"], actionId=string("Action id", max_length=128), agentId=AGENT_ID),
    http=[("GET", "/actions/get")],
    mcp=False,
)
def action_get(ctx: Ctx, args: dict) -> dict:
    """One action with its edges (both directions) and its children."""
    graph = Graph(ctx, ctx.rt.db.reader(), args.get("agentId"))
    action = graph.get(args["actionId"])
    edges = graph.touching(action["id"])
    children = [a for a in graph.actions.values() if a.get("parentId") == action["id"]]
    return {
        "success": True,
        "action": action,
        "edges": edges,
        "children": children,
        "blockers": graph.blockers(action["id"]),
    }


@tool(
    "action_edge_create",
    params(
        ["sourceActionId", "targetActionId", "type"],
        sourceActionId=string("From", max_length=128),
        targetActionId=string("To", max_length=128),
        type=string("Edge type", enum=EDGE_TYPES),
    ),
    http=[("POST", "/actions/edges", 201)],
    mcp=False,
)
def action_edge_create(ctx: Ctx, args: dict) -> Reply:
    """Add an edge between two actions; a new unmet `requires` edge blocks a pending source."""
    rt, now = ctx.rt, ctx.rt.clock.iso()
    with rt.db.transaction("action_edge_create", agent_id=rt.settings.agent_id) as tx:
        graph = Graph(ctx, tx)
        source = graph.get(args["sourceActionId"], "sourceActionId")
        _check_edge(graph, args["type"], source["id"], args["targetActionId"], "edge")
        edge = _new_edge(ctx, args["type"], source["id"], args["targetActionId"], now)
        tx.records.set(EDGES, edge["id"], edge, now=now)
        graph.add_edge(edge)
        if source.get("status") == "pending" and graph.blockers(source["id"]):
            source.update(status="blocked", updatedAt=now)
            tx.records.set(ACTIONS, source["id"], source, now=now)
            tx.after_commit(lambda: rt.publish("action", source))
    return Reply({"success": True, "edge": edge}, 201)


# -- the frontier -----------------------------------------------------------------------------------------


def frontier(ctx: Ctx, graph: Graph, project: str | None) -> tuple[list[dict[str, Any]], int]:
    """(ranked unblocked actions, number of unfinished actions considered)."""
    now = ctx.rt.clock.time()
    ranked, considered = [], 0
    for action in graph.actions.values():
        if action.get("status") in FINISHED or (project is not None and action.get("project") != project):
            continue
        considered += 1
        if graph.blockers(action["id"]):
            continue
        created = parse_time(action.get("createdAt") or "")
        age_hours = max(0.0, (now - created.timestamp()) / 3600) if created else 0.0
        score = (
            int(action.get("priority", 5)) * 10
            + min(age_hours * 0.5, 20)
            + 5 * len(graph.out(action["id"], "unlocks"))
            + (3 if graph.out(action["id"], "spawned_by") else 0)
            + (15 if action.get("status") == "active" else 0)
        )
        ranked.append({"action": action, "score": round(score, 2), "blockers": [], "leased": False})
    ranked.sort(key=lambda item: (-item["score"], item["action"].get("createdAt") or "", item["action"]["id"]))
    return ranked, considered


@tool(
    "memory_frontier",
    params(
        project=PROJECT,
        limit=integer("Maximum actions", minimum=1, maximum=500, default=20),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/frontier")],
)
def memory_frontier(ctx: Ctx, args: dict) -> dict:
    """Unblocked actions ranked: priority x 10 + age (<= 20) + 5 per unlock + 15 if active."""
    graph = Graph(ctx, ctx.rt.db.reader(), args.get("agentId"))
    ranked, considered = frontier(ctx, graph, args.get("project"))
    return {
        "success": True,
        "frontier": ranked[: args["limit"]],
        "totalActions": considered,
        "totalUnblocked": len(ranked),
    }


@tool("memory_next", params(project=PROJECT, agentId=AGENT_ID), http=[("GET", "/next")], mcp=False)
def memory_next(ctx: Ctx, args: dict) -> dict:
    """The single best next action (the top of the frontier), or null with a reason."""
    graph = Graph(ctx, ctx.rt.db.reader(), args.get("agentId"))
    ranked, considered = frontier(ctx, graph, args.get("project"))
    body: dict[str, Any] = {
        "success": True,
        "suggestion": None,
        "totalActions": considered,
        "totalUnblocked": len(ranked),
    }
    if not ranked:
        body["message"] = "every open action is blocked" if considered else "no open actions"
        return body
    top = ranked[0]
    action = top["action"]
    body["suggestion"] = {
        "actionId": action["id"],
        "title": action.get("title"),
        "description": action.get("description"),
        "priority": action.get("priority"),
        "score": top["score"],
        "tags": action.get("tags") or [],
    }
    body["message"] = f"next: {action.get('title')}"
    return body
