"""Raw hook payloads from coding agents: ``POST /agentmemory/hooks/<client>``.

A coding agent's own hook (Claude Code's ``http`` hooks post here directly; the command-only
clients reach it through ``agentmemory hook <client>``) sends its JSON as it is. The client's
mapper (``capture/clients``) reads it; the event is stored through the observation pipeline
(``agent_observe``: privacy stripping, dedup, compression, index); session start reopens the
session and answers with the context block, a prompt gets the memories relevant to it, a turn end
and a session end go through ``session_end`` (``final`` false and true, like upstream 0.9.30).
The answer is in the client's own output format, so the hook can hand it back unchanged.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from agentmemory_server.capture.clients import MAPPERS
from agentmemory_server.capture.clients.base import END, START, TURN_END, HookEvent
from agentmemory_server.capture.inbox import inbox_service
from agentmemory_server.capture.observe import agent_observe, derive_event_id
from agentmemory_server.capture.sessions import session_end, session_start
from agentmemory_server.capture.spool import SpoolRefused, spool_service
from agentmemory_server.errors import AppError, CapacityExceeded
from agentmemory_server.kernel import principals, registry
from agentmemory_server.kernel.access import agent_filter, may_read
from agentmemory_server.kernel.registry import Ctx, params, string, tool
from agentmemory_server.kernel.util import estimate_tokens, iso, parse_time, truncate
from agentmemory_server.kernel.wording import one_line, paths_seen_from
from agentmemory_server.retrieval import recall, search

log = logging.getLogger("agentmemory.hooks")
# Claude Code replaces additionalContext above 10,000 characters with a file path and a preview.
MAX_CONTEXT_CHARS = 9500
PROMPT_HITS = 5
# When an event happened, added to its payload by ``agentmemory hook`` (never stored).
SENT_AT = "agentmemory_sent_at"
CLOCK_SKEW_SECONDS = 300


@tool(
    "hook_event",
    params(["client"], client=string("Which agent's hook format the body is in", enum=sorted(MAPPERS))),
    http=[("POST", "/hooks/<client>")],
    mcp=False,
)
def hook_event(ctx: Ctx, args: dict) -> dict:
    """Take one raw hook payload from a coding agent (Claude Code, Codex, Cursor, Gemini/Antigravity,
    Cline, Copilot CLI, OpenCode), store it as an observation and answer in that agent's own hook
    output format (the context block at session start, relevant memories for a prompt)."""
    mapper = MAPPERS[args["client"]]
    payload = {k: v for k, v in args.items() if k not in ("client", SENT_AT)}
    event = mapper.parse(payload, ctx.rt.settings.capture_output_max)
    at = sent_time(ctx, args.get(SENT_AT))
    if event.skip:
        return mapper.reply(event, None)
    project = project_of(event.cwd)
    principals.scope_project(ctx, project, f"hook_event {event.event}")  # a token valid for other projects
    # A start compiles its context first, so the block holds what earlier sessions left and not
    # the start that was just recorded.
    context = start_session(ctx, event, project) if event.lifecycle == START else None
    if not may_read(ctx):  # a write-only token is handed no context block (principals.OWN_WRITE_RECEIPT)
        context = None
    try:
        observed = registry.run(agent_observe, ctx, observe_args(ctx, event, project, at))
    except CapacityExceeded:
        if event.lifecycle != START and not event.prompt:
            raise
        log.warning("session %s is full; answering its %s without storing it", event.session_id, event.event)
        observed = {}
    if observed.get("spooled"):  # the database cannot take it now: nothing more to read or end
        spool_what_follows(ctx, event)
        return mapper.reply(event, context)
    return mapper.reply(event, context if event.lifecycle == START else after_store(ctx, event, project))


def spool_what_follows(ctx: Ctx, event: HookEvent) -> None:
    """A turn end or session end whose event was spooled ends its session once that event is
    stored (capture/spool.py)."""
    if event.lifecycle not in (TURN_END, END):
        return
    try:
        spool_service(ctx).keep_session_end(event.session_id, final=event.lifecycle == END)
    except SpoolRefused as exc:  # the event itself is kept; an idle session is completed anyway
        log.warning("the end of session %s could not be spooled: %s", event.session_id, exc)


def project_of(cwd: str | None) -> str | None:
    """The project an agent works on: the last part of its working directory."""
    if not cwd:
        return None
    name = posixpath.basename(cwd.replace("\\", "/").rstrip("/"))
    return name[:512] or None


def sent_time(ctx: Ctx, text: Any) -> str | None:
    """When an event happened, as ``agentmemory hook`` names it in ``agentmemory_sent_at``: the
    same in a first delivery and in the resend of a kept copy (adapters/hook_spool.py), so both
    make one event. None when absent, unparseable, or ahead of this server's clock by more than
    a plausible skew between two machines."""
    when = parse_time(text) if isinstance(text, str) and len(text) <= 64 else None
    now = parse_time(ctx.rt.clock.iso())
    if when is None or now is None or (when - now).total_seconds() > CLOCK_SKEW_SECONDS:
        return None
    return iso(when)


def observe_args(ctx: Ctx, event: HookEvent, project: str | None, at: str | None = None) -> dict[str, Any]:
    now = at or ctx.rt.clock.iso()
    if event.key:  # the host's own id: a replay of this event is a duplicate
        event_id = derive_event_id(event.session_id, event.hook_type, now, {"event_id": event.key})
    else:  # without one, the same content at another moment is another event (wrapped, so that
        # ids every event of a turn shares, like Claude Code's prompt_id, do not merge them)
        event_id = derive_event_id(event.session_id, event.hook_type, now, {"payload": event.data})
    args: dict[str, Any] = {
        "sessionId": event.session_id,
        "hookType": event.hook_type,
        "timestamp": now,
        "data": described(event),
        "eventId": event_id,
    }
    if project:
        args["project"] = project
    if event.cwd:
        args["cwd"] = event.cwd[:4096]
    return args


CONTENT_FIELDS = ("prompt", "tool_name", "message", "last_message", "error", "title")
DETAIL_FIELDS = ("source", "reason", "trigger", "notification_type", "status", "agent_type")


def described(event: HookEvent) -> dict[str, Any]:
    """The data to store, with a one-line ``event_note`` for events that carry no content of
    their own (a session start, a turn end), so their narrative says what happened instead of
    echoing ids and paths. It is ours, not the agent's: kept apart from ``message`` so that it
    never titles the event as if the agent had said it (capture/compress.hook_fields)."""
    data = {**event.data, "hook_event_name": event.event}
    if not any(data.get(f) for f in CONTENT_FIELDS):
        data["event_note"] = _note(event.event, data)
    return data


def _note(event_name: str, data: dict[str, Any]) -> str:
    """The event's name and the details it carries: "SessionStart (startup)"."""
    details = [str(data[f]) for f in DETAIL_FIELDS if isinstance(data.get(f), (str, int)) and data.get(f)]
    return event_name + (f" ({', '.join(details)})" if details else "")


def note_moved_from_message(data: Any) -> Any:
    """A payload stored before ``described`` wrote ``event_note`` holds our note as ``message``,
    where it reads as the agent's words: the same payload with the note where it is written
    now. Recognised by being exactly the note ``described`` makes of the payload's other fields;
    anything else is returned as it is."""
    if not isinstance(data, dict) or "event_note" in data or not isinstance(data.get("hook_event_name"), str):
        return data
    rest = {k: v for k, v in data.items() if k != "message"}
    if any(rest.get(f) for f in CONTENT_FIELDS) or data.get("message") != _note(data["hook_event_name"], rest):
        return data
    return {**rest, "event_note": data["message"]}


def start_session(ctx: Ctx, event: HookEvent, project: str | None) -> str | None:
    """Open (or reopen) the session; the context block to hand back, if any. While the database
    cannot answer there is none, and the start event itself is still kept (``agent_observe``)."""
    args = {"sessionId": event.session_id, "project": project, "cwd": event.cwd}
    try:
        started = registry.run(session_start, ctx, args)
    except AppError as exc:
        if exc.status < 500:
            raise
        log.warning("session %s starts without its context block: %s", event.session_id, exc.message)
        inbox_service(ctx).note_busy(exc)  # its start event goes to the spool without a second wait
        return None
    if ctx.rt.settings.hook_context == "off" or not started["context"]:
        return None
    return truncate(started["context"], MAX_CONTEXT_CHARS)


def after_store(ctx: Ctx, event: HookEvent, project: str | None) -> str | None:
    """What the event means for its session; the context to hand back, if any."""
    mode = ctx.rt.settings.hook_context
    if event.lifecycle in (TURN_END, END):
        registry.run(session_end, ctx, {"sessionId": event.session_id, "final": event.lifecycle == END})
        return None
    if event.prompt and mode == "all" and may_read(ctx):
        return relevant_memories(ctx, event.session_id, project, event.prompt, event.cwd)
    return None


def relevant_memories(
    ctx: Ctx, session_id: str, project: str | None, prompt: str, cwd: str | None = None
) -> str | None:
    """Memories and past observations matching a prompt, as a small block (BM25: it runs before
    every prompt, so it stays cheap), with paths under ``cwd`` named from it; None when nothing
    from another session matches."""
    filters = {"kinds": recall.RESULT_KINDS, "project": project, "agent_id": agent_filter(ctx, None)}
    query = prompt[:2000]
    terms = {t.lower() for t in search.query_terms(query)}
    pairs = recall.ranked(ctx, query, limit=PROMPT_HITS * 3, filters=filters, mode="bm25", rerank_top=False).pairs
    opening = f"<agentmemory-relevant project={quoteattr(project or '')}>"
    closing = "</agentmemory-relevant>"
    remaining = ctx.rt.settings.hook_prompt_budget - estimate_tokens(opening + closing)
    lines: list[str] = []
    for hit, record in pairs:
        row = recall.as_observation(hit, record)
        if row.get("sessionId") == session_id or not row.get("title") or not mentions(row, terms):
            continue
        narrative = truncate(" ".join(str(row.get("narrative") or "").split()), 200)
        line = f"- [{row.get('type', 'other')}] {escape(paths_seen_from(cwd, one_line(str(row['title']), narrative)))}"
        if line in lines:  # the same failure in three sessions is said once
            continue
        cost = estimate_tokens(line + "\n")
        if cost > remaining:
            break
        lines.append(line)
        remaining -= cost
        if len(lines) >= PROMPT_HITS:
            break
    return f"{opening}\n" + "\n".join(lines) + f"\n{closing}" if lines else None


def mentions(row: dict[str, Any], terms: set[str]) -> bool:
    """Whether a hit's own text contains one of the query's terms (ranking alone would also hand
    back the best of nothing)."""
    text = f"{row.get('title') or ''} {row.get('narrative') or ''}".lower()
    return any(term in text for term in terms)
