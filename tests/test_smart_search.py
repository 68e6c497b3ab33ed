"""Hybrid ranking, smart-search, timeline, profile, file-context, enrich and the context profile
block; project and agent filters on every search route."""


import pytest
import requests

from agentmemory_server.capture import client_hooks
from agentmemory_server.retrieval import dates
from agentmemory_server.kernel import registry
from agentmemory_server.retrieval import search
from agentmemory_server.retrieval import vectors
from conftest import post, wait_for
from conftest import hook as make_hook
from agentmemory_server.kernel.registry import Ctx


def call(rt, name, **args):
    data, _ = registry.unwrap(registry.call(Ctx(rt), name, args))
    return data


def note(rt, sid, content, project="p", agent=None, ts=None, type_=None, files=None):
    args = {"sessionId": sid, "project": project, "content": content}
    for key, value in (("agentId", agent), ("timestamp", ts), ("type", type_), ("files", files)):
        if value:
            args[key] = value
    return call(rt, "agent_observe", **args)["observationId"]


@pytest.fixture
def hrt(make_runtime):
    """A runtime with the hash embedder: hybrid search without a model download."""
    return make_runtime(embedding_provider="hash")


# -- ranking units ---------------------------------------------------------------------------------


def hit(doc_id, session="s"):
    return {"doc_id": doc_id, "session_id": session}


def test_rrf_fusion_order():
    fused = search.fuse([[hit("a"), hit("b"), hit("c")], [hit("b"), hit("c"), hit("d")]], [1.0, 1.0])
    assert [h["doc_id"] for h in fused] == ["b", "c", "a", "d"]
    assert fused[0]["score"] == pytest.approx(1 / 62 + 1 / 61)
    weighted = search.fuse([[hit("a"), hit("b")], [hit("b"), hit("a")]], [1.0, 0.5])
    assert [h["doc_id"] for h in weighted] == ["a", "b"]


def test_diversify_caps_sessions_then_backfills():
    hits = [hit(f"x{i}", "busy") for i in range(8)] + [hit("y", "other"), hit("z", None)]
    out = search.diversify(hits, 6, 2)  # cap: max(2, half of 6) = 3 per session
    assert [h["doc_id"] for h in out] == ["x0", "x1", "x2", "y", "z", "x3"]
    out = search.diversify(hits, 4, 3)  # the setting wins when above half the limit
    assert [h["doc_id"] for h in out] == ["x0", "x1", "x2", "y"]
    assert len(search.diversify(hits, 3, 2)) == 3


def test_diversify_keeps_the_best_half_from_one_long_session():
    hits = [hit(f"x{i}", "long") for i in range(12)] + [hit(f"o{i}", "other") for i in range(4)]
    out = [h["doc_id"] for h in search.diversify(hits, 20, 5)]
    assert out[:10] == [f"x{i}" for i in range(10)] and out[10:14] == ["o0", "o1", "o2", "o3"]


def test_query_dates_become_windows():
    assert dates.windows("what changed on 3 March 2026?") == [{"since": "2026-03-02", "until": "2026-03-11"}]
    assert dates.windows("errors in June") == [{"months": [6]}]
    assert dates.windows("May I deploy?") == [] and dates.windows("on 31 February 2026") == []


# -- smart search ------------------------------------------------------------------------------------


def test_smart_search_compact_hybrid_and_expand(hrt):
    obs = note(hrt, "s1", "Fixed the flaky websocket reconnect test")
    mem = call(hrt, "memory_save", content="websocket reconnects need jittered backoff", project="p",
               type="bug")["memory"]["id"]
    vectors.service(hrt).drain()
    out = call(hrt, "memory_smart_search", query="websocket reconnect", project="p")
    assert out["mode"] == "hybrid" and out["format"] == "compact" and out["lessons"] == []
    assert {r["obsId"] for r in out["results"]} == {obs, mem}
    # A memory listed among observations keeps its own type (it was always "decision").
    assert {r["obsId"]: r["type"] for r in out["results"]}[mem] == "bug"
    told = client_hooks.relevant_memories(Ctx(hrt, source="test"), "s2", "p", "why do websocket reconnects fail?")
    assert "- [bug] websocket reconnects need jittered backoff" in str(told), told
    assert set(out["results"][0]) >= {"obsId", "sessionId", "title", "type", "score", "timestamp"}
    expanded = call(hrt, "memory_smart_search", expandIds=[{"obsId": obs, "sessionId": "s1"}, mem, "nope"])
    assert expanded["mode"] == "expanded" and expanded["notFound"] == ["nope"]
    by_id = {r["obsId"]: r for r in expanded["results"]}
    assert by_id[obs]["observation"]["narrative"].startswith("Fixed the flaky")
    assert by_id[mem]["memory"]["content"].startswith("websocket reconnects") and by_id[mem]["kind"] == "memory"
    assert call(hrt, "memory_smart_search", expandIds=f"{obs},{mem}")["results"][0]["obsId"] == obs
    # a list of results leaves out each hit's hook payload; expanding one by id shows it
    assert "raw" in by_id[obs]["observation"]
    recalled = call(hrt, "memory_recall", query="websocket reconnect", project="p")["results"]
    assert obs in {r["observation"]["id"] for r in recalled} and not any("raw" in r["observation"] for r in recalled)
    around = call(hrt, "memory_timeline", anchor="websocket reconnect", project="p")["entries"]
    assert around and not any("raw" in e["observation"] for e in around)
    assert call(hrt, "memory_smart_search", expandIds=[obs], project="other")["notFound"] == [obs]


def test_smart_search_needs_a_query(client):
    r = client.post("/agentmemory/smart-search", json={"query": "  "})
    assert r.status_code == 400 and r.json["details"]["field"] == "query"


def test_smart_search_attaches_lessons_and_tolerates_failure(rt, caplog):
    note(rt, "s1", "ci pipeline timed out")
    content = "Retry the ci pipeline once before paging anyone. " + "It is usually the shared runner. " * 20
    saved = call(rt, "memory_lesson_save", content=content, confidence=0.8, project="p", tags=["ci"])["lesson"]
    out = call(rt, "memory_smart_search", query="ci pipeline", project="p")
    (lesson,) = out["lessons"]
    assert lesson["lessonId"] == saved["id"] and lesson["project"] == "p" and lesson["tags"] == ["ci"]
    assert len(lesson["content"]) == 240 and content.startswith(lesson["content"][:200])
    assert call(rt, "memory_smart_search", query="ci", includeLessons=False)["lessons"] == []
    # A malformed lesson (an upstream export with a non-numeric confidence) makes the lessons
    # module's recall raise; search still answers, without lessons, and logs why.
    bad = {"id": "lsn_bad", "content": "ci pipeline lore", "confidence": "high", "createdAt": "2026-01-01T00:00:00Z"}
    assert call(rt, "import", exportData={"version": "0.9.29", "sessions": [], "observations": {},
                                          "lessons": [bad]})["success"] is True
    with pytest.raises(ValueError):
        call(rt, "memory_lesson_recall", query="ci pipeline")
    out = call(rt, "memory_smart_search", query="ci pipeline")
    assert out["lessons"] == [] and len(out["results"]) == 1
    assert "lesson recall failed during smart-search" in caplog.text


# -- filters on every route --------------------------------------------------------------------------


def seed_two_scopes(rt):
    note(rt, "mine", "deploy the billing service to staging", project="alpha", agent="ann",
         type_="error", files=["src/billing.py"])
    note(rt, "theirs", "deploy the billing service to staging", project="beta", agent="bob",
         type_="error", files=["src/billing.py"])
    call(rt, "memory_save", content="billing deploys need a migration first", project="beta", agentId="bob")
    vectors.service(rt).drain()


ROUTES = {
    "memory_recall": {"query": "deploy billing staging"},
    "memory_smart_search": {"query": "deploy billing staging"},
    "memory_timeline": {"anchor": "deploy billing"},
    "file_context": {"files": ["src/billing.py"]},
    "enrich": {"files": ["src/billing.py"], "terms": ["billing"]},
}


@pytest.mark.parametrize("name", ROUTES)
@pytest.mark.parametrize("scope", [{"project": "alpha"}, {"agentId": "ann"}])
def test_project_and_agent_filters_hold_on_every_search_route(hrt, name, scope):
    seed_two_scopes(hrt)
    text = str(call(hrt, name, **ROUTES[name], **scope))
    assert "theirs" not in text and "migration first" not in text and "bob" not in text
    assert "mine" in text or "mine"[:8] in text


def test_isolated_agent_scope_applies_to_smart_search(make_runtime):
    rt = make_runtime(embedding_provider="hash", agent_scope="isolated", agent_id="ann")
    note(rt, "s1", "only ann sees this deploy note")
    with rt.db.transaction("test") as tx:  # a record of another agent in the same file
        obs = {"id": "obs_other", "sessionId": "s2", "timestamp": "2026-01-01T00:00:00.000Z", "agentId": "bob",
               "project": "p", "title": "bob deploy note", "narrative": "bob deploy note", "type": "other"}
        tx.records.set("mem:obs:s2", obs["id"], obs, now="x")
        search.index_record(tx, "observation", obs)
    vectors.service(rt).drain()
    out = call(rt, "memory_smart_search", query="deploy note", agentId="*")
    assert [r["obsId"] for r in out["results"]] != [] and "obs_other" not in str(out)


# -- timeline, profile, file context, enrich, context ------------------------------------------------


def test_timeline_around_a_time_and_a_keyword(rt):
    ids = [note(rt, "s1", f"step {i} {'database migration' if i == 4 else 'routine work'}",
                ts=f"2026-03-0{i + 1}T10:00:00Z") for i in range(7)]
    out = call(rt, "memory_timeline", anchor="database migration", before=2, after=1, project="p")
    assert [e["observation"]["id"] for e in out["entries"]] == ids[2:6]
    assert [e["relativePosition"] for e in out["entries"]] == [-2, -1, 0, 1] and out["anchorIndex"] == 2
    out = call(rt, "memory_timeline", anchor="2026-03-02T12:00:00Z", before=5, after=2)
    assert [e["observation"]["id"] for e in out["entries"]] == ids[:4] and out["anchorIndex"] == 1
    assert call(rt, "memory_timeline", anchor="zebra unicorn")["reason"] == "no_match"


def test_profile_is_computed_cached_and_refreshed(rt, client):
    for i in range(3):
        client.post("/agentmemory/observe", json=make_hook(f"s{i}", "post_tool_failure", project="shop",
                    timestamp=f"2026-01-0{i + 1}T00:00:00Z",
                    data={"tool_name": "Edit", "tool_input": {"file_path": "src/cart.py"},
                          "error": "KeyError: 'discount' in checkout"}))
    first = client.get("/agentmemory/profile?project=shop").json
    profile = first["profile"]
    assert first["cached"] is False and profile["topFiles"][0] == {"file": "src/cart.py", "frequency": 3}
    assert "checkout" in [c["concept"] for c in profile["topConcepts"]]
    assert profile["commonErrors"][0].startswith("KeyError") and profile["sessionCount"] == 3
    assert rt.db.reader().records.get("mem:profiles", "shop")["updatedAt"] == profile["updatedAt"]
    assert client.get("/agentmemory/profile?project=shop").json["cached"] is True
    assert client.get("/agentmemory/profile?project=shop&refresh=true").json["cached"] is False
    assert client.get("/agentmemory/profile?project=nobody").json == {
        "profile": None, "cached": False, "reason": "no_sessions"}
    assert client.get("/agentmemory/profile").status_code == 400
    context = client.post("/agentmemory/context", json={"sessionId": "new", "project": "shop"}).json
    assert "## Project Profile" in context["context"] and "profile" in context["kinds"]
    assert "Key files: src/cart.py" in context["context"]


def test_a_profile_made_before_a_session_ended_is_made_again_after_it(rt, client):
    # a project's first session start caches a profile of (almost) nothing; the session's work
    # must show in the next session's profile, not an hour later
    client.post("/agentmemory/session/start", json={"sessionId": "first", "project": "shop"})
    early = client.get("/agentmemory/profile?project=shop").json
    assert early["profile"]["topFiles"] == [] and early["cached"] is False
    client.post("/agentmemory/observe", json=make_hook("first", "post_tool_use", project="shop",
                timestamp="2026-01-01T00:00:00Z",
                data={"tool_name": "Edit", "tool_input": {"file_path": "src/cart.py"}, "tool_output": "ok"}))
    # a profile of nothing was not kept: the session's first work shows before the session ends
    # (an agent whose turns end without its session ending, as Codex's do, would wait an hour)
    during = client.get("/agentmemory/profile?project=shop").json
    assert during["cached"] is False and during["profile"]["topFiles"] == [{"file": "src/cart.py", "frequency": 1}]
    client.post("/agentmemory/observe", json=make_hook("first", "post_tool_use", project="shop",
                timestamp="2026-01-01T00:01:00Z",
                data={"tool_name": "Edit", "tool_input": {"file_path": "src/cart.py"}, "tool_output": "ok"}))
    assert client.get("/agentmemory/profile?project=shop").json["cached"] is True  # within the hour
    assert client.post("/agentmemory/session/end", json={"sessionId": "first"}).status_code == 200
    after = client.get("/agentmemory/profile?project=shop").json
    assert after["cached"] is False and after["profile"]["topFiles"] == [{"file": "src/cart.py", "frequency": 2}]
    context = client.post("/agentmemory/context", json={"sessionId": "second", "project": "shop"}).json
    assert "Key files: src/cart.py" in context["context"]


def test_among_equally_common_concepts_what_was_asked_for_comes_first(client):
    base = {"session_id": "one", "cwd": "/home/u/shop"}
    for event in ({"hook_event_name": "UserPromptSubmit", "prompt": "Fix the checkout rounding"},
                  {"hook_event_name": "SubagentStop", "agent_type": "Explore",  # the latest record
                   "last_assistant_message": "Analysis complete. Found potential issues."}):
        assert client.post("/agentmemory/hooks/claude-code", json={**base, **event}).status_code == 200
    concepts = [c["concept"] for c in client.get("/agentmemory/profile?project=shop").json["profile"]["topConcepts"]]
    assert concepts[:2] == ["checkout", "rounding"] and "analysis" in concepts, concepts


def test_a_failed_commands_error_is_found_by_the_file_it_names(rt, client):
    # a lint failure is a Bash call: its input names no file, its error does
    client.post("/agentmemory/observe", json=make_hook("lint", "post_tool_failure", project="shop", data={
        "tool_name": "Bash", "tool_input": {"command": "npm run lint"},
        "error": "Command failed with exit code 1: eslint: 'Decimal' is not defined (no-undef) src/cart.ts:3"}))
    client.post("/agentmemory/observe", json=make_hook("lint", "post_tool_failure", project="shop", data={
        "tool_name": "Bash", "tool_input": {"command": "pytest -q"},
        "error": 'tests/test_tax.py:42: AssertionError\n  File "/usr/lib/python3.11/unittest/case.py", line 3'}))
    rt.db.flush()
    [lint, tax] = client.get("/agentmemory/observations?sessionId=lint").json["observations"]
    assert lint["files"] == ["src/cart.ts"] and tax["files"] == ["tests/test_tax.py"]
    out = client.post("/agentmemory/enrich", json={"sessionId": "now", "files": ["/home/ana/shop/src/cart.ts"]}).json
    errors = out["context"].split("## Past errors")[1]
    assert "npm run lint" in errors and "pytest" not in errors, out["context"]


def test_file_context_and_enrich(rt, client):
    note(rt, "old", "Refactored the session cookie parser", files=["/repo/src/auth/cookies.py"])
    note(rt, "old", "TypeError in the cookie parser on empty header", type_="error", files=["/repo/src/auth/cookies.py"])
    note(rt, "now", "Opened cookies.py again", files=["src/auth/cookies.py"])
    call(rt, "memory_save", content="Cookie parsing must accept empty headers", project="p")
    r = client.post("/agentmemory/file-context", json={"sessionId": "now", "files": ["src/auth/cookies.py"]})
    assert r.status_code == 200 and "Refactored the session cookie parser" in r.json["context"]
    assert "Opened cookies.py again" not in r.json["context"]  # the current session is excluded
    r = client.post("/agentmemory/enrich", json={"sessionId": "now", "files": ["src/auth/cookies.py"],
                                                 "terms": ["cookie"], "toolName": "Edit", "project": "p"})
    body = r.json
    assert r.status_code == 200 and body["truncated"] is False
    assert "## Past errors" in body["context"] and "TypeError in the cookie parser" in body["context"]
    assert "Cookie parsing must accept empty headers" in body["context"]
    small = client.post("/agentmemory/enrich", json={"files": ["src/auth/cookies.py"], "budget": 20}).json
    assert small["truncated"] is True and len(small["context"]) <= 60
    assert client.post("/agentmemory/enrich", json={}).status_code == 400
    assert client.post("/agentmemory/enrich", json={"files": ["nothing/here.txt"]}).json["context"] == ""


def test_file_context_gives_each_line_once_so_repeated_reads_do_not_crowd_out_the_rest(rt, client):
    # a file read again and again, with the same content each time: one line, then older work
    note(rt, "old", "Fixed the rounding in cookies.py", files=["/repo/src/auth/cookies.py"], ts="2026-11-01T09:00:00Z")
    for minute in range(6):
        note(rt, "old", "Read cookies.py: def parse(header)", files=["/repo/src/auth/cookies.py"],
             ts=f"2026-11-02T09:0{minute}:00Z")
    body = client.post("/agentmemory/file-context", json={"files": ["src/auth/cookies.py"], "limit": 2}).json
    lines = [line for line in body["context"].splitlines() if line.startswith("- ")]
    assert len(lines) == len(set(lines)) == body["count"] == 2, body
    assert any("Fixed the rounding" in line for line in lines), body
    enriched = client.post("/agentmemory/enrich", json={"files": ["src/auth/cookies.py"]}).json["context"]
    assert enriched.count("Read cookies.py: def parse(header)") == 1 and "Fixed the rounding" in enriched, enriched


HOSTILE = ['C++', '"', '(paren', 'NEAR(a b)', 'x*', '-minus', 'AND OR NOT', '名前は何', '\\', 'files:x',
           "a\u0000b", "🙂", "'; DROP TABLE search_docs; --", "x" * 4000]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_text_is_safe_on_every_route(hrt, query):
    note(hrt, "s1", "C++ build (paren) NEAR files")
    vectors.service(hrt).drain()
    assert isinstance(call(hrt, "memory_smart_search", query=query)["results"], list)
    call(hrt, "memory_timeline", anchor=query[:500])
    call(hrt, "file_context", files=[query[:1000]])
    call(hrt, "enrich", files=[query[:1000]], terms=[query[:500]])
    assert len(search.query_terms(query)) <= search.MAX_QUERY_TERMS


# -- end to end ---------------------------------------------------------------------------------------


def test_live_server_embeds_in_background_and_reports_progress(live_server):
    server = live_server(env={"EMBEDDING_PROVIDER": "hash"})
    for i in range(5):
        assert post(server.api("/observe"), make_hook(f"s{i}", data={"tool_name": "Bash",
                    "tool_input": {"command": f"make release-{i}"}})).status_code == 201
    def embedded() -> dict | None:
        vectors = requests.get(server.api("/health"), timeout=10).json()["vectors"]
        return vectors if vectors["vectors"] == 5 and vectors["backlog"] == 0 else None

    vectors = wait_for(embedded, timeout=30, interval=0.2, message="the worker did not embed all 5 observations")
    # The server embeds nothing itself: its background worker process did, and it is alive.
    assert vectors["embedsHere"] is False and vectors["embeddedSinceStart"] == 0
    def reported() -> dict | None:  # the worker's heartbeat (every few seconds) carries its counts
        background = requests.get(server.api("/health"), timeout=10).json()["background"]
        workers = background["workers"]
        return background if workers and workers[0].get("embedded") == 5 else None

    background = wait_for(reported, timeout=30, interval=0.5, message="no heartbeat from the worker")
    assert background["mode"] == "process" and background["supervisor"]["alive"] is True
    assert [w["pid"] for w in background["workers"]] == [background["supervisor"]["pid"]]
    out = post(server.api("/smart-search"), {"query": "make release", "project": "demo"}).json()
    assert out["mode"] == "hybrid" and len(out["results"]) == 5
    out = post(server.api("/search"), {"query": "release", "mode": "bm25", "format": "compact"}).json()
    assert out["mode"] == "bm25" and out["format"] == "compact"

