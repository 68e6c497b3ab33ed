"""Claude Code hook payloads (code.claude.com/docs/en/hooks, see docs/clients.md).

Every event carries ``session_id``, ``transcript_path``, ``cwd`` and ``hook_event_name``; tool
events add ``tool_name``/``tool_input``/``tool_use_id`` (and ``tool_response`` or ``error``). The
field names are already the ones the observation pipeline reads, so the payload is stored as it is
(long strings clipped). SessionStart and UserPromptSubmit are answered with
``hookSpecificOutput.additionalContext``; every other event gets ``{}`` (Stop and SubagentStop
must not get context: for them it means "keep working").
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
    "PostToolUse": "post_tool_use",
    "PostToolUseFailure": "post_tool_failure",
    "PermissionRequest": "permission_request",
    "Notification": "notification",
    "SubagentStart": "subagent_start",
    "SubagentStop": "subagent_stop",
    "Stop": "stop",
    "StopFailure": "stop_failure",
    "PreCompact": "pre_compact",
    "PostCompact": "post_compact",
    "TaskCompleted": "task_completed",
    "SessionEnd": "session_end",
}
LIFECYCLE = {"SessionStart": START, "Stop": TURN_END, "SessionEnd": END}
CONTEXT_EVENTS = ("SessionStart", "UserPromptSubmit")
TOOL_EVENTS = ("PreToolUse", "PostToolUse", "PostToolUseFailure", "PermissionRequest")


def host_key(name: str, payload: dict[str, Any]) -> str | None:
    """The host's own id of this event, when it has one that is unique to it."""
    if name in TOOL_EVENTS:
        return text_of(payload.get("tool_use_id"))
    if name == "UserPromptSubmit":
        return text_of(payload.get("prompt_id"))
    if name in ("SubagentStart", "SubagentStop"):
        return text_of(payload.get("agent_id"))
    return None


def parse(payload: dict[str, Any], limit: int) -> HookEvent:
    name = event_name(payload, "hook_event_name", "Claude Code")
    own_tool = name in TOOL_EVENTS and is_own_tool(payload.get("tool_name"))
    interrupted = name == "PostToolUseFailure" and payload.get("is_interrupt") is True
    return HookEvent(
        session_id=require_session(payload, ("session_id",), "Claude Code"),
        event=name,
        hook_type=hook_type_of(EVENTS, name),
        cwd=text_of(payload.get("cwd")),
        data=clip_fields(with_message(payload), limit),
        key=host_key(name, payload),
        lifecycle=LIFECYCLE.get(name),
        prompt=text_of(payload.get("prompt")) if name == "UserPromptSubmit" else None,
        skip=own_tool or interrupted,
    )


def reply(event: HookEvent, context: str | None) -> dict[str, Any]:
    return hook_specific(event.event, context) if event.event in CONTEXT_EVENTS else {}


MAPPER = Mapper("claude-code", "Claude Code", EVENTS, parse, reply)
