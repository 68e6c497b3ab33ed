"""The capture spool: hook events kept on this node's disk while the database cannot take them.

An event whose storing fails is kept in the capture inbox for a retry (capture/inbox.py). The
inbox lives in the database, so when the database itself cannot take a write (PostgreSQL stopped
or out of reach, SQLite locked past its busy timeout, a damaged file refusing writes) the inbox
cannot keep it either. Claude Code's ``http`` hooks and ``agentmemory hook`` do not resend, so a
503 there loses the event. Instead it is written here, to ``<data dir>/server-spool/``, one file
per event, made durable (fsync of the file and the folder) before the client hears 202
``spooled``.

This node's background worker drains the spool every retry interval, oldest first, once the
database takes writes again; with background jobs off, the request processes drain it themselves
(capture/spool_drain.py). Each event is stored exactly as ``/observe`` would have stored it
(dedup by event id, so an event the client also resent is stored once). A turn end or session end
whose event was spooled is spooled after it and runs after it. ``POST /capture/drain`` drains at
once.

What a file holds is the prepared observation (privacy-stripped, fields cut), never the raw
payload. At most ``AGENTMEMORY_CAPTURE_SPOOL_MAX`` events wait (0 turns the spool off); beyond
that the 503 stands. A file is renamed (with the draining process's id) before it is drained, so two
processes never take the same event; a file left so by a process that died is taken back at the
next drain, one held past ``LEASE_SECONDS`` too.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError
from agentmemory_server.kernel.background import WORKER_ALIVE_SECONDS, still_running
from agentmemory_server.kernel.registry import Ctx, Reply
from agentmemory_server.kernel.util import process_alive
from agentmemory_server.memory import transfer_lease

log = logging.getLogger("agentmemory.capture")
# Not "capture-spool": upstream's hook scripts keep their own spool there, in the same data dir.
FOLDER = "server-spool"
WAITING = ".json"
DRAINING = ".draining-"  # and the draining process's id
UNREADABLE = ".unreadable"
LEASE_SECONDS = 300.0
FORMAT = 1
KINDS = ("observation", "sessionEnd")
# Who drains the spool (health ``drainedBy``); ``none``: no server answers (``agentmemory status``).
WORKER, REQUESTS, NONE = "worker", "requests", "none"
# What the database answers when it cannot take a write though this node's disk can: PostgreSQL
# gone or busy, SQLite locked, a damaged file, a server stopping. Not a full or read-only disk:
# the spool would fill the same disk, inside the reserve kept free on purpose. Not a bug either:
# it would fail again at every drain and hold up the events behind it.
DATABASE_CAUSES = frozenset({errors.UNAVAILABLE, errors.DATABASE_BUSY, errors.DATABASE_CLOSED, errors.DATABASE_DAMAGED})


class SpoolRefused(Exception):
    """The spool cannot keep an event (off, full, or the disk refused the write)."""


class DatabaseStillDown(Exception):
    """Draining stops: the database does not take the spooled events yet (they stay)."""


class UnreadableRecord(Exception):
    """A spooled file that holds no event: set aside, so that it does not hold up the others."""


class CaptureSpool:
    """Subsystem ``capture_spool``: events kept on disk, and their files handed out to drain
    (capture/retry.py stores them)."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.folder = rt.settings.data_path / FOLDER
        self.max = rt.settings.capture_spool_max
        self.since_start: Counter = Counter()
        self._draining = threading.Lock()
        self.last_kept = 0.0  # monotonic time this process last kept an event here (0: never)

    # -- keeping events ------------------------------------------------------------------------

    def keep_observation(self, entry: dict[str, Any], failure: Exception, durable: dict[str, Any]) -> Reply:
        """Keep an inbox entry the database could not take (``failure`` says why); 202 ``spooled``,
        with what upstream's clients read from every 2xx (``durable``: the file is on disk).

        :raise SpoolRefused: not a failure of the database's (a full disk, a bug), the spool is off
            or full, or the disk refused the write.
        """
        if not (isinstance(failure, AppError) and failure.code in DATABASE_CAUSES):
            raise SpoolRefused(f"not kept in the capture spool either ({_said(failure)})")
        self._write({"kind": "observation", "entry": entry, "error": _said(failure)})
        self.since_start["spooled"] += 1
        # The request's own log line says why (capture/observe.py); this one says where it went.
        log.warning("event %s kept in %s until the database takes it", entry["eventId"], self.folder)
        return Reply(
            {
                "success": True,
                "accepted": True,
                "spooled": True,
                "stored": False,
                "eventId": entry["eventId"],
                "sessionId": entry["sessionId"],
                "error": _said(failure),
                **durable,
            },
            202,
        )

    def keep_session_end(self, session_id: str, final: bool) -> None:
        """Keep a session end whose event was spooled, to run after that event is stored."""
        self._write({"kind": "sessionEnd", "sessionId": session_id, "final": final})

    def _write(self, record: dict[str, Any]) -> None:
        if not self.max:
            raise SpoolRefused("the capture spool is off (AGENTMEMORY_CAPTURE_SPOOL_MAX=0)")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if len(self._names(WAITING)) >= self.max:
                raise SpoolRefused(f"the capture spool is full (AGENTMEMORY_CAPTURE_SPOOL_MAX={self.max})")
            # The time first, so that names sort in the order the events came in.
            name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{WAITING}"
            body = json.dumps({"format": FORMAT, "spooledAt": self.rt.clock.iso(), **record}, ensure_ascii=False)
            data = body.encode("utf-8")
            # The disk reserve holds for the spool too: a SQLite database beside it needs that room.
            reserve = self.rt.settings.disk_reserve_mb << 20
            if shutil.disk_usage(self.folder).free - len(data) < reserve:
                raise SpoolRefused(
                    f"the capture spool would leave less than AGENTMEMORY_DISK_RESERVE_MB="
                    f"{self.rt.settings.disk_reserve_mb} free"
                )
            _write_durably(self.folder / name, data)
            self.last_kept = time.monotonic()
        except OSError as exc:
            raise SpoolRefused(f"the capture spool could not be written: {exc}") from exc

    # -- draining ------------------------------------------------------------------------------

    def drain(self, apply: Callable[[dict[str, Any]], str]) -> dict[str, int]:
        """Hand what waits to ``apply``, oldest first, and forget each file it took; stop at the
        first one it cannot take yet (it raises ``DatabaseStillDown``)."""
        outcome = {"matched": 0, "recovered": 0, "dead": 0, "retrying": 0, "unreadable": 0, "waiting": 0}
        if not self.folder.is_dir():  # with the spool turned off since, what it kept still drains
            return outcome
        with self._draining:
            self._take_back_abandoned()
            names = self._names(WAITING)
            outcome["matched"] = len(names)
            for i, name in enumerate(names):
                try:
                    result = self._drain_one(name, apply)
                except DatabaseStillDown:
                    outcome["waiting"] = len(names) - i
                    break
                if result is not None:
                    outcome[result] += 1
        self.since_start.update({k: v for k, v in outcome.items() if k not in ("matched", "waiting")})
        if outcome["recovered"] or outcome["dead"] or outcome["retrying"]:
            log.info("capture spool drained: %s", outcome)
        return outcome

    def _drain_one(self, name: str, apply: Callable[[dict[str, Any]], str]) -> str | None:
        """One file: what ``apply`` made of it, ``unreadable``, or None when another process took
        it first."""
        taken = self.folder / f"{name}{DRAINING}{os.getpid()}"
        try:
            os.rename(self.folder / name, taken)
        except FileNotFoundError:
            return None
        os.utime(taken)  # when it was taken, not when it was written: the lease runs from here
        try:
            record = json.loads(taken.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("kind") not in KINDS:
                raise UnreadableRecord(f"not a spooled event: {str(record)[:80]}")
            result = apply(record)
        except (OSError, ValueError, UnreadableRecord) as exc:
            log.error("capture spool file %s cannot be read (%s); left as %s", name, exc, name + UNREADABLE)
            os.replace(taken, self.folder / (name + UNREADABLE))
            return "unreadable"
        except BaseException:
            os.replace(taken, self.folder / name)  # it waits for the next drain
            raise
        taken.unlink(missing_ok=True)
        return result

    def _take_back_abandoned(self) -> None:
        """Files a process took for draining and never finished wait again: it died (a file of
        this process's is from a drain that failed here), or it has held one past the lease."""
        cutoff = time.time() - LEASE_SECONDS
        for name in self._names(".tmp"):  # never written whole: the writer died before the rename
            if name.startswith(".") and _mtime(self.folder / name) < cutoff:
                (self.folder / name).unlink(missing_ok=True)
        for name in self._draining_names():
            waiting, _, pid = name.rpartition(DRAINING)
            path = self.folder / name
            try:
                mine = pid == str(os.getpid())
                gone = not pid.isdigit() or not process_alive(int(pid))
                if mine or gone or path.stat().st_mtime < cutoff:
                    os.replace(path, self.folder / waiting)
            except FileNotFoundError:
                continue

    # -- reports -------------------------------------------------------------------------------

    def _names(self, suffix: str) -> list[str]:
        return _names_in(self.folder, suffix)

    def _draining_names(self) -> list[str]:
        return _draining_names_in(self.folder)

    def has_waiting(self, *, or_taken: bool = False) -> bool:
        """Whether events wait here (``or_taken``: or files a process took for draining, which
        a drain takes back when their process is gone)."""
        return bool(self._names(WAITING) or (or_taken and self._draining_names()))

    def status(self) -> dict[str, Any]:
        waiting = self._names(WAITING)
        return {
            "events": len(waiting),
            "oldestAt": _spooled_at(self.folder / waiting[0]) if waiting else None,
            "draining": len(self._draining_names()),
            "unreadable": len(self._names(UNREADABLE)),
            "max": self.max,
            "sinceStart": dict(self.since_start),
        }

    def health(self) -> dict[str, Any]:
        status = self.status()
        full = bool(self.max) and status["events"] >= self.max
        drainer = self.drained_by(verify=bool(status["events"]))
        return {
            "status": "degraded" if full or status["unreadable"] else "ok",
            **{k: status[k] for k in ("events", "oldestAt", "unreadable", "max")},
            "drainedBy": drainer,
        }

    def drained_by(self, *, verify: bool) -> str:
        """Who drains this node's spool: ``worker`` (every retry interval) or ``requests`` (the
        request processes after a write commits, capture/spool_drain.py: with background jobs
        off, or, ``verify``, when no background worker of this node is alive; /health's
        ``background`` says that worker is missing)."""
        settings = self.rt.settings
        if not settings.background_jobs:
            return REQUESTS
        if not verify or settings.background == "inline" or time.time() - self.rt.started_at < WORKER_ALIVE_SECONDS:
            return WORKER
        try:
            store = self.rt.db.reader()
            # A worker a replace import keeps from beating (and from draining) drains once it commits.
            since, _holder = transfer_lease.heartbeats_since(store, WORKER_ALIVE_SECONDS)
            workers = still_running(store.jobs.workers(since))
        except Exception:  # noqa: BLE001 - the database does not answer: which workers live is unknown
            return WORKER
        here = socket.gethostname()
        return WORKER if any(w.get("host") == here for w in workers) else REQUESTS


def _names_in(folder: Path, suffix: str) -> list[str]:
    """Files ending in ``suffix``; files being written (``.*.tmp``) only when asked for."""
    try:
        found = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(n for n in found if n.endswith(suffix) and (suffix == ".tmp" or not n.startswith(".")))


def _draining_names_in(folder: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if DRAINING in n and not n.startswith("."))
    except FileNotFoundError:
        return []


def waiting_without_a_server(data_path: Path) -> dict[str, Any]:
    """The spool of the data directory ``data_path`` as its files show it, for ``agentmemory
    status`` when no server answers: nothing drains it then (``drainedBy: none``), its events wait
    until a server starts on that data directory. Files a stopped process took for draining are
    counted apart (``taken``): the next drain takes them back."""
    folder = data_path / FOLDER
    waiting = _names_in(folder, WAITING)
    return {
        "folder": str(folder),
        "events": len(waiting),  # as /health counts them
        "taken": len(_draining_names_in(folder)),  # by a process that stopped while draining them
        "oldestAt": _spooled_at(folder / waiting[0]) if waiting else None,
        "drainedBy": NONE,
    }


def spool_service(ctx: Ctx) -> CaptureSpool:
    service: CaptureSpool = ctx.rt.services["capture_spool"]
    return service


def _said(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc or type(exc).__name__)[:500]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _spooled_at(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("spooledAt"))
    except (OSError, ValueError, AttributeError):
        return None


def _write_durably(path: Path, data: bytes) -> None:
    """Write a new file so that it exists whole or not at all, and stays after a power cut."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
