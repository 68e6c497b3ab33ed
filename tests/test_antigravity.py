"""Antigravity import from fixture trees: sessions, artifacts, logs, idempotence, safety."""

import json
import os
from pathlib import Path

import pytest

from agentmemory_server.adapters.web import create_app

CONV = "3f1c2b7e-9a41-4c55-8d0e-2b6f7a9c1d10"
OTHER = "8b2d4e6f-1111-4222-8333-944455556666"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "antigravity"
    conv = root / "brain" / CONV
    write(conv / "task.md", "# Add OAuth login\n\n- [x] read the spec\n- [ ] TODO wire the callback\n\n"
                            "## Notes\nThe callback URL lives in settings.py\n")
    write(conv / "implementation_plan.md", "# Plan\nUse authlib with PKCE.\n\n## Risks\nToken refresh races.\n")
    write(conv / "walkthrough.md", "# Walkthrough\nLogin works end to end; tests in test_oauth.py.\n")
    write(conv / "task.md.resolved", "# Add OAuth login\n- [x] read the spec\n")
    write(conv / "task.md.resolved.1", "# Add OAuth login (v1)\n- [ ] read the spec\n")
    logs = conv / ".system_generated" / "logs"
    write(logs / "conversation.jsonl",
          json.dumps({"role": "user", "content": "Please add OAuth login with Google"}) + "\n"
          + "{not json\n"
          + json.dumps({"role": "model", "parts": [{"text": "I will use authlib and PKCE"}]}) + "\n")
    write(logs / "terminal.txt", "$ pytest tests/test_oauth.py\n3 passed\n")
    write(logs / "blob.log", b"\x00\x01\x02binary")
    write(conv / "notes.png", b"\x89PNG not an artifact")
    write(root / "brain" / OTHER / "task.md", "# Fix flaky CI\nRetry the network test.\n")
    return root


@pytest.fixture
def ag(make_runtime, tree):
    rt = make_runtime(antigravity_dir=str(tree), antigravity_max_file_bytes=4096)
    return rt, create_app(runtime=rt).test_client()


def sync(client, **body):
    r = client.post("/agentmemory/antigravity/sync", json=body)
    assert r.status_code == 200, r.json
    return r.json


def test_first_sync_imports_sessions_artifacts_and_logs(ag):
    rt, client = ag
    out = sync(client)
    assert out["conversations"] == 2
    assert set(out["sessions"]) == {f"antigravity-{CONV}", f"antigravity-{OTHER}"}
    assert out["files"]["ingested"] == 8
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in out["skipped"]}
    assert reasons["blob.log"] == "binary file"
    assert "malformed JSONL" in reasons["conversation.jsonl"]
    observations = client.get(f"/agentmemory/observations?sessionId=antigravity-{CONV}").json["observations"]
    titles = [o["title"] for o in observations]
    assert "task.md: Add OAuth login" in titles and "task.md: Notes" in titles
    assert any(t.startswith("task.md.resolved.1") for t in titles)
    transcript = next(o for o in observations if o["title"] == "conversation.jsonl: transcript")
    assert "user: Please add OAuth login" in transcript["narrative"]
    assert "model: I will use authlib" in transcript["narrative"]
    plan = next(o for o in observations if o["title"] == "implementation_plan.md: Plan")
    assert plan["type"] == "decision" and plan["project"] == "antigravity"
    hits = client.post("/agentmemory/search", json={"query": "PKCE authlib"}).json["results"]
    assert hits and hits[0]["sessionId"] == f"antigravity-{CONV}"


def test_second_sync_is_a_no_op_and_an_edit_reingests_only_that_file(ag, tree):
    rt, client = ag
    first = sync(client)
    again = sync(client)
    assert again["files"]["ingested"] == 0 and again["files"]["unchanged"] == first["files"]["ingested"]
    assert again["observations"] == 0
    before = client.get(f"/agentmemory/observations?sessionId=antigravity-{CONV}").json["total"]
    original = (tree / "brain" / CONV / "walkthrough.md").read_text()
    write(tree / "brain" / CONV / "walkthrough.md", "# Walkthrough\nNow also supports GitHub login.\n\n## Tests\nAdded.\n")
    edited = sync(client)
    assert edited["ingestedFiles"] == [f"brain/{CONV}/walkthrough.md"]
    assert edited["replacedObservations"] == 1 and edited["observations"] == 2
    after = client.get(f"/agentmemory/observations?sessionId=antigravity-{CONV}").json["observations"]
    assert len(after) == before + 1
    assert not any("Login works end to end" in o["narrative"] for o in after)
    # Going back to the earlier content is a real change too.
    write(tree / "brain" / CONV / "walkthrough.md", original)
    back = sync(client)
    assert back["observations"] == 1 and back["replacedObservations"] == 2


def test_one_conversation_and_bad_ids(ag):
    _rt, client = ag
    out = sync(client, conversationId=OTHER, project="ci")
    assert out["sessions"] == [f"antigravity-{OTHER}"] and out["observations"] == 1
    session = client.get(f"/agentmemory/session?sessionId=antigravity-{OTHER}").json["session"]
    assert session["project"] == "ci"
    r = client.post("/agentmemory/antigravity/sync", json={"conversationId": "no-such-conversation"})
    assert r.status_code == 404
    r = client.post("/agentmemory/antigravity/sync", json={"conversationId": "../../etc"})
    assert r.status_code == 400 and r.json["details"]["field"] == "conversationId"


def test_huge_files_and_escaping_symlinks_are_skipped(ag, tree, tmp_path):
    _rt, client = ag
    write(tree / "brain" / CONV / "big.md", "# Big\n" + "x" * 5000)
    outside = write(tmp_path / "outside" / "secret.md", "# zebraquokka outside the root\n")
    os.symlink(outside, tree / "brain" / CONV / "escape.md")
    out = sync(client)
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in out["skipped"]}
    assert reasons["big.md"].startswith("too large")
    assert reasons["escape.md"] == "points outside ANTIGRAVITY_DIR"
    assert not client.post("/agentmemory/search", json={"query": "zebraquokka"}).json["results"]


def test_missing_root_is_an_empty_sync(make_runtime, tmp_path):
    rt = make_runtime(antigravity_dir=str(tmp_path / "nothing"))
    client = create_app(runtime=rt).test_client()
    out = sync(client)
    assert out["conversations"] == 0 and out["observations"] == 0


def test_secrets_in_artifacts_are_stripped(ag, tree):
    _rt, client = ag
    write(tree / "brain" / OTHER / "walkthrough.md", "# Deploy\nexport GITHUB_TOKEN=ghp_" + "a" * 36 + "\n")
    sync(client, conversationId=OTHER)
    obs = client.get(f"/agentmemory/observations?sessionId=antigravity-{OTHER}").json["observations"]
    text = " ".join(o["narrative"] for o in obs)
    assert "ghp_" not in text and "[REDACTED_SECRET]" in text


def test_sync_all_crystallizes_and_reflects_every_session(ag):
    _rt, client = ag
    r = client.post("/agentmemory/antigravity/sync-all", json={})
    assert r.status_code == 200
    follow = r.json["followUps"]
    assert set(follow) == set(r.json["sessions"])
    for sid, steps in follow.items():
        assert steps["memory_crystallize"]["success"] is True, steps
        assert steps["memory_crystallize"]["crystal"]["sessionId"] == sid
        assert steps["memory_reflect"]["success"] is True, steps
    # The TODO in task.md reached the project's pending_items slot through reflect.
    slot = client.get("/agentmemory/slot?label=pending_items&project=antigravity").json["slot"]
    assert "wire the callback" in slot["content"]
