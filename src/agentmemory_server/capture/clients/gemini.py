"""Gemini CLI and Antigravity CLI hook payloads (geminicli.com/docs/hooks/reference; see
docs/clients.md).

Command hooks get ``session_id``, ``transcript_path``, ``cwd``, ``hook_event_name`` and
``timestamp``; BeforeAgent adds ``prompt``, AfterAgent ``prompt_response``, the tool events
``tool_name``/``tool_input``/``tool_response`` (``llmContent``, ``returnDisplay``, ``error``). stdout
must be JSON only, so every answer is an object; SessionStart and BeforeAgent take
``hookSpecificOutput.additionalContext``. Antigravity's CLI is reported to use Claude-style event
names as well (PreToolUse/PostToolUse): both spellings map to the same hook types. The model hooks
(BeforeModel, AfterModel fires per streamed chunk, BeforeToolSelection) are not captured.
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
)

EVENTS = {
    "SessionStart": "session_start",
    "SessionEnd": "session_end",
    "BeforeAgent": "prompt_submit",
    "AfterAgent": "stop",
    "BeforeTool": "pre_tool_use",
    "AfterTool": "post_tool_use",
    "Notification": "notification",
    "PreCompress": "pre_compact",
    # Claude-style names some Antigravity builds use
    "UserPromptSubmit": "prompt_submit",
    "PreToolUse": "pre_tool_use",
    "PostToolUse": "post_tool_use",
    "Stop": "stop",
    "PreCompact": "pre_compact",
}
MODEL_EVENTS = ("BeforeModel", "AfterModel", "BeforeToolSelection")
LIFECYCLE = {"SessionStart": START, "AfterAgent": TURN_END, "Stop": TURN_END, "SessionEnd": END}
CONTEXT_EVENTS = ("SessionStart", "BeforeAgent", "UserPromptSubmit")


def _hook_type(name: str, payload: dict[str, Any]) -> str:
    response = payload.get("tool_response")
    if name in ("AfterTool", "PostToolUse") and isinstance(response, dict) and response.get("error"):
        return "post_tool_failure"
    return hook_type_of(EVENTS, name)


def parse(payload: dict[str, Any], limit: int) -> HookEvent:
    name = event_name(payload, "hook_event_name", "Gemini CLI")
    data = clip_fields(payload, limit)
    if name == "AfterAgent" and payload.get("prompt_response"):
        data["message"] = clip_fields({"m": payload["prompt_response"]}, limit)["m"]
        data.pop("prompt_response", None)
    return HookEvent(
        session_id=require_session(payload, ("session_id",), "Gemini CLI"),
        event=name,
        hook_type=_hook_type(name, payload),
        cwd=text_of(payload.get("cwd")),
        data=data,
        key=text_of(payload.get("tool_use_id")),
        lifecycle=LIFECYCLE.get(name),
        prompt=text_of(payload.get("prompt")) if name in ("BeforeAgent", "UserPromptSubmit") else None,
        skip=name in MODEL_EVENTS or is_own_tool(payload.get("tool_name")),
    )


def reply(event: HookEvent, context: str | None) -> dict[str, Any]:
    return hook_specific(event.event, context) if event.event in CONTEXT_EVENTS else {}


MAPPER = Mapper("gemini", "Gemini CLI", EVENTS, parse, reply)
ANTIGRAVITY = Mapper("antigravity", "Antigravity CLI", EVENTS, parse, reply)
