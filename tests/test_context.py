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


def test_sessions_that_went_the_same_way_are_told_once(client):
    # a nightly lint run: three sessions, the same prompt and the same outcome; then other work
    runs = [("night1", "Run the nightly lint", "npm run lint"), ("night2", "Run the nightly lint", "npm run lint"),
            ("night3", "Run the nightly lint", "npm run lint"), ("fix", "Fix the cart total", "npm test")]
    for n, (sid, prompt, command) in enumerate(runs):
        for minute, (hook_type, data) in enumerate((("prompt_submit", {"prompt": prompt}),
                                                    ("post_tool_use", {"tool_name": "Bash",
                                                                       "tool_input": {"command": command},
                                                                       "tool_output": "0 problems"}))):
            # the prompt, then the command a minute later (records of one moment have no order)
            event = hook(sid, hook_type, project="shop", data=data, timestamp=f"2026-11-0{n + 1}T10:0{minute}:00Z")
            assert client.post("/agentmemory/observe", json=event).status_code == 201
        assert client.post("/agentmemory/session/end", json={"sessionId": sid}).status_code == 200
    text = client.post("/agentmemory/context", json={"sessionId": "new", "project": "shop"}).json["context"]
    assert text.count("## Run the nightly lint") == 1 and "## Fix the cart total" in text, text


def test_budget_is_respected(client):
    for i in range(10):
        client.post("/agentmemory/observe", json=hook(f"s{i}", "post_tool_failure", project="p",
                                                      data={"tool_name": "Bash", "error": "e" * 180}))
    r = client.post("/agentmemory/context", json={"sessionId": "now", "project": "p", "budget": 150})
    assert 0 < r.json["tokens"] <= 150 and r.json["skipped"] > 0


def test_the_first_prompt_brings_its_relevant_records_first(client, rt):
    notes = ["The billing service keeps invoices in PostgreSQL 16.", "Lunch: pizza on Friday.",
             "CI runs the test suite on two cores with pytest -n 2."] + [f"Routine note number {i}." for i in range(12)]
    for i, text in enumerate(notes):
        client.post("/agentmemory/observe", json={"sessionId": f"old{i}", "project": "p", "hookType": "observation",
                                                  "content": text})
    client.post("/agentmemory/observe", json=hook("new", "prompt_submit", project="p",
                                                  data={"prompt": "where do billing invoices live?"}))
    rt.db.flush()
    out = client.post("/agentmemory/context", json={"sessionId": "new", "project": "p"}).json
    text = out["context"]
    assert out["kinds"][:2] == ["relevant", "relevant"]
    head = text.index("Relevant to this session's first prompt")
    assert head < text.index("invoices in PostgreSQL 16") < text.index("## Session")
    assert "where do billing invoices live" not in text  # the session's own prompt is not fed back
    # A session without a first prompt gets no relevant block; nor does a tight budget break packing.
    client.post("/agentmemory/observe", json={"sessionId": "quiet", "project": "p", "hookType": "observation",
                                              "content": "nothing asked"})
    assert "relevant" not in client.post("/agentmemory/context", json={"sessionId": "quiet", "project": "p"}).json["kinds"]
    small = client.post("/agentmemory/context", json={"sessionId": "new", "project": "p", "budget": 60}).json
    assert small["tokens"] <= 60 and small["kinds"] and set(small["kinds"]) == {"relevant"}
def test_the_same_failure_in_several_sessions_is_said_once(client, rt):
    failure = {"tool_name": "Bash", "tool_input": {"command": "npm run lint"},
               "error": "eslint: 'Decimal' is not defined (no-undef) src/cart.ts:3"}
    for i in range(3):
        client.post("/agentmemory/observe", json=hook(f"lint{i}", "post_tool_failure", project="p",
                                                      timestamp=f"2026-11-0{i + 1}T10:00:00Z", data=failure))
    client.post("/agentmemory/observe", json=hook("now", "prompt_submit", project="p",
                                                  data={"prompt": "eslint says Decimal is not defined"}))
    rt.db.flush()
    text = client.post("/agentmemory/context", json={"sessionId": "now", "project": "p"}).json["context"]
    relevant = text.split("Relevant to this session's first prompt")[1].split("##")[0]
    assert relevant.count("is not defined") == 1, relevant
    assert relevant.count("no-undef") == 1  # the error is not repeated after the output that holds it
    # and the prompt's relevant-memories block of a hook route says it once too
    answer = client.post("/agentmemory/hooks/claude-code", json={
        "session_id": "next", "cwd": "/x/p", "hook_event_name": "UserPromptSubmit",
        "prompt": "why does eslint say Decimal is not defined?"}).json
    block = answer["hookSpecificOutput"]["additionalContext"]
    assert block.count("Bash: npm run lint") == 1, block


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
