"""Floods: a client writing too fast gets 429 with Retry-After while other clients keep writing;
every durable queue is bounded, sheds by a stated policy when full and shows its size in
/health. (The 10-minute soak at the sustainable rate is bench/soak.py, not a test.)"""

from __future__ import annotations

import http.client
import json
import time

import requests
from websockets.sync.client import connect as ws_connect

from conftest import GEMINI_TEST_KEY, LiveServer, ToolCaller, hook, wait_for
from agentmemory_server.models import llm
from agentmemory_server.retrieval import vectors

SECRET = "flood-test-secret-8c1f0a"


def post_from(server: LiveServer, source_ip: str, path: str, body: dict, token: str | None = None):
    """POST from a given loopback address (every 127.x address reaches the server): two clients
    on one machine, told apart the way the server tells clients apart without auth."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30, source_address=(source_ip, 0))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", f"/agentmemory{path}", body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_a_flooding_client_gets_429_and_retry_after_while_another_keeps_writing(tmp_path):
    server = LiveServer(tmp_path, {"AGENTMEMORY_RATE_LIMIT": "5", "AGENTMEMORY_RATE_BURST": "20"}, [])
    try:
        accepted, refused = [], []
        for i in range(60):
            status, headers, body = post_from(server, "127.0.0.2", "/observe", hook("flood", data={"i": i}))
            if status == 201:
                accepted.append(body["observationId"])
            else:
                assert status == 429, body
                refused.append((headers, body))
        assert 20 <= len(accepted) < 30 and refused  # the burst, plus what refilled meanwhile
        headers, body = refused[-1]
        assert body["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
        assert body["details"]["retryAfterSeconds"] == int(headers["Retry-After"])
        # Another client is not held back by the flood, and reads are never limited.
        others = [post_from(server, "127.0.0.3", "/observe", hook("calm", data={"i": i})) for i in range(10)]
        assert [status for status, _h, _b in others] == [201] * 10
        assert requests.get(server.api("/sessions"), timeout=10).status_code == 200
        # After Retry-After the flooding client may write again.
        time.sleep(int(headers["Retry-After"]))
        assert post_from(server, "127.0.0.2", "/observe", hook("flood", data={"i": "late"}))[0] == 201
        # Health shows the limiter; what was refused was not stored.
        health = requests.get(server.api("/health"), timeout=10).json()
        limiter = health["rateLimit"]
        assert limiter["perSecond"] == 5 and limiter["burst"] == 20
        assert limiter["limitedByClient"]["ip:127.0.0.2"] == len(refused) and "ip:127.0.0.3" not in limiter[
            "limitedByClient"]
        stored = requests.get(server.api("/observations"), params={"sessionId": "flood", "limit": 500}).json()
        assert len(stored["observations"]) == len(accepted) + 1
    finally:
        server.stop()


def test_with_auth_the_bucket_is_the_token_and_websocket_calls_count_too(tmp_path):
    server = LiveServer(tmp_path, {"AGENTMEMORY_SECRET": SECRET, "AGENTMEMORY_RATE_LIMIT": "2",
                                   "AGENTMEMORY_RATE_BURST": "5"}, [])
    try:
        statuses = [post_from(server, ip, "/remember", {"content": f"note {i} {ip}"}, SECRET)[0]
                    for i, ip in enumerate(["127.0.0.2", "127.0.0.3"] * 5)]
        assert statuses[:5] == [201] * 5 and 429 in statuses[5:]  # one token, one bucket, whatever the address
        time.sleep(3)
        url = f"ws://127.0.0.1:{server.port}/stream/mem-live/viewer"
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {SECRET}"}, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            replies = []
            for i in range(12):
                ws.send(json.dumps({"id": i, "tool": "memory_save", "args": {"content": f"ws note {i}"}}))
                while True:
                    message = json.loads(ws.recv(timeout=10))
                    if message.get("id") == i:
                        replies.append(message)
                        break
        limited = [r for r in replies if r.get("code") == "rate_limited"]
        assert limited and limited[0]["status"] == 429 and limited[0]["details"]["retryAfterSeconds"] >= 1
        health = requests.get(server.api("/health"), headers={"Authorization": f"Bearer {SECRET}"}).json()
        assert list(health["rateLimit"]["limitedByClient"]) == [health["rateLimit"]["lastLimited"]["client"]]
        assert health["rateLimit"]["lastLimited"]["client"].startswith("token:")
        assert SECRET not in json.dumps(health) and SECRET not in server.log()
    finally:
        server.stop()


def test_a_full_embedding_backlog_sheds_new_rows_which_are_queued_again_once_it_drains(make_runtime, make_hook):
    rt = make_runtime(embedding_provider="hash", embed_backlog_max=5)
    call = ToolCaller(rt)
    ids = [call("agent_observe", **make_hook("b", timestamp=f"2026-05-01T10:00:{i:02d}Z",
                                             data={"tool_output": f"alpha{i} release"}))["observationId"]
           for i in range(12)]
    queues = call("health")["queues"]
    assert queues["embedBacklog"] == {**queues["embedBacklog"], "size": 5, "max": 5, "shed": 7}
    assert "BM25" in queues["embedBacklog"]["whenFull"]
    # The shed counts are the answering process's own, and /health says so.
    assert queues["embedBacklog"]["perProcess"] == ["shed"] and queues["viewerEvents"]["perProcess"] == ["size", "shed"]
    assert call("health")["vectors"]["backlogShed"] == 7
    # Every record is stored and found by BM25 meanwhile.
    assert {r["observation"]["id"] for r in call("memory_recall", query="release", limit=20)["results"]} == set(ids)
    service = vectors.service(rt)
    service.drain()
    assert service.reconcile() == 5  # the shed rows are queued again, still within the bound
    service.drain()
    assert service.reconcile() == 2
    service.drain()
    assert rt.db.reader().vectors.counts() == {f"{service.model}/{service.embedder.dim}": 12}


def test_a_full_model_job_queue_keeps_the_deterministic_result(llm_runtime, make_hook, fake_gemini):
    rt = llm_runtime(auto_compress=True, llm_jobs_max=3)
    call = ToolCaller(rt)
    for i in range(6):
        call("agent_observe", **make_hook("j", timestamp=f"2026-05-01T11:00:{i:02d}Z",
                                          data={"tool_name": "Edit", "tool_input": {"file_path": f"src/m{i}.py"}}))
    assert len(call("memory_observations", sessionId="j")["observations"]) == 6  # all stored, synthetic
    health = call("health")
    assert health["queues"]["llmJobs"]["size"] == 3 and health["queues"]["llmJobs"]["shed"] == 3
    assert health["llm"]["jobs"]["max"] == 3 and health["llm"]["jobs"]["shed"] == 3
    assert fake_gemini.generations() == []  # shedding never calls the model on the request path
    assert GEMINI_TEST_KEY not in json.dumps(health)
    assert llm.service(rt).settings.llm_jobs_max == 3


def test_viewer_event_queues_are_bounded_and_reported(make_runtime):
    rt = make_runtime(viewer_queue_size=3)
    sub = rt.hub.subscribe()
    for i in range(10):
        rt.publish("memory", {"id": f"m{i}"})
    if rt.bus is not None:  # PostgreSQL: events reach this process's viewers through the event log
        assert rt.bus.flush(), "the events did not come back through the event log"
    queues = ToolCaller(rt)("health")["queues"]["viewerEvents"]
    assert queues["max"] == 3 and queues["shed"] == 1 and sub.dropped
    assert "reconnects" in queues["whenFull"]


def test_the_capture_inbox_is_bounded_and_reported(tmp_path, make_hook):
    """Events whose storing fails wait in the capture inbox; a flood of them stops at its bound
    with 503 ``capture_inbox_full`` (the hook keeps the event) and /health shows the queue."""
    from agentmemory_server.adapters.web import create_app
    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.wiring import HOOKS, build_runtime
    from agentmemory_server.kernel.hooks import Hooks

    def failing_store(ctx, tx, obs):  # the observe extension point, failing as a bug would
        raise OSError("disk I/O error (injected)")

    hooks = Hooks(**{**HOOKS.__dict__, "observe": (*HOOKS.observe, failing_store)})
    rt = build_runtime(Settings.from_env({}, data_dir=str(tmp_path / "data"), background_jobs=False,
                                         embedding_provider="none", auth="off", capture_inbox_max=2), hooks=hooks)
    try:
        client = create_app(runtime=rt).test_client()
        statuses = [client.post("/agentmemory/observe", json=make_hook(
            "inbox", timestamp=f"2026-05-01T12:00:{i:02d}Z")).status_code for i in range(5)]
        assert statuses == [202, 202, 503, 503, 503]
        queue = ToolCaller(rt)("health")["queues"]["captureInbox"]
        assert queue["size"] == 2 and queue["max"] == 2 and queue["shed"] == 3
        assert "capture_inbox_full" in queue["whenFull"]
    finally:
        rt.close()


def test_rows_shed_by_a_request_process_get_their_vectors_from_the_background_worker(tmp_path):
    """With the background worker in its own process, the rows a server process sheds are counted
    in that process: it posts its shed count on the activity board, the worker reconciles once
    its backlog drained, and every record ends up with a vector."""
    server = LiveServer(tmp_path, {"EMBEDDING_PROVIDER": "hash", "AGENTMEMORY_EMBED_BACKLOG_MAX": "2"}, [])
    try:
        # First the worker is up and idle (its start-up reconcile would find everything anyway).
        assert requests.post(server.api("/remember"), json={"content": "before the flood"}, timeout=30).ok
        wait_for(lambda: requests.get(server.api("/health"), timeout=30).json()["vectors"]["vectors"] == 1,
                 timeout=60, message="the background worker never embedded the first memory")
        memories = [{"id": f"mem_flood_{i}", "createdAt": "2026-05-01T10:00:00.000Z",
                     "updatedAt": "2026-05-01T10:00:00.000Z", "type": "fact", "title": f"flood note {i}",
                     "content": f"flood note {i} word{i}x", "concepts": [], "files": [], "sessionIds": [],
                     "strength": 5, "version": 1, "isLatest": True} for i in range(20)]
        export = {"version": "agentmemory-python/1", "service": "agentmemory", "memories": memories}
        r = requests.post(server.api("/import"), json={"exportData": export}, timeout=60)
        assert r.status_code == 200, r.text
        health = requests.get(server.api("/health"), timeout=30).json()
        assert health["queues"]["embedBacklog"]["shed"] >= 18  # one transaction: only 2 fit
        wait_for(lambda: requests.get(server.api("/health"), timeout=30).json()["vectors"]["vectors"] == 21,
                 timeout=90,
                 message="the shed rows never got their vectors")
    finally:
        server.stop()
