"""Retention: auto-forget and eviction caps (U§4.11), each with a dry run and an audit row.

Auto-forget (hourly): memories past ``forgetAfter`` are deleted; of two latest memories in the
same project that say nearly the same thing (word-set Jaccard > 0.9) the older is demoted
(``isLatest: false``, a ``supersedes`` relation from the newer); observations older than 180
days with importance <= 2 are deleted. Eviction (every few hours): observations over the
per-project cap (lowest importance, then oldest, first), low-importance observations older than
90 days, expired memories, superseded versions older than 90 days, and empty sessions idle for
30 days; idle sessions that still have observations are summarised instead of deleted.
Both only touch records of the caller's agent scope.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from datetime import timedelta
from typing import Any

from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.registry import Ctx, boolean, integer, params, tool
from agentmemory_server.kernel.scopes import MEMORIES, OBSERVATIONS_PREFIX, SESSIONS, SUMMARIES
from agentmemory_server.kernel.util import iso
from agentmemory_server.memory import relations, summaries
from agentmemory_server.memory.memories import delete_memories, delete_observations
from agentmemory_server.retrieval import search
from agentmemory_server.similarity import jaccard_tokens
from agentmemory_server.storage.interfaces import UnitOfWork, Where, equal

log = logging.getLogger("agentmemory.retention")
BATCH = 5000
NEAR_DUPLICATE = 0.9


def _cutoff(ctx: Ctx, days: int) -> str:
    return iso(ctx.rt.clock.now() - timedelta(days=days))


def _candidate_pairs(sets: list[frozenset]) -> list[tuple[int, int]]:
    """Pairs that can reach the Jaccard threshold (prefix filtering): with each set's tokens in
    rarest-first order, two sets with J > t share a token among the first |s| - ceil(t|s|) + 1
    of each, so only sets meeting in such a prefix are compared."""
    freq = Counter(token for tokens in sets for token in tokens)
    seen_in: dict[str, list[int]] = {}
    pairs: set[tuple[int, int]] = set()
    for j, tokens in enumerate(sets):
        ordered = sorted(tokens, key=lambda token: (freq[token], token))
        for token in ordered[: len(ordered) - math.ceil(NEAR_DUPLICATE * len(ordered)) + 1]:
            pairs.update((i, j) for i in seen_in.get(token, ()))
            seen_in.setdefault(token, []).append(j)
    return sorted(pairs)


def near_duplicates(memories: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """(older, newer) pairs of latest memories in the same project with Jaccard > 0.9."""
    by_project: dict[str | None, list[dict]] = {}
    for memory in memories:
        by_project.setdefault(memory.get("project"), []).append(memory)
    pairs, demoted = [], set()
    for group in by_project.values():
        group.sort(key=lambda m: (m.get("createdAt") or "", m["id"]))
        sets = [frozenset(jaccard_tokens(m.get("content", ""))) for m in group]
        for i, j in _candidate_pairs(sets):
            older, newer = group[i], group[j]
            small, big = sorted((len(sets[i]), len(sets[j])))
            if older["id"] in demoted or not small or small <= NEAR_DUPLICATE * big:
                continue  # J <= small / big, so sizes alone rule the pair out
            if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) > NEAR_DUPLICATE:
                pairs.append((older, newer))
                demoted.add(older["id"])
    return pairs


def _by_session(observations: list[dict]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for obs in observations:
        grouped.setdefault(obs["sessionId"], []).append(obs["id"])
    return grouped


def expired_memories(store: UnitOfWork, now: str, agent: str | None) -> list[dict]:
    """Memories whose forgetAfter has passed."""
    return store.records.query(MEMORIES, [Where("forgetAfter", "<", now), *equal(agentId=agent)], limit=BATCH)


def observations_where(
    store: UnitOfWork,
    *,
    before: str | None = None,
    max_importance: float | None = None,
    project: str | None = None,
    agent_id: str | None = None,
    lowest_value_first: bool = False,
    limit: int,
) -> list[dict]:
    """Observations of every session older than ``before`` and no more important than
    ``max_importance`` (each when given), oldest first or lowest importance first."""
    where = equal(project=project, agentId=agent_id)
    if before is not None:
        where.append(Where("timestamp", "<", before))
    if max_importance is not None:
        where.append(Where("importance", "<=", max_importance))
    order = [("importance", False), ("timestamp", False)] if lowest_value_first else [("timestamp", False)]
    return store.records.query(OBSERVATIONS_PREFIX, where, order_by=order, limit=limit, prefix=True)


def _delete_observations(ctx: Ctx, tx, observations: list[dict]) -> int:
    return sum(len(delete_observations(ctx, tx, sid, ids)[0]) for sid, ids in _by_session(observations).items())


def auto_forget(ctx: Ctx, *, dry_run: bool = False) -> dict[str, Any]:
    rt, agent = ctx.rt, agent_filter(ctx)
    store = rt.db.reader()
    expired = expired_memories(store, rt.clock.iso(), agent)
    latest, _ = listings.memories_page(store, agent_id=agent, latest_only=True, limit=1000)
    expired_ids = {m["id"] for m in expired}
    pairs = [(o, n) for o, n in near_duplicates(latest) if o["id"] not in expired_ids]
    old_obs = observations_where(store, before=_cutoff(ctx, 180), max_importance=2, agent_id=agent, limit=BATCH)
    result = {
        "success": True,
        "dryRun": dry_run,
        "expiredMemories": sorted(expired_ids),
        "demoted": [{"id": o["id"], "supersededBy": n["id"]} for o, n in pairs],
        "lowValueObservations": [o["id"] for o in old_obs],
    }
    if dry_run or not (expired or pairs or old_obs):
        return result
    now = rt.clock.iso()
    with rt.db.transaction("auto_forget", agent_id=rt.settings.agent_id) as tx:
        # What goes was read before this transaction: a periodic run that lost its claim meanwhile
        # (its worker stopped past the lease) would apply an old reading over the new run's.
        rt.jobs.fence(tx)
        delete_memories(ctx, tx, sorted(expired_ids))
        for older, newer in pairs:
            older.update(isLatest=False, supersededBy=newer["id"], updatedAt=now)
            tx.records.set(MEMORIES, older["id"], older, now=now)
            search.index_record(tx, "memory", older)
            tx.after_commit(lambda m=older: rt.publish("memory", m))
            relations.add_relation(ctx, tx, "supersedes", newer, older, metadata={"reason": "near-duplicate"})
        result["observationsDeleted"] = _delete_observations(ctx, tx, old_obs)
        tx.audit_details = {k: result[k] for k in ("expiredMemories", "demoted")} | {
            "lowValueObservations": len(old_obs)
        }
    rt.publish(
        "forget",
        {"reason": "auto_forget", "memoryIds": sorted(expired_ids), "observations": result["observationsDeleted"]},
    )
    return result


def _stale_sessions(ctx: Ctx, store, days: int) -> tuple[list[dict], list[dict]]:
    """(empty idle sessions to delete, idle sessions with observations but no summary)."""
    agent, cutoff = agent_filter(ctx), _cutoff(ctx, days)
    idle = [
        s
        for _k, s in store.records.list(SESSIONS)
        if (agent is None or s.get("agentId") == agent) and (s.get("updatedAt") or s.get("startedAt") or "") < cutoff
    ]
    summarised = store.records.get_many(SUMMARIES, [s["id"] for s in idle])
    empty = [s for s in idle if not s.get("observationCount") and s["id"] not in summarised]
    unsummarised = [s for s in idle if s.get("observationCount") and s["id"] not in summarised]
    return empty, unsummarised


def _over_cap(store: UnitOfWork, agent: str | None, cap: int) -> list[dict]:
    """The lowest-value observations of each project past its cap."""
    over: list[dict] = []
    for project, count in store.index.group_counts("project", {"kinds": ["observation"], "agent_id": agent}).items():
        if project is not None and count > cap:
            over += observations_where(
                store, project=project, agent_id=agent, lowest_value_first=True, limit=count - cap
            )
    return over


def _evictable_memories(ctx: Ctx, store: UnitOfWork, agent: str | None) -> list[str]:
    """Expired memories, and versions superseded more than 90 days ago."""
    expired = expired_memories(store, ctx.rt.clock.iso(), agent)
    superseded = store.records.query(
        MEMORIES,
        [Where("isLatest", "=", False), Where("updatedAt", "<", _cutoff(ctx, 90)), *equal(agentId=agent)],
        limit=BATCH,
    )
    return sorted({m["id"] for m in expired + superseded})


def evict(ctx: Ctx, args: dict) -> dict[str, Any]:
    rt, agent = ctx.rt, agent_filter(ctx)
    store = rt.db.reader()
    over_cap = _over_cap(store, agent, args["maxObservationsPerProject"])
    low = observations_where(
        store,
        before=_cutoff(ctx, args["lowImportanceMaxDays"]),
        max_importance=args["lowImportanceThreshold"] - 1,
        agent_id=agent,
        limit=BATCH,
    )
    victims = list({o["id"]: o for o in over_cap + low}.values())
    memory_ids = _evictable_memories(ctx, store, agent)
    empty, unsummarised = _stale_sessions(ctx, store, args["staleSessionDays"])
    result = {
        "success": True,
        "dryRun": args["dryRun"],
        "observations": len(victims),
        "overCap": len(over_cap),
        "lowImportance": len(low),
        "memories": memory_ids,
        "emptySessions": [s["id"] for s in empty],
        "summarised": [s["id"] for s in unsummarised],
    }
    if args["dryRun"]:
        return result
    _summarize_idle(ctx, unsummarised)
    if victims or memory_ids or empty:
        _delete_evicted(ctx, victims, memory_ids, empty)
    return result


def _summarize_idle(ctx: Ctx, sessions: list[dict]) -> None:
    for session in sessions:
        # A summary may cost a model call: a periodic run stops here once another worker took it
        # up, and a session summarised since evict read it (by that run) is not done again.
        ctx.rt.jobs.checkpoint()
        if ctx.rt.db.reader().records.get(SUMMARIES, session["id"]) is None:
            summaries.summarize(ctx, session["id"])


def _delete_evicted(ctx: Ctx, victims: list[dict], memory_ids: list[str], empty: list[dict]) -> None:
    rt = ctx.rt
    session_ids = [s["id"] for s in empty]
    with rt.db.transaction("evict", agent_id=rt.settings.agent_id) as tx:
        # The victims were counted before this transaction; a run that lost its claim since
        # (another run evicted meanwhile) would evict below the caps.
        rt.jobs.fence(tx)
        _delete_observations(ctx, tx, victims)
        delete_memories(ctx, tx, memory_ids)
        for session_id in session_ids:
            tx.records.delete(SESSIONS, session_id)
        tx.audit_details = {
            "observations": len(victims),
            "memories": memory_ids[:100],
            "emptySessions": session_ids[:100],
        }
    rt.publish(
        "forget",
        {"reason": "evict", "memoryIds": memory_ids, "observations": len(victims), "sessions": session_ids},
    )


# -- tools and timers -----------------------------------------------------------------------------------

DRY_RUN = boolean("Report what would go without deleting anything", default=False)


@tool(
    "auto_forget",
    params(dryRun=DRY_RUN),
    http=[("POST", "/auto-forget")],
    mcp=False,
    answers_with_records=False,
    right="admin",
)
def auto_forget_tool(ctx: Ctx, args: dict) -> dict:
    """Run auto-forget now: expired memories, near-duplicate memories demoted, old low-value observations."""
    return auto_forget(ctx, dry_run=args["dryRun"])


@tool(
    "evict",
    params(
        dryRun=DRY_RUN,
        maxObservationsPerProject=integer("Cap per project", minimum=1, maximum=10_000_000),
        lowImportanceMaxDays=integer(
            "Age after which low-importance observations go", minimum=1, maximum=36_500, default=90
        ),
        lowImportanceThreshold=integer("Importance below this is low", minimum=1, maximum=10, default=3),
        staleSessionDays=integer("Idle days before an empty session goes", minimum=1, maximum=36_500, default=30),
    ),
    http=[("POST", "/evict")],
    mcp=False,
    answers_with_records=False,
    right="admin",
)
def evict_tool(ctx: Ctx, args: dict) -> dict:
    """Enforce the retention caps now (per-project observation cap, old low-value records, stale sessions)."""
    args.setdefault("maxObservationsPerProject", ctx.rt.settings.max_obs_per_project)
    return evict(ctx, args)


class RetentionService:
    def __init__(self, rt: Any):
        self.rt = rt
        if rt.settings.auto_forget_enabled:
            rt.every(rt.settings.auto_forget_interval_ms / 1000, "auto_forget", self.run_auto_forget)
        rt.every(rt.settings.evict_interval_ms / 1000, "evict", self.run_evict)

    def run_auto_forget(self) -> dict[str, Any]:
        return auto_forget(Ctx(self.rt, source="job"))

    def run_evict(self) -> dict[str, Any]:
        return evict(
            Ctx(self.rt, source="job"),
            {
                "dryRun": False,
                "maxObservationsPerProject": self.rt.settings.max_obs_per_project,
                "lowImportanceMaxDays": 90,
                "lowImportanceThreshold": 3,
                "staleSessionDays": 30,
            },
        )
