"""OpenCode events, as sent by the plugin ``agentmemory connect opencode`` writes.

OpenCode plugins are JavaScript modules that receive events (``session.created``,
``session.idle``, ``session.compacted``, ``session.deleted``, ``session.error``) and hook calls
(``chat.message``, ``tool.execute.before``/``after``; opencode.ai/docs/plugins, see
docs/clients.md). The plugin forwards each as ``{hook_event_name, session_id, cwd, ...}`` with the
tool fields under ``tool_name``/``tool_input``/``tool_response``; this module reads that shape.
The plugin does not wait for an answer, so the answer is ``{}``.
"""

from __future__ import annotations

from typing import Any

from agentmemory_server.capture.clients.base import (
    END,
    START,
    TURN_END,
    HookEvent,
    Mapper,
    clip_fields,
    event_name,
    hook_type_of,
    is_own_tool,
    require_session,
    text_of,
)

EVENTS = {
    "session.created": "session_start",
    "chat.message": "prompt_submit",
    "tool.execute.after": "post_tool_use",
    "session.idle": "stop",
    "session.compacted": "post_compact",
    "session.error": "session_error",
    "session.deleted": "session_end",
}
LIFECYCLE = {"session.created": START, "session.idle": TURN_END, "session.deleted": END}


def parse(payload: dict[str, Any], limit: int) -> HookEvent:
    name = event_name(payload, "hook_event_name", "OpenCode")
    key = text_of(payload.get("call_id")) or text_of(payload.get("message_id"))
    return HookEvent(
        session_id=require_session(payload, ("session_id",), "OpenCode"),
        event=name,
        hook_type=hook_type_of(EVENTS, name),
        cwd=text_of(payload.get("cwd")),
        data=clip_fields(payload, limit),
        key=key,
        lifecycle=LIFECYCLE.get(name),
        skip=is_own_tool(payload.get("tool_name")),
    )


def reply(event: HookEvent, context: str | None) -> dict[str, Any]:
    return {}


MAPPER = Mapper("opencode", "OpenCode", EVENTS, parse, reply)
