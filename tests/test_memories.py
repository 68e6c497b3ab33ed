"""remember with Jaccard supersede, forget with honest counts, governance delete, audit."""

import threading
import time

import pytest

from conftest import hook
from agentmemory_server.similarity import jaccard

BASE = "The integration tests need a running redis server on port 6379 before pytest starts"


def test_jaccard_rules():
    assert jaccard("a b c", "a b c") == 1.0
    assert jaccard("alpha beta gamma", "delta epsilon zeta") == 0.0
    assert jaccard("ab", "ab") == 1.0 and jaccard("ab", "cd") == 0.0  # empty token sets
    assert jaccard("数据库连接失败了", "数据库连接失败") > 0.5


def test_near_duplicate_supersedes_within_project(call, rt):
    first = call("memory_save", content=BASE, project="api")["memory"]
    second = call("memory_save", content=BASE + " locally", project="api")
    new = second["memory"]
    assert second["superseded"] == first["id"]
    assert new["version"] == 2 and new["parentId"] == first["id"] and new["supersedes"] == [first["id"]]
    old = rt.db.reader().records.get("mem:memories", first["id"])
    assert old["isLatest"] is False and new["isLatest"] is True
    chain = call("memory_get", memoryId=new["id"])["versions"]
    assert [m["id"] for m in chain] == [first["id"], new["id"]]
    # Superseded versions stop showing in search; the latest is found.
    hits = call("memory_recall", query="redis integration tests")["results"]
    assert [h["observation"]["id"] for h in hits if h["kind"] == "memory"] == [new["id"]]


def test_a_near_duplicate_committed_while_remember_waits_for_the_lock_is_superseded(call, rt):
    """remember searches for near-duplicates on a reader, before the writer lock: one committed
    after that search (here: while another transaction holds the lock) is still found."""
    from agentmemory_server.memory import memories

    outcome: dict = {}
    with rt.db.transaction("hold the lock") as tx:
        first = call("memory_save", content=BASE, project="api")["memory"]  # joins this transaction
        seen: list = []
        elsewhere = threading.Thread(target=lambda: seen.append(memories._supersede_target(rt.db.reader(), BASE,
                                                                                          "api", None)))
        elsewhere.start()
        elsewhere.join(timeout=30)
        assert seen == [None]  # another thread's reader does not see it yet

        def remember() -> None:
            outcome["reply"] = call("memory_save", content=BASE + " locally", project="api")

        waiting = threading.Thread(target=remember)
        waiting.start()
        time.sleep(0.3)  # it searches (and finds nothing) and then waits for this transaction
        assert "reply" not in outcome and tx is not None
    waiting.join(timeout=30)
    assert outcome["reply"]["superseded"] == first["id"]
    assert rt.db.reader().records.get("mem:memories", first["id"])["isLatest"] is False


def test_other_project_is_not_superseded_but_unscoped_matches(call):
    a = call("memory_save", content=BASE, project="api")["memory"]
    b = call("memory_save", content=BASE, project="web")
    assert b["superseded"] is None and b["memory"]["version"] == 1
    c = call("memory_save", content=BASE)  # no project: matches any project
    assert c["superseded"] in (a["id"], b["memory"]["id"])


def test_dissimilar_memory_is_new(call):
    call("memory_save", content=BASE, project="api")
    out = call("memory_save", content="Deploys go through the staging cluster first", project="api")
    assert out["superseded"] is None and out["memory"]["version"] == 1


def test_remember_validation_and_stripping(client):
    r = client.post("/agentmemory/remember", json={"content": "   "})
    assert r.status_code == 400 and r.json["details"]["field"] == "content"
    r = client.post("/agentmemory/remember", json={"content": "x", "type": "nonsense"})
    assert r.status_code == 201 and r.json["memory"]["type"] == "fact"  # upstream coerces (U§4.4)
    r = client.post("/agentmemory/remember", json={"content": "key AKIAIOSFODNN7EXAMPLE", "concepts": "aws,keys",
                                                   "ttlDays": 3})
    assert r.status_code == 201
    mem = r.json["memory"]
    assert "AKIA" not in mem["content"] and mem["concepts"] == ["aws", "keys"] and mem["forgetAfter"]


def test_forget_memory_observations_and_session_counts(client, call, rt):
    mem = call("memory_save", content="remember me")["memory"]
    ids = [client.post("/agentmemory/observe", json=hook(timestamp=f"2026-01-01T00:00:0{i}Z")).json["observationId"]
           for i in range(3)]
    with rt.db.transaction("test") as tx:
        tx.records.set("mem:summaries", "s1", {"sessionId": "s1"}, now="x")
    out = call("memory_forget", sessionId="s1", observationIds=[ids[0], "obs_missing"])
    assert out["deleted"] == 1 and out["notFound"] == ["obs_missing"]
    assert rt.db.reader().records.get("mem:sessions", "s1")["observationCount"] == 2
    out = call("memory_forget", memoryId=mem["id"], sessionId="s1")
    assert out["details"] == {"memories": 1, "observations": 2, "sessions": 1, "summaries": 1}
    assert out["deleted"] == 5
    store = rt.db.reader()
    assert store.records.count("mem:obs:s1") == 0 and store.records.get("mem:sessions", "s1") is None
    assert call("memory_recall", query="pytest passed")["results"] == []
    again = call("memory_forget", memoryId=mem["id"])
    assert again["deleted"] == 0 and again["notFound"] == [mem["id"]]


def test_forgotten_event_replay_stays_a_duplicate(client, call):
    first = client.post("/agentmemory/observe", json=hook())
    call("memory_forget", sessionId="s1", observationIds=[first.json["observationId"]])
    assert client.post("/agentmemory/observe", json=hook()).status_code == 200


def test_forget_needs_a_target(client):
    r = client.post("/agentmemory/forget", json={})
    assert r.status_code == 400
    r = client.post("/agentmemory/forget", json={"observationIds": ["a"]})
    assert r.status_code == 400 and r.json["details"]["field"] == "sessionId"


def test_governance_delete_and_audit_reason(client, call):
    keep = call("memory_save", content="keep this one")["memory"]["id"]
    drop = call("memory_save", content="drop this other thing")["memory"]["id"]
    r = client.delete("/agentmemory/governance/memories", json={"memoryIds": [drop, "mem_nope"], "reason": "GDPR"})
    assert r.status_code == 200 and r.json["deleted"] == 1 and r.json["notFound"] == ["mem_nope"]
    assert client.get(f"/agentmemory/memories/{keep}").status_code == 200
    assert client.get(f"/agentmemory/memories/{drop}").status_code == 404
    entries = client.get("/agentmemory/audit?operation=governance_delete").json["entries"]
    assert entries[0]["details"]["reason"] == "GDPR" and entries[0]["details"]["deleted"] == [drop]
    r = client.delete("/agentmemory/governance/memories", json={"memoryIds": []})
    assert r.status_code == 400


@pytest.mark.parametrize("op,make", [
    ("observe", lambda c, call: c.post("/agentmemory/observe", json=hook())),
    ("remember", lambda c, call: call("memory_save", content="a fact")),
    ("session_start", lambda c, call: c.post("/agentmemory/session/start", json={"sessionId": "z"})),
])
def test_every_mutation_is_audited(client, call, op, make):
    before = client.get("/agentmemory/audit").json["total"]
    make(client, call)
    audit = client.get("/agentmemory/audit").json
    assert audit["total"] == before + 1 and audit["entries"][0]["operation"] == op
    assert audit["entries"][0]["targetIds"]


def test_memories_listing(call, client):
    for i in range(3):
        call("memory_save", content=f"distinct memory number {i} about topic{i}", project="p")
    r = client.get("/agentmemory/memories?limit=2&latest=true")
    assert r.json["total"] == 3 and len(r.json["memories"]) == 2 and r.json["hasMore"]
