"""The live stream: the hub in-process, and /stream/mem-live/viewer on a real server process
(event shapes, auth by query / header / first message, replay after reconnect, the viewer
limit, a client that never reads, shutdown)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import ToolCaller, hook, post, wait_for
from agentmemory_server.errors import CapacityExceeded
from agentmemory_server.kernel.events import Hub
from agentmemory_server.kernel.util import Clock

STREAM = "/stream/mem-live/viewer"


# -- the hub, in-process -------------------------------------------------------------------------------


def test_a_client_that_never_reads_is_dropped_and_writers_finish():
    hub = Hub(queue_size=5)
    stuck = hub.subscribe()
    reader = hub.subscribe()
    received = []

    def drain() -> None:
        while len(received) < 50:
            event = reader.get(timeout=5)
            assert event is not None, "the reading client stopped getting events"
            received.append(event)

    thread = threading.Thread(target=drain)
    thread.start()
    for i in range(50):
        hub.publish("observation", {"i": i})  # would hang here if a full queue blocked writers
        # let the reader keep up; only `stuck` lags
        wait_for(lambda: reader.queue.qsize() < 4, interval=0.001, message="the reading client stopped draining")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert stuck.dropped and not reader.dropped
    assert [e["record"]["i"] for e in received] == list(range(50))
    assert [e["seq"] for e in received] == list(range(1, 51))
    stats = hub.stats()
    assert stats["clients"] == 1 and stats["droppedClients"] == 1 and stats["published"] == 50
    reader.close()
    assert hub.client_count == 0


def test_replay_since_a_seq_and_gaps_older_than_the_ring():
    hub = Hub(queue_size=100, replay_size=10)
    for i in range(15):
        hub.publish("memory", {"i": i})
    sub = hub.subscribe(since=12)
    assert sub.complete and sub.replayed == 3 and sub.start_seq == 15
    assert [sub.get(0)["seq"] for _ in range(3)] == [13, 14, 15]
    assert sub.get(0) is None
    old = hub.subscribe(since=2)  # 3..5 fell out of the ring
    assert not old.complete and old.replayed == 10
    future = hub.subscribe(since=99)  # a seq from an earlier server run
    assert not future.complete and future.replayed == 0
    current = hub.subscribe(since=15)
    assert current.complete and current.replayed == 0


def test_max_clients_refuses_one_more_socket():
    hub = Hub(max_clients=2)
    hub.open_socket()
    hub.open_socket()
    with pytest.raises(CapacityExceeded) as err:
        hub.open_socket()
    assert err.value.code == "too_many_viewers" and "AGENTMEMORY_MAX_VIEWERS=2" in err.value.message
    assert hub.stats()["refusedClients"] == 1 and hub.stats()["sockets"] == 2
    hub.close_socket()
    hub.open_socket()  # a freed slot can be taken again
    assert hub.stats()["sockets"] == 2


# -- what gets published (in-process) -----------------------------------------------------------------


def drain(sub, rt) -> list[tuple[str, dict]]:
    """What ``sub`` received so far. With several processes (or PostgreSQL) events reach viewers
    through the database's event log: wait until this runtime's own have come back."""
    if rt.bus is not None:
        assert rt.bus.flush(), "this runtime's events did not come back through the event log"
    events = []
    while (event := sub.get(timeout=0)) is not None:
        events.append((event["type"], event["record"]))
    return events


def test_changed_actions_are_published_too(rt, call):
    sub = rt.hub.subscribe()
    first = call("memory_action_create", title="Write the migration")["action"]
    second = call("memory_action_create", title="Deploy it")["action"]
    drain(sub, rt)
    call("action_edge_create", sourceActionId=second["id"], targetActionId=first["id"], type="requires")
    assert [(t, r["id"], r["status"]) for t, r in drain(sub, rt)] == [("action", second["id"], "blocked")]
    call("memory_action_update", actionId=first["id"], status="done")
    published = {r["id"]: r["status"] for t, r in drain(sub, rt) if t == "action"}
    assert published == {first["id"]: "done", second["id"]: "pending"}  # the unblocked one too


def test_reflected_slots_and_decayed_lessons_are_published(make_runtime):
    from conftest import ToolCaller

    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]))
    call = ToolCaller(rt)
    call("agent_observe", sessionId="refl", hookType="post_tool_use", project="p",
         data={"tool_name": "Edit", "tool_input": {"file_path": "src/app.py"}, "tool_output": "TODO: add tests"})
    lesson = call("memory_lesson_save", content="Check the flags before deploying", confidence=0.6)["lesson"]
    sub = rt.hub.subscribe()
    call("memory_reflect", sessionId="refl")
    slots = [r for t, r in drain(sub, rt) if t == "slot"]
    assert slots and {s["label"] for s in slots} <= {"pending_items", "session_patterns", "project_context"}
    now[0] += 21 * 86400  # three weeks without reinforcement
    call("lesson_decay")
    decayed = [r for t, r in drain(sub, rt) if t == "lesson"]
    assert [d["id"] for d in decayed] == [lesson["id"]] and decayed[0]["confidence"] < 0.6


def test_auto_forget_publishes_what_it_removed(make_runtime):
    from conftest import ToolCaller

    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]))
    call = ToolCaller(rt)
    mem = call("memory_save", content="temporary note about the sprint", ttlDays=1)["memory"]
    sub = rt.hub.subscribe()
    now[0] += 2 * 86400
    call("auto_forget")
    forgets = [r for t, r in drain(sub, rt) if t == "forget"]
    assert forgets and forgets[0]["memoryIds"] == [mem["id"]] and forgets[0]["reason"] == "auto_forget"


# -- over the wire ---------------------------------------------------------------------------------------


def ws_url(server, **query) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return server.url.replace("http", "ws") + STREAM + (f"?{q}" if q else "")


def recv(ws, timeout: float = 10) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def next_event(ws, event_type: str, timeout: float = 10) -> dict:
    """The next message of ``event_type`` (other event types in between are skipped)."""
    def matching() -> dict | None:
        message = recv(ws, 0.5)
        return message if message.get("type") == event_type else None

    return wait_for(matching, timeout=timeout, interval=0, ignore=(TimeoutError,),
                    message=f"no {event_type!r} event arrived")


def close_code(ws, timeout: float = 10) -> tuple[int | None, str]:
    """Read until the server closes; return its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    frame = closed.value.rcvd
    return (frame.code, frame.reason) if frame else (None, "")


def test_event_shapes_for_every_record_type_on_main(live_server):
    server = live_server()
    with connect(ws_url(server), open_timeout=10) as ws:
        hello = recv(ws)
        assert hello["type"] == "hello" and hello["complete"] is True and hello["seq"] == 0
        assert hello["version"] and hello["epoch"] and hello["auth"] is False
        post(server.api("/session/start"), {"sessionId": "shape", "project": "demo", "title": "shapes"})
        event = next_event(ws, "session")
        assert set(event) == {"type", "seq", "ts", "record"} and event["record"]["id"] == "shape"
        post(server.api("/observe"), hook("shape"))
        obs = next_event(ws, "observation")["record"]
        assert obs["sessionId"] == "shape" and obs["id"].startswith("obs_") and obs["title"]
        first = post(server.api("/remember"), {"content": "Deploys need the staging flag set first", "project": "demo"}).json()
        assert next_event(ws, "memory")["record"]["id"] == first["memory"]["id"]
        second = post(server.api("/remember"), {"content": "Deploys need the staging flag set first today",
                                                "project": "demo"}).json()
        assert second["superseded"] == first["memory"]["id"]
        old, new = next_event(ws, "memory")["record"], next_event(ws, "memory")["record"]
        assert (old["id"], old["isLatest"], old["supersededBy"]) == (first["memory"]["id"], False, new["id"])
        assert (new["version"], new["parentId"]) == (2, old["id"])
        post(server.api("/forget"), {"memoryId": new["id"]})
        assert next_event(ws, "forget")["record"]["deleted"]["memories"] == 1
        post(server.api("/session/end"), {"sessionId": "shape"})
        assert next_event(ws, "session")["record"]["status"] == "completed"


# Routes of the memory model: (record type, POST path, body, how to find the record).
MODEL_WRITES = [
    ("lesson", "/lessons", {"content": "Run migrations before the app starts", "confidence": 0.7}, "content"),
    ("slot", "/slot", {"label": "stream_test_slot", "content": "live slot", "scope": "global"}, "label"),
    ("action", "/actions", {"title": "Rotate the staging keys"}, "title"),
]


@pytest.mark.parametrize("event_type,path,body,field", MODEL_WRITES, ids=[w[0] for w in MODEL_WRITES])
def test_event_shapes_for_lessons_slots_and_actions(live_server, event_type, path, body, field):
    server = live_server()
    with connect(ws_url(server), open_timeout=10) as ws:
        recv(ws)
        r = post(server.api(path), body)
        assert r.status_code in (200, 201), f"POST /agentmemory{path}: {r.status_code} {r.text}"
        event = next_event(ws, event_type)
        assert set(event) == {"type", "seq", "ts", "record"}
        assert event["record"][field] == body[field]


def test_auth_by_query_header_and_first_message(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": "stream-secret"})
    assert requests.get(server.url + STREAM).status_code == 401  # a plain GET still needs the token
    with connect(ws_url(server, token="stream-secret"), open_timeout=10) as ws:
        assert recv(ws)["auth"] is True
    with connect(ws_url(server), additional_headers={"Authorization": "Bearer stream-secret"}, open_timeout=10) as ws:
        assert recv(ws)["type"] == "hello"
    with connect(ws_url(server), open_timeout=10) as ws:
        ws.send(json.dumps({"type": "auth", "token": "stream-secret"}))
        assert recv(ws)["type"] == "hello"
        post(server.api("/observe"), hook("auth-msg"), headers={"Authorization": "Bearer stream-secret"})
        assert next_event(ws, "observation")["record"]["sessionId"] == "auth-msg"
    for first in ({"type": "auth", "token": "wrong"}, {"id": 1, "tool": "memory_sessions", "args": {}}, "not json"):
        with connect(ws_url(server), open_timeout=10) as ws:
            ws.send(first if isinstance(first, str) else json.dumps(first))
            code, reason = close_code(ws)
            assert code == 1008 and "unauthorized" in reason
    with pytest.raises(Exception) as refused:  # a wrong query token fails the handshake itself
        connect(ws_url(server, token="wrong"), open_timeout=10)
    assert "401" in str(refused.value)


def test_a_socket_waiting_for_its_token_holds_a_viewer_slot(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": "slot-secret", "AGENTMEMORY_MAX_VIEWERS": "1"})
    auth = {"Authorization": "Bearer slot-secret"}
    with connect(ws_url(server), open_timeout=10) as waiting:  # upgraded, no auth message yet
        wait_for(lambda: requests.get(server.api("/health"), headers=auth, timeout=10).json()["live"]["sockets"] == 1)
        with connect(ws_url(server, token="slot-secret"), open_timeout=10) as refused:
            code, reason = close_code(refused)
        assert code == 1013 and "AGENTMEMORY_MAX_VIEWERS=1" in reason
        waiting.send(json.dumps({"type": "auth", "token": "slot-secret"}))
        assert recv(waiting)["type"] == "hello"
    wait_for(lambda: requests.get(server.api("/health"), headers=auth, timeout=10).json()["live"]["sockets"] == 0)


def test_reconnect_with_since_replays_what_was_missed(live_server):
    server = live_server()
    with connect(ws_url(server), open_timeout=10) as ws:
        hello = recv(ws)
        post(server.api("/observe"), hook("rc", timestamp="2026-01-01T00:00:00Z"))
        last_seen = next_event(ws, "observation")["seq"]
    for i in range(3):  # published while the viewer is away
        post(server.api("/observe"), hook("rc", timestamp=f"2026-01-01T00:00:0{i + 1}Z"))
    with connect(ws_url(server, since=last_seen, epoch=hello["epoch"]), open_timeout=10) as ws:
        again = recv(ws)
        assert again["complete"] is True and again["replayed"] >= 3
        missed = [recv(ws) for _ in range(again["replayed"])]
        assert [m["seq"] for m in missed] == list(range(last_seen + 1, again["seq"] + 1))
        assert sum(m["type"] == "observation" for m in missed) == 3
    with connect(ws_url(server, since=last_seen, epoch="from-another-run"), open_timeout=10) as ws:
        stale = recv(ws)
        assert stale["complete"] is False and stale["replayed"] == 0


def test_max_viewers_refuses_with_a_reason_and_rest_keeps_working(live_server):
    server = live_server(env={"AGENTMEMORY_MAX_VIEWERS": "2", "AGENTMEMORY_THREADS": "4"})
    with connect(ws_url(server), open_timeout=10) as one, connect(ws_url(server), open_timeout=10) as two:
        recv(one), recv(two)
        with connect(ws_url(server), open_timeout=10) as three:
            code, reason = close_code(three)
        assert code == 1013 and "AGENTMEMORY_MAX_VIEWERS" in reason
        assert requests.get(server.api("/health"), timeout=10).json()["live"]["clients"] == 2
        assert post(server.api("/observe"), hook("busy")).status_code == 201
        assert next_event(one, "observation")["record"]["sessionId"] == "busy"
    wait_for(lambda: health(server)["clients"] == 0)
    with connect(ws_url(server), open_timeout=10) as again:
        assert recv(again)["type"] == "hello"


def health(server) -> dict:
    return requests.get(server.api("/health"), timeout=10).json()["live"]


def raw_upgrade(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again (tiny receive
    buffer, so the server's sends back up quickly)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_client_that_never_reads_is_dropped_without_blocking_writers(live_server):
    server = live_server(env={"AGENTMEMORY_VIEWER_QUEUE": "8", "AGENTMEMORY_VIEWER_SEND_TIMEOUT": "2",
                              "AGENTMEMORY_THREADS": "3", "AGENTMEMORY_MAX_VIEWERS": "2",
                              "MAX_OBS_PER_SESSION": "5000"})
    stuck = raw_upgrade(server.port)
    try:
        _flood_past_a_stuck_client(server)
    finally:
        stuck.close()


def _flood_past_a_stuck_client(server) -> None:
    wait_for(lambda: health(server)["clients"] == 1)
    big = "x" * 40_000
    with connect(ws_url(server), open_timeout=10, max_size=None) as reader:
        recv(reader)
        got: list[int] = []
        for i in range(150):
            r = post(server.api("/observe"), hook("flood", timestamp=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                                                  data={"tool_name": "Bash", "tool_input": f"{i} {big}"}))  # under the field cap
            assert r.status_code == 201  # every writer completes while one client is stuck
            got.append(next_event(reader, "observation")["seq"])
        assert got == sorted(got) and len(got) == 150
        wait_for(lambda: health(server)["droppedClients"] >= 1)
        assert health(server)["clients"] == 1  # the dropped client left the hub's count
    # Its blocked send times out, so its socket and thread are freed too: with 3 threads, two new
    # viewers and a REST call still fit.
    wait_for(lambda: health(server)["clients"] == 0 and health(server)["sockets"] == 0)
    with connect(ws_url(server), open_timeout=10) as a, connect(ws_url(server), open_timeout=10) as b:
        assert recv(a)["type"] == recv(b)["type"] == "hello"
        assert requests.get(server.api("/sessions"), timeout=10).json()["total"] == 1


def test_sigterm_closes_open_streams_with_going_away(live_server):
    server = live_server()
    with connect(ws_url(server), open_timeout=10) as ws:
        recv(ws)
        os.killpg(server.proc.pid, signal.SIGTERM)
        code, reason = close_code(ws, timeout=20)
    assert code == 1001 and "shutting down" in reason
    assert server.proc.wait(timeout=20) == 0


def test_an_unexpected_exception_on_a_call_answers_an_error(rt):
    """A handler that fails with a non-AppError (here: a damaged lesson record makes lesson
    ranking divide strings) answers internal_error with the request id; nothing closes."""
    from agentmemory_server.adapters.web import _ws_request
    from agentmemory_server.retrieval import search

    lesson = {"id": "lsn_damaged", "content": "cache warmup", "confidence": "high", "createdAt": "2026-01-01"}
    with rt.db.transaction("test") as tx:
        tx.records.set("mem:lessons", lesson["id"], lesson, now="x")
        search.index_record(tx, "lesson", lesson)
    reply = _ws_request(rt, json.dumps({"id": "q1", "tool": "memory_lesson_recall", "args": {"query": "cache"}}))
    error_id = reply["details"]["errorId"]
    assert reply == {"id": "q1", "ok": False, "error": f"internal error; see the server log for errorId={error_id}",
                     "code": "internal_error", "status": 500, "details": {"errorId": error_id}}
    assert _ws_request(rt, '{"id": 2, "tool": "memory_sessions"}')["ok"] is True


def test_a_socket_closed_here_after_an_unanswered_ping_ends_its_reader_without_an_error(monkeypatch):
    # The library's ping timer closes a peer that stopped answering; when this side has closed the
    # socket since the last ping (a viewer over the limit, lagging, a server stopping), the timer's
    # close raised ConnectionClosed and the reader thread died with a traceback in the server's log.
    from simple_websocket import Server

    from agentmemory_server.adapters.stream import ReaderThread

    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    ours, peer = socket.socketpair()
    environ = {"gunicorn.socket": ours, "HTTP_HOST": "127.0.0.1", "HTTP_CONNECTION": "Upgrade",
               "HTTP_UPGRADE": "websocket", "HTTP_SEC_WEBSOCKET_VERSION": "13",
               "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode()}
    ws = Server.accept(environ, ping_interval=0.2, thread_class=ReaderThread)
    try:
        peer.settimeout(5)
        seen = b""
        while b"\x89" not in seen.split(b"\r\n\r\n", 1)[-1]:  # the upgrade's answer, then a ping frame
            seen += peer.recv(4096)
        ws.close()  # this side closes, as the hub does; the peer never answers the ping
        ws.thread.join(timeout=5)
        assert not ws.thread.is_alive() and not ws.connected
        assert errors == []
    finally:
        peer.close()
        ours.close()  # the server (gunicorn) closes the connection's socket when the handler returns


def test_a_socket_closed_here_before_its_reader_registers_it_ends_the_reader_without_an_error(monkeypatch):
    # A viewer over the limit is closed right after the handshake; when that close came before
    # the library's reader thread registered the socket with its selector, the registration
    # failed (EBADF, EINVAL) and the thread died with a traceback in the server's log (seen in the
    # suite's hostile-connections test). Here the socket's descriptor is closed just before the
    # reader's first step, as that race leaves it.
    from simple_websocket import Server

    from agentmemory_server.adapters.stream import ReaderThread

    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    ours, peer = socket.socketpair()

    class ClosedFirst(ReaderThread):
        def run(self) -> None:
            os.close(ours.fileno())  # the descriptor goes; the socket object still names it
            super().run()

    environ = {"gunicorn.socket": ours, "HTTP_HOST": "127.0.0.1", "HTTP_CONNECTION": "Upgrade",
               "HTTP_UPGRADE": "websocket", "HTTP_SEC_WEBSOCKET_VERSION": "13",
               "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode()}
    try:
        ws = Server.accept(environ, ping_interval=0.2, thread_class=ClosedFirst)
        ws.thread.join(timeout=5)
        assert not ws.thread.is_alive()
        assert errors == []
    finally:
        peer.close()
        ours.detach()  # its descriptor is already closed


def test_a_call_over_the_socket_refused_while_an_import_runs_names_the_import(live_server, tmp_path):
    """A write over the viewer's WebSocket that waited out its lock wait behind a replace import
    (a real CLI import, paused with SIGSTOP while it holds the write lock) answers the same
    503 ``database_busy`` envelope as REST: its message and ``details.heldBy`` name the import
    (what, which process), not only the write lock."""
    from test_cli import _import_caught_midway, _memory_lines, env_of  # noqa: F401 - the import's set-up
    from test_transfer import _answered_within

    server = live_server(env={"AGENTMEMORY_LOCK_WAIT_SECONDS": "1", "AGENTMEMORY_BACKGROUND_JOBS": "false"})
    lines = _memory_lines(tmp_path / "new.jsonl", 6000, "new")
    with connect(ws_url(server), open_timeout=10) as ws:
        assert recv(ws)["type"] == "hello"
        importer = _import_caught_midway(server.db_path, lines, "--strategy", "replace", "--batch", "5")
        importer.send_signal(signal.SIGSTOP)  # held midway: its transaction and the write lock stay taken
        try:
            ws.send(json.dumps({"id": 7, "tool": "memory_save", "args": {"content": "saved over the socket"}}))
            answer = _answered_within(60, lambda: next(
                message for message in iter(lambda: recv(ws, 60), None) if message.get("id") == 7))
        finally:
            importer.send_signal(signal.SIGCONT)
            _out, err = importer.communicate(timeout=120)
    assert importer.returncode == 0, err
    assert answer["ok"] is False and (answer["status"], answer["code"]) == (503, "database_busy"), answer
    held_by = answer["details"].get("heldBy")
    assert held_by is not None and held_by["pid"] == importer.pid, answer
    assert held_by["operation"] == "an import (replace) of new.jsonl", held_by
    assert answer["error"].startswith("an import (replace) of new.jsonl is running on this store since"), answer


def test_a_record_stored_with_a_lone_surrogate_reaches_the_viewer_with_it_replaced(tmp_path, live_server):
    """A record stored before requests were cleaned (here: made in process, where nothing cleans)
    can hold a lone surrogate, which UTF-8 cannot carry. Before, publishing it failed to encode
    on the socket: the viewer's stream ended, and its replay failed the same way at every
    reconnection. It is sent with the surrogate replaced by "?", as a request's would be stored."""
    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.wiring import build_runtime

    data_dir = tmp_path / "stored-before"
    rt = build_runtime(Settings.from_env({}, data_dir=str(data_dir), auth="off", embedding_provider="none",
                                         background_jobs=False))
    try:
        action_id = ToolCaller(rt)("memory_action_create", title="old \ud800 record")["action"]["id"]
    finally:
        rt.close()
    server = live_server(env={"AGENTMEMORY_DATA_DIR": str(data_dir)})
    with connect(ws_url(server), open_timeout=10) as ws:
        recv(ws)
        r = post(server.api("/actions/update"), {"actionId": action_id, "status": "done"})
        assert r.status_code == 200, r.text
        assert next_event(ws, "action")["record"]["title"] == "old ? record"
        post(server.api("/actions"), {"title": "after it"})
        assert next_event(ws, "action")["record"]["title"] == "after it"  # the stream goes on
