"""Liveness and health: the two probes every deployment watches."""

from __future__ import annotations

from typing import Any

from agentmemory_server.kernel.registry import Ctx, Reply, params, tool
from agentmemory_server.kernel.scopes import SESSIONS


@tool("livez", params(), http=[("GET", "/livez")], mcp=False)
def livez(ctx: Ctx, args: dict) -> dict:
    """Liveness probe; always open, even with auth on."""
    return {"status": "ok", "service": "agentmemory", "version": ctx.rt.version}


@tool("health", params(), http=[("GET", "/health")], mcp=False)
def health(ctx: Ctx, args: dict) -> Any:
    """Health snapshot: database, record counts, background jobs and every subsystem."""
    rt = ctx.rt
    store = rt.db.reader()
    counts = store.index.kind_counts()
    sizes = rt.db.file_sizes()
    sections = rt.health_sections()
    states = [s.get("status") for s in sections.values() if isinstance(s, dict)]
    status = "critical" if "critical" in states else "degraded" if "degraded" in states else "healthy"
    body = {
        "status": status,
        "service": "agentmemory",
        "version": rt.version,
        "uptimeSeconds": round(rt.clock.time() - rt.started_at, 1),
        "db": {
            "path": str(rt.db.path),
            "schemaVersion": rt.db.schema_version,
            "sizeBytes": sizes["db"],
            "walBytes": sizes["wal"],
        },
        "counts": {
            "sessions": store.records.count(SESSIONS),
            "observations": counts.get("observation", 0),
            "memories": counts.get("memory", 0),
        },
        "live": rt.hub.stats(),
        "jobs": rt.jobs.status(),
        **sections,
    }
    return Reply(body, 503) if status == "critical" else body
