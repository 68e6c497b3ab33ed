"""The runtime: everything a handler may need, built once per server process.

``Runtime(settings, hooks=..., subsystems=...)`` opens the database, builds the live-event hub
and starts the subsystems ``wiring.py`` lists (vector index, embedder, working-memory backend,
...). A subsystem may expose:

- ``health() -> dict``: merged into GET /health under the subsystem's name; a ``status`` of
  ``degraded`` or ``critical`` there changes the overall status;
- ``diagnose() -> list[dict]``: checks ``{name, category, status: pass|warn|fail, message,
  fix, fixable}`` collected by the diagnose tool;
- ``heal(dry_run: bool) -> list[dict]``: fixes for its fixable checks;
- ``close()``: called on shutdown, in reverse order;

and register periodic jobs with ``rt.every(seconds, name, fn)``. No module-level state holds data: tests build as many
runtimes as they like, each on its own file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agentmemory_server import __version__
from agentmemory_server.kernel import auth
from agentmemory_server.kernel.events import Hub
from agentmemory_server.kernel.hooks import Hooks
from agentmemory_server.kernel.scopes import RECORD_INDEXES
from agentmemory_server.kernel.search_fields import TEXT_WEIGHTS
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.kernel.util import Clock
from agentmemory_server.storage import open_database

VERSION = __version__
log = logging.getLogger("agentmemory")

# A subsystem is built from the runtime it belongs to (usually its class).
SubsystemFactory = Callable[["Runtime"], Any]


class Jobs:
    """Periodic background jobs on one daemon thread; a failing job is logged, never fatal."""

    def __init__(self) -> None:
        self._jobs: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, seconds: float, name: str, fn: Callable[[], Any]) -> None:
        self._jobs.append(
            {
                "name": name,
                "every": seconds,
                "fn": fn,
                "next": time.monotonic() + seconds,
                "runs": 0,
                "errors": 0,
                "lastError": None,
            }
        )

    def start(self) -> None:
        if self._thread is None and self._jobs:
            self._thread = threading.Thread(target=self._loop, name="agentmemory-jobs", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            for job in self._jobs:
                if time.monotonic() >= job["next"]:
                    self.run(job)

    def run(self, job: dict[str, Any]) -> None:
        try:
            job["fn"]()
            job["runs"] += 1
        except Exception as exc:  # noqa: BLE001 - a job must not kill the scheduler
            job["errors"] += 1
            job["lastError"] = str(exc)[:300]
            log.exception("background job %s failed", job["name"])
        job["next"] = time.monotonic() + job["every"]

    def run_now(self, name: str) -> None:
        for job in self._jobs:
            if job["name"] == name:
                self.run(job)

    def status(self) -> list[dict[str, Any]]:
        return [{k: j[k] for k in ("name", "every", "runs", "errors", "lastError")} for j in self._jobs]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Runtime:
    """Everything a handler may need, built once per server process (see ``wiring.build_runtime``).

    :param settings: the configuration.
    :param hooks: the extension points and their order (``wiring.HOOKS``).
    :param subsystems: ``(name, factory)`` pairs built in order after the database opens.
    :param clock: injectable time source.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        hooks: Hooks | None = None,
        subsystems: Iterable[tuple[str, SubsystemFactory]] = (),
        clock: Clock | None = None,
    ):
        self.settings = auth.resolve(settings)  # the token every transport enforces (None: auth off)
        self.hooks = hooks or Hooks()
        self.clock = clock or Clock()
        self.version = VERSION
        self.started_at = time.time()
        self.db = open_database(
            settings.database_path,
            now=self.clock.iso,
            record_indexes=RECORD_INDEXES,
            lexical_engine=settings.lexical_engine,
            lexical_weights=TEXT_WEIGHTS,
            background=settings.background_jobs,
        )
        self.hub = Hub(
            queue_size=settings.viewer_queue_size, max_clients=settings.max_viewers, replay_size=settings.viewer_replay
        )
        self.jobs = Jobs()
        self.denials = auth.Denials()
        self.services: dict[str, Any] = {}
        for name, factory in subsystems:
            if name in self.services:
                raise ValueError(f"duplicate subsystem {name!r}")
            self.services[name] = factory(self)
        if settings.background_jobs:
            self.jobs.start()

    def every(self, seconds: float, name: str, fn: Callable[[], Any]) -> None:
        self.jobs.every(seconds, name, fn)

    def publish(self, event_type: str, record: Any) -> None:
        self.hub.publish(event_type, record)

    def deny(self, reason: str, path: str, remote: str | None) -> None:
        """Count a refused request (bad or missing token); see ``auth.Denials``."""
        summary = self.denials.record(reason, path, remote, self.clock.iso())
        if summary is not None:
            with self.db.transaction("auth_denied") as tx:
                tx.record_change(
                    "auth",
                    f"refused {summary['count']} request(s) without a valid token "
                    f"(latest: {summary['reason']} {summary['path']})",
                )
                tx.audit_details = summary

    def health_sections(self) -> dict[str, Any]:
        sections: dict[str, Any] = {"auth": self.denials.health(), "storage": self.db.health()}
        for name, service in self.services.items():
            health = getattr(service, "health", None)
            if callable(health):
                try:
                    sections[name] = health()
                except Exception as exc:  # noqa: BLE001 - health must always answer
                    sections[name] = {"status": "error", "error": str(exc)[:300]}
        return sections

    def close(self) -> None:
        self.jobs.stop()
        for service in reversed(list(self.services.values())):
            close = getattr(service, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - keep closing the rest
                    log.exception("closing a subsystem failed")
        self.db.close()
