"""``agentmemory service``: the systemd user unit and the launchd agent it writes, in a temporary
HOME. The real service managers are never called: the command runs with ``--no-start``, and the
calls ``install`` would make are checked through its runner parameter."""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from pathlib import Path

from agentmemory_server.adapters import service
from conftest import clean_environ

CLI = [sys.executable, "-m", "agentmemory_server.adapters.entry", "service"]


def run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**clean_environ(), "HOME": str(home), **env}
    environ.pop("AGENTMEMORY_AUTH")
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=environ)


def test_install_writes_a_systemd_user_unit_with_the_users_settings(tmp_path: Path) -> None:
    done = run(tmp_path, "install", "--no-start", "--platform", "systemd", PORT="4123",
               AGENTMEMORY_DATA_DIR="/srv/memory", AGENTMEMORY_SECRET="s3cret-token", GEMINI_API_KEY="key-1")
    assert done.returncode == 0, done.stderr
    unit = tmp_path / ".config" / "systemd" / "user" / "agentmemory.service"
    text = unit.read_text()
    executable = Path(sys.executable).parent / "agentmemory"
    assert f"ExecStart={executable} serve" in text
    assert 'Environment="III_REST_PORT=4123"' in text or 'Environment="PORT=4123"' in text
    assert 'Environment="AGENTMEMORY_DATA_DIR=/srv/memory"' in text
    assert "s3cret-token" not in text and "key-1" not in text  # secrets are not in the 0644 unit
    env_file = tmp_path / ".config" / "agentmemory" / "service.env"
    assert f"EnvironmentFile={env_file}" in text
    assert os.stat(env_file).st_mode & 0o777 == 0o600
    assert 'AGENTMEMORY_SECRET="s3cret-token"' in env_file.read_text()
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text

    again = run(tmp_path, "install", "--no-start", "--platform", "systemd", PORT="4123",
                AGENTMEMORY_DATA_DIR="/srv/memory", AGENTMEMORY_SECRET="s3cret-token", GEMINI_API_KEY="key-1")
    assert '"written": []' in again.stdout  # idempotent
    status = run(tmp_path, "status", "--no-start", "--platform", "systemd")
    assert '"installed": true' in status.stdout
    gone = run(tmp_path, "uninstall", "--no-start", "--platform", "systemd")
    assert gone.returncode == 0 and not unit.exists() and not env_file.exists()


def test_install_starts_through_systemctl_and_says_so_when_it_cannot(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    started = service.install(tmp_path, "/opt/bin/agentmemory", {}, "systemd", runner)
    assert started["started"] is True
    assert calls == [["systemctl", "--user", "daemon-reload"],
                     ["systemctl", "--user", "enable", "--now", "agentmemory.service"]]
    missing = service.install(tmp_path, "/opt/bin/agentmemory", {}, "systemd", lambda argv: 127)
    assert missing["started"] is False and "is not installed" in missing["note"]
    assert "agentmemory serve" in missing["note"]


def test_install_writes_a_launchd_agent_on_macos(tmp_path: Path) -> None:
    done = run(tmp_path, "install", "--no-start", "--platform", "launchd", AGENTMEMORY_SECRET="tok-9")
    assert done.returncode == 0, done.stderr
    plist_path = tmp_path / "Library" / "LaunchAgents" / "dev.agentmemory.server.plist"
    plist = plistlib.loads(plist_path.read_bytes())
    assert plist["ProgramArguments"] == [str(Path(sys.executable).parent / "agentmemory"), "serve"]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert plist["EnvironmentVariables"]["AGENTMEMORY_SECRET"] == "tok-9"
    assert os.stat(plist_path).st_mode & 0o777 == 0o600  # it holds the token
    assert run(tmp_path, "uninstall", "--no-start", "--platform", "launchd").returncode == 0
    assert not plist_path.exists()
