"""Codex CLI hook payloads (developers.openai.com/codex/hooks, see docs/clients.md).

Codex runs command hooks only, with Claude-Code-shaped stdin: ``session_id``, ``cwd``,
``hook_event_name``, ``turn_id``, and per event ``source``, ``prompt``, ``tool_name``/``tool_input``/
``tool_use_id``/``tool_response``, ``trigger``; SessionEnd (teardown of the session, since July 2026)
``reason``. SessionStart and UserPromptSubmit take
``hookSpecificOutput.additionalContext``; Stop and SubagentStop require a JSON object on stdout, so
every answer is an object (``{}`` when there is nothing to say).
"""

from __future__ import annotations

from typing import Any

from agentmemory_server.capture.clients import claude_code
from agentmemory_server.capture.clients.base import (
    END,
    START,
    TURN_END,
    HookEvent,
    Mapper,
    clip_fields,
    event_name,
    hook_specific,
    hook_type_of,
    is_own_tool,
    require_session,
    text_of,
    with_message,
)

EVENTS = {
    "SessionStart": "session_start",
    "UserPromptSubmit": "prompt_submit",
    "PreToolUse": "pre_tool_use",
    "PermissionRequest": "permission_request",
    "PostToolUse": "post_tool_use",
    "PreCompact": "pre_compact",
    "PostCompact": "post_compact",
    "SubagentStart": "subagent_start",
    "SubagentStop": "subagent_stop",
    "Stop": "stop",
    "SessionEnd": "session_end",
}
# Stop ends a turn, the session stays open for the next one; SessionEnd ends it (Codex builds
# before it leave the session to the idle finalizer).
LIFECYCLE = {"SessionStart": START, "Stop": TURN_END, "SessionEnd": END}
CONTEXT_EVENTS = ("SessionStart", "UserPromptSubmit", "SubagentStart")


def parse(payload: dict[str, Any], limit: int) -> HookEvent:
    name = event_name(payload, "hook_event_name", "Codex")
    tool_event = name in ("PreToolUse", "PostToolUse", "PermissionRequest")
    key = claude_code.host_key(name, payload)
    if key is None and name == "UserPromptSubmit":
        key = text_of(payload.get("turn_id"))  # one prompt per turn
    return HookEvent(
        session_id=require_session(payload, ("session_id",), "Codex"),
        event=name,
        hook_type=hook_type_of(EVENTS, name),
        cwd=text_of(payload.get("cwd")),
        data=clip_fields(with_message(payload), limit),
        key=key,
        lifecycle=LIFECYCLE.get(name),
        prompt=text_of(payload.get("prompt")) if name == "UserPromptSubmit" else None,
        skip=tool_event and is_own_tool(payload.get("tool_name")),
    )


def reply(event: HookEvent, context: str | None) -> dict[str, Any]:
    return hook_specific(event.event, context) if event.event in CONTEXT_EVENTS else {}


MAPPER = Mapper("codex", "Codex CLI", EVENTS, parse, reply)
