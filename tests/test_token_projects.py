"""A token's project list, against a real server: a principal's records may lie in projects its
other tokens (or the admin, writing as it) chose, and a token limited to some projects must not
reach the others by id, through a session, an MCP resource or prompt, the viewer's routes or
the live stream. A revoked token is refused at once by every request process and closes the
WebSocket it opened."""

from __future__ import annotations

import json
import time

import requests
from websockets.sync.client import connect

from conftest import hook, post, wait_for
from test_stream import close_code, next_event, recv, ws_url

SECRET = "admin-secret-for-token-projects"
MARK = "qqbetaonlyqq"  # in the text of every record the principal keeps in project beta


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_token(server, **body) -> dict:
    made = post(server.api("/tokens"), body, headers=as_(SECRET))
    assert made.status_code == 201, made.text
    return made.json()


def seed_beta(server, token: str) -> dict[str, str]:
    """One session with an observation, an action, a lesson and a memory in project beta."""
    def ok(path: str, body: dict) -> dict:
        reply = post(server.api(path), body, headers=as_(token))
        assert reply.status_code in (200, 201), (path, reply.text)
        return reply.json()

    ok("/session/start", {"sessionId": "sess-beta", "project": "beta", "cwd": "/beta", "title": f"release {MARK}"})
    ok("/observe", hook("sess-beta", project="beta", cwd="/beta",
                        data={"tool_name": "Bash", "tool_input": {"command": "make"}, "tool_output": MARK}))
    obs = requests.get(server.api("/observations"), params={"sessionId": "sess-beta"}, headers=as_(token), timeout=30)
    action = ok("/actions", {"title": f"ship {MARK}", "project": "beta"})["action"]
    lesson = ok("/lessons", {"content": f"beta lesson {MARK}", "project": "beta"})["lesson"]
    memory = ok("/remember", {"content": f"beta fact {MARK}", "project": "beta"})["memory"]
    return {"obs": obs.json()["observations"][0]["id"], "action": action["id"], "lesson": lesson["id"],
            "memory": memory["id"]}


def test_a_project_token_reaches_none_of_its_principals_records_of_another_project(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    beta = seed_beta(server, make_token(server, principal="bot", projects=["beta"])["token"])
    alpha = make_token(server, principal="bot", projects=["alpha"])["token"]  # the same principal

    def get(path: str, **query) -> requests.Response:
        return requests.get(server.api(path), params=query, headers=as_(alpha), timeout=30)

    def send(path: str, body: dict) -> requests.Response:
        return post(server.api(path), body, headers=as_(alpha))

    # Reads by id or by session: as if the record did not exist.
    assert get("/session", sessionId="sess-beta").status_code == 404
    assert get("/observations", sessionId="sess-beta").json()["observations"] == []
    assert get("/observations/locate", observationId=beta["obs"]).status_code == 404
    assert get("/actions/get", actionId=beta["action"]).status_code == 404
    assert MARK not in get("/viewer/graph").text
    # Writes into another project's records are refused and change nothing.
    assert send("/actions/update", {"actionId": beta["action"], "status": "done"}).status_code == 404
    assert send("/lessons/delete", {"lessonId": beta["lesson"]}).status_code == 404
    moved = send("/session/start", {"sessionId": "sess-beta", "project": "alpha"})
    assert moved.status_code == 403 and moved.json()["code"] == "token_project", moved.text
    into = send("/observe", hook("sess-beta", project="alpha", data={"tool_name": "Bash", "tool_output": "x"}))
    assert into.status_code == 403 and into.json()["code"] == "token_project", into.text
    session = requests.get(server.api("/session"), params={"sessionId": "sess-beta"}, headers=as_(SECRET), timeout=30)
    assert session.json()["session"]["project"] == "beta" and session.json()["session"]["observationCount"] == 1
    lessons = requests.get(server.api("/lessons"), params={"project": "beta"}, headers=as_(SECRET), timeout=30)
    assert [lesson["id"] for lesson in lessons.json()["lessons"]] == [beta["lesson"]]
    # An MCP resource or prompt runs another tool: the project rule applies to that call too.
    for uri in ("agentmemory://project/beta/recent", "agentmemory://project/beta/profile"):
        refused = send("/mcp/resources/read", {"uri": uri})
        assert refused.status_code == 403 and refused.json()["code"] == "token_project", (uri, refused.text)
    latest = send("/mcp/resources/read", {"uri": "agentmemory://memories/latest"})
    assert latest.status_code == 200 and MARK not in latest.text
    prompt = send("/mcp/prompts/get", {"name": "detect_patterns", "arguments": {"project": "beta"}})
    assert prompt.status_code == 403


def test_a_token_for_several_projects_must_name_one(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    seed_beta(server, make_token(server, principal="bot", projects=["beta"])["token"])
    both = make_token(server, principal="bot", projects=["alpha", "gamma"])["token"]
    unnamed = requests.get(server.api("/sessions"), headers=as_(both), timeout=30)
    assert unnamed.status_code == 400 and "alpha, gamma" in unnamed.json()["error"], unnamed.text
    search = post(server.api("/smart-search"), {"query": "beta fact"}, headers=as_(both))
    assert search.status_code == 400 and MARK not in search.text
    named = requests.get(server.api("/sessions"), params={"project": "alpha"}, headers=as_(both), timeout=30)
    assert named.status_code == 200 and named.json()["sessions"] == []


def test_the_live_stream_keeps_to_the_tokens_projects(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    beta = make_token(server, principal="bot", projects=["beta"])["token"]
    alpha = make_token(server, principal="bot", projects=["alpha"])["token"]
    with connect(ws_url(server), additional_headers=as_(alpha), open_timeout=10) as ws:
        assert recv(ws)["type"] == "hello"
        assert post(server.api("/remember"), {"content": f"beta fact {MARK}"}, headers=as_(beta)).status_code == 201
        assert post(server.api("/remember"), {"content": "alpha fact"}, headers=as_(alpha)).status_code == 201
        assert next_event(ws, "memory")["record"]["content"] == "alpha fact"  # beta's came first and was held back
    # A token with the write right alone may not watch: every event carries a record.
    blind = make_token(server, principal="bot", projects=["alpha"], rights=["write"])["token"]
    with connect(ws_url(server), additional_headers=as_(blind), open_timeout=10) as ws:
        code, reason = close_code(ws)
        assert code == 1008 and "'read' right" in reason, (code, reason)


def test_a_revoked_token_closes_the_websocket_it_opened(live_server):
    # Several request processes: the revocation is made on one, the socket may be on another.
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_WORKERS": "2"})
    alpha = make_token(server, principal="bot", projects=["alpha"])
    with connect(ws_url(server, token=alpha["token"]), open_timeout=10) as ws:
        assert recv(ws)["type"] == "hello"
        ws.send(json.dumps({"id": 1, "tool": "memory_sessions", "args": {}}))
        assert recv(ws)["ok"] is True
        revoked = post(server.api("/tokens/revoke"), {"id": alpha["id"]}, headers=as_(SECRET))
        assert revoked.status_code == 200
        code, reason = close_code(ws, timeout=15)  # the socket's process caches the token for 5 s at most
        assert code == 1008 and "revoked" in reason


def test_a_revoked_token_is_refused_at_once_by_every_request_process(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_WORKERS": "2"})
    made = make_token(server, principal="bot", projects=["alpha"])
    here, there = sessions_on_two_processes(server)
    with here, there:
        for session in (here, there):  # each process now holds the token in its 5-second cache
            assert session.get(server.api("/sessions"), headers=as_(made["token"]), timeout=30).status_code == 200
        revoked = here.post(server.api("/tokens/revoke"), json={"id": made["id"]}, headers=as_(SECRET), timeout=30)
        assert revoked.status_code == 200
        started = time.monotonic()
        wait_for(lambda: there.get(server.api("/sessions"), headers=as_(made["token"]), timeout=30).status_code == 401,
                 timeout=10, message="the other process never refused the revoked token")
        # The revocation's live event empties the other process's cache; its expiry alone took 5 s.
        assert time.monotonic() - started < 3.0


def sessions_on_two_processes(server) -> tuple[requests.Session, requests.Session]:
    """Kept-alive sessions (as the admin) held by two different request processes (a process
    holding a connection leaves the next new one to an idler sibling; see LiveServer)."""
    by_origin: dict[str, requests.Session] = {}
    deadline = time.monotonic() + 60
    while len(by_origin) < 2 and time.monotonic() < deadline:
        session = requests.Session()
        session.headers.update(as_(SECRET))
        origin = session.get(server.api("/health"), timeout=10).json()["live"]["bus"]["origin"]
        if origin in by_origin:
            session.close()
            time.sleep(0.1)
        else:
            by_origin[origin] = session
    assert len(by_origin) == 2, f"connections reached only {sorted(by_origin)}"
    here, there = by_origin.values()
    return here, there
