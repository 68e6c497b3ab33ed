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

from agentmemory_server.kernel import registry
from agentmemory_server.adapters.web import create_app
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.settings import SETTINGS, Settings
# Importing the wiring registers every tool in FEATURE_MODULES order before any test module
# imports a feature module directly; otherwise registration order (and so the generated docs
# tables) would depend on which test file is collected first.
from agentmemory_server.wiring import build_runtime


def pytest_report_header(config: Any) -> str:
    import sqlite3

    return f"SQLite {sqlite3.sqlite_version}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Tests that need vectors ask for a provider (hash or local) explicitly; the rest stay BM25.
    return Settings.from_env({}, data_dir=str(tmp_path / "data"), background_jobs=False,
                             embedding_provider="none")


@pytest.fixture
def make_runtime(tmp_path: Path):
    """Build runtimes with setting overrides; all are closed at the end of the test."""
    made: list[Runtime] = []

    def make(clock: Any = None, **overrides: Any) -> Runtime:
        base = {"data_dir": str(tmp_path / "data"), "background_jobs": False, "embedding_provider": "none"}
        rt = build_runtime(Settings.from_env({}, **{**base, **overrides}), clock=clock)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture
def rt(settings: Settings):
    runtime = build_runtime(settings)
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
                    "PORT": str(self.port), "HOST": "127.0.0.1", "HOME": str(tmp),
                    "EMBEDDING_PROVIDER": "none", **env}
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


# -- a real redis-server (working-memory tests) ------------------------------------------------------

REDIS_MISSING = "redis-server is not installed (tests/run.sh installs the Debian package when run as root)"


class RedisServer:
    """``redis-server`` on a free 127.0.0.1 port, no persistence, its own temp dir."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        import redis

        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not answer PING within 20 s") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _redis_server(workdir: Path):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip(REDIS_MISSING)
    server = RedisServer(workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session; tests keep apart by key prefix."""
    yield from _redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server this test alone may stop, restart or reconfigure."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    yield from _redis_server(workdir)
# -- HuggingFace backup (sync.py) helpers: a loopback fake Hub and subprocess runners ----------------

HUB_REPO = "tester/agentmemory-backup"


@pytest.fixture
def hf_hub():
    """A fake HuggingFace Hub on a free 127.0.0.1 port (see tests/fake_hub.py)."""
    from fake_hub import FakeHub

    fake = FakeHub().start()
    yield fake
    fake.stop()


def sync_env(hub: Any, tmp: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for sync.py / start.sh / cli.py subprocesses: our settings cleared, the Hub
    pointed at the fake (no Xet, no telemetry, its own cache), fast failure (no retry waits)."""
    env = {k: v for k, v in clean_environ().items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", HOME=str(tmp), AGENTMEMORY_DATASET_REPO=HUB_REPO,
               AGENTMEMORY_DATA_DIR=str(data_dir), AGENTMEMORY_HUB_RETRIES="0", AGENTMEMORY_HUB_TIMEOUT="10",
               AGENTMEMORY_RESTORE_ATTEMPTS="1", AGENTMEMORY_RESTORE_RETRY_DELAY="0")
    env.update(extra)
    return env


def run_sync(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python sync.py ARGS`` (the timeout only guards against a hang)."""
    return subprocess.run([sys.executable, str(ROOT / "sync.py"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def seed_store(data_dir: Path, sessions: int = 3, per_session: int = 4, memories: int = 2) -> dict[str, int]:
    """Fill a database through the tools (as the server would); returns what was written."""
    rt = build_runtime(Settings.from_env({}, data_dir=str(data_dir), background_jobs=False))
    try:
        ctx = Ctx(rt, source="test")
        for s in range(sessions):
            for i in range(per_session):
                registry.call(ctx, "agent_observe", hook(
                    f"seed{s}", timestamp=f"2026-01-0{s + 1}T00:00:{i:02d}Z",
                    data={"tool_name": "Bash", "tool_input": {"command": f"make target{s}x{i}"},
                          "tool_output": f"compiled module alpha{s} step {i}"}))
        for m in range(memories):
            # Distinct words, so no memory becomes a new version of another (Jaccard supersede).
            words = " ".join(f"topic{m}x{k}" for k in range(8))
            registry.call(ctx, "memory_save", {"content": f"Remember zebra{m} deployments {words}"})
    finally:
        rt.close()
    return {"sessions": sessions, "observations": sessions * per_session, "memories": memories}


def sqlite_table_counts(path: Path) -> dict[str, int]:
    """Rows per table of a database file, and that PRAGMA integrity_check says ok."""
    import sqlite3

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


# -- the LLM layer: a loopback fake Gemini (tests/fake_gemini.py) -------------------------------------

# Distinctive and in no known token format, so a test can search logs and replies for it.
GEMINI_TEST_KEY = "gk-test-8f3a9c2e71d04b5a"


@pytest.fixture
def fake_gemini():
    """A fake Gemini API (embeddings and generateContent) on a free 127.0.0.1 port."""
    from fake_gemini import FakeGemini

    fake = FakeGemini(api_key=GEMINI_TEST_KEY)
    yield fake
    fake.close()


class ManualClock:
    """A clock that only moves when a test says so (breaker cooldowns, job delays)."""

    def __init__(self, start: float = 1_800_000_000.0):
        from agentmemory_server.kernel.util import Clock

        self.now = start
        self.clock = Clock(lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def llm_runtime(make_runtime, fake_gemini):
    """Build runtimes wired to the fake Gemini (no retry sleeps); overrides are settings."""

    def make(clock: Any = None, **overrides: Any) -> Runtime:
        base = {"gemini_api_key": GEMINI_TEST_KEY, "gemini_api_base": fake_gemini.url,
                "gemini_retry_backoff_seconds": 0.0}
        return make_runtime(clock=clock, **{**base, **overrides})

    return make
