"""The cross-encoder second stage: the real bundled model, the blend, and the `rerank` option on
the search routes and MCP tools."""

import json
import threading

import numpy as np
import pytest

from agentmemory_server.kernel import registry
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.retrieval import rerank, vectors
from conftest import post


def call(rt, name, **args):
    data, _ = registry.unwrap(registry.call(Ctx(rt), name, args))
    return data


def test_the_bundled_cross_encoder_reads_query_and_text_together():
    encoder = rerank.CrossEncoder()
    scores = encoder.score(
        "which database does the billing service use?",
        [
            "The weather in Lisbon was sunny all week.",
            "The billing service stores invoices in PostgreSQL 16 with a read replica.",
            "Billing meeting moved to Tuesday.",
        ],
    )
    assert scores.shape == (3,)
    assert int(np.argmax(scores)) == 1
    assert encoder.score("anything", []).shape == (0,)


def test_a_pair_scores_the_same_whatever_else_is_a_candidate():
    # one pair per model call: neither padding nor the int8 model's per-call activation ranges
    # let the other candidates change a record's score
    encoder = rerank.CrossEncoder()
    query, record = "which database does the billing service use?", "Billing keeps invoices in PostgreSQL."
    alone = encoder.score(query, [record])[0]
    among = encoder.score(query, ["ok", record, "a much longer record about deployment " * 20])[1]
    assert alone == among


def test_pairs_shared_out_over_threads_score_as_they_do_on_one(monkeypatch):
    # each pair is still one model call, run on the reranker's own threads side by side
    encoder = rerank.CrossEncoder()
    query = "which database does the billing service use?"
    # 40 pairs (~0.25 s of work): enough that both threads get some, however loaded the machine
    texts = [f"record {i}: the billing service keeps invoice batch {i} in PostgreSQL" for i in range(40)]
    alone = encoder.score(query, texts)
    threads = []
    run = encoder._run

    def recorded(encoded):
        threads.append(threading.current_thread().name)
        return run(encoded)

    monkeypatch.setattr(encoder, "_run", recorded)
    shared = encoder.score(query, texts, workers=2)
    assert shared.tolist() == alone.tolist()
    assert len(threads) == len(texts) and all(name.startswith("agentmemory-rerank") for name in threads)
    assert len(set(threads)) == 2


class Recording:
    """The bundled cross-encoder, noting how many threads each search let it use."""

    model_id = rerank.MODEL_ID

    def __init__(self):
        self.inner, self.workers = rerank.CrossEncoder(), []

    def score(self, query, texts, workers=1):
        self.workers.append(workers)
        return self.inner.score(query, texts, workers=workers)


def test_a_search_alone_in_its_process_shares_its_pairs_out_one_among_others_does_not(make_runtime, monkeypatch):
    rt = make_runtime(embedding_provider="none")
    _seed(rt)
    encoder = Recording()
    monkeypatch.setattr(rerank, "_shared", encoder)
    monkeypatch.setattr(rerank, "PAIR_THREADS", 2)
    alone = call(rt, "memory_smart_search", query="where are billing invoices stored", project="p", rerank=True)
    assert alone["reranked"] is True and set(encoder.workers) == {2}
    encoder.workers.clear()
    with vectors.service(rt).searching():  # another search in flight in this process
        busy = call(rt, "memory_smart_search", query="where are billing invoices stored", project="p", rerank=True)
    assert set(encoder.workers) == {1}
    assert [r["obsId"] for r in busy["results"]] == [r["obsId"] for r in alone["results"]]


def test_a_query_longer_than_the_pair_limit_is_cut_not_refused(make_runtime):
    # a pasted log as the query: more tokens than a pair may hold, before any record text
    rt = make_runtime(embedding_provider="none")
    _seed(rt)
    query = "billing invoices, " + ",".join("x" * 3 for _ in range(300))
    data = call(rt, "memory_smart_search", query=query, project="p", rerank=True)
    assert data["reranked"] is True and data["results"]


def test_blend_weights_the_two_stages():
    first = [3.0, 2.0, 1.0]
    cross = np.array([-5.0, 0.0, 5.0], dtype=np.float32)
    assert list(np.argsort(-rerank.blend(first, cross, 0.0), kind="stable")) == [0, 1, 2]
    assert list(np.argsort(-rerank.blend(first, cross, 1.0), kind="stable")) == [2, 1, 0]
    # equal weights: the middle candidate is 0.5 on both scales, the ends tie at 0.5 too
    assert rerank.blend(first, cross, 0.5) == pytest.approx([0.5, 0.5, 0.5])


class Reversing:
    """Scores candidates by their position, last first: shows the blend really reorders."""

    model_id = "reversing"

    def __init__(self):
        self.calls = []

    def score(self, query, texts, workers=1):
        self.calls.append((query, list(texts)))
        return np.arange(len(texts), dtype=np.float32)


def test_rerank_pairs_reorders_only_the_head(monkeypatch):
    monkeypatch.setattr(rerank, "RERANK_DEPTH", 3)
    monkeypatch.setattr(rerank, "RERANK_WEIGHT", 1.0)
    pairs = [({"doc_id": f"d{i}", "score": 10.0 - i}, {"text": f"t{i}"}) for i in range(5)]
    encoder = Reversing()
    out = rerank.rerank_pairs(encoder, "q", pairs, lambda hit, record: record["text"])
    assert [hit["doc_id"] for hit, _ in out] == ["d2", "d1", "d0", "d3", "d4"]
    assert encoder.calls == [("q", ["t0", "t1", "t2"])]
    # the blend is reported on the first stage's scale: scores fall with rank, tail included
    assert [hit["score"] for hit, _ in out] == pytest.approx([10.0, 9.0, 8.0, 7.0, 6.0])


def test_the_second_round_reads_what_the_best_candidates_lead_to(monkeypatch):
    # the seeds are the best after the blend; what they lead to is scored and joins the head
    monkeypatch.setattr(rerank, "RERANK_DEPTH", 3)
    monkeypatch.setattr(rerank, "RERANK_WEIGHT", 1.0)
    monkeypatch.setattr(rerank, "SECOND_ROUND_SEEDS", 1)
    pairs = [({"doc_id": f"d{i}", "score": 10.0 - i}, {"text": f"t{i}"}) for i in range(5)]
    asked = []

    def more(seeds, seen):
        asked.append(([hit["doc_id"] for hit, _ in seeds], sorted(seen)))
        return [({"doc_id": "d4", "score": 1.0}, {"text": "t4"}), ({"doc_id": "x", "score": 0.5}, {"text": "tx"})]

    encoder = Reversing()
    out = rerank.rerank_pairs(encoder, "q", pairs, lambda hit, record: record["text"], more)
    assert asked == [(["d2"], ["d0", "d1", "d2"])]
    assert encoder.calls == [("q", ["t0", "t1", "t2"]), ("q", ["t4", "tx"])]
    # cross scores 0,1,2 for the head and 0,1 for the newcomers: with weight 1 the order is theirs
    assert [hit["doc_id"] for hit, _ in out] == ["d2", "d1", "x", "d0", "d4", "d3"]
    monkeypatch.setattr(rerank, "SECOND_ROUND_SEEDS", 0)
    assert len(rerank.rerank_pairs(Reversing(), "q", pairs, lambda hit, record: record["text"], more)) == 5


def test_reranking_finds_a_record_through_the_words_of_its_best_hit(make_runtime, monkeypatch):
    # the kiln record shares no word with the query (BM25 alone never returns it); it shares
    # "pottery" with the record that answers, so the second round brings it to the cross-encoder
    rt = make_runtime(embedding_provider="none")
    call(rt, "agent_observe", sessionId="a", project="p", content="Ana said her favourite hobby is pottery.")
    call(rt, "agent_observe", sessionId="b", project="p", content="Bo said his hobby is chess.")
    call(rt, "agent_observe", sessionId="c", project="p", content="The kiln fired her pottery bowls overnight.")
    rt.db.flush()
    query = "what hobby does Ana have"
    plain = call(rt, "memory_smart_search", query=query, project="p")
    assert not any("kiln" in r["title"] for r in plain["results"])
    reranked = call(rt, "memory_smart_search", query=query, project="p", rerank=True)
    assert "pottery" in reranked["results"][0]["title"]
    assert any("kiln" in r["title"] for r in reranked["results"])
    monkeypatch.setattr(rerank, "SECOND_ROUND_SEEDS", 0)
    without = call(rt, "memory_smart_search", query=query, project="p", rerank=True)
    assert not any("kiln" in r["title"] for r in without["results"])


NOTES = [
    "Deploy script for the billing service pushes a docker image to the registry.",
    "Lunch order: the team wants pizza on Friday.",
    "The billing service keeps invoices in PostgreSQL; migrations run with alembic at deploy.",
    "Billing dashboard colours changed to blue.",
]


def _seed(rt):
    for i, text in enumerate(NOTES):
        call(rt, "agent_observe", sessionId=f"s{i}", project="p", content=text)
    rt.db.flush()


def test_smart_search_reranks_only_when_asked(make_runtime):
    rt = make_runtime(embedding_provider="none")
    _seed(rt)
    plain = call(rt, "memory_smart_search", query="where are billing invoices stored", project="p")
    assert plain["reranked"] is False
    reranked = call(rt, "memory_smart_search", query="where are billing invoices stored", project="p", rerank=True)
    assert reranked["reranked"] is True
    assert "PostgreSQL" in reranked["results"][0]["title"]
    assert {r["obsId"] for r in reranked["results"]} == {r["obsId"] for r in plain["results"]}
    recall = call(rt, "memory_recall", query="where are billing invoices stored", project="p", rerank=True)
    assert recall["reranked"] is True and "PostgreSQL" in recall["results"][0]["observation"]["narrative"]


def test_the_setting_turns_reranking_on_by_default(make_runtime):
    rt = make_runtime(embedding_provider="none", search_rerank=True)
    _seed(rt)
    assert call(rt, "memory_smart_search", query="billing invoices", project="p")["reranked"] is True
    assert call(rt, "memory_smart_search", query="billing invoices", project="p", rerank=False)["reranked"] is False


def test_rerank_over_http_and_a_bad_value_is_a_400(live_server):
    server = live_server(env={"EMBEDDING_PROVIDER": "none"})
    for i, text in enumerate(NOTES):
        body = {"sessionId": f"h{i}", "project": "p", "hookType": "observation", "content": text}
        assert post(server.api("/observe"), body).status_code == 201
    ok = post(server.api("/smart-search"), {"query": "where are billing invoices stored", "project": "p", "rerank": True})
    assert ok.status_code == 200 and ok.json()["reranked"] is True
    assert "PostgreSQL" in ok.json()["results"][0]["title"]
    bad = post(server.api("/search"), {"query": "x", "rerank": "sometimes"})
    assert bad.status_code == 400 and "rerank" in bad.text


def test_rerank_is_an_option_of_the_mcp_search_tools(client, rt):
    def rpc(method, params):
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        r = client.post("/mcp", json=body, headers={"Accept": "application/json, text/event-stream"})
        assert r.status_code == 200, r.data
        return r.get_json()["result"]

    tools = {t["name"]: t for t in rpc("tools/list", {})["tools"]}
    for name in ("memory_smart_search", "memory_recall"):
        assert tools[name]["inputSchema"]["properties"]["rerank"]["type"] == "boolean"
    _seed(rt)
    result = rpc("tools/call", {"name": "memory_smart_search",
                                "arguments": {"query": "where are billing invoices stored", "project": "p",
                                              "rerank": True}})
    data = json.loads(result["content"][0]["text"])
    assert data["reranked"] is True and "PostgreSQL" in data["results"][0]["title"]



@pytest.mark.parametrize("engine", ["tantivy", "fts5"])  # FTS5 hits carry no rowid: looked up
def test_reranking_also_reads_the_session_neighbours_of_the_top_hits(make_runtime, engine):
    # the record that answers shares no word with the query; the one after it names the topic
    rt = make_runtime(embedding_provider="none", lexical_engine=engine)
    turns = [
        "Lunch order: the team wants pizza on Friday.",
        "PostgreSQL 16 with a read replica, since March.",
        "That is where the billing invoices are kept now.",
        "The release train leaves on Thursdays.",
    ]
    for text in turns:
        call(rt, "agent_observe", sessionId="s1", project="p", content=text)
    rt.db.flush()
    query = "where are billing invoices kept"
    plain = call(rt, "memory_smart_search", query=query, project="p")
    assert not any("PostgreSQL" in r["title"] for r in plain["results"])
    reranked = call(rt, "memory_smart_search", query=query, project="p", rerank=True)
    titles = [r["title"] for r in reranked["results"]]
    assert any("PostgreSQL" in t for t in titles)
