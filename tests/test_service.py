"""``agentmemory service``: the systemd user unit and the launchd agent it writes, in a temporary
HOME. The real service managers are never called: the command runs with ``--no-start``, and the
calls ``install`` would make are checked through its runner parameter."""

from __future__ import annotations

import os
import plistlib
import shlex
import subprocess
import sys
from pathlib import Path

import requests

from agentmemory_server.adapters import service
from conftest import clean_environ, end_process_group, free_port, wait_until_responds

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


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def unit_text(raw: str) -> str:
    """A unit file value with its specifiers resolved: this test writes none, so every ``%``
    must be a doubled, literal one (systemd would turn ``%h`` into the home directory)."""
    assert "%" not in raw.replace("%%", ""), f"unescaped specifier in {raw!r}"
    return raw.replace("%%", "%")


def environment_assignment(raw: str) -> tuple[str, str]:
    """``"K=V"`` / ``K="V"`` as systemd reads them (double quotes, backslash escapes)."""
    (word,) = shlex.split(raw, posix=True)
    key, _, value = word.partition("=")
    return key, value


def test_the_unit_passes_systemd_analyze_and_what_it_runs_serves_with_its_settings(tmp_path: Path) -> None:
    """systemd's own checker accepts the unit; then its ExecStart runs with exactly the unit's
    Environment= and EnvironmentFile= (as systemd would start it) and serves, with auth on."""
    port, data = free_port(), tmp_path / "data %h 100%"
    done = run(tmp_path, "install", "--no-start", "--platform", "systemd", PORT=str(port), HOST="127.0.0.1",
               AGENTMEMORY_DATA_DIR=str(data), AGENTMEMORY_SECRET='tok "quoted" $x', EMBEDDING_PROVIDER="none")
    assert done.returncode == 0, done.stderr
    unit = tmp_path / ".config" / "systemd" / "user" / "agentmemory.service"
    checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "agentmemory.service" not in checked.stderr, checked.stderr

    text = unit.read_text()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # a user manager's environment
    env.update(environment_assignment(unit_text(raw)) for raw in unit_values(text, "Environment"))
    for env_file in unit_values(text, "EnvironmentFile"):  # no specifiers inside the file itself
        env.update(environment_assignment(line) for line in Path(unit_text(env_file)).read_text().splitlines() if line)
    assert env["AGENTMEMORY_SECRET"] == 'tok "quoted" $x' and env["AGENTMEMORY_DATA_DIR"] == str(data)
    (exec_start,) = map(unit_text, unit_values(text, "ExecStart"))
    log = tmp_path / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(shlex.split(exec_start), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/agentmemory"
        wait_until_responds(f"{url}/livez", proc, timeout=60, message=lambda: log.read_text(errors="replace"))
        assert requests.get(f"{url}/health", timeout=10).status_code == 401
        health = requests.get(f"{url}/health", headers={"Authorization": f'Bearer tok "quoted" $x'}, timeout=10)
        assert health.status_code == 200, health.text
        assert (data / "agentmemory.db").exists() or any(data.glob("*.db"))
    finally:
        end_process_group(proc)
