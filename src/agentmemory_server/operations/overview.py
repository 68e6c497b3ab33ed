"""Read-only views for the live viewer: counts and ingest rate, recent activity across
sessions, and the project-folder graph. All of them are plain tools (REST under
``/agentmemory/viewer/...``, not listed for MCP)."""

from __future__ import annotations

import itertools
import posixpath
import re
from collections import Counter
from datetime import timedelta
from typing import Any

from agentmemory_server.kernel import registry
from agentmemory_server.kernel.access import agent_filter, in_token_projects, token_principal, visible_to
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, SESSION_ID, Ctx, array, integer, params, string, tool
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS
from agentmemory_server.kernel.util import iso, parse_time
from agentmemory_server.operations import health
from agentmemory_server.retrieval import search
from agentmemory_server.retrieval.stopwords import STOPWORDS

INGEST_WINDOW_MINUTES = 60
INGEST_SCAN_LIMIT = 5000  # audit rows read per operation; a busier hour is reported as capped
NO_PROJECT = "(no project)"
CONCEPT_SCAN_LIMIT = 20_000
TOP_CONCEPTS = 25
_TERM = re.compile(r"[\w][\w.+#-]*", re.UNICODE)


# -- overview --------------------------------------------------------------------------------------


def ingest_rate(ctx: Ctx, operation: str) -> dict[str, Any]:
    """Changes per minute over the last hour, from the audit log (oldest minute first)."""
    if token_principal(ctx) is not None:
        return own_ingest_rate(ctx, operation)
    times = ctx.rt.db.reader().audit.times(operation, limit=INGEST_SCAN_LIMIT)
    return _per_minute(ctx, times)


# The kind of record each counted audit operation writes.
_INGESTED_KIND = {"observe": "observation", "remember": "memory"}


def own_ingest_rate(ctx: Ctx, operation: str) -> dict[str, Any]:
    """For a principal's token: its own records of the operation's kind per minute over the last
    hour, by their time (the audit log counts every principal's and project's writes), of its
    token's projects only."""
    since = ctx.rt.clock.now() - timedelta(minutes=INGEST_WINDOW_MINUTES)
    filters = {"kinds": [_INGESTED_KIND[operation]], "agent_id": agent_filter(ctx), "since": iso(since)}
    docs = ctx.rt.db.reader().index.recent(limit=INGEST_SCAN_LIMIT, offset=0, filters=filters)
    return _per_minute(ctx, [doc["ts"] for doc in docs if in_token_projects(ctx, doc)], scanned=len(docs))


def _per_minute(ctx: Ctx, times: list[str], scanned: int | None = None) -> dict[str, Any]:
    """Times (newest first) in minute buckets over the last hour, oldest minute first."""
    now = ctx.rt.clock.now().replace(second=0, microsecond=0)
    buckets = [0] * INGEST_WINDOW_MINUTES
    scanned = len(times) if scanned is None else scanned
    for ts in times:
        when = parse_time(ts)
        if when is None:
            continue
        age = int((now - when.replace(second=0, microsecond=0)) / timedelta(minutes=1))
        if age >= INGEST_WINDOW_MINUTES:
            break  # newest first: everything after this is older still
        if age >= 0:
            buckets[INGEST_WINDOW_MINUTES - 1 - age] += 1
    return {
        "perMinute": buckets,
        "lastMinute": buckets[-1],
        "lastHour": sum(buckets),
        "capped": scanned >= INGEST_SCAN_LIMIT and sum(buckets) >= len(times),
    }


# Routes other modules may add; the viewer asks for them only when this server has them.
OPTIONAL_ROUTES = {
    "lessons": ("GET", "/lessons"),
    "slots": ("GET", "/slots"),
    "actions": ("GET", "/actions"),
    "relations": ("GET", "/relations"),
    "timeline": ("POST", "/timeline"),
    "profile": ("GET", "/profile"),
}


def features() -> dict[str, bool]:
    bound = {(r.method, r.path) for t in registry.REGISTRY.all() for r in t.routes}
    return {name: route in bound for name, route in OPTIONAL_ROUTES.items()}


@tool("viewer_overview", params(), http=[("GET", "/viewer/overview")], mcp=False)
def viewer_overview(ctx: Ctx, args: dict) -> dict:
    """Dashboard numbers: records per kind, observations and memories ingested per minute over the
    last hour, the live stream's state and which optional routes this server has."""
    body = {
        "counts": health.record_counts(ctx),
        "features": features(),
        "ingest": {
            "windowMinutes": INGEST_WINDOW_MINUTES,
            "observations": ingest_rate(ctx, "observe"),
            "memories": ingest_rate(ctx, "remember"),
        },
        "live": ctx.rt.hub.stats(),
        "version": ctx.rt.version,
        "now": ctx.rt.clock.iso(),
    }
    if token_principal(ctx) is not None:  # the stream's numbers count every principal's events
        del body["live"]
    return body


# -- activity ----------------------------------------------------------------------------------------------


def _slim(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """The fields a list shows; the raw hook payload stays behind (GET /observations has it)."""
    return {k: v for k, v in record.items() if k != "raw"} if kind == "observation" else record


@tool(
    "viewer_activity",
    params(
        limit=integer("Page size", minimum=1, maximum=500, default=100),
        offset=integer("Rows to skip", minimum=0, maximum=10_000_000, default=0),
        kinds=array(string(enum=["observation", "memory"]), "Kinds to include (default both)", max_items=2),
        project=PROJECT,
        sessionId=SESSION_ID,
        agentId=AGENT_ID,
    ),
    http=[("GET", "/viewer/activity")],
    mcp=False,
)
def viewer_activity(ctx: Ctx, args: dict) -> dict:
    """Observations and latest memories across all sessions, newest first (paginated, with the
    total), without raw hook payloads."""
    filters: dict[str, Any] = {
        "kinds": args.get("kinds") or ["observation", "memory"],
        "project": args.get("project"),
        "agent_id": agent_filter(ctx, args.get("agentId")),
    }
    if args.get("sessionId"):
        filters["session_ids"] = [args["sessionId"]]
    store = ctx.rt.db.reader()
    docs = store.index.recent(limit=args["limit"], offset=args["offset"], filters=filters)
    items = [
        {
            "kind": hit["kind"],
            "ts": hit["ts"],
            "sessionId": hit["session_id"],
            "project": hit["project"],
            "record": _slim(hit["kind"], record),
        }
        for hit, record in search.hydrate(store, docs)
    ]
    total = store.index.total(filters=filters)
    return {
        "items": items,
        "total": total,
        "offset": args["offset"],
        "limit": args["limit"],
        "hasMore": args["offset"] + len(docs) < total,
    }


# -- the project-folder graph ------------------------------------------------------------------------------


def folder_of(record: dict[str, Any]) -> str:
    """The folder a session or memory belongs to: its project, else its working directory."""
    return str(record.get("project") or record.get("cwd") or NO_PROJECT)


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text


def path_segments(path: str) -> list[str]:
    return [p for p in re.split(r"[\\/]+", path) if p]


def shared_parent(a: str, b: str) -> str | None:
    """The directory two folder paths share when they are siblings or one holds the other."""
    sa, sb = path_segments(a), path_segments(b)
    if not sa or not sb or sa == sb:
        return None
    common = list(itertools.takewhile(lambda pair: pair[0] == pair[1], zip(sa, sb, strict=False)))
    depth = len(common)
    siblings = depth == len(sa) - 1 == len(sb) - 1
    nested = depth == min(len(sa), len(sb))
    if depth == 0 or not (siblings or nested):
        return None
    return "/" + "/".join(sa[:depth])


def concept_terms(text: str) -> list[str]:
    terms = (t.lower().strip(".-") for t in _TERM.findall(text or ""))
    return [t for t in terms if len(t) > 2 and t not in STOPWORDS and not t.isdigit()]


class FolderGraph:
    """Folders (grouped sessions and memories) with their top concepts, and the edges between them."""

    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.cwds: dict[str, Counter] = {}
        self.concepts: dict[str, Counter] = {}
        self.session_folder: dict[str, str] = {}

    def folder(self, key: str) -> dict[str, Any]:
        if key not in self.folders:
            self.folders[key] = {"id": key, "sessions": 0, "memories": 0, "observations": 0, "lastActive": None}
            self.cwds[key], self.concepts[key] = Counter(), Counter()
        return self.folders[key]

    def touch(self, folder: dict[str, Any], when: str | None) -> None:
        if when and (folder["lastActive"] is None or when > folder["lastActive"]):
            folder["lastActive"] = when

    def add_session(self, session: dict[str, Any]) -> None:
        key = folder_of(session)
        folder = self.folder(key)
        folder["sessions"] += 1
        folder["observations"] += int(session.get("observationCount") or 0)
        self.session_folder[session["id"]] = key
        if session.get("cwd"):
            self.cwds[key][session["cwd"]] += 1
        self.touch(folder, session.get("updatedAt") or session.get("startedAt"))

    def add_memory(self, memory: dict[str, Any]) -> None:
        key = folder_of(memory)
        folder = self.folder(key)
        folder["memories"] += 1
        self.concepts[key].update(concept_terms(" ".join(map(str, memory.get("concepts") or []))))
        self.touch(folder, memory.get("updatedAt"))

    def add_concepts(self, project: str | None, session_id: str | None, text: str) -> None:
        key = project or self.session_folder.get(session_id or "")
        if key in self.folders:
            self.concepts[key].update(concept_terms(text))

    def path(self, key: str) -> str:
        if _looks_like_path(key):
            return key
        common = self.cwds[key].most_common(1)
        return common[0][0] if common else key

    def render(self, max_folders: int, edges_per_folder: int) -> dict[str, Any]:
        ranked = sorted(self.folders.values(), key=lambda f: (-(f["sessions"] + f["memories"]), f["id"]))
        shown = ranked[:max_folders]
        for folder in shown:
            folder["path"] = self.path(folder["id"])
            folder["label"] = posixpath.basename(folder["path"].rstrip("/\\")) or folder["path"]
            folder["concepts"] = [c for c, _ in self.concepts[folder["id"]].most_common(8)]
        return {
            "folders": shown,
            "edges": self.edges(shown, edges_per_folder),
            "totalFolders": len(self.folders),
            "truncated": len(self.folders) > len(shown),
        }

    def edges(self, shown: list[dict[str, Any]], per_folder: int) -> list[dict[str, Any]]:
        top = {f["id"]: {c for c, _ in self.concepts[f["id"]].most_common(TOP_CONCEPTS)} for f in shown}
        candidates: list[dict[str, Any]] = []
        for a, b in itertools.combinations(shown, 2):
            shared = sorted(top[a["id"]] & top[b["id"]])
            parent = shared_parent(a["path"], b["path"])
            if shared or parent:
                candidates.append(
                    {
                        "source": a["id"],
                        "target": b["id"],
                        "concepts": shared[:8],
                        "parent": parent,
                        "weight": len(shared) + (2 if parent else 0),
                    }
                )
        candidates.sort(key=lambda e: (-e["weight"], e["source"], e["target"]))
        degree: Counter = Counter()
        kept = []
        for edge in candidates:  # strongest first; each folder keeps its best few
            if degree[edge["source"]] < per_folder or degree[edge["target"]] < per_folder:
                kept.append(edge)
                degree[edge["source"]] += 1
                degree[edge["target"]] += 1
        return kept


@tool(
    "viewer_graph",
    params(
        maxFolders=integer("Largest folders to include", minimum=1, maximum=500, default=150),
        edgesPerFolder=integer("Strongest edges kept per folder", minimum=1, maximum=50, default=4),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/viewer/graph")],
    mcp=False,
)
def viewer_graph(ctx: Ctx, args: dict) -> dict:
    """Sessions and latest memories grouped into project folders, with edges between folders that
    share concepts or a parent directory."""
    store = ctx.rt.db.reader()
    agent = agent_filter(ctx, args.get("agentId"))
    graph = FolderGraph()
    for _key, session in store.records.list(SESSIONS):
        if visible_to(ctx, session, args.get("agentId")):
            graph.add_session(session)
    for _key, memory in store.records.list(MEMORIES):
        if memory.get("isLatest", True) and visible_to(ctx, memory, args.get("agentId")):
            graph.add_memory(memory)
    for project, session_id, text in store.index.concepts(
        limit=CONCEPT_SCAN_LIMIT, filters={"kinds": ["observation"], "agent_id": agent}
    ):
        if in_token_projects(ctx, {"project": project}):
            graph.add_concepts(project, session_id, text)
    return graph.render(args["maxFolders"], args["edgesPerFolder"])
