"""Cline hook payloads (docs.cline.bot/features/hooks/hook-reference; see docs/clients.md).

One executable file per hook type. Every payload has ``clineVersion``, ``hookName``,
``timestamp``, ``taskId``, ``workspaceRoots`` and ``userId``, plus an object named after the hook
(``preToolUse: {toolName, parameters}``, ``postToolUse: {toolName, parameters, result, success,
executionTimeMs}``, ``userPromptSubmit: {prompt, attachments}``, ``taskStart: {taskMetadata}``).
The answer is always ``{"cancel": false}``, with ``contextModification`` carrying context for
TaskStart, TaskResume and UserPromptSubmit. A task is a session: TaskComplete ends it.
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
    first_root,
    hook_type_of,
    is_own_tool,
    require_session,
    text_of,
)

EVENTS = {
    "TaskStart": "session_start",
    "TaskResume": "session_start",
    "UserPromptSubmit": "prompt_submit",
    "PreToolUse": "pre_tool_use",
    "PostToolUse": "post_tool_use",
    "PreCompact": "pre_compact",
    "TaskCancel": "stop",
    "TaskComplete": "task_completed",
}
LIFECYCLE = {"TaskStart": START, "TaskResume": START, "TaskCancel": TURN_END, "TaskComplete": END}
CONTEXT_EVENTS = ("TaskStart", "TaskResume", "UserPromptSubmit")


def _section_key(name: str) -> str:
    """Where the hook-specific object is (``postToolUse`` for PostToolUse ...)."""
    return name[:1].lower() + name[1:]


def _normalised(name: str, section: dict[str, Any]) -> dict[str, Any]:
    if name in ("PreToolUse", "PostToolUse"):
        out = {"tool_name": section.get("toolName"), "tool_input": section.get("parameters")}
        if name == "PostToolUse":
            out["error" if section.get("success") is False else "tool_response"] = section.get("result")
        return out
    if name == "UserPromptSubmit":
        return {"prompt": section.get("prompt")}
    found = section.get("taskMetadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    return {"message": metadata.get("initialTask")} if metadata.get("initialTask") else {}


def parse(payload: dict[str, Any], limit: int) -> HookEvent:
    name = event_name(payload, "hookName", "Cline")
    key = _section_key(name)
    section = payload[key] if isinstance(payload.get(key), dict) else {}
    normal = {k: v for k, v in _normalised(name, section).items() if v is not None}
    hook_type = hook_type_of(EVENTS, name)
    if name == "PostToolUse" and "error" in normal:
        hook_type = "post_tool_failure"
    return HookEvent(
        session_id=require_session(payload, ("taskId",), "Cline"),
        event=name,
        hook_type=hook_type,
        cwd=first_root(payload.get("workspaceRoots")),
        data=clip_fields({**{k: v for k, v in payload.items() if k != key}, **normal}, limit),
        lifecycle=LIFECYCLE.get(name),
        prompt=text_of(normal.get("prompt")),
        skip=is_own_tool(normal.get("tool_name")),
    )


def reply(event: HookEvent, context: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"cancel": False}
    if context and event.event in CONTEXT_EVENTS:
        out["contextModification"] = context
    return out


MAPPER = Mapper("cline", "Cline", EVENTS, parse, reply)
