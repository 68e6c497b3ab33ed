"""Export and import: round trip, strategies, upstream documents, validation."""

import json

from conftest import hook


def seed(client, call):
    for i in range(3):
        client.post("/agentmemory/observe", json=hook(f"s{i % 2}", timestamp=f"2026-01-01T00:00:0{i}Z",
                                                      data={"tool_name": "Edit", "tool_input": {"file_path": f"f{i}.py"}}))
    call("memory_save", content="Use WAL mode for SQLite", project="demo")
    with call.rt.db.transaction("test") as tx:
        tx.records.set("mem:summaries", "s0", {"sessionId": "s0", "title": "Edited files"}, now="x")
        tx.records.set("mem:lessons", "lsn_1", {"id": "lsn_1", "content": "a lesson"}, now="x")


def strip_time(export):
    return {k: v for k, v in export.items() if k != "exportedAt"}


def test_round_trip_into_empty_db_is_identical(client, call, make_runtime, tmp_path):
    from agentmemory_server.adapters.web import create_app

    seed(client, call)
    first = client.get("/agentmemory/export").json
    other = create_app(runtime=make_runtime(data_dir=str(tmp_path / "other"))).test_client()
    r = other.post("/agentmemory/import", json={"exportData": first, "strategy": "merge"})
    assert r.status_code == 200 and r.json["imported"] == 8
    second = other.get("/agentmemory/export").json
    assert json.dumps(strip_time(first), sort_keys=True) == json.dumps(strip_time(second), sort_keys=True)
    # Imported records are searchable and their events stay duplicates.
    assert other.post("/agentmemory/search", json={"query": "WAL SQLite"}).json["results"]
    replay = hook("s0", timestamp="2026-01-01T00:00:00Z",
                  data={"tool_name": "Edit", "tool_input": {"file_path": "f0.py"}})
    assert other.post("/agentmemory/observe", json=replay).status_code == 200


def test_strategies(client, call):
    seed(client, call)
    export = client.get("/agentmemory/export").json
    mem_id = export["memories"][0]["id"]
    with call.rt.db.transaction("test") as tx:
        changed = dict(export["memories"][0], content="locally edited")
        tx.records.set("mem:memories", mem_id, changed, now="x")
    r = client.post("/agentmemory/import", json={"exportData": export, "strategy": "skip"})
    assert r.json["skipped"] == 8 and r.json["imported"] == 0
    assert call("memory_get", memoryId=mem_id)["memory"]["content"] == "locally edited"
    client.post("/agentmemory/import", json={"exportData": export, "strategy": "merge"})
    assert call("memory_get", memoryId=mem_id)["memory"]["content"] == "Use WAL mode for SQLite"
    call("memory_save", content="something new and unrelated")
    r = client.post("/agentmemory/import", json={"exportData": export, "strategy": "replace"})
    assert r.json["imported"] == 8
    assert client.get("/agentmemory/memories").json["total"] == 1


def test_upstream_export_is_accepted(client):
    upstream = {"version": "0.9.29", "exportedAt": "2026-08-01T00:00:00Z",
                "sessions": [{"id": "u1", "project": "up", "cwd": "/u", "startedAt": "2026-08-01T00:00:00Z",
                              "status": "completed", "observationCount": 1}],
                "observations": {"u1": [{"id": "obs_u", "timestamp": "2026-08-01T00:00:00Z", "type": "decision",
                                         "title": "Picked Postgres", "narrative": "Postgres for the ledger",
                                         "facts": [], "concepts": [], "files": [], "importance": 7}]},
                "memories": [], "summaries": [],
                "lessons": [{"id": "lsn_up", "content": "Always run migrations", "confidence": 0.5}]}
    r = client.post("/agentmemory/import", json={"exportData": upstream})
    assert r.status_code == 200 and r.json["counts"]["mem:lessons"]["imported"] == 1
    hits = client.post("/agentmemory/search", json={"query": "ledger database"}).json["results"]
    assert hits[0]["observation"]["id"] == "obs_u"


def test_bad_imports_are_400_and_change_nothing(client, call):
    seed(client, call)
    before = client.get("/agentmemory/export").json
    for body, field in [
        ({"exportData": {"version": "9.9"}}, "exportData.version"),
        ({"exportData": {"version": "0.9.29", "sessions": "nope"}}, "exportData.sessions"),
        ({"exportData": {"version": "0.9.29", "sessions": [{"id": "ok"}, {"no": "id"}]}}, "exportData.sessions[1].id"),
        ({"exportData": {"version": "0.9.29", "observations": {"s": [{"id": 5}]}}}, "exportData.observations.s"),
        ({"strategy": "merge"}, "exportData"),
        ({"exportData": before, "strategy": "overwrite"}, "strategy"),
    ]:
        r = client.post("/agentmemory/import", json=body)
        assert r.status_code == 400, body
        assert r.json["details"]["field"] == field
    after = client.get("/agentmemory/export").json
    assert strip_time(before) == strip_time(after)


def test_export_pagination(client, call):
    seed(client, call)
    page = client.get("/agentmemory/export?maxSessions=1&offset=1").json
    assert len(page["sessions"]) == 1 and page["pagination"]["total"] == 2
    assert "memories" not in page and page["pagination"]["hasMore"] is False


def _observation(n: int, session: str, ts: str, body: str) -> dict:
    return {"id": f"obs_{n}", "sessionId": session, "timestamp": ts, "title": f"step {n}", "narrative": body,
            "type": "command_run", "hookType": "post_tool_use", "project": "p"}


def _search_rows(rt) -> list:
    return sorted(tuple(row) for row in rt.db.lexical._feeds.reading().documents_after(0, 10_000))


def test_a_batch_is_indexed_exactly_as_one_record_at_a_time(make_runtime, tmp_path):
    """The bulk import's batched indexing (search.index_records) writes the same search rows,
    context included, as index_record called for each record in turn: sessions already
    indexed, interleaved sessions, records out of time order, a record repeated, equal
    timestamps, an empty body and a memory naming a session."""
    from agentmemory_server.retrieval import search

    t = "2026-11-01T10:00:{:02d}.000Z".format
    earlier = _observation(0, "old", t(0), "the old session's first step")
    records = [
        ("observation", _observation(1, "old", t(5), "old session resumes with the heron deploy")),
        ("observation", _observation(2, "a", t(1), "a one: compile the ibis module")),
        ("observation", _observation(3, "b", t(1), "b one: run the yak tests")),
        ("observation", _observation(4, "a", t(2), "a two: fix the ibis import")),
        ("memory", {"id": "mem_1", "title": "ibis", "content": "ibis needs python 3.11", "sessionIds": ["a"],
                    "createdAt": t(3), "updatedAt": t(3)}),
        ("observation", _observation(5, "a", t(4), "a three: ibis passes")),
        ("observation", _observation(6, "c", t(9), "c late step first")),
        ("observation", _observation(7, "c", t(3), "c early step second")),
        ("observation", _observation(8, "b", t(2), "")),
        ("observation", _observation(9, "b", t(2), "b tie on the timestamp")),
        ("observation", _observation(4, "a", t(2), "a two again: the ibis import, rewritten")),
        ("observation", _observation(10, "a", t(6), "a four: after the repeat")),
        ("observation", _observation(11, "old", t(7), "old session ends")),
    ]
    stores = [make_runtime(data_dir=str(tmp_path / name)) for name in ("one", "batch")]
    for rt in stores:
        with rt.db.transaction("seed") as tx:
            search.index_record(tx, "observation", earlier)
    with stores[0].db.transaction("one at a time") as tx:
        for kind, record in records:
            search.index_record(tx, kind, record)
    with stores[1].db.transaction("batch") as tx:
        search.index_records(tx, records)
    one, batch = (_search_rows(rt) for rt in stores)
    assert batch == one
    contexts = [row[-1] for row in batch]
    assert len(batch) == 13 and sum(1 for c in contexts if c) == 7
    assert any(c.startswith("a three: ibis passes | ibis needs python") for c in contexts)  # obs 10's
