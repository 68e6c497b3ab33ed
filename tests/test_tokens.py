"""API tokens for people and agents: hashed, scoped to projects and rights, isolated per
principal; the server's secret stays the admin token (upstream's hooks and shim unchanged)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from agentmemory_server.adapters import cli
from agentmemory_server.adapters.web import create_app
from agentmemory_server.kernel import principals, registry
from agentmemory_server.kernel.scopes import SESSIONS, TOKENS
from conftest import ToolCaller, hook
from test_recompress import observe, store_as_an_older_server_did

SECRET = "admin-secret-for-tokens"


@pytest.fixture
def app(make_runtime):
    rt = make_runtime(secret=SECRET, auth="on")
    return rt, create_app(runtime=rt).test_client()


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create(client, **body) -> dict:
    reply = client.post("/agentmemory/tokens", json=body, headers=as_(SECRET))
    assert reply.status_code == 201, reply.get_json()
    return reply.get_json()


def test_tokens_are_stored_hashed_and_listed_without_the_token(app):
    rt, client = app
    made = create(client, principal="ann", kind="person", projects=["alpha"], rights=["read", "write"])
    assert made["token"].startswith("amk_") and made["principal"] == "ann" and made["projects"] == ["alpha"]
    stored = rt.db.reader().records.list(TOKENS)
    assert len(stored) == 1 and made["token"] not in json.dumps(stored)
    listed = client.get("/agentmemory/tokens", headers=as_(SECRET)).get_json()["tokens"]
    assert [t["id"] for t in listed] == [made["id"]] and made["token"] not in json.dumps(listed)


def test_a_project_token_writes_and_reads_only_its_project_and_its_own_records(app):
    rt, client = app
    ann = create(client, principal="ann", projects=["alpha"])["token"]
    bob = create(client, principal="bob", projects=["alpha", "beta"])["token"]
    assert client.post("/agentmemory/observe", json=hook("s-ann", project="alpha"), headers=as_(ann)).status_code == 201
    refused = client.post("/agentmemory/observe", json=hook("s-ann2", project="beta"), headers=as_(ann))
    assert refused.status_code == 403 and refused.get_json()["code"] == "token_project"
    refused = client.post("/agentmemory/smart-search", json={"query": "pytest", "project": "beta"}, headers=as_(ann))
    assert refused.status_code == 403
    assert client.post("/agentmemory/observe", json=hook("s-bob", project="beta"), headers=as_(bob)).status_code == 201
    # Records are stamped with the principal, and each principal reads only its own.
    sessions = {s["id"]: s for s in client.get("/agentmemory/sessions", headers=as_(ann)).get_json()["sessions"]}
    assert set(sessions) == {"s-ann"} and sessions["s-ann"]["agentId"] == "ann"
    found = client.post("/agentmemory/smart-search", json={"query": "pytest passed"}, headers=as_(ann)).get_json()
    assert found["results"] and all(r.get("sessionId", "s-ann") == "s-ann" for r in found["results"])
    everything = client.get("/agentmemory/sessions", headers=as_(SECRET)).get_json()["sessions"]
    assert {s["id"] for s in everything} == {"s-ann", "s-bob"}  # the admin token sees every principal


def test_a_project_token_is_refused_a_hook_from_another_projects_directory(app):
    # A hook names its project by its working directory, not by a 'project' argument; the token's
    # list was checked only against the argument, so ann's agents filed events under any project.
    rt, client = app
    ann = create(client, principal="ann", kind="person", projects=["alpha"])["token"]

    def claude(session, cwd, event, **fields):
        payload = {"session_id": session, "cwd": cwd, "hook_event_name": event, **fields}
        return client.post("/agentmemory/hooks/claude-code", json=payload, headers=as_(ann))

    assert claude("cc-alpha", "/home/ann/alpha", "SessionStart", source="startup").status_code == 200
    refused = claude("cc-beta", "/home/ann/beta", "UserPromptSubmit", prompt="the beta release plan")
    assert refused.status_code == 403 and refused.get_json()["code"] == "token_project", refused.get_json()
    stored = rt.db.reader().records.list(SESSIONS)
    assert [(s["id"], s["project"]) for _k, s in stored] == [("cc-alpha", "alpha")]
    auth = client.get("/agentmemory/health", headers=as_(SECRET)).get_json()["auth"]
    assert auth["byReason"].get("token_project") == 1


def test_rights_are_enforced_and_denials_counted(app):
    rt, client = app
    reader = create(client, principal="viewer-bot", rights=["read"])["token"]
    assert client.post("/agentmemory/smart-search", json={"query": "x"}, headers=as_(reader)).status_code == 200
    refused = client.post("/agentmemory/remember", json={"content": "not allowed"}, headers=as_(reader))
    assert refused.status_code == 403 and refused.get_json()["code"] == "token_rights"
    writer = create(client, principal="writer-bot")["token"]
    assert client.get("/agentmemory/tokens", headers=as_(writer)).status_code == 403  # admin only
    assert client.get("/agentmemory/stats", headers=as_(writer)).status_code == 403
    auth = client.get("/agentmemory/health", headers=as_(SECRET)).get_json()["auth"]
    assert auth["byReason"].get("token_rights", 0) >= 3


def test_revoked_and_unknown_tokens_are_refused(app):
    rt, client = app
    made = create(client, principal="temp")
    assert client.get("/agentmemory/sessions", headers=as_(made["token"])).status_code == 200
    revoked = client.post("/agentmemory/tokens/revoke", json={"id": made["id"]}, headers=as_(SECRET))
    assert revoked.status_code == 200 and revoked.get_json()["revokedAt"]
    assert client.get("/agentmemory/sessions", headers=as_(made["token"])).status_code == 401
    assert client.get("/agentmemory/sessions", headers=as_("amk_not-a-token")).status_code == 401
    assert client.get("/agentmemory/sessions", headers=as_(SECRET)).status_code == 200  # the secret still works
    assert rt.denials.health()["byReason"]["wrong token"] >= 2


def test_bad_token_requests_get_clear_400s(app):
    _rt, client = app
    for body in ({"principal": "has space"}, {"principal": "ok", "rights": ["root"]}, {"principal": "ok", "kind": "x"}):
        reply = client.post("/agentmemory/tokens", json=body, headers=as_(SECRET))
        assert reply.status_code == 400, body


def test_the_cli_creates_lists_and_revokes_tokens(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AGENTMEMORY_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("EMBEDDING_PROVIDER", "none")
    assert cli.main(["-q", "tokens", "create", "carol", "--kind", "person", "--project", "alpha",
                     "--rights", "read"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["principal"] == "carol" and made["rights"] == ["read"] and made["token"].startswith("amk_")
    assert cli.main(["-q", "tokens", "list"]) == 0
    assert [t["principal"] for t in json.loads(capsys.readouterr().out)["tokens"]] == ["carol"]
    assert cli.main(["-q", "tokens", "revoke", made["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["revoked"] is True
    # The one argument is asked for by name where it is needed, and refused where it is not.
    for argv, said in ((["tokens", "create"], "tokens create needs PRINCIPAL"),
                       (["tokens", "revoke"], "tokens revoke needs ID"),
                       (["tokens", "list", "carol"], "tokens list takes no argument, got 'carol'")):
        assert cli.main(["-q", *argv]) == 1
        assert said in capsys.readouterr().err, argv


def test_host_and_store_wide_tools_need_the_admin_right(make_runtime, tmp_path):
    # Antigravity sync reads the server host's own conversation files: a writer's token filed the
    # owner's private plans under its principal and read them back. Graph compaction rewrites
    # every principal's graph records.
    brain = tmp_path / "antigravity" / "brain" / "conv1"
    brain.mkdir(parents=True)
    (brain / "task.md").write_text("# Owner plan\n\nthe owner's private plan\n")
    rt = make_runtime(secret=SECRET, auth="on", antigravity_dir=str(tmp_path / "antigravity"))
    client = create_app(runtime=rt).test_client()
    writer = create(client, principal="writer-bot", projects=["alpha"])["token"]
    for path in ("/agentmemory/antigravity/sync", "/agentmemory/antigravity/sync-all", "/agentmemory/graph/compact"):
        refused = client.post(path, json={}, headers=as_(writer))
        assert refused.status_code == 403 and refused.get_json()["code"] == "token_rights", (path, refused.get_json())
    assert rt.db.reader().records.get(SESSIONS, "antigravity-conv1") is None
    synced = client.post("/agentmemory/antigravity/sync", json={}, headers=as_(SECRET))
    assert synced.status_code == 200 and synced.get_json()["observations"] == 1  # the admin still may


def test_the_capture_inbox_keeps_to_the_tokens_projects(app):
    # The inbox is listed and retried by agent; a principal's token for alpha listed (a preview of
    # the stored title, the session) and retried the events its beta token had kept there.
    rt, client = app
    beta = create(client, principal="ann", projects=["beta"])["token"]
    alpha = create(client, principal="ann", projects=["alpha"])["token"]
    kept = hook("s-beta", project="beta", data={"tool_name": "memory_save", "tool_input": {"content": "beta plan"},
                                                 "tool_output": "saved the beta plan"})
    filtered = client.post("/agentmemory/observe", json=kept, headers=as_(beta)).get_json()
    assert filtered["filtered"] is True
    listed = client.get("/agentmemory/capture", headers=as_(alpha)).get_json()
    assert listed["items"] == [] and listed["total"] == 0 and "s-beta" not in json.dumps(listed)
    retried = client.post("/agentmemory/capture/retry", json={"eventId": filtered["eventId"]}, headers=as_(alpha))
    assert retried.status_code == 404
    assert rt.db.reader().records.get(SESSIONS, "s-beta") is None  # not stored despite the filter
    own = client.get("/agentmemory/capture", headers=as_(beta)).get_json()
    assert [item["eventId"] for item in own["items"]] == [filtered["eventId"]] and own["total"] == 1


def test_a_principals_token_is_not_shown_whom_else_the_server_refused(app):
    """/health, /status and the viewer's snapshot kept the latest refused request for any reader:
    another principal's name, the tool it was refused and its address."""
    _rt, client = app
    ann = create(client, principal="ann", projects=["alpha"])["token"]
    bot = create(client, principal="bot", projects=["beta"], rights=["read"])["token"]
    refused = client.post("/agentmemory/search", json={"query": "x", "project": "gamma"}, headers=as_(ann))
    assert refused.status_code == 403
    for path in ("/agentmemory/health", "/agentmemory/status", "/agentmemory/viewer/snapshot"):
        shown = client.get(path, headers=as_(bot))
        assert shown.status_code == 200 and "ann" not in shown.get_data(as_text=True), (path, shown.get_json())
    health = client.get("/agentmemory/health", headers=as_(bot)).get_json()
    assert "auth" not in health  # the refusals of every principal are the admin's to see, counts too
    admin = client.get("/agentmemory/health", headers=as_(SECRET)).get_json()["auth"]
    assert "as ann" in admin["lastDenied"]["path"]


MARK = "qqelsewhereqq"  # in every record the callers below must not be shown


def rpc(client, token: str, method: str, params: dict):
    """One MCP JSON-RPC call over POST /mcp; the result (a tool's text parsed) or the error."""
    reply = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                        headers={**as_(token), "Accept": "application/json, text/event-stream",
                                 "MCP-Protocol-Version": "2025-11-25"})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return reply.get_json()


def seed_two_projects(client) -> dict[str, str]:
    """Principal bot: a session, an observation, two related memories and a summary in beta
    (MARK everywhere), one memory in alpha; principal eve: three memories of no project."""
    tokens = {"beta": create(client, principal="bot", projects=["beta"])["token"],
              "alpha": create(client, principal="bot", projects=["alpha"])["token"],
              "eve": create(client, principal="eve")["token"]}
    beta = as_(tokens["beta"])
    assert client.post("/agentmemory/observe", json=hook("s-beta", project="beta", data={
        "tool_name": "Bash", "tool_input": {"command": "make"}, "tool_output": f"built {MARK}"}), headers=beta).status_code == 201
    first = client.post("/agentmemory/remember", json={"content": f"beta deploy runbook {MARK}"}, headers=beta)
    second = client.post("/agentmemory/remember", json={"content": f"beta rollback steps {MARK}"}, headers=beta)
    related = client.post("/agentmemory/relations", json={"sourceId": first.get_json()["memory"]["id"], "type": "related",
                                                          "targetId": second.get_json()["memory"]["id"]}, headers=beta)
    assert related.status_code == 201, related.get_json()
    assert client.post("/agentmemory/session/end", json={"sessionId": "s-beta"}, headers=beta).status_code == 200
    alpha = client.post("/agentmemory/remember", json={"content": "alpha coding style"}, headers=as_(tokens["alpha"]))
    assert alpha.status_code == 201
    for i in range(3):
        assert client.post("/agentmemory/remember", json={"content": f"eve note {i} {MARK}"},
                           headers=as_(tokens["eve"])).status_code == 201
    return tokens


def test_a_principals_token_is_shown_the_health_of_its_own_records_not_the_stores(app):
    """/health, /status and the viewer's snapshot showed any principal's token the store-wide
    counts (every principal's and project's records, queues, jobs, refusals, model usage); a
    token for alpha learned how much its principal kept in beta and everyone else everywhere."""
    _rt, client = app
    seed_two_projects(client)
    reader = create(client, principal="bot", projects=["alpha"], rights=["read"])["token"]
    own = {"sessions": 0, "memories": 1, "observations": 0}
    health = client.get("/agentmemory/health", headers=as_(reader))
    body = health.get_json()
    assert health.status_code == 200 and body["status"] == "healthy" and body["counts"] == own, body
    assert body["shownTo"] == {"principal": "bot", "projects": ["alpha"]}
    assert not {"queues", "db", "jobs", "live", "auth", "rateLimit", "storage", "images"} & set(body), sorted(body)
    parts = {k: v for k, v in body.items() if isinstance(v, dict) and k not in ("counts", "shownTo")}
    assert parts and all(set(v) == {"status"} for v in parts.values()), parts  # each part's state alone
    status = client.get("/agentmemory/status", headers=as_(reader)).get_json()
    assert status["counts"] == own and status["status"] == "healthy"
    assert not {"index", "db", "auth", "capture", "images"} & set(status), sorted(status)
    snapshot = client.get("/agentmemory/viewer/snapshot", headers=as_(reader)).get_json()
    assert snapshot["counts"] == own and not {"health", "indexes", "live"} & set(snapshot), sorted(snapshot)
    assert snapshot["ingest"]["memories"]["lastHour"] == 1  # its own memory, not the store's seven
    html = client.get("/agentmemory/status?format=html", headers=as_(reader)).get_data(as_text=True)
    assert "<td>memories</td><td>1</td>" in html
    # The admin secret still sees the whole store.
    admin = client.get("/agentmemory/health", headers=as_(SECRET)).get_json()
    assert admin["counts"] == {"sessions": 1, "observations": 1, "memories": 6} and "queues" in admin and "db" in admin
    whole = client.get("/agentmemory/viewer/snapshot", headers=as_(SECRET)).get_json()
    assert whole["ingest"]["memories"]["lastHour"] == 6 and "indexes" in whole and "health" in whole


def test_a_principals_status_alerts_send_it_to_the_operator_not_to_the_health_details_it_cannot_see(make_runtime):
    """/status told a principal's token "see GET /agentmemory/health" for a part that is not
    healthy, but /health shows that token only each part's status: the fix now says to ask the
    operator, whose admin secret sees the details there."""
    rt = make_runtime(secret=SECRET, auth="on", background_jobs=True, background="external")
    rt.started_at -= 3600  # an external worker that never came: background is degraded
    client = create_app(runtime=rt).test_client()
    bot = create(client, principal="bot", projects=["alpha"], rights=["read"])["token"]
    shown = client.get("/agentmemory/status", headers=as_(bot)).get_json()["alerts"]
    (alert,) = [a for a in shown if a["message"].startswith("background is degraded")]
    assert "operator" in alert["fix"] and "admin secret" in alert["fix"], alert
    admin = client.get("/agentmemory/status", headers=as_(SECRET)).get_json()["alerts"]
    (alert,) = [a for a in admin if a["message"].startswith("background is degraded")]
    assert alert["fix"] == "see GET /agentmemory/health"
    page = client.get("/agentmemory/status?format=html", headers=as_(bot)).get_data(as_text=True)
    assert "ask the server&#x27;s operator" in page


def test_a_project_tokens_counts_and_lists_keep_to_its_projects(app):
    """/counts, the viewer's overview, the consolidation layers, the relations list and the MCP
    status resource counted (and listed) the principal's records of every project; a refusal
    to write into a session named the other project it lies in."""
    _rt, client = app
    tokens = seed_two_projects(client)
    alpha = tokens["alpha"]
    own = {"sessions": 0, "memories": 1, "observations": 0}
    assert client.get("/agentmemory/counts", headers=as_(alpha)).get_json()["counts"] == own
    assert client.get("/agentmemory/viewer/overview", headers=as_(alpha)).get_json()["counts"] == own
    layers = client.get("/agentmemory/consolidation/status", headers=as_(alpha)).get_json()
    assert (layers["summaries"], layers["relations"], layers["lastRun"]) == (0, 0, None), layers
    relations = client.get("/agentmemory/relations", headers=as_(alpha)).get_json()
    assert relations["relations"] == [] and relations["total"] == 0
    resource = rpc(client, alpha, "resources/read", {"uri": "agentmemory://status"})
    counted = json.loads(resource["result"]["contents"][0]["text"])
    assert (counted["sessionCount"], counted["memoryCount"], counted["observationCount"]) == (0, 1, 0), counted
    moved = client.post("/agentmemory/session/start", json={"sessionId": "s-beta"}, headers=as_(alpha))
    assert moved.status_code == 403 and moved.get_json()["code"] == "token_project"
    assert "'beta'" not in moved.get_json()["error"], moved.get_json()
    # The beta token sees beta's records; the admin every principal's.
    beta = tokens["beta"]
    assert client.get("/agentmemory/counts", headers=as_(beta)).get_json()["counts"] == {
        "sessions": 1, "memories": 2, "observations": 1}
    assert client.get("/agentmemory/relations", headers=as_(beta)).get_json()["total"] == 1
    layers = client.get("/agentmemory/consolidation/status", headers=as_(beta)).get_json()
    assert (layers["summaries"], layers["relations"]) == (1, 1), layers
    assert client.get("/agentmemory/counts", headers=as_(SECRET)).get_json()["counts"]["memories"] == 6


def test_a_principals_token_is_shown_the_state_of_each_check_not_what_it_found(app):
    """Diagnostics read the whole store and named what they found: a sample of other projects'
    records (a session id here), slot scopes with project names, counts."""
    rt, client = app
    tokens = seed_two_projects(client)
    with rt.db.transaction("test_drift") as tx:  # a session whose observation count drifted
        session = tx.records.get(SESSIONS, "s-beta")
        tx.records.set(SESSIONS, "s-beta", {**session, "observationCount": 99}, now=rt.clock.iso())
    shown = client.post("/agentmemory/diagnostics", json={}, headers=as_(tokens["alpha"]))
    checks = {c["name"]: c for c in shown.get_json()["checks"]}
    assert shown.status_code == 200 and checks["session_counts"]["status"] == "warn", checks
    assert "s-beta" not in shown.get_data(as_text=True) and "message" not in checks["session_counts"]
    called = rpc(client, tokens["alpha"], "tools/call", {"name": "memory_diagnose", "arguments": {}})
    assert "warn" in json.dumps(called) and "s-beta" not in json.dumps(called)
    admin = client.post("/agentmemory/diagnostics", json={}, headers=as_(SECRET)).get_json()
    assert "s-beta" in {c["name"]: c for c in admin["checks"]}["session_counts"]["message"]


def test_a_write_only_token_is_answered_with_ids_and_states_not_records(app):
    """Write tools answered with records the caller did not write: a session start with the
    session's first prompt, an append with the slot's whole content, a strengthened lesson, an
    enrichment's memories, a summary, a crystal or a reflection made of the principal's
    observations and memories, a hook's context block. A token with the write right alone now
    gets ids and states; a token that may read is answered as before."""
    _rt, client = app
    writer = create(client, principal="bot", projects=["alpha"])["token"]
    blind = create(client, principal="bot", projects=["alpha"], rights=["write"])["token"]
    w = as_(writer)
    prompt = hook("s1", "prompt_submit", project="alpha", cwd="/home/bot/alpha", data={"prompt": f"fix deploy {MARK}"})
    assert client.post("/agentmemory/observe", json=prompt, headers=w).status_code == 201
    edit = hook("s1", project="alpha", cwd="/home/bot/alpha", data={
        "tool_name": "Edit", "tool_input": {"file_path": "src/deploy.py"}, "tool_output": f"patched {MARK}"})
    assert client.post("/agentmemory/observe", json=edit, headers=w).status_code == 201
    assert client.post("/agentmemory/remember", json={"content": f"deploy needs the blue switch {MARK}",
                                                      "files": ["src/deploy.py"]}, headers=w).status_code == 201
    lesson = client.post("/agentmemory/lessons", json={"content": f"deploy lesson {MARK}"}, headers=w).get_json()
    assert client.post("/agentmemory/slot", json={"label": "notes", "content": f"deploy notes {MARK}"},
                       headers=w).status_code in (200, 201)
    calls = [("/session/start", {"sessionId": "s1"}),
             ("/slot/append", {"label": "notes", "text": "one more note"}),
             ("/lessons/strengthen", {"lessonId": lesson["lesson"]["id"]}),
             ("/enrich", {"sessionId": "s1", "files": ["src/deploy.py"], "terms": ["deploy"]}),
             ("/summarize", {"sessionId": "s1"}),
             ("/crystals/create", {"sessionId": "s1"}),
             ("/reflect", {}),
             ("/session/end", {"sessionId": "s1"})]
    for path, body in calls:
        reply = client.post("/agentmemory" + path, json=body, headers=as_(blind))
        text = reply.get_data(as_text=True)
        assert reply.status_code in (200, 201) and MARK not in text, (path, text[:400])
    strengthened = client.post("/agentmemory/lessons/strengthen", json={"lessonId": lesson["lesson"]["id"]},
                               headers=as_(blind)).get_json()
    assert strengthened["success"] is True and strengthened["lesson"]["id"] == lesson["lesson"]["id"]
    summary = client.post("/agentmemory/summarize", json={"sessionId": "s1"}, headers=as_(blind)).get_json()
    assert summary["summary"]["sessionId"] == "s1" and "narrative" not in summary["summary"]
    # MCP: the same answers through tools/call.
    for name, arguments in (("memory_slot_append", {"label": "notes", "text": "via mcp"}),
                            ("memory_crystallize", {"sessionId": "s1"}), ("memory_reflect", {})):
        result = rpc(client, blind, "tools/call", {"name": name, "arguments": arguments})["result"]
        assert not result.get("isError") and MARK not in json.dumps(result), (name, result)
    # A hook's answer keeps its client's format, without the context block.
    start = {"session_id": "s2", "cwd": "/home/bot/alpha", "hook_event_name": "SessionStart", "source": "startup"}
    hooked = client.post("/agentmemory/hooks/claude-code", json=start, headers=as_(blind))
    assert hooked.status_code == 200 and MARK not in hooked.get_data(as_text=True), hooked.get_data(as_text=True)
    # A token that may read is answered as before.
    full = client.post("/agentmemory/slot/append", json={"label": "notes", "text": "last"}, headers=w).get_json()
    assert MARK in full["slot"]["content"]
    assert MARK in json.dumps(client.post("/agentmemory/summarize", json={"sessionId": "s1"}, headers=w).get_json())
    start["session_id"] = "s3"
    assert MARK in client.post("/agentmemory/hooks/claude-code", json=start, headers=w).get_data(as_text=True)


def test_an_admin_token_without_read_runs_the_store_but_is_not_handed_its_records(app):
    """A token given the admin right without read exported every record of its principal (GET
    /export, MCP memory_export) and read the audit trail: the admin right manages the store, it
    does not stand in for read. The admin tools whose answer carries records now need read too;
    the others (counts, tokens) still answer it. A full Antigravity sync (its crystals and
    reflections) and recompress (titles before and after) need read as well."""
    _rt, client = app
    writer = create(client, principal="bot")["token"]
    saved = client.post("/agentmemory/remember", json={"content": f"deploy runbook {MARK}"}, headers=as_(writer))
    assert saved.status_code == 201
    keeper = create(client, principal="bot", rights=["write", "admin"])["token"]
    for method, path in (("GET", "/agentmemory/export"), ("GET", "/agentmemory/audit"),
                         ("POST", "/agentmemory/antigravity/sync-all"), ("POST", "/agentmemory/recompress")):
        refused = client.open(path, method=method, json={} if method == "POST" else None, headers=as_(keeper))
        body = refused.get_json()
        assert refused.status_code == 403 and body["code"] == "token_rights", (path, body)
        assert "lacks the 'read' right" in body["error"] and MARK not in refused.get_data(as_text=True), body
    for name in ("memory_export", "memory_audit"):
        called = json.dumps(rpc(client, keeper, "tools/call", {"name": name, "arguments": {}}))
        assert "token_rights" in called and MARK not in called, (name, called[:400])
    assert client.get("/agentmemory/stats", headers=as_(keeper)).status_code == 200
    assert client.get("/agentmemory/tokens", headers=as_(keeper)).status_code == 200
    # With read as well, the export holds the principal's records, over REST and MCP.
    full = create(client, principal="bot", rights=["read", "admin"])["token"]
    exported = client.get("/agentmemory/export", headers=as_(full))
    assert exported.status_code == 200 and MARK in json.dumps(exported.get_json()["memories"])
    assert MARK in json.dumps(rpc(client, full, "tools/call", {"name": "memory_export", "arguments": {}}))


def test_the_admin_right_is_for_tokens_valid_for_every_project(app, capsys, monkeypatch, tmp_path):
    """A principal's admin token limited to alpha exported the principal's records of every
    project (the export keeps to the principal, not to the token's projects) and could make
    itself a token for every project. The admin right now needs a token for every project:
    asking for one limited to some is a 400, and one stored before that rule keeps its other
    rights but is refused its admin tools."""
    rt, client = app
    seed_two_projects(client)  # bot's beta records carry MARK; its alpha memory does not
    asked = {"principal": "bot", "projects": ["alpha"], "rights": ["read", "admin"]}
    refused = client.post("/agentmemory/tokens", json=asked, headers=as_(SECRET))
    body = refused.get_json()
    assert refused.status_code == 400 and body["details"]["field"] == "projects", body
    assert "every project" in body["error"], body
    assert not [t for t in client.get("/agentmemory/tokens", headers=as_(SECRET)).get_json()["tokens"]
                if "admin" in t["rights"]]
    legacy = principals.new_token()  # made before the rule: admin for alpha alone
    record = {"principal": "bot", "kind": "agent", "projects": ["alpha"], "rights": ["read", "admin"],
              "createdAt": rt.clock.iso()}
    with rt.db.transaction("test_legacy_token") as tx:
        tx.records.set(TOKENS, principals.hash_token(legacy), record, now=record["createdAt"])
    exported = client.get("/agentmemory/export", headers=as_(legacy))
    assert exported.status_code == 403 and exported.get_json()["code"] == "token_rights", exported.get_json()
    assert "every project" in exported.get_json()["error"] and MARK not in exported.get_data(as_text=True)
    called = json.dumps(rpc(client, legacy, "tools/call", {"name": "memory_export", "arguments": {}}))
    assert "token_rights" in called and MARK not in called, called[:400]
    widened = client.post("/agentmemory/tokens", json={"principal": "bot"}, headers=as_(legacy))
    assert widened.status_code == 403 and widened.get_json()["code"] == "token_rights"
    assert client.get("/agentmemory/counts", headers=as_(legacy)).get_json()["counts"]["memories"] == 1  # alpha's
    # A token for every project with admin and read exports the principal's records of every project.
    whole = create(client, principal="bot", rights=["read", "admin"])["token"]
    assert MARK in json.dumps(client.get("/agentmemory/export", headers=as_(whole)).get_json()["memories"])
    # The CLI refuses the combination with the same message.
    monkeypatch.setenv("AGENTMEMORY_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("EMBEDDING_PROVIDER", "none")
    assert cli.main(["-q", "tokens", "create", "bot", "--project", "alpha", "--rights", "read,admin"]) == 1
    assert "every project" in capsys.readouterr().err


def test_a_registry_refuses_an_admin_tool_that_does_not_say_whether_its_answer_carries_records():
    """Which admin tools also need read was a list kept by hand in principals.py (ADMIN_READS): a
    new admin tool answering with records would have been forgotten there and handed its records
    to a token with admin and not read. Each admin tool now says so where it is registered, and
    the registry refuses one that does not, naming it; a tool that is not an admin tool may not
    say it, and a right that does not exist is refused."""

    def handler(ctx, args):
        return {}

    fresh = registry.Registry()
    with pytest.raises(ValueError, match=r"admin tool 'memory_export' must declare answers_with_records"):
        fresh.add(registry.Tool("memory_export", "Export everything", registry.params(), handler, right="admin"))
    with pytest.raises(ValueError, match=r"tool 'memory_export' declares right='owner'"):
        fresh.add(registry.Tool("memory_export", "Export everything", registry.params(), handler, right="owner"))
    with pytest.raises(ValueError, match=r"tool 'weekly_digest' declares answers_with_records but is not an admin"):
        fresh.add(registry.Tool("weekly_digest", "A digest", registry.params(), handler, answers_with_records=True))
    added = fresh.add(registry.Tool("memory_export", "Export everything", registry.params(), handler,
                                    right="admin", answers_with_records=True))
    assert principals.rights_needed(added) == ("admin", "read")
    assert principals.rights_needed(replace(added, answers_with_records=False)) == ("admin",)


# Each admin tool called on a store whose records all carry MARK, in an order that leaves each
# one something to act on (the sweeps and deletes last); each entry makes its arguments from
# what the earlier calls answered.
ADMIN_CALLS: tuple[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]], ...] = (
    ("stats", lambda seen: {}),
    ("tokens_create", lambda seen: {"principal": "keeper", "rights": ["admin"]}),
    ("tokens_list", lambda seen: {}),
    ("tokens_revoke", lambda seen: {"id": seen["tokens_create"]["id"]}),
    ("diagnostics_heal", lambda seen: {}),
    ("reindex", lambda seen: {}),
    ("graph_compact", lambda seen: {}),
    ("lesson_decay", lambda seen: {}),
    ("memory_antigravity_sync", lambda seen: {"conversationId": "conv-other"}),
    ("memory_antigravity_sync_all", lambda seen: {"conversationId": "conv-mark"}),
    ("memory_export", lambda seen: {}),
    ("memory_audit", lambda seen: {}),
    ("recompress", lambda seen: {}),
    ("import", lambda seen: {"exportData": seen["memory_export"], "strategy": "merge"}),
    ("memory_governance_delete", lambda seen: {"memoryIds": [seen["memory"]], "reason": "test"}),
    ("auto_forget", lambda seen: {}),
    ("evict", lambda seen: {"maxObservationsPerProject": 1, "lowImportanceMaxDays": 1}),
)


def test_each_admin_tool_declares_whether_its_answer_carries_records_as_its_answer_does(make_runtime, tmp_path):
    """Every admin tool registered is run on a store whose records all carry MARK; its answer
    holds MARK exactly when it declares answers_with_records (the export, the audit trail,
    recompress's titles, a full Antigravity sync's crystals and reflections), and a store-wide
    count (stats), a token list or a sweep answering with ids does not. (The audit trail names
    what was written: ids, session ids, projects, file paths, a deletion's reason.)"""
    brain = tmp_path / "antigravity" / "brain"
    for conversation in ("conv-mark", "conv-other"):
        (brain / conversation).mkdir(parents=True)
        (brain / conversation / "task.md").write_text(f"# Release plan {MARK}\n\n- [ ] TODO tag {MARK}\n")
    rt = make_runtime(antigravity_dir=str(tmp_path / "antigravity"))
    client = create_app(runtime=rt).test_client()
    seen: dict[str, Any] = {}
    saved = client.post("/agentmemory/remember", json={"content": f"deploy runbook {MARK}"})
    assert saved.status_code == 201
    seen["memory"] = saved.get_json()["memory"]["id"]
    # The audit trail names what was written: here a deletion's reason quoting the record.
    stale = client.post("/agentmemory/remember", json={"content": f"old runbook {MARK}"}).get_json()["memory"]["id"]
    deleted = client.delete("/agentmemory/governance/memories",
                            json={"memoryIds": [stale], "reason": f"replaced by the runbook 'deploy runbook {MARK}'"})
    assert deleted.status_code == 200, deleted.get_json()
    lesson = client.post("/agentmemory/lessons", json={"content": f"always tag {MARK}", "context": "release"})
    assert lesson.status_code in (200, 201), lesson.get_json()
    grep = {"tool_name": "Grep", "tool_input": {"pattern": MARK, "path": "src"},
            "tool_response": {"mode": "files_with_matches", "filenames": ["src/a.ts", "src/b.ts"], "numFiles": 2}}
    obs_id = observe(client, "old", 0, grep)
    store_as_an_older_server_did(rt, "old", obs_id, title=f"Grep '{MARK}' in src: 1 matches")

    admin_tools = {t.name for t in registry.REGISTRY.all() if principals.right_needed(t) == "admin"}
    assert [name for name, _args in ADMIN_CALLS if name not in admin_tools] == []
    assert sorted(admin_tools - {name for name, _args in ADMIN_CALLS}) == [], "a new admin tool: add it above"
    declared = {name for name in admin_tools if registry.REGISTRY.get(name).answers_with_records}
    assert declared == {"memory_export", "memory_audit", "recompress", "memory_antigravity_sync_all"}
    for name, args_of in ADMIN_CALLS:
        answer = ToolCaller(rt)(name, **args_of(seen))
        seen[name] = answer
        carries = MARK in json.dumps(answer)
        assert carries == registry.REGISTRY.get(name).answers_with_records, (name, json.dumps(answer)[:600])
