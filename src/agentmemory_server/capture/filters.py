"""What the capture pipeline accepts as it is, changes, or refuses before an event is stored.

- Tool filters (upstream 0.9.30 ``_capture-filter``, applied here on the server so every client
  gets them): by default the server's own ``memory_*`` tools (also as ``mcp__<server>__memory_*``)
  and MCP plumbing (``toolsearch``, ``listmcpresources``, ``fetchmcpresource``) are not captured.
  ``AGENTMEMORY_CAPTURE_ALLOW`` is an exclusive allow-list; ``AGENTMEMORY_CAPTURE_DENY`` adds to
  the deny-list. Patterns are comma/space separated, case-insensitive, ``*`` is a glob, and a
  pattern matches the full name or the bare tool name of an ``mcp__server__tool`` name.
- Tool output is cut to ``AGENTMEMORY_CAPTURE_OUTPUT_MAX`` characters with upstream's markers.
- Any other text longer than ``AGENTMEMORY_MAX_FIELD_CHARS`` is cut with a marker saying how much
  was cut: the observation is stored, never refused for its size.
- Hook types outside the known set are stored as ``other`` with the name the client sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from agentmemory_server.kernel.hook_types import KNOWN_HOOK_TYPES
from agentmemory_server.kernel.util import cut_text, cut_with_marker

DEFAULT_DENY = ("memory_*", "toolsearch", "listmcpresources", "fetchmcpresource")
OUTPUT_KEYS = ("tool_output", "tool_response", "tool_result", "toolOutput", "toolResponse")
STRING_MARKER = "\n[...truncated]"
OBJECT_MARKER = "...[truncated]"
MAX_DEPTH = 32  # deeper values are kept as they are (parse_json already bounds nesting)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")


def normalise_hook_type(name: str) -> str:
    """``PostToolUse``, ``post-tool-use`` and ``post_tool_use`` are the same hook."""
    snake = _CAMEL.sub("_", name.strip())
    return _SEPARATORS.sub("_", snake.lower()).strip("_")


def classify_hook_type(name: str) -> tuple[str, str | None]:
    """(stored hook type, original name when it was not understood)."""
    normalised = normalise_hook_type(name)
    if normalised in KNOWN_HOOK_TYPES:
        return normalised, None
    return "other", name


def parse_patterns(raw: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in re.split(r"[,\s]+", raw or "") if p.strip())


def bare_tool_name(name: str) -> str:
    """The tool of an MCP tool name ``mcp__<server>__<tool>``; other names unchanged."""
    trimmed = name.strip()
    if trimmed.lower().startswith("mcp__"):
        parts = trimmed.split("__")
        if len(parts) >= 3:
            return parts[-1]
    return trimmed


def _matches(name: str, pattern: str) -> bool:
    bare, full = bare_tool_name(name).lower(), name.strip().lower()
    if "*" not in pattern:
        return pattern in (bare, full)
    regex = re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")
    return bool(regex.match(bare) or regex.match(full))


@dataclass(frozen=True)
class ToolFilter:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, allow: str, deny: str) -> ToolFilter:
        return cls(parse_patterns(allow), DEFAULT_DENY + parse_patterns(deny))

    def refuses(self, tool_name: Any) -> str | None:
        """Why the tool is not captured (the matching rule), or None to capture it."""
        if not isinstance(tool_name, str) or not tool_name.strip():
            return None
        if len(tool_name) <= CACHED_NAME_CHARS:
            return _refusal(self, tool_name)
        return self._refusal(tool_name)

    def _refusal(self, tool_name: str) -> str | None:
        if self.allow:
            return None if any(_matches(tool_name, p) for p in self.allow) else "not in AGENTMEMORY_CAPTURE_ALLOW"
        rule = next((p for p in self.deny if _matches(tool_name, p)), None)
        if rule is None:
            return None
        return f"built-in deny rule {rule!r}" if rule in DEFAULT_DENY else f"AGENTMEMORY_CAPTURE_DENY rule {rule!r}"

    def describe(self) -> dict[str, Any]:
        return {"allow": list(self.allow), "deny": list(self.deny)}


# Every observe asks about its tool, and a session uses a handful of tools thousands of times:
# the answer (a pure function of the filter's rules and the name) is kept for names of a usual
# length, a bounded number of them.
CACHED_NAME_CHARS = 256
_refusal = lru_cache(maxsize=1024)(ToolFilter._refusal)


def cut_output(value: Any, limit: int) -> tuple[Any, int]:
    """A tool output within ``limit`` characters (upstream's markers) and how many were cut."""
    if isinstance(value, str) and len(value) > limit:
        return cut_with_marker(value, limit, STRING_MARKER), len(value) - limit
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) > limit:
            return cut_with_marker(text, limit, OBJECT_MARKER), len(text) - limit
    return value, 0


@dataclass
class Trimmed:
    """What trimming a payload changed."""

    fields: list[str] = field(default_factory=list)  # paths of the fields that were cut
    chars: int = 0  # characters removed in all


STRIP_MARGIN = 4096  # characters kept past a cut point until secrets are stripped


def pre_cut(data: Any, *, output_max: int, field_max: int) -> tuple[Any, dict[str, int]]:
    """``data`` with the strings far past their limit shortened *before* secret stripping, which
    reads every character (seconds for a 12 MB Write) of text that is cut anyway. Each keeps
    ``STRIP_MARGIN`` characters past its limit, so a secret that starts before the cut point is
    still whole when it is stripped. Returns the payload and the characters removed by field
    path, which ``trim_payload`` adds to what it reports."""
    removed: dict[str, int] = {}

    def walk(value: Any, path: str, depth: int, limit: int) -> Any:
        if isinstance(value, str):
            keep = limit + STRIP_MARGIN
            if len(value) <= keep:
                return value
            removed[path or "data"] = len(value) - keep
            return value[:keep]
        if depth >= MAX_DEPTH:
            return value
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                own = min(output_max, field_max) if depth == 0 and key in OUTPUT_KEYS else field_max
                out[key] = walk(item, child, depth + 1, own)
            return out
        if isinstance(value, list):
            return [walk(item, f"{path}[{i}]", depth + 1, field_max) for i, item in enumerate(value)]
        return value

    return walk(data, "", 0, field_max), removed


def trim_payload(
    data: Any, *, output_max: int, field_max: int, removed: dict[str, int] | None = None
) -> tuple[Any, Trimmed]:
    """``data`` with tool outputs cut to ``output_max`` and every other string to ``field_max``;
    ``removed``: what ``pre_cut`` took off already, by field path (counted as cut here)."""
    report = Trimmed()
    removed = dict(removed or {})

    def walk(value: Any, path: str, depth: int) -> Any:
        if isinstance(value, str):
            cut_value, cut = cut_text(value, field_max, removed.pop(path or "data", 0))
            if cut:
                report.fields.append(path or "data")
                report.chars += cut
            return cut_value
        if depth >= MAX_DEPTH:
            return value
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if depth == 0 and key in OUTPUT_KEYS:
                    item, cut = cut_output(item, output_max)
                    if cut:
                        report.fields.append(child)
                        report.chars += cut + removed.pop(child, 0)
                out[key] = walk(item, child, depth + 1)
            return out
        if isinstance(value, list):
            return [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
        return value

    return walk(data, "", 0), report
