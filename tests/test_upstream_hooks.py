"""Upstream's Claude Code hook scripts (``@agentmemory/agentmemory@0.9.29`` plugin/scripts) run
for real against our server, with Claude-Code-shaped stdin payloads, with and without a secret.

Most hooks are fire-and-forget (they exit ~0.5 s after sending), so the server state is checked
after they exit, polling until the expected observations are there.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from agentmemory_server.kernel import registry
from conftest import LiveServer, post, wait_for
from mcp_support import node_modules

PROJECT = "hook-demo"
EVENTS = {"session-start": "SessionStart", "prompt-submit": "UserPromptSubmit", "pre-tool-use": "PreToolUse",
          "post-tool-use": "PostToolUse", "post-tool-failure": "PostToolUseFailure", "pre-compact": "PreCompact",
          "subagent-start": "SubagentStart", "subagent-stop": "SubagentStop", "notification": "Notification",
          "task-completed": "TaskCompleted", "stop": "Stop", "session-end": "SessionEnd"}
GITHUB_TOKEN = "ghp_" + "A1b2C3d4" * 5  # a planted secret; must never reach the database


class Hooks:
    """Runs plugin/scripts/<name>.mjs the way Claude Code does: JSON on stdin, env for config."""

    def __init__(self, node_dir: Path, server: LiveServer, tmp: Path, secret: str | None):
        self.scripts = node_dir / "@agentmemory" / "agentmemory" / "plugin" / "scripts"
        self.server, self.tmp, self.secret = server, tmp, secret
        self.cwd = tmp / "workspace"
        self.cwd.mkdir(exist_ok=True)
        (tmp / "home").mkdir(exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "HOME": str(self.tmp / "home"), "AGENTMEMORY_URL": self.server.url,
               "AGENTMEMORY_PROJECT_NAME": PROJECT}
        if self.secret:
            env["AGENTMEMORY_SECRET"] = self.secret
        return {**env, **extra}

    def run(self, script: str, payload: dict[str, Any], **env: str) -> subprocess.CompletedProcess:
        stdin = {"cwd": str(self.cwd), "hook_event_name": EVENTS[script], **payload}
        done = subprocess.run(["node", str(self.scripts / f"{script}.mjs")], input=json.dumps(stdin),
                              capture_output=True, text=True, timeout=60, env=self.env(**env), cwd=self.cwd)
        assert done.returncode == 0, done.stderr
        return done

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(self.server.api(path), params=params, headers=self.headers, timeout=10)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict) -> Any:
        r = post(self.server.api(path), body, headers=self.headers)
        r.raise_for_status()
        return r.json()

    def observations(self, session_id: str, expected: int) -> list[dict[str, Any]]:
        """The session's observations once ``expected`` of them are stored (hooks do not wait)."""
        def stored() -> list[dict[str, Any]] | None:
            found = self.get("/observations", sessionId=session_id)["observations"]
            return found if len(found) >= expected else None

        return wait_for(stored, timeout=20, interval=0.1,
                        message=f"session {session_id} did not get {expected} observations")

    def session(self, session_id: str) -> dict[str, Any]:
        return self.get("/session", sessionId=session_id)["session"]

    def session_when(self, session_id: str, status: str) -> dict[str, Any]:
        """The session once it has ``status`` (a 404 until the hook's request lands)."""
        def reached() -> dict[str, Any] | None:
            session = self.session(session_id)
            return session if session["status"] == status else None

        return wait_for(reached, timeout=20, interval=0.1, ignore=(requests.HTTPError,),
                        message=f"session {session_id} did not reach status {status!r}")


@pytest.fixture(scope="module")
def node_dir():
    return node_modules()


@pytest.fixture
def make_hooks(node_dir, tmp_path, request):
    servers: list[LiveServer] = []
    databases: list[str] = []

    def make(secret: str | None, backend: str = "sqlite") -> Hooks:
        env = {"AGENTMEMORY_SECRET": secret} if secret else {}
        if backend == "postgresql":
            databases.append(request.getfixturevalue("pg_cluster").create_database())
            env["AGENTMEMORY_DATABASE_URL"] = databases[-1]
        server = LiveServer(tmp_path, env, [])
        servers.append(server)
        return Hooks(node_dir, server, tmp_path, secret)

    yield make
    for server in servers:
        server.stop()
    for url in databases:
        request.getfixturevalue("pg_cluster").drop_database(url)


@pytest.fixture(params=[(None, "sqlite"), ("hook-secret", "sqlite"), ("hook-secret", "postgresql")],
                ids=["open", "secret", "secret-postgresql"])
def hooks(request, make_hooks):
    return make_hooks(*request.param)


def stored_bytes(server: LiveServer) -> bytes:
    """Everything the server stored: on SQLite the database, its WAL and the search index beside
    it (a directory of segment files); on PostgreSQL every text the database holds (records,
    search text, audit) and the node's files (its Tantivy index)."""
    files = b"".join(f.read_bytes() for f in server.db_path.parent.rglob("*")
                     if f.is_file() and f.relative_to(server.db_path.parent).parts[0].startswith(server.db_path.name))
    url = server.env.get("AGENTMEMORY_DATABASE_URL")
    if not url:
        return files
    import psycopg

    with psycopg.connect(url) as conn:
        texts = [r[0] or "" for r in conn.execute(
            "SELECT value::text || coalesce(raw, '') FROM kv_store UNION ALL "
            "SELECT title || body || concepts || files || context FROM search_text UNION ALL "
            "SELECT message || targets::text || details::text FROM audit_log")]
    local = b"".join(f.read_bytes() for f in server.data_dir.rglob("*") if f.is_file())
    return "\n".join(texts).encode() + files + local


def _previous_session(hooks: Hooks) -> None:
    """An earlier session of the project, so the next one gets context."""
    hooks.run("session-start", {"session_id": "prev-1"})
    hooks.run("prompt-submit", {"session_id": "prev-1", "prompt": "add retries to the http client"})
    hooks.run("post-tool-use", {"session_id": "prev-1", "tool_name": "Edit",
                                "tool_input": {"file_path": "src/http_client.py", "old_string": "a", "new_string": "b"},
                                "tool_response": {"filePath": "src/http_client.py", "success": True}})
    hooks.run("session-end", {"session_id": "prev-1", "reason": "exit"})
    assert len(hooks.observations("prev-1", 2)) == 2


def test_a_claude_code_session_through_every_hook(hooks):
    _previous_session(hooks)
    sid = "cur-1"
    started = hooks.run("session-start", {"session_id": sid, "source": "startup"}, AGENTMEMORY_INJECT_CONTEXT="true")
    expected_context = hooks.post("/context", {"sessionId": sid, "project": PROJECT})["context"]
    assert started.stdout == expected_context and "src/http_client.py" in started.stdout
    session = hooks.session(sid)
    assert session["project"] == PROJECT and session["cwd"] == str(hooks.cwd) and session["status"] == "active"

    payloads = [
        ("prompt-submit", {"prompt": "now make the retry count configurable"}),
        ("post-tool-use", {"tool_name": "Bash", "tool_input": {"command": "pytest -q"},
                           "tool_response": {"stdout": f"3 passed; used {GITHUB_TOKEN}", "stderr": ""}}),
        ("post-tool-failure", {"tool_name": "Bash", "tool_input": {"command": "make lint"},
                               "error": "ruff: 2 errors in src/http_client.py"}),
        ("post-tool-failure", {"tool_name": "Bash", "tool_input": {}, "error": "stopped", "is_interrupt": True}),
        ("subagent-start", {"agent_id": "agent-7", "agent_type": "code-reviewer"}),
        ("subagent-stop", {"agent_id": "agent-7", "agent_type": "code-reviewer",
                           "last_assistant_message": "review done: looks good"}),
        ("notification", {"notification_type": "permission_prompt", "title": "Permission needed",
                          "message": "Claude wants to run rm -rf build"}),
        ("notification", {"notification_type": "idle_prompt", "message": "waiting for input"}),
        ("task-completed", {"task_id": "t-1", "task_subject": "configurable retries",
                            "task_description": "retry count comes from settings"}),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:  # independent events, as Claude Code fires them
        list(pool.map(lambda item: hooks.run(item[0], {"session_id": sid, **item[1]}), payloads))
    observations = hooks.observations(sid, 7)
    by_hook = {o["hookType"]: o for o in observations}
    assert sorted(o["hookType"] for o in observations) == sorted(
        ["prompt_submit", "post_tool_use", "post_tool_failure", "subagent_start", "subagent_stop",
         "notification", "task_completed"])  # the interrupt and the idle notification are not sent
    assert by_hook["prompt_submit"]["raw"]["prompt"] == "now make the retry count configurable"
    assert by_hook["post_tool_use"]["raw"]["tool_name"] == "Bash"
    assert by_hook["post_tool_failure"]["raw"]["error"] == "ruff: 2 errors in src/http_client.py"
    assert by_hook["subagent_stop"]["raw"]["last_message"] == "review done: looks good"
    assert by_hook["notification"]["raw"]["title"] == "Permission needed"
    assert by_hook["task_completed"]["raw"]["task_subject"] == "configurable retries"
    assert all(o["project"] == PROJECT for o in observations)
    stored = stored_bytes(hooks.server)
    assert GITHUB_TOKEN not in json.dumps(observations) and GITHUB_TOKEN.encode() not in stored
    assert b"3 passed; used" in stored  # the text around the secret is kept (db and WAL were read)

    compact = hooks.run("pre-compact", {"session_id": sid, "trigger": "auto"})
    assert compact.stdout == hooks.post("/context", {"sessionId": sid, "project": PROJECT, "budget": 1500})["context"]
    assert compact.stdout  # the previous session is there to inject

    hooks.run("stop", {"session_id": sid, "stop_hook_active": False})
    assert hooks.session_when(sid, "completed")["status"] == "completed"
    transcript = hooks.tmp / "transcript.jsonl"
    transcript.write_text("\n".join(json.dumps(line) for line in [
        {"role": "user", "message": {"content": [{"type": "text", "text": "<user_query>\nship it\n</user_query>"}]}},
        {"role": "assistant", "message": {"content": [{"type": "text", "text": "done"}]}},
    ]) + "\n")
    hooks.run("session-end", {"session_id": sid, "reason": "exit", "transcript_path": str(transcript)})
    prompts = [o["raw"]["prompt"] for o in hooks.observations(sid, 8) if o["hookType"] == "prompt_submit"]
    assert sorted(prompts) == ["now make the retry count configurable", "ship it"]
    assert hooks.session(sid)["status"] == "completed"


def test_hooks_without_context_injection_print_nothing(hooks):
    _previous_session(hooks)
    started = hooks.run("session-start", {"session_id": "quiet-1"})
    assert started.stdout == ""
    pre = hooks.run("pre-tool-use", {"session_id": "quiet-1", "tool_name": "Read",
                                     "tool_input": {"file_path": "src/http_client.py"}})
    assert pre.stdout == ""
    session = hooks.session_when("quiet-1", "active")  # registered without waiting for the answer
    assert session["project"] == PROJECT


def test_pre_tool_use_injects_file_context(hooks):
    _previous_session(hooks)
    pre = hooks.run("pre-tool-use", {"session_id": "cur-2", "tool_name": "Read",
                                     "tool_input": {"file_path": "src/http_client.py"}},
                    AGENTMEMORY_INJECT_CONTEXT="true")
    expected = hooks.post("/enrich", {"sessionId": "cur-2", "files": ["src/http_client.py"], "terms": [],
                                      "toolName": "Read"})
    assert pre.stdout == (expected.get("context") or "")


def test_a_wrong_secret_stores_nothing(make_hooks):
    hooks = make_hooks("hook-secret")
    hooks.run("prompt-submit", {"session_id": "intruder", "prompt": "let me in"}, AGENTMEMORY_SECRET="wrong")
    hooks.run("session-start", {"session_id": "intruder"}, AGENTMEMORY_SECRET="wrong")
    hooks.run("prompt-submit", {"session_id": "owner", "prompt": "the real user"})
    assert len(hooks.observations("owner", 1)) == 1
    assert [s["id"] for s in hooks.get("/sessions")["sessions"]] == ["owner"]
    # Upstream's hooks exit 0 on the 401, so the server is where the loss shows: counted, alerted.
    denied = hooks.get("/health")["auth"]
    assert denied["denied"] == 2 and denied["byReason"] == {"wrong token": 2}
    assert any("refused without a valid token" in a["message"] for a in hooks.get("/status")["alerts"])
