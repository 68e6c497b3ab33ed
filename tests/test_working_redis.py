"""Working memory across backends: identical serialisation, and the Redis -> SQLite fallback
(at start-up and mid-run) reported in responses, stats, /health and diagnose."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis

from conftest import RedisServer, ToolCaller, free_port

VALUES = {
    "tuple": (1, 2, (3, 4)), "ints": [0, -1, 2**63, 2**70], "floats": [1.5, 0.1, -2.0, 1e-7],
    "nested": {"a": {"b": [{"c": None, "d": True}]}, "e": []},
    "unicode": "héllo ✓ 𝄞 日本語 emoji 🙂 \"q\" \\ \n\t", "empty": {}, "text": "plain",
}


def test_json_round_trip_is_identical_on_both_backends(redis_server, make_runtime):
    seen = {}
    for backend in ("sqlite", "redis"):
        rt = make_runtime(working_memory_backend=backend, redis_url=redis_server.url,
                          working_memory_redis_prefix=f"t-{uuid.uuid4().hex}")
        call = ToolCaller(rt)
        for key, value in VALUES.items():
            call("memory_working_set", sessionId="s", key=key, value=value, ttlSeconds=0)
        svc = rt.services["working_memory"]
        assert svc.backend.name == backend
        stored = {k: v for k, v, _e in svc.backend.items(svc_scope(), 0.0)}  # the raw JSON text
        seen[backend] = {
            "get": {k: call("memory_working_get", sessionId="s", key=k)["value"] for k in VALUES},
            "all": call("memory_working_get", sessionId="s", operation="all")["values"],
            "stored": stored,
        }
    assert seen["sqlite"] == seen["redis"]
    assert seen["redis"]["get"]["tuple"] == [1, 2, [3, 4]]
    assert seen["redis"]["get"]["ints"][3] == 2**70


def svc_scope():
    from agentmemory_server.working.model import Scope

    return Scope("default", "default", "s")


def test_unreachable_redis_at_start_falls_back_and_says_so(make_runtime, caplog):
    port = free_port()  # nothing listens there
    url = f"redis://user:hunter2pw@127.0.0.1:{port}/0"
    with caplog.at_level(logging.ERROR, logger="agentmemory.working"):
        rt = make_runtime(working_memory_backend="redis", redis_url=url)
    svc = rt.services["working_memory"]
    assert svc.using_fallback and svc.backend.name == "sqlite"
    assert any("SQLite fallback" in r.getMessage() for r in caplog.records)
    assert "hunter2pw" not in caplog.text
    call = ToolCaller(rt)
    r = call("memory_working_set", sessionId="s", key="k", value=1)
    assert r["backend"] == "sqlite" and r["usingFallback"] is True and "SQLite fallback" in r["warning"]
    assert call("memory_working_stats", sessionId="s")["usingFallback"] is True
    health = call("health")
    section = health["working_memory"]
    assert health["status"] == "degraded" and section["status"] == "degraded"
    assert section["usingFallback"] is True and section["configuredBackend"] == "redis"
    assert "hunter2pw" not in section["redisUrl"] and "Connection" in section["fallbackReason"]
    check = svc.diagnose()[0]
    assert check["status"] == "fail" and "unreachable" in check["message"]


def test_redis_stopped_mid_run_falls_back_and_stays_until_healed(own_redis, make_runtime, caplog):
    rt = make_runtime(working_memory_backend="redis", redis_url=own_redis.url)
    call = ToolCaller(rt)
    svc = rt.services["working_memory"]
    assert call("memory_working_set", sessionId="s", key="before", value=1)["backend"] == "redis"
    assert svc.diagnose()[0]["status"] == "pass" and call("health")["status"] == "healthy"
    own_redis.stop()
    with caplog.at_level(logging.ERROR, logger="agentmemory.working"):
        r = call("memory_working_set", sessionId="s", key="after", value=2)
    assert r["backend"] == "sqlite" and r["usingFallback"] is True
    assert any("SQLite fallback" in rec.getMessage() for rec in caplog.records)
    assert call("memory_working_get", sessionId="s", key="after")["value"] == 2
    # what was written to Redis is not visible during the outage (and the response says why)
    got = call("memory_working_get", sessionId="s", key="before")
    assert got["found"] is False and got["usingFallback"] is True
    stats = call("memory_working_stats", sessionId="s")
    assert stats["backend"] == "sqlite" and stats["usingFallback"] is True and stats["userKeys"] == 1
    health = call("health")
    assert health["status"] == "degraded" and health["working_memory"]["usingFallback"] is True
    assert svc.diagnose()[0]["status"] == "fail"
    own_redis.start()  # Redis is back on the same port ...
    check = svc.diagnose()[0]
    assert check["status"] == "warn" and "heal" in check["fix"]
    # ... but this process stays on SQLite, so a session's data never silently splits
    assert call("memory_working_get", sessionId="s", key="after")["backend"] == "sqlite"
    rt.jobs.run_now("working_memory_sweep")
    assert rt.jobs.status()[-1]["errors"] == 0


def test_diagnose_warns_when_redis_may_evict(own_redis, make_runtime):
    rt = make_runtime(working_memory_backend="redis", redis_url=own_redis.url)
    checks = rt.services["working_memory"].diagnose()
    assert [c["status"] for c in checks] == ["pass", "pass"]
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
    finally:
        client.close()
    eviction = rt.services["working_memory"].diagnose()[1]
    assert eviction["status"] == "warn" and "allkeys-lru" in eviction["message"]


def test_every_process_follows_one_processs_fallback_and_its_end(own_redis, make_runtime, monkeypatch):
    """Two processes on one store (two gunicorn workers, or two nodes): one meets Redis down and
    moves to the database; the other, which had no request during the outage, must not go on
    serving the same sessions from Redis once it is back, and neither may a process started later
    (a respawned worker). Heal, once Redis answers, brings every process back to it."""
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)  # each call looks (the product: 5 s)
    settings = {"working_memory_backend": "redis", "redis_url": own_redis.url}
    first, second = ToolCaller(make_runtime(**settings)), ToolCaller(make_runtime(**settings))
    s = {"sessionId": "shared"}
    assert first("memory_working_set", **s, key="plan", value=1)["backend"] == "redis"
    own_redis.stop()
    assert first("memory_working_set", **s, key="plan", value=2)["usingFallback"] is True
    own_redis.start()
    got = second("memory_working_get", **s, key="plan")
    assert got["backend"] == "sqlite" and got["usingFallback"] is True and got["value"] == 2
    respawned = ToolCaller(make_runtime(**settings))
    assert respawned("memory_working_get", **s, key="plan")["value"] == 2
    assert respawned("health")["working_memory"]["usingFallback"] is True
    check = respawned.rt.services["working_memory"].diagnose()[0]
    assert check["status"] == "warn" and check["fixable"] is True and "heal" in check["fix"]

    healed = first("diagnostics_heal")
    assert any(d["name"] == "working_memory_backend" and d["fixed"] == 1 for d in healed["details"]), healed
    assert first("memory_working_set", **s, key="plan", value=3)["backend"] == "redis"
    for call in (first, second, respawned):
        got = call("memory_working_get", **s, key="plan")
        assert got["backend"] == "redis" and got["usingFallback"] is False and got["value"] == 3
    assert second("health")["working_memory"]["status"] == "ok"


def test_health_of_a_process_without_working_memory_calls_reports_the_stores_fallback(own_redis, make_runtime,
                                                                                     monkeypatch):
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    settings = {"working_memory_backend": "redis", "redis_url": own_redis.url}
    first, idle = ToolCaller(make_runtime(**settings)), ToolCaller(make_runtime(**settings))
    own_redis.stop()
    assert first("memory_working_set", sessionId="s", key="k", value=1)["usingFallback"] is True
    assert idle("health")["working_memory"]["usingFallback"] is True
    own_redis.start()
    first("diagnostics_heal")
    healed = idle("health")["working_memory"]
    outage = {key: healed.pop(key) for key in ("lastError", "lastErrorAt", "recoveredAt")}
    assert healed == {"status": "ok", "backend": "redis", "configuredBackend": "redis", "usingFallback": False,
                      "redisUrl": own_redis.url}
    # The process that only followed the store's fallback keeps it to read about, marked recovered.
    assert outage["lastError"] and outage["recoveredAt"] >= outage["lastErrorAt"], outage


def test_an_admin_command_that_cannot_reach_redis_leaves_the_servers_on_it(own_redis, make_runtime, monkeypatch):
    from agentmemory_server.wiring import build_runtime
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    server = ToolCaller(make_runtime(working_memory_backend="redis", redis_url=own_redis.url))
    elsewhere = server.rt.settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    tool = build_runtime(elsewhere, role="tool")  # `agentmemory ...` run on a machine without Redis
    try:
        assert tool.services["working_memory"].using_fallback
    finally:
        tool.close()
    got = server("memory_working_set", sessionId="s", key="k", value=1)
    assert got["backend"] == "redis" and got["usingFallback"] is False


@pytest.fixture
def durable_redis(tmp_path):
    """A redis-server that keeps its data when stopped and started (an append-only file), as a
    deployment's does."""
    workdir = tmp_path / "durable-redis"
    workdir.mkdir()
    server = RedisServer(workdir, ("--appendonly", "yes"))
    try:
        yield server
    finally:
        server.stop()


def test_heal_moves_what_was_written_during_the_outage_to_redis(durable_redis, make_runtime):
    """Keys, task, scratchpad and checkpoints written to the database while Redis was down are
    the session's latest: after heal they are read from Redis, with what Redis held before."""
    own_redis = durable_redis
    call = ToolCaller(make_runtime(working_memory_backend="redis", redis_url=own_redis.url))
    s = {"sessionId": "s"}
    call("memory_working_set", **s, key="kept", value="from before")
    call("memory_working_set", **s, key="plan", value="old plan")
    call("memory_working_task", **s, operation="set", taskId="t1", totalSteps=4)
    call("memory_working_scratchpad", **s, operation="append", content="note before")
    before = call("memory_working_checkpoint", **s, operation="create", description="before")["checkpointId"]
    own_redis.stop()
    assert call("memory_working_set", **s, key="plan", value="new plan")["usingFallback"] is True
    call("memory_working_set", **s, key="during", value={"n": 2}, ttlSeconds=3600)
    task = call("memory_working_task", **s, operation="set", taskId="t2", totalSteps=2)
    call("memory_working_scratchpad", **s, operation="append", content="note during")
    during = call("memory_working_checkpoint", **s, operation="create", description="during")["checkpointId"]
    call("memory_working_set", sessionId="other", key="only", value="in the outage")
    outage = call("health")["working_memory"]
    assert outage["lastError"] == outage["fallbackReason"] and outage["lastErrorAt"] == outage["fallbackSince"]
    assert outage["recoveredAt"] is None
    own_redis.start()

    healed = call("diagnostics_heal")
    detail = next(d for d in healed["details"] if d["name"] == "working_memory_backend")
    assert detail["fixed"] == 1 and detail["movedScopes"] == 2, detail
    # The outage is still there to read about after the return, marked recovered.
    after = call("health")["working_memory"]
    assert after["status"] == "ok" and "fallbackReason" not in after
    assert after["lastError"] == outage["lastError"] and after["lastErrorAt"] == outage["lastErrorAt"]
    assert after["recoveredAt"] and after["recoveredAt"] >= after["lastErrorAt"], after
    values = call("memory_working_get", **s, operation="all")
    assert values["backend"] == "redis" and values["values"] == {
        "kept": "from before", "plan": "new plan", "during": {"n": 2}}
    assert 0 < call("memory_working_get", **s, key="during")["ttlRemainingSeconds"] <= 3600
    assert call("memory_working_get", sessionId="other", key="only")["value"] == "in the outage"
    got = call("memory_working_task", **s, operation="get")
    # Both stores had reached version 1: the moved task gets a version neither gave out, so an
    # update expecting either stale one is refused rather than applied to the wrong task.
    assert got["task"]["taskId"] == "t2" and task["version"] == 1 and got["version"] == 2
    assert call("memory_working_task", **s, operation="update_progress", advance=1,
                expectedVersion=2)["version"] == 3
    assert call("memory_working_scratchpad", **s, operation="get")["entries"] == ["note before", "note during"]
    listed = call("memory_working_checkpoint", **s, operation="list")["checkpoints"]
    assert [c["checkpointId"] for c in listed] == [before, during]
    restored = call("memory_working_checkpoint", **s, operation="restore", checkpointId=during)
    assert restored["restoredKeys"] == 2 and restored["backend"] == "redis"  # plan and during
    assert call.rt.services["working_memory"].sqlite.held_scopes() == []  # nothing left behind


def test_a_write_of_a_process_that_had_not_yet_followed_the_heal_goes_to_redis(own_redis, make_runtime, monkeypatch):
    """Its write to the database finds the fallback healed (in its transaction): nothing is
    written there, the process follows the heal at once and writes to Redis."""
    first, slow = _healed_while_one_process_has_not_followed(own_redis, make_runtime, monkeypatch)
    late = slow("memory_working_set", sessionId="s", key="late", value=2)
    assert late["backend"] == "redis" and late["usingFallback"] is False, late
    got = first("memory_working_get", sessionId="s", key="late")
    assert got["backend"] == "redis" and got["value"] == 2
    assert first("memory_working_get", sessionId="s", key="a")["value"] == 1
    assert first.rt.services["working_memory"].sqlite.held_scopes() == []



@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_a_redis_password_never_shows_in_health_diagnose_or_logs(own_redis, make_runtime, caplog, where):
    """Both places a Redis URL can carry its password (redis-py reads ``?password=`` too) are
    hidden wherever the URL is shown; the password still reaches Redis (the backend is up)."""
    password = "pw-" + uuid.uuid4().hex
    admin = redis.Redis.from_url(own_redis.url)
    try:
        admin.config_set("requirepass", password)
    finally:
        admin.close()
    host = own_redis.url.removeprefix("redis://")
    url = f"redis://:{password}@{host}" if where == "userinfo" else f"{own_redis.url}?password={password}"
    with caplog.at_level(logging.INFO):
        rt = make_runtime(working_memory_backend="redis", redis_url=url)
        service = rt.services["working_memory"]
        shown = [service.health(), *service.diagnose()]
    assert service.health()["backend"] == "redis" and not service.using_fallback
    assert "***" in service.health()["redisUrl"] and host.split("/")[0] in service.health()["redisUrl"]
    assert password not in repr(shown) and password not in caplog.text


def _wm_state(call, scope: dict) -> dict:
    return {
        "keys": call("memory_working_get", operation="all", **scope)["values"],
        "task": call("memory_working_task", operation="get", **scope)["task"],
        "scratchpad": call("memory_working_scratchpad", operation="get", withTimestamps=True, **scope)["entries"],
        "checkpoints": call("memory_working_checkpoint", operation="list", **scope)["checkpoints"],
    }


def test_working_memory_in_redis_is_exported_and_imported_back_into_redis(redis_server, make_runtime, tmp_path):
    """Working memory held in Redis travels in the export (read through the subsystem, not the
    database's tables), and an import into a Redis-backed server puts it in Redis; ``replace``
    empties the Redis scopes the file does not hold."""
    from agentmemory_server.adapters.web import create_app

    def redis_runtime(name: str):
        return make_runtime(data_dir=str(tmp_path / name), working_memory_backend="redis", redis_url=redis_server.url,
                            working_memory_redis_prefix=f"t-{uuid.uuid4().hex}")

    scope = {"sessionId": "ses_r", "project": "p1"}
    source = redis_runtime("a")
    call = ToolCaller(source)
    call("memory_working_set", key="plan", value={"steps": ["a", "b"]}, **scope)
    call("memory_working_set", key="draft", value="soon gone", ttlSeconds=3600, **scope)
    call("memory_working_task", operation="set", taskId="t1", description="ship it", totalSteps=3, **scope)
    call("memory_working_scratchpad", operation="append", content="first thought", **scope)
    call("memory_working_checkpoint", operation="create", description="before", **scope)
    before = _wm_state(call, scope)
    assert source.services["working_memory"].backend.name == "redis"
    assert source.services["working_memory"].sqlite.held_scopes() == []  # nothing of it in the database
    export = create_app(runtime=source).test_client().get("/agentmemory/export").json
    [entry] = export["working"]
    assert (entry["project"], entry["sessionId"]) == ("p1", "ses_r")
    assert {k["key"]: k["value"] for k in entry["keys"]} == {"plan": {"steps": ["a", "b"]}, "draft": "soon gone"}
    assert entry["task"]["state"]["taskId"] == "t1" and len(entry["checkpoints"]) == 1

    target = redis_runtime("b")
    theirs = ToolCaller(target)
    stale = {"sessionId": "ses_stale", "project": "p1"}
    theirs("memory_working_set", key="old", value=1, **stale)
    r = create_app(runtime=target).test_client().post("/agentmemory/import",
                                                      json={"exportData": export, "strategy": "replace"})
    assert r.status_code == 200 and r.json["counts"]["working"] == {"imported": 1, "skipped": 0}
    svc = target.services["working_memory"]
    assert svc.backend.name == "redis" and svc.sqlite.held_scopes() == []  # in Redis, not the database
    assert _wm_state(theirs, scope) == before
    assert theirs("memory_working_get", operation="all", **stale)["values"] == {}
    # The imported checkpoint restores in Redis.
    theirs("memory_working_scratchpad", operation="append", content="after", **scope)
    theirs("memory_working_checkpoint", operation="restore", checkpointId=before["checkpoints"][0]["checkpointId"],
           **scope)
    assert [e["content"] for e in _wm_state(theirs, scope)["scratchpad"]] == ["first thought"]


# -- a replace import is all or nothing across the database and Redis --------------------------------

def _replace_import_pair(make_runtime, tmp_path, url: str):
    """(the target: old records and old working memory in Redis at ``url``, the export that
    replaces them: a new record and new working memory). Scope ``a`` is in both, ``b`` only in
    the old."""
    def runtime(name: str):
        return make_runtime(data_dir=str(tmp_path / name), working_memory_backend="redis", redis_url=url,
                            working_memory_redis_prefix=f"t-{uuid.uuid4().hex}")

    source = ToolCaller(runtime("new"))
    source("memory_save", content="the new record")
    source("memory_working_set", sessionId="a", key="new", value="imported")
    source("memory_working_scratchpad", sessionId="a", operation="append", content="new note")
    export = source("memory_export")
    target = ToolCaller(runtime("old"))
    target("memory_save", content="the old record")
    target("memory_working_set", sessionId="a", key="old", value="kept")
    target("memory_working_scratchpad", sessionId="a", operation="append", content="old note")
    target("memory_working_set", sessionId="b", key="only", value="old")
    return target, export


def _store_state(call) -> dict:
    return {
        "records": sorted(m["content"] for m in call("memory_export")["memories"]),
        "a": call("memory_working_get", sessionId="a", operation="all")["values"],
        "a.pad": call("memory_working_scratchpad", sessionId="a", operation="get")["entries"],
        "b": call("memory_working_get", sessionId="b", operation="all")["values"],
    }


OLD_STATE = {"records": ["the old record"], "a": {"old": "kept"}, "a.pad": ["old note"], "b": {"only": "old"}}
NEW_STATE = {"records": ["the new record"], "a": {"new": "imported"}, "a.pad": ["new note"], "b": {}}


def _staged_keys(call) -> list[str]:
    svc = call.rt.services["working_memory"]
    return [k for k in svc.backend.r.scan_iter(f"{svc.settings.working_memory_redis_prefix}:staged:*")]


def test_redis_failing_right_after_a_replace_imports_commit_leaves_the_old_working_memory_then_the_new(
        durable_redis, make_runtime, tmp_path, monkeypatch):
    """Redis stops between the records' commit and the working memory's turn: the import says
    exactly that, working memory stays the old one (never a mix), and once Redis is back heal
    makes it the imported one, as the records are; the sessions the file lacks are gone."""
    from agentmemory_server.errors import AppError

    target, export = _replace_import_pair(make_runtime, tmp_path, durable_redis.url)
    assert _store_state(target) == OLD_STATE
    db = target.rt.db
    real = db.transaction

    def transaction(name, *args, **kwargs):  # the fault: Redis stops the moment the import commits
        import contextlib

        @contextlib.contextmanager
        def then_stop():
            with real(name, *args, **kwargs) as tx:
                yield tx
            if name == "import":
                durable_redis.stop()
        return then_stop()

    monkeypatch.setattr(db, "transaction", transaction)
    try:
        target("import", exportData=export, strategy="replace")
        said = "success"
    except AppError as exc:
        said = exc.message
    monkeypatch.undo()
    durable_redis.start()
    checks = target.rt.services["working_memory"].diagnose()
    target("diagnostics_heal")
    assert _store_state(target) == NEW_STATE  # not the old sessions with the new keys and notes added
    assert "the records were replaced, but Redis failed" in said and "Working memory is still the old one" in said
    assert any(c["name"] == "working_memory_import_swap" and c["status"] == "fail" for c in checks), checks
    assert _staged_keys(target) == [] and target.rt.services["working_memory"].sqlite.pending_swaps() == []


def test_a_replace_import_whose_working_memory_redis_refuses_changes_nothing(own_redis, make_runtime, tmp_path):
    """Redis refuses the import's working memory part-way (out of memory): the import is refused
    before the records' transaction, so records and working memory are both the old ones."""
    from agentmemory_server.errors import AppError

    target, export = _replace_import_pair(make_runtime, tmp_path, own_redis.url)
    [entry] = export["working"]
    export["working"] = [{**entry, "sessionId": f"big{i}", "keys": [{"key": "blob", "value": "x" * 100_000,
                                                                      "expiresAt": None}]} for i in range(60)]
    admin = redis.Redis.from_url(own_redis.url)
    try:
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 1_000_000)
        with pytest.raises(AppError) as refused:
            target("import", exportData=export, strategy="replace")
        admin.config_set("maxmemory", 0)
        assert _store_state(target) == OLD_STATE  # not the new records with no working memory at all
        assert "nothing was imported" in refused.value.message and "Redis at redis://" in refused.value.message
        assert _staged_keys(target) == []
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


def test_a_replace_import_whose_database_write_is_refused_keeps_the_old_working_memory(
        redis_server, make_runtime, tmp_path):
    """The records' transaction fails (the database refuses a write): Redis keeps the old working
    memory and the staged new one is deleted."""
    import sqlite3

    target, export = _replace_import_pair(make_runtime, tmp_path, redis_server.url)
    url = target.rt.settings.database_url
    if url:  # PostgreSQL: a trigger function refuses the write
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'write refused by the test'; END $$")
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON kv_store FOR EACH ROW "
                     "WHEN (NEW.scope = 'mem:memories') EXECUTE FUNCTION refuse()")
        undo = ["DROP TRIGGER refuse ON kv_store", "DROP FUNCTION refuse()"]
    else:
        conn = sqlite3.connect(target.rt.settings.database_path)
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON kv_store WHEN NEW.scope = 'mem:memories' "
                     "BEGIN SELECT RAISE(ABORT, 'write refused by the test'); END")
        conn.commit()
        undo = ["DROP TRIGGER refuse"]
    try:
        with pytest.raises(Exception, match="write refused by the test|database"):
            target("import", exportData=export, strategy="replace")
    finally:
        for statement in undo:
            conn.execute(statement)
        conn.commit()
        conn.close()
    assert _store_state(target) == OLD_STATE
    assert _staged_keys(target) == []


def test_a_replace_import_on_the_fallback_is_not_undone_by_the_heal(durable_redis, make_runtime, tmp_path):
    """A replace import while the store serves working memory from the database: the heal must
    not merge Redis's old sessions back into the imported ones; what was written after the
    import still moves to Redis."""
    target, export = _replace_import_pair(make_runtime, tmp_path, durable_redis.url)
    durable_redis.stop()
    assert target("memory_working_get", sessionId="a", operation="all")["usingFallback"] is True
    target("import", exportData=export, strategy="replace")
    target("memory_working_set", sessionId="c", key="after", value="the import")
    durable_redis.start()
    target("diagnostics_heal")
    state = _store_state(target)
    assert state == NEW_STATE, state
    got = target("memory_working_get", sessionId="c", key="after")
    assert got["backend"] == "redis" and got["value"] == "the import"
    assert target.rt.services["working_memory"].sqlite.pending_swaps() == []


def _second_process(make_runtime, tmp_path, first):
    """Another process (a gunicorn worker, a node) on ``first``'s database and Redis keys."""
    settings = first.rt.settings
    return ToolCaller(make_runtime(data_dir=str(tmp_path / "old"), working_memory_backend="redis",
                                   redis_url=settings.redis_url,
                                   working_memory_redis_prefix=settings.working_memory_redis_prefix))


def test_a_write_to_redis_after_a_replace_import_made_as_if_on_the_fallback_survives(
        durable_redis, make_runtime, tmp_path, monkeypatch):
    """The race: `healer` heals and serves from Redis again while `importer` has not yet looked at
    the store's mark (it does every FOLLOW_SECONDS) and takes a replace import for one made on the
    fallback, recording that Redis is to be emptied. A write to Redis through `healer` after that
    import must not be emptied when `importer` (or a sweep) returns to Redis and does the wipe.
    Here the import is refused (working memory is back in Redis: retry) and its retry replaces
    Redis's working memory at once, before the write."""
    from agentmemory_server import errors
    from agentmemory_server.errors import AppError
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    healer, export = _replace_import_pair(make_runtime, tmp_path, durable_redis.url)
    importer = _second_process(make_runtime, tmp_path, healer)
    durable_redis.stop()
    assert healer("memory_working_set", sessionId="c", key="during", value=1)["usingFallback"] is True
    assert importer("memory_working_get", sessionId="c", key="during")["usingFallback"] is True
    durable_redis.start()
    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 3600.0)  # `importer` does not look again yet
    healer("diagnostics_heal")
    assert healer("memory_working_get", sessionId="c", key="during")["backend"] == "redis"
    refusals = []
    try:
        importer("import", exportData=export, strategy="replace")
    except AppError as refused:  # the mark was gone when the import's transaction looked
        refusals.append(refused)
        assert _store_state(healer)["records"] == OLD_STATE["records"]  # nothing was imported
        importer("import", exportData=export, strategy="replace")
    healer("memory_working_set", sessionId="a", key="after", value="the import")  # to Redis, after the import
    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)  # `importer` looks at the mark now
    importer("memory_working_get", sessionId="b", operation="all")
    healer.rt.jobs.run_now("working_memory_sweep")
    for process in (healer, importer):
        got = process("memory_working_get", sessionId="a", key="after")
        assert got["backend"] == "redis" and got.get("value") == "the import", got
    assert _store_state(healer) == {**NEW_STATE, "a": {"new": "imported", "after": "the import"}}
    assert healer.rt.services["working_memory"].sqlite.pending_swaps() == []
    [refused] = refusals
    assert refused.code == errors.WORKING_MEMORY_UNAVAILABLE and refused.retry_after == 1
    assert "fallback was healed meanwhile" in refused.message and "Nothing was imported: retry" in refused.message


def test_an_admin_command_that_cannot_reach_redis_refuses_a_replace_import_while_the_servers_use_it(
        own_redis, make_runtime, tmp_path):
    """`agentmemory import --strategy replace` run where the servers' Redis cannot be reached: the
    servers still serve working memory from Redis, so recording it to be emptied later would delete
    what they write meanwhile. Refused, and nothing changes."""
    from agentmemory_server.errors import AppError
    from agentmemory_server.wiring import build_runtime

    server, export = _replace_import_pair(make_runtime, tmp_path, own_redis.url)
    elsewhere = server.rt.settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    tool = build_runtime(elsewhere, role="tool")
    said = "imported"
    try:
        ToolCaller(tool)("import", exportData=export, strategy="replace")
    except AppError as refused:
        said = refused.message
    finally:
        tool.close()
    server("memory_working_set", sessionId="b", key="later", value="kept")
    server.rt.jobs.run_now("working_memory_sweep")
    assert server("memory_working_get", sessionId="b", key="later").get("value") == "kept"
    assert _store_state(server) == {**OLD_STATE, "b": {"only": "old", "later": "kept"}}
    assert server.rt.services["working_memory"].sqlite.pending_swaps() == []
    assert "which this command cannot reach" in said and "Nothing was imported" in said, said


def test_a_write_to_redis_as_a_process_returns_is_not_emptied_by_an_import_made_on_the_fallback(
        durable_redis, make_runtime, tmp_path, monkeypatch):
    """The race at the return: a replace import made on the fallback left Redis to be emptied.
    A process returning to Redis serves from it (its other threads do) as soon as it has switched,
    a moment before it empties Redis: a write landing in that moment must not be emptied with
    Redis's old working memory. Here the heal empties Redis before it removes the mark, while
    every process still serves from the database."""
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    importer, export = _replace_import_pair(make_runtime, tmp_path, durable_redis.url)
    healer = _second_process(make_runtime, tmp_path, importer)
    durable_redis.stop()
    assert importer("memory_working_get", sessionId="a", operation="all")["usingFallback"] is True
    importer("import", exportData=export, strategy="replace")
    assert healer("memory_working_get", sessionId="a", operation="all")["values"] == NEW_STATE["a"]
    durable_redis.start()
    # From the last step of `healer`'s switch to Redis its request threads serve from Redis (one
    # writes now; `healer` is still returning, so it does not look at the mark).
    wrote = _write_as_the_switch_to_redis_ends(healer, monkeypatch, lambda: [
        healer("memory_working_set", sessionId="a", key="after", value="the return")])
    healer("diagnostics_heal")
    assert wrote and wrote[0]["backend"] == "redis", wrote
    for process in (healer, importer):
        got = process("memory_working_get", sessionId="a", key="after")
        assert got["backend"] == "redis" and got.get("value") == "the return", got
    assert _store_state(importer) == {**NEW_STATE, "a": {"new": "imported", "after": "the return"}}
    assert healer.rt.services["working_memory"].sqlite.pending_swaps() == []


def test_the_fallback_ends_only_once_no_imports_working_memory_waits_to_be_swapped_in(
        durable_redis, make_runtime, tmp_path):
    """The mark goes only in a transaction that finds no swap waiting: an import made on the
    fallback that commits between the heal's swaps and its removal of the mark keeps the store on
    the fallback until it is swapped in too (the heal tries again)."""
    importer, export = _replace_import_pair(make_runtime, tmp_path, durable_redis.url)
    durable_redis.stop()
    assert importer("memory_working_get", sessionId="a", operation="all")["usingFallback"] is True
    importer("import", exportData=export, strategy="replace")
    durable_redis.start()
    sqlite = importer.rt.services["working_memory"].sqlite
    assert sqlite.clear_fallback_mark(set()) is False
    assert sqlite.fallback_mark() is not None and len(sqlite.pending_swaps()) == 1
    healed = importer("diagnostics_heal")
    assert any(d["name"] == "working_memory_backend" and d["fixed"] == 1 for d in healed["details"]), healed
    assert sqlite.fallback_mark() is None and sqlite.pending_swaps() == []
    assert _store_state(importer) == NEW_STATE

def test_a_stage_no_import_waits_for_is_deleted_by_the_sweep(redis_server, make_runtime):
    """A process that died between writing a replace import's stage and its transaction leaves
    the stage in Redis; the sweep deletes it once it is an hour old (and not before: an import
    may be writing one right now)."""
    from conftest import ManualClock

    clock = ManualClock()
    rt = make_runtime(clock=clock.clock, **{"working_memory_backend": "redis", "redis_url": redis_server.url,
                                             "working_memory_redis_prefix": f"t-{uuid.uuid4().hex}"})
    call = ToolCaller(rt)
    call("memory_working_set", sessionId="a", key="live", value=1)
    svc = rt.services["working_memory"]
    entry = {"project": "default", "agentId": "default", "sessionId": "a",
             "keys": [{"key": "staged", "value": 2, "expiresAt": None}], "task": None, "scratchpad": [],
             "checkpoints": []}
    svc.stage_replace([entry])  # ... and the process dies here
    assert _staged_keys(call)
    clock.advance(600)
    rt.jobs.run_now("working_memory_sweep")
    assert _staged_keys(call)
    clock.advance(3600)
    rt.jobs.run_now("working_memory_sweep")
    assert _staged_keys(call) == [] and svc.backend.r.hgetall(f"{svc.settings.working_memory_redis_prefix}:stages") == {}
    assert call("memory_working_get", sessionId="a", operation="all")["values"] == {"live": 1}


def test_a_json_lines_replace_import_is_staged_whole_and_a_late_failure_keeps_the_old_working_memory(
        redis_server, make_runtime, tmp_path):
    """A replace import of a JSON Lines file whose working memory spreads over several batches:
    a bad line near its end leaves the old records and the old working memory in Redis (no stage
    left behind), not the first batch's; the whole file swaps every batch's working memory in."""
    import json

    from agentmemory_server.errors import InvalidInput
    from agentmemory_server.kernel.registry import Ctx
    from agentmemory_server.operations import maintenance

    target, export = _replace_import_pair(make_runtime, tmp_path, redis_server.url)
    [entry] = export["working"]
    export["working"] = [entry, *({**entry, "sessionId": f"more{i}", "scratchpad": []} for i in range(4))]
    source = ToolCaller(make_runtime(data_dir=str(tmp_path / "source")))
    source("import", exportData=export, strategy="replace")
    whole, bad = tmp_path / "whole.jsonl", tmp_path / "bad.jsonl"
    with open(whole, "w", encoding="utf-8") as out:
        maintenance.stream_export(source.rt, out, lines=True)
    lines = whole.read_text().splitlines(keepends=True)
    bad.write_text("".join([*lines[:-1], json.dumps({"sessions": [{"no": "id"}]}) + "\n", lines[-1]]))
    with pytest.raises(InvalidInput, match="line 8: ") as refused:
        maintenance.import_lines(Ctx(target.rt, source="cli"), bad, "replace", batch=1)
    assert _store_state(target) == OLD_STATE  # not the records and working memory of the first batches
    assert "nothing was imported" in refused.value.message
    assert _staged_keys(target) == []
    maintenance.import_lines(Ctx(target.rt, source="cli"), whole, "replace", batch=1)
    assert _store_state(target) == NEW_STATE
    assert [target("memory_working_get", sessionId=f"more{i}", operation="all")["values"] for i in range(4)] == [
        {"new": "imported"}] * 4
    assert _staged_keys(target) == [] and target.rt.services["working_memory"].sqlite.pending_swaps() == []


def test_a_write_to_redis_before_its_scope_moves_is_not_overwritten_by_the_move(
        durable_redis, make_runtime, monkeypatch):
    """The race at the return: a process serves from Redis (its other threads do) as soon as it
    has switched, before it moves what the outage left in the database. A key written to Redis in
    that moment is newer than the moved one and stays; a key Redis held from before the outage is
    still replaced by the moved one, and the task likewise."""
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    settings = {"working_memory_backend": "redis", "redis_url": durable_redis.url}
    healer = ToolCaller(make_runtime(**settings))
    s = {"sessionId": "s"}
    healer("memory_working_set", **s, key="plan", value="before the outage")
    healer("memory_working_set", **s, key="kept", value="before the outage")
    healer("memory_working_task", **s, operation="set", taskId="t-before", totalSteps=3)
    durable_redis.stop()
    assert healer("memory_working_set", **s, key="plan", value="in the outage")["usingFallback"] is True
    healer("memory_working_set", **s, key="kept", value="in the outage")
    healer("memory_working_task", **s, operation="set", taskId="t-outage", totalSteps=3)
    durable_redis.start()
    # At the last step of `healer`'s switch to Redis, before its move, a request thread serves
    # from Redis and writes the scope the move has not reached yet.
    wrote = _write_as_the_switch_to_redis_ends(healer, monkeypatch, lambda: [
        healer("memory_working_set", **s, key="plan", value="after the return"),
        healer("memory_working_task", **s, operation="set", taskId="t-after", totalSteps=3)])
    healed = healer("diagnostics_heal")
    assert wrote and wrote[0]["backend"] == "redis", wrote
    detail = next(d for d in healed["details"] if d["name"] == "working_memory_backend")
    assert detail["fixed"] == 1 and detail["movedScopes"] == 1, detail
    values = healer("memory_working_get", **s, operation="all")
    assert values["backend"] == "redis" and values["values"] == {
        "plan": "after the return", "kept": "in the outage"}, values
    task = healer("memory_working_task", **s, operation="get")
    assert task["task"]["taskId"] == "t-after" and task["version"] == wrote[1]["version"], task
    assert healer.rt.services["working_memory"].sqlite.held_scopes() == []  # nothing left behind


def test_a_write_to_redis_after_the_heal_is_not_overwritten_by_the_sweeps_move(
        own_redis, make_runtime, monkeypatch):
    """A process that had not yet followed the heal writes a key (to Redis: its write to the
    database finds the fallback healed); a process back on Redis then writes the same key there.
    The second, newer, stays after the sweep; the late process's other key is there."""
    first, slow = _healed_while_one_process_has_not_followed(own_redis, make_runtime, monkeypatch)
    assert slow("memory_working_set", sessionId="s", key="k", value="slow, not yet following")["backend"] == "redis"
    slow("memory_working_set", sessionId="s", key="only", value="slow")
    assert first("memory_working_set", sessionId="s", key="k", value="newer, on Redis")["backend"] == "redis"
    first.rt.jobs.run_now("working_memory_sweep")
    got = first("memory_working_get", sessionId="s", operation="all")
    assert got["backend"] == "redis" and got["values"] == {"a": 1, "k": "newer, on Redis", "only": "slow"}, got
    assert first.rt.services["working_memory"].sqlite.held_scopes() == []


def test_a_scope_first_written_to_the_database_as_the_heal_ends_the_fallback_keeps_a_later_write_to_redis(
        durable_redis, make_runtime, monkeypatch):
    """The heal copies what Redis holds of the scopes waiting in the database, then removes the
    mark. A scope another process first writes to the database in between must have a copy too:
    else its move replaces a key a process back on Redis wrote before it moved (here the healer's
    own request thread, as its switch to Redis ends)."""
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    settings = {"working_memory_backend": "redis", "redis_url": durable_redis.url}
    healer, other = ToolCaller(make_runtime(**settings)), ToolCaller(make_runtime(**settings))
    n = {"sessionId": "n"}
    durable_redis.stop()
    assert healer("memory_working_set", sessionId="s", key="a", value=1)["usingFallback"] is True
    assert other("memory_working_get", **n, key="k")["usingFallback"] is True
    durable_redis.start()
    sqlite = healer.rt.services["working_memory"].sqlite
    end_the_fallback, written = sqlite.clear_fallback_mark, []

    def another_process_writes_first(*args, **kwargs):
        if not written:  # after the heal listed the waiting scopes, before the mark goes
            written.extend([other("memory_working_set", **n, key="k", value="in the outage"),
                            other("memory_working_set", **n, key="only", value="in the outage")])
        return end_the_fallback(*args, **kwargs)

    monkeypatch.setattr(sqlite, "clear_fallback_mark", another_process_writes_first)
    wrote = _write_as_the_switch_to_redis_ends(healer, monkeypatch, lambda: [
        healer("memory_working_set", **n, key="k", value="after the return")])
    healer("diagnostics_heal")
    assert written[0]["backend"] == "sqlite" and wrote and wrote[0]["backend"] == "redis", (written, wrote)
    got = healer("memory_working_get", **n, operation="all")
    assert got["backend"] == "redis" and got["values"] == {"k": "after the return", "only": "in the outage"}, got
    assert sqlite.held_scopes() == []


def test_a_scope_first_written_after_the_heal_by_a_process_that_had_not_followed_keeps_a_later_write_to_redis(
        own_redis, make_runtime, monkeypatch):
    """A process that has not yet followed the heal writes a scope the database did not hold at
    the heal (so Redis holds no copy of it); a process back on Redis then writes the same key.
    The later write, on Redis, stays; the late process's other key is not lost either."""
    first, slow = _healed_while_one_process_has_not_followed(own_redis, make_runtime, monkeypatch)
    n = {"sessionId": "n"}
    slow("memory_working_set", **n, key="k", value="slow, not yet following the heal")
    slow("memory_working_set", **n, key="only", value="slow")
    assert first("memory_working_set", **n, key="k", value="newer, on Redis")["backend"] == "redis"
    first.rt.jobs.run_now("working_memory_sweep")
    for process in (first, slow):
        got = process("memory_working_get", **n, operation="all")
        assert got["backend"] == "redis" and got["values"] == {"k": "newer, on Redis", "only": "slow"}, got
    assert first.rt.services["working_memory"].sqlite.held_scopes() == []


def test_a_merge_import_by_a_process_that_had_not_followed_the_heal_is_refused_and_its_retry_goes_to_redis(
        own_redis, make_runtime, tmp_path, monkeypatch):
    """The same for an import's working memory: a process that takes the store for still on the
    fallback would write it to the database with no copy of what Redis holds. Its transaction
    finds the mark gone: refused (nothing imported, Retry-After: 1); the retry writes to Redis,
    and a later write to Redis stays."""
    from agentmemory_server.errors import AppError

    first, slow = _healed_while_one_process_has_not_followed(own_redis, make_runtime, monkeypatch)
    source = ToolCaller(make_runtime(data_dir=str(tmp_path / "source")))
    source("memory_working_set", sessionId="n", key="k", value="imported")
    source("memory_working_set", sessionId="n", key="only", value="imported")
    export = source("memory_export")
    refusals = []
    try:
        slow("import", exportData=export, strategy="merge")
    except AppError as refused:
        refusals.append(refused)
        slow("import", exportData=export, strategy="merge")
    assert first("memory_working_set", sessionId="n", key="k", value="newer, on Redis")["backend"] == "redis"
    first.rt.jobs.run_now("working_memory_sweep")
    got = first("memory_working_get", sessionId="n", operation="all")
    assert got["backend"] == "redis" and got["values"] == {"k": "newer, on Redis", "only": "imported"}, got
    [refused] = refusals
    assert refused.retry_after == 1 and "Nothing was imported: retry" in refused.message, refused.message


def test_a_write_to_redis_by_a_process_that_had_not_followed_the_fallback_survives_a_replace_import_before_it(
        durable_redis, make_runtime, tmp_path, monkeypatch):
    """Redis fails for one process (`importer`) while another (`late`) has not yet looked at the
    store's mark (it does every FOLLOW_SECONDS) and still writes to Redis. A replace import made
    on the fallback empties Redis at the heal: a write `late` makes after that import must not be
    emptied with it. So the import commits only once every process has followed the fallback
    (here the seconds it waits for that pass at once: every process looks at its next call)."""
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    importer, export = _replace_import_pair(make_runtime, tmp_path, durable_redis.url)
    late = _second_process(make_runtime, tmp_path, importer)
    assert late("memory_working_get", sessionId="b", operation="all")["backend"] == "redis"
    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 3600.0)  # nobody looks at the mark for a while
    durable_redis.stop()
    assert importer("memory_working_get", sessionId="a", operation="all")["usingFallback"] is True
    durable_redis.start()
    svc, waited = importer.rt.services["working_memory"], []

    def every_process_looks_meanwhile(seconds: float) -> None:
        waited.append(seconds)
        monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
        monkeypatch.setattr(working_fallback, "IN_FLIGHT_SECONDS", 0.0)

    monkeypatch.setattr(svc.fallback, "pause", every_process_looks_meanwhile)
    importer("import", exportData=export, strategy="replace")
    late("memory_working_set", sessionId="b", key="after", value="the import")
    importer("diagnostics_heal")
    for process in (importer, late):
        got = process("memory_working_get", sessionId="b", key="after")
        assert got["backend"] == "redis" and got.get("value") == "the import", got
    assert _store_state(importer) == {**NEW_STATE, "b": {"after": "the import"}}
    assert waited, "the import did not wait for every process to follow the fallback"


def test_a_replace_import_whose_transaction_finds_a_newer_fallback_than_it_waited_for_is_refused(
        own_redis, make_runtime, tmp_path, monkeypatch):
    """The import waited until every process had followed the fallback its process saw; if the
    store was healed and fell back again before its transaction (another process's doing), the
    processes may not have followed the new one yet: refused, saying how long to wait."""
    from agentmemory_server.errors import AppError
    from agentmemory_server.working import fallback as working_fallback

    importer, export = _replace_import_pair(make_runtime, tmp_path, own_redis.url)
    own_redis.stop()
    assert importer("memory_working_get", sessionId="a", operation="all")["usingFallback"] is True
    svc = importer.rt.services["working_memory"]
    waited = getattr(svc, "await_followers", lambda: None)

    def then_healed_and_fallen_back_again() -> None:
        monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)  # the first fallback is old news
        monkeypatch.setattr(working_fallback, "IN_FLIGHT_SECONDS", 0.0)
        waited()
        monkeypatch.undo()
        sqlite = svc.sqlite
        assert sqlite.clear_fallback_mark(set(sqlite.held_scopes()))
        sqlite.mark_fallback("2026-12-07T23:59:59Z", "Redis failed again for another node")

    monkeypatch.setattr(svc, "await_followers", then_healed_and_fallen_back_again)
    with pytest.raises(AppError) as refused:
        importer("import", exportData=export, strategy="replace")
    assert refused.value.code == "working_memory_unavailable" and refused.value.retry_after >= 5
    assert "Nothing was imported: retry" in refused.value.message, refused.value.message
    assert importer("memory_export")["memories"][0]["content"] == "the old record"


def _write_as_the_switch_to_redis_ends(process, monkeypatch, write) -> list:
    """Run ``write()`` (another request thread of ``process``) once, at the last step of the
    process's switch back to Redis (``errors.succeeded``); the list gets what it answered."""
    svc = process.rt.services["working_memory"]
    switched, wrote = svc.errors.succeeded, []

    def another_thread_writes(*args, **kwargs) -> None:
        switched(*args, **kwargs)
        if svc.backend is not svc.sqlite and not wrote:
            wrote.extend(write())

    monkeypatch.setattr(svc.errors, "succeeded", another_thread_writes)
    return wrote


def _healed_while_one_process_has_not_followed(own_redis, make_runtime, monkeypatch):
    """Two processes fall back while Redis is down (each wrote or read there); ``first`` heals
    once it is back, and ``slow`` will not look at the store's mark again for an hour."""
    from agentmemory_server.working import fallback as working_fallback

    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 0.0)
    settings = {"working_memory_backend": "redis", "redis_url": own_redis.url}
    first, slow = ToolCaller(make_runtime(**settings)), ToolCaller(make_runtime(**settings))
    own_redis.stop()
    assert first("memory_working_set", sessionId="s", key="a", value=1)["usingFallback"] is True
    assert slow("memory_working_get", sessionId="s", key="a")["usingFallback"] is True
    own_redis.start()
    monkeypatch.setattr(working_fallback, "FOLLOW_SECONDS", 3600.0)
    first("diagnostics_heal")
    return first, slow
