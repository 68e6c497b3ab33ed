"""Ranking mechanisms: score fusion, the session context of a record, bounded BM25 for very
common terms, the fusion setting and honest modes."""

import time

import pytest

from agentmemory_server.kernel import registry
from agentmemory_server.retrieval import search
from agentmemory_server.storage.sqlite import lexical_fts5
from agentmemory_server.retrieval import vectors, vectors_backlog
from agentmemory_server.kernel.registry import Ctx


def call(rt, name, **args):
    data, _ = registry.unwrap(registry.call(Ctx(rt), name, args))
    return data


def note(rt, sid, content, project="p"):
    return call(rt, "agent_observe", sessionId=sid, project=project, content=content)["observationId"]


def hit(doc_id, score, session="s"):
    return {"doc_id": doc_id, "score": score, "session_id": session}


# -- score fusion ------------------------------------------------------------------------------------


def test_score_fusion_keeps_score_gaps_that_rank_fusion_loses():
    lexical = [hit("a", 10.0), hit("b", 9.5), hit("c", 1.0), hit("d", 0.5)]  # every match: floor 0
    dense = [hit("c", 0.9), hit("d", 0.85), hit("b", 0.8), hit("a", 0.2)]  # cut list: floor = last
    fused = search.fuse_scores([search.Ranking.lexical(lexical, 1.0, depth=100), search.Ranking(dense, 0.5)])
    # b is nearly BM25's best and well liked by the vectors; a is liked by BM25 alone.
    assert [h["doc_id"] for h in fused] == ["b", "a", "c", "d"]
    assert fused[0]["score"] == pytest.approx(0.95 + 0.5 * (0.8 - 0.2) / (0.9 - 0.2))
    assert fused[1]["score"] == pytest.approx(1.0)
    by_rank = search.fuse([lexical, dense], [1.0, 0.5])
    assert by_rank[0]["doc_id"] == "a"  # rank fusion only sees that a is BM25's first


def test_lexical_floor_is_zero_only_when_the_list_holds_every_match():
    hits = [hit("a", 4.0), hit("b", 3.0)]
    assert search.Ranking.lexical(hits, 1.0, depth=100).floor == 0.0
    assert search.Ranking.lexical(hits, 1.0, depth=2).floor == 3.0  # cut at the depth
    assert search.Ranking(hits, 1.0).floor == 3.0
    fused = search.fuse_scores([search.Ranking.lexical(hits, 1.0, depth=100)])
    assert [h["score"] for h in fused] == [1.0, 0.75]
    assert search.fuse_scores([search.Ranking([hit("x", 2.0)], 0.5)])[0]["score"] == 0.5


@pytest.mark.parametrize("fusion", ["score", "rrf"])
def test_fusion_setting_selects_the_fusion(make_runtime, tmp_path, fusion):
    rt = make_runtime(embedding_provider="hash", search_fusion=fusion, data_dir=str(tmp_path / fusion))
    target = note(rt, "s1", "websocket reconnect storm after deploy")
    note(rt, "s2", "quiet day, nothing happened")
    vectors.service(rt).drain()
    out = call(rt, "memory_smart_search", query="websocket reconnect", project="p")
    top = out["results"][0]
    assert out["mode"] == "hybrid" and top["obsId"] == target
    # Score fusion: BM25's best (1.0) plus the vector share; rank fusion: (1 + the vector weight)/61 at most.
    ceiling = (1 + search.VECTOR_WEIGHT) / 61 + 5e-5  # answers round scores to 4 places
    assert top["score"] > 1.0 if fusion == "score" else top["score"] <= ceiling


def test_vector_mode_without_vectors_answers_with_bm25_and_says_so(rt):
    obs = note(rt, "s1", "the nightly backup job failed")
    out = call(rt, "memory_smart_search", query="backup failed", mode="vector")
    assert out["mode"] == "bm25" and [r["obsId"] for r in out["results"]] == [obs]


# -- session context ---------------------------------------------------------------------------------


def test_context_holds_the_two_records_before_nearest_first(make_runtime):
    # An embedder, so records are queued for a vector (the backlog row carries the context text).
    rt = make_runtime(embedding_provider="hash")
    note(rt, "s1", "the websocket test is flaky on CI")
    note(rt, "s1", "what did you do about it?")
    answer = note(rt, "s1", "added a retry with jitter")
    note(rt, "other", "websocket docs updated")
    rows = {r["rowid"]: r for r in rt.db.reader().vectors.backlog_take(10, time.time())}
    contexts = sorted(r["context"] for r in rows.values())
    assert "what did you do about it? | the websocket test is flaky on CI" in contexts
    # The reply is found by words two records back, below the records that say them.
    out = call(rt, "memory_recall", query="flaky websocket", format="compact", sessionId="s1")
    assert answer in [r["obsId"] for r in out["results"]] and out["results"][0]["obsId"] != answer


# -- bounded BM25 ---------------------------------------------------------------------------------------


@pytest.fixture
def fts5_rt(make_runtime):
    """Bounded BM25 belongs to the FTS5 engine (the fallback): test it there."""
    return make_runtime(lexical_engine="fts5")


@pytest.fixture
def common_corpus(fts5_rt):
    """'deploy' and 'server' in many records, together in two, 'kubernetes' in one; each record
    in its own session so no context column mixes them."""
    rt = fts5_rt
    ids = {}
    fillers = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    for i, word in enumerate(fillers):
        ids[f"deploy-{word}"] = note(rt, f"d{i}", f"deploy {word} {word}")
        ids[f"server-{word}"] = note(rt, f"v{i}", f"server {word}")
    ids["both-1"] = note(rt, "b1", "deploy the server")
    ids["both-2"] = note(rt, "b2", "server deploy again tonight")
    ids["rare"] = note(rt, "k1", "kubernetes rollout")
    return ids


@pytest.mark.sqlite_only("bounded BM25 is the FTS5 engine's, SQLite's full text")
def test_bounded_bm25_scores_exactly_and_skips_rows_with_one_common_term(fts5_rt, common_corpus, monkeypatch):
    store, query = fts5_rt.db.reader(), "deploy server kubernetes"
    exact = search.bm25(store, query, limit=50)  # under the budget: the plain OR query, every match scored
    assert len(exact) == len(common_corpus)
    monkeypatch.setattr(lexical_fts5, "BM25_ROW_BUDGET", 5)
    assert lexical_fts5.Fts5Lexical(store.conn).rarest_terms(search.query_terms(query)) == ["kubernetes"]
    bounded = search.bm25(store, query, limit=50)
    kept = {common_corpus[k] for k in ("rare", "both-1", "both-2")}
    assert {h["doc_id"] for h in bounded} == kept
    assert bounded == [h for h in exact if h["doc_id"] in kept]  # same scores, same order
    assert [h["doc_id"] for h in bounded] == [h["doc_id"] for h in exact[:3]]


@pytest.mark.sqlite_only("bounded BM25 is the FTS5 engine's, SQLite's full text")
def test_bounded_bm25_with_only_common_terms_ranks_rows_holding_all(fts5_rt, common_corpus, monkeypatch):
    rt = fts5_rt
    monkeypatch.setattr(lexical_fts5, "BM25_ROW_BUDGET", 5)
    store = rt.db.reader()
    bounded = search.bm25(store, "deploy server", limit=10)
    assert {h["doc_id"] for h in bounded} == {common_corpus["both-1"], common_corpus["both-2"]}
    assert len(search.bm25(store, "deploy", limit=10)) == 8  # one term: nothing to bound
    out = call(rt, "memory_smart_search", query="deploy server kubernetes", project="p")
    assert out["mode"] == "bm25" and len(out["results"]) == 3


# -- memory ----------------------------------------------------------------------------------------------


def test_each_embedded_batch_hands_freed_memory_back(make_runtime, monkeypatch):
    rt = make_runtime(embedding_provider="hash", embed_batch_size=2)
    for i in range(5):
        note(rt, f"s{i}", f"record {i}")
    calls = []
    monkeypatch.setattr(vectors_backlog, "release_memory", lambda: calls.append(1))
    assert vectors.service(rt).drain() == 5 and len(calls) == 3  # batches of 2, 2, 1
    monkeypatch.undo()
    assert vectors_backlog._TRIM is not None  # glibc's malloc_trim was found (Linux)
    assert vectors_backlog.release_memory() is None
