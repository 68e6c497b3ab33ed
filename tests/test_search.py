"""Query building and BM25 search over FTS5."""

import pytest

from conftest import hook
from agentmemory_server.retrieval.search import query_terms

HOSTILE = ['C++', 'a.b', '"quoted"', '(paren', 'NEAR(a b)', 'x*', '-minus', 'AND OR NOT', "it's",
           '名前は何', '🙂 emoji', '\\', ':', '^', '{}', "'", '""', 'col:value', 'a"b']


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_raise(call, client, query):
    client.post("/agentmemory/observe", json=hook())
    out = call("memory_recall", query=query)
    assert out["mode"] == "bm25" and isinstance(out["results"], list)


def test_query_terms_drop_stopwords_and_duplicates():
    assert query_terms("What did she say about the database migration? The database!") == ["say", "database", "migration"]
    assert query_terms("who is he") == ["who", "is", "he"]  # all stop words: keep them
    assert query_terms("   ") == [] and query_terms("!!!") == []


def test_or_semantics_find_partial_matches(client, call):
    client.post("/agentmemory/observe", json=hook(data={"tool_name": "Bash", "tool_input": {"command": "alembic upgrade head"},
                                                        "tool_output": "database migration applied"}))
    out = call("memory_recall", query="when did the migration of the postgres database run?")
    assert len(out["results"]) == 1  # an AND of all terms would find nothing


def test_stemming_and_ranking(client, call):
    client.post("/agentmemory/observe", json=hook("a", data={"tool_name": "Bash", "tool_input": "npm run build",
                                                             "tool_output": "running the builds"}))
    client.post("/agentmemory/observe", json=hook("b", data={"tool_name": "Read", "tool_input": {"file_path": "README.md"}}))
    out = call("memory_recall", query="run build")
    assert [r["sessionId"] for r in out["results"]] == ["a"]


def test_filters_project_session_and_formats(client, call):
    client.post("/agentmemory/observe", json=hook("a", project="alpha", data={"tool_name": "Bash", "tool_input": "deploy api"}))
    client.post("/agentmemory/observe", json=hook("b", project="beta", data={"tool_name": "Bash", "tool_input": "deploy web"}))
    call("memory_save", content="deploy checklist for everyone")  # global memory
    out = call("memory_recall", query="deploy", project="alpha", format="compact")
    kinds = sorted((r["kind"], r["sessionId"]) for r in out["results"])
    assert ("observation", "a") in kinds and ("observation", "b") not in kinds
    assert any(k == "memory" for k, _ in kinds)
    assert set(out["results"][0]) >= {"obsId", "sessionId", "title", "type", "score", "timestamp"}
    out = call("memory_recall", query="deploy", sessionId="b", format="narrative")
    assert out["text"].startswith("1. Bash") and "deploy web" in out["text"]


def test_token_budget_truncates_in_rank_order(client, call):
    for i in range(10):
        client.post("/agentmemory/observe", json=hook(timestamp=f"2026-01-01T00:00:0{i}Z",
                                                      data={"tool_name": "Bash", "tool_input": f"pytest run {i}"}))
    full = call("memory_recall", query="pytest", format="compact")
    small = call("memory_recall", query="pytest", format="compact", token_budget=100)
    assert small["truncated"] is True and 0 < len(small["results"]) < len(full["results"])
    assert small["tokens_used"] <= 100
    assert [r["obsId"] for r in small["results"]] == [r["obsId"] for r in full["results"][:len(small["results"])]]


def test_search_validation(client):
    assert client.post("/agentmemory/search", json={}).status_code == 400
    r = client.post("/agentmemory/search", json={"query": "x", "limit": 1000})
    assert r.status_code == 400 and r.json["details"]["field"] == "limit"
    r = client.post("/agentmemory/search", json={"query": "x", "format": "xml"})
    assert r.status_code == 400 and "full, compact, narrative" in r.json["error"]


def test_a_session_end_does_not_answer_for_the_work_before_it(client, call):
    # records are indexed with their session's previous records as context (a turn answers what
    # the turn before asked); a session's end is not an answer to anything
    failure = {"tool_name": "Bash", "tool_input": {"command": "npm run lint"},
               "error": "eslint: 'Decimal' is not defined (no-undef)"}
    client.post("/agentmemory/observe", json=hook("lint", "post_tool_failure", project="p",
                                                  timestamp="2026-11-01T10:00:00Z", data=failure))
    client.post("/agentmemory/observe", json=hook("lint", "post_tool_use", project="p", timestamp="2026-11-01T10:01:00Z",
                                                  data={"tool_name": "Read", "tool_input": {"file_path": "notes.md"},
                                                        "tool_output": "shopping list"}))
    client.post("/agentmemory/observe", json=hook("lint", "session_end", project="p",
                                                  timestamp="2026-11-01T10:02:00Z", data={"reason": "exit"}))
    call.rt.db.flush()
    found = [r["hookType"] for r in call("memory_recall", query="eslint Decimal", project="p", limit=10)["results"]
             for r in [r["observation"]]]
    assert "post_tool_failure" in found and "post_tool_use" in found  # the next step still has its context
    assert "session_end" not in found, found
