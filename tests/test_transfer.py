"""Export and import: round trip, strategies, upstream documents, validation."""

import hashlib
import json
import os

import pytest

from conftest import ToolCaller, hook, jobs_waiting, periodic_run_due_now


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


# -- the batched storage writes of a bulk import: the same rows as one at a time ------------------

NOW = "2026-11-02T08:00:00.000Z"
PICTURES = [b"\x89PNG first picture", b"\x89PNG second picture"]


def _doc(doc_id: str, kind: str = "observation", session: str | None = "s1", **extra) -> dict:
    scope = "mem:memories" if kind == "memory" else f"mem:obs:{session}"
    return {"doc_id": doc_id, "kind": kind, "scope": scope, "key": doc_id, "session_id": session,
            "project": "p", "agent_id": None, "type": "note", "ts": f"2026-11-01T00:00:{len(doc_id):02d}Z",
            "active": True, "global": False, **extra}


def _text(words: str) -> dict:
    return {"title": words.split()[0], "body": words, "concepts": "", "files": "src/a.py", "context": ""}


def _seed_conflicts(rt) -> tuple[list[str], int]:
    """Rows the batch then changes: a record, a search row (another kind, image linked), an image."""
    ids = [hashlib.sha256(data).hexdigest() for data in PICTURES]
    with rt.db.transaction("seed") as tx:
        for image_id, data in zip(ids, PICTURES):
            tx.images.put(image_id, "image/png", data, NOW)
        tx.records.set("mem:memories", "mem_old", {"id": "mem_old", "content": "before"}, now=NOW)
        tx.records.set("mem:obs:s1", "obs_keep", {"id": "obs_keep"}, now=NOW)
        old = tx.index.upsert(_doc("mem_old", kind="observation"), _text("heron before the batch"))
        tx.index.upsert(_doc("obs_keep"), _text("untouched by the batch"))
        tx.images.link(old, [ids[0]])
    return ids, old


def _batch_items() -> tuple[list, list]:
    records = [
        ("mem:obs:s1", "obs_1", {"id": "obs_1", "narrative": "ibis one"}),
        ("mem:memories", "mem_old", {"id": "mem_old", "content": "after"}),  # conflict: updated
        ("mem:obs:s2", "obs_2", {"id": "obs_2", "tags": ["ünïcode", "\u2028"]}),
        ("mem:obs:s1", "obs_1", {"id": "obs_1", "narrative": "ibis one, again"}),  # repeated: later wins
    ]
    rows = [
        (_doc("obs_1"), _text("ibis one")),
        (_doc("mem_old", kind="memory", session=None, active=False), _text("heron after the batch")),  # kind changes
        (_doc("obs_2", session="s2", **{"global": True}), _text("yak two")),
    ]
    return records, rows


def _write_records(tx, batched: bool, records, rows) -> list[int]:
    """The records and their search rows, through the batch methods or one at a time."""
    if batched:
        tx.records.set_many(records, now=NOW)
        return tx.index.upsert_many(rows)
    for scope, key, value in records:
        tx.records.set(scope, key, value, now=NOW)
    return [tx.index.upsert(doc, text) for doc, text in rows]


def _write_batch(rt, batched: bool, images: list[str]) -> list[int]:
    records, rows = _batch_items()
    with rt.db.transaction("batch") as tx:
        rowids = _write_records(tx, batched, records, rows)
        links = [(rowids[0], [images[1], images[0]]), (rowids[1], [images[1]]), (rowids[2], [])]
        if batched:
            tx.images.link_many(links)
        else:
            for rowid, image_ids in links:
                tx.images.link(rowid, image_ids)
    return rowids


def _stored_state(rt, images: list[str]) -> dict:
    """Everything the writes leave, read through the repositories (any backend)."""
    reader = rt.db.reader()
    feed = rt.db.lexical._feeds.reading()
    audit = reader.audit.page(operation="batch", limit=5, offset=0)[0]
    return {
        "records": reader.records.list_prefix(""),
        "search rows": sorted(tuple(row) for row in feed.documents_after(0, 1000)),
        "all rows": sorted(tuple(sorted(d.items())) for d in reader.index.lookup(["obs_1", "mem_old", "obs_2"], {})),
        "kinds": reader.index.kind_counts(),
        "outbox": [rowid for _seq, rowid in feed.entries_after(0)],
        "backlog": reader.vectors.backlog_stats(),
        "image refs": [reader.images.get(i)["refs"] for i in images],
        "audit targets": [(e["targetIds"], e["details"]) for e in audit],
    }


def test_batched_storage_writes_leave_the_rows_of_single_writes(make_runtime, tmp_path, backend):
    """records.set_many, index.upsert_many and images.link_many (the bulk import's writes) against
    set / upsert / link one at a time: a record updated and one repeated in the batch, a search row
    changing kind and going inactive, new rows, links added, swapped and dropped; every row, the
    per-kind counts, the change feed to the lexical engine (order included), the embedding
    backlog and the audit trail come out the same."""
    states, rowids = [], []
    for name, batched in (("single", False), ("batched", True)):
        rt = make_runtime(data_dir=str(tmp_path / name), embedding_provider="hash")
        images, _old = _seed_conflicts(rt)
        rowids.append(_write_batch(rt, batched, images))
        states.append(_stored_state(rt, images))
    assert rowids[1] == rowids[0]
    assert states[1] == states[0]
    single = states[0]
    assert ("mem:obs:s1", "obs_1", {"id": "obs_1", "narrative": "ibis one, again"}) in single["records"]
    assert ("mem:memories", "mem_old", {"id": "mem_old", "content": "after"}) in single["records"]
    assert single["kinds"] == {"observation": 3, "memory": 1} and single["image refs"] == [1, 2]
    assert single["backlog"]["pending"] == 4 and len(single["outbox"]) == 5  # mem_old keeps its rowid


def _tables(rt) -> dict:
    """Every row the writes touch, straight from the SQLite file (the backlog's wall-clock
    stamp and the outbox's time left out)."""
    import sqlite3

    queries = {
        "kv_store": "SELECT scope, key, value, updated_at FROM kv_store ORDER BY scope, key",
        "search_docs": "SELECT * FROM search_docs ORDER BY id",
        "search_fts": "SELECT rowid, title, body, concepts, files, context FROM search_fts ORDER BY rowid",
        "search_counts": "SELECT kind, n FROM search_counts ORDER BY kind",
        "embed_backlog": "SELECT doc_rowid, attempts, next_try, last_error FROM embed_backlog ORDER BY doc_rowid",
        "lexical_outbox": "SELECT seq, rowid FROM lexical_outbox ORDER BY seq",
        "image_links": "SELECT doc_rowid, image_id FROM image_links ORDER BY doc_rowid, image_id",
    }
    conn = sqlite3.connect(rt.settings.database_path)
    try:
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}
    finally:
        conn.close()


@pytest.mark.sqlite_only
def test_sqlite_batches_with_repeats_and_a_full_backlog_match_single_writes(make_runtime, tmp_path):
    """Beyond what the interface promises (distinct doc_ids and rowids in a batch), SQLite's
    batched writes give a repeated doc_id or rowid the effect of writing it again, and ask the
    embedding backlog's bound row by row: every table row is the one single writes leave."""
    dumps, shed, images, old = _repeated_batch(make_runtime, tmp_path, bound=4, drained=False)
    assert dumps[1] == dumps[0]
    assert shed[1] == shed[0]
    rowids, tables = dumps[0]
    assert rowids[0] == rowids[3] and len(set(rowids)) == 4  # the repeated doc_id kept its row
    assert (rowids[0], "ibis", "ibis one rewritten") in [r[:3] for r in tables["search_fts"]]
    assert len(tables["embed_backlog"]) == 3  # the bound of 4 counts each queued row: the rest were shed
    assert tables["image_links"] == sorted([(old, images[0]), (rowids[0], images[0])])


@pytest.mark.sqlite_only
def test_sqlite_batches_recount_a_drained_backlog_as_single_writes_do(make_runtime, tmp_path, monkeypatch):
    """Another process (the background worker) drained the backlog, so this process's count of
    it is stale: the bound recounts, and that count must see the rows the batch queued before
    it, as one at a time would (counted too early, a batch of 20 let 3 rows past a bound of 2)."""
    from agentmemory_server.storage.sqlite import bounds

    monkeypatch.setattr(bounds, "RECOUNT_SECONDS", 0.0)
    dumps, shed, _images, _old = _repeated_batch(make_runtime, tmp_path, bound=3, drained=True)
    assert dumps[1] == dumps[0]
    assert shed[1] == shed[0]
    assert len(dumps[0][1]["embed_backlog"]) == 3 and shed[0]["embed_backlog"]["shed"] == 2


def _repeated_batch(make_runtime, tmp_path, *, bound: int, drained: bool):
    """The batch with a repeated doc_id and rowid, written one at a time then batched, into
    stores whose embedding backlog holds ``bound`` rows (emptied behind the store's back first
    when ``drained``): (rowids, tables) and queue stats of each, the image ids, the seeded rowid."""
    import sqlite3

    records, rows = _batch_items()
    rows = [*rows, (_doc("obs_1"), _text("ibis one rewritten")), (_doc("obs_3"), _text("ibis three"))]
    dumps, shed = [], []
    for name, batched in (("single", False), ("batched", True)):
        rt = make_runtime(data_dir=str(tmp_path / name), embedding_provider="hash", embed_backlog_max=bound)
        images, old = _seed_conflicts(rt)
        if drained:
            other = sqlite3.connect(rt.settings.database_path)
            other.execute("DELETE FROM embed_backlog")
            other.commit()
            other.close()
        with rt.db.transaction("batch") as tx:
            rowids = _write_records(tx, batched, records, rows)
            links = [(rowids[0], [images[1]]), (old, [images[0]]), (rowids[0], [images[0]]), (rowids[2], [])]
            if batched:
                tx.images.link_many(links)
            else:
                for rowid, image_ids in links:
                    tx.images.link(rowid, image_ids)
        dumps.append((rowids, _tables(rt)))
        shed.append(rt.db.queue_stats())
    return dumps, shed, images, old


def _seed_working_memory(call, session: str = "ses_wm") -> dict:
    """Keys (one with a TTL), task state, a scratchpad and a checkpoint in one scope; returns
    what the working-memory tools read back."""
    scope = {"sessionId": session, "project": "démo"}
    call("memory_working_set", key="plan", value={"steps": ["a", "b"], "note": "日本語 🎉"}, **scope)
    call("memory_working_set", key="draft", value="short-lived", ttlSeconds=3600, **scope)
    call("memory_working_task", operation="set", taskId="t1", description="ship it", totalSteps=3, **scope)
    call("memory_working_scratchpad", operation="append", content="first thought", **scope)
    call("memory_working_checkpoint", operation="create", description="before the change", **scope)
    call("memory_working_scratchpad", operation="append", content="second thought", **scope)
    return _working_state(call, scope)


def _working_state(call, scope: dict) -> dict:
    draft = call("memory_working_get", key="draft", **scope)
    return {
        "keys": call("memory_working_get", operation="all", **scope)["values"],
        "draftExpiresAt": draft.get("expiresAt"),
        "task": call("memory_working_task", operation="get", **scope)["task"],
        "scratchpad": call("memory_working_scratchpad", operation="get", withTimestamps=True, **scope)["entries"],
        "checkpoints": call("memory_working_checkpoint", operation="list", **scope)["checkpoints"],
    }


def test_working_memory_survives_an_export_and_import_into_a_fresh_store(client, call, make_runtime, tmp_path):
    """Working memory lives in its own tables: the export carries it (``working``), an import
    into an empty store gives back every key, the task, the scratchpad and the checkpoints, a
    second import repeats nothing, and the restored checkpoint still restores."""
    from agentmemory_server.adapters.web import create_app

    before = _seed_working_memory(call)
    export = client.get("/agentmemory/export").json
    assert [(e["project"], e["sessionId"]) for e in export["working"]] == [("démo", "ses_wm")]
    fresh = make_runtime(data_dir=str(tmp_path / "fresh"))
    other = create_app(runtime=fresh).test_client()
    for _ in range(2):  # merge twice: idempotent
        r = other.post("/agentmemory/import", json={"exportData": export, "strategy": "merge"})
        assert r.status_code == 200 and r.json["counts"]["working"] == {"imported": 1, "skipped": 0}
    theirs = ToolCaller(fresh)
    scope = {"sessionId": "ses_wm", "project": "démo"}
    assert _working_state(theirs, scope) == before
    assert other.get("/agentmemory/export").json["working"] == export["working"]
    checkpoint = before["checkpoints"][0]["checkpointId"]
    theirs("memory_working_checkpoint", operation="restore", checkpointId=checkpoint, **scope)
    assert [e["content"] for e in _working_state(theirs, scope)["scratchpad"]] == ["first thought"]


def test_a_replace_import_leaves_working_memory_as_the_export_had_it(client, call):
    """``replace`` makes working memory what the file holds: a key added to an exported scope
    since the export is gone, the scratchpad is the file's (not the file's after ours), and a
    scope the file does not hold is emptied, like the records the file does not hold."""
    scope = {"sessionId": "ses_wm", "project": "démo"}
    before = _seed_working_memory(call)
    export = client.get("/agentmemory/export").json
    call("memory_working_set", key="added-later", value=1, **scope)
    call("memory_working_scratchpad", operation="append", content="third thought", **scope)
    call("memory_working_task", operation="update_progress", advance=2, **scope)
    elsewhere = {"sessionId": "ses_other", "project": "démo"}
    call("memory_working_set", key="not-in-the-file", value=2, **elsewhere)
    call("memory_working_scratchpad", operation="append", content="not in the file", **elsewhere)
    r = client.post("/agentmemory/import", json={"exportData": export, "strategy": "replace"})
    assert r.status_code == 200 and r.json["counts"]["working"] == {"imported": 1, "skipped": 0}
    assert _working_state(call, scope) == before
    assert call("memory_working_get", operation="all", **elsewhere)["values"] == {}
    assert call("memory_working_scratchpad", operation="get", **elsewhere)["entries"] == []
    assert client.get("/agentmemory/export").json["working"] == export["working"]


def test_a_bad_working_memory_entry_is_refused_naming_it(client, call):
    export = client.get("/agentmemory/export").json
    bad = {**export, "working": [{"project": "p", "agentId": "a", "sessionId": "s", "keys": [{"key": "_x", "value": 1}]}]}
    r = client.post("/agentmemory/import", json={"exportData": bad})
    assert r.status_code == 400 and "exportData.working[0].keys" in r.json["error"]


def _lines(path, *documents, end=True):
    """A JSON Lines export: the header, one line a document, the end line."""
    from agentmemory_server.memory import transfer

    rows = [{"version": transfer.FORMAT_VERSION, **({"endMarker": True} if end else {})}, *documents]
    if end:
        rows.append({"end": {"lines": len(documents)}})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _memory(word, i):
    return {"memories": [{"id": f"mem_{word}{i}", "content": f"{word} widget note {i}", "type": "fact",
                          "isLatest": True, "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}]}


def test_a_json_lines_replace_import_failing_on_a_late_line_leaves_the_old_store(call, tmp_path):
    """A replace import of a JSON Lines file is all or nothing like that of a document: a bad line
    found after several batches were written leaves the old records, working memory and search
    index, not a wiped store holding the file's first part. The whole file then replaces it."""
    from agentmemory_server.errors import InvalidInput
    from agentmemory_server.kernel.registry import Ctx
    from agentmemory_server.operations import maintenance

    call("memory_save", content="old widget note")
    call("memory_working_set", sessionId="w", key="old", value="kept")
    good = [_memory("new", i) for i in range(7)]
    bad = _lines(tmp_path / "bad.jsonl", *good, {"sessions": [{"no": "id"}]}, end=False)
    with pytest.raises(InvalidInput, match=r"line 9: ") as refused:
        maintenance.import_lines(Ctx(call.rt, source="cli"), bad, "replace", batch=2)
    assert [m["content"] for m in call("memory_export")["memories"]] == ["old widget note"]
    assert "nothing was imported: the store is as it was" in refused.value.message
    assert call("memory_working_get", sessionId="w", operation="all")["values"] == {"old": "kept"}
    call.rt.db.flush()
    hits = [h["observation"]["id"] for h in call("memory_recall", query="widget")["results"]]
    assert len(hits) == 1 and not hits[0].startswith("mem_new")  # the index has no record the rollback took back
    whole = _lines(tmp_path / "good.jsonl", *good)
    result = maintenance.import_lines(Ctx(call.rt, source="cli"), whole, "replace", batch=2)
    assert result["imported"] == 7
    assert sorted(m["content"] for m in call("memory_export")["memories"]) == [f"new widget note {i}" for i in range(7)]
    assert call("memory_working_get", sessionId="w", operation="all")["values"] == {}
    hits = [h["observation"]["id"] for h in call("memory_recall", query="widget", limit=20)["results"]]
    assert sorted(hits) == [f"mem_new{i}" for i in range(7)]


def test_an_import_while_another_holds_the_stores_lease_is_refused_with_409(call, client, make_runtime, tmp_path):
    """One import or migration at a time per store: while another process (here another runtime
    on the same store) holds the lease, POST /import answers 409 transfer_running naming it and
    since when, and imports nothing; a lease whose holder ran on another host and stopped
    refreshing it expires; once released, imports run again."""
    import time

    from agentmemory_server.memory import transfer_lease
    from agentmemory_server.memory.working_transfer import RESERVED_SCOPE

    other = make_runtime(data_dir=call.rt.settings.data_dir)  # the same store, as another process opens it
    body = {"exportData": {"version": "agentmemory-python/1", "memories": [_memory("new", 0)["memories"][0]]},
            "strategy": "replace"}
    with transfer_lease.hold(other, operation="an import (replace) of big.jsonl"):
        r = client.post("/agentmemory/import", json=body)
        assert r.status_code == 409 and r.json["code"] == "transfer_running", r.json
        assert r.json["details"]["running"] == "an import (replace) of big.jsonl" and r.json["details"]["since"]
        assert "an import (replace) of big.jsonl is running on this store since" in r.json["error"]
    assert call("memory_export")["memories"] == []
    for expires, status in ((time.time() + 60, 409), (time.time() - 1, 200)):
        holder = {"id": "x", "operation": "a migration", "since": "2026-01-01T00:00:00Z", "host": "elsewhere",
                  "pid": 1, "expires": expires}
        with call.rt.db.transaction("test") as tx:
            tx.working.kv_put_many(RESERVED_SCOPE, [(transfer_lease.LEASE_KEY, json.dumps(holder), None)], "x")
        assert client.post("/agentmemory/import", json=body).status_code == status
    assert [m["content"] for m in call("memory_export")["memories"]] == ["new widget note 0"]


def test_a_streamed_replace_audits_its_change_count_not_a_target_count_it_cannot_know(call, tmp_path):
    """A JSON Lines replace cuts its list of changes as it goes (bounded memory), so it cannot
    tell distinct targets from a key written twice: its audit row counts changes
    (``changeCount``), and claims no ``targetCount`` (a file naming each of 40 memories twice
    changed 40 records, not 80)."""
    from agentmemory_server.kernel.registry import Ctx
    from agentmemory_server.operations import maintenance

    memories = [_memory("twice", i) for i in range(40)]
    path = _lines(tmp_path / "twice.jsonl", *memories, *memories)
    result = maintenance.import_lines(Ctx(call.rt, source="cli"), path, "replace", batch=7)
    assert result["imported"] == 80
    assert call.rt.db.reader().records.scope_counts() == {"mem:memories": 40}
    row = call.rt.db.reader().audit.page(operation="import", limit=1, offset=0)[0][0]
    assert "targetCount" not in row["details"], row["details"]
    assert row["details"]["changeCount"] == 81  # the wipe and 80 record writes
    assert row["targetIds"][0] == "*/*" and len(row["targetIds"]) == 41  # the first 50 changes, each once


def _answered_within(seconds, work):
    """``work()``'s result, or a failure when it has not returned within ``seconds`` (a hang:
    nothing here takes more than a few seconds when it works)."""
    import threading

    done = {}
    thread = threading.Thread(target=lambda: done.update(result=work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert "result" in done, f"no answer within {seconds} s: it waits for the import to end"
    return done["result"]


def test_while_a_replace_import_runs_reads_are_served_writes_get_a_prompt_503_and_hook_events_are_kept(
    make_runtime, tmp_path
):
    """A JSON Lines replace import is one transaction that holds the store's write lock until it
    commits (minutes for a large file). Meanwhile reads answer, a write waits at most
    AGENTMEMORY_LOCK_WAIT_SECONDS and gets 503 database_busy with Retry-After, a hook event is
    spooled (stored after the import), and a runtime (a server, a CLI command) opened meanwhile
    opens. Before, on PostgreSQL, a write waited for the whole import (an agent's hook gave up
    after 10-15 s and its event was lost), and a SQLite 503 had no Retry-After."""
    import signal
    from pathlib import Path

    from agentmemory_server.adapters.web import create_app
    from test_cli import _import_caught_midway, _memory_lines, env_of

    rt = make_runtime(lock_wait_seconds=1)
    client = create_app(runtime=rt).test_client()
    assert client.post("/agentmemory/remember", json={"content": "the old note about upload retries"}).status_code == 201
    same_store = {"database_url": rt.settings.database_url} if rt.settings.database_url else {"db_path": str(rt.db.path)}
    new = _memory_lines(tmp_path / "new.jsonl", 6000, "new")
    importer = _import_caught_midway(Path(rt.db.path), new, "--strategy", "replace", "--batch", "5", env=env_of(rt))
    importer.send_signal(signal.SIGSTOP)  # held midway: its transaction and the write lock stay taken

    def meanwhile():
        edit = {"session_id": "cc-import", "cwd": "/home/u/shop", "hook_event_name": "PostToolUse",
                "tool_name": "Edit", "tool_use_id": "t-1", "tool_response": {"success": True},
                "tool_input": {"file_path": "/home/u/shop/src/retry.ts", "old_string": "a", "new_string": "b"}}
        other = make_runtime(data_dir=str(tmp_path / "opened-meanwhile"), **same_store)
        return {
            "remember": client.post("/agentmemory/remember", json={"content": "remembered meanwhile"}),
            "hook": client.post("/agentmemory/hooks/claude-code", json=edit),
            "observe": client.post("/agentmemory/observe", json=hook("rest-import", content="observed meanwhile")),
            "search": client.post("/agentmemory/smart-search", json={"query": "old note upload retries"}),
            "opened": other.db.reader().records.count("mem:memories"),
        }

    try:
        answers = _answered_within(60, meanwhile)
    finally:
        importer.send_signal(signal.SIGCONT)
        _out, err = importer.communicate(timeout=120)
    assert importer.returncode == 0, err
    remember = answers["remember"]
    assert remember.status_code == 503 and remember.json["code"] == "database_busy", remember.json
    assert remember.headers["Retry-After"] == "1" and "write lock" in remember.json["error"], remember.json
    assert answers["hook"].status_code == 200, answers["hook"].get_data(as_text=True)
    assert answers["observe"].status_code == 202 and answers["observe"].json["spooled"] is True, answers["observe"].json
    found = answers["search"]
    assert found.status_code == 200 and "the old note" in json.dumps(found.json), found.json  # the store before the import
    assert answers["opened"] == 1  # opened, reading the store as it was before the import
    # After the import: the spooled events are stored (after the replace, so it did not wipe them).
    assert rt.services["capture_retry"].drain_spool()["waiting"] == 0
    assert client.get("/agentmemory/observations?sessionId=cc-import").json["observations"]
    assert client.get("/agentmemory/observations?sessionId=rest-import").json["observations"]
    assert client.post("/agentmemory/remember", json={"content": "remembered after"}).status_code == 201
    assert rt.db.reader().records.count("mem:memories") == 6001


def test_a_write_refused_while_an_import_runs_names_the_import_not_only_the_write_lock(make_runtime, tmp_path):
    """A write that waited out its lock wait behind a replace import answers 503 database_busy
    with Retry-After, as before; before, its message named only the write lock ("stayed taken
    for over 1 s"), so a client could not tell an import from a stuck lock. Now it names the
    import from the store's lease (what, since when, which process), on REST and MCP alike."""
    import signal
    from pathlib import Path

    from agentmemory_server.adapters.web import create_app
    from test_cli import _import_caught_midway, _memory_lines, env_of

    rt = make_runtime(lock_wait_seconds=1)
    client = create_app(runtime=rt).test_client()
    lines = _memory_lines(tmp_path / "new.jsonl", 6000, "new")
    importer = _import_caught_midway(Path(rt.db.path), lines, "--strategy", "replace", "--batch", "5", env=env_of(rt))
    importer.send_signal(signal.SIGSTOP)  # held midway: its transaction and the write lock stay taken
    rpc_body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "memory_save", "arguments": {"content": "saved over MCP meanwhile"}}}
    try:
        answers = _answered_within(60, lambda: (
            client.post("/agentmemory/remember", json={"content": "remembered meanwhile"}),
            client.post("/mcp", json=rpc_body, headers={"Accept": "application/json, text/event-stream"}),
        ))
    finally:
        importer.send_signal(signal.SIGCONT)
        _out, err = importer.communicate(timeout=120)
    assert importer.returncode == 0, err
    rest, mcp = answers
    assert rest.status_code == 503 and rest.json["code"] == "database_busy", rest.json
    assert rest.headers["Retry-After"] == "1" and rest.json["details"]["retryAfterSeconds"] == 1, rest.json
    held_by = rest.json["details"].get("heldBy")
    assert held_by is not None, rest.json
    assert (held_by["operation"], held_by["pid"]) == ("an import (replace) of new.jsonl", importer.pid), held_by
    assert held_by["since"] and held_by["host"], held_by
    message = rest.json["error"]
    assert message.startswith("an import (replace) of new.jsonl is running on this store since"), message
    assert f"process {importer.pid}" in message and "write lock" in message, message
    tool = json.loads(mcp.json["result"]["content"][0]["text"])
    assert mcp.json["result"]["isError"] is True and tool["code"] == "database_busy", mcp.json
    assert tool["details"]["heldBy"]["pid"] == importer.pid, tool
    # Once the import is over, nothing holds the lease: a write goes through.
    assert client.post("/agentmemory/remember", json={"content": "remembered after"}).status_code == 201


def _holding_the_write_lock(rt):
    """Start a long write transaction of ``rt``'s store on a thread, as a replace import's one
    transaction: returns (held, release), ``held`` set once it holds the store's write lock."""
    import threading

    held, release = threading.Event(), threading.Event()

    def long_write():
        with rt.db.transaction("import") as tx:
            tx.records.set("mem:memories", "held", {"id": "held", "content": "held"}, now="2026-01-01T00:00:00Z")
            held.set()
            release.wait(120)

    threading.Thread(target=long_write, daemon=True).start()
    assert held.wait(60)
    return held, release


def test_a_periodic_run_the_database_kept_busy_is_kept_and_run_once_it_is_free_not_counted_a_failure(
    make_runtime, caplog
):
    """A periodic job claimed its run, and then a replace import took the write lock: the job's
    write answered database_busy. Before, that counted as the job's failure (its error stood in
    /health), recording it failed with a traceback, and the run was lost until the next period
    (a day for some jobs). Now the run is kept and done once the database takes writes again."""
    import time

    rt = make_runtime(lock_wait_seconds=1)
    importer = make_runtime()
    holding = {}
    written = []

    def sweep():
        if not holding:
            holding["release"] = _holding_the_write_lock(importer)[1]  # the import starts after the claim
        with rt.db.transaction("sweep") as tx:
            tx.records.set("mem:test", "swept", {"n": 1}, now="2026-01-01T00:00:00Z")
        written.append(1)

    job, status = periodic_run_due_now(rt, "nightly", sweep)
    try:
        rt.jobs._due(job)  # claims the run; the job then finds the database busy
    finally:
        if "release" in holding:
            holding["release"].set()
    assert status()["errors"] == 0 and status()["lastError"] is None, status()
    assert "Traceback" not in caplog.text and "recording background job" not in caplog.text, caplog.text
    rt.jobs._due(job)  # its next poll, once the import is over: the kept run is done
    assert written == [1] and status()["runs"] == 1, status()
    assert rt.db.reader().records.get("mem:test", "swept") == {"n": 1}


def test_while_an_import_keeps_the_worker_from_beating_health_says_it_waits_for_the_database(make_runtime):
    """A worker beats by writing its heartbeat, which a replace import's transaction keeps it
    from until it commits. Before, after 30 s /health said no background worker was alive (and
    the capture spool that nobody drains it); now it names the worker as waiting for the
    database (the import), degraded, and the spool as drained by it."""
    import os
    import socket
    import time

    from agentmemory_server.kernel import background
    from agentmemory_server.kernel.util import Clock
    from agentmemory_server.memory import transfer_lease

    rt = make_runtime(background_jobs=True, background="external")  # the worker is another process
    rt.started_at -= 120  # past the start-up grace, when no worker counts as missing
    began = time.time() - 40  # the import began 40 s ago
    importer = make_runtime(clock=Clock(lambda: began))
    # The worker's last beat, just before the import began; the worker is this live process (its
    # runtime started after the process did: an earlier start would be another process's pid).
    started = background.process_start_epoch(os.getpid()) + 1
    with rt.db.transaction("worker_heartbeat") as tx:
        tx.jobs.worker_beat("node:4242:1", socket.gethostname(), os.getpid(), started, began - 2, {"jobs": []})
    with transfer_lease.hold(importer, operation="an import (replace)"):
        during = ToolCaller(rt)("health")["background"]
        drained_by = rt.services["capture_spool"].drained_by(verify=True)
        check = next(c for c in rt.services["background"].diagnose() if c["name"] == "background-worker")
    assert during["status"] == "degraded" and [w["id"] for w in during["workers"]] == ["node:4242:1"], during
    assert "an import (replace) holds its write lock" in during["waitingFor"], during
    assert drained_by == "worker"
    assert "waiting for the database" in check["message"], check
    after = ToolCaller(rt)("health")["background"]  # no import runs: a worker silent for 42 s is gone
    assert after["workers"] == [] and after["waitingFor"] is None and after["status"] == "degraded"
    assert rt.services["capture_spool"].drained_by(verify=True) == "requests"  # no worker: its request processes


def test_a_worker_killed_while_an_import_holds_the_store_is_gone_not_waiting(make_runtime):
    """A real worker beat, then an import took the store and the worker was killed (SIGKILL).
    Before, /health counted it as waiting for the import (its last beat came before the import
    began) until the import ended, and the capture spool as drained by it: no sign that no worker
    was alive. Now a worker whose process is gone on this host is not alive, waiting or not."""
    import signal
    import subprocess
    import sys
    import time

    from agentmemory_server.kernel.util import Clock
    from agentmemory_server.memory import transfer_lease
    from conftest import wait_for
    from test_cli import env_of

    rt = make_runtime(background_jobs=True, background="external")  # the worker is another process
    rt.started_at -= 120  # past the start-up grace, when no worker counts as missing
    env = {**env_of(rt), "AGENTMEMORY_DATA_DIR": str(rt.settings.data_dir), "AGENTMEMORY_BACKGROUND": "external",
           "EMBEDDING_PROVIDER": "none"}
    worker = subprocess.Popen([sys.executable, "-m", "agentmemory_server.adapters.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        beat = wait_for(lambda: [w for w in rt.db.reader().jobs.workers(0) if w["pid"] == worker.pid], timeout=60,
                        interval=0.2, message="the worker never beat", proc=worker)[0]
        worker.send_signal(signal.SIGKILL)  # dead, not yet reaped by its parent (this test)
        os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)
        began = time.time() - 40  # the import began 40 s ago, 2 s after the worker's last beat
        with rt.db.transaction("worker_heartbeat") as tx:
            tx.jobs.worker_beat(beat["id"], beat["host"], beat["pid"], beat["startedAt"], began - 2, {"jobs": []})
        importer = make_runtime(clock=Clock(lambda: began))
        with transfer_lease.hold(importer, operation="an import (merge)"):
            killed = ToolCaller(rt)("health")["background"]
            drained_by = rt.services["capture_spool"].drained_by(verify=True)
            worker.wait(timeout=10)  # reaped: its id is no process at all now
            reaped = ToolCaller(rt)("health")["background"]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    for during in (killed, reaped):
        assert during["workers"] == [] and during["waitingFor"] is None, during
        assert during["status"] == "degraded", during
    assert drained_by != "worker"


def test_a_model_job_whose_write_found_the_database_busy_is_kept_without_using_an_attempt(
    llm_runtime, make_runtime, caplog
):
    """A model job ran and its write then found the write lock taken (a replace import began):
    database_busy. Before, that was the job's own failure: a traceback in the log and one of its
    few attempts used up (a long import could exhaust them and drop the job). Now it waits like a
    job whose model is down: kept, retried later, no attempt used, no traceback."""
    from agentmemory_server.models import llm, llm_jobs

    rt = llm_runtime(lock_wait_seconds=1)
    importer = make_runtime()
    if "import-busy-test" not in llm_jobs.JOB_KINDS:

        @llm_jobs.job_handler("import-busy-test")
        def _write_while_an_import_holds_the_lock(ctx, ref, args):
            release = _holding_the_write_lock(ctx.rt.test_importer)[1]
            try:
                with ctx.rt.db.transaction("job_write") as tx:
                    tx.records.set("mem:test", ref, {"done": True}, now="2026-01-01T00:00:00Z")
            finally:
                release.set()

    rt.test_importer = importer
    runner = llm.service(rt).jobs
    with rt.db.transaction("queue") as tx:
        runner.enqueue(tx, "import-busy-test", "job-1")
    assert runner.drain_once() == 1
    assert jobs_waiting(rt) == [("import-busy-test", "job-1", 0)]
    assert "LLM job import-busy-test job-1 failed" not in caplog.text and "Traceback" not in caplog.text


def test_an_embedded_batch_whose_write_found_the_database_busy_is_stored_once_the_import_commits(make_runtime):
    """The worker claimed a batch of the vector backlog and embedded it, and a replace import
    took the write lock before the vectors were stored. Before, the batch was dropped with a
    database_busy error and sat under its lease (10 minutes) before it was embedded again; now
    it is stored as soon as the import commits."""
    import threading

    from agentmemory_server.retrieval import vectors

    rt = make_runtime(embedding_provider="hash", lock_wait_seconds=1)
    importer = make_runtime()
    svc = vectors.service(rt)
    ToolCaller(rt)("agent_observe", **hook("embed-busy", content="the deploy script failed on the staging cluster"))
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 1
    taken = []

    def after_the_claim():  # the batch's claim committed: the import begins, and commits a little later
        if not taken:
            taken.append(_holding_the_write_lock(importer)[1])
            threading.Timer(2.0, taken[0].set).start()

    rt.db.on_commit(after_the_claim)
    try:
        assert svc.drain_once() == 1
    finally:
        for release in taken:
            release.set()
    assert taken, "the import never held the lock"
    svc.catch_up()  # (the index follower thread of a server)
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 0 and len(svc.index) == 1


def test_a_busy_write_outside_a_tool_call_names_the_import_through_the_apps_error_handler(make_runtime, tmp_path):
    """The naming of the import was done inside ``registry.call`` only: a route of the app that
    writes without going through a tool (here one the test adds, writing through the runtime's
    store as an adapter would) got the 503 with the bare write-lock message. The app's error
    handler (where its catch-all for raw storage errors ends too) now names the import for every
    route, on SQLite and PostgreSQL."""
    import signal
    from pathlib import Path

    from agentmemory_server.adapters.web import create_app
    from test_cli import _import_caught_midway, _memory_lines, env_of

    rt = make_runtime(lock_wait_seconds=1)
    app = create_app(runtime=rt)

    def write_outside_a_tool():
        with rt.db.transaction("adapter") as tx:
            tx.records.set("mem:test", "x", {"id": "x"}, now="2026-01-01T00:00:00Z")
        return {"ok": True}

    app.add_url_rule("/agentmemory/test-write", "test_write", write_outside_a_tool, methods=["POST"])
    client = app.test_client()
    lines = _memory_lines(tmp_path / "new.jsonl", 6000, "new")
    importer = _import_caught_midway(Path(rt.db.path), lines, "--strategy", "replace", "--batch", "5", env=env_of(rt))
    importer.send_signal(signal.SIGSTOP)
    try:
        answer = _answered_within(60, lambda: client.post("/agentmemory/test-write", json={}))
    finally:
        importer.send_signal(signal.SIGCONT)
        _out, err = importer.communicate(timeout=120)
    assert importer.returncode == 0, err
    assert answer.status_code == 503 and answer.json["code"] == "database_busy", answer.json
    assert answer.json["details"].get("heldBy", {}).get("pid") == importer.pid, answer.json
    assert answer.json["error"].startswith("an import (replace) of new.jsonl is running"), answer.json
