"""GitHub Copilot CLI hook payloads (docs.github.com, "GitHub Copilot CLI hooks reference"; see
docs/clients.md).

Two documented formats: with camelCase event names in the config the payload is camelCase and
carries no event name (``sessionId``, ``timestamp`` in ms, ``cwd``, ``toolName``, ``toolArgs``,
``toolResult: {resultType, textResultForLlm}``), so ``agentmemory hook copilot --event NAME`` adds
it as ``agentmemory_event``; with PascalCase names the payload is the VS Code format
(``hook_event_name``, ``session_id``, ``tool_name``, ``tool_input``, ``tool_result``). Copilot does
not read context back from sessionStart or prompts, so every answer is ``{}``.
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
    hook_type_of,
    is_own_tool,
    parse_json_text,
    require_session,
    text_of,
)
from agentmemory_server.errors import InvalidInput

EVENTS = {
    "sessionStart": "session_start",
    "sessionEnd": "session_end",
    "userPromptSubmitted": "prompt_submit",
    "preToolUse": "pre_tool_use",
    "postToolUse": "post_tool_use",
    "postToolUseFailure": "post_tool_failure",
    "permissionRequest": "permission_request",
    "agentStop": "stop",
    "subagentStart": "subagent_start",
    "subagentStop": "subagent_stop",
    "errorOccurred": "error_occurred",
    "preCompact": "pre_compact",
    "notification": "notification",
    # the VS Code compatible (PascalCase) names
    "SessionStart": "session_start",
    "SessionEnd": "session_end",
    "UserPromptSubmit": "prompt_submit",
    "PreToolUse": "pre_tool_use",
    "PostToolUse": "post_tool_use",
    "PostToolUseFailure": "post_tool_failure",
    "Stop": "stop",
    "SubagentStop": "subagent_stop",
    "ErrorOccurred": "error_occurred",
    "PreCompact": "pre_compact",
    "Notification": "notification",
}
LIFECYCLE = {
    "sessionStart": START,
    "SessionStart": START,
    "agentStop": TURN_END,
    "Stop": TURN_END,
    "sessionEnd": END,
    "SessionEnd": END,
}
RENAMED = ("toolName", "toolArgs", "toolResult", "tool_result")


def _event(payload: dict[str, Any]) -> str:
    for field in ("hook_event_name", "agentmemory_event"):
        value = payload.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()[:64]
    raise InvalidInput(
        "a Copilot CLI hook payload needs its event: run the hook as 'agentmemory hook copilot --event NAME'",
        field="agentmemory_event",
    )


def _tool_fields(payload: dict[str, Any]) -> dict[str, Any]:
    result = payload.get("toolResult") or payload.get("tool_result")
    result = result if isinstance(result, dict) else {}
    text = result.get("textResultForLlm", result.get("text_result_for_llm"))
    kind = result.get("resultType", result.get("result_type"))
    out = {
        "tool_name": payload.get("toolName") or payload.get("tool_name"),
        "tool_input": parse_json_text(payload.get("toolArgs", payload.get("tool_input"))),
        "error" if kind in ("failure", "error", "denied") else "tool_response": text,
    }
    error = payload.get("error")
    if isinstance(error, dict):  # errorOccurred: {message, name, stack}
        out["error"] = error.get("message") or error.get("name")
    elif isinstance(error, str) and error.strip():  # postToolUseFailure: the message itself
        out["error"] = error
    return {k: v for k, v in out.items() if v is not None}


def parse(payload: dict[str, Any], limit: int) -> HookEvent:
    name = _event(payload)
    tools = _tool_fields(payload)
    hook_type = hook_type_of(EVENTS, name)
    if hook_type == "post_tool_use" and "error" in tools:
        hook_type = "post_tool_failure"
    kept = {k: v for k, v in payload.items() if k not in RENAMED and k != "error"}
    return HookEvent(
        session_id=require_session(payload, ("sessionId", "session_id"), "Copilot CLI"),
        event=name,
        hook_type=hook_type,
        cwd=text_of(payload.get("cwd")),
        data=clip_fields({**kept, **tools}, limit),
        lifecycle=LIFECYCLE.get(name),
        skip=is_own_tool(tools.get("tool_name")),
    )


def reply(event: HookEvent, context: str | None) -> dict[str, Any]:
    return {}


MAPPER = Mapper("copilot", "GitHub Copilot CLI", EVENTS, parse, reply)
