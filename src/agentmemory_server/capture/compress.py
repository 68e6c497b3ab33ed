"""Synthetic (zero-LLM) compression of a hook event into a searchable observation (U§4.3).

Deterministic and cheap: it runs on the request path of every ``/observe``. The LLM layer may
later replace these fields with richer ones; nothing here needs a model.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any

from agentmemory_server.capture.describe import describe, patch_text, patched_files
from agentmemory_server.kernel.util import stringify, tool_output_text, truncate
from agentmemory_server.retrieval.search import LIFECYCLE_HOOKS

OBSERVATION_TYPES = (
    "file_read",
    "file_write",
    "file_edit",
    "command_run",
    "search",
    "web_fetch",
    "conversation",
    "error",
    "decision",
    "discovery",
    "subagent",
    "notification",
    "task",
    "image",
    "other",
)

# Tried in order; the first family with a matching word decides the type.
_TOOL_WORD_TYPES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("fetch", "http", "web"), "web_fetch"),
    (("grep", "search", "glob", "find"), "search"),
    (("bash", "shell", "exec", "run"), "command_run"),
    (("edit", "update", "patch", "replace"), "file_edit"),
    (("write", "create"), "file_write"),
    (("read", "view"), "file_read"),
    (("task", "agent"), "subagent"),
)
_HOOK_TYPES = {
    "post_tool_failure": "error",
    "prompt_submit": "conversation",
    "subagent_stop": "subagent",
    "subagent_start": "subagent",
    "task_completed": "subagent",
    "notification": "notification",
    "error_occurred": "error",
    "stop_failure": "error",
    "session_error": "error",
    "assistant_response": "conversation",
    "agent_thought": "conversation",
}
_FILE_KEYS = ("file_path", "filepath", "absolute_path", "path", "filePath", "file", "notebook_path", "pattern")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s\-.:/]+")

# Reads and searches are context, errors are what the next session most needs to know.
_IMPORTANCE = {"error": 7, "file_edit": 6, "file_write": 6, "decision": 7, "file_read": 4, "search": 4}
# Session bookkeeping (raw client hooks record every start, turn end and compaction) and the
# client's own notices ("Claude needs your permission to use Bash", "waiting for your input"):
# kept for the timeline, ranked below anything a next session should be told about, and left out
# of what a project is said to be about (profiles, patterns).
LIFECYCLE_IMPORTANCE = 2


# A session calls a handful of tools thousands of times: what a name normalises and classifies to
# is worked out once per name (pure functions of the name). The caches are bounded in entries,
# and hold only names of a usual length, so a client's odd names cannot make them big.
CACHED_NAME_CHARS = 256


def normalise_tool_name(name: str) -> str:
    return _normalised(name) if len(name) <= CACHED_NAME_CHARS else _normalise(name)


def _normalise(name: str) -> str:
    spaced = _CAMEL.sub("_", name.strip())
    return "_".join(w for w in _SEPARATORS.sub("_", spaced).lower().split("_") if w)


_normalised = lru_cache(maxsize=1024)(_normalise)


def _word_matches(word: str, normalised: str) -> bool:
    words = normalised.split("_")
    return word in words or normalised == word or normalised.startswith(word) or normalised.endswith(word)


def classify(hook_type: str, tool_name: str | None) -> str:
    if hook_type in _HOOK_TYPES:
        return _HOOK_TYPES[hook_type]
    if not tool_name:
        return "other"
    return _tool_type_cached(tool_name) if len(tool_name) <= CACHED_NAME_CHARS else _tool_type(tool_name)


def _tool_type(tool_name: str) -> str:
    """The observation type a tool's name says (``_TOOL_WORD_TYPES``)."""
    normalised = normalise_tool_name(tool_name)
    for words, obs_type in _TOOL_WORD_TYPES:
        if any(_word_matches(w, normalised) for w in words):
            return obs_type
    return "other"


_tool_type_cached = lru_cache(maxsize=1024)(_tool_type)


def _searches_text(tool_name: str | None) -> bool:
    """Whether a tool's ``pattern`` is text to find (Grep's "def total"), not files to list."""
    normalised = normalise_tool_name(tool_name or "")
    return any(_word_matches(w, normalised) for w in ("grep", "search", "rg")) and "glob" not in normalised


def _file_keys(tool_name: str | None) -> tuple[str, ...]:
    """The input keys that name files a tool touched. A search's ``path`` is the directory it
    looked in ("src"), not a file; a text search's ``pattern`` is what it looked for."""
    if not tool_name or classify("post_tool_use", tool_name) != "search":
        return _FILE_KEYS
    return tuple(k for k in _FILE_KEYS if k != "path" and not (k == "pattern" and _searches_text(tool_name)))


def extract_files(tool_input: Any, tool_name: str | None = None) -> list[str]:
    if not isinstance(tool_input, dict):
        return []
    files: list[str] = []
    keys = _file_keys(tool_name)
    values = [tool_input.get(key) for key in keys]
    values += [path for _, path in patched_files(patch_text(tool_input))]  # Codex's apply_patch
    for value in values:
        if isinstance(value, str) and value and len(value) < 512 and value not in files:
            files.append(value)
    return files


# Where a compiler, linter or test runner says something failed: a relative path with an
# extension and a line number ("src/cart.ts:3:5", "tests/test_auth.py:42"). Absolute paths are
# left out: a traceback's are mostly the interpreter's and the libraries'.
_FAILED_AT = re.compile(r"(?<![\w/.~-])((?:[\w@+-][\w.@+-]*/)*[\w@+-][\w.@+-]*\.[A-Za-z][A-Za-z0-9]{0,9}):\d+")
FAILED_AT_FILES = 5


def failed_at(obs_type: str, output: Any, said: Any) -> list[str]:
    """The files an error names where it happened (``_FAILED_AT``), so that the next session's
    look at a file (file-context, enrich: "Past errors") finds a failed command's error too."""
    if obs_type != "error":
        return []
    text = f"{tool_output_text(output)}\n{stringify(said)}"[-20_000:]
    return list(dict.fromkeys(m.group(1) for m in _FAILED_AT.finditer(text)))[:FAILED_AT_FILES]


def hook_fields(hook_type: str, data: Any) -> dict[str, Any]:
    """The parts of a hook's ``data`` that matter, under stable names."""
    d = data if isinstance(data, dict) else {}
    said = d.get("last_message") or d.get("message") or d.get("task_description") or d.get("content")
    fields: dict[str, Any] = {
        "toolName": d.get("tool_name") or d.get("toolName"),
        "toolInput": d.get("tool_input", d.get("toolInput")),
        "toolOutput": next(
            (d[k] for k in ("tool_output", "tool_response", "error", "tool_result") if d.get(k) not in (None, "")), None
        ),
        "userPrompt": d.get("prompt") or d.get("userPrompt") if hook_type == "prompt_submit" else None,
        # what the agent (or the client) said; else the line a native hook route writes for an
        # event with no content of its own (client_hooks.described), for the narrative only
        "said": said,
        "message": said or d.get("event_note"),
        # (a hook event's own "content", kept from a client that sent a note with it, titles it
        # when nothing else does)
        "label": d.get("title") or d.get("task_subject") or d.get("agent_type") or d.get("content"),
    }
    if not isinstance(data, dict) and data not in (None, ""):
        fields["said"] = fields["message"] = stringify(data)
    return fields


def agent_note(data: dict[str, Any]) -> dict[str, Any]:
    """Compression of an observation an agent wrote itself (MCP agent_observe)."""
    content = stringify(data.get("content"))
    obs_type = data.get("type") if data.get("type") in OBSERVATION_TYPES else "discovery"
    title = stringify(data.get("title")) or content
    files = [f for f in data.get("files") or [] if isinstance(f, str) and len(f) < 512]
    concepts = [c for c in data.get("concepts") or [] if isinstance(c, str)]
    return {
        "type": obs_type,
        "title": truncate(" ".join(title.split()), 80),
        "facts": [],
        "narrative": truncate(content, 4000),
        "concepts": concepts[:20],
        "files": files[:50],
        "importance": _IMPORTANCE.get(str(obs_type), 6),
        "confidence": 0.6,
    }


def synthetic_compression(hook_type: str, data: Any) -> dict[str, Any]:
    """type, title, subtitle, facts, narrative, concepts, files, importance, confidence."""
    if hook_type == "observation" and isinstance(data, dict):
        return agent_note(data)
    f = hook_fields(hook_type, data)
    tool_name = f["toolName"] if isinstance(f["toolName"], str) and f["toolName"] else None
    obs_type = classify(hook_type, tool_name)
    input_text = stringify(f["toolInput"])
    prompt = stringify(f["userPrompt"])

    title = _plain_title(hook_type, f, tool_name, prompt)
    parts = [prompt, input_text, stringify(f["toolOutput"]), stringify(f["message"])]
    narrative = " | ".join(p for p in parts if p)
    if tool_name and not prompt:
        title, narrative = describe(tool_name, f["toolInput"], f["toolOutput"], failed=hook_type == "post_tool_failure")
    if not narrative and data not in (None, "", {}):
        # an event that carries only a label (OpenCode's session.created: its title) says that,
        # not its JSON
        narrative = stringify(f["label"]) or stringify(data)

    compressed: dict[str, Any] = {
        "type": obs_type,
        "title": truncate(" ".join(title.split()), 80),
        "facts": [],
        "narrative": truncate(narrative, 400),
        "concepts": [],
        "files": _files_named(f, tool_name, obs_type),
        "importance": _importance(hook_type, obs_type),
        "confidence": 0.3,
    }
    if input_text:
        compressed["subtitle"] = truncate(input_text, 120)
    if tool_name:
        compressed["toolName"] = tool_name
        compressed["contentHash"] = content_hash(hook_type, f, obs_type)
    return compressed


def _files_named(f: dict[str, Any], tool_name: str | None, obs_type: str) -> list[str]:
    """The files the tool's input names, then those a failure points at; each once."""
    return list(
        dict.fromkeys(extract_files(f["toolInput"], tool_name) + failed_at(obs_type, f["toolOutput"], f["said"]))
    )


def _importance(hook_type: str, obs_type: str) -> int:
    """Life-cycle events and notifications rank low; the rest by their type."""
    if hook_type in LIFECYCLE_HOOKS or obs_type == "notification":
        return LIFECYCLE_IMPORTANCE
    return _IMPORTANCE.get(obs_type, 5)


def _plain_title(hook_type: str, f: dict[str, Any], tool_name: str | None, prompt: str) -> str:
    """An event's title before a tool's description replaces it: its prompt, else what an event
    without a tool says (its label, its words, else its error: "rate limited"), else a name."""
    says = f["label"] or f["said"] or (None if tool_name else tool_output_text(f["toolOutput"], as_json=False))
    if prompt:
        return prompt
    if says:
        # "stop: Fixed the flaky test ...", "notification: Claude needs your permission ...": a
        # list of events titled only by their hook says nothing about them
        return f"{hook_type}: {stringify(says)}"
    return tool_name or hook_type


def content_hash(hook_type: str, fields: dict[str, Any], obs_type: str) -> str:
    """Fingerprint of what a tool event carries: two events of a session with the same one are
    repeats (model compression skips the later, see models/triage.py). A file read is keyed by
    its path and output, so reading the same unchanged content again matches whatever the
    offsets or tool were."""
    if obs_type == "file_read":
        key = [hook_type, obs_type, extract_files(fields["toolInput"]), fields["toolOutput"]]
    else:
        key = [hook_type, normalise_tool_name(str(fields["toolName"])), fields["toolInput"], fields["toolOutput"]]
    text = json.dumps(key, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
