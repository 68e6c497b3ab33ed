"""Context compilation: providers, recency order, greedy packing under the budget."""

from xml.sax.saxutils import escape

from conftest import hook
from agentmemory_server.retrieval.context import Block, pack


def test_pack_skips_blocks_that_do_not_fit_and_keeps_going():
    blocks = [Block("a", "x" * 300, "2026-01-03"), Block("b", "y" * 3000, "2026-01-02"),
              Block("c", "z" * 30, "2026-01-01")]
    out = pack(blocks, 200, "p")
    assert out["kinds"] == ["a", "c"] and out["skipped"] == 1
    assert out["tokens"] <= 200 and out["context"].startswith('<agentmemory-context project="p">')


def test_pack_empty_when_nothing_fits():
    assert pack([Block("a", "x" * 3000, "2026")], 50, "p") == {
        "context": "", "blocks": 0, "tokens": 0, "budget": 50, "kinds": [], "skipped": 1}


def test_past_sessions_block(client):
    for sid in ("old", "new"):
        client.post("/agentmemory/session/start", json={"sessionId": sid, "project": "p", "cwd": "/p"})
        client.post("/agentmemory/observe", json=hook(sid, "post_tool_failure", project="p",
                                                      data={"tool_name": "Bash", "tool_input": "make <all>",
                                                            "error": f"{sid} failed"}))
    r = client.post("/agentmemory/context", json={"sessionId": "new", "project": "p"})
    text = r.json["context"]
    assert "old failed" in text and "new failed" not in text  # current session excluded
    assert escape("make <all>") in text and "<all>" not in text
    assert r.json["tokens"] <= 2000
    # Another project sees nothing.
    assert client.post("/agentmemory/context", json={"sessionId": "x", "project": "q"}).json["context"] == ""


def test_summary_preferred_over_observations(client, rt):
    client.post("/agentmemory/observe", json=hook("s1", "post_tool_failure", project="p",
                                                  data={"tool_name": "Bash", "error": "boom"}))
    with rt.db.transaction("test") as tx:
        tx.records.set("mem:summaries", "s1", {"sessionId": "s1", "title": "Fixed the build",
                                       "narrative": "Pinned numpy", "keyDecisions": ["pin numpy"],
                                       "filesModified": ["requirements.txt"], "createdAt": "2026-01-01"}, now="x")
    text = client.post("/agentmemory/context", json={"sessionId": "s2", "project": "p", "budget": 500}).json["context"]
    assert "## Fixed the build" in text and "Decisions: pin numpy" in text and "## Session s1" not in text


def test_budget_is_respected(client):
    for i in range(10):
        client.post("/agentmemory/observe", json=hook(f"s{i}", "post_tool_failure", project="p",
                                                      data={"tool_name": "Bash", "error": "e" * 180}))
    r = client.post("/agentmemory/context", json={"sessionId": "now", "project": "p", "budget": 150})
    assert 0 < r.json["tokens"] <= 150 and r.json["skipped"] > 0


def test_saved_memories_reach_the_context_block(client):
    """On the previous main saved memories never appeared in the context block (only in
    pre-tool-use enrichment): a new session did not learn what the last one decided to keep."""
    client.post("/agentmemory/remember", json={"content": "The auth service signs tokens with RS256; never HS256",
                                               "type": "architecture", "project": "api"})
    client.post("/agentmemory/remember", json={"content": "Deploys to staging need the VPN", "project": "web"})
    client.post("/agentmemory/remember", json={"content": "Prefer small commits with tests", "type": "preference"})
    r = client.post("/agentmemory/session/start", json={"sessionId": "new", "project": "api", "cwd": "/api"})
    text = r.json["context"]
    assert "## Memories" in text and "[architecture] The auth service signs tokens with RS256" in text
    assert "Prefer small commits" in text  # a memory without a project is global
    assert "VPN" not in text  # another project's memory stays there
    assert client.post("/agentmemory/session/start", json={"sessionId": "none", "cwd": "/x"}).json["context"] == ""


def test_memories_matching_the_first_prompt_come_first(client):
    for i in range(12):
        client.post("/agentmemory/remember", json={"content": f"Unrelated convention number {i} for topic{i}",
                                                   "project": "api"})
    client.post("/agentmemory/remember", json={"content": "Flaky login test: clear the redis session cache first",
                                               "project": "api"})
    for i in range(12, 20):  # newer than the relevant one: recency alone would bury it
        client.post("/agentmemory/remember", json={"content": f"Unrelated convention number {i} for topic{i}",
                                                   "project": "api"})
    client.post("/agentmemory/observe", json=hook("s2", "prompt_submit", project="api",
                                                  data={"prompt": "why does the login test fail randomly?"}))
    text = client.post("/agentmemory/context", json={"sessionId": "s2", "project": "api"}).json["context"]
    memories = text.split("## Memories")[1]
    assert memories.splitlines()[1].endswith("Flaky login test: clear the redis session cache first")
    assert memories.count("\n- [") <= 8


def test_memories_lessons_and_pinned_slots_share_the_budget(client, call):
    call("memory_save", content="Use the repository pattern for data access", project="api")
    call("memory_lesson_save", content="Run migrations before the test suite", project="api")
    call("memory_slot_create", label="team_rules", content="Reviews need two approvals", pinned=True, project="api")
    out = client.post("/agentmemory/context", json={"sessionId": "s", "project": "api", "budget": 400}).json
    assert {"memories", "lessons", "pinned_slots"} <= set(out["kinds"]) and out["tokens"] <= 400
    tight = client.post("/agentmemory/context", json={"sessionId": "s", "project": "api", "budget": 60}).json
    assert tight["tokens"] <= 60
