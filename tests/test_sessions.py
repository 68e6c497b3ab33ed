"""Session start/end/list."""

from conftest import hook


def test_start_reopen_end(client, rt):
    r = client.post("/agentmemory/session/start", json={"sessionId": "a", "project": "p", "cwd": "/p"})
    assert r.status_code == 200 and r.json["session"]["status"] == "active"
    assert r.json["context"] == ""
    client.post("/agentmemory/observe", json=hook("a"))
    r = client.post("/agentmemory/session/end", json={"sessionId": "a"})
    assert r.json["ended"] is True and r.json["session"]["status"] == "completed"
    # Reopening keeps the history.
    r = client.post("/agentmemory/session/start", json={"sessionId": "a", "project": "p", "cwd": "/p"})
    assert r.json["session"]["observationCount"] == 1 and "endedAt" not in r.json["session"]


def test_end_unknown_or_completed_session_is_200_not_ended(client):
    """Upstream 0.9.30: a hook ending a session the server does not know (or already ended) gets
    200 {ended: false} with the reason, not an error it would report as a failure."""
    r = client.post("/agentmemory/session/end", json={"sessionId": "ghost"})
    assert r.status_code == 200 and r.json["ended"] is False and r.json["reason"] == "unknown_session"
    client.post("/agentmemory/session/start", json={"sessionId": "done", "project": "p", "cwd": "/p"})
    assert client.post("/agentmemory/session/end", json={"sessionId": "done"}).json["ended"] is True
    r = client.post("/agentmemory/session/end", json={"sessionId": "done"})
    assert r.status_code == 200 and r.json["ended"] is False and r.json["reason"] == "already_completed"


def test_non_final_end_keeps_session_active(client):
    client.post("/agentmemory/session/start", json={"sessionId": "b", "project": "p", "cwd": "/p"})
    r = client.post("/agentmemory/session/end", json={"sessionId": "b", "final": False})
    assert r.json["ended"] is False and r.json["session"]["status"] == "active"
    assert r.json["reason"] == "turn_end" and r.json["finalizeAfter"] > r.json["session"]["updatedAt"]


def test_sessions_pagination_filters_and_summary_join(client, rt):
    for i in range(5):
        client.post("/agentmemory/observe", json=hook(f"s{i}", project="p" if i % 2 else "q"))
    with rt.db.transaction("test") as tx:
        tx.records.set("mem:summaries", "s1", {"sessionId": "s1", "title": "T"}, now="x")
    r = client.get("/agentmemory/sessions?limit=2")
    assert r.json["total"] == 5 and len(r.json["sessions"]) == 2 and r.json["hasMore"]
    r = client.get("/agentmemory/sessions?project=p&limit=10")
    assert {s["id"] for s in r.json["sessions"]} == {"s1", "s3"}
    assert next(s for s in r.json["sessions"] if s["id"] == "s1")["summary"]["title"] == "T"
