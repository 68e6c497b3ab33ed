"""The observation pipeline: dedup, implicit sessions, the per-session cap, agent notes."""


from conftest import hook


def test_observe_stores_compressed_and_stripped(client, rt):
    body = hook(data={"tool_name": "Bash", "tool_input": {"command": "deploy --token=" + "t" * 30},
                      "tool_output": "done"})
    r = client.post("/agentmemory/observe", json=body)
    assert r.status_code == 201, r.json
    obs_id = r.json["observationId"]
    stored = rt.db.reader().records.get("mem:obs:s1", obs_id)
    assert stored["type"] == "command_run" and stored["sessionId"] == "s1"
    assert "t" * 30 not in str(stored) and "[REDACTED_SECRET]" in stored["raw"]["tool_input"]["command"]
    session = rt.db.reader().records.get("mem:sessions", "s1")
    assert session["observationCount"] == 1 and session["project"] == "demo"


def test_same_event_twice_is_a_duplicate(client, rt):
    first = client.post("/agentmemory/observe", json=hook())
    second = client.post("/agentmemory/observe", json=hook())
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json["duplicate"] is True
    assert second.json["observationId"] == first.json["observationId"]
    assert rt.db.reader().records.count("mem:obs:s1") == 1


def test_identical_prompts_at_different_times_are_both_kept(client, rt):
    # The upstream 5-minute content-hash dedup dropped these (issue #1173); we must not.
    for ts in ("2026-11-01T10:00:00Z", "2026-11-01T10:00:05Z", "2026-11-01T10:01:00Z"):
        r = client.post("/agentmemory/observe", json=hook(hook_type="prompt_submit", timestamp=ts,
                                                          data={"prompt": "continue"}))
        assert r.status_code == 201
    assert rt.db.reader().records.count("mem:obs:s1") == 3


def test_host_ids_and_client_event_ids_decide_identity(client, rt):
    a = hook(data={"tool_name": "Read", "tool_use_id": "toolu_1", "tool_input": {"file_path": "a"}})
    b = hook(timestamp="2026-11-02T00:00:00Z",
             data={"tool_name": "Read", "tool_use_id": "toolu_1", "tool_input": {"file_path": "a"}})
    assert client.post("/agentmemory/observe", json=a).status_code == 201
    assert client.post("/agentmemory/observe", json=b).status_code == 200  # same host id
    c = hook(eventId="evt-00000001", data={"tool_name": "Read"})
    d = hook(eventId="evt-00000001", data={"tool_name": "Write"})
    assert client.post("/agentmemory/observe", json=c).status_code == 201
    assert client.post("/agentmemory/observe", json=d).status_code == 200
    bad = client.post("/agentmemory/observe", json=hook(eventId="x"))
    assert bad.status_code == 400 and bad.json["details"]["field"] == "eventId"


def test_implicit_session_and_first_prompt(client, rt):
    client.post("/agentmemory/observe", json=hook("new", "prompt_submit", data={"prompt": "add  OAuth\nlogin"}))
    session = rt.db.reader().records.get("mem:sessions", "new")
    assert session["status"] == "active" and session["firstPrompt"] == "add OAuth login"


def test_cap_is_a_clear_error_and_stores_nothing_more(make_runtime):
    from agentmemory_server.adapters.web import create_app

    rt = make_runtime(max_obs_per_session=3)
    client = create_app(runtime=rt).test_client()
    for i in range(3):
        assert client.post("/agentmemory/observe", json=hook(timestamp=f"2026-01-01T00:00:0{i}Z")).status_code == 201
    r = client.post("/agentmemory/observe", json=hook(timestamp="2026-01-01T00:00:09Z"))
    assert r.status_code == 409 and r.json["code"] == "capacity_exceeded"
    assert "MAX_OBS_PER_SESSION=3" in r.json["error"]
    assert rt.db.reader().records.count("mem:obs:s1") == 3


def test_agent_note_via_mcp_tool(call, rt):
    out = call("agent_observe", sessionId="s9", content="Chose FTS5 over bm25s", type="decision")
    assert out["duplicate"] is False
    obs = rt.db.reader().records.get("mem:obs:s9", out["observationId"])
    assert obs["type"] == "decision" and obs["narrative"] == "Chose FTS5 over bm25s"


def test_note_fields_sent_with_a_hook_event_are_stored_not_dropped(client, rt):
    # A hook event carries its payload in 'data'; a client that sends 'content' (and a title)
    # instead, or beside it, must not lose them.
    untitled = {"sessionId": "s5", "hookType": "post_tool_failure", "content": "lint failed: eslint not found",
                "timestamp": "2026-11-01T10:00:00Z"}
    r = client.post("/agentmemory/observe", json=untitled)
    obs = rt.db.reader().records.get("mem:obs:s5", r.json["observationId"])
    assert obs["title"] == "post_tool_failure: lint failed: eslint not found"
    # Another failure at the same moment is another event, not a duplicate of the first.
    other = client.post("/agentmemory/observe", json={**untitled, "content": "build failed: out of memory"})
    assert other.status_code == 201 and other.json["observationId"] != r.json["observationId"]
    alone = {"sessionId": "s7", "hookType": "post_tool_failure", "content": "migration 0042 deadlocked on orders",
             "title": "migrate failed"}
    r = client.post("/agentmemory/observe", json=alone)
    assert r.status_code == 201, r.json
    obs = rt.db.reader().records.get("mem:obs:s7", r.json["observationId"])
    assert obs["type"] == "error" and obs["title"] == "post_tool_failure: migrate failed"
    assert "migration 0042 deadlocked on orders" in obs["narrative"]
    hits = client.post("/agentmemory/smart-search", json={"query": "deadlocked migration"}).json["results"]
    assert [h["obsId"] for h in hits][:1] == [r.json["observationId"]]

    beside = hook("s8", data={"tool_name": "Bash", "tool_input": {"command": "make deploy"}, "tool_output": "ok"},
                  content="deployed after the freeze was lifted")
    obs_id = client.post("/agentmemory/observe", json=beside).json["observationId"]
    stored = rt.db.reader().records.get("mem:obs:s8", obs_id)
    assert stored["raw"]["tool_output"] == "ok" and stored["raw"]["content"] == "deployed after the freeze was lifted"


def test_an_agent_note_keeps_the_data_sent_beside_it(call, rt):
    out = call("agent_observe", sessionId="s6", content="Chose FTS5 over bm25s", type="decision",
               data={"benchmark": "bench/locomo.py"})
    obs = rt.db.reader().records.get("mem:obs:s6", out["observationId"])
    assert obs["type"] == "decision" and obs["narrative"] == "Chose FTS5 over bm25s"
    assert obs["raw"]["benchmark"] == "bench/locomo.py" and obs["raw"]["content"] == "Chose FTS5 over bm25s"


def test_observations_listing_is_paginated_and_ordered(client):
    for i in range(5):
        client.post("/agentmemory/observe", json=hook(timestamp=f"2026-01-01T00:00:0{4 - i}Z",
                                                      data={"tool_name": f"T{i}"}))
    r = client.get("/agentmemory/observations?sessionId=s1&limit=2&offset=1")
    assert r.status_code == 200
    assert r.json["total"] == 5 and r.json["hasMore"] is True
    stamps = [o["timestamp"] for o in r.json["observations"]]
    assert stamps == sorted(stamps) and len(stamps) == 2


def test_observe_writes_one_audit_row_and_duplicate_none(client, rt):
    client.post("/agentmemory/observe", json=hook())
    client.post("/agentmemory/observe", json=hook())
    entries, total = rt.db.reader().audit.page(operation=None, limit=10, offset=0)
    assert total == 1 and entries[0]["operation"] == "observe" and "mem:sessions/s1" in entries[0]["targetIds"]
