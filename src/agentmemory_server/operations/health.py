"""Liveness and health: the two probes every deployment watches."""

from __future__ import annotations

from collections import Counter
from typing import Any

from agentmemory_server.errors import Unavailable
from agentmemory_server.kernel.access import agent_filter, count_visible, token_principal, token_projects
from agentmemory_server.kernel.registry import Ctx, Reply, params, tool
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS

# Scope families shown under another name in counts (kv scopes are "mem:<family>[:...]").
_FAMILY_NAMES = {"obs": "observations", "action-edges": "actionEdges"}


@tool("livez", params(), http=[("GET", "/livez")], mcp=False)
def livez(ctx: Ctx, args: dict) -> dict:
    """Liveness probe; always open, even with auth on."""
    return {"status": "ok", "service": "agentmemory", "version": ctx.rt.version}


@tool("health", params(), http=[("GET", "/health")], mcp=False)
def health(ctx: Ctx, args: dict) -> Any:
    """Health snapshot: database, record counts, background jobs and every subsystem."""
    if token_principal(ctx) is not None:
        return principal_health(ctx)
    rt = ctx.rt
    db: dict[str, Any] = {"path": rt.db.location}
    from_database: dict[str, Any] = {}
    try:
        sizes = rt.db.file_sizes()
        db.update(schemaVersion=rt.db.schema_version, sizeBytes=sizes["db"], walBytes=sizes["wal"])
        from_database.update(counts=core_counts(ctx), queues=queue_sizes(ctx))
    except Unavailable as exc:  # a database server that does not answer: still a health document
        db["error"] = exc.message
    sections = rt.health_sections()
    status = overall_status(sections, db)
    body = {
        "status": status,
        "service": "agentmemory",
        "version": rt.version,
        "uptimeSeconds": round(rt.clock.time() - rt.started_at, 1),
        "db": db,
        **from_database,
        "live": rt.hub.stats(),
        "jobs": rt.jobs.status(),
        **sections,
    }
    return Reply(body, 503) if status == "critical" else body


def overall_status(sections: dict[str, Any], db: dict[str, Any]) -> str:
    states = [s.get("status") for s in sections.values() if isinstance(s, dict)]
    return "critical" if "critical" in states or "error" in db else "degraded" if "degraded" in states else "healthy"


def section_states(sections: dict[str, Any]) -> dict[str, Any]:
    """Each section's ``status`` alone (sections without one left out): what a principal's
    token is shown of the server's parts."""
    return {
        name: {"status": section["status"]}
        for name, section in sections.items()
        if isinstance(section, dict) and isinstance(section.get("status"), str)
    }


def principal_health(ctx: Ctx) -> Any:
    """/health for a principal's token: the status (503 when critical, as for any caller), the
    version and uptime, the counts of the records it may read and each part's status. The rest
    describes the whole store (every principal's and project's queues, jobs, sizes, refusals,
    model usage, the database's path) and is the admin secret's."""
    rt = ctx.rt
    db: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    try:
        counts = {"counts": record_counts(ctx)}
    except Unavailable as exc:
        db["error"] = exc.message
    sections = rt.health_sections(for_principal=True)
    status = overall_status(sections, db)
    principal = ctx.principal
    body = {
        "status": status,
        "service": "agentmemory",
        "version": rt.version,
        "uptimeSeconds": round(rt.clock.time() - rt.started_at, 1),
        "shownTo": {"principal": principal.name, "projects": list(principal.projects)},
        **counts,
        **section_states(sections),
    }
    if "error" in db:
        body["db"] = {"status": "critical"}
    return Reply(body, 503) if status == "critical" else body


def queue_sizes(ctx: Ctx) -> dict[str, Any]:
    """Every bounded queue: its size now, its bound and what was shed, with the policy when full.
    ``perProcess`` names the fields counted by the answering worker process alone, since it
    started (with several workers or nodes, each counts its own); the others are the database's."""
    rt, store = ctx.rt, ctx.rt.db.reader()
    bounded = rt.db.queue_stats()
    live = rt.hub.stats()
    return {
        "embedBacklog": {
            "size": store.vectors.backlog_stats()["pending"],
            "max": rt.settings.embed_backlog_max,
            "shed": bounded.get("embed_backlog", {}).get("shed", 0),
            "whenFull": "new records stay BM25-only until the backlog drains, then are queued again",
            "perProcess": ["shed"],
        },
        "llmJobs": {
            "size": store.jobs.stats()["pending"],
            "max": rt.settings.llm_jobs_max,
            "shed": bounded.get("llm_jobs", {}).get("shed", 0),
            "whenFull": "new model work is skipped: the record keeps its deterministic result",
            "perProcess": ["shed"],
        },
        "captureInbox": capture_inbox_queue(rt),
        "viewerEvents": {
            "size": live["deepestQueue"],
            "max": live["queueSize"],
            "shed": live["droppedClients"],
            "whenFull": "the lagging viewer is disconnected (close 4000) and reconnects with since=<seq>",
            "perProcess": ["size", "shed"],
        },
    }


def capture_inbox_queue(rt: Any) -> dict[str, Any]:
    """Hook events waiting for a retry (failed dead letters and filtered events are trimmed to
    AGENTMEMORY_CAPTURE_DEAD_MAX, oldest first)."""
    capture = rt.services.get("capture")
    if capture is None:
        return {}
    status = capture.status()
    return {
        "size": status["inbox"]["pending"],
        "max": capture.inbox_max,
        "shed": capture.since_start.get("rejected", 0),
        "whenFull": "a hook event that failed to store is refused with 503 capture_inbox_full; the hook "
        "keeps it and resends",
        "perProcess": ["shed"],
    }


def core_counts(ctx: Ctx) -> dict[str, int]:
    """Sessions, observations and memories (only the caller's in isolated agent scope)."""
    if agent_filter(ctx) is not None:
        return record_counts(ctx)
    store = ctx.rt.db.reader()
    indexed = store.index.kind_counts()
    return {
        "sessions": store.records.count(SESSIONS),
        "observations": indexed.get("observation", 0),
        "memories": indexed.get("memory", 0),
    }


def record_counts(ctx: Ctx) -> dict[str, int]:
    """Records per family of kv scopes (observations summed over sessions, slots over scopes).
    With an agent filter (isolated scope, a principal's token) only the agent's sessions,
    observations and memories, and for a token limited to projects only those of its projects
    (or of none: ``access.in_token_projects``)."""
    store = ctx.rt.db.reader()
    agent = agent_filter(ctx)
    if agent is not None:
        return {
            "sessions": count_visible(ctx, store, SESSIONS),
            "memories": count_visible(ctx, store, MEMORIES),
            "observations": observation_count(store, agent, token_projects(ctx)),
        }
    counts: Counter = Counter()
    for scope, n in store.records.scope_counts().items():
        parts = scope.split(":")
        if len(parts) > 1 and parts[0] == "mem":
            counts[_FAMILY_NAMES.get(parts[1], parts[1])] += n
    for family in ("sessions", "observations", "memories"):
        counts.setdefault(family, 0)
    return dict(counts)


def observation_count(store: Any, agent: str, projects: tuple[str, ...] | None) -> int:
    """The agent's observations; with ``projects``, only those of one of them or of none."""
    filters = {"kinds": ["observation"], "agent_id": agent}
    if projects is None:
        return int(store.index.total(filters=filters))
    by_project = store.index.group_counts("project", filters)
    return int(sum(n for project, n in by_project.items() if project is None or project in projects))
