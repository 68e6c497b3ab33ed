"""``agentmemory connect`` for every client in a temporary HOME: the files it writes match each
agent's documented format (tests/client_schemas.py), the user's own settings survive, a second run
changes nothing, the hook commands it configures reach a real server, and ``disconnect`` restores
every file byte for byte (and removes the ones it created)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

import client_schemas
from conftest import LiveServer, clean_environ, free_port, wait_for

SECRET = "connect-test-secret-0123456789"
FIXTURES = Path(__file__).parent / "fixtures" / "clients"
CLI = [sys.executable, "-m", "agentmemory_server.adapters.entry"]
SCOPES = {"continue": "project"}
EXISTING = {  # the user's own config before connect
    ".claude/settings.json": '{\n    "model": "opus",\n    "hooks": {"PostToolUse": [{"matcher": "Bash", '
    '"hooks": [{"type": "command", "command": "echo formatted"}]}]}\n}\n',
    ".codex/config.toml": '# my codex config\nmodel = "gpt-5-codex"   # keep me\n\n[mcp_servers.docs]\n'
    'command = "docs-mcp"\n',
    ".cursor/hooks.json": '{"version": 1, "hooks": {"afterFileEdit": [{"command": "./hooks/format.sh"}]}}',
    ".cursor/mcp.json": '{"mcpServers": {"other": {"command": "other-mcp"}}}\n',
    ".gemini/settings.json": '{\n  "theme": "GitHub",\n  "mcpServers": {"fs": {"command": "fs-mcp"}}\n}\n',
    ".config/opencode/opencode.json": '{"$schema": "https://opencode.ai/config.json", "theme": "dark"}\n',
    ".config/zed/settings.json": '{\n  "theme": "One Dark",\n  "context_servers": {}\n}\n',
    ".config/goose/config.yaml": 'GOOSE_PROVIDER: "anthropic"\nextensions:\n  developer:\n    bundled: true\n'
    "    enabled: true\n    name: developer\n    timeout: 300\n    type: builtin\n",
    ".codeium/windsurf/mcp_config.json": '{"mcpServers": {"github": {"command": "gh-mcp", "args": []}}}\n',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    live = LiveServer(tmp_path_factory.mktemp("connect"), {"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_AUTH": "on"}, [])
    yield live
    live.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    for rel, text in EXISTING.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
        os.chmod(home / rel, 0o644)
    (home / ".agentmemory").mkdir()
    (home / ".agentmemory" / "secret").write_text(SECRET + "\n")
    os.chmod(home / ".agentmemory" / "secret", 0o600)
    (home / "project").mkdir()
    return home


def env_for(home: Path) -> dict[str, str]:
    return {**clean_environ(), "HOME": str(home)}


def agentmemory(home: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**env_for(home), **env}, cwd=home / "project")


def snapshot(home: Path, folders: bool = False) -> dict[str, tuple[bytes | None, int]]:
    """Every file under HOME except agentmemory's own state (and with ``folders``, every folder)."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for path in home.rglob("*"):
        if ".agentmemory" in path.parts:
            continue
        if path.is_file():
            out[str(path.relative_to(home))] = (path.read_bytes(), path.stat().st_mode & 0o777)
        elif folders and path.is_dir():
            out[str(path.relative_to(home))] = (None, path.stat().st_mode & 0o777)
    return out


def connect(home: Path, client: str, url: str) -> subprocess.CompletedProcess:
    return agentmemory(home, "connect", client, "--yes", "--url", url, "--scope", SCOPES.get(client, "user"))


def start_payload(client: str, session: str) -> tuple[dict[str, Any], str | None]:
    case = json.loads((FIXTURES / f"{client}.json").read_text())["cases"][0]
    payload = dict(case["payload"])
    for key in ("session_id", "conversation_id", "taskId", "sessionId"):
        if key in payload:
            payload[key] = session
    return payload, case.get("event")


def run_shell(command: str, payload: dict[str, Any], home: Path, cwd: Path) -> dict[str, Any]:
    """Run a configured hook command the way a client does: a shell, the event JSON on stdin."""
    done = subprocess.run(["sh", "-c", command], input=json.dumps(payload), capture_output=True, text=True,
                          timeout=60, env=env_for(home), cwd=cwd)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return json.loads(done.stdout)


def session_start_command(client: str, home: Path) -> tuple[str, Path]:
    """The command the client's config runs at session start, and the directory it runs in."""
    load = client_schemas.load_json
    if client == "claude-code":
        groups = load(home / ".claude" / "settings.json")["hooks"]["SessionStart"]
    elif client == "codex":
        groups = load(home / ".codex" / "hooks.json")["hooks"]["SessionStart"]
    elif client in ("antigravity", "gemini"):
        groups = load(home / ".gemini" / "settings.json")["hooks"]["SessionStart"]
    elif client == "cursor":
        return load(home / ".cursor" / "hooks.json")["hooks"]["sessionStart"][-1]["command"], home / ".cursor"
    elif client == "copilot":
        return load(home / ".copilot" / "hooks" / "agentmemory.json")["hooks"]["sessionStart"][-1]["bash"], home
    else:  # cline: the TaskStart script itself
        return str(home / "Documents" / "Cline" / "Hooks" / "TaskStart"), home
    return groups[-1]["hooks"][-1]["command"], home


def observations(server: LiveServer, session: str) -> list[dict[str, Any]]:
    response = requests.get(server.api("/observations"), params={"sessionId": session},
                            headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
    return response.json().get("observations", [])


def exercise_hook(client: str, home: Path, server: LiveServer) -> None:
    session = f"connect-{client}"
    if client in ("opencode", "continue", "zed", "goose", "windsurf"):
        return
    payload, event = start_payload(client, session)
    command, cwd = session_start_command(client, home)
    answer = run_shell(command, payload, home, cwd)
    assert isinstance(answer, dict)
    assert [o["hookType"] for o in observations(server, session)] == ["session_start"]


def test_opencode_plugin_forwards_events(home: Path, server: LiveServer) -> None:
    assert connect(home, "opencode", server.url).returncode == 0
    plugin = home / ".config" / "opencode" / "plugins" / "agentmemory.js"
    script = f"""
import {{ AgentMemory }} from {json.dumps(plugin.as_uri())};
const hooks = await AgentMemory({{ directory: "/home/u/game" }});
await hooks.event({{ event: {{ type: "session.created", properties: {{ info: {{ id: "oc-plugin", directory: "/home/u/game" }} }} }} }});
await hooks["tool.execute.before"]({{ tool: "edit", sessionID: "oc-plugin", callID: "c1" }}, {{ args: {{ filePath: "a.ts" }} }});
await hooks["tool.execute.after"]({{ tool: "edit", sessionID: "oc-plugin", callID: "c1" }}, {{ title: "a.ts", output: "ok", metadata: {{}} }});
setInterval(() => {{}}, 1000);  // stay up like OpenCode does; the test stops this process
"""
    node = subprocess.Popen(["node", "--input-type=module", "-e", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(home))
    try:  # the plugin does not wait for its posts: wait for them to arrive
        stored = wait_for(lambda: len(observations(server, "oc-plugin")) >= 2 and observations(server, "oc-plugin"),
                          timeout=30, message=lambda: "the plugin's events did not arrive", proc=node)
    finally:
        node.kill()
        node.communicate(timeout=10)
    # fire and forget: the two posts may land in either order
    by_type = {o["hookType"]: o for o in stored}
    assert sorted(by_type) == ["post_tool_use", "session_start"] and len(stored) == 2
    tool = by_type["post_tool_use"]
    assert tool["files"] == ["a.ts"] and tool["raw"]["tool_input"] == {"filePath": "a.ts"}


def test_opencode_plugin_forwards_only_the_session_events_it_maps(home: Path, server: LiveServer) -> None:
    # OpenCode 1.18 hands a plugin's `event` hook every bus event: a headless `opencode run` of one
    # prompt and one tool call gave it 40 (session.updated, session.status, session.diff,
    # message.updated, message.part.updated, message.part.delta once per streamed chunk). Each one
    # forwarded was stored as an `other` observation, and a message.updated was filed under its
    # message's id (properties.info is a message there) as if it were a session.
    assert connect(home, "opencode", server.url).returncode == 0
    plugin = home / ".config" / "opencode" / "plugins" / "agentmemory.js"
    events = [
        {"type": "session.created", "properties": {"sessionID": "oc-only", "info": {"id": "oc-only", "directory": "/g"}}},
        {"type": "session.updated", "properties": {"sessionID": "oc-only", "info": {"id": "oc-only", "title": "t"}}},
        {"type": "session.status", "properties": {"sessionID": "oc-only", "status": {"type": "busy"}}},
        {"type": "message.updated", "properties": {"sessionID": "oc-only", "info": {"id": "msg_1", "sessionID": "oc-only"}}},
        {"type": "message.part.delta", "properties": {"sessionID": "oc-only", "messageID": "msg_1", "delta": "he"}},
        {"type": "session.idle", "properties": {"sessionID": "oc-only"}},
    ]
    # fetch is wrapped only to count the plugin's posts and wait for each to be answered; they go
    # to the real server unchanged
    script = f"""
const posted = [];
const realFetch = globalThis.fetch;
globalThis.fetch = (url, init) => {{ const p = realFetch(url, init); posted.push(p); return p; }};
const {{ AgentMemory }} = await import({json.dumps(plugin.as_uri())});
const hooks = await AgentMemory({{ directory: "/g" }});
for (const event of {json.dumps(events)}) await hooks.event({{ event }});
const answers = await Promise.all(posted);
console.log(JSON.stringify(answers.map((r) => r.status)));
"""
    done = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                          timeout=60, env=env_for(home))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [200, 200]
    # fire and forget: the two posts may land in either order
    assert sorted(o["hookType"] for o in observations(server, "oc-only")) == ["session_start", "stop"]
    assert observations(server, "msg_1") == []


@pytest.mark.parametrize("client", sorted(client_schemas.VALIDATORS))
def test_connect_writes_documented_config_and_disconnect_restores(home: Path, server: LiveServer, client: str) -> None:
    before = snapshot(home, folders=True)
    done = connect(home, client, server.url)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout  # the diff shows the token as a placeholder
    written = client_schemas.validate(client, home, home / "project")
    for rel, text in EXISTING.items():  # the user's own entries are all still there
        path = home / rel
        if path in written and path.suffix == ".json":
            assert _contains(json.loads(path.read_text()), json.loads(text)), rel
        elif path in written:
            assert all(line in path.read_text() for line in text.splitlines()), rel
    after = snapshot(home)

    again = connect(home, client, server.url)
    assert again.returncode == 0 and "already connected" in again.stdout
    assert snapshot(home) == after

    exercise_hook(client, home, server)
    gone = agentmemory(home, "disconnect", client, "--scope", SCOPES.get(client, "user"))
    assert gone.returncode == 0, gone.stderr
    assert snapshot(home, folders=True) == before  # the folders connect made are gone too


def _contains(doc: Any, original: Any) -> bool:
    """Whether every key/value of ``original`` is still in ``doc`` (lists may have grown)."""
    if isinstance(original, dict):
        return isinstance(doc, dict) and all(k in doc and _contains(doc[k], v) for k, v in original.items())
    if isinstance(original, list):
        return isinstance(doc, list) and all(any(_contains(d, o) for d in doc) for o in original)
    return doc == original


def test_disconnect_removes_only_the_folders_connect_made_that_are_left_empty(home: Path, server: LiveServer) -> None:
    # disconnect left ~/.codex/ and the like behind, empty, after removing the files it created.
    shutil.rmtree(home / ".codex")
    (home / ".config" / "opencode" / "plugins").mkdir()  # the user's, empty: it stays
    for client in ("codex", "copilot", "opencode"):
        assert connect(home, client, server.url).returncode == 0
    assert (home / ".codex" / "hooks.json").exists() and (home / ".copilot" / "hooks" / "agentmemory.json").exists()
    (home / ".copilot" / "config.json").write_text("{}\n")  # the agent's own file, written since connect
    said = {}
    for client in ("codex", "copilot", "opencode"):
        gone = agentmemory(home, "disconnect", client)
        assert gone.returncode == 0, gone.stderr
        said[client] = gone.stdout
    assert not (home / ".codex").exists() and f"{home}/.codex: folder removed" in said["codex"]
    assert not (home / ".copilot" / "hooks").exists() and (home / ".copilot" / "config.json").read_text() == "{}\n"
    assert f"{home}/.copilot:" not in said["copilot"]
    assert (home / ".config" / "opencode" / "plugins").is_dir() and "folder removed" not in said["opencode"]
    assert not list((home / ".agentmemory").glob("connect/*.backups"))  # connect's own backups folders too


def test_disconnect_keeps_changes_made_after_connect(home: Path, server: LiveServer) -> None:
    assert connect(home, "cursor", server.url).returncode == 0
    hooks_file = home / ".cursor" / "hooks.json"
    doc = json.loads(hooks_file.read_text())
    doc["hooks"]["beforeReadFile"] = [{"command": "./hooks/redact.sh"}]
    hooks_file.write_text(json.dumps(doc))
    assert agentmemory(home, "disconnect", "cursor").returncode == 0
    left = json.loads(hooks_file.read_text())
    assert left == {"version": 1, "hooks": {"afterFileEdit": [{"command": "./hooks/format.sh"}],
                                            "beforeReadFile": [{"command": "./hooks/redact.sh"}]}}


def test_connect_never_waits_or_clobbers(home: Path, server: LiveServer) -> None:
    before = snapshot(home)
    shown = agentmemory(home, "connect", "codex", "--url", server.url)  # no --yes, stdin not a terminal
    assert shown.returncode == 1 and "--yes" in shown.stderr and "+++" in shown.stdout
    hooks_dir = home / "Documents" / "Cline" / "Hooks"
    hooks_dir.mkdir(parents=True)
    (hooks_dir / "PostToolUse").write_text("#!/bin/sh\necho mine\n")
    clash = connect(home, "cline", server.url)
    assert clash.returncode == 1 and "not agentmemory's" in clash.stderr
    (home / ".config" / "zed" / "settings.json").write_text('{\n  // my theme\n  "theme": "One Dark"\n}\n')
    jsonc = connect(home, "zed", server.url)
    assert jsonc.returncode == 1 and "not plain JSON" in jsonc.stderr
    scope = agentmemory(home, "connect", "goose", "--yes", "--scope", "project")
    assert scope.returncode == 1 and "--scope user" in scope.stderr
    after = snapshot(home)
    assert {k: v for k, v in after.items() if "Cline" not in k and "zed" not in k} == \
        {k: v for k, v in before.items() if "zed" not in k}


def test_status_reports_connected_clients_and_the_server(home: Path, server: LiveServer) -> None:
    assert connect(home, "windsurf", server.url).returncode == 0
    report = json.loads(agentmemory(home, "status", "--json", "--url", server.url).stdout)
    assert report["server"].startswith("up (HTTP 200)")
    connected = {row["client"] for row in report["clients"] if row["connected"]}
    assert connected == {"windsurf"} and report["hookEventsWaiting"] == 0
    assert shutil.which("node")  # the OpenCode plugin test runs the plugin with node
    # A hook that found no server kept its event; status says so, and the next hook sends it.
    missed = agentmemory(home, "hook", "codex", "--url", "http://127.0.0.1:9",
                         stdin='{"session_id": "cx-st", "hook_event_name": "Stop", "cwd": "/p"}')
    assert missed.returncode == 0 and "kept in" in missed.stderr, missed.stderr
    said = agentmemory(home, "status", "--url", server.url).stdout
    assert "1 hook event(s) wait in" in said and "agentmemory hook-drain" in said, said
    drained = agentmemory(home, "hook-drain", "--url", server.url)
    assert json.loads(drained.stdout) == {"sent": 1, "refused": 0, "waiting": 0}, drained.stderr
    assert json.loads(agentmemory(home, "status", "--json", "--url", server.url).stdout)["hookEventsWaiting"] == 0


def test_status_asks_the_server_the_hooks_post_to(home: Path, server: LiveServer) -> None:
    """A team member's hooks reach the team's server through AGENTMEMORY_URL; status must ask that
    server, not say a local one on the default port is not reachable."""
    report = json.loads(agentmemory(home, "status", "--json", AGENTMEMORY_URL=server.url).stdout)
    assert report["url"] == server.url and report["server"].startswith("up (HTTP 200)"), report
    # and connect writes that server into the agent's config when no --url is given
    done = agentmemory(home, "connect", "claude-code", "--yes", AGENTMEMORY_URL=server.url)
    assert done.returncode == 0, done.stderr
    hooks = client_schemas.load_json(home / ".claude" / "settings.json")["hooks"]
    assert hooks["PostToolUse"][-1]["hooks"][-1]["url"] == f"{server.url}/agentmemory/hooks/claude-code"


def test_connect_before_the_server_ever_ran_creates_the_token_it_will_use(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    data_dir = home / ".agentmemory"  # the default data directory, shared by connect and the server
    live = LiveServer(tmp_path, {"HOME": str(home), "AGENTMEMORY_AUTH": "on", "AGENTMEMORY_DATA_DIR": str(data_dir)},
                      [], start=False)
    env = {**clean_environ(), "HOME": str(home)}
    env.pop("AGENTMEMORY_AUTH")  # auth on, as installed
    done = subprocess.run([*CLI, "connect", "claude-code", "--yes", "--url", live.url], capture_output=True,
                          text=True, timeout=120, env=env, cwd=home / "project")
    assert done.returncode == 0, done.stderr
    secret = data_dir / "secret"
    token = secret.read_text().strip()
    assert len(token) >= 32 and secret.stat().st_mode & 0o777 == 0o600
    settings = client_schemas.load_json(home / ".claude" / "settings.json")
    assert settings["env"]["AGENTMEMORY_SECRET"] == token
    assert "<token>" in done.stdout and token not in done.stdout  # the diff never shows it
    try:
        live.start()
        hook = settings["hooks"]["PostToolUse"][-1]["hooks"][-1]
        payload = {"session_id": "first-run", "cwd": str(home / "project"), "hook_event_name": "PostToolUse",
                   "tool_name": "Read", "tool_input": {"file_path": "a.py"}, "tool_response": "x = 1"}
        answer = requests.post(hook["url"], json=payload, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200, answer.text
    finally:
        live.stop()


def test_durable_hooks_keep_claude_code_events_while_no_server_answers(home: Path, tmp_path: Path) -> None:
    # Claude Code's http hooks reaching no server keep nothing; with --durable-hooks every event runs
    # `agentmemory hook`, which keeps it on disk and sends it once the server answers again.
    live = LiveServer(tmp_path, {"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_AUTH": "on"}, [], start=False)
    done = agentmemory(home, "connect", "claude-code", "--yes", "--durable-hooks", "--url", live.url)
    assert done.returncode == 0, done.stderr
    assert "Every event runs `agentmemory hook claude-code`" in done.stdout, done.stdout
    client_schemas.validate("claude-code", home, home / "project")
    hooks = client_schemas.load_json(home / ".claude" / "settings.json")["hooks"]
    assert hooks["PostToolUse"][0]["hooks"][0]["command"] == "echo formatted"  # the user's own hook stays
    handlers = {event: hooks[event][-1]["hooks"][-1] for event in hooks}
    assert all(h["type"] == "command" and " hook claude-code" in h["command"] and "url" not in h
               for h in handlers.values()), handlers
    # the agent waits only where it reads the answer (a prompt's memories) or is about to exit
    waited = {event for event, h in handlers.items() if not h.get("async")}
    assert waited == {"SessionStart", "UserPromptSubmit", "SessionEnd"}, handlers
    base = {"session_id": "durable", "cwd": str(home / "project"), "transcript_path": "/t"}
    edit = {**base, "hook_event_name": "PostToolUse", "tool_name": "Edit", "tool_input": {"file_path": "a.py"},
            "tool_response": {"success": True}}
    down = subprocess.run(["sh", "-c", handlers["PostToolUse"]["command"]], input=json.dumps(edit), text=True,
                          capture_output=True, timeout=60, env=env_for(home), cwd=home / "project")
    assert down.returncode == 0 and json.loads(down.stdout) == {}, down.stderr
    assert len(list((home / ".agentmemory" / "hook-spool").glob("*.json"))) == 1, down.stderr
    try:
        live.start()
        stop = {**base, "hook_event_name": "Stop"}
        run_shell(handlers["Stop"]["command"], stop, home, home / "project")
        stored = wait_for(lambda: [o["hookType"] for o in observations(live, "durable")] == ["post_tool_use", "stop"],
                          message=lambda: str(observations(live, "durable")))
        assert stored and not list((home / ".agentmemory" / "hook-spool").glob("*.json"))
    finally:
        live.stop()
    # and connecting again without the flag puts the http hooks back in place of the commands
    assert agentmemory(home, "connect", "claude-code", "--yes", "--url", live.url).returncode == 0
    hooks = client_schemas.load_json(home / ".claude" / "settings.json")["hooks"]
    assert hooks["PostToolUse"][-1]["hooks"] == [{**hooks["PostToolUse"][-1]["hooks"][0], "type": "http"}]
    assert len(hooks["PostToolUse"]) == 2 and hooks["SessionStart"][-1]["hooks"][-1]["type"] == "command"


def test_connect_refuses_an_address_that_is_not_http_and_quotes_an_ipv6_one(home: Path) -> None:
    # A typo in --url used to be written into every hook command ("--url not a url" split into
    # three arguments) and the agent's hooks failed later, far from the cause.
    before = snapshot(home)
    for bad in ("not a url", "ftp://mem.example.com", "http://mem.example.com:port", "http://[::1"):
        done = agentmemory(home, "connect", "codex", "--yes", "--url", bad)
        assert done.returncode == 1 and "http://HOST:PORT" in done.stderr, (bad, done.stdout, done.stderr)
    assert snapshot(home) == before
    # An IPv6 loopback address is written quoted: its brackets are a glob in the shell the agent
    # runs the hook in, and zsh (failglob here) refuses a glob that matches nothing.
    assert agentmemory(home, "connect", "codex", "--yes", "--url", "http://[::1]:9").returncode == 0
    command = client_schemas.load_json(home / ".codex" / "hooks.json")["hooks"]["Stop"][-1]["hooks"][-1]["command"]
    stop = {"session_id": "cx-v6", "hook_event_name": "Stop", "cwd": str(home / "project"), "turn_id": "t1"}
    done = subprocess.run(["bash", "-O", "failglob", "-c", command], input=json.dumps(stop), capture_output=True,
                          text=True, timeout=60, env=env_for(home), cwd=home / "project")
    # nothing listens there: the command keeps the event and gives the agent its neutral answer
    assert done.returncode == 0 and json.loads(done.stdout) == {} and "kept in" in done.stderr, done.stderr


def test_codex_session_end_ends_the_session(home: Path, server: LiveServer) -> None:
    # Codex runs SessionEnd at teardown (since July 2026; input session_id, transcript_path, cwd,
    # hook_event_name, reason "other"). connect used to register no SessionEnd and the server stored
    # it as "other", so a Codex session stayed active until the idle finalizer.
    assert connect(home, "codex", server.url).returncode == 0
    hooks = client_schemas.load_json(home / ".codex" / "hooks.json")["hooks"]
    end = hooks["SessionEnd"][-1]["hooks"][-1]
    assert end["timeout"] <= 3  # Codex's cap for SessionEnd
    base = {"session_id": "cx-end", "transcript_path": None, "cwd": str(home / "project")}
    run_shell(hooks["SessionStart"][-1]["hooks"][-1]["command"], {**base, "hook_event_name": "SessionStart",
                                                                  "source": "startup", "model": "gpt-5-codex"},
              home, home / "project")
    assert run_shell(end["command"], {**base, "hook_event_name": "SessionEnd", "reason": "other"},
                     home, home / "project") == {}
    assert [o["hookType"] for o in observations(server, "cx-end")] == ["session_start", "session_end"]
    session = requests.get(server.api("/session"), params={"sessionId": "cx-end"},
                           headers={"Authorization": f"Bearer {SECRET}"}, timeout=10).json()["session"]
    assert session["status"] == "completed" and session["project"] == "project"


def test_codex_session_end_keeps_its_event_before_codex_stops_waiting(home: Path) -> None:
    # Codex kills a SessionEnd hook after 3 s; the hook command waited 10 s for the server, so a
    # server that took the connection but did not answer lost the session's end with the process.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # the kernel accepts connections into the backlog; nothing ever answers them
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    try:
        assert connect(home, "codex", url).returncode == 0
        end = client_schemas.load_json(home / ".codex" / "hooks.json")["hooks"]["SessionEnd"][-1]["hooks"][-1]
        waits = float(end["command"].split("--timeout ")[1].split()[0])
        assert waits < end["timeout"] <= 3, end  # gives up on the server before Codex gives up on it
        payload = {"session_id": "cx-hung", "transcript_path": None, "cwd": str(home / "project"),
                   "hook_event_name": "SessionEnd", "reason": "other"}
        done = subprocess.run(["sh", "-c", end["command"]], input=json.dumps(payload), capture_output=True,
                              text=True, timeout=60, env=env_for(home), cwd=home / "project")
    finally:
        hung.close()
    assert done.returncode == 0 and json.loads(done.stdout) == {} and "kept in" in done.stderr, done.stderr
    kept = list((home / ".agentmemory" / "hook-spool").glob("*.json"))
    assert len(kept) == 1 and "cx-hung" in kept[0].read_text()


def test_status_asks_the_server_connect_wrote_into_the_configs(home: Path, server: LiveServer) -> None:
    # Connected with --url (a server on another port), `status` used to ask this machine's default
    # address and say "not reachable" while every hook reached the server it was given.
    assert connect(home, "codex", server.url).returncode == 0
    assert connect(home, "cursor", server.url).returncode == 0
    report = json.loads(agentmemory(home, "status", "--json").stdout)
    assert report["url"] == server.url and report["server"].startswith("up (HTTP 200)"), report
    assert {row["client"]: row["url"] for row in report["clients"] if row["connected"]} == \
        {"codex": server.url, "cursor": server.url}
    said = agentmemory(home, "status").stdout
    assert f"server  {server.url}: up (HTTP 200) (written for codex, cursor)" in said, said


def test_cursor_project_mcp_over_http_is_refused_not_written_with_the_token(home: Path, server: LiveServer) -> None:
    # Cursor documents no variable expansion in mcp.json, so --mcp http writes the token itself;
    # at project scope that file is .cursor/mcp.json, which the team commits.
    before = snapshot(home)
    done = agentmemory(home, "connect", "cursor", "--yes", "--scope", "project", "--mcp", "http", "--url", server.url)
    assert done.returncode == 1 and "--mcp stdio" in done.stderr and "--scope user" in done.stderr, done.stderr
    assert snapshot(home) == before and not (home / "project" / ".cursor").exists()
    assert SECRET not in done.stdout + done.stderr
    # the user's own file (outside any repository) still takes it, 0600
    assert agentmemory(home, "connect", "cursor", "--yes", "--mcp", "http", "--url", server.url).returncode == 0
    assert (home / ".cursor" / "mcp.json").stat().st_mode & 0o777 == 0o600


async def _mcp_tools_over_http(url: str, headers: dict[str, str]) -> list[str]:
    """The official SDK's Streamable HTTP client, with the headers an agent's config gives it."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            return [t.name for t in (await client.list_tools()).tools]


def test_mcp_over_http_says_to_export_the_token_the_agent_reads(home: Path, server: LiveServer) -> None:
    # Gemini CLI (and Codex, Copilot, Windsurf) read the /mcp token from $AGENTMEMORY_SECRET; connect
    # wrote that reference and said nothing, so on a machine that does not export it the agent's MCP
    # server was refused (401) with no hint why.
    import anyio

    done = agentmemory(home, "connect", "gemini", "--yes", "--mcp", "http", "--url", server.url, AGENTMEMORY_AUTH="on")
    assert done.returncode == 0, done.stderr
    assert f'export AGENTMEMORY_SECRET="$(cat {home}/.agentmemory/secret)"' in done.stdout, done.stdout
    entry = client_schemas.load_json(home / ".gemini" / "settings.json")["mcpServers"]["agentmemory"]
    header = entry["headers"]["Authorization"]
    assert SECRET not in header  # a reference, expanded by Gemini CLI from its environment
    exported = {"Authorization": header.replace("$AGENTMEMORY_SECRET", SECRET)}
    assert "memory_recall" in anyio.run(_mcp_tools_over_http, entry["httpUrl"], exported)
    with pytest.raises(BaseException) as refused:  # not exported: Gemini sends the reference as written
        anyio.run(_mcp_tools_over_http, entry["httpUrl"], {"Authorization": header})
    leaves = [refused.value]
    while hasattr(leaves[-1], "exceptions"):
        leaves.append(leaves[-1].exceptions[0])
    assert str(leaves[-1]).startswith("unauthorized"), leaves
    # exported already: nothing to say
    again = agentmemory(home, "connect", "codex", "--yes", "--mcp", "http", "--url", server.url,
                        AGENTMEMORY_AUTH="on", AGENTMEMORY_SECRET=SECRET)
    assert again.returncode == 0 and "export AGENTMEMORY_SECRET" not in again.stdout, again.stdout


def expand_braced(text: str, environ: dict[str, str]) -> str:
    """Copilot CLI's variable expansion as its documentation shows it for ~/.copilot/mcp-config.json:
    ``${NAME}`` (the form of every example there, headers included; 0.0.340 made env values literal
    unless written so). A bare ``$NAME`` is left as written."""
    import re

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: environ.get(m.group(1), m.group(0)), text)


def test_copilot_mcp_over_http_names_the_token_the_way_copilot_documents(home: Path, server: LiveServer) -> None:
    # connect wrote "Bearer $AGENTMEMORY_SECRET"; Copilot CLI's documented examples for its MCP file
    # all write ${VAR}, so the bare form was unconfirmed and could reach the server unexpanded.
    import anyio

    done = agentmemory(home, "connect", "copilot", "--yes", "--mcp", "http", "--url", server.url,
                       AGENTMEMORY_AUTH="on", AGENTMEMORY_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    entry = client_schemas.load_json(home / ".copilot" / "mcp-config.json")["mcpServers"]["agentmemory"]
    header = entry["headers"]["Authorization"]
    assert header == "Bearer ${AGENTMEMORY_SECRET}" and SECRET not in header
    expanded = {"Authorization": expand_braced(header, {"AGENTMEMORY_SECRET": SECRET})}
    assert "memory_recall" in anyio.run(_mcp_tools_over_http, entry["url"], expanded)


def test_status_tells_gemini_from_antigravity_in_their_shared_settings(home: Path, server: LiveServer) -> None:
    # Both write hooks to ~/.gemini/settings.json; status counted any agentmemory entry there, so
    # after `disconnect antigravity` it still said Antigravity was connected.
    assert connect(home, "gemini", server.url).returncode == 0
    assert connect(home, "antigravity", server.url).returncode == 0
    assert agentmemory(home, "disconnect", "antigravity").returncode == 0
    hooks = client_schemas.load_json(home / ".gemini" / "settings.json")["hooks"]
    assert " hook gemini " in hooks["SessionStart"][-1]["hooks"][-1]["command"]  # Gemini's own hooks are back
    report = json.loads(agentmemory(home, "status", "--json").stdout)
    connected = {row["client"] for row in report["clients"] if row["connected"]}
    assert connected == {"gemini"}, report["clients"]


def test_a_path_that_cannot_be_read_or_written_is_a_clear_error(home: Path, server: LiveServer) -> None:
    # A folder where the agent's file should be (or a file where its folder should be) ended
    # connect in a Python traceback.
    before = snapshot(home)
    (home / ".codex" / "hooks.json").mkdir(parents=True)
    done = connect(home, "codex", server.url)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{home}/.codex/hooks.json cannot be read" in done.stderr and "nothing was written" in done.stderr
    assert snapshot(home) == before
    # The second file cannot be written (its folder is a dangling link): the error says what was
    # written before it, and disconnect puts that back.
    (home / ".gemini" / "config").symlink_to(home / "gone")
    done = connect(home, "antigravity", server.url)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{home}/.gemini/config/mcp_config.json cannot be written" in done.stderr, done.stderr
    assert f"written before it: {home}/.gemini/settings.json" in done.stderr, done.stderr
    assert agentmemory(home, "disconnect", "antigravity").returncode == 0
    assert snapshot(home) == before


def test_an_mcp_choice_the_agent_cannot_take_is_refused_not_swapped(home: Path, server: LiveServer) -> None:
    # Zed, Goose and Continue wrote their stdio entry whatever --mcp said (--mcp none included),
    # and OpenCode and Windsurf silently wrote no MCP entry or a stdio one.
    before = snapshot(home)
    for client, mcp in (("zed", "http"), ("zed", "none"), ("goose", "http"), ("opencode", "http"),
                        ("windsurf", "none")):
        done = agentmemory(home, "connect", client, "--yes", "--mcp", mcp, "--url", server.url)
        assert done.returncode == 1 and f"not --mcp {mcp}; nothing was written" in done.stderr, (client, done.stderr)
    done = agentmemory(home, "connect", "continue", "--yes", "--scope", "project", "--mcp", "http", "--url", server.url)
    assert done.returncode == 1 and "Continue takes --mcp stdio" in done.stderr, done.stderr
    assert snapshot(home) == before


def test_antigravity_at_project_scope_says_its_mcp_server_was_not_written(home: Path, server: LiveServer) -> None:
    # Antigravity has one MCP file for every workspace, so a project connect writes hooks only;
    # connect used to say "The MCP server goes to ~/.gemini/config/mcp_config.json" all the same.
    done = agentmemory(home, "connect", "antigravity", "--yes", "--scope", "project", "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert not (home / ".gemini" / "config" / "mcp_config.json").exists()
    assert "The MCP server goes to" not in done.stdout and "got its hooks only" in done.stdout, done.stdout
    assert "`agentmemory connect antigravity` (user scope)" in done.stdout


def test_cursor_mcp_over_http_holds_the_token_even_when_it_is_exported(home: Path, server: LiveServer) -> None:
    # Cursor expands no variable in mcp.json; with AGENTMEMORY_SECRET exported (as for Claude Code)
    # connect wrote "Authorization": "Bearer " and Cursor's MCP server was refused.
    import anyio

    done = agentmemory(home, "connect", "cursor", "--yes", "--mcp", "http", "--url", server.url,
                       AGENTMEMORY_AUTH="on", AGENTMEMORY_SECRET=SECRET)
    assert done.returncode == 0 and SECRET not in done.stdout, done.stdout + done.stderr
    path = home / ".cursor" / "mcp.json"
    entry = client_schemas.load_json(path)["mcpServers"]["agentmemory"]
    assert entry["headers"] == {"Authorization": f"Bearer {SECRET}"} and path.stat().st_mode & 0o777 == 0o600
    assert "memory_recall" in anyio.run(_mcp_tools_over_http, entry["url"], entry["headers"])


def test_a_projects_committed_config_names_no_server_unless_one_was_given(home: Path, server: LiveServer) -> None:
    # A project's hooks are committed and run on every teammate's machine. connect used to write its
    # own machine's default address into every command (--url http://127.0.0.1:3111), which beats a
    # teammate's AGENTMEMORY_URL: their events went to a server that is not theirs, or to none.
    assert agentmemory(home, "connect", "codex", "--yes", "--scope", "project").returncode == 0
    hooks = client_schemas.load_json(home / "project" / ".codex" / "hooks.json")["hooks"]
    commands = [h["command"] for groups in hooks.values() for group in groups for h in group["hooks"]]
    assert commands and not any("--url" in c for c in commands), commands
    assert "AGENTMEMORY_URL" not in (home / "project" / ".codex" / "config.toml").read_text()
    # The teammate's `agentmemory` on PATH (a project's commands name it bare), their server in the environment.
    path = f"{Path(sys.executable).parent}{os.pathsep}{env_for(home).get('PATH', '')}"
    teammate = {**env_for(home), "AGENTMEMORY_URL": server.url, "PATH": path}
    payload = {"session_id": "cx-team", "transcript_path": None, "cwd": str(home / "project"),
               "hook_event_name": "SessionStart", "source": "startup", "model": "gpt-5-codex"}
    start = next(c for c in commands if "SessionEnd" not in c)
    done = subprocess.run(["sh", "-c", start], input=json.dumps(payload), capture_output=True, text=True,
                          timeout=60, env=teammate, cwd=home / "project")
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert [o["hookType"] for o in observations(server, "cx-team")] == ["session_start"]  # the teammate's server
    report = json.loads(agentmemory(home, "status", "--json", "--scope", "project").stdout)
    assert next(r for r in report["clients"] if r["client"] == "codex")["connected"] is True
    # Named on purpose, the server is written: --url, or AGENTMEMORY_URL when connecting.
    assert agentmemory(home, "connect", "codex", "--yes", "--scope", "project", "--url", server.url).returncode == 0
    hooks = client_schemas.load_json(home / "project" / ".codex" / "hooks.json")["hooks"]
    assert all(f"--url {server.url}" in h["command"] for groups in hooks.values() for g in groups for h in g["hooks"])


def test_status_says_what_a_degraded_server_reports(home: Path, tmp_path: Path) -> None:
    # `status` said "up (HTTP 200)" of a server whose /health was degraded (here: its Redis is gone,
    # so working memory is on the fallback): the one line a person reads said nothing was wrong.
    live = LiveServer(tmp_path, {"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_AUTH": "on", "AGENTMEMORY_WORKERS": "1",
                                 "WORKING_MEMORY_BACKEND": "redis", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                      [])
    try:
        said = agentmemory(home, "status", "--url", live.url).stdout
        line = f"server  {live.url}: up (HTTP 200), degraded: working_memory (GET /agentmemory/status says why)"
        assert line in said, said
    finally:
        live.stop()
