"""One import or migration at a time per store: a lease in the store's database.

Two imports (or an import and ``agentmemory migrate``) of the same store at the same moment
would interleave their batches, and with ``replace`` leave something neither of them meant. So
each takes the lease first: a row in the database's reserved working-memory scope (the Redis
fallback's mark lives there too; a replace import's wipe keeps it), which every process and
every node of the store reads. A second one is refused with 409 ``transfer_running`` naming what
runs, where and since when.

A lease must not outlive its holder. Its holder refreshes its expiry every REFRESH_SECONDS
(a thread of its own; on PostgreSQL under a lock of its own, so a long replace import's
transaction does not hold it up); a lease past its expiry is free, so a crashed or killed holder
on another node frees it within TTL_SECONDS. On the holder's own host its process is checked
too: a lease whose process is gone is free at once, and one whose process still runs is held
even past its expiry (SQLite has one writer: while a replace import's one transaction runs, the
refresh waits for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Conflict
from agentmemory_server.memory.working_transfer import RESERVED_SCOPE

log = logging.getLogger("agentmemory.transfer")

LEASE_KEY = "_transfer_lease"
# The transaction that takes, refreshes and drops the lease (PostgreSQL gives it a lock of its own).
OPERATION = "transfer_lease"
TTL_SECONDS = 60.0
REFRESH_SECONDS = 15.0
_ACTIVE: set[str] = set()  # the leases this process holds now


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None where /proc is
    not there or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), to tell it from a later process
    given the same id."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _alive(holder: dict[str, Any]) -> bool | None:
    """Whether the holder's process still runs: None when it ran on another host (unknown here)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    pid = holder["pid"]
    if pid == os.getpid():  # this process: held while it holds it (a release that failed left it)
        return holder.get("id") in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it runs
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc to tell more: it runs
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return holder.get("started") in (None, fields[19])


def _held(holder: dict[str, Any] | None, now: float) -> bool:
    if holder is None:
        return False
    alive = _alive(holder)
    if alive is not None:
        return alive
    return float(holder.get("expires", 0)) > now


def _read(store: Any) -> dict[str, Any] | None:
    row = store.working.kv_get(RESERVED_SCOPE, LEASE_KEY, 0.0)
    if row is None:
        return None
    try:
        holder = json.loads(row[0])
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def running(store: Any) -> dict[str, Any] | None:
    """What holds this store's lease now (``operation``, ``since``, ``host``, ``pid``), or None."""
    holder = _read(store)
    return holder if _held(holder, time.time()) else None


def write_lock_holder(rt: Any) -> dict[str, Any] | None:
    """What holds this store's lease now, as a write refused with 503 ``database_busy`` names it
    (``Hooks.write_lock_holder``): ``operation``, ``since``, ``host``, ``pid``; None when no import
    or migration runs. Read on this process's read connection, which never waits for the write
    lock the holder keeps (SQLite's WAL, PostgreSQL's MVCC)."""
    holder = running(rt.db.reader())
    if holder is None:
        return None
    return {key: holder.get(key) for key in ("operation", "since", "host", "pid")}


def heartbeats_since(store: Any, alive_seconds: float) -> tuple[float, dict[str, Any] | None]:
    """The oldest worker heartbeat (epoch) that still counts its worker alive, and what holds
    the lease (None). A worker beats by writing, and a replace import's one transaction keeps
    every other writer out until it commits (minutes): while one runs, a worker that beat within
    ``alive_seconds`` before it began is waiting for the database, not gone."""
    cutoff = time.time() - alive_seconds
    holder = running(store)
    if holder is None:
        return cutoff, None
    try:
        began = datetime.fromisoformat(str(holder.get("since"))).timestamp()
    except ValueError:
        return cutoff, holder
    return min(cutoff, began - alive_seconds), holder


def _refused(holder: dict[str, Any], wanted: str) -> Conflict:
    where = f"process {holder.get('pid')} on {holder.get('host')}"
    return Conflict(
        f"{holder.get('operation') or 'an import'} is running on this store since {holder.get('since')} ({where}); "
        f"{wanted} was not started: one import or migration at a time. Run it again once that one is done",
        code=errors.TRANSFER_RUNNING,
        details={
            "running": holder.get("operation"),
            "since": holder.get("since"),
            "host": holder.get("host"),
            "pid": holder.get("pid"),
        },
    )


class Lease:
    """A taken lease (``hold`` takes it)."""

    def __init__(self, rt: Any, operation: str):
        self.rt = rt
        self.id = uuid.uuid4().hex
        pid = os.getpid()
        self.value: dict[str, Any] = {
            "id": self.id,
            "operation": operation,
            "since": rt.clock.iso(),
            "host": socket.gethostname(),
            "pid": pid,
            "started": _started(pid),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _put(self, tx: Any) -> None:
        self.value["expires"] = time.time() + TTL_SECONDS
        # No expiry in the row itself: the sweep of expired keys must not drop a lease whose
        # holder still runs (its expiry is read from the value, with the holder's process).
        tx.working.kv_put_many(RESERVED_SCOPE, [(LEASE_KEY, json.dumps(self.value), None)], self.value["since"])

    def take(self) -> None:
        """:raise Conflict: another holder has it (looked up without waiting for a writer first)."""
        holder = _read(self.rt.db.reader())
        if _held(holder, time.time()):
            raise _refused(holder or {}, self.value["operation"])
        with self.rt.db.transaction(OPERATION) as tx:
            holder = _read(tx)
            if _held(holder, time.time()):
                raise _refused(holder or {}, self.value["operation"])
            self._put(tx)
        _ACTIVE.add(self.id)
        self._thread = threading.Thread(target=self._refresh_until_done, name="transfer-lease", daemon=True)
        self._thread.start()

    def _refresh_until_done(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                with self.rt.db.transaction(OPERATION) as tx:
                    holder = _read(tx)
                    if self._stop.is_set() or holder is None or holder.get("id") != self.id:
                        return  # released meanwhile (or taken over after a long stall): not ours to write
                    self._put(tx)
            except AppError as exc:  # a busy or lost database: the process check still holds it here
                log.info("transfer lease: could not refresh its expiry (%s)", exc.message)
            except Exception:  # noqa: BLE001 - a bug must not end the refreshes: the lease would lapse mid-import
                log.exception("transfer lease: refreshing its expiry failed; trying again")

    def release(self) -> None:
        self._stop.set()
        _ACTIVE.discard(self.id)
        if self._thread is not None:
            self._thread.join(timeout=5)  # a refresh under way ends first (it writes nothing once stopped)
        try:
            with self.rt.db.transaction(OPERATION) as tx:
                holder = _read(tx)
                if holder is not None and holder.get("id") == self.id:
                    tx.working.kv_delete(RESERVED_SCOPE, LEASE_KEY, 0.0)
        except AppError as exc:  # the lease frees itself: its process ends, or its expiry passes
            log.warning("transfer lease: could not drop it (%s); it frees itself within %g s", exc.message, TTL_SECONDS)


@contextlib.contextmanager
def hold(*runtimes: Any, operation: str) -> Iterator[None]:
    """Hold the lease of each runtime's store while the block runs (``operation`` names it to a
    second one, e.g. ``an import (replace)``).

    :raise Conflict: one of them is held (409 ``transfer_running``); none is taken then."""
    taken: list[Lease] = []
    try:
        for rt in runtimes:
            lease = Lease(rt, operation)
            lease.take()
            taken.append(lease)
        yield
    finally:
        for lease in reversed(taken):
            lease.release()
