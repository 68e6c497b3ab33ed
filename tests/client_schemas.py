"""Structural checks of each agent's config files, written from the formats in docs/clients.md
(each agent's own documentation). JSON files are checked with JSON Schema; TOML and YAML files are
parsed and checked field by field."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

STR = {"type": "string", "minLength": 1}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
STDIO = {"type": "object", "required": ["command", "args", "env"],
         "properties": {"command": STR, "args": {"type": "array"}, "env": STR_MAP}}


def nested_hooks(events: list[str], handler: dict[str, Any]) -> dict[str, Any]:
    group = {"type": "object", "required": ["hooks"], "properties": {
        "matcher": {"type": "string"}, "hooks": {"type": "array", "minItems": 1, "items": handler}}}
    return {"type": "object", "propertyNames": {"enum": events},
            "additionalProperties": {"type": "array", "items": group}}


COMMAND = {"type": "object", "required": ["type", "command"],
           "properties": {"type": {"const": "command"}, "command": STR, "timeout": {"type": "number"}}}
HTTP = {"type": "object", "required": ["type", "url"], "properties": {
    "type": {"const": "http"}, "url": {"type": "string", "pattern": "^http://"}, "headers": STR_MAP,
    "allowedEnvVars": {"type": "array", "items": STR}, "timeout": {"type": "number"}}}
CLAUDE_EVENTS = ["SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "PostToolUseFailure",
                 "Notification", "SubagentStart", "SubagentStop", "Stop", "PreCompact", "PostCompact", "SessionEnd"]
# Claude Code 2.1+: "async": true runs a command hook in the background ("Run hooks in the background").
CLAUDE_COMMAND = {**COMMAND, "properties": {**COMMAND["properties"], "async": {"type": "boolean"}}}
CLAUDE_SETTINGS = {"type": "object", "properties": {
    "hooks": nested_hooks(CLAUDE_EVENTS, {"oneOf": [CLAUDE_COMMAND, HTTP]}),
    "env": STR_MAP}}
# Claude Code: "SessionStart ... Only type: command and type: mcp_tool hooks are supported."
CLAUDE_SESSION_START = {"type": "array", "items": {"properties": {"hooks": {"items": COMMAND}}}}
CODEX_EVENTS = ["SessionStart", "PreToolUse", "PermissionRequest", "PostToolUse", "PreCompact", "PostCompact",
                "UserPromptSubmit", "SubagentStart", "SubagentStop", "Stop", "SessionEnd"]
GEMINI_EVENTS = ["SessionStart", "SessionEnd", "BeforeAgent", "AfterAgent", "BeforeModel", "AfterModel",
                 "BeforeToolSelection", "BeforeTool", "AfterTool", "PreCompress", "Notification"]
GEMINI_HANDLER = {**COMMAND, "properties": {**COMMAND["properties"], "name": STR, "timeout": {"type": "integer",
                                                                                              "minimum": 1000}}}
CURSOR_EVENTS = ["sessionStart", "sessionEnd", "preToolUse", "postToolUse", "postToolUseFailure", "subagentStart",
                 "subagentStop", "beforeShellExecution", "afterShellExecution", "beforeMCPExecution",
                 "afterMCPExecution", "beforeReadFile", "afterFileEdit", "beforeSubmitPrompt", "preCompact", "stop",
                 "afterAgentResponse", "afterAgentThought"]
CURSOR_HOOKS = {"type": "object", "required": ["version", "hooks"], "properties": {
    "version": {"const": 1}, "hooks": {"type": "object", "propertyNames": {"enum": CURSOR_EVENTS},
                                       "additionalProperties": {"type": "array", "items": {
                                           "type": "object", "required": ["command"],
                                           "properties": {"command": STR, "timeout": {"type": "number"}}}}}}}
COPILOT_EVENTS = ["sessionStart", "sessionEnd", "userPromptSubmitted", "preToolUse", "postToolUse",
                  "postToolUseFailure", "permissionRequest", "agentStop", "subagentStart", "subagentStop",
                  "errorOccurred", "preCompact", "notification"]
COPILOT_HOOKS = {"type": "object", "required": ["version", "hooks"], "properties": {
    "version": {"const": 1}, "hooks": {"type": "object", "propertyNames": {"enum": COPILOT_EVENTS},
                                       "additionalProperties": {"type": "array", "items": {
                                           "type": "object", "required": ["type", "bash"], "properties": {
                                               "type": {"const": "command"}, "bash": STR,
                                               "timeoutSec": {"type": "number"}}}}}}}


def mcp_servers(key: str, server: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [key], "properties": {
        key: {"type": "object", "required": ["agentmemory"], "properties": {"agentmemory": server}}}}


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def check(path: Path, schema: dict[str, Any]) -> Any:
    doc = load_json(path)
    jsonschema.validate(doc, schema)
    return doc


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def validate(client: str, home: Path, project: Path) -> list[Path]:
    """Check the files ``connect <client>`` wrote; returns them."""
    return VALIDATORS[client](home, project)


def _claude(home: Path, project: Path) -> list[Path]:
    settings = home / ".claude" / "settings.json"
    doc = check(settings, CLAUDE_SETTINGS)
    jsonschema.validate(doc["hooks"]["SessionStart"], CLAUDE_SESSION_START)
    handler = doc["hooks"]["PostToolUse"][-1]["hooks"][0]
    if handler["type"] == "http":  # the default; `--durable-hooks` runs the command (the schema checks it)
        assert handler["headers"]["Authorization"] == "Bearer $AGENTMEMORY_SECRET"
        assert handler["allowedEnvVars"] == ["AGENTMEMORY_SECRET"]
        assert handler["url"].endswith("/agentmemory/hooks/claude-code")
    assert doc["env"]["AGENTMEMORY_SECRET"] and mode(settings) == 0o600  # the token only in a 0600 file
    check(home / ".claude.json", mcp_servers("mcpServers", {**STDIO, "properties": {**STDIO["properties"],
                                                                                    "type": {"const": "stdio"}}}))
    return [settings, home / ".claude.json"]


def _codex(home: Path, project: Path) -> list[Path]:
    check(home / ".codex" / "hooks.json", {"type": "object", "properties": {"hooks": nested_hooks(CODEX_EVENTS, COMMAND)}})
    # Codex caps SessionEnd hooks at 3 s (PR openai/codex#33895) and warns at every start above that
    session_end = load_json(home / ".codex" / "hooks.json")["hooks"].get("SessionEnd", [])
    assert all(h.get("timeout", 1) <= 3 for group in session_end for h in group["hooks"]), session_end
    config = tomllib.loads((home / ".codex" / "config.toml").read_text())
    server = config["mcp_servers"]["agentmemory"]
    assert server["command"].endswith("agentmemory-mcp") and server["args"] == []
    assert server["env"]["AGENTMEMORY_URL"].startswith("http://127.0.0.1:")
    return [home / ".codex" / "hooks.json", home / ".codex" / "config.toml"]


def _cursor(home: Path, project: Path) -> list[Path]:
    check(home / ".cursor" / "hooks.json", CURSOR_HOOKS)
    check(home / ".cursor" / "mcp.json", mcp_servers("mcpServers", STDIO))
    return [home / ".cursor" / "hooks.json", home / ".cursor" / "mcp.json"]


def _gemini_hooks(path: Path) -> Any:
    return check(path, {"type": "object", "properties": {"hooks": nested_hooks(GEMINI_EVENTS, GEMINI_HANDLER)}})


def _antigravity(home: Path, project: Path) -> list[Path]:
    _gemini_hooks(home / ".gemini" / "settings.json")
    check(home / ".gemini" / "config" / "mcp_config.json", mcp_servers("mcpServers", STDIO))
    return [home / ".gemini" / "settings.json", home / ".gemini" / "config" / "mcp_config.json"]


def _gemini(home: Path, project: Path) -> list[Path]:
    doc = _gemini_hooks(home / ".gemini" / "settings.json")
    jsonschema.validate(doc, mcp_servers("mcpServers", STDIO))
    return [home / ".gemini" / "settings.json"]


def _opencode(home: Path, project: Path) -> list[Path]:
    plugin = home / ".config" / "opencode" / "plugins" / "agentmemory.js"
    text = plugin.read_text()
    assert "export const AgentMemory = async" in text and "/agentmemory/hooks/opencode" in text
    local = {"type": "object", "required": ["type", "command"], "properties": {
        "type": {"const": "local"}, "command": {"type": "array", "items": STR, "minItems": 1},
        "environment": STR_MAP, "enabled": {"type": "boolean"}}}
    check(home / ".config" / "opencode" / "opencode.json", mcp_servers("mcp", local))
    return [plugin, home / ".config" / "opencode" / "opencode.json"]


def _cline(home: Path, project: Path) -> list[Path]:
    files = sorted((home / "Documents" / "Cline" / "Hooks").iterdir())
    assert [f.name for f in files] == sorted(["TaskStart", "TaskResume", "UserPromptSubmit", "PostToolUse",
                                              "PreCompact", "TaskCancel", "TaskComplete"])
    for f in files:
        assert f.read_text().startswith("#!/bin/sh\n") and mode(f) & 0o100
    return files


def _copilot(home: Path, project: Path) -> list[Path]:
    check(home / ".copilot" / "hooks" / "agentmemory.json", COPILOT_HOOKS)
    server = {**STDIO, "properties": {**STDIO["properties"], "type": {"enum": ["stdio", "local"]},
                                      "tools": {"type": "array"}}}
    check(home / ".copilot" / "mcp-config.json", mcp_servers("mcpServers", server))
    return [home / ".copilot" / "hooks" / "agentmemory.json", home / ".copilot" / "mcp-config.json"]


def _continue(home: Path, project: Path) -> list[Path]:
    path = project / ".continue" / "mcpServers" / "agentmemory.yaml"
    block = yaml.safe_load(path.read_text())
    assert block["schema"] == "v1" and block["name"] and block["version"]
    (server,) = block["mcpServers"]
    assert server["name"] == "agentmemory" and server["command"].endswith("agentmemory-mcp")
    return [path]


def _zed(home: Path, project: Path) -> list[Path]:
    server = {**STDIO, "properties": {**STDIO["properties"], "source": {"const": "custom"}}}
    check(home / ".config" / "zed" / "settings.json", mcp_servers("context_servers", server))
    return [home / ".config" / "zed" / "settings.json"]


def _goose(home: Path, project: Path) -> list[Path]:
    path = home / ".config" / "goose" / "config.yaml"
    ext = yaml.safe_load(path.read_text())["extensions"]["agentmemory"]
    assert ext["type"] == "stdio" and ext["cmd"].endswith("agentmemory-mcp") and ext["enabled"] is True
    assert ext["args"] == [] and ext["envs"]["AGENTMEMORY_URL"].startswith("http://")
    return [path]


def _windsurf(home: Path, project: Path) -> list[Path]:
    check(home / ".codeium" / "windsurf" / "mcp_config.json", mcp_servers("mcpServers", STDIO))
    return [home / ".codeium" / "windsurf" / "mcp_config.json"]


VALIDATORS = {"claude-code": _claude, "codex": _codex, "cursor": _cursor, "antigravity": _antigravity,
              "gemini": _gemini, "opencode": _opencode, "cline": _cline, "copilot": _copilot,
              "continue": _continue, "zed": _zed, "goose": _goose, "windsurf": _windsurf}
