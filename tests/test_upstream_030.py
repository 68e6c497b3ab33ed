"""The routes and answers upstream agentmemory 0.9.30's clients (hooks, viewer, CLI) use, driven
over HTTP against a real server: durable capture answers (eventId dedup, bootId, acceptedAt,
durableAfterMs), the capture inbox routes, the session lifecycle (final flag, idle finalizer,
reopen, ended:false), paginated memories with nextCursor, forget/governance reporting, the audit
shape, /status (JSON and HTML), /viewer/snapshot, /counts, /graph/node and /observations/locate.
npm only publishes 0.9.29's scripts, so the 0.9.30 client side is reproduced from its documented
protocol (U§1.2, U§4.2, U§5)."""

from __future__ import annotations

import pytest
import requests

from agentmemory_server.adapters.web import create_app
from agentmemory_server.kernel.util import Clock
from conftest import hook, post, wait_for

SECRET = "upstream-030-token"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def capture(server, body: dict) -> requests.Response:
    """What 0.9.30's _capture helper does: POST /observe with an eventId, 200 = duplicate,
    201 = delivered, 408/429/5xx = keep in the spool and resend."""
    return post(server.api("/observe"), body, headers=AUTH)


def test_the_routes_of_0_9_30_clients(live_server):
    server = live_server(env={"AGENTMEMORY_SECRET": SECRET})
    get = lambda path, **params: requests.get(server.api(path), params=params, headers=AUTH, timeout=30)  # noqa: E731

    # Durable capture: a stable event id, answered with the durability mark the hooks keep.
    event = {**hook("s-030"), "eventId": "evh_0123456789abcdef"}
    first = capture(server, event)
    assert first.status_code == 201
    mark = first.json()
    assert 8 <= len(mark["bootId"]) <= 64 and mark["bootId"].isalnum() and mark["durableAfterMs"] == 0
    assert mark["acceptedAt"].endswith("Z") and mark["eventId"] == event["eventId"]
    again = capture(server, event)
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["bootId"] == mark["bootId"]

    # Capture inbox routes.
    inbox = get("/capture").json()
    assert set(inbox["inbox"]) >= {"pending", "dead", "filtered"} and "policy" in inbox and "sinceStart" in inbox
    assert post(server.api("/capture/drain"), {}, headers=AUTH).json()["success"] is True
    assert post(server.api("/capture/retry"), {"all": True}, headers=AUTH).json()["matched"] == 0

    # Session lifecycle: Stop sends final:false, SessionEnd final:true; unknown sessions are not errors.
    turn = post(server.api("/session/end"), {"sessionId": "s-030", "final": False}, headers=AUTH).json()
    assert turn["ended"] is False and turn["reason"] == "turn_end" and turn["session"]["status"] == "active"
    done = post(server.api("/session/end"), {"sessionId": "s-030", "final": True}, headers=AUTH)
    assert done.status_code == 200 and done.json()["ended"] is True
    ghost = post(server.api("/session/end"), {"sessionId": "never-started"}, headers=AUTH)
    assert ghost.status_code == 200 and ghost.json()["ended"] is False
    reopened = capture(server, hook("s-030", timestamp="2026-11-01T11:00:00Z"))
    assert reopened.json()["sessionReopened"] is True
    assert get("/session", sessionId="s-030").json()["session"]["status"] == "active"

    # Memories newest first, page by page with nextCursor.
    ids = [post(server.api("/remember"), {"content": f"distinct fact number {i} about widget{i}"},
                headers=AUTH).json()["memory"]["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        page = get("/memories", limit=2, **({"cursor": cursor} if cursor else {})).json()
        seen += [m["id"] for m in page["memories"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == ids[::-1]

    # Forget and governance report what was not found; the audit has 0.9.30's shape.
    gone = post(server.api("/forget"), {"memoryId": "mem_nope"}, headers=AUTH).json()
    assert gone["notFound"] == ["mem_nope"] and gone["failed"] == 0 and gone["deleted"] == 0
    gov = requests.delete(server.api("/governance/memories"), json={"memoryIds": [ids[0], "mem_nope"]},
                          headers=AUTH, timeout=30).json()
    assert (gov["deleted"], gov["notFound"], gov["failed"], gov["total"]) == (1, ["mem_nope"], 0, 2)
    audit = get("/audit", limit=5).json()
    assert audit["legacyFrozen"] is False and audit["legacyFrozenBytes"] == 0 and audit["entries"]

    # Status, snapshot, counts, locate.
    status = get("/status").json()
    assert status["status"] in ("healthy", "degraded") and isinstance(status["alerts"], list)
    page = requests.get(server.api("/status"), headers={**AUTH, "Accept": "text/html"}, timeout=30)
    assert page.headers["Content-Type"].startswith("text/html") and "<h1>agentmemory" in page.text
    assert "nonce-" in page.headers["Content-Security-Policy"]
    assert get("/status", format="html").headers["Content-Type"].startswith("text/html")
    snap = get("/viewer/snapshot").json()
    assert {"version", "counts", "indexes", "health", "report", "generatedAt"} <= set(snap)
    assert snap["counts"]["memories"] == 4 and get("/counts").json()["counts"]["sessions"] == 1
    obs_id = mark["observationId"]
    where = get("/observations/locate", observationId=obs_id).json()
    assert (where["sessionId"], where["position"], where["offset"]) == ("s-030", 0, 0)
    assert get("/observations/locate", observationId="obs_missing").status_code == 404
    layers = get("/consolidation/status").json()
    assert layers["enabled"] is False and layers["llmConfigured"] is False  # no model provider
    assert (layers["summaries"], layers["relations"], layers["lastRun"]) == (1, 0, None)  # s-030 was summarized
    compact = post(server.api("/graph/compact"), {"scope": "edges"}, headers=AUTH).json()
    assert compact["nextOffset"] is None and compact["compacted"] == 0
    # The viewer's snapshot and status need the token like everything else.
    assert requests.get(server.api("/viewer/snapshot"), timeout=30).status_code == 401


def test_graph_node_shows_a_node_with_its_edges(call):
    sid = "g1"
    for i, path in enumerate(["src/auth.py", "src/auth.py", "src/db.py"]):
        call("agent_observe", **hook(sid, timestamp=f"2026-11-01T10:00:0{i}Z",
                                     data={"tool_name": "Edit", "tool_input": {"file_path": path, "old_string": "a",
                                                                                "new_string": "b"}}))
    call("graph_extract", sessionId=sid)
    nodes = call("memory_graph_query")["nodes"]
    assert nodes
    node = call("graph_node", nodeId=nodes[0]["id"])
    assert node["node"]["id"] == nodes[0]["id"] and isinstance(node["edges"], list)
    for edge in node["edges"]:
        assert nodes[0]["id"] in (edge["sourceNodeId"], edge["targetNodeId"])
    assert {n["id"] for n in node["neighbors"]} <= {n["id"] for n in nodes}


def test_the_idle_finalizer_completes_a_session_after_its_turn_ended(make_runtime):
    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]), finalize_idle_ms=60_000)
    client = create_app(runtime=rt).test_client()
    client.post("/agentmemory/observe", json=hook("idle"))
    client.post("/agentmemory/session/end", json={"sessionId": "idle", "final": False})
    finalizer = rt.services["session_finalizer"]
    now[0] += 30
    assert finalizer.run() == {"due": 0, "finalized": 0}
    client.post("/agentmemory/observe", json=hook("idle", timestamp="2026-11-01T10:05:00Z"))  # still working
    now[0] += 45  # 75 s after the turn ended, 45 s after the last observation: not idle long enough
    assert finalizer.run()["finalized"] == 0
    now[0] += 20
    assert finalizer.run() == {"due": 1, "finalized": 1}
    session = client.get("/agentmemory/session?sessionId=idle").json["session"]
    assert session["status"] == "completed" and "finalizeAfter" not in session
    # A completed session reopens on a new observation, and is finalized again once idle.
    r = client.post("/agentmemory/observe", json=hook("idle", timestamp="2026-11-01T11:00:00Z"))
    assert r.json["sessionReopened"] is True
    reopened = client.get("/agentmemory/session?sessionId=idle").json["session"]
    assert reopened["status"] == "active" and reopened["reopens"] == 1 and "endedAt" not in reopened
    now[0] += 61
    assert finalizer.run()["finalized"] == 1


def test_sessions_without_a_turn_end_are_left_alone(make_runtime):
    now = [1_800_000_000.0]
    rt = make_runtime(clock=Clock(lambda: now[0]), finalize_idle_ms=1000)
    client = create_app(runtime=rt).test_client()
    client.post("/agentmemory/observe", json=hook("busy"))
    now[0] += 3600
    assert rt.services["session_finalizer"].run()["due"] == 0
    assert client.get("/agentmemory/session?sessionId=busy").json["session"]["status"] == "active"


def test_memories_cursor_pages_stay_correct_when_memories_share_a_time(make_runtime):
    rt = make_runtime(clock=Clock(lambda: 1_800_000_000.0))  # every memory gets the same createdAt
    client = create_app(runtime=rt).test_client()
    ids = {client.post("/agentmemory/remember", json={"content": f"unrelated note {i} about topic{i}x"}).json["memory"]["id"]
           for i in range(7)}
    seen, cursor, pages = [], None, 0
    while True:
        page = client.get("/agentmemory/memories?limit=3" + (f"&cursor={cursor}" if cursor else "")).json
        seen += [m["id"] for m in page["memories"]]
        pages += 1
        if pages == 1:
            assert page["total"] == 7 and page["hasMore"] is True
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7 and pages == 3
    assert seen == sorted(ids, reverse=True)  # ties broken by id, newest-looking first
    bad = client.get("/agentmemory/memories?cursor=not-a-cursor")
    assert bad.status_code == 400 and bad.json["details"]["field"] == "cursor"


@pytest.mark.sqlite_only("SQLite's EXPLAIN QUERY PLAN of the listing's statement")
def test_the_memories_listing_uses_its_index(rt, monkeypatch):
    """Issue 14 needs GET /memories to stay fast at 100k+: every page (first or deep) must be an
    index walk on the declared record index, never a scan and sort of the scope."""
    from agentmemory_server.kernel.scopes import MEMORIES
    from agentmemory_server.storage.interfaces import equal

    store = rt.db.reader()
    plans: list[str] = []
    real_execute = store.conn.execute

    class Watch:  # the connection's own plan of the exact statement newest() runs
        def execute(self, sql, params=()):
            if sql.lstrip().startswith("SELECT key, value FROM kv_store"):
                plans.append(" ".join(str(r[-1]) for r in real_execute("EXPLAIN QUERY PLAN " + sql, params)))
            return real_execute(sql, params)

    records = store.records
    monkeypatch.setattr(records, "conn", Watch())
    records.newest(MEMORIES, equal(isLatest=True), by="createdAt", before=None, limit=10)
    records.newest(MEMORIES, equal(), by="createdAt", before=("2026-01-01T00:00:00.000Z", "mem_x"), limit=10)
    assert len(plans) == 2
    for plan in plans:
        assert "USING INDEX kv_idx_" in plan and "TEMP B-TREE FOR ORDER BY" not in plan.replace("RIGHT PART OF ", "X"), plan


def test_the_idle_finalizer_runs_in_a_real_servers_background_worker(live_server):
    """Periodic jobs run in the background worker process (AGENTMEMORY_BACKGROUND=process, the
    default), not in the process serving requests: the finalizer must still complete the session."""
    server = live_server(env={"AGENTMEMORY_FINALIZE_IDLE_MS": "1000"})
    assert post(server.api("/observe"), hook("idle-live")).status_code == 201
    turn = post(server.api("/session/end"), {"sessionId": "idle-live", "final": False}).json()
    assert turn["ended"] is False and turn["session"]["status"] == "active"
    session = lambda: requests.get(server.api("/session"), params={"sessionId": "idle-live"},  # noqa: E731
                                   timeout=10).json()["session"]
    done = wait_for(lambda: (s := session())["status"] == "completed" and s, timeout=60, interval=0.3,
                    message=lambda: f"the session was never finalized; server log:\n{server.log()[-3000:]}")
    assert done["endedAt"] and "finalizeAfter" not in done
    workers = requests.get(server.api("/health"), timeout=10).json()["background"]
    assert workers["runsHere"] is False and workers["supervisor"]["alive"]


def test_consolidation_status_counts_the_layers_and_the_last_run(call):
    for i in range(6):
        call("agent_observe", **hook(f"c{i}", timestamp=f"2026-11-01T10:00:0{i}Z", data={
            "tool_name": "Edit", "tool_input": {"file_path": "src/billing/invoice.py", "old_string": "a",
                                                "new_string": "b"}}))
    before = call("consolidation_status")
    assert before["lastRun"] is None and before["recurringPatterns"] == 0
    assert call("memory_consolidate", minObservations=1)["consolidated"] >= 1
    after = call("consolidation_status")
    assert after["lastRun"] and after["recurringPatterns"] >= 1


def test_graph_compact_trims_imported_provenance_page_by_page(client):
    """Nodes imported from an older upstream may carry thousands of source ids; 0.9.30 caps them
    at 32 and compacts old records with POST /graph/compact."""
    nodes = [{"id": f"gn_{i:02d}", "type": "file", "name": f"src/f{i}.py",
              "sourceObservationIds": [f"obs_{i}_{j}" for j in range(100 if i % 2 else 10)]} for i in range(5)]
    r = client.post("/agentmemory/import", json={"exportData": {"version": "0.9.29", "graphNodes": nodes}})
    assert r.status_code == 200, r.json
    first = client.post("/agentmemory/graph/compact", json={"scope": "nodes", "limit": 3}).json
    assert (first["scanned"], first["compacted"], first["nextOffset"]) == (3, 1, 3)
    rest = client.post("/agentmemory/graph/compact", json={"scope": "nodes", "offset": 3, "limit": 3}).json
    assert (rest["scanned"], rest["compacted"], rest["nextOffset"]) == (2, 1, None)
    kept = client.get("/agentmemory/graph/node?nodeId=gn_01").json["node"]["sourceObservationIds"]
    assert kept == [f"obs_1_{j}" for j in range(32)]
    assert len(client.get("/agentmemory/graph/node?nodeId=gn_00").json["node"]["sourceObservationIds"]) == 10
