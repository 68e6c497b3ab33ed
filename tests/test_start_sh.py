"""start.sh end to end, outside Docker: a fake Hub, the real server process on a free port, signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import HUB_REPO, ROOT, free_port, hook, post, run_sync, seed_store, sqlite_table_counts, sync_env


class Boot:
    """``./start.sh`` in its own process group, its output in a log file."""

    def __init__(self, env: dict[str, str], tmp: Path):
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"start-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(ROOT / "start.sh")], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_up(self, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"start.sh exited early:\n{self.log()}"
            try:
                requests.get(self.url + "/agentmemory/livez", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError(f"server did not come up:\n{self.log()}")

    def server_pid(self) -> int:
        return int(re.search(r"server started \(pid (\d+)\)", self.log()).group(1))

    def wait(self, limit: float = 90.0) -> int:
        return self.proc.wait(timeout=limit)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        else:
            try:  # children left behind if start.sh died first
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def boot_env(hf_hub, tmp: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    return sync_env(hf_hub, tmp, data_dir, PORT=str(free_port()), HOST="127.0.0.1", PYTHON=sys.executable,
                    AGENTMEMORY_PERSISTENT_DIR=str(tmp / "no-such-dir"), AGENTMEMORY_BACKUP_INTERVAL="3600",
                    **extra)


def test_boot_restores_serves_and_backs_up_on_sigterm(hf_hub, tmp_path):
    seed_store(tmp_path / "previous-life")  # what the last container backed up
    assert run_sync(sync_env(hf_hub, tmp_path, tmp_path / "previous-life"), "backup").returncode == 0
    boot = Boot(boot_env(hf_hub, tmp_path, tmp_path / "data"), tmp_path)
    try:
        boot.wait_until_up()
        assert "restored backup" in boot.log()
        sessions = requests.get(boot.url + "/agentmemory/sessions").json()
        assert sessions["total"] == 3  # the restored data is served
        assert post(boot.url + "/agentmemory/observe", hook("after-boot")).status_code == 201
        r = post(boot.url + "/agentmemory/remember", {"content": "written over REST right before SIGTERM"})
        assert r.status_code == 201
        commits = hf_hub.commit_count(HUB_REPO)
        boot.proc.send_signal(signal.SIGTERM)  # to start.sh only: it must forward
        assert boot.wait() == 0, boot.log()
    finally:
        boot.cleanup()
    # The loop's final upload, and the last backup if the server's shutdown changed the file.
    assert hf_hub.commit_count(HUB_REPO) in (commits + 1, commits + 2)
    remote = tmp_path / "remote.db"
    remote.write_bytes(hf_hub.files(HUB_REPO)["agentmemory.db"])
    assert sqlite_table_counts(remote)["kv_store"] == 17 + 2 + 1  # + session, observation, memory
    log = boot.log()
    assert "server stopped (code 0)" in log and "backup loop stopped (code 0)" in log
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
