"""Crystallize: turn finished work into a stored digest with outcomes, files and lessons (U§4.9).

Two inputs. A ``sessionId`` digests that session's observations (this server's meaning): the
narrative of its summary, key outcomes (files changed, steps that passed after failing,
decisions, failures still open), the files affected, and lessons learned — a step that failed
and later passed, or a line the agent marked ``lesson:`` / ``learned:`` / ``TIL:``. A list of
``actionIds`` (upstream's meaning) digests done or cancelled actions and stamps them with
``crystallizedInto``. Lessons are saved through the lesson rules (confidence 0.6, source
``crystal``), so crystallizing the same session twice does not inflate them.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import InvalidInput, NotFound
from agentmemory_server.kernel.access import agent_filter, stamp_agent, visible_to
from agentmemory_server.kernel.model_steps import SYNTHETIC, run_model_steps, written_by
from agentmemory_server.kernel.registry import (
    AGENT_ID,
    PROJECT,
    SESSION_ID,
    Ctx,
    Reply,
    array,
    integer,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.scopes import ACTIONS, CRYSTALS
from agentmemory_server.kernel.util import new_id, truncate
from agentmemory_server.memory import lessons, summaries
from agentmemory_server.memory.actions import FINISHED

LESSON_CONFIDENCE = 0.6
_MARKED = re.compile(r"(?im)^\W*(?:lesson|lessons learned|learned|til|note to self)\s*[:\-]\s*(.{6,300})$")


def marked_lessons(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(" ".join(m.split()) for t in texts for m in _MARKED.findall(t or "")))


def fixed_failures(observations: list[dict]) -> list[tuple[dict, dict, list[str]]]:
    """(failure, later success of the same step, files changed in between), first failure each."""
    pairs: list[tuple[Any, Any, list[str]]] = []
    open_failures: dict[Any, Any] = {}
    for i, obs in enumerate(observations):
        key = summaries.step_key(obs)
        if key is None:
            continue
        if summaries.is_failure(obs):
            open_failures.setdefault(key, i)
        elif key in open_failures:
            start = open_failures.pop(key)
            between = summaries.files_changed(observations[start:i])
            pairs.append((observations[start], obs, between))
    return pairs


def session_digest(session: dict[str, Any], observations: list[dict]) -> dict[str, Any]:
    summary = summaries.synthetic_summary(session, observations)
    fixed = fixed_failures(observations)
    fixed_ids = {f["id"] for f, _s, _b in fixed}
    outcomes = []
    if summary["filesModified"]:
        outcomes.append(summaries.changed_files(summary["filesModified"], session.get("cwd"), shown=8))
    for failure, _success, between in fixed:
        outcomes.append(
            f"`{summaries.step_label(failure)}` passes again"
            + (f" after changes to {', '.join(between[:5])}" if between else "")
        )
    outcomes += [f"Decided: {d}" for d in summary["keyDecisions"][:5]]
    outcomes += [f"Completed: {o['title']}" for o in observations if o.get("hookType") == "task_completed"][:5]
    still_failing = {
        summaries.step_label(o): o for o in observations if summaries.is_failure(o) and o["id"] not in fixed_ids
    }
    outcomes += [f"Still failing: {label}" for label in list(still_failing)[:5]]
    learned = []
    for failure, _success, between in fixed:
        error = truncate(" ".join(summaries.outcome_text(failure).split()), 160)
        learned.append(
            f"`{summaries.step_label(failure)}` failed ({error}); "
            + (f"it passed after changing {', '.join(between[:5])}" if between else "it passed on retry")
        )
    learned += marked_lessons(
        [o.get("narrative") or "" for o in observations] + [o.get("title") or "" for o in observations]
    )
    return {
        "narrative": summary["narrative"],
        "keyOutcomes": outcomes[:20],
        "filesAffected": summary["filesModified"] or summaries.files_touched(observations)[:30],
        "lessons": learned[:10],
    }


def actions_digest(items: list[dict]) -> dict[str, Any]:
    items = sorted(items, key=lambda a: a.get("createdAt") or "")  # stable: ties keep the caller's order
    narrative = f"{summaries.plural(len(items), 'action')} finished: " + "; ".join(
        f"{a.get('title')} ({a.get('status')})" for a in items
    )
    outcomes = [
        f"{a.get('title')}: {truncate(a['result'], 200)}"
        if a.get("result")
        else f"{a.get('title')} ({a.get('status')})"
        for a in items
    ]
    files = [f for a in items for f in ((a.get("metadata") or {}).get("files") or []) if isinstance(f, str)]
    texts = [a.get("result") or "" for a in items] + [a.get("description") or "" for a in items]
    return {
        "narrative": truncate(narrative, 2000),
        "keyOutcomes": outcomes[:20],
        "filesAffected": list(dict.fromkeys(files))[:30],
        "lessons": marked_lessons(texts)[:10],
    }


def _finished_actions(ctx: Ctx, store, action_ids: list[str]) -> list[dict[str, Any]]:
    found = []
    for aid in dict.fromkeys(action_ids):
        action = store.records.get(ACTIONS, aid)
        if not visible_to(ctx, action):
            raise NotFound(f"action {aid!r} not found", code=errors.ACTION_NOT_FOUND, details={"field": "actionIds"})
        if action.get("status") not in FINISHED:
            raise InvalidInput(
                f"action {aid!r} is {action.get('status')}; only done or cancelled actions can be crystallized",
                field="actionIds",
            )
        found.append(action)
    return found


def _digest(ctx: Ctx, payload: dict, fallback: dict) -> tuple[dict, dict[str, str]]:
    """The digest and who wrote it (``method``, and ``model`` when a model did)."""
    drafted, method = run_model_steps("crystallize", ctx, payload)
    if not isinstance(drafted, dict):
        return fallback, {"method": SYNTHETIC}
    return {k: drafted.get(k) or fallback[k] for k in fallback}, written_by("crystallize", ctx, method)


def _draft(ctx: Ctx, store, args: dict, agent: str | None) -> dict[str, Any]:
    """The crystal before it is stored: a session's (one per session, re-crystallizing updates
    it) or a set of finished actions' (a new one each time)."""
    if args.get("sessionId"):
        sid = args["sessionId"]
        session = summaries.load_session(ctx, store, sid)
        observations = summaries.session_observations(ctx, store, sid)
        if not observations:
            raise InvalidInput(f"session {sid!r} has no observations to crystallize", field="sessionId")
        digest, writer = _digest(
            ctx, {"session": session, "observations": observations}, session_digest(session, observations)
        )
        crystal_id = "crys_" + hashlib.sha256(f"session\x00{agent or ''}\x00{sid}".encode()).hexdigest()[:16]
        return {
            "id": crystal_id,
            **digest,
            "sourceActionIds": [],
            **writer,
            "sessionId": sid,
            "project": args.get("project") or session.get("project"),
        }
    items = _finished_actions(ctx, store, args["actionIds"])
    digest, writer = _digest(ctx, {"actions": items}, actions_digest(items))
    return {
        "id": new_id("crys"),
        **digest,
        "sourceActionIds": [a["id"] for a in items],
        **writer,
        "project": args.get("project"),
    }


def crystallize(ctx: Ctx, args: dict) -> dict[str, Any]:
    rt = ctx.rt
    store = rt.db.reader()
    agent = stamp_agent(ctx, None)
    crystal = {k: v for k, v in _draft(ctx, store, args, agent).items() if v is not None}
    crystal_id, project, sources = crystal["id"], crystal.get("project"), crystal["sourceActionIds"]
    previous = store.records.get(CRYSTALS, crystal_id) or {}
    now = rt.clock.iso()
    crystal.update(createdAt=previous.get("createdAt") or now, updatedAt=now)
    if agent:
        crystal["agentId"] = agent
    saved = []
    with rt.db.transaction("crystallize", agent_id=agent) as tx:
        tx.records.set(CRYSTALS, crystal_id, crystal, now=now)
        for aid in sources:
            action = tx.records.get(ACTIONS, aid)
            action.update(crystallizedInto=crystal_id, updatedAt=now)
            tx.records.set(ACTIONS, aid, action, now=now)
            tx.after_commit(lambda a=action: rt.publish("action", a))
        for text in crystal["lessons"]:
            if text in (previous.get("lessons") or []):
                continue  # already learned from this crystal; saving again would inflate confidence
            _action, lesson = lessons.save_lesson(
                ctx,
                content=text,
                context_text=truncate(crystal["narrative"], 300),
                confidence=LESSON_CONFIDENCE,
                project=project,
                source="crystal",
                source_ids=[crystal_id],
            )
            saved.append(lesson["id"])
        tx.audit_message = f"crystallize {crystal_id} ({len(saved)} new lesson(s))"
    rt.publish("crystal", crystal)
    writer = {k: crystal[k] for k in ("method", "model") if k in crystal}
    return {"success": True, "crystal": crystal, "lessonsSaved": saved, **writer}


@tool(
    "memory_crystallize",
    params(
        sessionId=SESSION_ID | {"description": "Digest this session's observations"},
        actionIds=array(string(max_length=128), "Or: digest these done/cancelled actions", min_items=1, max_items=200),
        project=PROJECT,
    ),
    http=[("POST", "/crystals/create", 201)],
)
def memory_crystallize(ctx: Ctx, args: dict) -> Reply:
    """Crystallize a session (sessionId) or finished actions (actionIds) into a digest: narrative,
    key outcomes, files affected and lessons (saved as lessons too)."""
    if not args.get("sessionId") and not args.get("actionIds"):
        raise InvalidInput("give 'sessionId' (a session) or 'actionIds' (done/cancelled actions)", field="sessionId")
    return Reply(crystallize(ctx, args), 201)


@tool(
    "crystals_list",
    params(
        project=PROJECT,
        sessionId=SESSION_ID,
        limit=integer("Maximum crystals", minimum=1, maximum=500, default=20),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/crystals")],
    mcp=False,
)
def crystals_list(ctx: Ctx, args: dict) -> dict:
    """Crystals, newest first (filters: project, sessionId)."""
    agent = agent_filter(ctx, args.get("agentId"))
    found = [
        c
        for _k, c in ctx.rt.db.reader().records.list(CRYSTALS)
        if (agent is None or c.get("agentId") == agent)
        and all(args.get(k) is None or c.get(k) == args[k] for k in ("project", "sessionId"))
    ]
    found.sort(key=lambda c: (c.get("updatedAt") or c.get("createdAt") or "", c["id"]), reverse=True)
    return {"success": True, "crystals": found[: args["limit"]], "total": len(found)}
