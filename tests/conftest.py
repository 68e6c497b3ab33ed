"""Shared fixtures: a runtime on a real SQLite file, a Flask client, in-process tool calls and
real server processes on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

import registry  # noqa: E402
from app import create_app  # noqa: E402
from registry import Ctx  # noqa: E402
from runtime import Runtime  # noqa: E402
from settings import SETTINGS, Settings  # noqa: E402

# Register every tool in TOOL_MODULES order before any test module imports a domain module
# directly; otherwise registration order (and so the generated docs tables) would depend on
# which test file is collected first.
registry.load_tools()


def pytest_report_header(config: Any) -> str:
    import sqlite3

    return f"SQLite {sqlite3.sqlite_version}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, data_dir=str(tmp_path / "data"), background_jobs=False)


@pytest.fixture
def make_runtime(tmp_path: Path):
    """Build runtimes with setting overrides; all are closed at the end of the test."""
    made: list[Runtime] = []

    def make(clock: Any = None, **overrides: Any) -> Runtime:
        base = {"data_dir": str(tmp_path / "data"), "background_jobs": False}
        rt = Runtime(Settings.from_env({}, **{**base, **overrides}), clock=clock)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def rt(settings: Settings):
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def client(rt: Runtime):
    return create_app(runtime=rt).test_client()


class ToolCaller:
    """Call tools in-process exactly as the adapters do; ``raw`` keeps the Reply."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def __call__(self, name: str, **args: Any) -> Any:
        data, _status = registry.unwrap(registry.call(Ctx(self.rt, source="test"), name, args))
        return data

    def status(self, name: str, **args: Any) -> tuple[Any, int | None]:
        return registry.unwrap(registry.call(Ctx(self.rt, source="test"), name, args))


@pytest.fixture
def call(rt: Runtime) -> ToolCaller:
    return ToolCaller(rt)


def clean_environ() -> dict[str, str]:
    """os.environ without any of our settings, so a developer's shell cannot leak into tests."""
    ours = {var for s in SETTINGS for var in s.env}
    return {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("AGENTMEMORY_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_responds(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} within {timeout}s")


class LiveServer:
    """A real ``python src/app.py`` process on a free 127.0.0.1 port."""

    def __init__(self, tmp: Path, env: dict[str, str], args: list[str]):
        self.port = free_port()
        self.data_dir = tmp / f"server-{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(self.data_dir),
                    "PORT": str(self.port), "HOST": "127.0.0.1", "HOME": str(tmp), **env}
        self.args = args
        self.log_path = tmp / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def db_path(self) -> Path:
        return Path(self.env.get("AGENTMEMORY_DB") or self.data_dir / "agentmemory.db")

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(SRC / "app.py"), *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until_responds(self.url + "/agentmemory/livez", self.proc)

    def api(self, path: str) -> str:
        return f"{self.url}/agentmemory{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def live_server(tmp_path: Path):
    """Factory: ``live_server(env={...}, args=[...])``; every server is stopped afterwards."""
    servers: list[LiveServer] = []

    def start(env: dict[str, str] | None = None, args: list[str] | None = None) -> LiveServer:
        server = LiveServer(tmp_path, env or {}, args or [])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def post(url: str, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return requests.post(url, data=data, headers=headers, timeout=30, **kwargs)


def hook(session: str = "s1", hook_type: str = "post_tool_use", **overrides: Any) -> dict[str, Any]:
    """An upstream-shaped hook payload."""
    body = {"hookType": hook_type, "sessionId": session, "project": "demo", "cwd": "/work/demo",
            "timestamp": "2026-11-01T10:00:00.000Z",
            "data": {"tool_name": "Bash", "tool_input": {"command": "pytest -q"},
                     "tool_output": "12 passed in 0.4s"}}
    body.update(overrides)
    return body


@pytest.fixture
def make_hook() -> Callable[..., dict[str, Any]]:
    return hook
