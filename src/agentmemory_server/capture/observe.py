"""The observation pipeline.

observe: hook payload -> images moved to the image store -> capture filters -> privacy
stripping -> oversized fields cut -> event-id dedup -> synthetic compression -> stored in
``mem:obs:{session}`` + indexed + session updated (a completed session reopens) + audited, all
in one transaction, then broadcast to live viewers. Sessions are created implicitly by their
first observation.

Nothing is lost without a trace: an unknown hook type is stored as ``other`` with the name the
client sent (and counted); a field too big is cut with a marker (and counted); an event a
capture filter refuses, one that finds its session full, and one whose processing failed are
kept in the capture inbox (capture/inbox.py), the last retried in the background.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmemory_server.capture import filters, images
from agentmemory_server.capture.compress import synthetic_compression
from agentmemory_server.capture.image_store import store as image_store
from agentmemory_server.capture.inbox import durability, inbox_service
from agentmemory_server.capture.sessions import new_session, note_activity
from agentmemory_server.errors import AppError, CapacityExceeded, InvalidInput
from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter, claim_session, in_token_projects, stamp_agent
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

log = logging.getLogger("agentmemory.capture")

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
# Stored text is cut to AGENTMEMORY_MAX_FIELD_CHARS with a marker; this bound only refuses what no
# body under the 16 MiB default could carry anyway.
MAX_TEXT = 16_777_216
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


@dataclass
class Prepared:
    """A hook event made ready to store: the observation record and what preparing it changed."""

    obs: dict[str, Any]
    images: list[images.FoundImage] = field(default_factory=list)
    trimmed: filters.Trimmed = field(default_factory=filters.Trimmed)
    tool_name: str | None = None


@tool(
    "agent_observe",
    params(
        ["sessionId"],
        sessionId=SESSION_ID,
        hookType=string(
            "Hook that fired (session_start, prompt_submit, post_tool_use, post_tool_failure, ..., or "
            "'observation' for an agent's own note); any other name is stored as 'other' with the name kept",
            max_length=64,
            pattern=r"^[^\x00-\x1f\x7f]+$",
            default="observation",
        ),
        project=PROJECT,
        cwd=string("Working directory", max_length=4096),
        timestamp=string("ISO-8601 time of the event", max_length=64),
        data=anything("The hook's payload (any JSON); base64 images in it move to the image store"),
        eventId=string("Client event id for exact dedup", pattern=EVENT_ID_PATTERN, max_length=128),
        agentId=string("Agent that made the observation", max_length=128),
        content=string(
            "Text of an agent-authored observation (cut past AGENTMEMORY_MAX_FIELD_CHARS); on a hook event it is "
            "stored beside 'data', as are title, type, files and concepts",
            max_length=MAX_TEXT,
        ),
        title=string("Title of an agent-authored observation", max_length=500),
        type=string("Type of an agent-authored observation", max_length=40),
        files=array(string(max_length=1024), "Files the observation is about", max_items=200),
        concepts=array(string(max_length=200), "Concepts", max_items=100),
    ),
    http=[("POST", "/observe", 201)],
)
def agent_observe(ctx: Ctx, args: dict) -> Reply:
    """Record one observation (a hook event or an agent's own note); 201 new, 200 duplicate,
    202 kept in the capture inbox (filtered, or stored later by a retry), or in this node's capture
    spool while the database cannot take it."""
    prepared = prepare(ctx, args)
    refused = inbox_service(ctx).tool_filter.refuses(prepared.tool_name)
    if refused:
        return inbox_service(ctx).keep_filtered(ctx, prepared.obs, args.get("agentId"), refused)
    inbox = inbox_service(ctx)
    busy = inbox.recently_busy()
    if busy is not None:
        kept = inbox.spool_while_busy(ctx, prepared, args.get("agentId"), busy)
        if kept is not None:
            return kept
    try:
        return _store_or_keep(ctx, prepared, args.get("agentId"))
    finally:
        inbox.probe_over()  # when this event was the one trying the store after it failed


def _store_or_keep(ctx: Ctx, prepared: Prepared, agent_given: str | None) -> Reply:
    """Store the event, or keep it for a retry (the inbox, or the spool) when storing failed."""
    tried_at = time.monotonic()
    try:
        stored = store_observation(ctx, prepared.obs, agent_given, prepared=prepared)
    except CapacityExceeded as exc:
        inbox_service(ctx).keep_dead(ctx, prepared, agent_given, exc.message)
        exc.details = {**exc.details, "eventId": prepared.obs["eventId"], "keptInCaptureInbox": True}
        raise
    except AppError as exc:
        if exc.status < 500:
            raise  # the request itself is wrong (or refused): the client hears why
        # The database is busy, gone or refusing writes: keep the event for a retry.
        log.warning("storing observation %s failed (%s); kept for a retry", prepared.obs["eventId"], exc.message)
        return inbox_service(ctx).keep_for_retry(ctx, prepared, agent_given, exc)
    except Exception as exc:  # noqa: BLE001 - a failure to store must not lose the event
        log.exception("storing observation %s failed; kept for a retry", prepared.obs["eventId"])
        return inbox_service(ctx).keep_for_retry(ctx, prepared, agent_given, exc)
    inbox_service(ctx).store_answered(tried_at)  # stored, or a duplicate: the store takes writes
    return stored


def prepare(ctx: Ctx, args: dict) -> Prepared:
    """Turn observe's arguments into the observation to store (nothing is written here)."""
    rt, sid = ctx.rt, args["sessionId"]
    settings = rt.settings
    hook, original = filters.classify_hook_type(args["hookType"])
    client_ts = args.get("timestamp") or ""
    timestamp = normalise_time(client_ts, rt.clock)
    payload = _payload(hook, args)
    reader = images.confined_reader(_readable_roots(ctx), settings.max_body_bytes)
    found = images.extract_images(payload, reader)  # before stripping: base64 is not text
    limits = {"output_max": settings.capture_output_max, "field_max": settings.max_field_chars}
    bounded, removed = filters.pre_cut(found.payload, **limits)  # stripping 12 MB that is cut anyway takes seconds
    raw, trimmed = filters.trim_payload(strip_private_data(bounded), **limits, removed=removed)
    event_id = args.get("eventId") or derive_event_id(
        sid, hook if original is None else original, client_ts or timestamp, raw
    )
    compressed = synthetic_compression(hook if original is None else filters.normalise_hook_type(original), raw)
    obs: dict[str, Any] = {
        "id": new_id("obs"),
        "sessionId": sid,
        "timestamp": timestamp,
        "hookType": hook,
        "project": (args.get("project") or "").strip() or None,
        "cwd": args.get("cwd"),
        "eventId": event_id,
        **compressed,
        "raw": raw,
    }
    _note_capture(obs, original, found, raw, trimmed)
    return Prepared(obs, found.images, trimmed, compressed.get("toolName"))


def _payload(hook: str, args: dict) -> Any:
    """The event's payload: its ``data`` with the note fields sent beside it (content, title,
    type, files, concepts). An agent's own observation needs content or data."""
    note = {k: args[k] for k in ("content", "title", "type", "files", "concepts") if args.get(k)}
    if hook == "observation":
        if not args.get("content") and args.get("data") in (None, "", {}):
            raise InvalidInput("an observation needs 'content' or 'data'", field="content")
        # An agent's note: its own fields win, and data comes along under them.
        payload: Any = with_note(args.get("data"), note, note_wins=bool(note.get("content")))
    else:
        payload = with_note(args.get("data"), note)
    return payload


def _note_capture(
    obs: dict[str, Any], original: str | None, found: images.Extraction, raw: Any, trimmed: filters.Trimmed
) -> None:
    """What capturing did to the event, on the observation: the hook type the client sent when
    it was mapped, the images taken out of it, the fields trimmed."""
    if original is not None:
        obs["originalHookType"] = original
    if found.images:
        obs["images"] = found.refs
        obs["imageRef"] = found.refs[0]["id"]
        obs["modality"] = images.modality(raw, found.images)
    if trimmed.fields:
        obs["truncated"] = {"fields": trimmed.fields[:20], "chars": trimmed.chars}


def with_note(data: Any, note: dict[str, Any], *, note_wins: bool = False) -> Any:
    """The payload of an event that came with both ``data`` and note fields (content, title, ...):
    both are stored, neither dropped. On a clash of keys ``data`` wins, or the note when
    ``note_wins``; a ``data`` that is not an object is kept under ``data``."""
    if not note:
        return data
    if data in (None, "", {}):
        return note
    if not isinstance(data, dict):
        return {**note, "data": data}
    return {**data, **note} if note_wins else {**note, **data}


def _readable_roots(ctx: Ctx) -> list[Path]:
    roots = [ctx.rt.settings.data_path]
    if ctx.rt.settings.import_root:
        roots.append(Path(ctx.rt.settings.import_root))
    return roots


def store_observation(
    ctx: Ctx, obs: dict[str, Any], agent_given: str | None, *, prepared: Prepared | None = None
) -> Reply:
    """Store one compressed observation: dedup by eventId, implicit session (a completed one
    reopens), per-session cap, images, index, audit and broadcast. Used by observe, the capture
    inbox's retries and importers."""
    rt, now = ctx.rt, ctx.rt.clock.iso()

    def store(tx: Any) -> Reply:
        return _store(ctx, tx, obs, agent_given, prepared, now)

    # Observe is the hottest write: the calls of concurrent clients commit together.
    return rt.db.write("observe", store, agent_id=stamp_agent(ctx, agent_given))


def _store(
    ctx: Ctx, tx: Any, obs: dict[str, Any], agent_given: str | None, prepared: Prepared | None, now: str
) -> Reply:
    """``store_observation`` inside its write transaction."""
    rt, sid = ctx.rt, obs["sessionId"]
    prior = tx.events.get(obs["eventId"])
    if prior:
        return _duplicate(ctx, obs, prior, now)
    session = _session_for(ctx, tx, obs, agent_given, now)
    obs["project"] = obs.get("project") or session.get("project")
    if prepared is not None and prepared.images:
        image_store(ctx).save(tx, prepared.images, now)
    tx.records.set(obs_scope(sid), obs["id"], obs, now=now)
    reopened = note_activity(ctx, session, now)
    session["observationCount"] = session.get("observationCount", 0) + 1
    if obs["hookType"] == "prompt_submit" and not session.get("firstPrompt"):
        session["firstPrompt"] = truncate(" ".join(obs["title"].split()), 200)
    tx.records.set(SESSIONS, sid, session, now=now)
    tx.events.put(obs["eventId"], sid, obs["id"], now)
    search.index_record(tx, "observation", obs)
    _count(tx, obs, prepared, now)
    for hook in rt.hooks.observe:
        hook(ctx, tx, obs)
    tx.audit_message = f"observe {obs['hookType']} -> {obs['id']} in session {sid}" + (
        " (session reopened)" if reopened else ""
    )
    tx.after_commit(lambda: rt.publish("observation", obs))
    if reopened:
        tx.after_commit(lambda: rt.publish("session", session))
    return _stored(ctx, obs, reopened, now)


def _session_for(ctx: Ctx, tx: Any, obs: dict[str, Any], agent_given: str | None, now: str) -> dict[str, Any]:
    """The observation's session (created when new), with the agent stamped on ``obs``.

    :raise CapacityExceeded: the session already holds MAX_OBS_PER_SESSION observations.
    """
    sid, limit = obs["sessionId"], ctx.rt.settings.max_obs_per_session
    session = tx.records.get(SESSIONS, sid)
    claim_session(ctx, session, sid)
    agent = stamp_agent(ctx, agent_given or (session or {}).get("agentId"))
    if session is None:
        session = new_session(ctx, sid, obs.get("project"), obs.get("cwd"), agent, now)
    if tx.records.count(obs_scope(sid)) >= limit:
        raise CapacityExceeded(
            f"session {sid!r} already holds MAX_OBS_PER_SESSION={limit} observations; "
            "start a new session or raise the limit (the event is kept in the capture inbox)",
            details={"sessionId": sid, "limit": limit},
        )
    if agent:
        obs["agentId"] = agent
    return session


def _duplicate(ctx: Ctx, obs: dict[str, Any], prior: dict[str, Any], now: str) -> Reply:
    body = {
        "success": True,
        "duplicate": True,
        "deduplicated": True,
        "observationId": prior["obsId"],
        "sessionId": prior["sessionId"],
        "eventId": obs["eventId"],
    }
    return Reply({**body, **durability(ctx, now)}, 200)


def _stored(ctx: Ctx, obs: dict[str, Any], reopened: bool, now: str) -> Reply:
    """The 201 answer, saying what the pipeline changed."""
    body: dict[str, Any] = {
        "success": True,
        "duplicate": False,
        "observationId": obs["id"],
        "sessionId": obs["sessionId"],
        "eventId": obs["eventId"],
    }
    if obs.get("originalHookType"):
        body["hookType"] = "other"
        body["warning"] = f"unknown hookType {obs['originalHookType']!r} stored as 'other' (the name is kept)"
    if obs.get("truncated"):
        body["truncated"] = obs["truncated"]
    if obs.get("images"):
        body["images"] = [i["id"] for i in obs["images"]]
    if reopened:
        body["sessionReopened"] = True
    return Reply({**body, **durability(ctx, now)}, 201)


def _count(tx: Any, obs: dict[str, Any], prepared: Prepared | None, now: str) -> None:
    """Count what the pipeline changed, so it shows in GET /capture and /health."""
    if obs.get("originalHookType"):
        tx.inbox.bump("unknown_hook", str(obs["originalHookType"])[:64], now)
    if prepared is not None:
        for path in prepared.trimmed.fields:
            tx.inbox.bump("truncated", path.rsplit(".", 1)[-1][:64], now)
        for image in prepared.images:
            tx.inbox.bump("images", image.mime, now)


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
    session = store.records.get(SESSIONS, args["sessionId"])
    if session is not None and not in_token_projects(ctx, session):
        return {"sessionId": args["sessionId"], "observations": [], **page_info([], 0, args["offset"], args["limit"])}
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
