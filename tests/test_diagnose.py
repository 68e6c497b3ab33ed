"""Diagnostics: pass on a healthy store, warn/fail on real damage, heal fixes what it can."""

import sqlite3

from agentmemory_server.operations import diagnose
from conftest import hook


def checks_by_name(call, **args):
    out = call("memory_diagnose", **args)
    return out, {c["name"]: c for c in out["checks"]}


def test_healthy_store_passes(client, call):
    client.post("/agentmemory/observe", json=hook())
    call("memory_save", content="a memory")
    call("memory_lesson_save", content="a lesson")
    out, checks = checks_by_name(call)
    assert out["status"] == "pass" and out["summary"]["fail"] == 0 and out["summary"]["warn"] == 0
    for name in ("db_integrity", "search_rows_missing", "search_rows_orphaned", "search_text_missing",
                 "session_counts", "disk_space", "bind_without_secret", "lesson_confidence", "slot_sizes"):
        assert checks[name]["status"] == "pass", name
    assert all({"name", "category", "status", "message", "fix", "fixable"} <= set(c) for c in out["checks"])
    assert {c["category"] for c in call("memory_diagnose", categories="config")["checks"]} == {"config"}


def test_config_warnings(make_runtime):
    from conftest import ToolCaller

    exposed = ToolCaller(make_runtime(host="0.0.0.0", allow_open_bind=True))  # auth off, explicitly allowed
    out, checks = checks_by_name(exposed)
    assert out["status"] == "warn" and checks["bind_without_secret"]["status"] == "warn"
    assert "AGENTMEMORY_SECRET" in checks["bind_without_secret"]["fix"]
    closed = ToolCaller(make_runtime(agent_scope="isolated"))
    assert checks_by_name(closed)[1]["agent_scope"]["status"] == "fail"
    secured = ToolCaller(make_runtime(host="0.0.0.0", secret="s3cret"))
    assert checks_by_name(secured)[1]["bind_without_secret"]["status"] == "pass"


def damage_behind_the_servers_back(rt, memory_id: str, lesson_id: str) -> None:
    """Drop a memory's search row, orphan a search row (drop an observation), drop a full-text
    row, break a lesson confidence: in the SQLite file, or the PostgreSQL database."""
    if rt.settings.database_url:
        import psycopg

        with psycopg.connect(rt.settings.database_url, autocommit=True) as con:
            con.execute("DELETE FROM search_docs WHERE doc_id = %s", (memory_id,))
            obs_id = con.execute("SELECT key FROM kv_store WHERE scope = 'mem:obs:s1' LIMIT 1").fetchone()[0]
            con.execute("DELETE FROM kv_store WHERE scope = 'mem:obs:s1' AND key = %s", (obs_id,))
            rowid = con.execute("SELECT id FROM search_docs WHERE doc_id = %s", (lesson_id,)).fetchone()[0]
            con.execute("DELETE FROM search_text WHERE rowid = %s", (rowid,))
            con.execute("UPDATE kv_store SET value = jsonb_set(value, '{confidence}', '3') WHERE key = %s",
                        (lesson_id,))
        return
    con = sqlite3.connect(rt.db.path)
    with con:
        con.execute("DELETE FROM search_docs WHERE doc_id = ?", (memory_id,))
        obs_id = con.execute("SELECT key FROM kv_store WHERE scope = 'mem:obs:s1' LIMIT 1").fetchone()[0]
        con.execute("DELETE FROM kv_store WHERE scope = 'mem:obs:s1' AND key = ?", (obs_id,))
        rowid = con.execute("SELECT id FROM search_docs WHERE doc_id = ?", (lesson_id,)).fetchone()[0]
        con.execute("DELETE FROM search_fts WHERE rowid = ?", (rowid,))
        con.execute("UPDATE kv_store SET value = json_set(value, '$.confidence', 3) WHERE key = ?", (lesson_id,))
    con.close()


def test_damaged_index_fails_then_heals(client, call, rt):
    for i in range(3):
        client.post("/agentmemory/observe", json=hook("s1", data={"tool_name": "Bash", "tool_input": f"make t{i}",
                                                                  "tool_output": f"target {i} built"}))
    memory = call("memory_save", content="kept memory about caching")["memory"]
    lesson = call("memory_lesson_save", content="kept lesson about caching")["lesson"]
    # Damage the file behind the server's back: drop a memory's search row, orphan a search row,
    # drop a full-text row, break a session count and a lesson confidence.
    damage_behind_the_servers_back(rt, memory["id"], lesson["id"])
    assert call("memory_recall", query="caching")["results"] == []  # the damage is real
    out, checks = checks_by_name(call)
    assert out["status"] == "fail"
    assert checks["search_rows_missing"]["status"] == "fail" and checks["search_rows_missing"]["fixable"]
    assert memory["id"] in checks["search_rows_missing"]["message"]
    assert checks["search_rows_orphaned"]["status"] == "warn"
    assert checks["search_text_missing"]["status"] == "fail"
    assert checks["session_counts"]["status"] == "warn" and checks["lesson_confidence"]["status"] == "fail"
    dry = client.post("/agentmemory/diagnostics/heal", json={"dryRun": True}).json
    assert dry["fixed"] == 0 and dry["wouldFix"] >= 5
    assert checks_by_name(call)[0]["status"] == "fail"  # dry run changed nothing
    healed = client.post("/agentmemory/diagnostics/heal", json={}).json
    # Each subsystem heals in turn (re-indexing the clamped lesson also restores its text row),
    # so the total can be lower than the dry run's sum, never higher.
    # SQLite's FTS5 also counts the dropped text row's index entries as orphaned: one fix more.
    least = 4 if rt.settings.database_url else 5
    assert least <= healed["fixed"] <= dry["wouldFix"] and healed["skipped"] == 0
    out, checks = checks_by_name(call)
    assert out["status"] == "pass", [c for c in out["checks"] if c["status"] != "pass"]
    assert call("memory_recall", query="caching")["results"][0]["kind"] == "memory"
    assert call("memory_lessons")["lessons"][0]["confidence"] == 1.0
    assert call("session_get", sessionId="s1")["session"]["observationCount"] == 2
    assert call("memory_audit", operation="heal_index")["total"] == 1


def test_disk_thresholds_and_failing_subsystem(call, rt, make_runtime):
    from conftest import ToolCaller

    # The thresholds are settings: more than any disk has makes the real free space "low".
    low = ToolCaller(make_runtime(data_dir=str(rt.settings.database_path.parent / "low"), disk_warn_mb=1 << 40))
    assert checks_by_name(low)[1]["disk_space"]["status"] == "warn"
    full = ToolCaller(make_runtime(data_dir=str(rt.settings.database_path.parent / "full"), disk_reserve_mb=1 << 40))
    checks = checks_by_name(full)[1]
    assert checks["disk_space"]["status"] == "fail" and "MB free" in checks["disk_space"]["message"]

    class Broken:
        def diagnose(self):
            raise RuntimeError("vector index unreadable")

    rt.services["vectors_test"] = Broken()
    try:
        checks = checks_by_name(call)[1]
        assert checks["vectors_test_diagnose"]["status"] == "fail"
        assert "vector index unreadable" in checks["vectors_test_diagnose"]["message"]
    finally:
        del rt.services["vectors_test"]


def test_diagnostics_route_shape(client):
    r = client.post("/agentmemory/diagnostics", json={"categories": ["database", "search"]})
    assert r.status_code == 200 and r.json["success"]
    assert {c["category"] for c in r.json["checks"]} == {"database", "search"}
    assert set(r.json["summary"]) == {"pass", "warn", "fail", "fixable"}
