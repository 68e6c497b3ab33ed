"""Raw hook payloads of every client, in the shapes each client documents (tests/fixtures/clients),
through the real endpoint of a real server with auth on: the stored observations, the answers in
each client's own output format, the session lifecycle, and bad input (4xx, never 500).

Claude Code and OpenCode post to the endpoint themselves; the other clients run
``agentmemory hook <client>``, so their payloads go through that command as the client would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from agentmemory_server.adapters import hook_client, hook_spool
from conftest import LiveServer, free_port, post, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "clients"
SECRET = "hook-test-secret-0123456789"
DIRECT = ("claude-code", "opencode")  # clients that post to the endpoint themselves
HOOK_COMMAND = [sys.executable, "-m", "agentmemory_server.adapters.entry", "hook"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    live = LiveServer(tmp_path_factory.mktemp("hooks"), {"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_AUTH": "on",
                                                         "AGENTMEMORY_HOOK_MAX_BODY_BYTES": str(2 << 20)}, [])
    yield live
    live.stop()


def auth(token: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fixture(client: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{client}.json").read_text())


def send(server: LiveServer, client: str, payload: dict[str, Any], event: str | None = None) -> dict[str, Any]:
    """Deliver one payload the way the client does; the answer the client would read."""
    if client in DIRECT:
        response = post(server.api(f"/hooks/{client}"), payload, headers=auth())
        assert response.status_code == 200, response.text
        return response.json()
    argv = [*HOOK_COMMAND, client, "--url", server.url, *(["--event", event] if event else [])]
    env = {**os.environ, "AGENTMEMORY_SECRET": SECRET}
    done = subprocess.run(argv, input=json.dumps(payload), capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return json.loads(done.stdout)


def get(server: LiveServer, path: str, **params: Any) -> Any:
    response = requests.get(server.api(path), params=params, headers=auth(), timeout=10)
    response.raise_for_status()
    return response.json()


def session_id(case: dict[str, Any]) -> str:
    p = case["payload"]
    return p.get("session_id") or p.get("conversation_id") or p.get("taskId") or p.get("sessionId")


def seed_past_session(server: LiveServer, project_cwd: str, words: str) -> None:
    """An ended session of the same project, so a session start has something to hand back."""
    sid = f"seed-{Path(project_cwd).name}"
    body = {"hookType": "post_tool_use", "sessionId": sid, "project": Path(project_cwd).name, "cwd": project_cwd,
            "timestamp": "2026-11-30T10:00:00.000Z",
            "data": {"tool_name": "Edit", "tool_input": {"file_path": "notes.md", "old_string": "TODO", "new_string": words},
                     "tool_response": "The file notes.md has been updated."}}
    assert post(server.api("/observe"), body, headers=auth()).status_code == 201
    assert post(server.api("/session/end"), {"sessionId": sid}, headers=auth()).status_code == 200


CONTEXT_ANSWER = {
    "claude-code": lambda a: a["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    and "<agentmemory-context" in a["hookSpecificOutput"]["additionalContext"],
    "codex": lambda a: "<agentmemory-context" in a["hookSpecificOutput"]["additionalContext"],
    "antigravity": lambda a: "<agentmemory-context" in a["hookSpecificOutput"]["additionalContext"],
    "gemini": lambda a: "<agentmemory-context" in a["hookSpecificOutput"]["additionalContext"],
    "cursor": lambda a: "<agentmemory-context" in a["additional_context"],
    "cline": lambda a: a["cancel"] is False and "<agentmemory-context" in a["contextModification"],
    "copilot": lambda a: a == {},  # Copilot CLI does not read sessionStart output
    "opencode": lambda a: a == {},
}


@pytest.mark.parametrize("client", sorted(CONTEXT_ANSWER))
def test_documented_payloads_become_observations(server: LiveServer, client: str) -> None:
    spec = fixture(client)
    cases = spec["cases"]
    cwd = cases[0]["payload"].get("cwd") or (cases[0]["payload"].get("workspace_roots")
                                            or cases[0]["payload"].get("workspaceRoots"))[0]
    seed_past_session(server, cwd, f"{client} remembered: the deploy needs the staging flag")
    answers = [send(server, client, case["payload"], case.get("event")) for case in cases]

    assert CONTEXT_ANSWER[client](answers[0]), answers[0]
    sid = session_id(cases[0])
    stored = get(server, "/observations", sessionId=sid)["observations"]
    assert [o["hookType"] for o in stored] == [c["hookType"] for c in cases]
    for obs, case in zip(stored, cases, strict=True):
        assert obs["project"] == Path(cwd).name
        name = case.get("event") or case["payload"].get("hook_event_name") or case["payload"].get("hookName")
        assert obs["raw"]["hook_event_name"] == name
        if "title" in case:
            assert obs["title"] == case["title"], obs
    ended = any(c["hookType"] == "session_end" for c in cases) or client == "cline"
    assert get(server, "/session", sessionId=sid)["session"]["status"] == ("completed" if ended else "active")


def test_claude_code_prompt_gets_relevant_memories_and_tool_calls_dedup(server: LiveServer) -> None:
    seed_past_session(server, "/home/u/ledger", "the invoice rounding uses banker's rounding in money.py")
    base = {"session_id": "cc-ledger", "transcript_path": "/t", "cwd": "/home/u/ledger"}
    start = send(server, "claude-code", {**base, "hook_event_name": "SessionStart", "source": "startup"})
    assert "banker" in start["hookSpecificOutput"]["additionalContext"]
    answer = send(server, "claude-code", {**base, "hook_event_name": "UserPromptSubmit", "prompt": "why is invoice rounding off?"})
    relevant = answer["hookSpecificOutput"]["additionalContext"]
    assert answer["hookSpecificOutput"]["hookEventName"] == "UserPromptSubmit"
    assert relevant.startswith("<agentmemory-relevant") and "rounding" in relevant
    tool = {**base, "hook_event_name": "PostToolUse", "tool_name": "Read", "tool_use_id": "toolu_same",
            "tool_input": {"file_path": "money.py"}, "tool_response": {"content": "def round_half_even(): ..."}}
    assert send(server, "claude-code", tool) == {}
    assert send(server, "claude-code", tool) == {}  # a replay of the same tool call
    notify = {**base, "prompt_id": "p-1", "hook_event_name": "Notification", "notification_type": "idle_prompt"}
    send(server, "claude-code", {**notify, "message": "Claude is waiting for your input"})
    send(server, "claude-code", {**notify, "message": "Claude needs your permission"})
    own = {**base, "hook_event_name": "PostToolUse", "tool_name": "mcp__agentmemory__memory_recall",
           "tool_use_id": "toolu_own", "tool_input": {"query": "rounding"}, "tool_response": "..."}
    assert send(server, "claude-code", own) == {}
    stored = get(server, "/observations", sessionId="cc-ledger")["observations"]
    assert [o["hookType"] for o in stored] == ["session_start", "prompt_submit", "post_tool_use", "notification",
                                              "notification"]
    assert stored[2]["files"] == ["money.py"]
    # a notification is titled by what it says; a start, with nothing to say, by its hook alone
    assert stored[3]["title"] == "notification: Claude is waiting for your input"
    assert stored[0]["title"] == "session_start" and stored[0]["narrative"] == "SessionStart (startup)"


def test_bad_hook_input_is_a_4xx_or_stored_as_other(server: LiveServer) -> None:
    url = server.api("/hooks/claude-code")
    assert post(url, b"{not json", headers=auth()).status_code == 400
    assert post(url, [1, 2], headers=auth()).status_code == 400
    missing = post(url, {"hook_event_name": "Stop"}, headers=auth())
    assert missing.status_code == 400 and missing.json()["details"]["field"] == "session_id"
    assert post(url, {"session_id": "s", "hook_event_name": 7}, headers=auth()).status_code == 400
    assert post(server.api("/hooks/vim"), {"session_id": "s"}, headers=auth()).status_code == 400
    huge = post(url, {"session_id": "s", "hook_event_name": "PostToolUse", "tool_response": "x" * (3 << 20)},
                headers=auth())
    assert huge.status_code == 413 and huge.json()["details"]["setting"] == "AGENTMEMORY_HOOK_MAX_BODY_BYTES"
    # over the generic 1 MiB request limit, under the hook limit: accepted and clipped before storing
    big = {"session_id": "cc-big", "hook_event_name": "PostToolUse", "tool_name": "Read", "tool_use_id": "toolu_big",
           "tool_input": {"file_path": "big.log"}, "tool_response": "y" * (1536 << 10)}
    assert post(url, big, headers=auth()).status_code == 200
    unknown = post(url, {"session_id": "cc-big", "hook_event_name": "FutureEvent", "detail": 1}, headers=auth())
    assert unknown.status_code == 200
    stored = get(server, "/observations", sessionId="cc-big")["observations"]
    assert len(json.dumps(stored[0]["raw"])) < 20_000
    assert stored[1]["hookType"] == "other" and stored[1]["raw"]["hook_event_name"] == "FutureEvent"


def test_a_wrong_token_is_refused_and_counted(server: LiveServer) -> None:
    before = get(server, "/health")["auth"]["denied"]
    payload = {"session_id": "cc-wrong", "hook_event_name": "SessionStart", "source": "startup"}
    assert post(server.api("/hooks/claude-code"), payload, headers=auth("wrong")).status_code == 401
    argv = [*HOOK_COMMAND, "codex", "--url", server.url]
    env = {**os.environ, "AGENTMEMORY_SECRET": "also-wrong"}
    done = subprocess.run(argv, input=json.dumps(payload), capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "{}" and "401" in done.stderr
    assert get(server, "/health")["auth"]["denied"] == before + 2
    assert requests.get(server.api("/session"), params={"sessionId": "cc-wrong"}, headers=auth(), timeout=10).status_code == 404


def test_the_hook_command_answers_neutrally_when_the_server_is_down(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("AGENTMEMORY_DATA_DIR", None)
    done = subprocess.run([*HOOK_COMMAND, "cline", "--url", "http://127.0.0.1:9"], input='{"hookName": "TaskStart"}',
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and json.loads(done.stdout) == {"cancel": False}
    folder = tmp_path / ".agentmemory" / "hook-spool"
    assert "not reachable" in done.stderr and f"kept in {folder}" in done.stderr, done.stderr
    (kept,) = folder.glob("*.json")
    assert json.loads(kept.read_text())["payload"]["hookName"] == "TaskStart"


def test_an_event_the_server_did_not_get_is_sent_with_its_own_time_by_the_next_hook(server: LiveServer,
                                                                                    tmp_path: Path) -> None:
    # Before, a hook that found the server stopped (a restart, an upgrade) printed "nothing
    # recorded" and the event was gone.
    env = {**os.environ, "AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_DATA_DIR": str(tmp_path / "agent")}
    folder = tmp_path / "agent" / "hook-spool"

    def hook(url: str, payload: dict[str, Any]) -> str:
        done = subprocess.run([*HOOK_COMMAND, "codex", "--url", url], input=json.dumps(payload), capture_output=True,
                              text=True, timeout=60, env=env)
        assert done.returncode == 0 and json.loads(done.stdout) == {}, done.stdout
        return done.stderr

    base = {"session_id": "cx-spool", "cwd": "/home/u/api", "hook_event_name": "PostToolUse", "model": "gpt-5-codex",
            "turn_id": "turn-1", "tool_name": "Bash"}
    missed = hook(f"http://127.0.0.1:{free_port()}",
                  {**base, "tool_use_id": "call_a", "tool_input": {"command": "cargo test"}, "tool_response": "ok"})
    assert "not reachable" in missed and f"kept in {folder}" in missed, missed
    assert len(list(folder.glob("*.json"))) == 1
    time.sleep(0.05)
    assert hook(server.url, {**base, "tool_use_id": "call_b", "tool_input": {"command": "cargo build"},
                             "tool_response": "built"}) == ""
    wait_for(lambda: not any(folder.iterdir()), timeout=30, message="the kept event was never sent")
    stored = sorted(get(server, "/observations", sessionId="cx-spool")["observations"], key=lambda o: o["timestamp"])
    assert ["cargo test" in stored[0]["title"], "cargo build" in stored[1]["title"]] == [True, True], stored
    assert len(stored) == 2 and "agentmemory_sent_at" not in json.dumps(stored)


def test_a_resent_event_keeps_a_past_time_but_not_a_future_one_and_refusals_are_set_aside(server: LiveServer,
                                                                                         tmp_path: Path) -> None:
    base = {"session_id": "cc-sent", "cwd": "/home/u/shop", "hook_event_name": "PostToolUse", "tool_name": "Bash",
            "tool_response": {"stdout": "ok"}}
    for use, at in (("t-past", "2026-11-02T08:00:00.000Z"), ("t-future", "2999-01-01T00:00:00.000Z"),
                    ("t-junk", "yesterday")):
        payload = {**base, "tool_use_id": use, "tool_input": {"command": f"echo {use}"}, "agentmemory_sent_at": at}
        assert post(server.api("/hooks/claude-code"), payload, headers=auth()).status_code == 200
    # A delivery whose answer was lost, then the resend of the copy the hook kept: one event.
    again = {**base, "tool_use_id": "t-past", "tool_input": {"command": "echo t-past"},
             "agentmemory_sent_at": "2026-11-02T08:00:00.000Z"}
    assert post(server.api("/hooks/claude-code"), again, headers=auth()).status_code == 200
    observed = get(server, "/observations", sessionId="cc-sent")["observations"]
    stored = {o["title"]: o["timestamp"] for o in observed}
    assert len(observed) == 3, observed
    times = {title.split("echo ")[-1]: at for title, at in stored.items()}
    assert times["t-past"] == "2026-11-02T08:00:00.000Z", stored
    assert times["t-future"].startswith("20") and not times["t-future"].startswith("2999"), stored
    assert times["t-junk"] >= times["t-past"], stored
    # Kept payloads the server refuses for good are set aside; the rest are sent.
    folder = tmp_path / "hook-spool"
    assert "kept in" in hook_spool.keep(folder, "claude-code", json.dumps({**base, "tool_use_id": "t-kept"}).encode())
    assert "kept in" in hook_spool.keep(folder, "claude-code", b'{"hook_event_name": "PostToolUse"}')  # no session
    assert "not kept" in hook_spool.keep(folder, "claude-code", b"[1, 2]")
    counts = hook_spool.drain(folder, lambda client, body: hook_client.post(server.url, client, body, SECRET, 10))
    assert counts == {"sent": 1, "refused": 1, "waiting": 0}, counts
    assert [p.suffix for p in folder.iterdir()] == [".refused"]
