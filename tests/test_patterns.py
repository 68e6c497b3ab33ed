"""Deterministic pattern detection across sessions (POST /patterns, the detect_patterns prompt)."""

from conftest import hook


def _fail(client, session, error, project="p"):
    client.post("/agentmemory/observe", json=hook(session, "post_tool_failure", project=project, data={
        "tool_name": "Bash", "tool_input": {"command": "pytest tests/test_db.py"}, "error": error}))


def test_recurring_errors_and_files_across_sessions(client):
    for session in ("s1", "s2", "s3"):
        _fail(client, session, "sqlite3.OperationalError: database is locked")
        client.post("/agentmemory/observe", json=hook(session, project="p", timestamp=f"2026-01-0{session[1]}T00:00:00Z",
                                                      data={"tool_name": "Edit", "tool_input": {"file_path": "src/db.py"}}))
    _fail(client, "s1", "a one-off failure that only happened once")
    out = client.post("/agentmemory/patterns", json={"project": "p"}).json
    kinds = {(p["kind"], p["pattern"]): p for p in out["patterns"]}
    locked = next(p for (k, text), p in kinds.items() if k == "error" and "database is locked" in text)
    assert locked["sessions"] == 3
    assert kinds[("file", "src/db.py")]["sessions"] == 3
    assert not any("one-off" in p["pattern"] for p in out["patterns"])
    assert out["patterns"][0]["kind"] == "error"  # errors rank first at equal spread


def test_other_projects_do_not_leak_and_prompt_works(client):
    for session in ("a1", "a2"):
        _fail(client, session, "ImportError: no module named yaml", project="other")
    assert client.post("/agentmemory/patterns", json={"project": "p"}).json["patterns"] == []
    r = client.post("/agentmemory/mcp/prompts/get", json={"name": "detect_patterns", "arguments": {"project": "other"}})
    assert r.status_code == 200
    assert "no module named yaml" in r.json["messages"][0]["content"]["text"]


def test_a_projects_patterns_and_concepts_are_its_own_words(client):
    # Claude Code sessions in /home/ana/code/shop: every record holds that checkout's directories
    # and this server's own template words ("Ran", "exit", "replace 1 line"); neither is a concept
    for i, sid in enumerate(("w1", "w2", "w3")):
        base = {"session_id": sid, "cwd": "/home/ana/code/shop"}
        events = [
            {"hook_event_name": "SessionStart", "source": "startup"},
            {"hook_event_name": "UserPromptSubmit", "prompt": f"Fix the invoice rounding, round {i}"},
            {"hook_event_name": "PostToolUse", "tool_name": "Edit", "tool_use_id": f"{sid}-e",
             "tool_input": {"file_path": "/home/ana/code/shop/src/invoice.ts", "old_string": "a", "new_string": "b"},
             "tool_response": {"filePath": "/home/ana/code/shop/src/invoice.ts"}},
            {"hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_use_id": f"{sid}-t",
             "tool_input": {"command": "npm test"}, "tool_response": {"stdout": "Tests: 9 passed", "stderr": ""}},
            {"hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_use_id": f"{sid}-l",
             "tool_input": {"command": "npm run lint"}, "tool_response": {"stdout": "0 problems", "stderr": ""}},
            {"hook_event_name": "Stop", "last_assistant_message": "Invoice totals now round half-even."},
            {"hook_event_name": "SessionEnd", "reason": "exit"},
        ]
        for event in events:
            assert client.post("/agentmemory/hooks/claude-code", json={**base, **event}).status_code == 200
    patterns = client.post("/agentmemory/patterns", json={"project": "shop"}).json["patterns"]
    found = {(p["kind"], p["pattern"]) for p in patterns}
    assert ("command", "npm test") in found and ("concept", "invoice") in found, found
    concepts = {p["pattern"] for p in patterns if p["kind"] == "concept"}
    profile = client.get("/agentmemory/profile", query_string={"project": "shop", "refresh": "true"}).json["profile"]
    concepts |= {c["concept"] for c in profile["topConcepts"]}
    assert not concepts & {"home", "ana", "code", "shop", "exit", "replace", "passed", "session_end", "sessionend"}
    # a session summary's recurring terms (its concepts, and the deterministic graph's) likewise
    summary = client.get("/agentmemory/session", query_string={"sessionId": "w1"}).json["session"]["summary"]
    assert "invoice" in summary["concepts"], summary["concepts"]
    assert not set(summary["concepts"]) & {"home", "ana", "code", "shop", "line", "output", "tests", "exit"}


def test_notices_keywords_and_stock_error_words_are_not_a_projects_concepts(client):
    # each session: a permission notice, a file written in TypeScript, a test run that failed with
    # the agent's stock message; what the project is about is the cart's total and its rounding
    for sid in ("n1", "n2", "n3"):
        base = {"session_id": sid, "cwd": "/home/ana/shop"}
        events = [
            {"hook_event_name": "Notification", "message": "Claude needs your permission to use Bash"},
            {"hook_event_name": "PostToolUse", "tool_name": "Write", "tool_use_id": f"{sid}-w",
             "tool_input": {"file_path": "src/cart.ts",
                            "content": "export const cartTotal = (items) => roundHalfEven(sum(items));\n"
                                       "export function discount(total) { return total; }"}},
            {"hook_event_name": "PostToolUseFailure", "tool_name": "Bash", "tool_use_id": f"{sid}-t",
             "tool_input": {"command": "npm test"}, "error": "Command exited with non-zero status code 1"},
        ]
        for event in events:
            assert client.post("/agentmemory/hooks/claude-code", json={**base, **event}).status_code == 200
    [notice] = [o for o in client.get("/agentmemory/observations", query_string={"sessionId": "n1"}).json["observations"]
                if o["type"] == "notification"]
    assert notice["importance"] == 2  # ranked with the session's bookkeeping
    patterns = client.post("/agentmemory/patterns", json={"project": "shop"}).json["patterns"]
    profile = client.get("/agentmemory/profile", query_string={"project": "shop"}).json["profile"]
    concepts = {p["pattern"] for p in patterns if p["kind"] == "concept"} | {c["concept"] for c in profile["topConcepts"]}
    assert {"carttotal", "roundhalfeven", "cart"} <= concepts, concepts
    assert not concepts & {"claude", "permission", "needs", "notification", "export", "const", "function", "return",
                           "exited", "non-zero"}, concepts
    assert not any("notification" in line for line in profile["recentActivity"]), profile["recentActivity"]
    summary = client.post("/agentmemory/summarize", json={"sessionId": "n1"}).json["summary"]
    assert "Notable: Write src/cart.ts" in summary["narrative"] and "permission" not in summary["narrative"].split(
        "Notable:")[1], summary["narrative"]


def test_paths_count_by_their_file_names():
    from agentmemory_server.memory.vocabulary import file_names_only

    assert file_names_only("Edit /home/ana/code/shop/src/cart.ts: replace 1 line") == "Edit cart.ts: replace 1 line"
    assert file_names_only("see src/a.py, ./b/c.md and ~/notes/todo.txt") == "see a.py, c.md and todo.txt"
    assert file_names_only("no path here") == "no path here"
    assert file_names_only(r"Edit C:\Users\ana\shop\src\cart.ts and D:/work/a.py") == "Edit cart.ts and a.py"
