"""Export and import of everything the server holds.

The export keeps upstream's top-level shape for the core records (``sessions``,
``observations`` by session, ``memories``, ``summaries``) and carries every other scope
verbatim under ``kv``, so nothing is lost and export -> import into an empty DB -> export gives
the same document (apart from ``exportedAt``). Imports of upstream agentmemory exports are
accepted too; their extra lists are mapped onto our scopes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.kernel.registry import AGENT_ID, Ctx, integer, obj, params, string, tool
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS, SUMMARIES, obs_scope
from agentmemory_server.retrieval import search

FORMAT_VERSION = "agentmemory-python/1"
_UPSTREAM_VERSION = re.compile(r"^0\.\d+\.\d+$")
STRATEGIES = ("merge", "replace", "skip")
# Upstream ExportData lists -> (our scope, field holding the key).
UPSTREAM_LISTS = {
    "lessons": ("mem:lessons", "id"),
    "insights": ("mem:insights", "id"),
    "actions": ("mem:actions", "id"),
    "actionEdges": ("mem:action-edges", "id"),
    "crystals": ("mem:crystals", "id"),
    "profiles": ("mem:profiles", "project"),
    "semanticMemories": ("mem:semantic", "id"),
    "proceduralMemories": ("mem:procedural", "id"),
    "relations": ("mem:relations", "id"),
    "graphNodes": ("mem:graph:nodes", "id"),
    "graphEdges": ("mem:graph:edges", "id"),
}


def _is_core(scope: str) -> bool:
    return scope in (SESSIONS, MEMORIES, SUMMARIES) or scope.startswith("mem:obs:")


def _owned_by(agent: str | None):
    """Filter for one agent's records (every record when agent is None). Records without an
    agentId belong to nobody, so an agent-scoped export leaves them out (fail closed)."""

    def keep(value: Any) -> bool:
        return agent is None or (isinstance(value, dict) and value.get("agentId") == agent)

    return keep


def build_export(
    store, *, offset: int = 0, max_sessions: int | None = None, exported_at: str, agent: str | None = None
) -> dict[str, Any]:
    keep = _owned_by(agent)
    session_rows = [(k, v) for k, v in store.records.list(SESSIONS) if keep(v)]
    total = len(session_rows)
    page = session_rows[offset : offset + max_sessions if max_sessions else None]
    observations = {key: [value for _k, value in store.records.list(obs_scope(key)) if keep(value)] for key, _ in page}
    export: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "service": "agentmemory",
        "exportedAt": exported_at,
        "sessions": [value for _k, value in page],
        "observations": observations,
    }
    if offset == 0:
        export["memories"] = [value for _k, value in store.records.list(MEMORIES) if keep(value)]
        export["summaries"] = [value for _k, value in store.records.list(SUMMARIES) if keep(value)]
        kv: dict[str, dict[str, Any]] = {}
        for scope in store.records.scopes():
            if not _is_core(scope):
                rows = {k: v for k, v in store.records.list(scope) if keep(v)}
                if rows or agent is None:
                    kv[scope] = rows
        export["kv"] = kv
        # Sessions whose observations exist but whose session row is gone still export.
        orphan_scopes = [
            s
            for s in store.records.scopes()
            if s.startswith("mem:obs:") and s[len("mem:obs:") :] not in {k for k, _ in store.records.list(SESSIONS)}
        ]
        for scope in orphan_scopes:
            rows = [v for _k, v in store.records.list(scope) if keep(v)]
            if rows:
                observations[scope[len("mem:obs:") :]] = rows
    export["pagination"] = {
        "offset": offset,
        "limit": max_sessions,
        "total": total,
        "hasMore": bool(max_sessions) and offset + len(page) < total,
    }
    return export


@tool(
    "memory_export",
    params(
        maxSessions=integer("Sessions per page (default: all)", minimum=1, maximum=100_000),
        offset=integer("Sessions to skip", minimum=0, maximum=10_000_000, default=0),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/export")],
    core=True,
)
def memory_export(ctx: Ctx, args: dict) -> dict:
    """Export sessions, observations, memories, summaries and every other record as JSON."""
    store = ctx.rt.db.reader()
    return build_export(
        store,
        offset=args["offset"],
        max_sessions=args.get("maxSessions"),
        exported_at=ctx.rt.clock.iso(),
        agent=agent_filter(ctx, args.get("agentId")),
    )


# -- import -------------------------------------------------------------------------------------


def _records(export: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(scope, key, value) of every record in an export; raises InvalidInput naming the path."""

    def rows(name: str, key_field: str, scope_of) -> Iterator[tuple[str, str, dict]]:
        items = export.get(name) or []
        if not isinstance(items, list):
            raise InvalidInput(f"exportData.{name} must be a list", field=f"exportData.{name}")
        for i, item in enumerate(items):
            key = item.get(key_field) if isinstance(item, dict) else None
            if not isinstance(key, str) or not key:
                raise InvalidInput(
                    f"exportData.{name}[{i}].{key_field} must be a non-empty string",
                    field=f"exportData.{name}[{i}].{key_field}",
                )
            yield scope_of(item), key, item

    yield from rows("sessions", "id", lambda _i: SESSIONS)
    observations = export.get("observations") or {}
    if not isinstance(observations, dict):
        raise InvalidInput(
            "exportData.observations must be an object of sessionId -> list", field="exportData.observations"
        )
    for sid, items in observations.items():
        if not isinstance(items, list):
            raise InvalidInput(
                f"exportData.observations[{sid!r}] must be a list", field=f"exportData.observations.{sid}"
            )
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise InvalidInput(
                    f"exportData.observations[{sid!r}][{i}].id must be a string", field=f"exportData.observations.{sid}"
                )
            yield obs_scope(sid), item["id"], {**item, "sessionId": sid}
    yield from rows("memories", "id", lambda _i: MEMORIES)
    yield from rows("summaries", "sessionId", lambda _i: SUMMARIES)
    for name, (scope, key_field) in UPSTREAM_LISTS.items():
        if name in export:
            yield from rows(name, key_field, lambda _i, s=scope: s)
    kv = export.get("kv") or {}
    if not isinstance(kv, dict):
        raise InvalidInput("exportData.kv must be an object of scope -> {key: value}", field="exportData.kv")
    for scope, entries in kv.items():
        if not isinstance(entries, dict):
            raise InvalidInput(f"exportData.kv[{scope!r}] must be an object", field=f"exportData.kv.{scope}")
        for key, value in entries.items():
            yield scope, key, value


def _check_version(export: dict[str, Any]) -> None:
    version = export.get("version")
    if version != FORMAT_VERSION and not (isinstance(version, str) and _UPSTREAM_VERSION.match(version)):
        raise InvalidInput(
            f"unsupported export version {version!r}; expected {FORMAT_VERSION!r} "
            "or an upstream agentmemory 0.x.y export",
            field="exportData.version",
        )


def import_export(ctx: Ctx, export: dict[str, Any], strategy: str) -> dict[str, Any]:
    _check_version(export)
    records = list(_records(export))  # validate everything before touching the database
    counts: dict[str, dict[str, int]] = {}
    now = ctx.rt.clock.iso()
    with ctx.rt.db.transaction("import", agent_id=ctx.rt.settings.agent_id) as tx:
        if strategy == "replace":
            tx.admin.wipe_records()
        for scope, key, value in records:
            section = "observations" if scope.startswith("mem:obs:") else scope
            tally = counts.setdefault(section, {"imported": 0, "skipped": 0})
            if strategy == "skip" and tx.records.get(scope, key) is not None:
                tally["skipped"] += 1
                continue
            value = strip_private_data(value)
            tx.records.set(scope, key, value, now=now)
            kind = search.kind_for_scope(scope)
            if kind and isinstance(value, dict):
                search.index_record(tx, kind, value)
            if scope.startswith("mem:obs:") and isinstance(value, dict) and value.get("eventId"):
                if tx.events.get(value["eventId"]) is None:
                    tx.events.put(value["eventId"], value["sessionId"], key, now)
            tally["imported"] += 1
        tx.audit_message = f"import ({strategy}) of {len(records)} record(s)"
        tx.audit_details = {"strategy": strategy, "counts": counts}
    ctx.rt.publish("import", {"strategy": strategy, "counts": counts})
    return {
        "success": True,
        "strategy": strategy,
        "counts": counts,
        "imported": sum(c["imported"] for c in counts.values()),
        "skipped": sum(c["skipped"] for c in counts.values()),
    }


@tool(
    "import",
    params(
        exportData=obj("A document produced by GET /export (or upstream agentmemory's export)"),
        strategy=string(
            "merge: imported records win; skip: keep existing; replace: wipe first", enum=STRATEGIES, default="merge"
        ),
    ),
    http=[("POST", "/import")],
    mcp=False,
)
def import_tool(ctx: Ctx, args: dict) -> dict:
    """Import an export; re-indexes everything it writes."""
    export = args.get("exportData")
    if export is None and "version" in args:
        export = {k: v for k, v in args.items() if k != "strategy"}  # the export itself as body
    if not isinstance(export, dict):
        raise InvalidInput("missing required field 'exportData'", field="exportData")
    return import_export(ctx, export, args["strategy"])
