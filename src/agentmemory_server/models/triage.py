"""Which observations are not worth a model call: the low-value filter of model compression.

Decided from stored records only, before any call, so the same session always gives the same
answer. An observation is low-value when it is

- ``empty``: an event that carries no data and no text at all;
- ``trivial``: a successful tool call that only looks around or keeps the agent's to-do list:
  a to-do or directory-listing tool (TodoWrite, TodoRead, TaskUpdate, TaskList, TaskGet, LS,
  list_directory), or a shell command
  whose every part (split on ``&&``, ``||``, ``;``, ``|``) is one of ``ls, ll, pwd, cd, echo,
  clear, which, whoami, date, true, tree, type``;
- ``duplicate``: a tool event with the same tool, input and output (``contentHash``, set by the
  synthetic compression) as an earlier observation of the same session;
- ``unchanged-read``: a file read of a path the session already read with the same output; when
  the hook carried no output, a read of a path read before and not edited or written (by an
  Edit/Write tool event) since.

Never low-value: an agent's own notes (``observation``), user prompts, and failed tool calls
that are not repeats. A low-value observation keeps its synthetic compression (it is still
stored, indexed and searchable); only the model call is saved, and counted.
"""

from __future__ import annotations

import re
from typing import Any

from agentmemory_server.capture.compress import classify, content_hash, extract_files, hook_fields, normalise_tool_name
from agentmemory_server.kernel.scopes import obs_scope
from agentmemory_server.storage.interfaces import Where

# To-do bookkeeping (Claude Code's TodoWrite/TodoRead, later TaskUpdate/TaskList/TaskGet; a new
# task, TaskCreate, is kept: it states intent) and directory listings.
TRIVIAL_TOOLS = frozenset(
    {"todo_write", "todo_read", "task_update", "task_list", "task_get", "ls", "list_directory", "list_dir"}
)
TRIVIAL_COMMANDS = frozenset(
    {"ls", "ll", "pwd", "cd", "echo", "clear", "which", "whoami", "date", "true", "tree", "type"}
)
NEVER_LOW_VALUE = frozenset({"observation", "prompt_submit"})
REASONS = ("empty", "trivial", "duplicate", "unchanged-read")
_SPLIT = re.compile(r"&&|\|\||[;|\n]")
_WRITES = frozenset({"file_edit", "file_write"})


def trivial_command(command: Any) -> bool:
    if not isinstance(command, str) or not command.strip():
        return False
    parts = [p.strip() for p in _SPLIT.split(command)]
    return all(p and p.split()[0] in TRIVIAL_COMMANDS for p in parts)


def is_trivial(hook_type: str, tool: str, tool_input: Any) -> bool:
    if hook_type != "post_tool_use":
        return False  # a failure is worth remembering
    if normalise_tool_name(tool) in TRIVIAL_TOOLS:
        return True
    command = tool_input.get("command") if isinstance(tool_input, dict) else tool_input
    return classify(hook_type, tool) == "command_run" and trivial_command(command)


def _order(obs: dict[str, Any]) -> tuple[str, str]:
    return str(obs.get("timestamp") or ""), str(obs.get("id") or "")


def low_value_reason(store: Any, obs: dict[str, Any]) -> str | None:
    """Why ``obs`` is not worth a model call (one of ``REASONS``), or None."""
    hook = str(obs.get("hookType") or "")
    if hook in NEVER_LOW_VALUE:
        return None
    raw = obs.get("raw")
    if raw in (None, "", {}, []):
        return None if str(obs.get("narrative") or "").strip() else "empty"
    fields = hook_fields(hook, raw)
    tool = fields["toolName"] if isinstance(fields["toolName"], str) and fields["toolName"] else None
    if tool is None:
        return None
    if is_trivial(hook, tool, fields["toolInput"]):
        return "trivial"
    kind = classify(hook, tool)
    digest = obs.get("contentHash") or content_hash(hook, fields, kind)
    scope = obs_scope(str(obs.get("sessionId")))
    earlier = [o for o in store.records.query(scope, [Where("contentHash", "=", digest)]) if _order(o) < _order(obs)]
    if not earlier:
        return None
    if kind != "file_read":
        return "duplicate"
    if fields["toolOutput"] not in (None, ""):
        return "unchanged-read"  # same path, same content
    last = max(earlier, key=_order)
    return None if _written_between(store, scope, extract_files(fields["toolInput"]), last, obs) else "unchanged-read"


def _written_between(store: Any, scope: str, paths: list[str], first: dict[str, Any], last: dict[str, Any]) -> bool:
    """Did an Edit/Write tool event touch one of ``paths`` between two observations?"""
    span = [Where("timestamp", ">=", first.get("timestamp") or ""), Where("timestamp", "<=", last.get("timestamp"))]
    for other in store.records.query(scope, span):
        if not _order(first) < _order(other) < _order(last):
            continue
        hook = str(other.get("hookType") or "")
        fields = hook_fields(hook, other.get("raw"))
        tool = fields["toolName"]
        wrote = isinstance(tool, str) and classify(hook, tool) in _WRITES
        if wrote and set(extract_files(fields["toolInput"])) & set(paths):
            return True
    return False
