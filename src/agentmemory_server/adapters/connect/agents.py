"""The config each agent with hooks gets: Claude Code, Codex CLI, Cursor, Gemini CLI / Antigravity
CLI and Copilot CLI (formats checked against each agent's documentation: docs/clients.md).

Claude Code posts its hooks straight to the server (``http`` hooks, the token from
``$AGENTMEMORY_SECRET`` through ``allowedEnvVars``), except SessionStart, which accepts only
``command`` hooks. The other agents run ``agentmemory hook <client>``, which reads the token
itself, so their config never holds it. Every agent also gets the MCP server, as the stdio
``agentmemory-mcp`` (it reads the token itself) or, with ``--mcp http``, the Streamable HTTP
endpoint ``/mcp``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentmemory_server.adapters.connect import hookconfig, jsonfile
from agentmemory_server.adapters.connect.core import Edit, Options, ScopeError
from agentmemory_server.adapters.connect.jsonfile import Doc
from agentmemory_server.adapters.connect.textblocks import toml_block

TOKEN_VAR = "AGENTMEMORY_SECRET"
HOOK_TIMEOUT = 15  # seconds: SessionStart compiles the context block
# SessionEnd's default budget in Claude Code is 1.5 s; a hook's timeout raises it (session-end
# summaries run on the request).
SESSION_END_TIMEOUT = 10


def root(o: Options, user_dir: str, project_dir: str) -> Path:
    return o.home / user_dir if o.scope == "user" else o.cwd / project_dir


def bearer(token: str | None) -> dict[str, str]:
    """The header of an MCP entry that holds the token itself (none without a token: auth off)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def stdio_server(o: Options, **extra: Any) -> dict[str, Any]:
    return {**extra, "command": o.mcp_command, "args": [], "env": o.url_env()}


# -- Claude Code -------------------------------------------------------------------------------------------

CLAUDE_HTTP_EVENTS = (
    "UserPromptSubmit",
    "PostToolUse",
    "PostToolUseFailure",
    "Notification",
    "SubagentStop",
    "Stop",
    "PreCompact",
    "SessionEnd",
)


# With durable hooks, the events whose answer the agent does not read run their command in the
# background (Claude Code's ``async``, 2.1+), so the process start-up never holds up the agent. A
# prompt waits for the memories it is answered with, and the session end for its own delivery.
CLAUDE_BACKGROUND_EVENTS = ("PostToolUse", "PostToolUseFailure", "Notification", "SubagentStop", "Stop", "PreCompact")


def claude_hook_groups(o: Options) -> dict[str, dict[str, Any]]:
    """SessionStart runs the hook command (Claude Code takes no ``http`` hook for it); the other
    events post to the server directly, or with ``durable_hooks`` run the command too, which keeps
    an event on disk when no server answers and sends it later (about 0.3 s an event: a process)."""
    command = {"type": "command", "command": o.hook("claude-code")}

    def durable(event: str) -> dict[str, Any]:
        return {**command, "async": True} if event in CLAUDE_BACKGROUND_EVENTS else command

    http = {
        "type": "http",
        "url": f"{o.url}/agentmemory/hooks/claude-code",
        "headers": {"Authorization": f"Bearer ${TOKEN_VAR}"},
        "allowedEnvVars": [TOKEN_VAR],
        "timeout": HOOK_TIMEOUT,
    }
    groups = {"SessionStart": {"hooks": [{**command, "timeout": HOOK_TIMEOUT}]}}
    for event in CLAUDE_HTTP_EVENTS:
        timeout = SESSION_END_TIMEOUT if event == "SessionEnd" else HOOK_TIMEOUT
        groups[event] = {"hooks": [{**(durable(event) if o.durable_hooks else http), "timeout": timeout}]}
    return groups


def token_env(token: str) -> tuple[Any, Any]:
    """add/remove ``env.AGENTMEMORY_SECRET`` (Claude Code applies ``env`` to the session, so the http
    hooks' ``$AGENTMEMORY_SECRET`` resolves without the user exporting it)."""

    def add(doc: Doc) -> None:
        env = doc.get("env") if isinstance(doc.get("env"), dict) else None
        if env is None:
            env = doc["env"] = {}
        env[TOKEN_VAR] = token

    def remove(doc: Doc) -> None:
        env = doc.get("env")
        if isinstance(env, dict) and env.get(TOKEN_VAR) == token:
            env.pop(TOKEN_VAR)
            jsonfile.prune(doc, "env")

    return add, remove


def both(*pairs: tuple[Any, Any]) -> tuple[Any, Any]:
    return (lambda doc: [add(doc) for add, _ in pairs], lambda doc: [rm(doc) for _, rm in pairs])


def claude_code(o: Options) -> list[Edit]:
    base = root(o, ".claude", ".claude")
    hooks = hookconfig.nested(claude_hook_groups(o))
    edits = []
    if o.token and o.scope == "user":
        add, remove = both(hooks, token_env(o.token))
        edits.append(jsonfile.edit(base / "settings.json", add, remove, secret=True))
    else:
        edits.append(jsonfile.edit(base / "settings.json", *hooks))
        if o.token:  # project settings are committed: the token goes to the local, ignored file
            edits.append(jsonfile.edit(base / "settings.local.json", *token_env(o.token), secret=True))
    if o.mcp != "none":
        server = (
            {"type": "http", "url": f"{o.url}/mcp", "headers": {"Authorization": f"Bearer ${{{TOKEN_VAR}:-}}"}}
            if o.mcp == "http"
            else stdio_server(o, type="stdio")
        )
        target = o.home / ".claude.json" if o.scope == "user" else o.cwd / ".mcp.json"
        edits.append(jsonfile.edit(target, *jsonfile.set_entry("mcpServers", "agentmemory", server)))
    return edits


# -- Codex CLI ---------------------------------------------------------------------------------------------

CODEX_EVENTS = ("SessionStart", "UserPromptSubmit", "PostToolUse", "PreCompact", "SubagentStop", "Stop", "SessionEnd")
# Codex runs SessionEnd during teardown and caps its timeout at 3 s (warning at every start when a
# hook asks for more); the server ends a session well within that. The hook command gives up on the
# server a second earlier, so a server that does not answer in time leaves the event kept on disk
# (sent later) instead of killed with the process.
CODEX_SESSION_END_TIMEOUT = 3
CODEX_SESSION_END_WAIT = "2"


def toml_string(value: str) -> str:
    return json.dumps(value)  # a TOML basic string uses JSON's escapes


def codex(o: Options) -> list[Edit]:
    base = root(o, ".codex", ".codex")

    def handler(event: str) -> dict[str, Any]:
        if event == "SessionEnd":
            command = o.hook("codex", "--timeout", CODEX_SESSION_END_WAIT)
            return {"type": "command", "command": command, "timeout": CODEX_SESSION_END_TIMEOUT}
        return {"type": "command", "command": o.hook("codex"), "timeout": HOOK_TIMEOUT}

    groups = {event: {"hooks": [handler(event)]} for event in CODEX_EVENTS}
    edits = [jsonfile.edit(base / "hooks.json", *hookconfig.nested(groups))]
    if o.mcp == "http":
        body = f'[mcp_servers.agentmemory]\nurl = {toml_string(o.url + "/mcp")}\nbearer_token_env_var = "{TOKEN_VAR}"\n'
    else:
        body = f"[mcp_servers.agentmemory]\ncommand = {toml_string(o.mcp_command)}\nargs = []\n"
        if o.pin_url:
            body += f"\n[mcp_servers.agentmemory.env]\nAGENTMEMORY_URL = {toml_string(o.url)}\n"
    if o.mcp != "none":
        edits.append(toml_block(base / "config.toml", "mcp_servers.agentmemory", body))
    return edits


# -- Cursor ------------------------------------------------------------------------------------------------

CURSOR_EVENTS = (
    "sessionStart",
    "beforeSubmitPrompt",
    "postToolUse",
    "postToolUseFailure",
    "subagentStop",
    "preCompact",
    "stop",
    "sessionEnd",
)


def cursor(o: Options) -> list[Edit]:
    base = root(o, ".cursor", ".cursor")
    handler = {"command": o.hook("cursor"), "timeout": HOOK_TIMEOUT}
    hooks = hookconfig.flat(dict.fromkeys(CURSOR_EVENTS, handler), extra={"version": 1})
    edits = [jsonfile.edit(base / "hooks.json", *hooks)]
    if o.mcp == "http" and o.scope == "project":
        raise ScopeError(
            "Cursor documents no variable expansion in mcp.json, so --mcp http writes the token into it, "
            "and a project's .cursor/mcp.json is committed: use --mcp stdio (the default) or --scope user"
        )
    if o.mcp == "http":  # Cursor documents no variable expansion for headers: the token is written, 0600
        server: dict[str, Any] = {"url": f"{o.url}/mcp", "headers": bearer(o.literal_token)}
        edits.append(
            jsonfile.edit(base / "mcp.json", *jsonfile.set_entry("mcpServers", "agentmemory", server), secret=True)
        )
    elif o.mcp == "stdio":
        edits.append(
            jsonfile.edit(base / "mcp.json", *jsonfile.set_entry("mcpServers", "agentmemory", stdio_server(o)))
        )
    return edits


# -- Gemini CLI and Antigravity CLI ------------------------------------------------------------------------

GEMINI_EVENTS = ("SessionStart", "BeforeAgent", "AfterTool", "AfterAgent", "PreCompress", "Notification", "SessionEnd")


def gemini_hooks(o: Options, client: str) -> tuple[Any, Any]:
    handler = {"name": "agentmemory", "type": "command", "command": o.hook(client), "timeout": HOOK_TIMEOUT * 1000}
    return hookconfig.nested({e: {"hooks": [handler]} for e in GEMINI_EVENTS})  # timeout in ms


def gemini(o: Options) -> list[Edit]:
    path = root(o, ".gemini", ".gemini") / "settings.json"
    pairs = [gemini_hooks(o, "gemini")]
    if o.mcp == "stdio":
        pairs.append(jsonfile.set_entry("mcpServers", "agentmemory", stdio_server(o)))
    elif o.mcp == "http":
        server = {"httpUrl": f"{o.url}/mcp", "headers": {"Authorization": f"Bearer ${TOKEN_VAR}"}}
        pairs.append(jsonfile.set_entry("mcpServers", "agentmemory", server))
    return [jsonfile.edit(path, *both(*pairs))]


def antigravity(o: Options) -> list[Edit]:
    edits = [jsonfile.edit(root(o, ".gemini", ".gemini") / "settings.json", *gemini_hooks(o, "antigravity"))]
    if o.mcp == "none" or o.scope == "project":  # Antigravity has one MCP config for every workspace
        return edits
    if o.mcp == "http":  # no variable expansion in mcp_config.json: the token is written, 0600
        server: dict[str, Any] = {"serverUrl": f"{o.url}/mcp", "headers": bearer(o.literal_token)}
        secret = True
    else:
        server, secret = stdio_server(o), False
    target = o.home / ".gemini" / "config" / "mcp_config.json"
    edits.append(jsonfile.edit(target, *jsonfile.set_entry("mcpServers", "agentmemory", server), secret=secret))
    return edits


# -- GitHub Copilot CLI ------------------------------------------------------------------------------------

COPILOT_EVENTS = (
    "sessionStart",
    "userPromptSubmitted",
    "postToolUse",
    "postToolUseFailure",
    "agentStop",
    "subagentStop",
    "preCompact",
    "errorOccurred",
    "sessionEnd",
)


def copilot(o: Options) -> list[Edit]:
    hooks_dir = o.home / ".copilot" / "hooks" if o.scope == "user" else o.cwd / ".github" / "hooks"
    handlers = {
        e: {"type": "command", "bash": o.hook("copilot", "--event", e), "timeoutSec": HOOK_TIMEOUT}
        for e in COPILOT_EVENTS
    }
    edits = [jsonfile.edit(hooks_dir / "agentmemory.json", *hookconfig.flat(handlers, extra={"version": 1}))]
    if o.mcp != "none":
        if o.mcp == "http":
            server: dict[str, Any] = {
                "type": "http",
                "url": f"{o.url}/mcp",
                "tools": ["*"],
                # ${VAR}: the form every Copilot CLI example for this file uses (headers included)
                "headers": {"Authorization": f"Bearer ${{{TOKEN_VAR}}}"},
            }
        else:
            server = stdio_server(o, type="stdio", tools=["*"])
        target = o.home / ".copilot" / "mcp-config.json" if o.scope == "user" else o.cwd / ".github" / "mcp.json"
        edits.append(jsonfile.edit(target, *jsonfile.set_entry("mcpServers", "agentmemory", server)))
    return edits
