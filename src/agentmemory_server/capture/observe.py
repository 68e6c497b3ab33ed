"""The observation pipeline.

observe: hook payload -> privacy stripping -> event-id dedup -> synthetic compression ->
stored in ``mem:obs:{session}`` + indexed + session updated + audited, all in one transaction,
then broadcast to live viewers. Sessions are created implicitly by their first observation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentmemory_server.capture.compress import synthetic_compression
from agentmemory_server.capture.sessions import new_session
from agentmemory_server.errors import CapacityExceeded, InvalidInput
from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter, claim_session, stamp_agent
from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.kernel.registry import (
    AGENT_ID,
    PROJECT,
    SESSION_ID,
    Ctx,
    Reply,
    anything,
    array,
    integer,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.scopes import SESSIONS, obs_scope
from agentmemory_server.kernel.util import new_id, normalise_time, page_info, truncate
from agentmemory_server.retrieval import search

_HOST_ID_FIELDS = (
    "event_id",
    "eventId",
    "tool_use_id",
    "toolUseId",
    "tool_call_id",
    "toolCallId",
    "call_id",
    "callId",
    "prompt_id",
    "promptId",
    "message_id",
    "messageId",
)
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


@tool(
    "agent_observe",
    params(
        ["sessionId"],
        sessionId=SESSION_ID,
        hookType=string(
            "Hook that fired (session_start, prompt_submit, post_tool_use, "
            "post_tool_failure, ..., or 'observation' for an agent's own note)",
            pattern=_HOOK_TYPE,
            max_length=64,
            default="observation",
        ),
        project=PROJECT,
        cwd=string("Working directory", max_length=4096),
        timestamp=string("ISO-8601 time of the event", max_length=64),
        data=anything("The hook's payload (any JSON)"),
        eventId=string("Client event id for exact dedup", pattern=EVENT_ID_PATTERN, max_length=128),
        agentId=string("Agent that made the observation", max_length=128),
        content=string("Text of an agent-authored observation", max_length=200_000),
        title=string("Title of an agent-authored observation", max_length=500),
        type=string("Type of an agent-authored observation", max_length=40),
        files=array(string(max_length=1024), "Files the observation is about", max_items=200),
        concepts=array(string(max_length=200), "Concepts", max_items=100),
    ),
    http=[("POST", "/observe", 201)],
)
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
    obs = {
        "id": new_id("obs"),
        "sessionId": sid,
        "timestamp": timestamp,
        "hookType": hook,
        "project": args.get("project"),
        "cwd": args.get("cwd"),
        "eventId": event_id,
        **synthetic_compression(hook, raw),
        "raw": raw,
    }
    return store_observation(ctx, obs, args.get("agentId"))


def store_observation(ctx: Ctx, obs: dict[str, Any], agent_given: str | None) -> Reply:
    """Store one compressed observation: dedup by eventId, implicit session, per-session cap,
    index, audit and broadcast. Used by observe and by importers."""
    rt, sid = ctx.rt, obs["sessionId"]
    now = rt.clock.iso()
    limit = rt.settings.max_obs_per_session
    with rt.db.transaction("observe", agent_id=stamp_agent(ctx, agent_given)) as tx:
        prior = tx.events.get(obs["eventId"])
        if prior:
            return Reply(
                {
                    "success": True,
                    "duplicate": True,
                    "deduplicated": True,
                    "observationId": prior["obsId"],
                    "sessionId": prior["sessionId"],
                    "eventId": obs["eventId"],
                },
                200,
            )
        session = tx.records.get(SESSIONS, sid)
        claim_session(ctx, session, sid)
        agent = stamp_agent(ctx, agent_given or (session or {}).get("agentId"))
        if session is None:
            session = new_session(ctx, sid, obs.get("project"), obs.get("cwd"), agent, now)
        if tx.records.count(obs_scope(sid)) >= limit:
            raise CapacityExceeded(
                f"session {sid!r} already holds MAX_OBS_PER_SESSION={limit} observations; "
                "start a new session or raise the limit",
                details={"sessionId": sid, "limit": limit},
            )
        if agent:
            obs["agentId"] = agent
        obs["project"] = obs.get("project") or session.get("project")
        tx.records.set(obs_scope(sid), obs["id"], obs, now=now)
        session["observationCount"] = session.get("observationCount", 0) + 1
        session["updatedAt"] = now
        if obs["hookType"] == "prompt_submit" and not session.get("firstPrompt"):
            session["firstPrompt"] = truncate(" ".join(obs["title"].split()), 200)
        tx.records.set(SESSIONS, sid, session, now=now)
        tx.events.put(obs["eventId"], sid, obs["id"], now)
        search.index_record(tx, "observation", obs)
        for hook in rt.hooks.observe:
            hook(ctx, tx, obs)
        tx.audit_message = f"observe {obs['hookType']} -> {obs['id']} in session {sid}"
        tx.after_commit(lambda: rt.publish("observation", obs))
    return Reply(
        {"success": True, "duplicate": False, "observationId": obs["id"], "sessionId": sid, "eventId": obs["eventId"]},
        201,
    )


@tool(
    "memory_observations",
    params(
        ["sessionId"],
        sessionId=SESSION_ID,
        limit=integer("Page size", minimum=1, maximum=1000, default=500),
        offset=integer("Rows to skip", minimum=0, maximum=10_000_000, default=0),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/observations")],
)
def memory_observations(ctx: Ctx, args: dict) -> dict:
    """A session's observations in time order (paginated)."""
    store = ctx.rt.db.reader()
    items, total = listings.observations_page(
        store,
        args["sessionId"],
        limit=args["limit"],
        offset=args["offset"],
        agent_id=agent_filter(ctx, args.get("agentId")),
    )
    return {
        "sessionId": args["sessionId"],
        "observations": items,
        **page_info(items, total, args["offset"], args["limit"]),
    }
