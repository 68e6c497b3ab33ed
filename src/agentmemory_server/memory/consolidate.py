"""Consolidate: recurring observations become long-term memories, deterministically (U§4.8).

Recent important observations are grouped, per project, by what they share: a file, a concept,
or a distinctive word (one that is neither rare nor in most observations). The biggest groups
that are not mostly covered by a bigger one become memories through the normal remember path
(so a near-duplicate of an earlier consolidation becomes its next version). A group whose
observations have not changed since the last run is skipped, so running it twice is a no-op.
A model step registered for ``consolidate`` may write the memories instead; it is asked only
about the groups not written yet, so a run after a partial failure pays only for the rest. A
step that raises ``Deferred`` (a background job whose model failed in a way that may pass)
leaves that project's groups unwritten for the job's next try, instead of writing the
deterministic memories the model's would never replace.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from agentmemory_server.kernel import registry
from agentmemory_server.kernel.access import agent_filter, count_visible, stamp_agent, token_projects
from agentmemory_server.kernel.model_steps import SYNTHETIC, Deferred, run_model_steps, written_by
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, Ctx, boolean, integer, params, string, tool
from agentmemory_server.kernel.scopes import CONSOLIDATION as STATE
from agentmemory_server.kernel.scopes import PROCEDURAL, RELATIONS, SEMANTIC, SUMMARIES
from agentmemory_server.kernel.util import truncate
from agentmemory_server.memory import memories, relations, summaries
from agentmemory_server.memory.vocabulary import NOISE, file_names_only
from agentmemory_server.retrieval import search
from agentmemory_server.storage.interfaces import equal

SCAN = 1000
MIN_GROUP = 3
MAX_SOURCE_IDS = 200  # what memory_save accepts; the group state keeps them all
_WORD = re.compile(r"[a-z][a-z0-9_\-]{3,}")
# Words that group records of every project: the vocabulary's noise, and the names of the tools
# and outcomes that head most records' titles ("Bash: ...", "... passed").
_LEFT_OUT = NOISE | frozenset(["bash", "edit", "read", "write", "command", "passed", "failed", "json", "python"])


def observation_keys(obs: dict[str, Any]) -> set[str]:
    keys = {f"file:{f}" for f in obs.get("files") or []}
    keys |= {f"concept:{str(c).lower()}" for c in obs.get("concepts") or []}
    text = file_names_only(f"{obs.get('title', '')} {obs.get('narrative', '')}").lower()
    keys |= {f"term:{w}" for w in _WORD.findall(text) if w not in _LEFT_OUT}
    return keys


def find_groups(observations: list[dict], max_groups: int) -> list[tuple[str, list[dict]]]:
    """The largest shared-key groups (files before concepts before words on ties), skipping any
    group whose observations are mostly in an already chosen one."""
    members: dict[str, list[dict]] = {}
    for obs in observations:
        for key in observation_keys(obs):
            members.setdefault(key, []).append(obs)
    common = max(MIN_GROUP, len(observations) // 2)
    rank = {"file": 0, "concept": 1, "term": 2}
    candidates = [
        k
        for k, group in members.items()
        if len(group) >= MIN_GROUP and (not k.startswith("term:") or len(group) <= common)
    ]
    candidates.sort(key=lambda k: (-len(members[k]), rank[k.split(":", 1)[0]], k))
    chosen: list[tuple[str, list[dict]]] = []
    covered: set[str] = set()
    for key in candidates:
        ids = {o["id"] for o in members[key]}
        if len(ids - covered) * 2 < len(ids):
            continue
        chosen.append((key, members[key]))
        covered |= ids
        if len(chosen) >= max_groups:
            break
    return chosen


def _days(first: str, last: str) -> str:
    """When a group's observations were made: "on 2026-12-06", or "from ... to ..."."""
    return f"on {first}" if first == last else f"from {first} to {last}"


def draft_memory(key: str, group: list[dict]) -> dict[str, Any]:
    kind, value = key.split(":", 1)
    label = f"work on {value}" if kind == "file" else f"'{value}'"
    types = Counter(o.get("type") or "other" for o in group)
    memory_type = (
        "bug"
        if types["error"] * 2 >= len(group)
        else "workflow"
        if types["command_run"] * 2 >= len(group)
        else "pattern"
    )
    sessions = list(dict.fromkeys(o.get("sessionId") for o in group))
    stamps = sorted(o.get("timestamp") or "" for o in group)
    ranked = sorted(group, key=lambda o: (-int(o.get("importance") or 0), o.get("timestamp") or ""))
    # The most important titles, each once: a recurring failure repeats its title in every session.
    highlights = list(dict.fromkeys(truncate(o.get("title", ""), 80) for o in ranked))[:5]
    files = list(dict.fromkeys(f for o in group for f in o.get("files") or []))[:10]
    content = (
        f"Recurring {label}: {len(group)} observations across {summaries.plural(len(sessions), 'session')} "
        f"{_days(stamps[0][:10], stamps[-1][:10])} ({summaries.type_counts(group, 3)}). Highlights: "
        + "; ".join(highlights)
        + "."
        + (f" Files: {', '.join(files[:5])}." if files else "")
    )
    return {
        "title": truncate(f"Recurring {label}", 80),
        "content": content,
        "type": memory_type,
        "concepts": [value] if kind != "file" else [],
        "files": files,
        "sourceObservationIds": sorted(o["id"] for o in group),
    }


def _observations(ctx: Ctx, store, project: str | None, agent: str | None) -> dict[str | None, list[dict]]:
    hits = store.index.recent(limit=SCAN, filters={"kinds": ["observation"], "project": project, "agent_id": agent})
    by_project: dict[str | None, list[dict]] = {}
    for _hit, obs in search.hydrate(store, hits):
        if int(obs.get("importance") or 0) >= 5 and obs.get("title"):
            by_project.setdefault(obs.get("project"), []).append(obs)
    return by_project


def _remember(ctx: Ctx, project: str | None, fields: dict[str, Any], writer: dict[str, str]) -> str:
    args = {k: v for k, v in fields.items() if v} | ({"project": project} if project else {})
    if "sourceObservationIds" in args:  # a memory keeps the newest (ids sort by creation time)
        args["sourceObservationIds"] = args["sourceObservationIds"][-MAX_SOURCE_IDS:]
    with memories.drafted_by(writer):  # a model's draft names the provider and model
        saved = registry.run(memories.memory_save, ctx, args)
    return saved["memory"]["id"]


def _state_key(ctx: Ctx, project: str | None, key: str) -> tuple[str | None, str]:
    agent = stamp_agent(ctx, None)
    return agent, "\x1f".join([agent or "", project or "", key])


def _written(ctx: Ctx, project: str | None, key: str, group: list[dict]) -> bool:
    """Were exactly these observations consolidated before (by the model or not)? Then the
    group is not drafted, nor sent to a model, again."""
    previous = ctx.rt.db.reader().records.get(STATE, _state_key(ctx, project, key)[1])
    return bool(previous) and previous.get("sources") == sorted(o["id"] for o in group)


def _save(
    ctx: Ctx, project: str | None, key: str, draft: dict[str, Any], writer: dict[str, str]
) -> tuple[str, list[str]] | None:
    """Save one drafted memory (and the facts a model step drafted with it, as ``fact``
    memories) unless the same observations were consolidated before; a model's draft keeps
    ``writer`` (``method``, ``model``)."""
    agent, state_key = _state_key(ctx, project, key)
    sources = draft["sourceObservationIds"]
    # Read again, not reused from ``_written``: a model step may have taken seconds, in which
    # another run (a sibling process, the background job) can have written this group.
    previous = ctx.rt.db.reader().records.get(STATE, state_key)
    if previous and previous.get("sources") == sources:
        return None
    memory_id = _remember(ctx, project, {k: v for k, v in draft.items() if k != "facts"}, writer)
    fact_ids = [
        _remember(
            ctx,
            project,
            {"content": fact, "type": "fact", "concepts": draft.get("concepts"), "sourceObservationIds": sources},
            writer,
        )
        for fact in draft.get("facts") or []
    ]
    with ctx.rt.db.transaction("consolidate", agent_id=agent) as tx:
        state = {
            "key": key,
            "project": project,
            "memoryId": memory_id,
            "sources": sources,
            "updatedAt": ctx.rt.clock.iso(),
        }
        if fact_ids:
            state["factIds"] = fact_ids
        if agent:
            state["agentId"] = agent
        tx.records.set(STATE, state_key, state, now=state["updatedAt"])
    return memory_id, fact_ids


@tool(
    "memory_consolidate",
    params(
        project=PROJECT,
        minObservations=integer(
            "Do nothing below this many important observations", minimum=1, maximum=10_000, default=5
        ),
        maxGroups=integer("Most memories to write per project", minimum=1, maximum=50, default=10),
        dryRun=boolean("Show the groups without saving", default=False),
        tier=string("Accepted for upstream compatibility; every tier runs the same grouping", max_length=40),
        agentId=AGENT_ID,
    ),
    http=[("POST", "/consolidate")],
    core=True,
)
def memory_consolidate(ctx: Ctx, args: dict) -> dict:
    """Group recurring observations (shared files, concepts, distinctive words) into long-term
    memories, per project; re-running without new observations writes nothing."""
    agent = agent_filter(ctx, args.get("agentId"))
    by_project = _observations(ctx, ctx.rt.db.reader(), args.get("project"), agent)
    scanned = sum(len(v) for v in by_project.values())
    result: dict[str, Any] = {
        "success": True,
        "dryRun": args["dryRun"],
        "observationsScanned": scanned,
        "groups": [],
        "memories": [],
        "facts": [],
        "unchanged": 0,
        "method": SYNTHETIC,
    }
    if scanned < args["minObservations"]:
        result["reason"] = f"{scanned} important observation(s); need at least {args['minObservations']}"
        return result
    for project in sorted(by_project, key=lambda p: p or ""):
        groups = find_groups(by_project[project], args["maxGroups"])
        result["groups"] += [_group_view(project, key, group) for key, group in groups]
        pending = [(key, group) for key, group in groups if not _written(ctx, project, key, group)]
        result["unchanged"] += len(groups) - len(pending)
        if pending:
            _consolidate_project(ctx, project, pending, args["dryRun"], result)
    result["consolidated"] = len(result["memories"])
    return result


def _group_view(project: str | None, key: str, group: list[dict]) -> dict[str, Any]:
    return {
        "key": key,
        "project": project,
        "observations": len(group),
        "sessions": len({o.get("sessionId") for o in group}),
    }


def _consolidate_project(
    ctx: Ctx, project: str | None, groups: list[tuple[str, list[dict]]], dry_run: bool, result: dict[str, Any]
) -> None:
    """Draft (by a model step, else deterministically) and save one project's groups not yet
    written; a step's ``Deferred`` leaves them all for a later run (``result["deferred"]``)."""
    try:
        drafts, method = run_model_steps("consolidate", ctx, {"project": project, "groups": groups})
    except Deferred:
        result["deferred"] = result.get("deferred", 0) + len(groups)
        return
    if not isinstance(drafts, list) or len(drafts) != len(groups):
        drafts, method = [draft_memory(key, group) for key, group in groups], None
    writer = written_by("consolidate", ctx, method) if method is not None else {}
    result.update(writer)
    if dry_run:
        return
    for (key, _group), draft in zip(groups, drafts, strict=True):
        saved = _save(ctx, project, key, draft, writer)
        if saved:
            result["memories"].append(saved[0])
            result["facts"] += saved[1]
        else:
            result["unchanged"] += 1


@tool("consolidation_status", params(), http=[("GET", "/consolidation/status")], mcp=False)
def consolidation_status(ctx: Ctx, args: dict) -> dict:
    """The memory layers consolidation builds (upstream 0.9.30): whether it runs after session
    ends, whether a model writes it, the records of each layer and when a run last wrote."""
    agent = agent_filter(ctx)  # isolated scope without an agent id fails closed, as every read
    llm = ctx.rt.services.get("llm")
    store = ctx.rt.db.reader()
    # The layers' records the caller may read (isolated scope, a principal's token: its own, of
    # its token's projects); the latest run is anyone's, so it is shown when all records are.
    last = store.audit.times("consolidate", limit=1) if agent is None else []
    return {
        "success": True,
        "enabled": bool(llm is not None and llm.consolidation_on()),
        "llmConfigured": bool(llm is not None and llm.has_model),
        "summaries": count_visible(ctx, store, SUMMARIES),
        "recurringPatterns": count_visible(ctx, store, STATE),
        "semanticFacts": count_visible(ctx, store, SEMANTIC),
        "procedures": count_visible(ctx, store, PROCEDURAL),
        "relations": _relation_count(ctx, store, agent),
        "lastRun": last[0] if last else None,
    }


def _relation_count(ctx: Ctx, store: Any, agent: str | None) -> int:
    if token_projects(ctx) is None:
        return count_visible(ctx, store, RELATIONS)
    mine = store.records.query(RELATIONS, equal(agentId=agent))
    return len(relations.in_token_projects_only(ctx, store, mine))
