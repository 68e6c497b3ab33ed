"""The ``background`` subsystem: where background work runs and whether a worker is alive.

A worker process (``agentmemory worker``) writes a heartbeat row every few seconds with what it
has done; every process's /health shows the live workers, the supervisor's view when this
server started the worker itself (``AGENTMEMORY_BACKGROUND=process``), and the periodic jobs'
schedule (run once per database, whichever worker claims them).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from agentmemory_server.errors import AppError
from agentmemory_server.kernel.background import WORKER_ALIVE_SECONDS, still_running
from agentmemory_server.kernel.util import WorkerFailures, iso
from agentmemory_server.memory import transfer_lease

log = logging.getLogger("agentmemory.background")
BEAT_SECONDS = 5.0
ALIVE_WITHIN = WORKER_ALIVE_SECONDS  # a worker without a heartbeat for this long counts as gone


def _periodic_entry(job: dict[str, Any]) -> dict[str, Any]:
    """A periodic job's row as /health shows it: its times as ISO-8601 UTC, like every other time
    of the API (``lastErrorAt`` and ``recoveredAt`` as every part's last error, ``errors.LastError``).
    ``nextRun`` and ``lastRun`` stay epoch seconds, as they always were, for whatever reads them;
    ``nextRunAt`` and ``lastRunAt`` say the same for a reader."""
    for key in ("lastErrorAt", "recoveredAt"):
        job[key] = _iso_of(job.get(key))
    job["nextRunAt"], job["lastRunAt"] = _iso_of(job.get("nextRun")), _iso_of(job.get("lastRun"))
    return job


def _iso_of(epoch: float | None) -> str | None:
    return None if epoch is None else iso(datetime.fromtimestamp(epoch, tz=UTC))


class BackgroundStatus:
    def __init__(self, rt: Any):
        self.rt = rt
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # A database that does not answer misses every beat until it is back: one warning a
        # minute, as the other loops say it, not a traceback every 5 s
        self._missed = WorkerFailures(log, "worker heartbeat")
        if rt.role == "worker":
            self.beat()
            self._thread = threading.Thread(target=self._beat_loop, name="agentmemory-heartbeat", daemon=True)
            self._thread.start()

    def _info(self) -> dict[str, Any]:
        services = self.rt.services
        info: dict[str, Any] = {"jobs": [j["name"] for j in self.rt.jobs.status()]}
        vectors = services.get("vectors")
        if vectors is not None:
            info["embedded"] = vectors.embedded
            info["model"] = vectors.model
        llm = services.get("llm")
        if llm is not None:  # this worker's model calls (request processes make none of them)
            info["llm"] = llm.heartbeat()
        return info

    def beat(self) -> None:
        with self.rt.db.transaction("worker_heartbeat") as tx:
            tx.jobs.worker_beat(
                self.rt.worker_id, socket.gethostname(), os.getpid(), self.rt.started_at, time.time(), self._info()
            )

    def _beat_loop(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            self.beat_or_say_why()

    def beat_or_say_why(self) -> None:
        try:
            self.beat()
        except Exception as exc:  # noqa: BLE001 - a missed beat is not fatal
            self._missed.failed(exc)

    def health(self) -> dict[str, Any]:
        settings = self.rt.settings
        store = self.rt.db.reader()
        workers = still_running(store.jobs.workers(time.time() - ALIVE_WITHIN))
        waiting_for = None
        if not workers:  # none has beaten lately: gone, or kept from writing by a replace import
            since, holder = transfer_lease.heartbeats_since(store, ALIVE_WITHIN)
            # One that died meanwhile (killed on this host) waits for nothing: it is gone.
            workers = still_running(store.jobs.workers(since)) if holder is not None else []
            if workers and holder is not None:
                waiting_for = (
                    f"the database: {holder.get('operation') or 'an import'} holds its write lock since "
                    f"{holder.get('since')} (process {holder.get('pid')} on {holder.get('host')}); the worker's "
                    "heartbeat and its work resume when it commits"
                )
        supervisor = getattr(self.rt, "supervisor", None)
        expected = settings.background_jobs and settings.background != "inline"
        starting = time.time() - self.rt.started_at < ALIVE_WITHIN
        status = "degraded" if expected and (not workers or waiting_for) and not starting else "healthy"
        return {
            "status": status,
            "mode": settings.background if settings.background_jobs else "off",
            "runsHere": self.rt.runs_background,
            "workers": workers,
            "waitingFor": waiting_for,
            "supervisor": supervisor.status() if supervisor is not None else None,
            "periodic": [_periodic_entry(job) for job in store.jobs.periodic_status()],
        }

    def diagnose(self) -> list[dict[str, Any]]:
        health = self.health()
        ok = health["status"] == "healthy"
        if ok:
            message, fix = f"{len(health['workers'])} background worker(s) alive (mode {health['mode']})", ""
        elif health["waitingFor"]:
            message = f"the background worker is waiting for {health['waitingFor']}"
            fix = "nothing to do: embeddings, model jobs and sweeps wait for the import and then catch up"
        else:
            message = (
                f"no background worker has reported for {ALIVE_WITHIN:.0f} s (mode {health['mode']}): "
                "embeddings, model jobs and sweeps wait"
            )
            fix = (
                "start `agentmemory worker` (AGENTMEMORY_BACKGROUND=external) or check the server log for "
                "worker crashes (process)"
            )
        return [
            {
                "name": "background-worker",
                "category": "background",
                "status": "pass" if ok else "warn",
                "message": message,
                "fix": fix,
                "fixable": False,
            }
        ]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            try:
                with self.rt.db.transaction("worker_gone") as tx:
                    tx.jobs.worker_gone(self.rt.worker_id)
            except AppError as exc:  # the database does not answer: the row expires by itself
                log.warning("could not remove the worker heartbeat (it expires by itself): %s", exc.message)
            except Exception:  # noqa: BLE001 - the row expires by itself
                log.exception("removing the worker heartbeat failed")
