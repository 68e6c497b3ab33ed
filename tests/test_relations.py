"""Relations between memories: confidence rules, supersede chains, hops."""

import pytest

from agentmemory_server.errors import NotFound
from agentmemory_server.memory.relations import relation_confidence
from agentmemory_server.kernel.util import iso, parse_time

BASE = "The integration tests need a running redis server on port 6379 before pytest starts"


NOW = parse_time("2026-06-01T00:00:00Z")


def _mem(days_old: float, sessions=()):
    from datetime import timedelta

    now = NOW
    return {"id": "m", "sessionIds": list(sessions), "updatedAt": iso(now - timedelta(days=days_old))}


def test_confidence_formula():
    now = parse_time("2026-06-01T00:00:00Z").timestamp()
    assert relation_confidence("related", _mem(30), _mem(30), now) == 0.5
    assert relation_confidence("related", _mem(1, "ab"), _mem(2, "abc"), now) == 0.8  # +0.2 shared, +0.1 fresh
    assert relation_confidence("supersedes", _mem(100, "abcd"), _mem(200, "abcd"), now) == 0.8  # +0.3 -0.1 +0.1
    assert relation_confidence("contradicts", _mem(30), _mem(30), now) == 0.45


def test_supersede_records_a_relation_and_chain(call):
    v1 = call("memory_save", content=BASE, project="api", sessionId="s1")["memory"]
    v2 = call("memory_save", content=BASE + " locally", project="api", sessionId="s1")["memory"]
    v3 = call("memory_save", content=BASE + " locally too", project="api")["memory"]
    assert v3["version"] == 3
    out = call("relations_list", memoryId=v2["id"])
    kinds = {(r["type"], r["sourceId"], r["targetId"]) for r in out["relations"]}
    assert kinds == {("supersedes", v2["id"], v1["id"]), ("supersedes", v3["id"], v2["id"])}
    assert [c["id"] for c in out["chain"]] == [v1["id"], v2["id"], v3["id"]]
    assert [c["isLatest"] for c in out["chain"]] == [False, False, True]
    rel = next(r for r in out["relations"] if r["targetId"] == v1["id"])
    assert rel["confidence"] == 0.8  # 0.5 + 0.1 shared session + 0.1 fresh + 0.1 supersedes
    # Two hops from v1 reach v3's relation too.
    assert len(call("relations_list", memoryId=v1["id"], maxHops=1)["relations"]) == 1
    assert len(call("relations_list", memoryId=v1["id"], maxHops=2)["relations"]) == 2


def test_create_and_list_relations(client, call):
    a = call("memory_save", content="Use Postgres for the orders service")["memory"]
    b = call("memory_save", content="Orders need strict transactional guarantees")["memory"]
    r = client.post("/agentmemory/relations", json={"sourceId": a["id"], "targetId": b["id"], "type": "derives"})
    assert r.status_code == 201 and 0 <= r.json["relation"]["confidence"] <= 1
    again = client.post("/agentmemory/relations", json={"sourceId": a["id"], "targetId": b["id"], "type": "derives",
                                                         "confidence": 0.9})
    assert again.json["relation"]["id"] == r.json["relation"]["id"]  # same triple updates, no duplicate
    client.post("/agentmemory/relations", json={"sourceId": b["id"], "targetId": a["id"], "type": "contradicts",
                                                 "confidence": 0.2})
    listed = client.get("/agentmemory/relations").json
    assert listed["total"] == 2
    assert [x["type"] for x in client.get("/agentmemory/relations?minConfidence=0.5").json["relations"]] == ["derives"]
    got = client.get(f"/agentmemory/relations?memoryId={a['id']}&type=contradicts").json
    assert [x["type"] for x in got["relations"]] == ["contradicts"] and got["memories"][0]["id"] == b["id"]
    r = client.post("/agentmemory/relations", json={"sourceId": a["id"], "targetId": "mem_nope", "type": "related"})
    assert r.status_code == 404 and r.json["details"]["field"] == "targetId"
    r = client.post("/agentmemory/relations", json={"sourceId": a["id"], "targetId": b["id"], "type": "likes"})
    assert r.status_code == 400 and r.json["details"]["field"] == "type"
    with pytest.raises(NotFound):
        call("relations_list", memoryId="mem_nope")


def test_dangling_relations_are_diagnosed_and_healed(call):
    a = call("memory_save", content="Service A talks to the queue")["memory"]
    b = call("memory_save", content="The queue is RabbitMQ in production")["memory"]
    call("relation_create", sourceId=a["id"], targetId=b["id"], type="extends")
    checks = {c["name"]: c for c in call("memory_diagnose", categories="relations")["checks"]}
    assert checks["relation_endpoints"]["status"] == "pass"
    call("memory_forget", memoryId=b["id"])
    checks = {c["name"]: c for c in call("memory_diagnose", categories="relations")["checks"]}
    assert checks["relation_endpoints"]["status"] == "warn" and checks["relation_endpoints"]["fixable"]
    assert call("diagnostics_heal", categories="relations")["fixed"] == 1
    assert call("relations_list")["relations"] == []
