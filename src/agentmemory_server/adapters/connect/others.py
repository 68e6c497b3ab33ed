"""The config of OpenCode (a plugin file), Cline (one hook script per event) and the agents that
take only an MCP server: Continue, Zed, Goose and Windsurf (formats: docs/clients.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentmemory_server.adapters.connect import jsonfile
from agentmemory_server.adapters.connect.agents import root, stdio_server
from agentmemory_server.adapters.connect.core import Edit, Options, ScopeError
from agentmemory_server.adapters.connect.textblocks import owned, yaml_entry
from agentmemory_server.capture.clients.opencode import EVENTS as OPENCODE_EVENTS


def user_only(o: Options, client: str) -> None:
    if o.scope != "user":
        raise ScopeError(f"{client} has no per-project config; connect it with --scope user")


# -- OpenCode: a plugin that forwards events --------------------------------------------------------------

OPENCODE_PLUGIN = """// OpenCode plugin written by agentmemory connect; agentmemory disconnect removes it.
// Forwards session, prompt and tool events to the agentmemory server (fire and forget).
import { readFileSync } from "node:fs";

const URL = __URL__;
const SECRET_FILE = __SECRET_FILE__;
// The bus events the server maps. OpenCode hands the event hook every bus event (message and part
// updates, a delta per streamed chunk, status changes): forwarded, each became an observation.
const SESSION_EVENTS = new Set(__SESSION_EVENTS__);

function token() {
  if (process.env.AGENTMEMORY_SECRET) return process.env.AGENTMEMORY_SECRET;
  try { return readFileSync(SECRET_FILE, "utf8").trim(); } catch { return ""; }
}

function send(body) {
  const headers = { "Content-Type": "application/json" };
  const secret = token();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  fetch(`${URL}/agentmemory/hooks/opencode`, {
    method: "POST", headers, body: JSON.stringify(body), signal: AbortSignal.timeout(5000),
  }).catch(() => {});
}

export const AgentMemory = async ({ directory }) => {
  const args = new Map();
  return {
    event: async ({ event }) => {
      if (!SESSION_EVENTS.has(event.type)) return;
      const info = event.properties?.info ?? {};
      const sessionID = event.properties?.sessionID ?? info.id;
      if (!sessionID) return;
      send({ hook_event_name: event.type, session_id: sessionID, cwd: info.directory ?? directory,
             title: info.title, error: event.properties?.error });
    },
    "chat.message": async (input, output) => {
      const text = (output.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("\\n");
      send({ hook_event_name: "chat.message", session_id: input.sessionID, cwd: directory,
             prompt: text, message_id: output.message?.id });
    },
    "tool.execute.before": async (input, output) => { args.set(input.callID, output.args); },
    "tool.execute.after": async (input, output) => {
      send({ hook_event_name: "tool.execute.after", session_id: input.sessionID, cwd: directory,
             tool_name: input.tool, call_id: input.callID, tool_input: args.get(input.callID),
             tool_response: output.output, title: output.title });
      args.delete(input.callID);
    },
  };
};
"""


def opencode_session_events() -> list[str]:
    """The OpenCode bus events the plugin forwards: the ``session.*`` ones the server maps (the
    others it maps, ``chat.message`` and ``tool.execute.after``, are hooks of their own)."""
    return sorted(name for name in OPENCODE_EVENTS if name.startswith("session."))


# OpenCode's ``timeout`` of a local MCP server (ms) bounds its start as well as each request, and
# defaults to 5 s: the stdio shim starts Python, which on a loaded machine takes longer, and the
# server was then left out of the run (only its log says so). Above the shim's own wait for a
# call (AGENTMEMORY_MCP_TIMEOUT, 120 s by default), so a slow call ends with the shim's error.
OPENCODE_MCP_TIMEOUT_MS = 130_000


def opencode(o: Options) -> list[Edit]:
    base = o.home / ".config" / "opencode" if o.scope == "user" else o.cwd / ".opencode"
    secret_file = str(o.data_dir / "secret")
    plugin = (
        OPENCODE_PLUGIN.replace("__URL__", json.dumps(o.url))
        .replace("__SECRET_FILE__", json.dumps(secret_file))
        .replace("__SESSION_EVENTS__", json.dumps(opencode_session_events()))
    )
    edits = [owned(base / "plugins" / "agentmemory.js", plugin)]
    if o.mcp == "stdio":
        server = {
            "type": "local",
            "command": [o.mcp_command],
            "environment": {"AGENTMEMORY_URL": o.url},
            "enabled": True,
            "timeout": OPENCODE_MCP_TIMEOUT_MS,
        }
        config = base / "opencode.json" if o.scope == "user" else o.cwd / "opencode.json"
        edits.append(jsonfile.edit(config, *jsonfile.set_entry("mcp", "agentmemory", server)))
    return edits


# -- Cline: one executable per hook type ---------------------------------------------------------------------

CLINE_EVENTS = (
    "TaskStart",
    "TaskResume",
    "UserPromptSubmit",
    "PostToolUse",
    "PreCompact",
    "TaskCancel",
    "TaskComplete",
)


def cline_script(o: Options) -> str:
    return (
        "#!/bin/sh\n"
        "# Cline hook written by agentmemory connect; agentmemory disconnect removes it.\n"
        f"exec {o.hook('cline')}\n"
    )


def cline(o: Options) -> list[Edit]:
    base = o.home / "Documents" / "Cline" / "Hooks" if o.scope == "user" else o.cwd / ".clinerules" / "hooks"
    return [owned(base / name, cline_script(o), mode=0o755) for name in CLINE_EVENTS]


# -- MCP only -----------------------------------------------------------------------------------------------


def continue_dev(o: Options) -> list[Edit]:
    if o.scope != "project":
        raise ScopeError("Continue reads MCP server blocks from <workspace>/.continue/mcpServers/; use --scope project")
    block = (
        "# MCP server block written by agentmemory connect; agentmemory disconnect removes it.\n"
        "name: agentmemory\nversion: 0.0.1\nschema: v1\nmcpServers:\n"
        f"  - name: agentmemory\n    command: {json.dumps(o.mcp_command)}\n    args: []\n"
        + (f"    env:\n      AGENTMEMORY_URL: {json.dumps(o.url)}\n" if o.pin_url else "")
    )
    return [owned(o.cwd / ".continue" / "mcpServers" / "agentmemory.yaml", block)]


def zed(o: Options) -> list[Edit]:
    path = root(o, ".config/zed", ".zed") / "settings.json"
    server = stdio_server(o, source="custom")
    return [jsonfile.edit(path, *jsonfile.set_entry("context_servers", "agentmemory", server))]


def goose(o: Options) -> list[Edit]:
    user_only(o, "Goose")
    lines = [
        "name: agentmemory",
        "type: stdio",
        f"cmd: {json.dumps(o.mcp_command)}",
        "args: []",
        "enabled: true",
        "envs:",
        f"  AGENTMEMORY_URL: {json.dumps(o.url)}",
        "timeout: 300",
        "bundled: false",
        'description: "agentmemory: memories, sessions and search"',
    ]
    return [yaml_entry(o.home / ".config" / "goose" / "config.yaml", "extensions", "agentmemory", lines)]


def windsurf(o: Options) -> list[Edit]:
    user_only(o, "Windsurf")
    server: dict[str, Any] = stdio_server(o)
    if o.mcp == "http":  # Windsurf expands ${env:VAR} in headers
        server = {"serverUrl": f"{o.url}/mcp", "headers": {"Authorization": "Bearer ${env:AGENTMEMORY_SECRET}"}}
    path: Path = o.home / ".codeium" / "windsurf" / "mcp_config.json"
    return [jsonfile.edit(path, *jsonfile.set_entry("mcpServers", "agentmemory", server))]
