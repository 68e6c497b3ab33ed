"""Project profiles (GET /profile) and the profile block of the context.

A profile sums up a project from its most recent observations: top concepts, most touched
files, common errors, recent activity. It is deterministic: observations compressed without an
LLM carry no concepts, so concepts are also derived from their text (frequent content words,
file stems and command names, counted once per observation). Profiles are cached in
``mem:profiles`` (key = project) for an hour, or until a session of the project ends;
``refresh`` recomputes.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from datetime import timedelta
from typing import Any
from xml.sax.saxutils import escape

from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.hooks import Block, BlockRequest
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, Ctx, boolean, params, tool
from agentmemory_server.kernel.scopes import PROFILES
from agentmemory_server.kernel.util import parse_time, truncate
from agentmemory_server.kernel.wording import files_as_named
from agentmemory_server.memory import vocabulary
from agentmemory_server.memory.vocabulary import file_names_only
from agentmemory_server.retrieval import search

PROFILE_TTL = timedelta(hours=1)
SAMPLE = 2000  # most recent observations a profile looks at: bounded cost on any store
TOP = 15

_WORD = re.compile(r"[a-z][a-z0-9_\-]{2,30}")
_NUMERIC_NOISE = re.compile(r"\d")


MIN_IMPORTANCE = 3


def derived_concepts(obs: dict[str, Any]) -> list[str]:
    """Concepts of one observation: its own, else content words, file stems and the command."""
    if obs.get("concepts"):
        return [str(c).lower() for c in obs["concepts"]][:20]
    text = file_names_only(f"{obs.get('title', '')} {obs.get('narrative', '')}").lower()
    words = [w.strip("-_") for w in _WORD.findall(text)]
    concepts = {w for w in words if w not in vocabulary.NOISE and not _NUMERIC_NOISE.search(w) and len(w) > 3}
    for path in obs.get("files") or []:
        stem = posixpath.splitext(posixpath.basename(str(path)))[0].lower()
        if len(stem) > 2 and stem not in vocabulary.NOISE:
            concepts.add(stem)
    return sorted(concepts)[:30]


def _error_key(obs: dict[str, Any]) -> str:
    text = " ".join((obs.get("narrative") or obs.get("title") or "").split())
    parts = [p for p in text.split(" | ") if p]
    return truncate(parts[-1] if parts else text, 160)


def build_profile(store: Any, project: str, agent_id: str | None, now: str) -> dict[str, Any] | None:
    filters = {"kinds": ["observation"], "project": project, "agent_id": agent_id}
    docs = store.index.recent(limit=SAMPLE, filters=filters)
    if not docs and not listings.session_ids_with(store, project=project, agentId=agent_id):
        return None
    observations = [record for _hit, record in search.hydrate(store, docs)]
    concepts: Counter[str] = Counter()
    asked: Counter[str] = Counter()  # the concepts of what people asked for
    files: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for obs in observations:
        if obs.get("importance", 5) < MIN_IMPORTANCE:
            continue  # session bookkeeping (a start, a turn end) and notices say nothing about the project
        found = derived_concepts(obs)
        concepts.update(found)
        if obs.get("hookType") == "prompt_submit":
            asked.update(found)
        files.update(files_as_named(obs))  # in order: ties stay put
        if obs.get("type") == "error":
            errors[_error_key(obs)] += 1
    return {
        "project": project,
        "updatedAt": now,
        "topConcepts": _top_concepts(concepts, asked),
        "topFiles": [{"file": f, "frequency": n} for f, n in files.most_common(TOP)],
        "conventions": [],
        "commonErrors": [e for e, _n in errors.most_common(10)],
        "recentActivity": [
            f"[{o.get('type', 'other')}] {o.get('title', '')}"
            for o in observations
            if o.get("importance", 5) >= MIN_IMPORTANCE
        ][:10],
        "sessionCount": len(listings.session_ids_with(store, project=project, agentId=agent_id)),
        "totalObservations": len(observations),
        "sampled": len(observations) >= SAMPLE,
    }


def _top_concepts(concepts: Counter[str], asked: Counter[str]) -> list[dict[str, Any]]:
    """The commonest concepts (those seen more than once, if any are); among equally common ones,
    those of what people asked for first: a prompt says what a project is about more surely than
    a tool's output or an agent's report ("Analysis complete. Found 3 potential issues")."""
    ranked = sorted(concepts, key=lambda c: (-concepts[c], -asked[c]))  # stable: ties keep their order
    recurring = [c for c in ranked if concepts[c] > 1]
    return [{"concept": c, "frequency": concepts[c]} for c in (recurring or ranked)[:TOP]]


def get_profile(ctx: Ctx, project: str, *, refresh: bool, agent_id: str | None = None) -> tuple[dict | None, bool]:
    """(profile, served from cache). Cached profiles are shared by every agent of the project,
    so an agent-filtered request computes its own and does not cache it."""
    rt = ctx.rt
    cached = rt.db.reader().records.get(PROFILES, project) if agent_id is None else None
    if cached and not refresh:
        updated = parse_time(cached.get("updatedAt", ""))
        if updated and rt.clock.now() - updated < PROFILE_TTL:
            return cached, True
    profile = build_profile(rt.db.reader(), project, agent_id, rt.clock.iso())
    # A profile of nothing yet (a project's first session start) is cheap to make again, and a
    # cached one would stand until the session ends, which a turn end is not.
    if profile is not None and agent_id is None and profile["totalObservations"]:
        with rt.db.transaction("profile", agent_id=rt.settings.agent_id) as tx:
            tx.records.set(PROFILES, project, profile, now=profile["updatedAt"])
            tx.audit_message = f"profile of {project!r} refreshed"
    return profile, False


def forget_profile_on_session_end(ctx: Ctx, session: dict[str, Any]) -> None:
    """A session that ended has changed what its project is about: its cached profile goes, and
    the next context or /profile computes it again. (Cached for an hour alone, a profile made at a
    project's first session start, from nothing yet, stood in every context of the next hour.)"""
    project = session.get("project")
    if not project or ctx.rt.db.reader().records.get(PROFILES, project) is None:
        return
    with ctx.rt.db.transaction("profile", agent_id=ctx.rt.settings.agent_id) as tx:
        if tx.records.delete(PROFILES, project):
            tx.audit_message = f"profile of {project!r} dropped: session {session.get('id')} ended"


@tool(
    "memory_profile",
    params(
        ["project"],
        project=PROJECT,
        refresh=boolean("Recompute even if a fresh cached profile exists", default=False),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/profile")],
)
def memory_profile(ctx: Ctx, args: dict) -> dict:
    """A project's profile: top concepts, files, common errors, recent activity (cached for an hour)."""
    profile, cached = get_profile(
        ctx, args["project"], refresh=args["refresh"], agent_id=agent_filter(ctx, args.get("agentId"))
    )
    if profile is None:
        return {"profile": None, "cached": False, "reason": "no_sessions"}
    return {"profile": profile, "cached": cached}


def profile_text(profile: dict[str, Any]) -> str:
    lines = ["## Project Profile"]
    concepts = [c["concept"] for c in profile.get("topConcepts", [])[:8]]
    files = [f["file"] for f in profile.get("topFiles", [])[:5]]
    for label, values, sep in (
        ("Concepts", concepts, ", "),
        ("Key files", files, ", "),
        ("Conventions", profile.get("conventions", []), "; "),
        ("Common errors", profile.get("commonErrors", [])[:3], "; "),
    ):
        if values:
            lines.append(f"{label}: {sep.join(str(v) for v in values)}")
    return "\n".join(lines)


def profile_block(req: BlockRequest) -> list[Block]:
    """The project's profile (the cached one; computed once when there is none yet)."""
    if not req.project:
        return []
    profile, _cached = get_profile(req.ctx, req.project, refresh=False, agent_id=req.agent_id)
    if not profile or len(profile_text(profile).splitlines()) < 2:
        return []
    return [Block("profile", escape(profile_text(profile)), profile["updatedAt"], [])]
