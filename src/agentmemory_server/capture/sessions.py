"""The session lifecycle: start (with its context block), end (then the session-end hooks),
list and get. Sessions are also created implicitly by their first observation (observe.py).

Upstream 0.9.30's lifecycle: ``/session/end`` with ``final: false`` (the Stop hook, sent after
every turn) does not complete the session; it asks for completion once the session has been idle
``AGENTMEMORY_FINALIZE_IDLE_MS`` (the idle finalizer below runs every 30 s). ``final: true`` or no
flag completes at once. A new observation in a completed session reopens it (and schedules the
finalizer again, so its summary catches up). Ending an unknown or already completed session is
``200 {ended: false}`` with the reason, never an error a hook would log as a failure.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import NotFound
from agentmemory_server.kernel import listings, model_steps
from agentmemory_server.kernel.access import agent_filter, claim_session, stamp_agent, visible_to
from agentmemory_server.kernel.privacy import strip_text
from agentmemory_server.kernel.registry import (
    AGENT_ID,
    PROJECT,
    SESSION_ID,
    Ctx,
    boolean,
    integer,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.scopes import SESSIONS, SUMMARIES
from agentmemory_server.kernel.util import iso, page_info
from agentmemory_server.retrieval import context
from agentmemory_server.storage.interfaces import Where

log = logging.getLogger("agentmemory.sessions")
FINALIZE_TICK_SECONDS = 30  # at most; a shorter idle time is checked twice per idle period
FINALIZE_BATCH = 50


def new_session(
    ctx: Ctx, session_id: str, project: str | None, cwd: str | None, agent_id: str | None, now: str
) -> dict[str, Any]:
    session = {
        "id": session_id,
        "project": project,
        "cwd": cwd,
        "startedAt": now,
        "updatedAt": now,
        "status": "active",
        "observationCount": 0,
    }
    if agent_id:
        session["agentId"] = agent_id
    return session


@tool(
    "session_start",
    params(
        ["sessionId"],
        sessionId=SESSION_ID,
        project=PROJECT,
        cwd=string("Working directory", max_length=4096),
        title=string("Session title", max_length=500),
        agentId=AGENT_ID,
        budget=integer("Token budget of the returned context", minimum=1, maximum=100_000),
    ),
    http=[("POST", "/session/start")],
    mcp=False,
)
def session_start(ctx: Ctx, args: dict) -> dict:
    """Start (or reopen) a session and return the context block for it."""
    rt, sid = ctx.rt, args["sessionId"]
    now = rt.clock.iso()
    agent = stamp_agent(ctx, args.get("agentId"))
    with rt.db.transaction("session_start", agent_id=agent) as tx:
        session = tx.records.get(SESSIONS, sid)
        claim_session(ctx, session, sid)
        session = session or new_session(ctx, sid, None, None, agent, now)
        for field in ("project", "cwd"):
            if args.get(field):
                session[field] = args[field]
        if args.get("title"):
            session["title"] = strip_text(args["title"])
        session.update(status="active", updatedAt=now)
        session.pop("endedAt", None)
        tx.records.set(SESSIONS, sid, session, now=now)
        tx.audit_message = f"session {sid} started"
        tx.after_commit(lambda: rt.publish("session", session))
    block = context.compile_context(
        ctx, session_id=sid, project=session.get("project"), budget=args.get("budget") or rt.settings.token_budget
    )
    return {"success": True, "session": session, "context": block["context"]}


def finalize_after(ctx: Ctx, now: str) -> str:
    """When a session last active at ``now`` is due for the idle finalizer."""
    del now  # the due time counts from the clock, which ``now`` was read from
    return iso(ctx.rt.clock.now() + timedelta(milliseconds=ctx.rt.settings.finalize_idle_ms))


def note_activity(ctx: Ctx, session: dict[str, Any], now: str) -> bool:
    """A new observation in ``session`` (changed in place): a completed session reopens, and a
    session waiting for the idle finalizer waits again. Returns whether it reopened."""
    session["updatedAt"] = now
    reopened = session.get("status") == "completed"
    if reopened:
        session.update(status="active", reopenedAt=now, reopens=int(session.get("reopens") or 0) + 1)
        session.pop("endedAt", None)
    if reopened or session.get("finalizeAfter"):
        session["finalizeAfter"] = finalize_after(ctx, now)
    return reopened


def complete_session(ctx: Ctx, session_id: str, *, reason: str, idle_before: str | None = None) -> dict | None:
    """Mark a session completed and run the session-end hooks; None when it is not active (or,
    with ``idle_before``, when it was active after that time)."""
    rt = ctx.rt
    now = rt.clock.iso()
    with rt.db.transaction("session_end", agent_id=rt.settings.agent_id) as tx:
        session = tx.records.get(SESSIONS, session_id)
        if session is None or session.get("status") == "completed":
            return None
        if idle_before is not None and (session.get("updatedAt") or session["startedAt"]) > idle_before:
            return None
        session.update(status="completed", endedAt=now, updatedAt=now)
        session.pop("finalizeAfter", None)
        tx.records.set(SESSIONS, session_id, session, now=now)
        tx.audit_message = f"session {session_id} ended ({reason})"
        tx.after_commit(lambda: rt.publish("session", session))
    with model_steps.deterministic_only():  # model work after a session end runs in the background
        for hook in rt.hooks.session_end:
            hook(ctx, session)
    return session


@tool(
    "session_end",
    params(
        ["sessionId"],
        sessionId=SESSION_ID,
        final=boolean("false: a turn ended (complete after AGENTMEMORY_FINALIZE_IDLE_MS idle); true or unset: now"),
    ),
    http=[("POST", "/session/end")],
    mcp=False,
)
def session_end(ctx: Ctx, args: dict) -> dict:
    """Mark a session completed (summaries and reflections run after it ends); with final=false,
    once it has been idle. Unknown or already completed sessions answer ended=false."""
    rt, sid = ctx.rt, args["sessionId"]
    now = rt.clock.iso()
    session = rt.db.reader().records.get(SESSIONS, sid)
    if session is None or not visible_to(ctx, session):
        return {"success": True, "ended": False, "reason": "unknown_session", "sessionId": sid}
    if session.get("status") == "completed":
        return {"success": True, "ended": False, "reason": "already_completed", "session": session}
    if args.get("final") is False:
        with rt.db.transaction("session_turn_end", agent_id=rt.settings.agent_id) as tx:
            session = tx.records.get(SESSIONS, sid) or session
            session["finalizeAfter"] = finalize_after(ctx, now)
            tx.records.set(SESSIONS, sid, session, now=now)
            tx.audit_message = f"session {sid}: turn ended, completes after {session['finalizeAfter']} if idle"
        return {
            "success": True,
            "ended": False,
            "reason": "turn_end",
            "finalizeAfter": session["finalizeAfter"],
            "session": session,
        }
    ended = complete_session(ctx, sid, reason="session/end")
    if ended is None:  # completed by someone else meanwhile
        return {"success": True, "ended": False, "reason": "already_completed", "sessionId": sid}
    return {"success": True, "ended": True, "session": ended}


class SessionFinalizer:
    """Subsystem ``session_finalizer``: completes sessions whose turn ended and that stayed idle
    for AGENTMEMORY_FINALIZE_IDLE_MS (upstream's idle finalizer)."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.finalized = 0
        tick = min(FINALIZE_TICK_SECONDS, max(1.0, rt.settings.finalize_idle_ms / 2000))
        rt.every(tick, "session_finalize", self.run)

    def run(self) -> dict[str, int]:
        ctx = Ctx(self.rt, source="finalizer")
        now = self.rt.clock.iso()
        due = self.rt.db.reader().records.query(
            SESSIONS,
            [Where("finalizeAfter", "<=", now), Where("status", "=", "active")],
            order_by=[("finalizeAfter", False)],
            limit=FINALIZE_BATCH,
        )
        idle_before = iso(self.rt.clock.now() - timedelta(milliseconds=self.rt.settings.finalize_idle_ms))
        done = 0
        for session in due:
            # Each session is completed once whichever run gets to it (its status is checked in
            # the write); a run whose claim another worker took up leaves the rest to that run.
            self.rt.jobs.checkpoint()
            try:
                if complete_session(ctx, session["id"], reason="idle finalizer", idle_before=idle_before):
                    done += 1
            except Exception:  # noqa: BLE001 - one session must not stop the rest
                log.exception("finalizing session %s failed", session["id"])
        self.finalized += done
        return {"due": len(due), "finalized": done}

    def health(self) -> dict[str, Any]:
        return {"finalizedSinceStart": self.finalized, "idleMs": self.rt.settings.finalize_idle_ms}


def _with_summaries(store, sessions: list[dict]) -> list[dict]:
    summaries = store.records.get_many(SUMMARIES, [s["id"] for s in sessions])
    return [{**s, "summary": summaries[s["id"]]} if s["id"] in summaries else s for s in sessions]


SESSION_LIST = params(
    limit=integer("Page size", minimum=1, maximum=1000, default=50),
    offset=integer("Rows to skip", minimum=0, maximum=10_000_000, default=0),
    project=PROJECT,
    agentId=AGENT_ID,
    status=string("Filter by status", enum=["active", "completed", "abandoned"]),
)


@tool("memory_sessions", SESSION_LIST, http=[("GET", "/sessions")], core=True)
def memory_sessions(ctx: Ctx, args: dict) -> dict:
    """List sessions, newest first, each with its summary when one exists."""
    store = ctx.rt.db.reader()
    sessions, total = listings.sessions_page(
        store,
        project=args.get("project"),
        agent_id=agent_filter(ctx, args.get("agentId")),
        status=args.get("status"),
        limit=args["limit"],
        offset=args["offset"],
    )
    return {"sessions": _with_summaries(store, sessions), **page_info(sessions, total, args["offset"], args["limit"])}


@tool("memory_sessions_list", SESSION_LIST, right="read")
def memory_sessions_list(ctx: Ctx, args: dict) -> dict:
    """List sessions (alias of memory_sessions for clients of the original design)."""
    return memory_sessions(ctx, args)


@tool("session_get", params(["sessionId"], sessionId=SESSION_ID), http=[("GET", "/session")], mcp=False)
def session_get(ctx: Ctx, args: dict) -> dict:
    """One session with its summary."""
    store = ctx.rt.db.reader()
    session = store.records.get(SESSIONS, args["sessionId"])
    if not visible_to(ctx, session):
        raise NotFound(f"session {args['sessionId']!r} not found", code=errors.SESSION_NOT_FOUND)
    return {"session": _with_summaries(store, [session])[0]}
