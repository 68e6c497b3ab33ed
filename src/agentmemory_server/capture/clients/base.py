"""What every client mapper produces, and the helpers they share.

A coding agent's hook posts its own JSON (Claude Code's ``hook_event_name``/``session_id``, Cursor's
camelCase ``conversation_id``, Cline's ``hookName``/``taskId`` ...). A mapper turns one payload into a
``HookEvent``: which session, which of our hook types, the data to store (with the host's field
names normalised to the ones ``capture/compress.py`` reads: ``tool_name``, ``tool_input``,
``tool_response``, ``error``, ``prompt``, ``message``) and what the event means for the session
(start, end of a turn, end). The mapper also shapes the answer in the client's own output format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel.util import loads_clean, truncate

# Lifecycle meanings of an event for the session it belongs to.
START = "start"  # a session starts or resumes: reopen it and answer with the context block
TURN_END = "turn_end"  # the agent finished a turn; the session may continue (upstream Stop: final=false)
END = "end"  # the session is over (upstream SessionEnd: final=true): summaries run

# Tools that are the memory server's own (upstream 0.9.30 skips them: capturing a recall of a
# memory as a new observation only echoes it).
OWN_TOOL_PREFIXES = ("memory_", "mcp__agentmemory__", "agentmemory_")


@dataclass
class HookEvent:
    """One client hook event, normalised."""

    session_id: str
    event: str  # the client's own event name, kept in the stored data
    hook_type: str  # our hook type (upstream's names; ``other`` for events we do not know)
    cwd: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # the host's own id of this event (tool call id, prompt id): exact dedup
    lifecycle: str | None = None
    prompt: str | None = None  # the user's prompt, to make the answer's context relevant to it
    skip: bool = False  # nothing to store (the server's own memory tools)


@dataclass(frozen=True)
class Mapper:
    """A client's hook format: how to read its payloads and how to answer them."""

    name: str
    title: str
    events: Mapping[str, str]  # documented event name -> our hook type
    parse: Callable[[dict[str, Any], int], HookEvent]
    reply: Callable[[HookEvent, str | None], dict[str, Any]]


def require_session(payload: Mapping[str, Any], fields: tuple[str, ...], client: str) -> str:
    """The session id under the first of ``fields`` present, or a 400 naming them."""
    for name in fields:
        value = payload.get(name)
        if isinstance(value, (str, int)) and str(value).strip():
            text = str(value).strip()
            if len(text) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in text):
                raise InvalidInput(f"'{name}' is not a valid session id", field=name)
            return text
    raise InvalidInput(
        f"a {client} hook payload needs a session id in '{fields[0]}'", field=fields[0], details={"client": client}
    )


def event_name(payload: Mapping[str, Any], field_name: str, client: str) -> str:
    value = payload.get(field_name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"a {client} hook payload needs its event name in '{field_name}'", field=field_name)
    return value.strip()[:64]


def hook_type_of(events: Mapping[str, str], name: str) -> str:
    """Our hook type for a client event; ``other`` keeps unknown events instead of refusing them."""
    return events.get(name, "other")


def clip(value: Any, limit: int) -> Any:
    """``value`` with every long string cut to ``limit`` characters, and anything that still
    serialises to more than ``4 * limit`` characters stored as truncated JSON text (hook payloads
    carry whole file contents and command outputs; upstream keeps 8000 characters of output)."""
    clipped = _clip_strings(value, limit, depth=0)
    try:
        text = json.dumps(clipped, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return truncate(str(clipped), limit)
    return clipped if len(text) <= 4 * limit else truncate(text, 4 * limit)


def clip_fields(payload: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """A payload with each top-level field clipped on its own, so the result stays an object whose
    tool name and input survive whatever size the output had."""
    return {str(k): clip(v, limit) for k, v in payload.items()}


def with_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Claude-style payloads keep the agent's final words in ``last_assistant_message``; the
    pipeline reads them as ``message``."""
    out = dict(payload)
    if out.get("last_assistant_message") and not out.get("message"):
        out["message"] = out.pop("last_assistant_message")
    return out


def _clip_strings(value: Any, limit: int, depth: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else truncate(value, limit) + " [truncated]"
    if depth > 20:
        return "[nested too deeply]"
    if isinstance(value, dict):
        return {str(k): _clip_strings(v, limit, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_strings(v, limit, depth + 1) for v in value[:500]]
    return value


def text_of(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def first_root(roots: Any) -> str | None:
    """The first workspace root of a ``workspace_roots`` style list."""
    if isinstance(roots, list) and roots and isinstance(roots[0], str):
        return roots[0]
    return None


def parse_json_text(value: Any) -> Any:
    """Some clients send tool arguments as a JSON string; the parsed value when it is one."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return loads_clean(value)  # as strict as the body: no NaN, NUL, lone surrogate, deep nesting
        except ValueError:
            return value  # kept as the text it came as
    return value


def is_own_tool(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    lowered = name.lower()
    bare = lowered.split("__")[-1] if lowered.startswith("mcp__") else lowered
    return bare.startswith(OWN_TOOL_PREFIXES) or lowered.startswith(OWN_TOOL_PREFIXES)


def hook_specific(event_name_: str, context: str | None) -> dict[str, Any]:
    """Claude Code's (and Codex's, Gemini CLI's) way to hand context back to the agent."""
    if not context:
        return {}
    return {"hookSpecificOutput": {"hookEventName": event_name_, "additionalContext": context}}
