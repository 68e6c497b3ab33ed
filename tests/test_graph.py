"""The knowledge graph: the deterministic co-occurrence graph without a key, the model's typed
graph with one (repair round, fallback), session-end extraction, GET /graph and its filters,
re-extraction replacing a session's share, agent isolation."""

import pytest

from agentmemory_server.models import llm
from conftest import ManualClock, ToolCaller
from agentmemory_server.errors import NotFound
from llm_support import ANSWERS, responder


def note(call, sid, content, concepts=(), files=(), project="demo", ts="2026-11-01T10:00:00Z"):
    return call("agent_observe", sessionId=sid, project=project, timestamp=ts, content=content,
                concepts=list(concepts), files=list(files))["observationId"]


def seed(call, sid="s1"):
    note(call, sid, "token refresh broke the login flow", ["auth", "tokens"], ["src/auth.py"],
         ts="2026-11-01T10:00:00Z")
    note(call, sid, "fixed token refresh with a grace window", ["tokens"], ["src/auth.py", "src/clock.py"],
         ts="2026-11-01T10:05:00Z")
    note(call, sid, "documented the refresh window", [], ["docs/auth.md"], ts="2026-11-01T10:09:00Z")


def by_name(graph):
    return {n["name"]: n for n in graph["nodes"]}


def shape(graph):
    """The graph without its update times."""
    return {kind: [{k: v for k, v in item.items() if k != "updatedAt"} for item in graph[kind]]
            for kind in ("nodes", "edges")}


def test_deterministic_graph_links_files_and_concepts_that_occur_together(make_runtime):
    call = ToolCaller(make_runtime())
    seed(call)
    out = call("graph_extract", sessionId="s1")
    assert out["method"] == "synthetic" and out["nodes"] >= 5
    graph = call("memory_graph_query", project="demo")
    nodes = by_name(graph)
    assert {"src/auth.py", "src/clock.py", "docs/auth.md", "auth", "tokens"} <= set(nodes)
    assert nodes["src/auth.py"]["type"] == "file" and nodes["tokens"]["type"] == "concept"
    assert nodes["src/auth.py"]["mentions"] == 2 and nodes["tokens"]["mentions"] == 2
    assert "refresh" in nodes  # a word recurring across the session becomes a concept
    pairs = {(e["sourceNodeId"], e["targetNodeId"]) for e in graph["edges"]}
    auth, clock = nodes["src/auth.py"]["id"], nodes["src/clock.py"]["id"]
    assert (auth, clock) in pairs or (clock, auth) in pairs
    assert {e["type"] for e in graph["edges"]} == {"related_to"}
    heavy = call("memory_graph_query", project="demo", minWeight=2)["edges"]
    assert heavy and all(e["weight"] >= 2 for e in heavy)
    stats = call("graph_stats")
    assert stats["totalNodes"] == len(graph["nodes"]) and stats["nodesByType"]["file"] == 3
    assert stats["edgesByType"] == {"related_to": len(graph["edges"])}


def test_re_extracting_a_session_replaces_its_share(make_runtime):
    call = ToolCaller(make_runtime())
    seed(call)
    call("graph_extract", sessionId="s1")
    first = call("memory_graph_query")
    call("graph_extract", sessionId="s1")
    assert shape(call("memory_graph_query")) == shape(first)  # not counted twice
    seed(call, "s2")
    call("graph_extract", sessionId="s2")
    assert by_name(call("memory_graph_query"))["src/auth.py"]["mentions"] == 4
    only_s2 = call("memory_graph_query", sessionId="s2")["nodes"]
    assert {n["name"] for n in only_s2} == set(by_name(first))
    # s1 grows a new observation about another file: its share is replaced, s2's stays.
    note(call, "s1", "moved docs to the wiki", [], ["docs/wiki.md"], ts="2026-11-01T11:00:00Z")
    call("graph_extract", sessionId="s1")
    nodes = by_name(call("memory_graph_query"))
    assert nodes["docs/wiki.md"]["mentions"] == 1 and nodes["src/auth.py"]["mentions"] == 4


def test_walk_filters_and_limits(make_runtime):
    call = ToolCaller(make_runtime())
    seed(call)
    call("graph_extract", sessionId="s1")
    nodes = by_name(call("memory_graph_query"))
    walk = call("memory_graph_query", startNodeId=nodes["docs/auth.md"]["id"], maxDepth=1)
    names = {n["name"] for n in walk["nodes"]}
    assert "docs/auth.md" in names and "src/clock.py" not in names
    assert "src/clock.py" in {n["name"] for n in call("memory_graph_query", startNodeId=nodes["docs/auth.md"]["id"],
                                                      maxDepth=3)["nodes"]}
    files = call("memory_graph_query", nodeType="file")
    assert {n["type"] for n in files["nodes"]} == {"file"} and files["totalNodes"] == 3
    assert [n["name"] for n in call("memory_graph_query", query="CLOCK")["nodes"]] == ["src/clock.py"]
    limited = call("memory_graph_query", limit=2)
    assert len(limited["nodes"]) == 2 and limited["truncated"] is True
    assert call("memory_graph_query", project="elsewhere")["nodes"] == []
    with pytest.raises(NotFound) as missing:
        call("memory_graph_query", startNodeId="ent_nope")
    assert missing.value.code == "node_not_found"


def test_rest_routes(make_runtime):
    from agentmemory_server.adapters.web import create_app

    rt = make_runtime()
    seed(ToolCaller(rt))
    client = create_app(runtime=rt).test_client()
    assert client.post("/agentmemory/graph/extract", json={"sessionId": "s1"}).status_code == 200
    assert client.post("/agentmemory/graph/extract", json={"sessionId": "nope"}).status_code == 404
    got = client.get("/agentmemory/graph?nodeType=file&limit=10").json
    assert len(got["nodes"]) == 3 and client.post("/agentmemory/graph/query", json={"query": "auth"}).json["nodes"]
    assert client.get("/agentmemory/graph/stats").json["totalNodes"] >= 5
    # The MCP resource agentmemory://graph/stats is backed by GET /graph/stats (501 until it existed).
    resource = client.post("/agentmemory/mcp/resources/read", json={"uri": "agentmemory://graph/stats"})
    assert resource.status_code == 200 and "totalNodes" in resource.get_data(as_text=True)


def test_session_end_extracts_the_graph_in_the_background(make_runtime):
    rt = make_runtime(graph_extraction_enabled=True)
    call = ToolCaller(rt)
    seed(call)
    call("session_end", sessionId="s1")
    assert call("memory_graph_query")["nodes"] == []  # not on the request path
    assert llm.service(rt).drain() == 1
    assert "src/auth.py" in by_name(call("memory_graph_query"))
    off = make_runtime(data_dir=str(rt.settings.data_dir) + "-off")
    seed(ToolCaller(off))
    ToolCaller(off)("session_end", sessionId="s1")
    assert off.db.reader().jobs.stats()["pending"] == 0  # the flag is off by default


def test_the_model_names_typed_entities_and_relations(llm_runtime, fake_gemini):
    rt = llm_runtime(graph_extraction_enabled=True)
    call = ToolCaller(rt)
    fake_gemini.responder = responder()
    seed(call)
    call("graph_extract", sessionId="s1")  # deterministic share first: the model's replaces it
    deterministic = by_name(call("memory_graph_query"))
    bad = {"entities": ANSWERS["graph"]["entities"],
           "relations": [{"source": "src/auth.py", "target": "jwt lib", "type": "uses"}]}
    fake_gemini.replies = [bad, ANSWERS["graph"]]
    out = call("graph_extract", sessionId="s1")
    assert out == {"success": True, "sessionId": "s1", "method": "gemini", "model": "gemini-2.5-flash", "nodes": 3,
                   "edges": 2}  # the model that wrote it, beside its provider
    assert "'jwt lib' is not the name of a listed entity" in fake_gemini.prompts()[-1]
    graph = call("memory_graph_query")
    nodes = by_name(graph)
    assert set(nodes) == {"src/auth.py", "pyjwt", "token expiry"}
    assert nodes["pyjwt"]["type"] == "library" and nodes["src/auth.py"]["id"] == deterministic["src/auth.py"]["id"]
    assert {(e["type"], e["targetNodeId"]) for e in graph["edges"]} == {
        ("uses", nodes["pyjwt"]["id"]), ("related_to", nodes["token expiry"]["id"])}
    assert nodes["src/auth.py"]["mentions"] == 2  # provenance: the observations naming it
    assert {(n["method"], n["model"]) for n in nodes.values()} == {("gemini", "gemini-2.5-flash")}


def test_model_failure_falls_back_and_the_job_waits_for_an_open_breaker(llm_runtime, fake_gemini):
    rt = llm_runtime(graph_extraction_enabled=True, llm_max_attempts=1, llm_breaker_failures=1,
                     llm_summaries=False, llm_reflect=False, consolidation_enabled="false")
    call, svc = ToolCaller(rt), llm.service(rt)
    seed(call)
    fake_gemini.fail_next = [500]
    assert call("graph_extract", sessionId="s1")["method"] == "synthetic"  # failure: deterministic graph
    assert svc.breaker.state == "open"
    call("session_end", sessionId="s1")
    assert svc.drain() == 1  # deferred, not run
    assert rt.db.reader().jobs.stats()["waiting"] == 1


def test_the_graph_job_waits_for_the_model_after_any_failure_that_may_pass(llm_runtime, fake_gemini):
    """The job waited only while the breaker was open: a 500 that did not open it (the default
    three failures) wrote the deterministic graph and ended the job for good."""
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, graph_extraction_enabled=True, llm_max_attempts=1, llm_summaries=False,
                     llm_reflect=False, consolidation_enabled="false")
    call, svc = ToolCaller(rt), llm.service(rt)
    fake_gemini.responder = responder()
    seed(call)
    call("session_end", sessionId="s1")
    fake_gemini.fail_next = [500]
    assert svc.drain() == 1 and svc.breaker.state == "closed"
    assert rt.db.reader().jobs.stats()["waiting"] == 1 and call("memory_graph_query")["nodes"] == []
    clock.advance(60)
    assert svc.drain() == 1
    assert set(by_name(call("memory_graph_query"))) == {"src/auth.py", "pyjwt", "token expiry"}


def test_graph_job_gives_up_to_the_deterministic_graph(llm_runtime, fake_gemini):
    """Waiting for the model uses up no attempts: the job is given up (to the deterministic
    graph) only once it is older than AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS."""
    clock = ManualClock()
    rt = llm_runtime(clock=clock.clock, graph_extraction_enabled=True, llm_job_attempts=1, llm_breaker_failures=1,
                     llm_max_attempts=1, llm_summaries=False, llm_reflect=False, consolidation_enabled="false",
                     llm_job_max_age_hours=1, llm_breaker_cooldown_seconds=7200)
    call, svc = ToolCaller(rt), llm.service(rt)
    seed(call)
    fake_gemini.fail_next = [500]
    svc.answer(llm.Task("x", "x", {}), "x")  # opens the breaker
    call("session_end", sessionId="s1")
    assert svc.drain() == 1
    assert call("memory_graph_query")["nodes"] == [] and svc.health()["jobsAbandoned"] == 0
    fake_gemini.fail_next = [500] * 5  # still down at the breaker's trial, past the job's maximum age
    clock.advance(7201)
    assert svc.drain() == 1
    assert call("memory_graph_query")["nodes"] and svc.health()["jobsAbandoned"] == 1


def test_isolated_agents_see_only_their_own_graph(make_runtime):
    a = ToolCaller(make_runtime(agent_id="alpha", agent_scope="isolated"))
    b = ToolCaller(make_runtime(agent_id="beta", agent_scope="isolated"))
    seed(b, "sb")
    b("graph_extract", sessionId="sb")
    assert b("memory_graph_query")["nodes"]
    assert a("memory_graph_query")["nodes"] == [] and a("graph_stats")["totalNodes"] == 0
    with pytest.raises(NotFound):
        a("graph_extract", sessionId="sb")
    note(a, "sa", "alpha works on src/auth.py too", ["auth"], ["src/auth.py"])
    a("graph_extract", sessionId="sa")
    assert {n["name"] for n in a("memory_graph_query")["nodes"]} == {"src/auth.py", "auth"}
    ours, theirs = by_name(a("memory_graph_query")), by_name(b("memory_graph_query"))
    assert ours["src/auth.py"]["id"] != theirs["src/auth.py"]["id"]


def test_an_upstream_export_brings_its_graph(make_runtime):
    call = ToolCaller(make_runtime())
    upstream = {"version": "0.9.29", "exportedAt": "2026-08-01T00:00:00Z", "sessions": [], "observations": {},
                "graphNodes": [{"id": "n1", "type": "library", "name": "Flask", "sourceObservationIds": []},
                               {"id": "n2", "type": "file", "name": "app.py"},
                               {"id": "n3", "name": 7, "mentions": "lots"}],
                "graphEdges": [{"id": "e1", "type": "imports", "sourceNodeId": "n2", "targetNodeId": "n1",
                                "weight": 2}, {"id": "e2"}]}
    call("import", exportData=upstream)
    graph = call("memory_graph_query")
    assert {n["name"] for n in graph["nodes"]} == {"Flask", "app.py", "7"}
    assert [(e["type"], e["weight"]) for e in graph["edges"]] == [("imports", 2)]
    assert call("memory_graph_query", startNodeId="n1")["totalNodes"] == 2
    assert call("graph_stats")["edgesByType"] == {"imports": 1, "related_to": 1}
