"""``agentmemory migrate``: SQLite -> PostgreSQL -> SQLite through the JSON Lines record stream,
verified, and resumable after an interruption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentmemory_server.errors import InvalidInput
from agentmemory_server.operations import maintenance, migrate
from agentmemory_server.retrieval import search
from conftest import ToolCaller, clean_environ, hook


def seed(rt) -> None:
    call = ToolCaller(rt)
    for i in range(30):
        call("agent_observe", **hook(f"m{i % 3}", data={"prompt": f"the ibis migration checklist item {i}"}))
    call("memory_save", content="the heron service owns the billing queue", project="alpha")
    call("memory_lesson_save", content="always drain the queue before a schema change")
    call("tokens_create", principal="ann", projects=["alpha"])
    scope = {"sessionId": "m0", "project": "alpha"}
    call("memory_working_set", key="plan", value={"next": "drain the queue"}, **scope)
    call("memory_working_task", operation="set", taskId="t1", description="move the store", **scope)
    call("memory_working_scratchpad", operation="append", content="spooled the export", **scope)
    call("memory_working_checkpoint", operation="create", description="before the move", **scope)


def working_memory(rt) -> dict:
    """What an agent reads back of the seeded session's working memory."""
    call, scope = ToolCaller(rt), {"sessionId": "m0", "project": "alpha"}
    return {
        "keys": call("memory_working_get", operation="all", **scope)["values"],
        "task": call("memory_working_task", operation="get", **scope),
        "scratchpad": call("memory_working_scratchpad", operation="get", withTimestamps=True, **scope)["entries"],
        "checkpoints": call("memory_working_checkpoint", operation="list", **scope)["checkpoints"],
    }


def test_a_sqlite_store_moves_to_postgresql_and_back(make_runtime, pg_cluster, tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "sqlite"), database_url=None)
    seed(source)
    url = pg_cluster.create_database()
    try:
        pg = make_runtime(data_dir=str(tmp_path / "pgnode"), database_url=url)
        result = migrate.migrate(source, pg, tmp_path / "sqlite")
        assert result["verified"]["ok"] and result["records"] == sum(source.db.reader().records.scope_counts().values())
        assert result["verified"]["sampled"] > 0
        hits = search.bm25(pg.db.reader(), "heron billing queue", limit=5)
        assert hits and hits[0]["kind"] == "memory"  # the search index was built by the import
        # Working memory lives outside the records: it moves too, and the verification covers it.
        assert result["verified"]["working"] == {"scopes": 1, "mismatches": []}
        assert working_memory(pg) == working_memory(source) and working_memory(pg)["keys"]
        back = make_runtime(data_dir=str(tmp_path / "back"), database_url=None)
        again = migrate.migrate(pg, back, tmp_path / "pgnode")
        assert again["verified"]["ok"] and again["records"] == result["records"]
        assert working_memory(back) == working_memory(source)
        assert not list((tmp_path / "sqlite").glob("migrate*"))  # the spool is gone once verified
    finally:
        pg_cluster.drop_database(url)


def test_an_interrupted_migration_resumes_where_it_stopped(make_runtime, tmp_path):
    source, target, spool, state_path, good = _a_run_interrupted_by_a_damaged_line(make_runtime, tmp_path)
    done = json.loads(state_path.read_text())["imported"]
    damaged_at = spool.read_text().splitlines().index("{not json")
    assert 0 < done <= damaged_at
    spool.write_text(spool.read_text().replace("{not json\n", good))
    result = migrate.migrate(source, target, tmp_path / "src", batch=3)
    assert result["verified"]["ok"]
    total = sum(source.db.reader().records.scope_counts().values())
    assert result["import"]["imported"] < total  # only the lines after the stored ones were written again


def test_a_target_deleted_by_hand_after_an_interrupted_run_is_migrated_whole_by_the_next_run(make_runtime, tmp_path):
    """The state of a run interrupted part-way says how many lines its target holds. Deleted by
    hand, that target is made again at the same place by the next run, which must start over:
    before, it skipped the lines the deleted target had held and the verification failed."""
    import shutil

    source, target, spool, state_path, good = _a_run_interrupted_by_a_damaged_line(make_runtime, tmp_path)
    assert json.loads(state_path.read_text())["imported"] > 0
    spool.write_text(spool.read_text().replace("{not json\n", good))
    target.close()
    shutil.rmtree(tmp_path / "dst")

    again = make_runtime(data_dir=str(tmp_path / "dst"), database_url=None)
    result = migrate.migrate(source, again, tmp_path / "src", batch=3)
    total = sum(source.db.reader().records.scope_counts().values())
    assert result["verified"]["ok"] and result["import"]["imported"] == total, result["import"]
    assert not state_path.exists() and not spool.exists()


def test_a_state_file_without_a_target_id_is_not_resumed_into_a_target_made_again(make_runtime, tmp_path, caplog):
    """A state file written before targets got an id counts the lines its target holds but names
    no target. Before, a target deleted by hand and made again (no id either) matched it: the next
    run skipped the lines the deleted target had held and the verification failed. Now a state
    without an id proves nothing about the target, so the run starts over, saying why."""
    import shutil

    source, target, spool, state_path, good = _a_run_interrupted_by_a_damaged_line(make_runtime, tmp_path)
    state = json.loads(state_path.read_text())
    assert state["imported"] > 0 and state["targetId"]
    del state["targetId"]  # as a state file of a version before the target id looks
    state_path.write_text(json.dumps(state))
    spool.write_text(spool.read_text().replace("{not json\n", good))
    target.close()
    shutil.rmtree(tmp_path / "dst")

    again = make_runtime(data_dir=str(tmp_path / "dst"), database_url=None)
    with caplog.at_level("WARNING", logger="agentmemory.migrate"):
        result = migrate.migrate(source, again, tmp_path / "src", batch=3)
    total = sum(source.db.reader().records.scope_counts().values())
    assert result["verified"]["ok"] and result["import"]["imported"] == total, result["import"]
    assert f"counts {state['imported']} lines imported but names no target id" in caplog.text, caplog.text
    assert "starting over and migrating the target whole" in caplog.text
    assert not state_path.exists() and not spool.exists()


def test_a_difference_fails_the_verification(make_runtime, tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "a"), database_url=None)
    seed(source)
    target = make_runtime(data_dir=str(tmp_path / "b"), database_url=None)
    migrate.migrate(source, target, tmp_path / "a")
    assert migrate.verify(source, target)["ok"]
    ToolCaller(source)("memory_save", content="only in the source now")
    check = migrate.verify(source, target)
    assert not check["ok"] and check["countMismatches"]["mem:memories"] == [2, 1]
    for scope, n in source.db.reader().records.scope_counts().items():  # same counts, other contents
        with target.db.transaction("tamper") as tx:
            for key, value in tx.records.list(scope):
                tx.records.set(scope, key, {"tampered": True}, now="t")
    ToolCaller(target)("memory_save", content="only in the source now")
    check = migrate.verify(source, target)
    assert not check["ok"] and check["sampleMismatches"]


@pytest.mark.sqlite_only  # the source is a SQLite file, the target PostgreSQL, whatever the backend
def test_a_killed_migration_to_postgresql_resumes_and_keeps_every_record(make_runtime, pg_cluster, tmp_path):
    """SIGKILL of ``agentmemory migrate`` between (or inside) its batched transactions: a second
    run resumes from the last committed line and the target ends with every record, equal, and
    a search row for every searchable one."""
    import signal
    import time

    from agentmemory_server.kernel.registry import Ctx
    from agentmemory_server.memory import transfer_import

    source_dir = tmp_path / "sqlite"
    source = make_runtime(data_dir=str(source_dir), database_url=None)
    seed(source)
    bulk = [(f"mem:obs:bulk-{i % 40}", f"obs_bulk_{i}",
             {"id": f"obs_bulk_{i}", "sessionId": f"bulk-{i % 40}", "hookType": "post_tool_use", "type": "other",
              "title": f"bulk step {i}", "narrative": f"the osprey pipeline step {i} " + "detail " * 40,
              "timestamp": f"2026-11-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z", "project": "alpha"})
            for i in range(4000)]
    transfer_import.import_records(Ctx(source, source="test"), bulk, "merge")
    url = pg_cluster.create_database()
    agentmemory = str(Path(sys.executable).with_name("agentmemory"))
    command = [agentmemory, "--quiet", "migrate", "--to", url, "--batch", "100"]
    env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(source_dir), "EMBEDDING_PROVIDER": "none"}
    state_path = migrate.spool_paths(source_dir)[1]
    try:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while migrate.read_state(state_path).get("imported", 0) < 1000 and proc.poll() is None:
                assert time.monotonic() < deadline, "the migration never got past its first batches"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        stopped_at = migrate.read_state(state_path)["imported"]
        total_lines = len(migrate.spool_paths(source_dir)[0].read_text().splitlines())
        assert proc.returncode == -signal.SIGKILL and 1000 <= stopped_at < total_lines - 1
        # The same target spelled with its scheme in capitals (case-insensitive in a URL) resumes the run.
        again = subprocess.run([*command[:-3], "POSTGRESQL" + url[len("postgresql") :], *command[-2:]], env=env,
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        result = json.loads(again.stdout)
        counts = source.db.reader().records.scope_counts()
        assert result["verified"]["ok"] and result["records"] == sum(counts.values())
        assert result["import"]["imported"] < sum(counts.values())  # the second run only wrote what was left
        target = make_runtime(data_dir=str(tmp_path / "pgnode"), database_url=url)
        src, dst = source.db.reader(), target.db.reader()
        assert dst.records.scope_counts() == counts
        for scope in counts:  # every record, not a sample
            assert dict(dst.records.iter_scope(scope)) == dict(src.records.iter_scope(scope)), scope
        assert dst.index.kind_counts() == src.index.kind_counts()
        target.db.flush()
        assert search.bm25(dst, "osprey pipeline step 3999", limit=3)[0]["key"] == "obs_bulk_3999"
        target.close()
    finally:
        pg_cluster.drop_database(url)


def test_a_url_of_another_database_is_refused_not_taken_for_a_file_name(tmp_path):
    agentmemory = str(Path(sys.executable).with_name("agentmemory"))
    env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "data"), "EMBEDDING_PROVIDER": "none"}
    done = subprocess.run([agentmemory, "--quiet", "migrate", "--to", "mysql://ann:pw@db/memory"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--to takes a postgresql:// URL or a SQLite file's path" in done.stderr, done.stderr
    assert "'mysql' URL" in done.stderr and "pw" not in done.stderr.replace("postgresql://", "")
    assert not (tmp_path / "mysql:").exists()  # it used to become a SQLite file at ./mysql:/ann:pw@db/memory


# -- working memory in Redis moves to wherever the target keeps it -----------------------------------

def _wm(rt) -> dict:
    """``working_memory`` without the replies' note of where it was read from."""
    got = working_memory(rt)
    got["task"] = {k: v for k, v in got["task"].items() if k not in ("backend", "usingFallback", "warning")}
    return got


def _redis_settings(url: str, prefix: str | None = None) -> dict:
    import uuid

    return {"working_memory_backend": "redis", "redis_url": url,
            "working_memory_redis_prefix": prefix or f"t-{uuid.uuid4().hex}"}


@pytest.mark.sqlite_only  # the source is a SQLite file with Redis, the target PostgreSQL without it
def test_working_memory_in_redis_moves_into_a_postgresql_targets_database(make_runtime, redis_server, pg_cluster,
                                                                        tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "src"), database_url=None, **_redis_settings(redis_server.url))
    seed(source)
    assert source.services["working_memory"].sqlite.held_scopes() == []  # all of it is in Redis
    url = pg_cluster.create_database()
    try:
        pg = make_runtime(data_dir=str(tmp_path / "pgnode"), database_url=url)
        result = migrate.migrate(source, pg, tmp_path / "src")
        assert result["verified"]["ok"], result["verified"]
        assert _wm(pg) == _wm(source) and _wm(pg)["keys"] == {
            "plan": {"next": "drain the queue"}}
        # The verification reads each side where it lives: a difference in the target is caught.
        ToolCaller(pg)("memory_working_set", sessionId="m0", project="alpha", key="plan", value="changed")
        assert migrate.verify(source, pg)["working"]["mismatches"] == ["alpha/default/m0"]
        moved = result["workingMemory"]
        assert moved["from"].startswith(f"Redis at {redis_server.url}") and moved["to"] == "the database"
        assert {k: moved[k] for k in ("moved", "scopes", "keys", "tasks", "scratchpadEntries", "checkpoints")} == {
            "moved": True, "scopes": 1, "keys": 1, "tasks": 1, "scratchpadEntries": 1, "checkpoints": 1}
    finally:
        pg_cluster.drop_database(url)


def test_working_memory_moves_between_redis_prefixes_and_stays_when_the_keys_are_the_same(make_runtime,
                                                                                         redis_server, tmp_path):
    source = make_runtime(data_dir=str(tmp_path / "src"), **_redis_settings(redis_server.url))
    seed(source)
    other = make_runtime(data_dir=str(tmp_path / "other"), **_redis_settings(redis_server.url))
    result = migrate.migrate(source, other, tmp_path / "src")
    assert result["verified"]["ok"] and result["workingMemory"]["moved"] is True
    assert result["workingMemory"]["scopes"] == 1 and _wm(other) == _wm(source)
    assert other.services["working_memory"].sqlite.held_scopes() == []  # in its Redis keys, not its database
    # The same server, database and prefix under another spelling of the URL: shared, nothing copied onto itself.
    prefix = source.settings.working_memory_redis_prefix
    assert redis_server.url.endswith("/0")
    shared = make_runtime(data_dir=str(tmp_path / "shared"), **_redis_settings(redis_server.url[:-2], prefix))
    ToolCaller(source)("memory_working_scratchpad", sessionId="m0", project="alpha", operation="append",
                       content="written while migrating")
    again = migrate.migrate(source, shared, tmp_path / "src")
    assert again["verified"]["ok"] and again["workingMemory"]["moved"] is False
    assert "same Redis keys" in again["workingMemory"]["note"] and again["workingMemory"]["scopes"] == 1
    assert len(_wm(shared)["scratchpad"]) == 2


def test_a_redis_that_does_not_answer_stops_the_migration_before_anything_is_written(make_runtime, tmp_path):
    """The source's (or the target's) working memory is in a Redis that does not answer: an error
    naming it, not a migration that silently leaves working memory behind."""
    from agentmemory_server.errors import AppError
    from agentmemory_server.kernel.settings import Settings
    from conftest import free_port
    from agentmemory_server.wiring import build_runtime

    dead = f"redis://:secretpw@127.0.0.1:{free_port()}/0"  # nothing listens there
    made = []

    def tool_runtime(name: str, **overrides):  # as `agentmemory migrate` builds them
        rt = build_runtime(Settings.from_env({}, data_dir=str(tmp_path / name), background_jobs=False,
                                             embedding_provider="none", auth="off", **overrides), role="tool")
        made.append(rt)
        return rt

    try:
        writer = make_runtime(data_dir=str(tmp_path / "src"), database_url=None)
        seed(writer)
        source = tool_runtime("src", **_redis_settings(dead))
        target = tool_runtime("dst")
        with pytest.raises(AppError) as stopped:
            migrate.migrate(source, target, tmp_path / "src")
        said = stopped.value.message
        assert "source's working memory" in said and f"127.0.0.1:{dead.rsplit(':', 1)[1].split('/')[0]}" in said
        assert "does not answer" in said and "secretpw" not in said and "WORKING_MEMORY_BACKEND=sqlite" in said
        assert target.db.reader().records.scope_counts() == {}  # nothing was written
        assert source.services["working_memory"].sqlite.fallback_mark() is None  # the servers' store left alone

        source = tool_runtime("src2")
        seed(source)
        target = tool_runtime("dst2", **_redis_settings(dead))
        with pytest.raises(AppError, match="target's working memory .* does not answer .* --to-redis"):
            migrate.migrate(source, target, tmp_path / "src2")
        assert target.db.reader().records.scope_counts() == {}
    finally:
        for rt in made:
            rt.close()


def test_the_cli_moves_redis_working_memory_into_the_targets_database_with_to_redis_none(redis_server, tmp_path):
    """``agentmemory migrate --to FILE --to-redis none`` from a server configured with Redis:
    the new store keeps working memory in its database, and the output counts what moved."""
    import uuid

    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.wiring import build_runtime

    prefix = f"t-{uuid.uuid4().hex}"
    env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(tmp_path / "src"), "EMBEDDING_PROVIDER": "none",
           "WORKING_MEMORY_BACKEND": "redis", "REDIS_URL": redis_server.url, "WORKING_MEMORY_REDIS_PREFIX": prefix}
    source = build_runtime(Settings.from_env({}, data_dir=str(tmp_path / "src"), background_jobs=False,
                                             embedding_provider="none", auth="off",
                                             **_redis_settings(redis_server.url, prefix)))
    try:
        seed(source)
        expected = _wm(source)
    finally:
        source.close()
    agentmemory = str(Path(sys.executable).with_name("agentmemory"))
    done = subprocess.run([agentmemory, "--quiet", "migrate", "--to", str(tmp_path / "new.db"), "--to-redis", "none"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    moved = json.loads(done.stdout)["workingMemory"]
    assert moved["to"] == "the database" and moved["scopes"] == 1 and moved["checkpoints"] == 1, moved
    target = build_runtime(Settings.from_env({}, db_path=str(tmp_path / "new.db"), background_jobs=False,
                                             embedding_provider="none", auth="off"))
    try:
        assert _wm(target) == expected
    finally:
        target.close()
    bad = subprocess.run([agentmemory, "--quiet", "migrate", "--to", str(tmp_path / "other.db"), "--to-redis",
                          "http://example"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--to-redis takes a Redis URL or none" in bad.stderr, bad.stderr


def test_a_source_on_the_redis_fallback_is_refused_until_healed(make_runtime, redis_server, tmp_path):
    """Part of its working memory is in the database, part in Redis: migrating either part alone
    would lose the other, so the command says to heal first."""
    from agentmemory_server.errors import Conflict
    from agentmemory_server.kernel.settings import Settings
    from agentmemory_server.wiring import build_runtime

    redis = _redis_settings(redis_server.url)
    writer = make_runtime(data_dir=str(tmp_path / "src"), database_url=None, **redis)
    seed(writer)
    writer.services["working_memory"].sqlite.mark_fallback("2026-12-07T10:00:00Z", "ConnectionError: refused")
    source = build_runtime(Settings.from_env({}, data_dir=str(tmp_path / "src"), background_jobs=False,
                                             embedding_provider="none", auth="off", **redis), role="tool")
    try:
        target = make_runtime(data_dir=str(tmp_path / "dst"), database_url=None)
        with pytest.raises(Conflict, match="on the database fallback since 2026-12-07T10:00:00Z .* heal"):
            migrate.migrate(source, target, tmp_path / "src")
        assert target.db.reader().records.scope_counts() == {}
    finally:
        source.close()


# -- a refused migration leaves no new target behind ---------------------------------------------------

def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.sqlite_only  # the CLI's source and target are SQLite files
def test_a_refused_migration_leaves_no_target_it_created_and_an_old_target_as_it_was(make_runtime, redis_server,
                                                                                     tmp_path):
    """Each refusal before a record is written (a Redis that does not answer, on either side; a
    source on the Redis fallback; an import holding the source): the SQLite file the run opened,
    its sidecars, its generated secret and the directories made for it are gone again."""
    from agentmemory_server.memory import transfer_lease

    dead = f"redis://127.0.0.1:{__import__('conftest').free_port()}/0"
    redis = _redis_settings(redis_server.url)
    source = make_runtime(data_dir=str(tmp_path / "src"), database_url=None, **redis)
    seed(source)
    agentmemory = str(Path(sys.executable).with_name("agentmemory"))
    env = {k: v for k, v in clean_environ().items() if k != "AGENTMEMORY_AUTH"}  # auth on: a secret is made
    env.update({"AGENTMEMORY_DATA_DIR": str(tmp_path / "src"), "EMBEDDING_PROVIDER": "none",
                "WORKING_MEMORY_BACKEND": "redis", "REDIS_URL": redis_server.url,
                "WORKING_MEMORY_REDIS_PREFIX": redis["working_memory_redis_prefix"]})
    old = make_runtime(data_dir=str(tmp_path / "old"), database_url=None)
    ToolCaller(old)("memory_save", content="the old target's own memory")
    old_records = {scope: dict(old.db.reader().records.iter_scope(scope)) for scope in
                   old.db.reader().records.scope_counts()}
    old.close()
    old_tree = _tree(tmp_path / "old")

    def refused(target: Path, *extra: str, env_change: dict | None = None) -> str:
        done = subprocess.run([agentmemory, "--quiet", "migrate", "--to", str(target), *extra],
                              env={**env, **(env_change or {})}, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0, done.stdout[-2000:]
        return done.stderr

    new = tmp_path / "new" / "deeper" / "target.db"
    said = refused(new, "--to-redis", dead)
    assert "target's working memory" in said and "does not answer" in said, said
    assert not (tmp_path / "new").exists(), _tree(tmp_path / "new")
    said = refused(new, env_change={"REDIS_URL": dead})
    assert "source's working memory" in said and "does not answer" in said, said
    assert not (tmp_path / "new").exists(), _tree(tmp_path / "new")
    with transfer_lease.hold(source, operation="an import (replace) by the test"):
        said = refused(new)
    assert "an import (replace) by the test is running" in said, said
    assert not (tmp_path / "new").exists(), _tree(tmp_path / "new")
    # Beside files that were there first: only the run's own go, the others stay.
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "notes.txt").write_text("mine")
    source.services["working_memory"].sqlite.mark_fallback("2026-12-07T10:00:00Z", "ConnectionError: refused")
    said = refused(tmp_path / "shared" / "target.db")
    assert "on the database fallback since 2026-12-07T10:00:00Z" in said, said
    assert _tree(tmp_path / "shared") == ["notes.txt"]
    # A target that was there before is left as it was: its files, and its records.
    said = refused(tmp_path / "old" / "agentmemory.db")
    assert "on the database fallback" in said, said
    assert _tree(tmp_path / "old") == old_tree
    again = make_runtime(data_dir=str(tmp_path / "old"), database_url=None)
    assert {scope: dict(again.db.reader().records.iter_scope(scope)) for scope in
            again.db.reader().records.scope_counts()} == old_records and old_records["mem:memories"]



def test_a_refused_migration_called_from_python_leaves_no_target_it_created(make_runtime, tmp_path):
    """``migrate.migrate`` given the target's settings opens the target itself, as the CLI does,
    and a refusal takes away what opening it made: the file, its sidecars, its generated secret
    and its directories. The same call, once nothing refuses, migrates and keeps the target."""
    from agentmemory_server.errors import AppError
    from agentmemory_server.kernel.settings import Settings
    from conftest import free_port

    source = make_runtime(data_dir=str(tmp_path / "src"), database_url=None)
    seed(source)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    target = Settings.from_env({}, data_dir=str(tmp_path / "new" / "deeper"), background_jobs=False,
                               embedding_provider="none", **_redis_settings(dead))  # auth on: a secret is made
    with pytest.raises(AppError, match="target's working memory .* does not answer"):
        migrate.migrate(source, target, tmp_path / "src")
    assert not (tmp_path / "new").exists(), _tree(tmp_path / "new")

    result = migrate.migrate(source, target.replace(working_memory_backend="sqlite"), tmp_path / "src")
    assert result["verified"]["ok"] and result["records"] > 0, result
    assert {"agentmemory.db", "secret"} <= set(_tree(tmp_path / "new" / "deeper")), _tree(tmp_path / "new")


def _a_run_interrupted_by_a_damaged_line(make_runtime, tmp_path):
    """A SQLite source migrated to a SQLite target by a run that stopped at a damaged line in the
    middle of its spooled export, having imported the batches before it. Returns the good line
    too, for the test to put back."""
    source = make_runtime(data_dir=str(tmp_path / "src"), database_url=None)
    seed(source)
    target = make_runtime(data_dir=str(tmp_path / "dst"), database_url=None)
    spool, state_path = migrate.spool_paths(tmp_path / "src")
    with open(spool, "w", encoding="utf-8") as out:
        maintenance.stream_export(source, out, lines=True)
    lines = spool.read_text().splitlines(keepends=True)
    middle = len(lines) // 2
    good, lines[middle] = lines[middle], "{not json\n"
    spool.write_text("".join(lines))
    state_path.write_text(json.dumps({"source": source.db.location, "target": target.db.location,
                                      "exported": True, "imported": 0}))
    with pytest.raises(InvalidInput, match=f"line {middle + 1}"):
        migrate.migrate(source, target, tmp_path / "src", batch=3)
    return source, target, spool, state_path, good
