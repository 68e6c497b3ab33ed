"""Slots: defaults, per-project scope, size limits (413), read-only, pinned slots in context."""

import pytest

from agentmemory_server.errors import Conflict, Forbidden, NotFound, PayloadTooLarge

DEFAULTS = {"persona", "user_preferences", "tool_guidelines", "project_context", "guidance",
            "pending_items", "session_patterns", "self_notes"}


def test_default_slots_are_there(client):
    slots = client.get("/agentmemory/slots").json["slots"]
    assert {s["label"] for s in slots} == DEFAULTS
    assert [s["label"] for s in slots] == sorted(s["label"] for s in slots)
    by_label = {s["label"]: s for s in slots}
    assert by_label["persona"]["scope"] == "global" and by_label["persona"]["sizeLimit"] == 1000
    assert by_label["session_patterns"]["pinned"] is False and by_label["pending_items"]["pinned"] is True
    r = client.get("/agentmemory/slot?label=guidance&project=p")
    assert r.status_code == 200 and r.json["scope"] == "project" and r.json["slot"]["content"] == ""
    assert client.get("/agentmemory/slot?label=nope").status_code == 404
    pinned = client.get("/agentmemory/slots?pinned=false").json["slots"]
    assert {s["label"] for s in pinned} == {"session_patterns", "self_notes"}


def test_create_get_append_replace_delete(client):
    r = client.post("/agentmemory/slot", json={"label": "deploy_notes", "content": "use blue/green",
                                                "sizeLimit": 40, "project": "api"})
    assert r.status_code == 201 and r.json["slot"]["pinned"] is True
    assert client.post("/agentmemory/slot", json={"label": "deploy_notes", "project": "api"}).status_code == 409
    r = client.post("/agentmemory/slot/append", json={"label": "deploy_notes", "text": "ask ops", "project": "api"})
    assert r.status_code == 200 and r.json["slot"]["content"] == "use blue/green\nask ops" and r.json["size"] == 22
    r = client.post("/agentmemory/slot/replace", json={"label": "deploy_notes", "content": "canary", "project": "api"})
    assert r.json["slot"]["content"] == "canary"
    r = client.delete("/agentmemory/slot?label=deploy_notes&project=api")
    assert r.status_code == 200 and r.json["deleted"] == "deploy_notes" and r.json["reset"] is False
    assert client.get("/agentmemory/slot?label=deploy_notes&project=api").status_code == 404
    assert client.delete("/agentmemory/slot?label=deploy_notes&project=api").status_code == 404


def test_slot_413_reports_sizes(client):
    client.post("/agentmemory/slot", json={"label": "tiny", "content": "12345", "sizeLimit": 10})
    r = client.post("/agentmemory/slot/append", json={"label": "tiny", "text": "67890"})
    assert r.status_code == 413 and r.json["code"] == "slot_too_large"
    assert r.json["details"] == {"label": "tiny", "size": 11, "currentSize": 5, "sizeLimit": 10}
    r = client.post("/agentmemory/slot/replace", json={"label": "tiny", "content": "x" * 11})
    assert r.status_code == 413 and r.json["details"]["size"] == 11
    r = client.post("/agentmemory/slot", json={"label": "big", "content": "x" * 30, "sizeLimit": 20})
    assert r.status_code == 413 and client.get("/agentmemory/slot?label=big").status_code == 404
    assert client.get("/agentmemory/slot?label=tiny").json["slot"]["content"] == "12345"  # unchanged


def test_bad_labels_and_limits(client):
    for body, field in [({"label": "Bad-Label"}, "label"), ({"label": "ok", "sizeLimit": 0}, "sizeLimit"),
                        ({"label": "ok", "sizeLimit": 20001}, "sizeLimit"), ({"label": "ok", "scope": "team"}, "scope"),
                        ({"label": "x" * 65}, "label")]:
        r = client.post("/agentmemory/slot", json=body)
        assert r.status_code == 400 and r.json["details"]["field"] == field, body


def test_project_slot_invisible_from_another_project(call):
    call("memory_slot_create", label="api_secrets_policy", content="rotate monthly", project="api")
    call("memory_slot_replace", label="guidance", content="api guidance", project="api")
    with pytest.raises(NotFound):
        call("memory_slot_get", label="api_secrets_policy", project="web")
    with pytest.raises(NotFound):
        call("memory_slot_get", label="api_secrets_policy")  # nor from no project
    assert call("memory_slot_get", label="guidance", project="web")["slot"]["content"] == ""
    web = {s["label"]: s for s in call("memory_slot_list", project="web")["slots"]}
    assert "api_secrets_policy" not in web and web["guidance"]["content"] == ""
    assert call("memory_slot_get", label="guidance", project="api")["slot"]["content"] == "api guidance"
    # The same label can exist in both projects independently.
    call("memory_slot_create", label="api_secrets_policy", content="web's own", project="web")
    assert call("memory_slot_get", label="api_secrets_policy", project="api")["slot"]["content"] == "rotate monthly"
    # Project names cannot collide with the scope layout.
    call("memory_slot_create", label="odd", content="colon project", project="a:global")
    with pytest.raises(NotFound):
        call("memory_slot_get", label="odd", scope="global")


def test_project_shadows_global(call):
    call("memory_slot_create", label="style", content="global style", scope="global")
    assert call("memory_slot_get", label="style", project="p")["slot"]["content"] == "global style"
    call("memory_slot_create", label="style", content="p style", project="p")
    assert call("memory_slot_get", label="style", project="p")["slot"]["content"] == "p style"
    assert call("memory_slot_get", label="style", project="q")["slot"]["content"] == "global style"
    assert call("memory_slot_get", label="style", project="p", scope="global")["slot"]["content"] == "global style"


def test_read_only_and_default_reset(call):
    call("memory_slot_create", label="rules", content="never force-push", readOnly=True, scope="global")
    for name, args in [("memory_slot_append", {"text": "x"}), ("memory_slot_replace", {"content": "x"}),
                       ("memory_slot_delete", {})]:
        with pytest.raises(Forbidden):
            call(name, label="rules", **args)
    with pytest.raises(Conflict):
        call("memory_slot_create", label="persona", scope="global")  # defaults always exist
    call("memory_slot_replace", label="persona", content="terse senior engineer")
    assert call("memory_slot_get", label="persona")["slot"]["content"] == "terse senior engineer"
    assert call("memory_slot_delete", label="persona")["reset"] is True
    assert call("memory_slot_get", label="persona")["slot"]["content"] == ""
    with pytest.raises(PayloadTooLarge):
        call("memory_slot_replace", label="persona", content="x" * 1001)


def test_pinned_slots_lead_the_context(client, call):
    client.post("/agentmemory/observe", json={"sessionId": "old", "hookType": "post_tool_failure", "project": "p",
                                              "data": {"tool_name": "Bash", "error": "boom"}})
    call("memory_lesson_save", content="Always run the linter", project="p")
    call("memory_slot_replace", label="guidance", content="Use <pytest> fixtures", project="p")
    call("memory_slot_replace", label="persona", content="careful reviewer")
    call("memory_slot_replace", label="session_patterns", content="unpinned, stays out", project="p")
    call("memory_slot_replace", label="guidance", content="other project's guidance", project="q")
    text = client.post("/agentmemory/context", json={"sessionId": "new", "project": "p"}).json["context"]
    body = text.split("\n", 1)[1]
    assert body.startswith("# agentmemory pinned slots\n## guidance\nUse &lt;pytest&gt; fixtures\n## persona\ncareful")
    assert "unpinned" not in text and "other project's" not in text
    assert text.index("pinned slots") < text.index("Lessons Learned") and "boom" in text
