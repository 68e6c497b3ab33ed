"""``agentmemory service install|uninstall|status``: run the server in the background at login.

On Linux a systemd user unit (``~/.config/systemd/user/agentmemory.service``), on macOS a launchd
agent (``~/Library/LaunchAgents/dev.agentmemory.server.plist``), both running the installed
``agentmemory serve`` with the settings of the environment ``install`` runs in. Secret settings
(the token, API keys) never go into the unit: they are written to a 0600 environment file the
unit reads (launchd: the plist itself is 0600). ``install`` starts the service with
``systemctl --user`` / ``launchctl`` unless ``--no-start``; the calls go through ``Runner`` so tests
(and machines without a user service manager) skip them.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentmemory_server.adapters.connect.core import read_text, write_private
from agentmemory_server.kernel.settings import SETTINGS

UNIT_NAME = "agentmemory.service"
LAUNCHD_LABEL = "dev.agentmemory.server"
Runner = Callable[[list[str]], int]


def run_command(argv: list[str]) -> int:
    """Run a service-manager command; 127 when it is not installed."""
    if shutil.which(argv[0]) is None:
        return 127
    return subprocess.run(argv, check=False, capture_output=True).returncode


@dataclass(frozen=True)
class Paths:
    unit: Path
    env_file: Path
    plist: Path

    @classmethod
    def under(cls, home: Path) -> Paths:
        return cls(
            unit=home / ".config" / "systemd" / "user" / UNIT_NAME,
            env_file=home / ".config" / "agentmemory" / "service.env",
            plist=home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist",
        )


def settings_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) variables of the settings that are set in ``environ``."""
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for setting in SETTINGS:
        for var in setting.env:
            if environ.get(var):
                (secret if setting.secret else plain)[var] = environ[var]
    return plain, secret


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unit_word(value: str) -> str:
    """A value quoted for a unit file line: systemd resolves ``%`` specifiers even inside
    quotes, so a literal ``%`` is doubled."""
    return _quote(value).replace("%", "%%")


def systemd_unit(serve: str, plain: Mapping[str, str], env_file: Path | None) -> str:
    lines = [
        "# written by agentmemory service install; agentmemory service uninstall removes it",
        "[Unit]",
        "Description=agentmemory: memory server for coding agents",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_unit_word(serve) if ' ' in serve else serve.replace('%', '%%')} serve",
        *(f"Environment={_unit_word(f'{k}={v}')}" for k, v in sorted(plain.items())),
        *([f"EnvironmentFile={str(env_file).replace('%', '%%')}"] if env_file else []),
        "Restart=on-failure",
        "RestartSec=2",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist(serve: str, environment: Mapping[str, str], log: Path) -> bytes:
    body: dict[str, Any] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [serve, "serve"],
        "EnvironmentVariables": dict(environment),
        "RunAtLoad": True,
        "KeepAlive": True,
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    return plistlib.dumps(body)


def install(home: Path, serve: str, environ: Mapping[str, str], platform: str, runner: Runner | None) -> dict[str, Any]:
    """Write the unit (or plist); start it when ``runner`` is given. Idempotent."""
    paths = Paths.under(home)
    plain, secret = settings_environment(environ)
    written = []
    if platform == "launchd":
        log = Path(environ.get("AGENTMEMORY_DATA_DIR") or home / ".agentmemory").expanduser() / "server.log"
        content = launchd_plist(serve, {**plain, **secret}, log)
        if not paths.plist.exists() or paths.plist.read_bytes() != content:
            paths.plist.parent.mkdir(parents=True, exist_ok=True)
            write_private(paths.plist, content.decode("utf-8"))
            written.append(str(paths.plist))
        commands = [["launchctl", "load", "-w", str(paths.plist)]]
    else:
        env_file = paths.env_file if secret else None
        if env_file:
            text = "".join(f"{k}={_quote(v)}\n" for k, v in sorted(secret.items()))
            if read_text(env_file) != text:
                env_file.parent.mkdir(parents=True, exist_ok=True)
                write_private(env_file, text)
                written.append(str(env_file))
        unit = systemd_unit(serve, plain, env_file)
        if read_text(paths.unit) != unit:
            paths.unit.parent.mkdir(parents=True, exist_ok=True)
            paths.unit.write_text(unit, encoding="utf-8")
            written.append(str(paths.unit))
        commands = [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]]
    return {"platform": platform, "written": written, **_run(commands, runner)}


def uninstall(home: Path, platform: str, runner: Runner | None) -> dict[str, Any]:
    paths = Paths.under(home)
    if platform == "launchd":
        commands = [["launchctl", "unload", "-w", str(paths.plist)]]
        files = [paths.plist]
    else:
        commands = [["systemctl", "--user", "disable", "--now", UNIT_NAME], ["systemctl", "--user", "daemon-reload"]]
        files = [paths.unit, paths.env_file]
    started = _run(commands[:1], runner)  # stop before the files go
    removed = [str(f) for f in files if f.exists()]
    for f in files:
        f.unlink(missing_ok=True)
    if runner is not None and platform != "launchd":
        runner(commands[1])
    return {"platform": platform, "removed": removed, **started}


def _run(commands: list[list[str]], runner: Runner | None) -> dict[str, Any]:
    if runner is None:
        return {"started": False, "note": "not started (--no-start)"}
    for argv in commands:
        code = runner(argv)
        if code != 0:
            manager = argv[0]
            reason = "is not installed" if code == 127 else f"exited with {code}"
            return {
                "started": False,
                "note": f"{manager} {reason}: start the server with `{' '.join(argv)}` once it works, "
                "or run `agentmemory serve`",
            }
    return {"started": True, "commands": [" ".join(c) for c in commands]}


def status(home: Path, platform: str, runner: Runner | None) -> dict[str, Any]:
    paths = Paths.under(home)
    installed = (paths.plist if platform == "launchd" else paths.unit).exists()
    active = None
    if runner is not None and installed and platform != "launchd":
        active = runner(["systemctl", "--user", "is-active", "--quiet", UNIT_NAME]) == 0
    return {
        "platform": platform,
        "installed": installed,
        "active": active,
        "file": str(paths.plist if platform == "launchd" else paths.unit),
    }


def default_platform() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def serve_command() -> str:
    from agentmemory_server.adapters.connect import command_path

    return command_path("agentmemory")


def environ() -> Mapping[str, str]:
    return os.environ
