"""Sessions, the observation pipeline, liveness and health.

observe: hook payload -> privacy stripping -> event-id dedup -> synthetic compression ->
stored in ``mem:obs:{session}`` + indexed + session updated + audited, all in one transaction,
then broadcast to live viewers. Sessions are created implicitly by their first observation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from agentmemory_server.retrieval import context
from agentmemory_server.kernel import model_steps
from agentmemory_server.retrieval import search
from agentmemory_server.capture.compress import synthetic_compression
from agentmemory_server.errors import CapacityExceeded, Conflict, Forbidden, InvalidInput, NotFound
from agentmemory_server.capture.privacy import strip_private_data, strip_text
from agentmemory_server.kernel.registry import (AGENT_ID, PROJECT, SESSION_ID, Ctx, Reply, anything, array,
                      boolean, integer, params, string, tool)
from agentmemory_server.kernel.util import new_id, normalise_time, truncate

SESSIONS = "mem:sessions"
SUMMARIES = "mem:summaries"


def obs_scope(session_id: str) -> str:
    return f"mem:obs:{session_id}"


# -- agent scope ---------------------------------------------------------------------------------


def agent_filter(ctx: Ctx, requested: str | None = None) -> str | None:
    """The agent id every read must be limited to, or None for all agents.

    Shared scope: the caller's ``agentId`` filter, where "*" (or nothing) means every agent.
    Isolated scope: always this server's AGENT_ID, whatever was asked; without one, fail closed.
    """
    settings = ctx.rt.settings
    if settings.agent_scope == "isolated":
        if not settings.agent_id:
            raise Forbidden("AGENTMEMORY_AGENT_SCOPE=isolated but AGENT_ID is not set; refusing to "
                            "read across agents", code="agent_scope_unset")
        return settings.agent_id
    return None if requested in (None, "", "*") else requested


def stamp_agent(ctx: Ctx, given: str | None) -> str | None:
    """The agent id to record on a new record."""
    if ctx.rt.settings.agent_scope == "isolated":
        return agent_filter(ctx)
    return given or ctx.rt.settings.agent_id


def visible_to(ctx: Ctx, record: dict[str, Any] | None, requested: str | None = None) -> bool:
    agent = agent_filter(ctx, requested)
    return record is not None and (agent is None or record.get("agentId") == agent)


def claim_session(ctx: Ctx, session: dict[str, Any] | None, session_id: str) -> None:
    """Refuse to write into a session another agent owns when agents are isolated (the write
    would change that agent's session and answer with its data)."""
    if session is not None and ctx.rt.settings.agent_scope == "isolated" and not visible_to(ctx, session):
        raise Conflict(f"session {session_id!r} belongs to another agent", code="session_owned_by_other_agent")


# -- liveness and health ---------------------------------------------------------------------------


@tool("livez", params(), http=[("GET", "/livez")], mcp=False)
def livez(ctx: Ctx, args: dict) -> dict:
    """Liveness probe; always open, even with auth on."""
    return {"status": "ok", "service": "agentmemory", "version": ctx.rt.version}


@tool("health", params(), http=[("GET", "/health")], mcp=False)
def health(ctx: Ctx, args: dict) -> Any:
    """Health snapshot: database, record counts, background jobs and every subsystem."""
    rt = ctx.rt
    store = rt.db.reader()
    counts = store.doc_counts()
    sizes = rt.db.file_sizes()
    sections = rt.health_sections()
    states = [s.get("status") for s in sections.values() if isinstance(s, dict)]
    status = "critical" if "critical" in states else "degraded" if "degraded" in states else "healthy"
    body = {
        "status": status, "service": "agentmemory", "version": rt.version,
        "uptimeSeconds": round(rt.clock.time() - rt.started_at, 1),
        "db": {"path": str(rt.db.path), "schemaVersion": rt.db.schema_version,
               "sizeBytes": sizes["db"], "walBytes": sizes["wal"]},
        "counts": {"sessions": store.count(SESSIONS), "observations": counts.get("observation", 0),
                   "memories": counts.get("memory", 0)},
        "live": rt.hub.stats(),
        "jobs": rt.jobs.status(),
        **sections,
    }
    return Reply(body, 503) if status == "critical" else body


# -- sessions ----------------------------------------------------------------------------------------

SESSION_END_HOOKS: list[Callable[[Ctx, dict], None]] = []


def _new_session(ctx: Ctx, session_id: str, project: str | None, cwd: str | None,
                 agent_id: str | None, now: str) -> dict[str, Any]:
    session = {"id": session_id, "project": project, "cwd": cwd, "startedAt": now,
               "updatedAt": now, "status": "active", "observationCount": 0}
    if agent_id:
        session["agentId"] = agent_id
    return session


@tool("session_start", params(
    ["sessionId"], sessionId=SESSION_ID, project=PROJECT, cwd=string("Working directory", max_length=4096),
    title=string("Session title", max_length=500), agentId=AGENT_ID,
    budget=integer("Token budget of the returned context", minimum=1, maximum=100_000),
), http=[("POST", "/session/start")], mcp=False)
def session_start(ctx: Ctx, args: dict) -> dict:
    """Start (or reopen) a session and return the context block for it."""
    rt, sid = ctx.rt, args["sessionId"]
    now = rt.clock.iso()
    agent = stamp_agent(ctx, args.get("agentId"))
    with rt.db.transaction("session_start", agent_id=agent) as tx:
        session = tx.get(SESSIONS, sid)
        claim_session(ctx, session, sid)
        session = session or _new_session(ctx, sid, None, None, agent, now)
        for field in ("project", "cwd"):
            if args.get(field):
                session[field] = args[field]
        if args.get("title"):
            session["title"] = strip_text(args["title"])
        session.update(status="active", updatedAt=now)
        session.pop("endedAt", None)
        tx.set(SESSIONS, sid, session, now=now)
        tx.audit_message = f"session {sid} started"
        tx.after_commit(lambda: rt.publish("session", session))
    block = context.compile_context(ctx, session_id=sid, project=session.get("project"),
                                    budget=args.get("budget") or rt.settings.token_budget)
    return {"success": True, "session": session, "context": block["context"]}


@tool("session_end", params(["sessionId"], sessionId=SESSION_ID,
                            final=boolean("false for a turn end that may continue")),
      http=[("POST", "/session/end")], mcp=False)
def session_end(ctx: Ctx, args: dict) -> dict:
    """Mark a session completed; summaries and reflections run after it ends."""
    rt, sid = ctx.rt, args["sessionId"]
    now = rt.clock.iso()
    with rt.db.transaction("session_end", agent_id=rt.settings.agent_id) as tx:
        session = tx.get(SESSIONS, sid)
        if session is None or not visible_to(ctx, session):
            raise NotFound(f"session {sid!r} not found", code="session_not_found")
        if args.get("final") is False:
            return {"success": True, "ended": False, "session": session}
        session.update(status="completed", endedAt=now, updatedAt=now)
        tx.set(SESSIONS, sid, session, now=now)
        tx.audit_message = f"session {sid} ended"
        tx.after_commit(lambda: rt.publish("session", session))
    with model_steps.deterministic_only():  # model work after a session end runs in the background
        for hook in SESSION_END_HOOKS:
            hook(ctx, session)
    return {"success": True, "ended": True, "session": session}


def _with_summaries(store, sessions: list[dict]) -> list[dict]:
    summaries = store.get_many(SUMMARIES, [s["id"] for s in sessions])
    return [{**s, "summary": summaries[s["id"]]} if s["id"] in summaries else s for s in sessions]


def _page(items: list, total: int, offset: int, limit: int) -> dict[str, Any]:
    return {"total": total, "offset": offset, "limit": limit, "hasMore": offset + len(items) < total}


SESSION_LIST = params(
    limit=integer("Page size", minimum=1, maximum=1000, default=50),
    offset=integer("Rows to skip", minimum=0, maximum=10_000_000, default=0),
    project=PROJECT, agentId=AGENT_ID,
    status=string("Filter by status", enum=["active", "completed", "abandoned"]),
)


@tool("memory_sessions", SESSION_LIST, http=[("GET", "/sessions")], core=True)
def memory_sessions(ctx: Ctx, args: dict) -> dict:
    """List sessions, newest first, each with its summary when one exists."""
    store = ctx.rt.db.reader()
    sessions, total = store.sessions_page(
        project=args.get("project"), agent_id=agent_filter(ctx, args.get("agentId")),
        status=args.get("status"), limit=args["limit"], offset=args["offset"])
    return {"sessions": _with_summaries(store, sessions),
            **_page(sessions, total, args["offset"], args["limit"])}


@tool("memory_sessions_list", SESSION_LIST)
def memory_sessions_list(ctx: Ctx, args: dict) -> dict:
    """List sessions (alias of memory_sessions for clients of the original design)."""
    return memory_sessions(ctx, args)


@tool("session_get", params(["sessionId"], sessionId=SESSION_ID),
      http=[("GET", "/session")], mcp=False)
def session_get(ctx: Ctx, args: dict) -> dict:
    """One session with its summary."""
    store = ctx.rt.db.reader()
    session = store.get(SESSIONS, args["sessionId"])
    if not visible_to(ctx, session):
        raise NotFound(f"session {args['sessionId']!r} not found", code="session_not_found")
    return {"session": _with_summaries(store, [session])[0]}


# -- observations --------------------------------------------------------------------------------------

_HOST_ID_FIELDS = ("event_id", "eventId", "tool_use_id", "toolUseId", "tool_call_id", "toolCallId",
                   "call_id", "callId", "prompt_id", "promptId", "message_id", "messageId")
EVENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{7,127}$"


def _sha(parts: list[str]) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()[:32]


def derive_event_id(session_id: str, hook_type: str, timestamp: str, data: Any) -> str:
    """The dedup key of a hook event (upstream 0.9.30 scheme).

    A host-supplied id (tool_use_id, prompt_id, ...) identifies a retry exactly. Without one the
    content, hook, session and the client's own timestamp do: two identical prompts sent at
    different times are two events, and a retry of the same POST is a duplicate.
    """
    if isinstance(data, dict):
        for field in _HOST_ID_FIELDS:
            value = data.get(field)
            if isinstance(value, (str, int)) and str(value):
                return "evh_" + _sha(["agentmemory", session_id, hook_type, str(value)])
    stable = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "evc_" + _sha([session_id, hook_type, timestamp, stable])


_HOOK_TYPE = r"^[a-z][a-z0-9_]{0,63}$"


@tool("agent_observe", params(
    ["sessionId"],
    sessionId=SESSION_ID,
    hookType=string("Hook that fired (session_start, prompt_submit, post_tool_use, "
                    "post_tool_failure, ..., or 'observation' for an agent's own note)",
                    pattern=_HOOK_TYPE, max_length=64, default="observation"),
    project=PROJECT, cwd=string("Working directory", max_length=4096),
    timestamp=string("ISO-8601 time of the event", max_length=64),
    data=anything("The hook's payload (any JSON)"),
    eventId=string("Client event id for exact dedup", pattern=EVENT_ID_PATTERN, max_length=128),
    agentId=string("Agent that made the observation", max_length=128),
    content=string("Text of an agent-authored observation", max_length=200_000),
    title=string("Title of an agent-authored observation", max_length=500),
    type=string("Type of an agent-authored observation", max_length=40),
    files=array(string(max_length=1024), "Files the observation is about", max_items=200),
    concepts=array(string(max_length=200), "Concepts", max_items=100),
), http=[("POST", "/observe", 201)])
def agent_observe(ctx: Ctx, args: dict) -> Reply:
    """Record one observation (a hook event or an agent's own note); 201 new, 200 duplicate."""
    rt, sid, hook = ctx.rt, args["sessionId"], args["hookType"]
    client_ts = args.get("timestamp") or ""
    timestamp = normalise_time(client_ts, rt.clock)
    if hook == "observation":
        if not args.get("content") and args.get("data") in (None, "", {}):
            raise InvalidInput("an observation needs 'content' or 'data'", field="content")
        note = {k: args[k] for k in ("content", "title", "type", "files", "concepts") if args.get(k)}
        raw = strip_private_data(note if note.get("content") else args.get("data"))
    else:
        raw = strip_private_data(args.get("data"))
    event_id = args.get("eventId") or derive_event_id(sid, hook, client_ts or timestamp, raw)
    obs = {"id": new_id("obs"), "sessionId": sid, "timestamp": timestamp, "hookType": hook,
           "project": args.get("project"), "cwd": args.get("cwd"), "eventId": event_id,
           **synthetic_compression(hook, raw), "raw": raw}
    return store_observation(ctx, obs, args.get("agentId"))


# Run inside store_observation's transaction for each new observation: hook(ctx, tx, obs). The LLM
# layer queues the background compression here, so a crash cannot lose it.
OBSERVE_HOOKS: list[Callable[[Ctx, Any, dict], None]] = []


def store_observation(ctx: Ctx, obs: dict[str, Any], agent_given: str | None) -> Reply:
    """Store one compressed observation: dedup by eventId, implicit session, per-session cap,
    index, audit and broadcast. Used by observe and by importers."""
    rt, sid = ctx.rt, obs["sessionId"]
    now = rt.clock.iso()
    limit = rt.settings.max_obs_per_session
    with rt.db.transaction("observe", agent_id=stamp_agent(ctx, agent_given)) as tx:
        prior = tx.event_get(obs["eventId"])
        if prior:
            return Reply({"success": True, "duplicate": True, "deduplicated": True,
                          "observationId": prior["obsId"], "sessionId": prior["sessionId"],
                          "eventId": obs["eventId"]}, 200)
        session = tx.get(SESSIONS, sid)
        claim_session(ctx, session, sid)
        agent = stamp_agent(ctx, agent_given or (session or {}).get("agentId"))
        if session is None:
            session = _new_session(ctx, sid, obs.get("project"), obs.get("cwd"), agent, now)
        if tx.count(obs_scope(sid)) >= limit:
            raise CapacityExceeded(
                f"session {sid!r} already holds MAX_OBS_PER_SESSION={limit} observations; "
                "start a new session or raise the limit", details={"sessionId": sid, "limit": limit})
        if agent:
            obs["agentId"] = agent
        obs["project"] = obs.get("project") or session.get("project")
        tx.set(obs_scope(sid), obs["id"], obs, now=now)
        session["observationCount"] = session.get("observationCount", 0) + 1
        session["updatedAt"] = now
        if obs["hookType"] == "prompt_submit" and not session.get("firstPrompt"):
            session["firstPrompt"] = truncate(" ".join(obs["title"].split()), 200)
        tx.set(SESSIONS, sid, session, now=now)
        tx.event_put(obs["eventId"], sid, obs["id"], now)
        search.index_record(tx, "observation", obs)
        for hook in OBSERVE_HOOKS:
            hook(ctx, tx, obs)
        tx.audit_message = f"observe {obs['hookType']} -> {obs['id']} in session {sid}"
        tx.after_commit(lambda: rt.publish("observation", obs))
    return Reply({"success": True, "duplicate": False, "observationId": obs["id"],
                  "sessionId": sid, "eventId": obs["eventId"]}, 201)


@tool("memory_observations", params(
    ["sessionId"], sessionId=SESSION_ID,
    limit=integer("Page size", minimum=1, maximum=1000, default=500),
    offset=integer("Rows to skip", minimum=0, maximum=10_000_000, default=0),
    agentId=AGENT_ID,
), http=[("GET", "/observations")])
def memory_observations(ctx: Ctx, args: dict) -> dict:
    """A session's observations in time order (paginated)."""
    store = ctx.rt.db.reader()
    items, total = store.observations_page(args["sessionId"], limit=args["limit"], offset=args["offset"],
                                           agent_id=agent_filter(ctx, args.get("agentId")))
    return {"sessionId": args["sessionId"], "observations": items,
            **_page(items, total, args["offset"], args["limit"])}
