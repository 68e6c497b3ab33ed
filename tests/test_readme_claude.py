"""README's "Use it with Claude Code", followed literally in a temporary HOME.

The commands are parsed from the section's code blocks and run in order. Two are stood in for:
``pip install .`` (the package is already installed here: the test checks the console scripts
exist) and ``agentmemory service install`` (the test must not touch the machine's systemd: it
runs what the unit runs, ``agentmemory serve``, on a free port). Then Claude Code is played from
the settings ``connect`` wrote: the SessionStart command hook gets the event on stdin, the http
hooks are posted to their URL with their headers, ``$VAR`` resolved the way Claude Code does
(only names in ``allowedEnvVars``, from the environment plus the settings' ``env``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from conftest import LiveServer, clean_environ

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent


def section_commands() -> list[str]:
    text = README.read_text()
    body = text.split("## Use it with Claude Code\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def resolve_headers(headers: dict[str, str], allowed: list[str], env: dict[str, str]) -> dict[str, str]:
    """Claude Code's header interpolation: $VAR / ${VAR} from allowedEnvVars, others empty."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name, "") if name in allowed else ""

    return {k: re.sub(r"\$\{(\w+)\}|\$(\w+)", value, v) for k, v in headers.items()}


class ClaudeCode:
    """Runs a settings.json's hooks the way Claude Code does."""

    def __init__(self, home: Path, project: Path):
        self.settings = json.loads((home / ".claude" / "settings.json").read_text())
        self.env = {**clean_environ(), "HOME": str(home), **self.settings.get("env", {})}
        self.project = project

    def fire(self, event: str, **fields: Any) -> dict[str, Any]:
        payload = {"session_id": fields.pop("session"), "transcript_path": "/t.jsonl", "cwd": str(self.project),
                   "hook_event_name": event, **fields}
        answers = [self._run(handler, payload) for group in self.settings["hooks"][event]
                   for handler in group["hooks"]]
        return next((a for a in answers if a), {})

    def _run(self, handler: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        if handler["type"] == "command":
            done = subprocess.run(["sh", "-c", handler["command"]], input=json.dumps(payload), capture_output=True,
                                  text=True, timeout=handler.get("timeout", 600), env=self.env, cwd=self.project)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout) if done.stdout.strip() else {}
        headers = resolve_headers(handler.get("headers", {}), handler.get("allowedEnvVars", []), self.env)
        response = requests.post(handler["url"], json=payload, headers=headers, timeout=handler.get("timeout", 30))
        assert response.status_code == 200, response.text  # non-2xx would be a non-blocking error
        return response.json() if response.content else {}


def test_readme_claude_code_steps(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "home" / "shop"
    project.mkdir(parents=True)
    server = LiveServer(tmp_path, {"HOME": str(home), "AGENTMEMORY_AUTH": "on",
                                   "AGENTMEMORY_DATA_DIR": str(home / ".agentmemory")}, [], start=False)
    env = {**clean_environ(), "HOME": str(home), "PORT": str(server.port)}
    env.pop("AGENTMEMORY_AUTH")  # the README's user has auth on (the default)
    commands = section_commands()
    assert commands == ["pip install .", "agentmemory service install", "agentmemory connect claude-code --yes"]
    try:
        for command in commands:
            if command == "pip install .":
                assert (BIN / "agentmemory").exists() and (BIN / "agentmemory-mcp").exists()
            elif command == "agentmemory service install":
                server.start()
            else:
                argv = shlex.split(command)
                done = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
                                      env=env, cwd=project)
                assert done.returncode == 0, done.stderr
        claude = ClaudeCode(home, project)

        first = claude.fire("SessionStart", session="first", source="startup")
        assert first == {}  # nothing remembered yet
        claude.fire("PostToolUse", session="first", tool_name="Edit", tool_use_id="toolu_1",
                    tool_input={"file_path": str(project / "tax.py"), "old_string": "0.07", "new_string": "0.075"},
                    tool_response={"filePath": str(project / "tax.py"), "success": True})
        claude.fire("SessionEnd", session="first", reason="prompt_input_exit")

        second = claude.fire("SessionStart", session="second", source="startup")
        context = second["hookSpecificOutput"]
        assert context["hookEventName"] == "SessionStart" and "tax.py" in context["additionalContext"]
        token = (home / ".agentmemory" / "secret").read_text().strip()
        stored = requests.get(server.api("/observations"), params={"sessionId": "first"},
                              headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["observations"]
        assert [o["hookType"] for o in stored] == ["session_start", "post_tool_use", "session_end"]
        assert stored[1]["files"] == [str(project / "tax.py")]
    finally:
        server.stop()
