"""start.sh end to end, outside Docker: a fake Hub, the real server process on a free port, signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from conftest import (HUB_REPO, ROOT, end_process_group, free_port, group_members, hook, post, run_sync, seed_store,
                      sigint_disposition, sqlite_table_counts, sync_env, wait_until_responds, with_sigint)


class Boot:
    """``./start.sh`` in its own process group, its output in a log file. ``sigint`` is how it
    treats SIGINT (see conftest.with_sigint); by default ignored, as under a container runtime or
    a background job, so only SIGTERM can stop it."""

    def __init__(self, env: dict[str, str], tmp: Path, sigint: str = "SIG_IGN"):
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"start-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(with_sigint(sigint, [str(ROOT / "start.sh")]), env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_up(self, limit: float = 60.0) -> None:
        wait_until_responds(self.url + "/agentmemory/livez", self.proc, timeout=limit,
                            message=lambda: f"the server did not come up under start.sh:\n{self.log()}")

    def pid_of(self, what: str) -> int:
        """The pid start.sh logged for "server" or "backup loop"."""
        return int(re.search(rf"{what} started \(pid (\d+)\)", self.log()).group(1))

    def server_pid(self) -> int:
        return self.pid_of("server")

    def wait(self, limit: float = 90.0) -> int:
        return self.proc.wait(timeout=limit)

    def cleanup(self) -> None:
        """Kill start.sh and whatever it started (children left behind if start.sh died first)."""
        end_process_group(self.proc, signal.SIGKILL)


def boot_env(hf_hub, tmp: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    return sync_env(hf_hub, tmp, data_dir, PORT=str(free_port()), HOST="127.0.0.1", PYTHON=sys.executable,
                    AGENTMEMORY_PERSISTENT_DIR=str(tmp / "no-such-dir"), AGENTMEMORY_BACKUP_INTERVAL="3600",
                    **extra)


def test_boot_restores_serves_and_backs_up_on_sigterm(hf_hub, tmp_path):
    """A container runtime's stop: SIGTERM to start.sh alone, SIGINT ignored throughout."""
    seed_store(tmp_path / "previous-life")  # what the last container backed up
    assert run_sync(sync_env(hf_hub, tmp_path, tmp_path / "previous-life"), "backup").returncode == 0
    boot = Boot(boot_env(hf_hub, tmp_path, tmp_path / "data"), tmp_path, sigint="SIG_IGN")
    try:
        boot.wait_until_up()
        assert sigint_disposition(boot.proc.pid) == "ignored"  # SIGTERM is all there is
        children = [boot.pid_of("server"), boot.pid_of("backup loop")]
        assert "restored backup" in boot.log()
        sessions = requests.get(boot.url + "/agentmemory/sessions").json()
        assert sessions["total"] == 3  # the restored data is served
        assert post(boot.url + "/agentmemory/observe", hook("after-boot")).status_code == 201
        r = post(boot.url + "/agentmemory/remember", {"content": "written over REST right before SIGTERM"})
        assert r.status_code == 201
        commits = hf_hub.commit_count(HUB_REPO)
        boot.proc.send_signal(signal.SIGTERM)  # to start.sh only: it must forward
        assert boot.wait() == 0, boot.log()
        assert group_members(boot.proc.pid) == []  # the server and the loop are gone too
        for pid in children:
            assert not Path(f"/proc/{pid}").exists(), f"pid {pid} outlived start.sh"
    finally:
        boot.cleanup()
    # The loop's final upload, and the last backup if the server's shutdown changed the file.
    assert hf_hub.commit_count(HUB_REPO) in (commits + 1, commits + 2)
    remote = tmp_path / "remote.db"
    remote.write_bytes(hf_hub.files(HUB_REPO)["agentmemory.db"])
    assert sqlite_table_counts(remote)["kv_store"] == 17 + 2 + 1  # + session, observation, memory
    log = boot.log()
    assert "server stopped (code 0)" in log and "backup loop stopped (code 0)" in log
    assert "SIGINT is ignored (inherited" in log and "SIGTERM received" in log
    assert log.index("backup loop stopped") < log.index("last backup done")


def test_server_death_makes_start_sh_exit_non_zero_after_a_last_backup(hf_hub, tmp_path):
    boot = Boot(boot_env(hf_hub, tmp_path, tmp_path / "data"), tmp_path)
    try:
        boot.wait_until_up()
        assert "nothing to restore (first boot is fine)" in boot.log()
        assert post(boot.url + "/agentmemory/observe", hook("doomed")).status_code == 201
        os.kill(boot.server_pid(), signal.SIGKILL)
        assert boot.wait() != 0
    finally:
        boot.cleanup()
    assert "server exited on its own" in boot.log()
    remote = tmp_path / "remote.db"
    remote.write_bytes(hf_hub.files(HUB_REPO)["agentmemory.db"])
    assert sqlite_table_counts(remote)["kv_store"] == 2  # what was acknowledged before the crash


def test_hub_down_at_first_boot_does_not_start_an_empty_server(hf_hub, tmp_path):
    hf_hub.stop()
    boot = Boot(boot_env(hf_hub, tmp_path, tmp_path / "data"), tmp_path)
    try:
        assert boot.wait() == 1
    finally:
        boot.cleanup()
    assert "restore failed: not starting the server" in boot.log()
    assert "server started" not in boot.log()
