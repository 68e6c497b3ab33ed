"""sync.py against a loopback fake HuggingFace Hub: backup, restore, change detection, retention,
the never-overwrite rules and a Hub that is down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import (HUB_REPO, ROOT, Settings, hook, post, run_sync, seed_store, sqlite_table_counts, sync_env,
                      wait_for)

from agentmemory_server.kernel import registry
from agentmemory_server.storage.sqlite import hf_sync as sync
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.wiring import build_runtime


def result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def add_memory(data_dir: Path, text: str) -> None:
    rt = build_runtime(Settings.from_env({}, data_dir=str(data_dir), background_jobs=False, auth="off"))
    try:
        registry.call(Ctx(rt), "memory_save", {"content": text})
    finally:
        rt.close()


def remote_db(hf_hub, tmp_path: Path, name: str = sync.LATEST) -> Path:
    path = tmp_path / f"remote-{name.replace('/', '_')}"
    path.write_bytes(hf_hub.files(HUB_REPO)[name])
    return path


def test_backup_then_restore_into_an_empty_dir_gives_the_same_database(hf_hub, tmp_path):
    source = tmp_path / "source"
    seed_store(source)
    env = sync_env(hf_hub, tmp_path, source)
    uploaded = result(run_sync(env, "backup"))
    assert uploaded["status"] == "uploaded" and hf_hub.repos[HUB_REPO].private
    assert sorted(hf_hub.files(HUB_REPO)) == [".gitattributes", sync.LATEST, sync.META,
                                           json.loads(hf_hub.files(HUB_REPO)[sync.META])["history"]]
    target = tmp_path / "empty" / "nested"
    restored = result(run_sync(sync_env(hf_hub, tmp_path, target), "restore"))
    assert restored["status"] == "restored" and restored["id"] == uploaded["id"]
    counts = sqlite_table_counts(target / "agentmemory.db")
    assert counts == sqlite_table_counts(source / "agentmemory.db")
    assert counts["kv_store"] == 3 + 12 + 2 and counts["search_docs"] == 14
    assert not (target / "agentmemory.db-wal").exists()
    assert hf_hub.unhandled == []


def test_an_unchanged_database_is_not_uploaded_and_not_even_asked_about(hf_hub, tmp_path):
    data = tmp_path / "data"
    seed_store(data)
    env = sync_env(hf_hub, tmp_path, data)
    first = result(run_sync(env, "backup"))
    commits, requests_before = hf_hub.commit_count(HUB_REPO), len(hf_hub.requests)
    assert result(run_sync(env, "backup")) == {"status": "unchanged", "id": first["id"]}
    assert hf_hub.commit_count(HUB_REPO) == commits and len(hf_hub.requests) == requests_before
    add_memory(data, "a change worth backing up")
    second = result(run_sync(env, "backup"))
    assert second["status"] == "uploaded" and hf_hub.commit_count(HUB_REPO) == commits + 1
    meta = json.loads(hf_hub.files(HUB_REPO)[sync.META])
    assert meta["id"] == second["id"] and meta["previous"] == first["id"]
    assert meta["tables"]["kv_store"] == 18


def test_restore_with_no_repo_or_no_file_is_fine(hf_hub, tmp_path):
    env = sync_env(hf_hub, tmp_path, tmp_path / "data")
    proc = run_sync(env, "restore")
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"status": "no-backup"}
    assert "does not exist yet: nothing to restore" in proc.stderr
    hf_hub.create(HUB_REPO, private=True)
    proc = run_sync(env, "restore")
    assert json.loads(proc.stdout) == {"status": "no-backup"} and f"has no {sync.LATEST} yet" in proc.stderr
    assert not (tmp_path / "data" / "agentmemory.db").exists()


def test_a_local_database_newer_than_the_backup_is_not_overwritten(hf_hub, tmp_path):
    seed_store(tmp_path / "a")
    result(run_sync(sync_env(hf_hub, tmp_path, tmp_path / "a"), "backup"))
    other = tmp_path / "b"
    seed_store(other, sessions=1, per_session=1, memories=0)  # written after the backup
    before = (other / "agentmemory.db").read_bytes()
    env_b = sync_env(hf_hub, tmp_path, other)
    proc = run_sync(env_b, "restore")
    assert proc.returncode == sync.EXIT_REFUSED
    assert "is newer than the remote backup" in proc.stderr and "--force" in proc.stderr
    assert (other / "agentmemory.db").read_bytes() == before
    # Nor may the unrelated local database replace the remote backup.
    proc = run_sync(env_b, "backup")
    assert proc.returncode == sync.EXIT_REFUSED and "Refusing to overwrite it" in proc.stderr
    assert sqlite_table_counts(remote_db(hf_hub, tmp_path))["kv_store"] == 17
    forced = result(run_sync(env_b, "restore", "--force"))
    assert forced["status"] == "restored" and forced["kept"].endswith("agentmemory.db.pre-restore")
    assert sqlite_table_counts(other / "agentmemory.db")["kv_store"] == 17
    assert sqlite_table_counts(Path(forced["kept"]))["kv_store"] == 2  # the replaced one is kept


def test_local_changes_after_a_sync_are_kept_and_a_newer_remote_is_taken(hf_hub, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    seed_store(a)
    env_a, env_b = sync_env(hf_hub, tmp_path, a), sync_env(hf_hub, tmp_path, b)
    result(run_sync(env_a, "backup"))
    result(run_sync(env_b, "restore"))
    add_memory(a, "only machine A knows this")
    # A changed after its own backup and the remote did not move: nothing to restore.
    assert result(run_sync(env_a, "restore"))["status"] == "up-to-date"
    assert sqlite_table_counts(a / "agentmemory.db")["kv_store"] == 18
    # A uploads; B has not changed since its restore, so it fast-forwards.
    result(run_sync(env_a, "backup"))
    assert result(run_sync(env_b, "restore"))["status"] == "restored"
    assert sqlite_table_counts(b / "agentmemory.db")["kv_store"] == 18


def test_retention_keeps_the_last_n_snapshots(hf_hub, tmp_path):
    data = tmp_path / "data"
    seed_store(data, sessions=1, per_session=1, memories=0)
    env = sync_env(hf_hub, tmp_path, data, AGENTMEMORY_BACKUP_KEEP="2")
    ids = []
    for n in range(4):
        # Distinct words: near-duplicates would become versions (and add a supersede relation).
        add_memory(data, f"snapshot{n} keeps distinct words like quokka{n} zebra{n} falcon{n}")
        ids.append(result(run_sync(env, "backup")))
    history = sorted(name for name in hf_hub.files(HUB_REPO) if name.startswith("backups/"))
    metas = [json.loads(hf_hub.files(HUB_REPO, c.oid)[sync.META]) for c in hf_hub.repos[HUB_REPO].commits[1:]]
    assert history == [metas[2]["history"], metas[3]["history"]]
    assert ids[2]["pruned"] == [metas[0]["history"]] and ids[3]["pruned"] == [metas[1]["history"]]
    newest = hf_hub.files(HUB_REPO)
    assert newest[history[-1]] == newest[sync.LATEST]
    assert sqlite_table_counts(remote_db(hf_hub, tmp_path, history[0]))["kv_store"] == 1 + 1 + 3
    # KEEP=0: no timestamped copies at all, old ones removed in the same commit.
    add_memory(data, "one more")
    assert len(result(run_sync(sync_env(hf_hub, tmp_path, data, AGENTMEMORY_BACKUP_KEEP="0"), "backup"))["pruned"]) == 2
    assert not [name for name in hf_hub.files(HUB_REPO) if name.startswith("backups/")]


def test_a_download_that_does_not_match_its_metadata_is_not_installed(hf_hub, tmp_path):
    from fake_hub import Blob

    seed_store(tmp_path / "a")
    result(run_sync(sync_env(hf_hub, tmp_path, tmp_path / "a"), "backup"))
    seed_store(tmp_path / "other", sessions=1, per_session=1, memories=0)
    head = hf_hub.repos[HUB_REPO].head
    head.files[sync.LATEST] = Blob((tmp_path / "other" / "agentmemory.db").read_bytes(), lfs=True)
    proc = run_sync(sync_env(hf_hub, tmp_path, tmp_path / "b"), "restore")
    assert proc.returncode == sync.EXIT_FAILED and "does not match the sha256" in proc.stderr
    assert not (tmp_path / "b" / "agentmemory.db").exists()
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".agentmemory-restore-")]


def test_hub_down_is_a_clear_bounded_error_and_the_server_is_unaffected(hf_hub, tmp_path, live_server):
    server = live_server()
    assert post(server.api("/observe"), hook("down")).status_code == 201
    env = sync_env(hf_hub, tmp_path, server.data_dir, AGENTMEMORY_HUB_RETRIES="2")
    hf_hub.stop()  # the port is closed: connection refused, as when the Hub is unreachable
    proc = run_sync(env, "backup")
    assert proc.returncode == sync.EXIT_FAILED
    assert f"the Hub at {hf_hub.url} is unreachable" in proc.stderr and "Traceback" not in proc.stderr
    assert "Retry" not in proc.stderr  # the first request is never retried: it fails at once
    assert requests.get(server.api("/livez")).status_code == 200
    assert post(server.api("/observe"), hook("down", data={"after": "hf_hub down"})).status_code == 201
    assert requests.get(server.api("/sessions")).json()["sessions"][0]["observationCount"] == 2


def test_a_wrong_token_is_named(hf_hub, tmp_path):
    seed_store(tmp_path / "data", sessions=1, per_session=1, memories=0)
    for command in ("backup", "restore"):
        proc = run_sync(sync_env(hf_hub, tmp_path, tmp_path / "data", HF_TOKEN="hf_wrong"), command)
        assert proc.returncode == sync.EXIT_FAILED
        assert "the Hub answered HTTP 401" in proc.stderr and "check HF_TOKEN" in proc.stderr


def test_a_hub_that_never_answers_times_out(tmp_path, hf_hub):
    import socket

    seed_store(tmp_path / "data", sessions=1, per_session=1, memories=0)
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = sync_env(hf_hub, tmp_path, tmp_path / "data", AGENTMEMORY_HUB_TIMEOUT="0.5",
                       HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}")
        proc = run_sync(env, "backup")
    assert proc.returncode == sync.EXIT_FAILED
    assert "is unreachable (ReadTimeout" in proc.stderr


def test_loop_survives_a_down_hub_uploads_when_it_returns_and_backs_up_on_sigterm(hf_hub, tmp_path):
    data = tmp_path / "data"
    seed_store(data, sessions=1, per_session=1, memories=0)
    hf_hub.stop()
    log_path = tmp_path / "loop.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "sync.py"), "loop", "--interval", "0.2"],
                                env=sync_env(hf_hub, tmp_path, data), stderr=log, stdout=log)
    try:
        wait_for(lambda: log_path.read_text().count("periodic backup failed") >= 2, timeout=60, proc=proc,
                 message="the loop did not report two failed backups")
        assert "unreachable" in log_path.read_text()
        hf_hub.start()  # back on the same port
        wait_for(lambda: hf_hub.commit_count(HUB_REPO) == 2, timeout=60, proc=proc,
                 message="the loop did not upload once the Hub was back")
        add_memory(data, "written just before shutdown")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "final backup" in log_path.read_text()
    assert sqlite_table_counts(remote_db(hf_hub, tmp_path))["kv_store"] == 1 + 1 + 1


def test_retries_are_bounded_by_settings(hf_hub, tmp_path):
    data = tmp_path / "data"
    seed_store(data, sessions=1, per_session=1, memories=0)
    hf_hub.fail("POST", "/preupload/", 503, times=1)
    proc = run_sync(sync_env(hf_hub, tmp_path, data, AGENTMEMORY_HUB_RETRIES="0"), "backup")
    assert proc.returncode == 1 and "the Hub answered HTTP 503" in proc.stderr
    hf_hub.fail("POST", "/preupload/", 503, times=1)
    assert result(run_sync(sync_env(hf_hub, tmp_path, data, AGENTMEMORY_HUB_RETRIES="1"), "backup"))["status"] == "uploaded"
    assert hf_hub.count("POST", "/preupload/") == 3 and hf_hub.count("POST", "/commit/") == 1


def test_a_commit_whose_reply_was_lost_is_still_recognised_as_ours(hf_hub, tmp_path):
    data = tmp_path / "data"
    seed_store(data, sessions=1, per_session=1, memories=0)
    env = sync_env(hf_hub, tmp_path, data)
    hf_hub.fail("POST", "/commit/", 500, after=True)
    assert run_sync(env, "backup").returncode == 1
    assert hf_hub.commit_count(HUB_REPO) == 2  # the Hub has it, we never heard back
    add_memory(data, "the next change")
    assert result(run_sync(env, "backup"))["status"] == "uploaded"


def test_restore_refuses_while_the_server_has_the_database_open(hf_hub, tmp_path, live_server):
    seed_store(tmp_path / "a")
    result(run_sync(sync_env(hf_hub, tmp_path, tmp_path / "a"), "backup"))
    server = live_server()
    post(server.api("/observe"), hook("busy"))
    proc = run_sync(sync_env(hf_hub, tmp_path, server.data_dir), "restore", "--force")
    assert proc.returncode == 1 and "open in another process" in proc.stderr
    assert requests.get(server.api("/sessions")).json()["total"] == 1


def test_boot_restore_policy(hf_hub, tmp_path):
    hf_hub.stop()
    env = sync_env(hf_hub, tmp_path, tmp_path / "empty")
    proc = run_sync(env, "restore", "--boot")
    assert proc.returncode == 1 and "not starting" in proc.stderr
    assert run_sync({**env, "AGENTMEMORY_RESTORE_REQUIRED": "false"}, "restore", "--boot").returncode == 0
    seed_store(tmp_path / "existing")
    proc = run_sync(sync_env(hf_hub, tmp_path, tmp_path / "existing"), "restore", "--boot")
    assert proc.returncode == 0 and "starting with the existing local database" in proc.stderr


def test_configuration_errors_are_named(tmp_path):
    env = {"AGENTMEMORY_DATA_DIR": str(tmp_path), "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    proc = run_sync(env, "backup")
    assert proc.returncode == sync.EXIT_CONFIG and "AGENTMEMORY_DATASET_REPO is not set" in proc.stderr
    proc = run_sync({**env, "AGENTMEMORY_DATASET_REPO": "no-slash"}, "restore")
    assert proc.returncode == sync.EXIT_CONFIG and "owner/name" in proc.stderr
    proc = run_sync({**env, "AGENTMEMORY_DATASET_REPO": "a/b", "AGENTMEMORY_BACKUP_KEEP": "-1"}, "backup")
    assert proc.returncode == sync.EXIT_CONFIG and "AGENTMEMORY_BACKUP_KEEP" in proc.stderr


@pytest.mark.parametrize("env", [
    {}, {"AGENTMEMORY_DATA_DIR": "/srv/mem"}, {"AGENTMEMORY_DB": "/x/y.db", "AGENTMEMORY_DATA_DIR": "/srv"},
    {"AGENTMEMORY_DB": "${AGENTMEMORY_DB}"}, {"AGENTMEMORY_DATA_DIR": "~/d"},
])
def test_sync_finds_the_same_database_as_the_server(env):
    assert sync.db_path_from_env(env) == Settings.from_env(env).database_path


# -- the local file: fingerprint and snapshot --------------------------------------------------------------


def test_quick_hash_changes_with_every_commit_and_only_then(tmp_path):
    db = tmp_path / "a.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    first = sync._quick_hash(db)
    assert sync._quick_hash(db) == first
    conn.execute("SELECT count(*) FROM t").fetchone()
    assert sync._quick_hash(db) == first  # reads change nothing
    conn.execute("INSERT INTO t VALUES (1)")
    second = sync._quick_hash(db)
    assert second != first
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert sync._quick_hash(db) != second
    conn.close()


def test_snapshot_of_a_live_wal_database_has_every_committed_row(tmp_path):
    db = tmp_path / "live.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")  # keep every commit in the WAL
    writer.execute("CREATE TABLE t (x)")
    writer.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    copied = tmp_path / "copied.db"
    shutil.copyfile(db, copied)  # what a naive file copy of a live WAL database gets
    assert sqlite3.connect(copied).execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    info = sync.snapshot(db, tmp_path / "snap.db")
    writer.close()
    assert info["tables"] == {"t": 1000} and info["sha256"] == sync.sha256_file(tmp_path / "snap.db")
    assert not (tmp_path / "snap.db-wal").exists()


def test_inspect_rejects_a_corrupt_file(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(sync.SyncError, match="not a usable SQLite database|integrity_check"):
        sync.inspect(bad)


def test_every_sync_setting_is_a_config_field_and_documented():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(sync.Config)} - {"db_path"}
    assert {s.field for s in sync.SYNC_SETTINGS} == fields
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert all(f"| `{s.env}` |" in operations for s in sync.SYNC_SETTINGS)


def test_what_a_killed_backup_left_behind_is_removed_by_the_next_run(hf_hub, tmp_path):
    """A backup killed mid-upload (SIGKILL: no cleanup runs) leaves its scratch folder, a whole
    database copy, beside the database; the next backup removes it (under the lock every backup
    and restore holds, so it is nobody's work). A local snapshot's ``.partial`` (planted here as
    a killed snapshot leaves it) is removed by the next ``backup --local`` the same way."""
    data = tmp_path / "data"
    seed_store(data)
    env = sync_env(hf_hub, tmp_path, data)
    arrived = hf_hub.hold("POST", "/commit/")  # the snapshot is written by then
    proc = subprocess.Popen([sys.executable, str(ROOT / "sync.py"), "backup"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert arrived.wait(timeout=60)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        hf_hub.release()
    left = list(data.glob(".agentmemory-backup-*"))
    assert left and any(p.name == sync.LATEST for p in left[0].iterdir())  # the killed run's copy
    partial = data / "backups" / ".agentmemory-20260101T000000.000Z.db.partial"
    partial.parent.mkdir()
    shutil.copyfile(data / "agentmemory.db", partial)
    # The held commit went through once released, so this run may find it already there.
    assert result(run_sync(env, "backup"))["status"] in ("uploaded", "unchanged")
    assert not list(data.glob(".agentmemory-backup-*"))
    local = subprocess.run([str(Path(sys.executable).with_name("agentmemory")), "backup", "--local"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr
    assert sorted(p.name for p in partial.parent.iterdir()) == [
        Path(json.loads(local.stdout)["file"]).name]


def test_sync_py_runs_its_own_checkouts_code_beside_another_installed_version(hf_hub, tmp_path):
    # An older agentmemory-python installed in the environment (here first on PYTHONPATH, ahead
    # of this checkout's editable install). sync.py used to run hf_sync.py from the checkout and
    # import its helper modules from whichever package the path found first.
    installed = tmp_path / "site" / "agentmemory_server"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text('raise ImportError("the installed agentmemory-python 0.1 was imported")\n')
    env = sync_env(hf_hub, tmp_path, tmp_path / "data", PYTHONPATH=str(installed.parent))
    proc = run_sync(env, "restore")
    assert "0.1 was imported" not in proc.stderr, proc.stderr
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"status": "no-backup"}, proc.stderr
