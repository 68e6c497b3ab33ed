"""A disk that fills up and a filesystem that turns read-only, injected for real under a real
server process: a tmpfs filled to the byte, a loop-mounted ext4 forced read-only by an error.

What the client sees (507 ``disk_full`` / 503 ``storage_read_only`` with Retry-After, never a
500), what keeps working (reads), what is stored (every acknowledged write, after recovery) and
how it recovers (by itself when space returns). Needs root for the mounts (see tests/faults.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

import faults
from conftest import HUB_REPO, LiveServer, clean_environ, hook, post, sync_env, wait_for
from test_viewer_browser import browser  # noqa: F401 - the Chromium fixture

AGENTMEMORY = str(Path(sys.executable).with_name("agentmemory"))


def observe(server: LiveServer, session: str, i: int, size: int = 4000) -> requests.Response:
    body = hook(session, timestamp=f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}.000Z",
                data={"tool_name": "Bash", "tool_input": {"command": f"step {i}"}, "tool_output": f"out{i} " * (size // 5)})
    return post(server.api("/observe"), body)


def stored_ids(server: LiveServer, sessions: set[str]) -> set[str]:
    ids: set[str] = set()
    for session in sessions:
        r = requests.get(server.api("/observations"), params={"sessionId": session, "limit": 1000}, timeout=30)
        assert r.status_code == 200, r.text
        ids |= {o["id"] for o in r.json()["observations"]}
    return ids


def disk_section(server: LiveServer) -> tuple[int, dict]:
    r = requests.get(server.api("/health"), timeout=30)
    return r.status_code, r.json()["database"]["disk"]


def wal_drained(server: LiveServer) -> None:
    """Wait until the server's checkpoint thread has moved every committed page into the file."""

    def drained() -> bool:
        state = requests.get(server.api("/health"), timeout=30).json()["storage"]["walCheckpoints"]
        return bool(state["last"]) and not state["last"]["busy"] and state["last"]["moved"] == state["last"]["walFrames"]

    wait_for(drained, timeout=15, message="the WAL checkpoint thread did not catch up")


def write_until_refused(server: LiveServer, session: str, acknowledged: list[str], limit: int = 400) -> requests.Response:
    """Post observations until one is refused; every 201 is recorded as acknowledged."""
    for i in range(limit):
        r = observe(server, session, len(acknowledged) + i)
        assert r.status_code in (201, 507), r.text  # never a 500
        if r.status_code == 507:
            return r
        acknowledged.append(r.json()["observationId"])
    raise AssertionError(f"{limit} writes were all accepted on a full disk")


def test_a_full_disk_answers_507_keeps_reads_and_writes_resume_by_themselves(tmp_path):
    # No reserve: SQLite itself runs into ENOSPC (the 500 of the measured run).
    with faults.tmpfs(tmp_path / "disk", 48) as disk:
        server = LiveServer(tmp_path, {"AGENTMEMORY_DATA_DIR": str(disk), "AGENTMEMORY_DISK_RESERVE_MB": "0",
                                       "AGENTMEMORY_DISK_WARN_MB": "8"}, [])
        try:
            acknowledged = [observe(server, "before", i).json()["observationId"] for i in range(20)]
            filler = faults.fill(disk)
            assert faults.free_bytes(disk) < 64 * 1024
            refused = write_until_refused(server, "during", acknowledged)
            body = refused.json()
            assert body["code"] == "disk_full" and body["status"] == 507 and "nothing was written" in body["error"]
            assert refused.headers["Retry-After"] == "30" and body["details"]["retryAfterSeconds"] == 30
            # Reads keep working on a full disk; health says why writes fail.
            assert stored_ids(server, {"before", "during"}) == set(acknowledged)
            assert post(server.api("/search"), {"query": "out3", "limit": 5}).status_code == 200
            status, disk_health = disk_section(server)
            assert status == 503 and disk_health["status"] == "critical" and disk_health["refusedWrites"] >= 1
            # Space comes back: the next write succeeds, no restart.
            filler.unlink()
            after = observe(server, "after", 0)
            assert after.status_code == 201, after.text
            acknowledged.append(after.json()["observationId"])
            assert disk_section(server)[1]["status"] == "healthy"
            server.stop()
            server.start()
            assert stored_ids(server, {"before", "during", "after"}) == set(acknowledged)
            checks = {c["name"]: c for c in post(server.api("/diagnostics"), {}).json()["checks"]}
            assert checks["db_integrity"]["status"] == "pass" and checks["search_rows_missing"]["status"] == "pass"
        finally:
            server.stop()


def test_writes_stop_at_the_reserve_health_warns_before_and_backups_never_fill_the_disk(tmp_path, hf_hub):
    with faults.tmpfs(tmp_path / "disk", 40) as disk:
        env = {"AGENTMEMORY_DATA_DIR": str(disk), "AGENTMEMORY_DISK_RESERVE_MB": "4", "AGENTMEMORY_DISK_WARN_MB": "16"}
        server = LiveServer(tmp_path, env, [])
        try:
            acknowledged = [observe(server, "s", i).json()["observationId"] for i in range(10)]
            assert disk_section(server)[1]["status"] == "healthy"
            # Below the warning threshold: still writing, but /health says so.
            faults.fill(disk, leave_bytes=10 * faults.MB, name="filler1")
            status, warned = disk_section(server)
            assert status == 200 and warned["status"] == "degraded" and "writes stop below 4.0 MB" in warned["message"]
            assert requests.get(server.api("/health")).json()["status"] == "degraded"
            assert observe(server, "s", 100).status_code == 201
            # A snapshot would leave less than the reserve: neither kind of backup writes anything.
            big = faults.fill(disk, leave_bytes=5 * faults.MB, name="filler2")
            wal_drained(server)  # the server's checkpoint thread must not move pages while we measure
            free_before = faults.free_bytes(disk)
            local = subprocess.run([AGENTMEMORY, "backup", "--local"], env={**clean_environ(), **env},
                                   capture_output=True, text=True, timeout=120)
            assert local.returncode == 1 and "not taking a snapshot" in local.stderr, local.stderr
            assert not list((disk / "backups").glob("*")) and faults.free_bytes(disk) >= free_before - 64 * 1024
            hf_env = sync_env(hf_hub, tmp_path, disk, AGENTMEMORY_DISK_RESERVE_MB="4")
            remote = subprocess.run([AGENTMEMORY, "backup"], env=hf_env, capture_output=True, text=True, timeout=120)
            assert remote.returncode == 1 and "not enough free space for a snapshot" in remote.stderr, remote.stderr
            assert hf_hub.commit_count(HUB_REPO) == 0 and not list(disk.glob(".agentmemory-backup-*"))
            # Below the reserve: refused before SQLite could run out of room mid-transaction.
            faults.fill(disk, leave_bytes=2 * faults.MB, name="filler3")
            refused = observe(server, "s", 101)
            assert refused.status_code == 507 and refused.json()["code"] == "disk_full"
            assert refused.json()["details"]["reserveBytes"] == 4 * faults.MB
            assert disk_section(server)[1]["status"] == "critical"
            big.unlink()
            assert observe(server, "s", 102).status_code == 201
            # A write has committed since: no longer critical, only short of the warning line. (One
            # request process, as in every LiveServer here: a process reports the writes it saw.)
            status, after = disk_section(server)
            assert status == 200 and after["status"] == "degraded" and "writes stop below 4.0 MB" in after["message"]
        finally:
            server.stop()


def test_a_filesystem_that_turns_read_only_refuses_writes_and_loses_nothing_acknowledged(tmp_path):
    with faults.ext4(tmp_path / "disk", 64) as disk:
        server = LiveServer(tmp_path, {"AGENTMEMORY_DATA_DIR": str(disk), "AGENTMEMORY_DURABILITY": "disk"}, [])
        try:
            acknowledged = [observe(server, "ro", i).json()["observationId"] for i in range(40)]
            faults.force_read_only(disk)
            refused = observe(server, "ro", 99)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "storage_read_only" and refused.headers["Retry-After"] == "60"
            assert stored_ids(server, {"ro"}) == set(acknowledged)  # reads go on
            health = requests.get(server.api("/health"))
            assert health.status_code == 503 and health.json()["database"]["disk"]["readOnly"] is True
        finally:
            server.stop()
        # The operator repairs the filesystem and starts the server again: everything acknowledged is there.
        faults.remount_after_repair(disk)
        server.start()
        try:
            assert stored_ids(server, {"ro"}) == set(acknowledged)
            assert observe(server, "ro", 100).status_code == 201
        finally:
            server.stop()


def test_the_viewer_warns_when_the_disk_runs_low(tmp_path, browser):
    # More than any disk has as the warning threshold makes today's free space "low".
    server = LiveServer(tmp_path, {"AGENTMEMORY_DISK_WARN_MB": str(1 << 30)}, [])
    try:
        page = browser.new_page()
        try:
            page.goto(server.url + "/viewer")
            banner = page.locator("#storage-banner")
            banner.wait_for(state="visible", timeout=15000)
            assert "disk" in banner.inner_text().lower() and "free" in banner.inner_text().lower()
        finally:
            page.close()
    finally:
        server.stop()


def test_the_vector_index_is_never_saved_into_the_reserve_nor_left_half_written(tmp_path):
    """The nearest-neighbour index beside the database is saved as a whole new copy: on a nearly
    full disk the save is refused before writing (the reserve stays free for SQLite), on a full
    disk a save that runs out of room leaves no partial file; both say disk_full, and the save
    goes through once space is back."""
    import numpy as np

    from agentmemory_server.errors import AppError
    from agentmemory_server.storage import open_database

    dim, model = 384, "fault-model"
    with faults.tmpfs(tmp_path / "disk", 24) as disk:
        db = open_database(disk / "agentmemory.db", now=lambda: "2026-12-05T00:00:00.000Z", lexical_engine="fts5",
                           background=False, reserve_bytes=4 * faults.MB)
        try:
            rng = np.random.default_rng(7)
            with db.transaction("seed") as tx:
                for i in range(2000):  # ~3 MB of vectors and graph once saved
                    doc = {"doc_id": f"d{i}", "scope": "t", "key": f"k{i}", "type": None,
                           "ts": "2026-12-01T00:00:00Z", "active": True, "global": False, "kind": "observation",
                           "project": "p", "agent_id": None, "session_id": "s"}
                    rowid = tx.index.upsert(doc, {"title": f"row {i}"})
                    vector = rng.standard_normal(dim).astype("<f4")
                    tx.vectors.put(rowid, model, (vector / np.linalg.norm(vector)).tobytes(), dim, "2026-12-01")
            index = db.vector_index(model, dim)
            while index.refresh(5000):
                pass
            assert len(index) == 2000
            files = disk / "agentmemory.db.vectors"
            # Less free than the reserve plus the copy: refused before anything is written.
            filler = faults.fill(disk, leave_bytes=5 * faults.MB)
            with pytest.raises(AppError) as refused:
                index.save()
            assert refused.value.code == "disk_full" and "the vector index" in refused.value.message
            assert not list(files.glob("*.faiss")) and faults.free_bytes(disk) >= 4 * faults.MB
            filler.unlink()
            # Without a reserve check (a disk filled behind our back): ENOSPC midway, nothing left behind.
            index._space = None
            filler = faults.fill(disk, leave_bytes=256 * 1024)
            with pytest.raises(AppError) as full:
                index.save()
            assert full.value.code == "disk_full"
            # (the state file and the empty lock file the build was made under are not the save's)
            assert not [p for p in files.glob("*") if not p.name.startswith(("state-", "build-"))]
            filler.unlink()
            assert index.save() and len(list(files.glob("*.faiss"))) == 1
        finally:
            db.close()
