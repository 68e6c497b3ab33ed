"""The session lifecycle: start (with its context block), end (then the session-end hooks),
list and get. Sessions are also created implicitly by their first observation (observe.py).
"""

from __future__ import annotations

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
from agentmemory_server.kernel.util import page_info
from agentmemory_server.retrieval import context


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


@tool(
    "session_end",
    params(["sessionId"], sessionId=SESSION_ID, final=boolean("false for a turn end that may continue")),
    http=[("POST", "/session/end")],
    mcp=False,
)
def session_end(ctx: Ctx, args: dict) -> dict:
    """Mark a session completed; summaries and reflections run after it ends."""
    rt, sid = ctx.rt, args["sessionId"]
    now = rt.clock.iso()
    with rt.db.transaction("session_end", agent_id=rt.settings.agent_id) as tx:
        session = tx.records.get(SESSIONS, sid)
        if session is None or not visible_to(ctx, session):
            raise NotFound(f"session {sid!r} not found", code=errors.SESSION_NOT_FOUND)
        if args.get("final") is False:
            return {"success": True, "ended": False, "session": session}
        session.update(status="completed", endedAt=now, updatedAt=now)
        tx.records.set(SESSIONS, sid, session, now=now)
        tx.audit_message = f"session {sid} ended"
        tx.after_commit(lambda: rt.publish("session", session))
    with model_steps.deterministic_only():  # model work after a session end runs in the background
        for hook in rt.hooks.session_end:
            hook(ctx, session)
    return {"success": True, "ended": True, "session": session}


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


@tool("memory_sessions_list", SESSION_LIST)
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
