"""A damaged database file, for real: a bit-rotted index page, a file that is not a database,
and a server SIGKILLed with most of its data still in the WAL.

Damage is found at start-up and by the periodic check; the server then refuses every write
(503 ``database_damaged`` saying what to do) while reads that still work go on, and
``agentmemory restore --from-backup`` brings back the last good state from a local snapshot or
the HF dataset."""

from __future__ import annotations

import json
import time
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import requests

import faults
from conftest import HUB_REPO, LiveServer, clean_environ, hook, post, sync_env, wait_for

AGENTMEMORY = str(Path(sys.executable).with_name("agentmemory"))
INDEX = "search_docs_project_ts"  # an index page: the records still read, quick_check finds it


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTMEMORY, *args], env=env, capture_output=True, text=True, timeout=180)


def seed(server: LiveServer, session: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = post(server.api("/observe"), hook(session, timestamp=f"2026-04-01T09:00:{i % 60:02d}.{i:03d}Z",
                                                data={"tool_name": "Bash", "tool_output": f"built module {i}"}))
        assert r.status_code == 201, r.text
        ids.append(r.json()["observationId"])
    return ids


def observation_ids(server: LiveServer, session: str) -> set[str]:
    r = requests.get(server.api("/observations"), params={"sessionId": session, "limit": 1000}, timeout=30)
    assert r.status_code == 200, r.text
    return {o["id"] for o in r.json()["observations"]}


def server_env(server: LiveServer) -> dict[str, str]:
    return {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(server.data_dir), "HOME": server.env["HOME"]}


def assert_refuses_writes_and_says_what_to_do(server: LiveServer) -> None:
    health = requests.get(server.api("/health"), timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "critical"
    damaged = health.json()["database"]["integrity"]["damaged"]
    assert "restore --from-backup" in damaged["fix"] and damaged["problems"]
    # A hook event is kept on the node's disk until the database takes writes again (test_spool.py).
    spooled = post(server.api("/observe"), hook("after-damage"))
    assert spooled.status_code == 202 and spooled.json()["spooled"] is True, spooled.text
    assert "writes are refused" in spooled.json()["error"]
    refused = post(server.api("/remember"), {"content": "not into a damaged file"})
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["code"] == "database_damaged" and "writes are refused" in body["error"]
    assert "restore --from-backup" in body["details"]["fix"]
    checks = {c["name"]: c for c in post(server.api("/diagnostics"), {}).json()["checks"]}
    assert checks["db_integrity"]["status"] == "fail" and "restore --from-backup" in checks["db_integrity"]["fix"]
    assert "restore --from-backup" in server.log()


def test_damage_found_at_start_up_refuses_writes_and_restore_from_a_local_snapshot(tmp_path):
    server = LiveServer(tmp_path, {"AGENTMEMORY_CAPTURE_RETRY_INTERVAL_MS": "1000"}, [])
    try:
        good = seed(server, "good", 12)
        snap = cli(server_env(server), "backup", "--local")
        assert snap.returncode == 0, snap.stderr
        assert json.loads(snap.stdout)["status"] == "snapshot"
        late = seed(server, "late", 3)  # written after the snapshot: lost by the restore, by design
        server.stop()
        faults.damage_index_page(server.db_path, INDEX)
        server.start()
        assert_refuses_writes_and_says_what_to_do(server)
        assert observation_ids(server, "good") == set(good)  # reads that still work go on
        assert observation_ids(server, "late") == set(late)
        # While the server has the file open, restore refuses.
        busy = cli(server_env(server), "restore", "--from-backup")
        assert busy.returncode == 1 and "is open in another process" in busy.stderr
        server.stop()
        restored = cli(server_env(server), "restore", "--from-backup")
        assert restored.returncode == 0, restored.stderr
        result = json.loads(restored.stdout)
        assert result["source"] == "local" and result["reason"] == "the database is damaged"
        assert Path(result["kept"]).exists()  # the damaged file is kept for a salvage attempt
        server.start()
        health = requests.get(server.api("/health")).json()
        assert health["status"] in ("healthy", "degraded") and "damaged" not in health["database"]["integrity"]
        assert observation_ids(server, "good") == set(good) and observation_ids(server, "late") == set()
        assert post(server.api("/observe"), hook("after-restore")).status_code == 201
        # The event spooled while the file was damaged is stored now, across the restart.
        wait_for(lambda: observation_ids(server, "after-damage"), timeout=30,
                 message="the spooled event was not stored after the restore")
        assert not list((server.data_dir / "server-spool").glob("*.json"))
        # A healthy database is not replaced without --force.
        server.stop()
        refused = cli(server_env(server), "restore", "--from-backup")
        assert refused.returncode == 3 and "passes its integrity check" in refused.stderr
    finally:
        server.stop()


def test_damage_found_by_the_periodic_check_stops_writes_while_running(tmp_path):
    server = LiveServer(tmp_path, {"AGENTMEMORY_INTEGRITY_CHECK_INTERVAL": "1"}, [])
    try:
        good = seed(server, "good", 10)
        # The processes take turns at the periodic check; damage the file once the background
        # worker process is up (else its start-up check, not a periodic one, may find it first).
        wait_for(lambda: requests.get(server.api("/health"), timeout=10).json()["background"]["workers"],
                 timeout=60, message="the background worker never started")
        faults.damage_index_page(server.db_path, INDEX)  # checkpoints first, under the running server
        wait_for(lambda: requests.get(server.api("/health"), timeout=10).status_code == 503, timeout=30,
                 message="the periodic check did not find the damaged page")
        assert_refuses_writes_and_says_what_to_do(server)
        assert observation_ids(server, "good") == set(good)
        assert "periodic integrity check" in requests.get(server.api("/health")).json()["database"]["integrity"][
            "damaged"]["source"]
    finally:
        server.stop()


def test_restore_from_backup_takes_the_hf_dataset_when_there_is_no_local_snapshot(tmp_path, hf_hub):
    server = LiveServer(tmp_path, {}, [])
    try:
        good = seed(server, "good", 8)
        env = sync_env(hf_hub, tmp_path, server.data_dir)
        uploaded = cli(env, "backup")
        assert uploaded.returncode == 0 and json.loads(uploaded.stdout)["status"] == "uploaded", uploaded.stderr
        server.stop()
        faults.damage_index_page(server.db_path, INDEX)
        restored = cli(env, "restore", "--from-backup")
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["source"] == "hf" and hf_hub.commit_count(HUB_REPO) >= 1
        server.start()
        assert observation_ids(server, "good") == set(good)
        assert requests.get(server.api("/health")).status_code == 200
    finally:
        server.stop()


def test_a_file_that_is_not_a_database_is_refused_at_start_with_what_to_do(tmp_path):
    server = LiveServer(tmp_path, {}, [], start=False)
    server.data_dir.mkdir(parents=True)
    server.db_path.write_bytes(b"this is not a database, it is a text file that took its place\n" * 200)
    proc = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "src" / "app.py")], env=server.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "not serving" in proc.stderr and "restore --from-backup" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_sigkilled_server_with_most_data_in_the_wal_is_recovered_at_the_next_start(tmp_path):
    # Checkpoints left to the commits (SQLite's default), so the data stays in the WAL.
    server = LiveServer(tmp_path, {"AGENTMEMORY_INTEGRITY_CHECK_INTERVAL": "0", "AGENTMEMORY_WAL_CHECKPOINT_SECONDS": "0"},
                        [])
    try:
        acknowledged = seed(server, "wal", 150)
        wal = Path(str(server.db_path) + "-wal")
        server.stop(signal.SIGKILL)
        # Most of the data never reached the database file: it is only in the WAL.
        assert wal.stat().st_size > server.db_path.stat().st_size
        conn = sqlite3.connect(f"{server.db_path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:  # the main file alone (immutable: no WAL) does not have them
            in_file = conn.execute("SELECT count(*) FROM kv_store WHERE scope = 'mem:obs:wal'").fetchone()[0]
        finally:
            conn.close()
        assert in_file < len(acknowledged)
        Path(str(server.db_path) + "-shm").unlink()  # a stale index of the WAL is rebuilt, not trusted
        server.start()
        assert observation_ids(server, "wal") == set(acknowledged)
        health = requests.get(server.api("/health")).json()
        assert health["database"]["integrity"]["lastCheck"]["result"] == "ok"
        assert health["counts"]["observations"] == len(acknowledged)
        assert post(server.api("/observe"), hook("wal")).status_code == 201
    finally:
        server.stop()


def test_damage_found_in_one_process_stops_writes_in_every_other_until_restored(tmp_path):
    """Two openers of one file stand for the server's processes (request workers, the background
    worker): the one that finds damage leaves <db>.damaged, the other refuses writes within a
    second; installing a restored file removes the marker, and so does a sound start-up check."""
    import time

    import pytest

    from agentmemory_server.errors import AppError
    from agentmemory_server.storage import open_database
    from agentmemory_server.storage.sqlite import hf_sync

    db_path = tmp_path / "agentmemory.db"
    now = lambda: "2026-12-05T00:00:00.000Z"  # noqa: E731
    finder = open_database(db_path, now=now, lexical_engine="fts5", background=False)
    other = open_database(db_path, now=now, lexical_engine="fts5", background=False)
    try:
        with other.transaction("before") as tx:
            tx.records.set("mem:test", "a", {"id": "a"}, now=now())
        finder.mark_damaged(["Page 13: btreeInitPage() returns error code 11"], "periodic integrity check")
        marker = Path(str(db_path) + ".damaged")
        assert marker.exists()
        time.sleep(1.1)  # the marker is looked for at most once a second
        with pytest.raises(AppError) as refused:
            with other.transaction("after") as tx:
                tx.records.set("mem:test", "b", {"id": "b"}, now=now())
        assert refused.value.code == "database_damaged" and "restore --from-backup" in refused.value.details["fix"]
        assert other.storage_health()["integrity"]["damaged"]["source"] == "periodic integrity check"
        assert other.reader().records.get("mem:test", "a") == {"id": "a"}  # reads go on
        assert other.reader().records.get("mem:test", "b") is None
    finally:
        finder.close()
        other.close()
    # A stale marker with a sound file: the start-up check clears it.
    reopened = open_database(db_path, now=now, lexical_engine="fts5", background=False, check_seconds=30)
    try:
        assert reopened.damage is None and not marker.exists()
    finally:
        reopened.close()
    # Installing a restored file removes the marker too.
    marker.write_text(json.dumps({"problems": ["found by hand"]}))
    copy = tmp_path / "copy.db"
    shutil_copy(db_path, copy)
    hf_sync.install(copy, db_path)
    assert not marker.exists()


def shutil_copy(source: Path, target: Path) -> None:
    conn = sqlite3.connect(source)
    try:
        conn.execute("VACUUM INTO ?", (str(target),))
    finally:
        conn.close()


def test_processes_opening_the_file_together_run_one_start_up_check(tmp_path):
    """A server's processes open the file within a second of each other: while one runs the
    start-up check the others skip it (damage it finds reaches them through the marker, above);
    an opener on its own, as after a crash, always checks."""
    import fcntl
    import os

    from agentmemory_server.storage import open_database

    db_path = tmp_path / "agentmemory.db"
    now = lambda: "2026-12-05T00:00:00.000Z"  # noqa: E731
    open_database(db_path, now=now, lexical_engine="fts5", background=False).close()
    checking = os.open(f"{db_path}.startup-check", os.O_RDWR | os.O_CREAT)  # a sibling, mid-check
    try:
        fcntl.flock(checking, fcntl.LOCK_EX | fcntl.LOCK_NB)
        sibling = open_database(db_path, now=now, lexical_engine="fts5", background=False, check_seconds=30)
        try:
            assert sibling.last_check["result"] == "run by another process"
            assert sibling.storage_health()["integrity"]["lastCheck"]["result"] == "run by another process"
        finally:
            sibling.close()
    finally:
        os.close(checking)
    assert_an_opener_checks_on_its_own(db_path)  # alone, as after a crash


def assert_an_opener_checks_on_its_own(db_path: Path) -> None:
    from agentmemory_server.storage import open_database

    opened = open_database(db_path, now=lambda: "2026-12-05T00:00:00.000Z", lexical_engine="fts5",
                           background=False, check_seconds=30)
    try:
        assert opened.last_check["result"] == "ok" and opened.last_check["source"] == "start-up check"
    finally:
        opened.close()


def test_the_start_up_check_runs_when_its_lock_file_cannot_be_made(tmp_path):
    """A lock file that cannot be opened (here a directory in its place, as a read-only directory
    would refuse it) does not skip the check: the opener checks on its own."""
    from agentmemory_server.storage import open_database

    db_path = tmp_path / "agentmemory.db"
    now = lambda: "2026-12-05T00:00:00.000Z"  # noqa: E731
    open_database(db_path, now=now, lexical_engine="fts5", background=False).close()
    Path(f"{db_path}.startup-check").mkdir()
    assert_an_opener_checks_on_its_own(db_path)


def test_processes_sharing_the_file_take_turns_at_the_periodic_check(tmp_path):
    """The periodic check reads the whole file (11 GB at 1M records): of the processes using it,
    one checks each interval. A process skips its turn while another checks, or takes over a pass
    recorded less than an interval ago; a check that did not pass is never taken over."""
    import fcntl
    import os

    from agentmemory_server.storage import open_database

    db_path = tmp_path / "agentmemory.db"
    stamp = Path(f"{db_path}.integrity-check")
    now = lambda: "2026-12-06T00:00:00.000Z"  # noqa: E731
    first = open_database(db_path, now=now, lexical_engine="fts5", background=False, check_seconds=30)
    second = open_database(db_path, now=now, lexical_engine="fts5", background=False, check_seconds=30)
    try:
        assert second.periodic_integrity_check(30, passed_within=3600) == ["ok"]
        assert second.last_check["result"] == "ok" and "byProcess" not in second.last_check
        # A pass less than an interval ago is taken over, with who ran it.
        assert first.periodic_integrity_check(30, passed_within=3600) == ["ok"]
        assert first.last_check == {**second.last_check, "byProcess": os.getpid()}
        assert json.loads(stamp.read_text())["check"] == second.last_check
        # An older one is not: passed_within is the interval (less a margin), seconds ago.
        time.sleep(0.05)
        assert first.periodic_integrity_check(30, passed_within=0.01) == ["ok"]
        assert "byProcess" not in first.last_check and first.last_check["source"] == "periodic integrity check"
        # While another holds the turn (mid-check), the process skips its own and says so.
        checking = os.open(stamp, os.O_RDWR)
        try:
            fcntl.flock(checking, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert second.periodic_integrity_check(30, passed_within=0) is None
            assert second.storage_health()["integrity"]["lastCheck"]["result"] == "run by another process"
        finally:
            os.close(checking)
        # A stamp torn by a crash mid-write reads as no pass.
        stamp.write_text('{"passed": 17')
        assert second.periodic_integrity_check(30, passed_within=3600) == ["ok"]
        assert "byProcess" not in second.last_check
        # No lock file can be made (a directory in its place): the process checks on its own.
        stamp.unlink()
        stamp.mkdir()
        assert first.periodic_integrity_check(30, passed_within=3600) == ["ok"]
        assert first.last_check["result"] == "ok" and "byProcess" not in first.last_check
    finally:
        first.close()
        second.close()
    # Damage found is not a pass: the next process checks for itself (and finds it too).
    damaged_path = tmp_path / "damaged.db"
    finder = open_database(damaged_path, now=now, lexical_engine="fts5", background=False)
    finder.close()
    faults.damage_index_page(damaged_path, INDEX)
    finder = open_database(damaged_path, now=now, lexical_engine="fts5", background=False, check_seconds=0)
    other = open_database(damaged_path, now=now, lexical_engine="fts5", background=False, check_seconds=0)
    try:
        problems = finder.periodic_integrity_check(30, passed_within=3600)
        assert problems and problems != ["ok"] and finder.last_check["result"] == "damaged"
        assert Path(f"{damaged_path}.integrity-check").read_bytes() == b""
        assert other.periodic_integrity_check(30, passed_within=3600) != ["ok"]
        assert other.last_check["result"] == "damaged" and "byProcess" not in other.last_check
    finally:
        finder.close()
        other.close()


def test_the_integrity_check_stops_at_its_budget_inside_a_large_b_tree(tmp_path):
    """SQLite before 3.43 walks every b-tree's pages in one step of its VM, where no progress
    handler runs: a 1 s start-up budget took 2.7 s at 1M records. The check is interrupted on
    time instead. Here a table of large values (a long walk, few rows) is checked with a budget
    far below the walk: a progress handler would let it finish; the interrupt stops it."""
    from agentmemory_server.storage import open_database

    db_path = tmp_path / "agentmemory.db"
    now = lambda: "2026-12-06T00:00:00.000Z"  # noqa: E731
    open_database(db_path, now=now, lexical_engine="fts5", background=False).close()
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("CREATE TABLE filler (b BLOB)")
        with conn:
            conn.executemany("INSERT INTO filler VALUES (zeroblob(?))", [(1 << 20,)] * 256)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    db = open_database(db_path, now=now, lexical_engine="fts5", background=False)
    try:
        # The walk takes about 80 ms here. On a loaded machine the timer's thread can miss the
        # whole of it once; a progress handler would let every try finish.
        for _ in range(3):
            outcome = db.run_integrity_check(0.002, "a short check")
            if outcome is None:
                break
        assert outcome is None, "the interrupt never reached the walk"
        assert db.last_check["result"] == "unfinished"
        assert db.damage is None  # cut short is not damage
        assert db.run_integrity_check(60, "a whole check") == ["ok"]
    finally:
        db.close()
