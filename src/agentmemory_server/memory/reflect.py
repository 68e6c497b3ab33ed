"""Reflection without a language model.

Two meanings share the name (U§2.4). Given a ``sessionId``, reflect turns a session into slot
updates: TODO/FIXME lines go to ``pending_items``, error and command counts to
``session_patterns``, touched files to ``project_context`` (this also runs when a session ends).
Given a ``project`` (upstream's form), it clusters the terms shared by lessons, memories and
crystals and stores a recurring theme as an *insight* (``mem:insights``), strengthened each time
the same cluster shows up again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from typing import Any

from agentmemory_server.kernel.access import agent_filter, stamp_agent
from agentmemory_server.kernel.model_steps import SYNTHETIC, run_model_steps, written_by
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, SESSION_ID, Ctx, integer, number, params, tool
from agentmemory_server.kernel.scopes import CRYSTALS, INSIGHTS, LESSONS, MEMORIES
from agentmemory_server.kernel.util import truncate
from agentmemory_server.kernel.wording import file_as_named, files_as_named
from agentmemory_server.memory import slots, summaries
from agentmemory_server.memory.lessons import reinforce
from agentmemory_server.memory.vocabulary import NOISE, file_names_only

log = logging.getLogger("agentmemory.reflect")
_TODO = re.compile(r"\b(?:TODO|FIXME)\b[\s:!\-–—)]*(.*)", re.IGNORECASE)
_SPLIT = re.compile(r"\n| \| |\\n")
FILES_HEADER = "Files touched in recent sessions:"
MAX_NEW_FILES = 20


# -- session -> slots ---------------------------------------------------------------------------------


def extract_todos(observations: list[dict]) -> list[str]:
    """``- TODO: ...`` lines from titles and narratives (a grep *for* TODO is not a TODO)."""
    found: list[str] = []
    for obs in observations:
        if obs.get("type") == "search":
            continue
        for chunk in _SPLIT.split(f"{obs.get('title', '')}\n{obs.get('narrative') or ''}"):
            match = _TODO.search(chunk)
            rest = " ".join(match.group(1).split()).strip(" \"'`,;") if match else ""
            if len(rest) >= 3:
                found.append(f"- TODO: {truncate(rest, 200)}")
    found = list(dict.fromkeys(found))
    # a title is cut at 80 characters: its TODO ("fix…") gives way to the narrative's whole one
    return [t for t in found if not (t.endswith("…") and any(o != t and o.startswith(t[:-1]) for o in found))]


def fit_tail(lines: list[str], limit: int, keep_first: int = 0) -> str:
    """Join lines, dropping the oldest (after the first ``keep_first``) until it fits ``limit``."""
    head, body = lines[:keep_first], lines[keep_first:]
    while body and len("\n".join(head + body)) > limit:
        body.pop(0)
    return "\n".join(head + body)[:limit]


def pattern_lines(session_id: str, observations: list[dict], now: str) -> list[str]:
    n = len(observations)
    errors = sum(1 for o in observations if summaries.is_failure(o))
    # a call announced before it ran (pre_tool_use) is counted once, when it is reported done
    commands = sum(1 for o in observations if o.get("type") == "command_run" and summaries.is_work(o))
    tools = Counter(o["toolName"] for o in observations if o.get("toolName") and summaries.is_work(o))
    lines = [
        f"last reflection: {now} (session {session_id})",
        f"- errors: {errors} in last {n} observations",
        f"- commands: {commands} in last {n} observations",
        f"- files edited: {len(summaries.files_changed(observations))}",
    ]
    if tools:
        lines.append("- most used tools: " + ", ".join(f"{t} ({c})" for t, c in tools.most_common(5)))
    return lines


def _deterministic_updates(
    session_id: str, observations: list[dict], current: dict[str, dict], now: str
) -> dict[str, str]:
    updates: dict[str, str] = {}
    pending = current["pending_items"]
    existing = (pending.get("content") or "").splitlines()
    todos = [t for t in extract_todos(observations) if t not in existing]
    if todos:
        updates["pending_items"] = fit_tail(existing + todos, int(pending["sizeLimit"]))
    patterns = current["session_patterns"]
    updates["session_patterns"] = fit_tail(pattern_lines(session_id, observations, now), int(patterns["sizeLimit"]))
    ctx_slot = current["project_context"]
    files = touched_files(ctx_slot.get("content") or "", observations, int(ctx_slot["sizeLimit"]))
    if files is not None:
        updates["project_context"] = files
    return updates


def touched_files(text: str, observations: list[dict], limit: int) -> str | None:
    """The project_context slot with its list of touched files brought up to date: the session's
    new files added last, and the entries already there named from the session's working
    directory as the new ones are (lists written before were given whole paths and the patterns
    of file listings), each file once. None when the text would not change."""
    lines = text.splitlines()
    if FILES_HEADER not in lines:
        lines.append(FILES_HEADER)
    keep = lines.index(FILES_HEADER) + 1
    cwds = Counter(o["cwd"] for o in observations if o.get("cwd"))
    cwd = cwds.most_common(1)[0][0] if cwds else None
    listed: list[str] = []
    for line in lines[keep:]:
        if not line.startswith("- "):
            listed.append(line)  # not an entry: kept as it was written
            continue
        named = file_as_named(cwd, line[2:])
        if named and f"- {named}" not in listed:
            listed.append(f"- {named}")
    touched = dict.fromkeys(f for o in observations for f in files_as_named(o))
    new = [f"- {f}" for f in touched if f"- {f}" not in listed][:MAX_NEW_FILES]
    if lines[keep:] == listed and not new:
        return None
    return fit_tail(lines[:keep] + listed + new, limit, keep_first=keep)


def reflect_session(ctx: Ctx, session_id: str, max_observations: int = 50) -> dict[str, Any]:
    """Apply a session's observations to its project's slots; read-only slots are left alone."""
    rt = ctx.rt
    store = rt.db.reader()
    session = summaries.load_session(ctx, store, session_id)
    observations = summaries.session_observations(ctx, store, session_id, last=max_observations)
    if not observations:
        return {"success": True, "applied": 0, "observationsReviewed": 0, "updated": [], "method": SYNTHETIC}
    project = session.get("project")
    labels = ("pending_items", "session_patterns", "project_context")
    # Labels with no slot (no default template applies) are simply not reflected into.
    current = {label: slot for label in labels if (slot := slots.load_slot(ctx, store, label, project)) is not None}
    drafted, method = run_model_steps(
        "reflect",
        ctx,
        {"session": session, "observations": observations, "slots": {k: v.get("content") for k, v in current.items()}},
    )
    updates = drafted or _deterministic_updates(session_id, observations, current, rt.clock.iso())
    updated = []
    with rt.db.transaction("slot_reflect", agent_id=rt.settings.agent_id) as tx:
        for label, content in updates.items():
            slot = slots.load_slot(ctx, tx, label, project)
            if slot is None or slot.get("readOnly") or content == slot.get("content"):
                continue
            if len(content) > int(slot.get("sizeLimit", slots.DEFAULT_SIZE)):
                continue  # a model draft that does not fit is dropped, never truncated mid-word
            stored = slots.store_slot(ctx, tx, slot, content)
            tx.after_commit(lambda s=stored: rt.publish("slot", s))
            updated.append(label)
        tx.audit_message = f"reflect session {session_id} into slots: {', '.join(updated) or 'none'}"
    return {
        "success": True,
        "applied": len(updated),
        "observationsReviewed": len(observations),
        "updated": updated,
        **written_by("reflect", ctx, method),
    }


def reflect_on_session_end(ctx: Ctx, session: dict[str, Any]) -> None:
    if not ctx.rt.settings.reflect_on_session_end or not session.get("observationCount"):
        return
    try:
        reflect_session(ctx, session["id"])
    except Exception:  # noqa: BLE001 - reflection must not fail the session end
        log.exception("reflecting session %s failed", session["id"])


# -- project -> insights -------------------------------------------------------------------------------

_TERM = re.compile(r"[a-z][a-z0-9_\-]{3,}")


def _items(ctx: Ctx, store, project: str | None) -> list[dict[str, Any]]:
    """Lessons, latest memories and crystals of the project and global ones (every project's
    when ``project`` is None), as text items."""
    agent = agent_filter(ctx)
    items = []
    sources = (
        (LESSONS, "lesson", "content", "tags"),
        (MEMORIES, "memory", "content", "concepts"),
        (CRYSTALS, "crystal", "narrative", "lessons"),
    )
    for scope, kind, text_field, tag_field in sources:
        for _k, rec in store.records.list(scope):
            if rec.get("deleted") or rec.get("isLatest") is False:
                continue
            if agent is not None and rec.get("agentId") != agent:
                continue
            if project is not None and rec.get("project") not in (None, project):
                continue  # a project's reflection uses its own and global items; none given: all
            tags = [str(t).lower() for t in rec.get(tag_field) or [] if kind != "crystal"]
            text = file_names_only(f"{rec.get('title', '')} {rec.get(text_field, '')}").lower()
            terms = set(tags) | {w for w in _TERM.findall(text) if w not in NOISE}
            items.append(
                {"id": rec["id"], "kind": kind, "text": truncate(rec.get(text_field) or "", 120), "terms": terms}
            )
    return items


def clusters(items: list[dict], max_clusters: int) -> list[tuple[list[str], list[dict]]]:
    """Greedy clusters of terms whose item sets overlap (Jaccard > 0.3); terms in >= 2 items."""
    docs: dict[str, set[int]] = {}
    for i, item in enumerate(items):
        for term in item["terms"]:
            docs.setdefault(term, set()).add(i)
    terms = sorted((t for t, d in docs.items() if len(d) >= 2), key=lambda t: (-len(docs[t]), t))
    used: set[str] = set()
    found = []
    for seed in terms:
        if seed in used:
            continue
        group = [t for t in terms if t not in used and len(docs[t] & docs[seed]) / len(docs[t] | docs[seed]) > 0.3]
        used.update(group)
        members = sorted(set().union(*(docs[t] for t in group)))
        found.append((group, [items[i] for i in members]))
        if len(found) >= max_clusters * 3:
            break
    return found


def _insight(ctx: Ctx, project: str | None, terms: list[str], members: list[dict], drafted: dict | None) -> dict:
    key = "\x00".join([project or "", stamp_agent(ctx, None) or "", *sorted(terms[:6])])
    insight_id = "ins_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    highlights = "; ".join(m["text"] for m in members[:3] if m["text"])
    content = f"Recurring theme ({', '.join(terms[:5])}) across {len(members)} items: {highlights}"
    draft = drafted or {}
    ids = {kind: [m["id"] for m in members if m["kind"] == kind] for kind in ("memory", "lesson", "crystal")}
    return {
        "id": insight_id,
        "title": draft.get("title") or f"Theme: {terms[0]}",
        "content": draft.get("content") or content,
        "confidence": draft.get("confidence") or round(min(0.9, 0.3 + 0.1 * len(members)), 3),
        "sourceConceptCluster": terms[:10],
        "sourceMemoryIds": ids["memory"],
        "sourceLessonIds": ids["lesson"],
        "sourceCrystalIds": ids["crystal"],
        "tags": terms[:5],
    }


def reflect_project(ctx: Ctx, project: str | None, max_clusters: int) -> dict[str, Any]:
    rt = ctx.rt
    found = clusters(_items(ctx, rt.db.reader(), project), max_clusters)
    usable = [(t, m) for t, m in found if len(m) >= 3][:max_clusters]
    drafts, method = run_model_steps(
        "insights", ctx, {"project": project, "clusters": [{"terms": t, "items": m} for t, m in usable]}
    )
    if not (isinstance(drafts, list) and len(drafts) == len(usable)):
        drafts, method = [None] * len(usable), None
    writer = written_by("insights", ctx, method)
    now, new, reinforced, saved = rt.clock.iso(), 0, 0, []
    agent = stamp_agent(ctx, None)
    with rt.db.transaction("reflect", agent_id=agent) as tx:
        for (terms, members), draft in zip(usable, drafts, strict=True):
            fresh = {**_insight(ctx, project, terms, members, draft), **writer}
            existing = tx.records.get(INSIGHTS, fresh["id"])
            if existing and not existing.get("deleted"):
                insight, reinforced = _reinforced(existing, fresh, writer, now), reinforced + 1
            else:
                insight, new = _first_seen(fresh, now, project, agent), new + 1
            tx.records.set(INSIGHTS, insight["id"], insight, now=now)
            saved.append(insight)
    return {
        "success": True,
        "newInsights": new,
        "reinforced": reinforced,
        "clustersProcessed": len(usable),
        "clustersSkipped": len(found) - len(usable),
        "usedFallback": method is None,
        **writer,
        "insights": saved,
    }


def _reinforced(existing: dict[str, Any], fresh: dict[str, Any], writer: dict[str, Any], now: str) -> dict[str, Any]:
    """A stored insight found again: reinforced, its content and sources the fresh draft's."""
    reinforce(existing, now)
    existing.pop("model", None)  # who wrote the content now: ``writer``
    existing.update(
        {k: fresh[k] for k in ("content", "sourceMemoryIds", "sourceLessonIds", "sourceCrystalIds")},
        **writer,
    )
    return existing


def _first_seen(fresh: dict[str, Any], now: str, project: str | None, agent: str | None) -> dict[str, Any]:
    """A new insight: not yet reinforced, with its project and agent when it has them."""
    return {
        **fresh,
        "reinforcements": 0,
        "createdAt": now,
        "updatedAt": now,
        "decayRate": 0.05,
        **({"project": project} if project else {}),
        **({"agentId": agent} if agent else {}),
    }


# -- tools ----------------------------------------------------------------------------------------------------


@tool(
    "memory_reflect",
    params(
        sessionId=SESSION_ID,
        maxObservations=integer("Observations of the session to review", minimum=1, maximum=200, default=50),
        project=PROJECT,
        maxClusters=integer("Most themes to extract (project form)", minimum=1, maximum=20, default=10),
    ),
    http=[("POST", "/reflect")],
    core=True,
)
def memory_reflect(ctx: Ctx, args: dict) -> dict:
    """Reflect a session into slots (sessionId: TODOs, error/command counts, touched files), or a
    project's lessons, memories and crystals into recurring-theme insights (project/maxClusters)."""
    if args.get("sessionId"):
        return reflect_session(ctx, args["sessionId"], args["maxObservations"])
    return reflect_project(ctx, args.get("project"), args["maxClusters"])


@tool(
    "slot_reflect",
    params(
        ["sessionId"],
        sessionId=SESSION_ID,
        maxObservations=integer("Observations of the session to review", minimum=1, maximum=200, default=50),
    ),
    http=[("POST", "/slot/reflect")],
    mcp=False,
)
def slot_reflect(ctx: Ctx, args: dict) -> dict:
    """Heuristic slot update from a session: TODOs -> pending_items, counts -> session_patterns,
    files -> project_context."""
    return reflect_session(ctx, args["sessionId"], args["maxObservations"])


@tool(
    "insights_list",
    params(
        project=PROJECT,
        minConfidence=number("Lowest confidence", minimum=0, maximum=1, default=0),
        limit=integer("Maximum insights", minimum=1, maximum=500, default=50),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/insights")],
    mcp=False,
)
def insights_list(ctx: Ctx, args: dict) -> dict:
    """Insights found by project reflection, most confident first."""
    agent = agent_filter(ctx, args.get("agentId"))
    found = [
        i
        for _k, i in ctx.rt.db.reader().records.list(INSIGHTS)
        if not i.get("deleted")
        and (agent is None or i.get("agentId") == agent)
        and float(i.get("confidence", 0)) >= args["minConfidence"]
        and (args.get("project") is None or i.get("project") == args["project"])
    ]
    found.sort(key=lambda i: (-float(i.get("confidence", 0)), i["id"]))
    return {"success": True, "insights": found[: args["limit"]]}
