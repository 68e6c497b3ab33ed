"""A real OpenCode agent, headless, with the plugin ``agentmemory connect opencode`` writes: what
reaches a real server from one ``opencode run`` (one prompt, one bash call, a final answer).

OpenCode is the ``opencode-ai`` npm package (tests/node-packages.txt; its optional dependency for
this platform is one self-contained binary). Its model is a loopback fake of the OpenAI chat
completions API (tests/fake_openai.py, streamed), an ``@ai-sdk/openai-compatible`` provider in the
project's ``opencode.json`` (OpenCode merges it over the user config connect wrote). Nothing
leaves the machine: HOME and the XDG folders are temporary, and OpenCode's network features are
switched off (``OFFLINE`` says which and why). The run takes five to ten seconds.

OpenCode also starts the MCP server connect configured (``agentmemory-mcp``) and offers its tools
to the model (``agentmemory_memory_smart_search``, ...): the run checks that every tool the server
lists reached the model. OpenCode gives a local MCP server 5 s to start unless its entry says
otherwise, too little for the Python shim on a loaded machine; connect writes a ``timeout``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import LiveServer, clean_environ, end_process_group, wait_for
from fake_http import Prompt
from fake_openai import FakeOpenAI, ToolCall
from mcp_support import node_modules

SECRET = "opencode-real-secret-0123456789"
MODEL_KEY = "oc-fake-model-key"
CLI = [sys.executable, "-m", "agentmemory_server.adapters.entry"]
PROMPT = "Greet the memory server from the shell"
GREETING = "hello-from-opencode-7f3a"
RUN_TIMEOUT = 120  # seconds; a run takes about ten

# What keeps OpenCode 1.18.33 off the network (the switches are read in the binary's own code and
# docs). With them a run connects to 127.0.0.1 only (checked with strace), and passes in a network
# namespace that has nothing but loopback.
OFFLINE = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",  # no models.dev catalogue download (the fake model is defined in full)
    "OPENCODE_DISABLE_AUTOUPDATE": "1",  # no update check (the config says autoupdate: false as well)
    "OPENCODE_DISABLE_SHARE": "1",  # no session sharing (the config says share: disabled as well)
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",  # no language server download (an edited file would start one)
    # OpenCode npm-installs @opencode-ai/plugin into a config folder that holds plugins, in the
    # background, and waits for that before loading them; offline it fails at once (only logged).
    "npm_config_offline": "true",
}


def opencode_binary() -> Path:
    """The ``opencode`` command npm linked from the cached ``opencode-ai`` package."""
    binary = node_modules() / ".bin" / "opencode"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: opencode-ai (tests/node-packages.txt) did not install its command; "
                    "run tests/run.sh, or npm install opencode-ai into the node cache (its optional dependency "
                    "for this platform, e.g. opencode-linux-x64, holds the binary)")
    return binary


def agent_model(prompt: Prompt) -> Any:
    """The fake model's part: call bash once, then answer in words once the tool's result is back."""
    messages = prompt.body.get("messages") or []
    if any(message.get("role") == "tool" for message in messages):
        return f"The shell said {GREETING}."
    if prompt.body.get("tools"):
        return ToolCall("bash", {"command": f"echo {GREETING}", "description": "Print the greeting"})
    return "Greeting"  # a request without tools (a title, a summary): plain text


@pytest.fixture
def model():
    fake = FakeOpenAI(api_key=MODEL_KEY)
    fake.streaming = True  # OpenCode streams every request
    fake.responder = agent_model
    yield fake
    fake.close()


@pytest.fixture
def server(tmp_path: Path):
    live = LiveServer(tmp_path, {"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_AUTH": "on"}, [])
    yield live
    live.stop()


def user_environment(home: Path, cwd: Path) -> dict[str, str]:
    """The environment of a user whose HOME (and every XDG folder, and TMPDIR) is in ``home``, in a
    shell whose working directory is ``cwd`` (OpenCode takes its project folder from PWD, as shells
    set it). Without TMPDIR, OpenCode leaves an empty ``/tmp/opencode`` behind."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return {**clean_environ(), "HOME": str(home), "PWD": str(cwd), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_STATE_HOME": str(home / ".local" / "state"),
            "XDG_CACHE_HOME": str(home / ".cache"), "TMPDIR": str(home / "tmp")}


def connect_opencode(home: Path, project: Path, url: str) -> None:
    (home / ".agentmemory").mkdir(parents=True)
    (home / ".agentmemory" / "secret").write_text(SECRET + "\n")
    os.chmod(home / ".agentmemory" / "secret", 0o600)
    done = subprocess.run([*CLI, "connect", "opencode", "--yes", "--url", url, "--scope", "user"], capture_output=True,
                          text=True, timeout=120, env=user_environment(home, project), cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (home / ".config" / "opencode" / "plugins" / "agentmemory.js").is_file()
    entry = json.loads((home / ".config" / "opencode" / "opencode.json").read_text())["mcp"]["agentmemory"]
    assert entry["timeout"] >= 60_000, entry  # ms to start the stdio shim (OpenCode's default: 5000)


def use_fake_model(project: Path, model: FakeOpenAI) -> None:
    """The project's ``opencode.json``: the fake as OpenCode's model, bash allowed without asking."""
    config = {
        "$schema": "https://opencode.ai/config.json",
        "model": "fake/agent",
        "small_model": "fake/agent",
        "autoupdate": False,
        "share": "disabled",
        "provider": {"fake": {"npm": "@ai-sdk/openai-compatible", "name": "Loopback fake",
                              "options": {"baseURL": model.base, "apiKey": MODEL_KEY},
                              "models": {"agent": {"name": "agent", "tool_call": True}}}},
        "permission": {"bash": "allow"},  # headless: nobody to ask
    }
    (project / "opencode.json").write_text(json.dumps(config, indent=2) + "\n")


def opencode_run(binary: Path, home: Path, project: Path) -> str:
    """``opencode run`` headless, in its own process group, and its stdout; the whole group is ended
    afterwards (OpenCode starts children: the MCP server connect configured, the bash tool's shell)."""
    argv = [str(binary), "run", "--format", "json", "--title", "OpenCode real run", PROMPT]
    env = {**user_environment(home, project), **OFFLINE}
    proc = subprocess.Popen(argv, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        end_process_group(proc, grace=5)
        out, err = proc.communicate()
        pytest.fail(f"opencode run did not finish within {RUN_TIMEOUT}s\n{run_report(home, out, err)}")
    finally:
        end_process_group(proc, grace=5)
    assert proc.returncode == 0, f"opencode run failed ({proc.returncode})\n{run_report(home, out, err)}"
    return out


def run_report(home: Path, out: str, err: str) -> str:
    return f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}\nits log:\n{opencode_log(home)[-3000:]}"


def opencode_log(home: Path) -> str:
    logs = sorted((home / ".local" / "share" / "opencode" / "log").glob("*.log"))
    return "\n".join(path.read_text(errors="replace") for path in logs)


def run_session_ids(stdout: str) -> set[str]:
    """The session ids in ``opencode run --format json``'s events (one JSON object a line)."""
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {event["sessionID"] for event in events if event.get("sessionID")}


def stored(server: LiveServer, path: str, **params: Any) -> dict[str, Any]:
    answer = requests.get(server.api(path), params=params, headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def mcp_tools(server: LiveServer) -> set[str]:
    """The tools the server lists to MCP clients (JSON-RPC ``tools/list`` over POST /mcp)."""
    headers = {"Authorization": f"Bearer {SECRET}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    answer = requests.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                           headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return {tool["name"] for tool in answer.json()["result"]["tools"]}


def observations(server: LiveServer, session: str) -> list[dict[str, Any]]:
    return stored(server, "/observations", sessionId=session)["observations"]


def test_a_real_opencode_run_is_stored_as_one_session(tmp_path: Path, server: LiveServer, model: FakeOpenAI) -> None:
    # Until December 2026 the plugin forwarded every bus event OpenCode handed it: this run stored a
    # dozen `other` observations (a message.part.delta per streamed chunk, session.status, ...) and a
    # second session under a message's id.
    binary = opencode_binary()
    home, project = tmp_path / "home", tmp_path / "home" / "project"
    project.mkdir(parents=True)
    connect_opencode(home, project, server.url)
    use_fake_model(project, model)

    out = opencode_run(binary, home, project)
    # Its temporary folder went to the test's TMPDIR, not to the machine's /tmp.
    assert (home / "tmp" / "opencode").is_dir(), sorted(p.name for p in (home / "tmp").iterdir())
    (session,) = run_session_ids(out)  # OpenCode's own id for the run's session
    last_request = model.generations()[-1]["messages"]
    (prompt,) = [m["content"] for m in last_request if m["role"] == "user"]  # as OpenCode sent it to the model
    assert PROMPT in prompt  # (`opencode run` quotes a message argument that has spaces)
    assert [m["content"] for m in last_request if m["role"] == "tool"] == [f"{GREETING}\n"]  # bash ran
    # OpenCode started the MCP server connect configured and offered the model its tools, each
    # named after the entry: connect's `timeout` gave the stdio shim time to start.
    offered = {tool["function"]["name"] for body in model.generations() for tool in body.get("tools") or []}
    listed = {f"agentmemory_{name}" for name in mcp_tools(server)}
    assert "agentmemory_memory_smart_search" in listed and listed <= offered, (
        f"the model was not offered {sorted(listed - offered)}; offered {sorted(offered)}\n"
        f"its log:\n{opencode_log(home)[-3000:]}")

    # The plugin posts fire and forget: the four may land in any order, a moment after the run ends.
    mapped = {"session_start", "prompt_submit", "post_tool_use", "stop"}
    found = wait_for(lambda: (obs := observations(server, session)) and mapped <= {o["hookType"] for o in obs} and obs,
                     timeout=30, message=lambda: f"the plugin's posts did not all arrive; the server's log:\n"
                                                 f"{server.log()[-3000:]}")
    kinds = sorted(o["hookType"] for o in found)
    assert kinds == sorted(mapped), f"more than the four mapped events were stored: {kinds}"
    by_kind = {o["hookType"]: o["raw"] for o in found}
    assert by_kind["session_start"]["hook_event_name"] == "session.created"
    assert by_kind["prompt_submit"]["prompt"] == prompt
    assert by_kind["post_tool_use"]["tool_name"] == "bash"
    assert by_kind["post_tool_use"]["tool_input"]["command"] == f"echo {GREETING}"
    assert by_kind["post_tool_use"]["tool_response"] == f"{GREETING}\n"
    assert by_kind["stop"]["hook_event_name"] == "session.idle"
    assert {o["cwd"] for o in found} == {str(project)}

    # The store holds that one session and nothing else (no session under a message's id).
    sessions = stored(server, "/sessions")["sessions"]
    assert [(s["id"], s["cwd"], s["observationCount"]) for s in sessions] == [(session, str(project), 4)]
