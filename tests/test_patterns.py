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
