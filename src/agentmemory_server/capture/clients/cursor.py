"""Cursor hook payloads (cursor.com/docs/agent/hooks, ``hooks.json`` version 1; see docs/clients.md).

Every event has ``conversation_id`` (stable across turns), ``generation_id`` (one per user
message), ``hook_event_name`` (camelCase) and ``workspace_roots``. Tool events send ``tool_name``,
``tool_input`` and ``tool_output`` (a JSON string); the shell/MCP/file events have their own
fields, normalised here to the tool shape. Only ``sessionStart`` can hand context back
(``additional_context``); ``beforeSubmitPrompt`` answers ``{"continue": true}``.
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
    parse_json_text,
    require_session,
    text_of,
)

EVENTS = {
    "sessionStart": "session_start",
    "sessionEnd": "session_end",
    "beforeSubmitPrompt": "prompt_submit",
    "preToolUse": "pre_tool_use",
    "postToolUse": "post_tool_use",
    "postToolUseFailure": "post_tool_failure",
    "subagentStart": "subagent_start",
    "subagentStop": "subagent_stop",
    "beforeShellExecution": "pre_tool_use",
    "afterShellExecution": "post_tool_use",
    "beforeMCPExecution": "pre_tool_use",
    "afterMCPExecution": "post_tool_use",
    "beforeReadFile": "pre_tool_use",
    "afterFileEdit": "post_tool_use",
    "preCompact": "pre_compact",
    "stop": "stop",
    "afterAgentResponse": "assistant_response",
    "afterAgentThought": "agent_thought",
}
LIFECYCLE = {"sessionStart": START, "stop": TURN_END, "sessionEnd": END}
# Fields stored under a normalised name instead (kept once, not twice).
RENAMED = ("tool_output", "output", "result_json", "error_message", "summary", "text")


def _tool_shape(name: str, p: dict[str, Any]) -> dict[str, Any]:
    """The tool fields of a Cursor event under the names the observation pipeline reads."""
    if name in ("beforeShellExecution", "afterShellExecution"):
        return {
            "tool_name": "Shell",
            "tool_input": {"command": p.get("command"), "cwd": p.get("cwd")},
            "tool_response": p.get("output"),
        }
    if name in ("beforeMCPExecution", "afterMCPExecution"):
        return {
            "tool_name": p.get("tool_name"),
            "tool_input": parse_json_text(p.get("tool_input")),
            "tool_response": parse_json_text(p.get("result_json")),
        }
    if name in ("beforeReadFile", "afterFileEdit"):
        tool = "Read" if name == "beforeReadFile" else "Edit"
        return {"tool_name": tool, "tool_input": {"file_path": p.get("file_path"), "edits": p.get("edits")}}
    if name == "postToolUseFailure":
        return {"tool_name": p.get("tool_name"), "tool_input": p.get("tool_input"), "error": p.get("error_message")}
    if name in ("preToolUse", "postToolUse"):
        return {
            "tool_name": p.get("tool_name"),
            "tool_input": p.get("tool_input"),
            "tool_response": parse_json_text(p.get("tool_output")),
        }
    if name == "subagentStop":
        return {"agent_type": p.get("subagent_type"), "message": p.get("summary") or p.get("task")}
    if name in ("afterAgentResponse", "afterAgentThought"):
        return {"message": p.get("text")}
    return {}


def _key(name: str, p: dict[str, Any]) -> str | None:
    if name == "beforeSubmitPrompt":
        return text_of(p.get("generation_id"))  # changes with every user message
    if name in ("subagentStart", "subagentStop"):
        return text_of(p.get("subagent_id"))
    return text_of(p.get("tool_use_id"))


def parse(payload: dict[str, Any], limit: int) -> HookEvent:
    name = event_name(payload, "hook_event_name", "Cursor")
    shape = _tool_shape(name, payload)
    kept = {k: v for k, v in payload.items() if k not in RENAMED}
    data = clip_fields({**kept, **{k: v for k, v in shape.items() if v is not None}}, limit)
    return HookEvent(
        session_id=require_session(payload, ("conversation_id", "session_id"), "Cursor"),
        event=name,
        hook_type=hook_type_of(EVENTS, name),
        cwd=text_of(payload.get("cwd")) or first_root(payload.get("workspace_roots")),
        data=data,
        key=_key(name, payload),
        lifecycle=LIFECYCLE.get(name),
        skip=is_own_tool(shape.get("tool_name")),
    )


def reply(event: HookEvent, context: str | None) -> dict[str, Any]:
    if event.event == "sessionStart":
        return {"additional_context": context} if context else {}
    if event.event == "beforeSubmitPrompt":
        return {"continue": True}
    return {}


MAPPER = Mapper("cursor", "Cursor", EVENTS, parse, reply)
