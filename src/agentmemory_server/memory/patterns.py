"""Recurring patterns across sessions, found without a model (upstream's POST /patterns).

A pattern is something that keeps coming back in *different* sessions of a project: the same
error, the same file being touched, the same command being run, the same concept. Counting
distinct sessions (not occurrences) keeps one noisy session from looking like a habit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, Ctx, integer, params, tool
from agentmemory_server.kernel.util import truncate
from agentmemory_server.memory import summaries
from agentmemory_server.memory.profiles import MIN_IMPORTANCE, SAMPLE, _error_key, derived_concepts
from agentmemory_server.retrieval import search

MIN_SESSIONS = 2


def _facets(obs: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, key) pairs an observation contributes (none for session bookkeeping: a start, a
    turn end, a compaction say nothing about the project, as in its profile)."""
    if obs.get("importance", 5) < MIN_IMPORTANCE:
        return []
    found = [("file", str(f)) for f in obs.get("files") or []]
    found += [("concept", c) for c in derived_concepts(obs)]
    if obs.get("type") == "error":
        found.append(("error", _error_key(obs)))
    if obs.get("type") == "command_run" and (obs.get("subtitle") or obs.get("title")):
        found.append(("command", truncate(summaries.step_label(obs), 160)))  # the command as typed, not its JSON
    return found


def detect(store: Any, project: str | None, agent_id: str | None, limit: int) -> list[dict[str, Any]]:
    filters = {"kinds": ["observation"], "project": project, "agent_id": agent_id}
    docs = store.index.recent(limit=SAMPLE, filters=filters)
    sessions: dict[tuple[str, str], set[str]] = defaultdict(set)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    examples: dict[tuple[str, str], str] = {}
    for _hit, obs in search.hydrate(store, docs):
        for facet in dict.fromkeys(_facets(obs)):  # once each, in order: ties stay put
            sessions[facet].add(obs.get("sessionId", ""))
            counts[facet] += 1
            examples.setdefault(facet, obs.get("title", ""))
    recurring = [f for f, s in sessions.items() if len(s) >= MIN_SESSIONS]
    # Errors and commands say more about a project's habits than a common word does.
    weight = {"error": 3, "command": 2, "file": 2, "concept": 1}
    recurring.sort(key=lambda f: (len(sessions[f]) * weight[f[0]], counts[f]), reverse=True)
    return [
        {
            "kind": kind,
            "pattern": key,
            "sessions": len(sessions[(kind, key)]),
            "occurrences": counts[(kind, key)],
            "example": examples[(kind, key)],
        }
        for kind, key in recurring[:limit]
    ]


@tool(
    "patterns",
    params(
        project=PROJECT,
        agentId=AGENT_ID,
        limit=integer("Most patterns to return", minimum=1, maximum=100, default=20),
    ),
    http=[("POST", "/patterns")],
    mcp=False,
    right="read",
)
def patterns(ctx: Ctx, args: dict) -> dict:
    """Recurring errors, files, commands and concepts seen in at least two sessions."""
    found = detect(ctx.rt.db.reader(), args.get("project"), agent_filter(ctx, args.get("agentId")), args["limit"])
    return {"success": True, "project": args.get("project"), "patterns": found, "minSessions": MIN_SESSIONS}
