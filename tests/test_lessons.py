"""Lessons: fingerprint ids, reinforcement, recall ranking, decay with an injected clock, soft delete."""

import pytest

from conftest import ToolCaller
from agentmemory_server.kernel.util import Clock

DAY = 86_400.0
T0 = 1_790_000_000.0  # a fixed start time, 2026-09


class MovableClock(Clock):
    def __init__(self, start: float = T0):
        self.now_ts = start
        super().__init__(lambda: self.now_ts)

    def advance(self, days: float) -> None:
        self.now_ts += days * DAY


@pytest.fixture
def clock():
    return MovableClock()


@pytest.fixture
def tools(make_runtime, clock):
    return ToolCaller(make_runtime(clock=clock))


def test_confidence_after_three_saves(tools):
    out, status = tools.status("memory_lesson_save", content="Run the migrations before the tests")
    assert status == 201 and out["action"] == "created" and out["lesson"]["confidence"] == 0.5
    assert out["lesson"]["id"].startswith("lsn_") and len(out["lesson"]["id"]) == 20
    second, status = tools.status("memory_lesson_save", content="  run the MIGRATIONS before the tests ")
    assert status == 200 and second["action"] == "strengthened" and second["lesson"]["id"] == out["lesson"]["id"]
    third = tools("memory_lesson_save", content="Run the migrations before the tests", context="CI broke twice")
    assert third["lesson"]["confidence"] == pytest.approx(0.595)  # 0.5 -> 0.55 -> 0.595
    assert third["lesson"]["reinforcements"] == 2 and third["lesson"]["context"] == "CI broke twice"
    assert len(tools("memory_lessons")["lessons"]) == 1


def test_save_validation(tools):
    from agentmemory_server.errors import InvalidInput

    # upstream's rule (U§4.5): a confidence outside [0, 1] (or not a number) starts at 0.5
    assert tools("memory_lesson_save", content="x", confidence=1.5)["lesson"]["confidence"] == 0.5
    assert tools("memory_lesson_save", content="y", confidence="high")["lesson"]["confidence"] == 0.5
    with pytest.raises(InvalidInput):
        tools("memory_lesson_save", content="   ")
    out = tools("memory_lesson_save", content="token ghp_" + "a" * 36 + " leaked", confidence=0.9, tags="ci,git")
    assert "ghp_" not in out["lesson"]["content"] and out["lesson"]["confidence"] == 0.9
    assert out["lesson"]["tags"] == ["ci", "git"]


def test_recall_ranks_by_relevance_confidence_and_recency(tools, clock):
    weak = tools("memory_lesson_save", content="Pin the numpy version in requirements", confidence=0.3)["lesson"]
    strong = tools("memory_lesson_save", content="Pin numpy below 2 for the old scipy build", confidence=0.9)["lesson"]
    tools("memory_lesson_save", content="Deploys go through staging first", confidence=0.9)
    hits = tools("memory_lesson_recall", query="numpy version pin")["lessons"]
    assert [h["id"] for h in hits] == [strong["id"], weak["id"]]  # unrelated lesson is not returned
    assert all(0 < h["score"] <= 1 for h in hits) and hits[0]["score"] > hits[1]["score"]
    assert tools("memory_lesson_recall", query="numpy", minConfidence=0.5)["lessons"][0]["id"] == strong["id"]
    assert len(tools("memory_lesson_recall", query="numpy", minConfidence=0.5)["lessons"]) == 1
    # Recency: the same lesson scores lower a year later.
    before = tools("memory_lesson_recall", query="staging deploys")["lessons"][0]["score"]
    clock.advance(365)
    assert tools("memory_lesson_recall", query="staging deploys")["lessons"][0]["score"] < before


def test_project_filter_and_search_filters(tools):
    tools("memory_lesson_save", content="Use ruff for linting", project="api", tags=["lint"])
    tools("memory_lesson_save", content="Use eslint for linting", project="web")
    tools("memory_lesson_save", content="Linting runs in CI for every project", source="consolidation")
    api = {h["content"] for h in tools("memory_lesson_recall", query="linting", project="api")["lessons"]}
    assert api == {"Use ruff for linting", "Linting runs in CI for every project"}  # own + global
    assert [x["content"] for x in tools("memory_lesson_search", query="linting", tags="lint")["lessons"]] == [
        "Use ruff for linting"]
    assert len(tools("memory_lesson_search", query="linting", source="consolidation")["lessons"]) == 1
    assert [x["project"] for x in tools("memory_lessons", project="web")["lessons"]] == ["web"]


def test_decay_after_two_weeks_with_injected_clock(tools, clock, make_runtime):
    keep = tools("memory_lesson_save", content="Keep the changelog current")["lesson"]
    fade = tools("memory_lesson_save", content="An old hunch", confidence=0.15)["lesson"]
    tools.rt.jobs.run_now("lesson_decay")  # nothing happens within the first week
    assert tools("memory_lessons")["lessons"][0]["confidence"] == 0.5
    clock.advance(14)
    tools.rt.jobs.run_now("lesson_decay")
    lessons = {x["id"]: x for x in tools("memory_lessons", includeDeleted=True)["lessons"]}
    assert lessons[keep["id"]]["confidence"] == pytest.approx(0.4)  # 0.5 - 0.05 x 2 weeks
    assert lessons[fade["id"]]["confidence"] == 0.05 and lessons[fade["id"]]["deleted"] is True
    assert fade["id"] not in {x["id"] for x in tools("memory_lessons")["lessons"]}
    assert tools("memory_lesson_recall", query="hunch")["lessons"] == []
    # Decay is incremental from lastDecayedAt: one more week costs 0.05 more, not 0.15.
    clock.advance(7)
    out = tools("lesson_decay")
    assert out["decayed"] == 1 and tools("memory_lessons")["lessons"][0]["confidence"] == pytest.approx(0.35)


def test_reinforced_lesson_is_not_soft_deleted(tools, clock):
    lesson = tools("memory_lesson_save", content="Flaky network test", confidence=0.2)["lesson"]
    tools("lesson_strengthen", lessonId=lesson["id"])
    clock.advance(60)
    dry = tools("lesson_decay", dryRun=True)
    assert dry["decayed"] == 1 and tools("memory_lessons")["lessons"][0]["confidence"] > 0.2  # dry run kept it
    tools("lesson_decay")
    after = tools("memory_lessons")["lessons"][0]
    assert after["confidence"] == 0.05 and not after.get("deleted")


def test_strengthen_delete_and_resave(client):
    r = client.post("/agentmemory/lessons", json={"content": "Check the lockfile", "tags": "deps"})
    assert r.status_code == 201
    lid = r.json["lesson"]["id"]
    r = client.post("/agentmemory/lessons/strengthen", json={"lessonId": lid})
    assert r.status_code == 200 and r.json["lesson"]["reinforcements"] == 1
    assert client.post("/agentmemory/lessons/delete", json={"lessonId": lid}).json["lesson"]["deleted"] is True
    again = client.post("/agentmemory/lessons/delete", json={"lessonId": lid})
    assert again.status_code == 404 and again.json["code"] == "lesson_not_found"
    assert client.post("/agentmemory/lessons/strengthen", json={"lessonId": "lsn_nope"}).status_code == 404
    assert client.get("/agentmemory/lessons").json["lessons"] == []
    fresh = client.post("/agentmemory/lessons", json={"content": "check the lockfile"})
    assert fresh.status_code == 201 and fresh.json["lesson"]["reinforcements"] == 0  # a new lesson, same id
    assert fresh.json["lesson"]["id"] == lid
    r = client.post("/agentmemory/lessons/search", json={"query": "lockfile"})
    assert [x["id"] for x in r.json["lessons"]] == [lid] and "score" in r.json["lessons"][0]
    audit = client.get("/agentmemory/audit?operation=lesson_delete").json["entries"]
    assert len(audit) == 1 and f"mem:lessons/{lid}" in audit[0]["targetIds"]


def test_lessons_are_indexed_as_kind_lesson(tools):
    lesson = tools("memory_lesson_save", content="Vacuum the database monthly")["lesson"]
    rows = tools.rt.db.reader().index.kind_counts()
    assert rows.get("lesson") == 1
    from agentmemory_server.retrieval import search

    hits = search.bm25(tools.rt.db.reader(), "vacuum", limit=5, filters={"kinds": ["lesson"]})
    assert [h["doc_id"] for h in hits] == [lesson["id"]]
    # Observation/memory search does not return lessons.
    assert tools("memory_recall", query="vacuum")["results"] == []


def test_context_lessons_block(call):
    call("memory_lesson_save", content="Global rule about commits", confidence=0.6)
    call("memory_lesson_save", content="Project rule about fixtures", confidence=0.5, project="p",
         context="learned in sprint 3")
    call("memory_lesson_save", content="Other project rule", confidence=0.99, project="q")
    deleted = call("memory_lesson_save", content="Deleted rule", confidence=0.9)["lesson"]
    call("lesson_delete", lessonId=deleted["id"])
    text = call("context", sessionId="s", project="p")["context"]
    assert "## Lessons Learned" in text and "Other project rule" not in text and "Deleted rule" not in text
    # 0.5 x 1.5 (same project) = 0.75 ranks above the global 0.6.
    assert text.index("Project rule about fixtures") < text.index("Global rule about commits")
    assert "- (0.50) Project rule about fixtures — learned in sprint 3" in text
    assert "Global rule" in call("context", sessionId="s")["context"]  # no project: global lessons only


def test_context_top_ten_lessons(call):
    for i in range(12):
        call("memory_lesson_save", content=f"Rule number {i} about things", confidence=round(0.3 + i * 0.05, 2))
    text = call("context", sessionId="s", project="p", budget=5000)["context"]
    assert text.count("- (") == 10 and "Rule number 11 " in text and "Rule number 0 " not in text
