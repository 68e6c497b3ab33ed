"""Deterministic titles and narratives for tool events: what happened, not the tool's name.

"Edit src/auth/login.py: replace 12 lines", "Bash: pytest tests/test_auth.py -> exit 1, 3 failed",
"Grep 'TODO' in src: 7 matches". Each known tool (Claude Code's names; Codex, Cursor and MCP tools
fall back to a generic form) has a describer reading its input and output; anything it cannot
read falls back to "<tool>: <the input's most telling value>". No model is involved: this runs on
the request path of every observe.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agentmemory_server.kernel.util import stringify, tool_output_text, truncate

Describer = Callable[[dict[str, Any], Any], tuple[str, str]]
_EXIT = re.compile(r"(?:exit(?:ed with)?(?: code| status)?|returned)\s*[:=]?\s*(-?\d+)", re.IGNORECASE)
# Test-runner summaries: pytest "3 failed, 10 passed", jest "Tests: 3 failed, 10 passed", go/cargo.
_TEST_COUNTS = re.compile(r"\b(\d+) (failed|passed|errors?|skipped|failures?|xfailed|tests? failed)\b", re.IGNORECASE)
TITLE_CHARS = 80
_TAIL_CHARS = 240


def _lines(text: Any) -> int:
    return len(text.splitlines()) if isinstance(text, str) and text else 0


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _first_line(text: Any, limit: int = 60) -> str:
    line = next((ln.strip() for ln in str(text or "").splitlines() if ln.strip()), "")
    return truncate(line, limit)


def _path(tool_input: dict[str, Any]) -> str:
    for key in ("file_path", "filePath", "absolute_path", "notebook_path", "path", "file", "filename"):
        if isinstance(tool_input.get(key), str) and tool_input[key]:
            return tool_input[key]
    return ""


def _found(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("ch") else "s")


# Codex edits files with apply_patch: its input is a patch in the "*** Update File: path" form.
_PATCH_FILE = re.compile(r"^\*\*\* (Add|Update|Delete) File: (.+?)\s*$|^\*\*\* Move to: (.+?)\s*$", re.MULTILINE)


def patch_text(tool_input: Any) -> str:
    """The patch an apply_patch call carries (Codex puts it in ``command``)."""
    if isinstance(tool_input, str):
        return tool_input
    if not isinstance(tool_input, dict):
        return ""
    text = next((tool_input[k] for k in ("command", "patch", "input") if isinstance(tool_input.get(k), str)), "")
    return text if "*** " in text else ""


def patched_files(text: str) -> list[tuple[str, str]]:
    """(what, path) for each file a patch adds, updates, deletes or moves to, in its order."""
    changes: list[tuple[str, str]] = []
    for match in _PATCH_FILE.finditer(text):
        what, path = (match.group(1).lower(), match.group(2)) if match.group(1) else ("move", match.group(3))
        if path and (what, path) not in changes:
            changes.append((what, path))
    return changes


def _search_result(output: Any, line: str) -> tuple[str, list[str]] | None:
    """What a search tool found: ("7 matches" / "3 files", what to list), from its output's lines
    (each one ``line``) or from Claude Code's objects ({mode, numFiles, filenames, content,
    numMatches}); None before it has run (a pre_tool_use event carries no output)."""
    if output is None or output == "":
        return None
    if isinstance(output, dict) and isinstance(output.get("filenames"), list):
        names = [str(n) for n in output["filenames"] if isinstance(n, str)]
        lines = [ln for ln in str(output.get("content") or "").splitlines() if ln.strip()]
        if output.get("mode") == "count" and isinstance(output.get("numMatches"), int):
            return _found(output["numMatches"], "match"), lines or names
        if lines:  # content mode: the matching lines
            count = output["numLines"] if isinstance(output.get("numLines"), int) else len(lines)
            return _found(count, "match"), lines
        count = output["numFiles"] if isinstance(output.get("numFiles"), int) else len(names)
        return _found(count, "file"), names
    lines = [ln for ln in tool_output_text(output).splitlines() if ln.strip()]
    return _found(len(lines), line), lines


def exit_code(output: Any) -> int | None:
    if isinstance(output, dict):
        for key in ("exit_code", "exitCode", "returncode", "returnCode", "status_code"):
            if isinstance(output.get(key), int) and not isinstance(output.get(key), bool):
                return int(output[key])
    match = _EXIT.search(tool_output_text(output)[:2000])
    return int(match.group(1)) if match else None


def test_summary(text: str) -> str:
    """'3 failed, 10 passed' from a test runner's output (the last summary line wins)."""
    counts: dict[str, str] = {}
    for number, word in _TEST_COUNTS.findall(text[-4000:]):
        key = "failed" if word.lower().startswith(("fail", "tests failed", "test failed")) else word.lower()
        key = "errors" if key.startswith("error") else key
        counts[key] = number
    order = ("failed", "errors", "passed", "skipped", "xfailed")
    return ", ".join(f"{counts[k]} {k}" for k in order if k in counts)


def _bash(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    command = " ".join(str(tool_input.get("command") or tool_input.get("cmd") or "").split())
    text = tool_output_text(output)
    code = exit_code(output)
    outcome = ", ".join(p for p in (f"exit {code}" if code is not None else "", test_summary(text)) if p)
    suffix = f" -> {outcome}" if outcome else ""
    # The outcome matters most: the command gives way so the title stays within 80 characters.
    title = f"Bash: {truncate(command, max(20, TITLE_CHARS - len('Bash: ') - len(suffix)))}{suffix}"
    tail = text.strip()[-_TAIL_CHARS:]
    narrative = f"Ran `{command}`" + (f" ({outcome})" if outcome else "") + (f". Output: {tail}" if tail else "")
    return title, narrative


def _edit(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    path = _path(tool_input)
    edits = tool_input.get("edits")
    if isinstance(edits, list) and edits:
        changed = sum(_lines(e.get("old_string")) for e in edits if isinstance(e, dict))
        title = f"Edit {path}: {_n(len(edits), 'edit')}, {_n(changed, 'line')} replaced"
        return title, f"Edited {path} in {_n(len(edits), 'place')} ({_n(changed, 'line')} replaced)"
    # Claude Code, Gemini CLI: old_string / new_string; Copilot CLI: old_str / new_str
    old = tool_input.get("old_string") or tool_input.get("old_str") or ""
    new = tool_input.get("new_string") or tool_input.get("new_str") or ""
    before, after = _lines(old), _lines(new)
    if not old and not new:
        return f"Edit {path}", f"Edited {path}"
    if not old:
        title = f"Edit {path}: insert {_n(after, 'line')}"
    elif not new:
        title = f"Edit {path}: delete {_n(before, 'line')}"
    elif before == after:
        title = f"Edit {path}: replace {_n(before, 'line')}"
    else:
        title = f"Edit {path}: replace {_n(before, 'line')} with {after}"
    every = " (every occurrence)" if tool_input.get("replace_all") else ""
    narrative = f"Edited {path}{every}: `{_first_line(old)}` -> `{_first_line(new)}`"
    return title, narrative


def _write(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    path, content = _path(tool_input), tool_input.get("content") or ""
    lines = _n(_lines(content), "line")
    return f"Write {path}: {lines}", f"Wrote {path} ({lines}): {_first_line(content, 200)}"


def _patch(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    changes = patched_files(patch_text(tool_input))
    if not changes:
        raise ValueError("not a patch")  # described the generic way
    body = patch_text(tool_input).splitlines()
    added = sum(1 for ln in body if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in body if ln.startswith("-") and not ln.startswith("---"))
    counts = f" (+{added} -{removed})" if added or removed else ""
    what, path = changes[0]
    if len(changes) == 1:
        title = f"Patch {path}: {what}{counts}"
    else:
        title = f"Patch {len(changes)} files: {', '.join(p for _, p in changes)}"
    return title, "Patched " + "; ".join(f"{w} {p}" for w, p in changes) + counts


def _read(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    path = _path(tool_input)
    start, count = tool_input.get("offset"), tool_input.get("limit")
    span = f" lines {start}-{int(start) + int(count)}" if isinstance(start, int) and isinstance(count, int) else ""
    return f"Read {path}{span}", f"Read {path}{span}: {_first_line(tool_output_text(output), 200)}"


def _grep(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    pattern = tool_input.get("pattern") or tool_input.get("regex") or ""  # Cline's search_files: regex
    where = tool_input.get("path") or tool_input.get("glob") or ""
    place = f" in {where}" if where else ""
    title = f"Grep '{truncate(str(pattern), 40)}'{place}"
    result = _search_result(output, "match")
    if result is None:
        return title, f"Searching for `{pattern}`{place}"
    count, found = result
    return f"{title}: {count}", f"Searched for `{pattern}`{place}: {count}: " + "; ".join(found[:5])


def _glob(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    pattern = tool_input.get("pattern") or ""
    result = _search_result(output, "file")
    if result is None:
        return f"Glob {pattern}", f"Listing {pattern}"
    count, found = result
    return f"Glob {pattern}: {count}", f"Listed {pattern}: {count}: " + ", ".join(found[:8])


def _fetch(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    target = tool_input.get("url") or tool_input.get("query") or ""
    return f"Fetch {truncate(str(target), 70)}", f"Fetched {target}: {_first_line(tool_output_text(output), 200)}"


def _task(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    kind = tool_input.get("subagent_type") or "agent"
    what = tool_input.get("description") or tool_input.get("prompt") or ""
    return f"Task ({kind}): {truncate(str(what), 60)}", f"Delegated to {kind}: {what}"


def _todos(tool_input: dict[str, Any], output: Any) -> tuple[str, str]:
    todos = [t for t in tool_input.get("todos") or [] if isinstance(t, dict)]
    done = sum(1 for t in todos if t.get("status") == "completed")
    items = "; ".join(f"[{t.get('status', '?')}] {t.get('content', '')}" for t in todos[:8])
    return f"TodoWrite: {len(todos)} todos, {done} done", f"Todo list: {items}"


# Keys are tool names lower-cased with everything but letters removed ("run_shell_command" ->
# "runshellcommand"): Claude Code's names, and the other agents' names for the same tools.
DESCRIBERS: dict[str, Describer] = {
    "bash": _bash,
    "shell": _bash,
    "exec": _bash,
    "runterminalcmd": _bash,
    "runshellcommand": _bash,  # Gemini CLI
    "executecommand": _bash,  # Cline
    "applypatch": _patch,  # Codex
    "edit": _edit,
    "multiedit": _edit,
    "str_replace": _edit,
    "str_replace_editor": _edit,
    "replace": _edit,  # Gemini CLI
    "write": _write,
    "create": _write,
    "writefile": _write,  # Gemini CLI
    "writetofile": _write,  # Cline
    "read": _read,
    "view": _read,
    "readfile": _read,  # Gemini CLI, Cline
    "grep": _grep,
    "search": _grep,
    "searchfilecontent": _grep,  # Gemini CLI
    "searchfiles": _grep,  # Cline
    "glob": _glob,
    "webfetch": _fetch,
    "websearch": _fetch,
    "task": _task,
    "agent": _task,
    "todowrite": _todos,
}


def _generic(tool_name: str, tool_input: Any, output: Any) -> tuple[str, str]:
    if isinstance(tool_input, dict):
        telling = next((v for v in tool_input.values() if isinstance(v, str) and v.strip()), "")
    else:
        telling = stringify(tool_input)
    title = f"{tool_name}: {truncate(' '.join(telling.split()), 60)}" if telling else tool_name
    narrative = f"{tool_name} {stringify(tool_input)}".strip()
    result = tool_output_text(output).strip()
    return title, narrative + (f" -> {result}" if result else "")


def describe(tool_name: str, tool_input: Any, output: Any, *, failed: bool = False) -> tuple[str, str]:
    """(title, narrative) saying what a tool call did."""
    key = re.sub(r"[^a-z]", "", tool_name.rsplit("__", 1)[-1].lower())
    describer = DESCRIBERS.get(key)
    try:
        title, narrative = (
            describer(tool_input, output)
            if describer and isinstance(tool_input, dict)
            else _generic(tool_name, tool_input, output)
        )
    except (TypeError, ValueError, AttributeError):  # an input of an unexpected shape
        title, narrative = _generic(tool_name, tool_input, output)
    if failed and "-> exit" not in title:
        reason = _first_line(tool_output_text(output), 80)
        title = f"{title} -> failed" + (f": {reason}" if reason else "")
    if failed:  # the error is what the next session needs to recognise; it ends the narrative
        error = " ".join(tool_output_text(output).split())[-300:]
        if not error:
            narrative = f"{narrative} | failed"
        elif not " ".join(narrative.split()).endswith(error):  # a command's output tail may hold it already
            narrative = f"{narrative} | {error}"
    return title, narrative
