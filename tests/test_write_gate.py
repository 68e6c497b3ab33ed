"""Writers in several processes queue on one file lock (storage/sqlite/write_gate.py): no update
is lost, a stuck holder gives a clear 503 after the timeout, and a killed holder frees the lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agentmemory_server import errors
from agentmemory_server.errors import AppError
from agentmemory_server.kernel.util import Clock
from agentmemory_server.storage.sqlite.database import Database
from agentmemory_server.storage.sqlite.write_gate import ProcessWriteGate

pytestmark = pytest.mark.sqlite_only

HOLD = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(120)
""")

INCREMENT = textwrap.dedent("""
    import sys
    from agentmemory_server.kernel.util import Clock
    from agentmemory_server.storage.sqlite.database import Database
    db = Database(sys.argv[1], now=Clock().iso, background=False)
    for _ in range(int(sys.argv[2])):
        with db.transaction("count") as tx:
            row = tx.records.get("mem:counter", "n") or {"n": 0}
            tx.records.set("mem:counter", "n", {"n": row["n"] + 1}, now="2026-12-05T00:00:00Z")
    db.close()
""")


def _holder(lock_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    proc.stdout.close()
    assert line == "held"
    return proc


def test_a_stuck_holder_gives_database_busy_and_a_killed_one_frees_the_lock(tmp_path):
    gate = ProcessWriteGate(tmp_path / "x.db", timeout=0.5)
    holder = _holder(gate.path)
    try:
        started = time.monotonic()
        with pytest.raises(AppError) as raised:
            gate.acquire()
        assert raised.value.code == errors.DATABASE_BUSY and raised.value.status == 503
        assert "write lock" in raised.value.message
        assert time.monotonic() - started >= 0.5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with gate:  # the kernel dropped the dead holder's lock
        pass
    gate.close()


def test_transactions_wait_for_another_process_and_go_on_when_it_releases(tmp_path):
    db = Database(tmp_path / "x.db", now=Clock().iso, background=False)
    holder = _holder(Path(f"{db.path}.writer-lock"))
    try:
        release_at = time.monotonic() + 0.4

        def release() -> None:
            time.sleep(max(0.0, release_at - time.monotonic()))
            holder.send_signal(signal.SIGKILL)

        threading.Thread(target=release, daemon=True).start()
        with db.transaction("after the other process") as tx:
            tx.records.set("mem:x", "k", {"v": 1}, now="2026-12-05T00:00:00Z")
        assert time.monotonic() >= release_at  # it waited for the other process's lock
        assert db.reader().records.get("mem:x", "k") == {"v": 1}
    finally:
        holder.kill()
        holder.wait(timeout=10)
        db.close()


def test_concurrent_processes_lose_no_update(tmp_path):
    path = tmp_path / "shared.db"
    Database(path, now=Clock().iso, background=False).close()  # migrated once, before the race
    runs = [subprocess.Popen([sys.executable, "-c", INCREMENT, str(path), "150"]) for _ in range(3)]
    for run in runs:
        assert run.wait(timeout=120) == 0
    db = Database(path, now=Clock().iso, background=False)
    try:
        assert db.reader().records.get("mem:counter", "n") == {"n": 450}
    finally:
        db.close()
