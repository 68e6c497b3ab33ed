"""Actions: creation rules, edges, completion unblocking dependants, frontier order, next."""

import pytest

from conftest import ToolCaller
from agentmemory_server.errors import Conflict, InvalidInput, NotFound
from agentmemory_server.kernel.util import Clock

T0 = 1_790_000_000.0


@pytest.fixture
def clocked(make_runtime):
    now = [T0]
    rt = make_runtime(clock=Clock(lambda: now[0]))
    return ToolCaller(rt), now


def test_priority_clamping_and_validation(call):
    assert call("memory_action_create", title="a", priority=0)["action"]["priority"] == 5
    assert call("memory_action_create", title="b", priority=-3)["action"]["priority"] == 1
    assert call("memory_action_create", title="c", priority=15)["action"]["priority"] == 10
    assert call("memory_action_create", title="d")["action"]["status"] == "pending"
    with pytest.raises(InvalidInput) as err:
        call("memory_action_create", title="e", parentId="act_missing")
    assert err.value.details["field"] == "parentId"
    with pytest.raises(InvalidInput) as err:
        call("memory_action_create", title="f", edges=[{"type": "requires", "targetActionId": "act_missing"}])
    assert err.value.details["field"] == "edges[0].targetActionId"
    with pytest.raises(InvalidInput):
        call("memory_action_create", title="g", edges=[{"type": "bogus", "targetActionId": "x"}])


def test_requires_blocks_and_done_unblocks(call):
    schema = call("memory_action_create", title="Write the schema")["action"]
    api = call("memory_action_create", title="Build the API", requires=schema["id"])["action"]
    ui = call("memory_action_create", title="Build the UI", requires=f"{schema['id']},{api['id']}")["action"]
    assert api["status"] == "blocked" and ui["status"] == "blocked"
    out = call("memory_action_update", actionId=schema["id"], status="completed")  # alias of done
    assert out["action"]["status"] == "done" and out["unblocked"] == [api["id"]]
    got = call("action_get", actionId=ui["id"])
    assert got["action"]["status"] == "blocked" and got["blockers"] == [f"requires:{api['id']}"]
    assert call("memory_action_update", actionId=api["id"], status="done")["unblocked"] == [ui["id"]]
    assert call("action_get", actionId=ui["id"])["action"]["status"] == "pending"


def test_frontier_order_with_blockers(clocked):
    call, now = clocked
    low = call("memory_action_create", title="low", priority=2, project="p")["action"]
    high = call("memory_action_create", title="high", priority=8, project="p")["action"]
    blocked = call("memory_action_create", title="blocked", priority=10, project="p", requires=low["id"])["action"]
    call("memory_action_create", title="unlocker", priority=5, project="p",
                    edges=[{"type": "unlocks", "targetActionId": high["id"]}])["action"]
    active = call("memory_action_create", title="active", priority=3, project="p")["action"]
    call("memory_action_update", actionId=active["id"], status="active")
    call("memory_action_create", title="other project", priority=9, project="q")
    now[0] += 10 * 3600  # ten hours old: +5 each
    out = call("memory_frontier", project="p")
    order = [(item["action"]["title"], item["score"]) for item in out["frontier"]]
    # high 80+5, unlocker 50+5+5 (one unlock), active 30+5+15, low 20+5; "blocked" waits for "low".
    assert order == [("high", 85.0), ("unlocker", 60.0), ("active", 50.0), ("low", 25.0)]
    assert out["totalActions"] == 5 and out["totalUnblocked"] == 4
    assert blocked["id"] not in {i["action"]["id"] for i in out["frontier"]}
    call("memory_action_update", actionId=low["id"], status="done")
    titles = [i["action"]["title"] for i in call("memory_frontier", project="p")["frontier"]]
    assert titles[0] == "blocked" and "low" not in titles  # done leaves, the dependant enters at the top
    nxt = call("memory_next", project="p")
    assert nxt["suggestion"]["title"] == "blocked" and nxt["suggestion"]["score"] == 105.0
    assert call("memory_frontier", project="p", limit=1)["frontier"][0]["action"]["title"] == "blocked"


def test_conflicts_with_active_blocks(call):
    a = call("memory_action_create", title="migrate db")["action"]
    b = call("memory_action_create", title="backup db", edges=[{"type": "conflicts_with", "targetActionId": a["id"]}])["action"]
    call("memory_action_update", actionId=a["id"], status="active")
    titles = [i["action"]["title"] for i in call("memory_frontier")["frontier"]]
    assert titles == ["migrate db"] and call("action_get", actionId=b["id"])["blockers"] == [f"conflicts_with:{a['id']}"]
    call("memory_action_update", actionId=a["id"], status="cancelled")
    assert [i["action"]["title"] for i in call("memory_frontier")["frontier"]] == ["backup db"]


def test_next_when_empty_or_all_blocked(call):
    assert call("memory_next")["suggestion"] is None and call("memory_next")["message"] == "no open actions"
    a = call("memory_action_create", title="a")["action"]
    b = call("memory_action_create", title="b", requires=a["id"])["action"]
    call("memory_action_update", actionId=a["id"], status="active")
    call("action_edge_create", sourceActionId=a["id"], targetActionId=b["id"], type="conflicts_with")
    assert call("memory_next")["suggestion"]["title"] == "a"


def test_edges_list_get_and_cycles(client, call):
    parent = call("memory_action_create", title="epic")["action"]
    child = call("memory_action_create", title="story", parentId=parent["id"], tags="x,y")["action"]
    r = client.post("/agentmemory/actions/edges", json={"sourceActionId": child["id"], "targetActionId": parent["id"],
                                                          "type": "requires"})
    assert r.status_code == 201 and call("action_get", actionId=child["id"])["action"]["status"] == "blocked"
    with pytest.raises(Conflict):
        call("action_edge_create", sourceActionId=parent["id"], targetActionId=child["id"], type="requires")
    with pytest.raises(InvalidInput):
        call("action_edge_create", sourceActionId=parent["id"], targetActionId=parent["id"], type="unlocks")
    got = client.get(f"/agentmemory/actions/get?actionId={parent['id']}").json
    assert [c["id"] for c in got["children"]] == [child["id"]] and len(got["edges"]) == 1
    assert client.get("/agentmemory/actions/get?actionId=act_nope").status_code == 404
    listed = client.get(f"/agentmemory/actions?parentId={parent['id']}").json["actions"]
    assert [a["id"] for a in listed] == [child["id"]] and listed[0]["tags"] == ["x", "y"]
    assert [a["id"] for a in client.get("/agentmemory/actions?status=blocked").json["actions"]] == [child["id"]]
    r = client.post("/agentmemory/actions", json={"title": "t", "priority": "high"})
    assert r.status_code == 400 and r.json["details"]["field"] == "priority"
    with pytest.raises(NotFound):
        call("memory_action_update", actionId="act_nope", status="done")
