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

and register periodic jobs with ``rt.every(seconds, name, fn)`` (run by periodic.py's ``Jobs``).
No module-level state holds data: tests build as many runtimes as they like, each on its own
file.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from agentmemory_server import __version__
from agentmemory_server.errors import AppError, Unavailable
from agentmemory_server.kernel import auth, background
from agentmemory_server.kernel.bus import EventBus
from agentmemory_server.kernel.events import Hub
from agentmemory_server.kernel.hooks import Hooks
from agentmemory_server.kernel.limits_shared import build_limiter
from agentmemory_server.kernel.periodic import Jobs, claim_lease
from agentmemory_server.kernel.principals import TokenCache
from agentmemory_server.kernel.scopes import RECORD_INDEXES
from agentmemory_server.kernel.search_fields import TEXT_WEIGHTS
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.kernel.util import Clock
from agentmemory_server.storage import open_database
from agentmemory_server.storage.interfaces import Database

VERSION = __version__
MB = 1024 * 1024
log = logging.getLogger("agentmemory")

# A subsystem is built from the runtime it belongs to (usually its class).
SubsystemFactory = Callable[["Runtime"], Any]


def _worker_id(started_at: float) -> str:
    """host:pid:start second:random suffix. The suffix tells apart two runtimes of one process
    started in the same second (tests, an admin command beside its server), which would otherwise
    share their claims of periodic runs, and two containers that have the same host name and pid.
    Shown, never parsed: host and pid have columns of their own."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(started_at)}:{secrets.token_hex(3)}"


def _open_store(settings: Settings, clock: Clock, role: str) -> Database:
    """The runtime's database, tuned to what the process's role does with it."""
    return open_database(
        settings.database_path,
        now=clock.iso,
        record_indexes=RECORD_INDEXES,
        reserve_bytes=settings.disk_reserve_mb * MB,
        warn_bytes=settings.disk_warn_mb * MB,
        check_seconds=settings.startup_check_seconds,
        fsync_every_commit=settings.durability == "disk",
        # Long-running processes leave WAL checkpoints to a thread of their own. A worker
        # that let its commits checkpoint held the write lock 10-30 ms per batch under
        # load: the WAL is past SQLite's 1,000-page threshold most of the time then.
        checkpoint_seconds=settings.wal_checkpoint_seconds
        if settings.background_jobs and role in ("server", "worker")
        else 0.0,
        queue_limits={"embed_backlog": settings.embed_backlog_max, "llm_jobs": settings.llm_jobs_max},
        lexical_engine=settings.lexical_engine,
        lexical_weights=TEXT_WEIGHTS,
        # Derived indexes are kept up to date by request processes: a worker at the lowest
        # priority holding Tantivy's writer lock would leave searches a growing pending tail.
        background=settings.background_jobs and role == "server",
        url=settings.database_url,
        pool_size=settings.database_pool,
        node=settings.node_id,
        # A request answers before its client gives up (hooks wait 10-15 s; their events go
        # to the capture spool); the worker and admin commands can afford to wait longer.
        lock_wait=settings.lock_wait_seconds if role == "server" else None,
    )


class Runtime:
    """Everything a handler may need, built once per server process (see ``wiring.build_runtime``).

    :param settings: the configuration.
    :param hooks: the extension points and their order (``wiring.HOOKS``).
    :param subsystems: ``(name, factory)`` pairs built in order after the database opens.
    :param clock: injectable time source.
    :param role: ``server`` (serves requests), ``worker`` (``agentmemory worker``: runs the
        background loops) or ``tool`` (an admin command: no loops). See ``kernel/background.py``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        hooks: Hooks | None = None,
        subsystems: Iterable[tuple[str, SubsystemFactory]] = (),
        clock: Clock | None = None,
        role: str = "server",
    ):
        if role not in background.ROLES:
            raise ValueError(f"unknown runtime role {role!r}")
        self.settings = auth.resolve(settings)  # the token every transport enforces (None: auth off)
        self.hooks = hooks or Hooks()
        self.clock = clock or Clock()
        self.version = VERSION
        self.role = role
        self.runs_background = background.runs_loops(settings.background, settings.background_jobs, role)
        self.started_at = time.time()
        self.worker_id = _worker_id(self.started_at)
        self.db = _open_store(settings, self.clock, role)
        self._init_events(settings, role)
        self.jobs = self._periodic_jobs()
        self.supervisor: Any = None  # the background worker's supervisor, when this server started one
        self.denials = auth.Denials()
        self.tokens = TokenCache()
        # A revocation made by any process empties every process's cache as soon as its event
        # arrives (the bus tails the database), rather than when the cached entry expires.
        self.hub.listen("token", lambda _record: self.tokens.forget())
        self.limiter = build_limiter(settings)
        self._subsystems = tuple(subsystems)  # for built_alike
        self.services: dict[str, Any] = {}
        self._build_subsystems()
        self._start_services()
        if self.runs_background:
            self.jobs.start()

    def _init_events(self, settings: Settings, role: str) -> None:
        """The live-event hub, the bus that shares events between processes, and the activity
        board of a request-serving process."""
        self.hub = Hub(
            queue_size=settings.viewer_queue_size, max_clients=settings.max_viewers, replay_size=settings.viewer_replay
        )
        # Several processes (workers, nodes) share events through the database (kernel/bus.py).
        self.bus = EventBus(self.db, self.hub) if settings.database_url or settings.workers > 1 else None
        # Request-serving processes post their load on the board the background worker reads.
        self.activity = (
            background.ActivityBoard(settings.database_path) if role == "server" and settings.background_jobs else None
        )

    def _periodic_jobs(self) -> Jobs:
        """The periodic jobs, their runs claimed in the database (one run per period, whichever
        worker takes it)."""
        return Jobs(
            claim=self._claim_periodic,
            done=self._periodic_done,
            hold=self._hold_periodic,
            holds=self._holds_periodic,
            due_at=self._periodic_due_at,
            next_run=self._periodic_next_run,
        )

    def _build_subsystems(self) -> None:
        # In order, onto self.services: a factory may use the subsystems built before it.
        for name, factory in self._subsystems:
            if name in self.services:
                raise ValueError(f"duplicate subsystem {name!r}")
            self.services[name] = factory(self)

    def _start_services(self) -> None:
        # Threads start once every subsystem exists: the work they pick up may need any of them.
        for service in self.services.values():
            start = getattr(service, "start", None)
            if callable(start):
                start()

    def built_alike(self, settings: Settings, *, role: str) -> Runtime:
        """Another runtime with this one's hooks, subsystems and clock, on ``settings``: how a
        feature opens a second store (``agentmemory migrate``'s target) without the wiring."""
        return Runtime(settings, hooks=self.hooks, subsystems=self._subsystems, clock=self.clock, role=role)

    def _claim_periodic(self, name: str, every: float) -> bool:
        now = time.time()
        with self.db.transaction("periodic_claim") as tx:
            return tx.jobs.claim_periodic(name, now, now + claim_lease(every), self.worker_id, first_run=now + every)

    def _hold_periodic(self, name: str, every: float) -> bool:
        now = time.time()
        with self.db.transaction("periodic_renew") as tx:
            return tx.jobs.hold_periodic(name, now, now + claim_lease(every), self.worker_id)

    def _periodic_due_at(self, name: str) -> float | None:
        return self.db.reader().jobs.periodic_due_at(name)

    def _periodic_next_run(self, name: str) -> float | None:
        return self.db.reader().jobs.periodic_next_run(name)

    def _holds_periodic(self, tx: Any, name: str) -> bool:
        return bool(tx.jobs.holds_periodic(name, self.worker_id))

    def _periodic_done(self, name: str, error: str | None, next_run: float | None = None) -> bool:
        with self.db.transaction("periodic_done") as tx:
            return bool(tx.jobs.periodic_done(name, time.time(), error, holder=self.worker_id, next_run=next_run))

    def every(self, seconds: float, name: str, fn: Callable[[], Any], *, per_node: bool = False) -> None:
        self.jobs.every(seconds, name, fn, per_node=per_node)

    def publish(self, event_type: str, record: Any) -> None:
        self.hub.publish(event_type, record)

    def deny(self, reason: str, path: str, remote: str | None) -> None:
        """Count a refused request (bad or missing token); see ``auth.Denials``."""
        summary = self.denials.record(reason, path, remote, self.clock.iso())
        if summary is None:
            return
        try:
            with self.db.transaction("auth_denied") as tx:
                tx.record_change(
                    "auth",
                    f"refused {summary['count']} request(s) without a valid token "
                    f"(latest: {summary['reason']} {summary['path']})",
                )
                tx.audit_details = summary
        except AppError as exc:  # a full disk must not turn a 401 into a 507; the count stays in /health
            log.warning("could not audit refused requests: %s", exc.message)
        except Exception:  # noqa: BLE001 - nor may a bug turn it into a 500
            log.exception("could not audit refused requests")

    def _storage_health(self) -> dict[str, Any]:
        try:
            return self.db.health()
        except Unavailable as exc:  # a database server that does not answer
            return {"status": "critical", "error": exc.message}

    def health_sections(self, *, for_principal: bool = False) -> dict[str, Any]:
        """Every subsystem's health. ``for_principal``: the caller holds a principal's token, so
        the latest refused request (which names another principal, the tool and the address it
        came from) is left out of ``auth``; the counts stay."""
        auth = self.denials.health()
        if for_principal:
            auth.pop("lastDenied", None)
        sections: dict[str, Any] = {
            "auth": auth,
            "rateLimit": self.limiter.health(),
            "storage": self._storage_health(),
        }
        for name, service in self.services.items():
            health = getattr(service, "health", None)
            if callable(health):
                try:
                    sections[name] = health()
                except Exception as exc:  # noqa: BLE001 - health must always answer
                    sections[name] = {"status": "error", "error": str(exc)[:300]}
        return sections

    def close(self) -> None:
        # Before joining any thread: one blocked on a database that is gone would otherwise
        # hold the shutdown for its pool timeout.
        self.db.drop_connections_if_unreachable()
        self.jobs.stop()
        if self.bus is not None:
            self.bus.close()
        for service in reversed(list(self.services.values())):
            close = getattr(service, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - keep closing the rest
                    log.exception("closing a subsystem failed")
        if self.activity is not None:  # after the services: their threads post on it until they stop
            self.activity.close()
        self.limiter.close()
        self.db.close()
