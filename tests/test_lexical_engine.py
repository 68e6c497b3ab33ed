"""The Tantivy lexical engine: persistent, incremental, crash-consistent with the records, and
answering exactly what FTS5 answers as far as which records match.

Records reach Tantivy through ``lexical_outbox``; until a commit holds them they are scored from
memory (the pending index), so these tests check both paths: before and after ``flush``."""

from __future__ import annotations

import shutil
import signal

import pytest
import requests

from agentmemory_server.adapters.web import create_app
from agentmemory_server.retrieval import search
from conftest import ToolCaller, hook, post, wait_for

WORDS = ["deploy", "server", "cache", "login", "token", "queue", "retry", "build", "schema", "index"]
FILTERS = [
    {}, {"kinds": ["observation"]}, {"kinds": ["memory", "lesson"]}, {"project": "alpha"}, {"agent_id": "ann"},
    {"session_ids": ["s1", "s3"]}, {"exclude_session": "s2"}, {"types": ["error"]}, {"months": [3]},
    {"since": "2026-02-01T00:00:00.000Z"}, {"until": "2026-02-15T00:00:00.000Z"},
    {"project": "beta", "kinds": ["observation"], "agent_id": "bob"},
]


def seed(call: ToolCaller) -> None:
    for i in range(40):
        words = " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7))
        call("agent_observe", sessionId=f"s{i % 4}", hookType="observation", project=["alpha", "beta"][i % 2],
             agentId=["ann", "bob"][i % 3 == 0], timestamp=f"2026-{1 + i % 3:02d}-{1 + i % 28:02d}T10:00:00Z",
             content=f"record {i} about {words}", type="error" if i % 5 == 0 else "discovery")
    call("memory_save", content="the deploy server needs a warm cache", project="alpha")
    call("memory_save", content="global rule: retry the token refresh once")
    call("memory_lesson_save", content="lesson: rebuild the index after a schema change", project="beta")


def matching_ids(rt, query: str, filters: dict) -> set[str]:
    """What matched, by content (two stores give the same records different ids)."""
    store = rt.db.reader()
    hits = search.bm25(store, query, limit=500, filters=filters)
    return {str(record.get("narrative") or record.get("content")) for _hit, record in search.hydrate(store, hits)}


@pytest.fixture
def pair(make_runtime, tmp_path):
    """The same records in a Tantivy store and in an FTS5 store."""
    tantivy_rt = make_runtime(data_dir=str(tmp_path / "t"))
    fts5_rt = make_runtime(data_dir=str(tmp_path / "f"), lexical_engine="fts5")
    for rt in (tantivy_rt, fts5_rt):
        seed(ToolCaller(rt))
    return tantivy_rt, fts5_rt


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_tantivy_matches_what_fts5_matches_before_and_after_commit(pair, filters):
    tantivy_rt, fts5_rt = pair
    for query in ("deploy cache", "token retry schema", "index", "record 7", "nothing-matches-this"):
        expected = matching_ids(fts5_rt, query, filters)
        assert matching_ids(tantivy_rt, query, filters) == expected, (query, "pending")
    tantivy_rt.db.flush()  # now every record is in Tantivy's own index
    assert tantivy_rt.db.health()["lexical"]["pending"] == 0
    for query in ("deploy cache", "token retry schema", "index", "record 7"):
        expected = matching_ids(fts5_rt, query, filters)
        assert matching_ids(tantivy_rt, query, filters) == expected, (query, "committed")


def test_ranking_agrees_with_fts5_on_the_best_hits(pair):
    tantivy_rt, fts5_rt = pair
    tantivy_rt.db.flush()
    for query in ("warm cache deploy", "token refresh", "schema change index"):
        best = search.hydrate(fts5_rt.db.reader(), search.bm25(fts5_rt.db.reader(), query, limit=1))[0][1]
        top = search.hydrate(tantivy_rt.db.reader(), search.bm25(tantivy_rt.db.reader(), query, limit=3))
        assert best.get("content") in [record.get("content") for _hit, record in top], query


def test_edits_deletions_and_wipes_reach_the_index(make_runtime):
    rt = make_runtime()
    call = ToolCaller(rt)
    first = call("memory_save", content="the zebra protocol uses port 7000")["memory"]
    rt.db.flush()
    newer = call("memory_save", content="the zebra protocol uses port 7000 and port 7001")["memory"]
    assert newer["parentId"] == first["id"]  # the old version is inactive now
    for flushed in (False, True):
        if flushed:
            rt.db.flush()
        ids = [h["doc_id"] for h in search.bm25(rt.db.reader(), "zebra protocol", limit=10)]
        assert ids == [newer["id"]], flushed  # the committed old version is hidden at once
    call("memory_forget", memoryId=newer["id"])
    assert search.bm25(rt.db.reader(), "zebra", limit=10) == []
    rt.db.flush()
    assert search.bm25(rt.db.reader(), "zebra", limit=10) == []
    call("memory_save", content="the yak service retries twice")
    rt.db.flush()
    call("import", exportData={"version": "agentmemory-python/1", "kv": {}}, strategy="replace")
    assert search.bm25(rt.db.reader(), "yak", limit=10) == []
    rt.db.flush()
    assert search.bm25(rt.db.reader(), "yak", limit=10) == [] and rt.db.lexical.health()["documents"] == 0


def test_the_index_persists_and_nothing_is_rebuilt_at_start_up(make_runtime, tmp_path):
    data = str(tmp_path / "persist")
    rt = make_runtime(data_dir=data)
    seed(ToolCaller(rt))
    rt.db.flush()
    committed = rt.db.lexical.health()["committedSeq"]
    rt.close()
    again = make_runtime(data_dir=data)
    health = again.db.lexical.health()
    assert health["state"] == "ready" and health["committedSeq"] == committed and health["pending"] == 0
    assert health["documents"] == 43 and matching_ids(again, "deploy", {})


def test_a_missing_index_is_rebuilt_while_fts5_answers(make_runtime, tmp_path):
    data = tmp_path / "lost"
    rt = make_runtime(data_dir=str(data))
    seed(ToolCaller(rt))
    rt.db.flush()
    expected = matching_ids(rt, "deploy cache", {})
    index_dir = rt.db.lexical.dir  # <db>.tantivy beside a SQLite file; per database id on PostgreSQL
    rt.close()
    shutil.rmtree(index_dir)
    again = make_runtime(data_dir=str(data))
    assert again.db.lexical.health()["state"] == "not built"
    assert matching_ids(again, "deploy cache", {}) == expected  # FTS5 answers meanwhile
    again.db.flush()  # the applier's first pass rebuilds
    health = again.db.lexical.health()
    assert health["state"] == "ready" and health["documents"] == 43
    assert matching_ids(again, "deploy cache", {}) == expected


def test_switching_engines_rebuilds_what_tantivy_missed(make_runtime, tmp_path):
    data = str(tmp_path / "switch")
    rt = make_runtime(data_dir=data)
    ToolCaller(rt)("memory_save", content="written under tantivy: the otter")
    rt.db.flush()
    rt.close()
    fts5 = make_runtime(data_dir=data, lexical_engine="fts5")
    ToolCaller(fts5)("memory_save", content="written under fts5: the heron")
    fts5.close()
    back = make_runtime(data_dir=data)
    assert back.db.lexical.health()["state"] == "not built"
    back.db.flush()
    assert len(search.bm25(back.db.reader(), "heron otter", limit=10)) == 2


def test_a_lost_document_is_found_by_verification_and_repaired(make_runtime):
    """The engine compares itself with the search rows; a document that vanished from the index
    (behind the outbox's back) is noticed, reported by diagnose, and rebuilt by heal."""
    rt = make_runtime()
    seed(ToolCaller(rt))
    rt.db.flush()
    engine = rt.db.lexical
    assert engine.verify(force=True) == {**engine.verified, "documents": 43, "records": 43, "ok": True}
    expected = matching_ids(rt, "warm cache", {})
    lost = search.bm25(rt.db.reader(), "warm cache", limit=1)[0]["rowid"]
    writer = engine._acquire_writer()
    writer.delete_documents_by_query(engine._rowid_query(lost))  # lose it without an outbox entry
    writer.commit()
    engine._reload()
    assert matching_ids(rt, "warm cache", {}) != expected
    checks = {c["name"]: c for c in ToolCaller(rt)("memory_diagnose")["checks"]}
    assert checks["lexical_index"]["status"] == "pass"  # not compared yet: nothing is known to be wrong
    result = engine.verify(force=True)
    assert result is not None and (result["documents"], result["records"], result["ok"]) == (42, 43, False)
    health = create_app(runtime=rt).test_client().get("/agentmemory/health").get_json()["storage"]["lexical"]
    assert health["repairs"] == 1 and health["documents"] == 43 and health["rebuild"] is None
    assert matching_ids(rt, "warm cache", {}) == expected
    assert engine.verify(force=True)["ok"] is True


def test_diagnose_reports_a_mismatch_and_heal_asks_for_a_check(make_runtime):
    rt = make_runtime()
    seed(ToolCaller(rt))
    rt.db.flush()
    engine = rt.db.lexical
    engine.verified = {"at": "2026-12-04T00:00:00+00:00", "documents": 40, "records": 43, "ok": False}
    checks = {c["name"]: c for c in ToolCaller(rt)("memory_diagnose")["checks"]}
    assert checks["lexical_index"]["status"] == "warn" and "40 documents for 43 records" in checks["lexical_index"]["message"]
    assert checks["lexical_index"]["fixable"] is True
    engine._next_verify = float("inf")
    ToolCaller(rt)("diagnostics_heal")
    assert engine._next_verify == 0.0  # the applier compares on its next idle moment


def test_an_acknowledged_write_is_searchable_after_sigkill(live_server):
    server = live_server()
    ids = [post(server.api("/observe"), hook(f"k{i}", data={"prompt": f"kestrel migration step {i}"})).json()["observationId"]
           for i in range(30)]
    server.stop(signal.SIGKILL)  # most of them were never committed to Tantivy
    server.start()
    found = requests.post(server.api("/search"), json={"query": "kestrel migration", "limit": 50}, timeout=30).json()
    assert {r["observation"]["id"] for r in found["results"]} >= set(ids)
    # The applier of the restarted server catches up from the outbox by itself.
    def caught_up() -> dict | None:
        lexical = requests.get(server.api("/health"), timeout=10).json()["storage"]["lexical"]
        return lexical if lexical["pending"] == 0 and lexical["state"] == "ready" else None

    health = wait_for(caught_up, timeout=30, message="the lexical index caught up after the restart")
    assert health["documents"] >= 30


@pytest.mark.sqlite_only
def test_fts5_merges_lazily_while_tantivy_answers_and_eagerly_when_it_is_the_engine(make_runtime, tmp_path):
    """FTS5's eager merging was 45% of observe's CPU at 1M records while Tantivy answered."""
    data = str(tmp_path / "merging")

    def merging(rt) -> dict:
        rows = rt.db._writer.execute("SELECT k, v FROM search_fts_config WHERE k IN ('automerge', 'crisismerge')")
        return dict(rows)

    rt = make_runtime(data_dir=data)  # Tantivy, the default
    assert merging(rt) == {"automerge": 16, "crisismerge": 64}
    ToolCaller(rt)("memory_save", content="kept in FTS5 for a switch: the kestrel")
    rt.close()
    fts5 = make_runtime(data_dir=data, lexical_engine="fts5")
    assert merging(fts5) == {"automerge": 4, "crisismerge": 16}
    assert len(search.bm25(fts5.db.reader(), "kestrel", limit=5)) == 1  # written under Tantivy, found by FTS5
