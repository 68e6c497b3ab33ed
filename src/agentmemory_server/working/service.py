"""The ``working_memory`` subsystem: it picks a backend and falls back loudly.

Fallback rule: with ``WORKING_MEMORY_BACKEND=redis``, an unreachable Redis at start-up or a
connection failure later switches the process to the SQLite backend (the server's database). The
switch is logged at ERROR and reported in every working-memory response (``usingFallback``), in
/health (status ``degraded``) and by ``diagnose()``. It never switches back on its own: flipping
back would hide whatever was written to the database during the outage, so a session's data would
silently split across two stores.

For the same reason the switch is the whole store's, not one process's: the first process to fall
back records it in the database (``SqliteBackend.mark_fallback``), and every process of every node
that shares the database follows the mark within ``FOLLOW_SECONDS``, a process started later (a
respawned gunicorn worker, a restarted node) at once. Otherwise a worker that had no request
during the outage, or one started after Redis came back, would serve the same sessions from Redis
while its siblings serve them from the database. The fallback ends when an operator heals it
(``POST /agentmemory/diagnostics/heal``) once Redis answers: the mark is removed and every process
returns to Redis within ``FOLLOW_SECONDS``.

What was written to the database meanwhile is then moved to Redis, so no session loses it: by each
process as it returns, and by the sweep for anything left. Each scope moves in one database
transaction that first checks the mark (a new fallback stops the move), hands the scope to Redis in
one Redis transaction, then deletes it: a Redis failure leaves it in the database. The moved data
is newer than what Redis held before the outage, so its keys and task replace those; a key deleted
during the outage but still in Redis from before it comes back (no tombstones are kept). But a
process back on Redis (another thread of the moving one, or another process that returned first)
may write a scope before it moves: that write is newer still. So the heal, before it removes the
mark, copies what Redis holds of every scope waiting in the database
(``RedisBackend.hold_for_return``), and a move replaces only the keys and the task Redis still
holds as copied (or as moved in since). Every scope that moves has a copy: the mark's removal is
refused while one waits uncopied (``SqliteBackend.clear_fallback_mark``), and once it is gone a
server process's write to the database refuses (``FallbackEnded``): the process follows the heal
then and there and writes to Redis.

A ``replace`` import is all or nothing for working memory as for the records, although Redis takes
no part in the database's transaction: its working memory is staged in Redis, then swapped in after
the records' commit. A swap empties every scope, so the heal does the ones still waiting (and a
replace import's made on the fallback: an empty stage) before it removes the mark, while no process
serves from Redis, and a returning process before it serves from Redis; and a replace import on
the fallback begins only once every process has followed it (``await_followers``), so none
writes to Redis after it. staged.py
(``ReplaceStages``) does it; this subsystem owns the backend it works on and is its entry point for
memory/transfer.py, the sweep, diagnose and heal.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Conflict, LastError, Unavailable
from agentmemory_server.memory import working_transfer
from agentmemory_server.storage.urls import without_password
from agentmemory_server.working.model import (
    SWEEP_SECONDS,
    BackendDown,
    FallbackEnded,
    Scope,
    ScopeCopy,
    entry_copy,
    entry_scope,
    reason_of,
)
from agentmemory_server.working.redis_backend import RedisBackend, probe
from agentmemory_server.working.sqlite_backend import SqliteBackend
from agentmemory_server.working.staged import ReplaceStages

log = logging.getLogger("agentmemory.working")

# How often a process reads the store's fallback mark: how long another process's fallback (or
# its end) may take to reach it. As for token revocations, a few seconds is the promise; reading
# it on every call would add a database read to every Redis operation.
FOLLOW_SECONDS = 5.0
# A write another process sent to Redis just before it followed the fallback lands within this
# (a Redis command takes milliseconds; this is the margin a replace import on the fallback keeps
# on top of FOLLOW_SECONDS: ``await_followers``).
IN_FLIGHT_SECONDS = 1.0
# How often the heal tries to end the fallback when the mark's removal is refused (a replace
# import's swap, or a scope first written to the database while it copied what Redis holds).
END_ATTEMPTS = 10
HEAL_HINT = (
    "once Redis answers, POST /agentmemory/diagnostics/heal returns every process of every node to it "
    f"within {FOLLOW_SECONDS:g} s and moves the working memory written during the outage to Redis"
)


def _entry_of(scope: Scope, copy: ScopeCopy) -> dict[str, Any]:
    return working_transfer.make_entry(
        scope.key, keys=copy.keys, task=copy.task, scratchpad=copy.scratch, checkpoints=copy.checkpoints
    )


# -- the subsystem ---------------------------------------------------------------------------------


class WorkingMemory:
    """The working-memory subsystem: the active backend, the SQLite fallback and the sweep."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.settings = rt.settings
        self.configured: str = self.settings.working_memory_backend
        self.sqlite = SqliteBackend(rt.db, rt.clock.iso)
        self.backend: Any = self.sqlite
        self.fallback_reason: str | None = None
        self.fallback_since: str | None = None
        # Why and when working memory last left Redis, kept after the return (marked recovered), as
        # every part's last error is; fallbackReason/fallbackSince say only the fallback now.
        self.errors = LastError()
        self._lock = threading.Lock()
        self._following = threading.Lock()  # one thread of the process reads the mark and acts on it
        self._mark_read_at: float | None = None
        self.moved_at_return = 0  # scopes this process moved from the database when it last returned to Redis
        # An admin command (role "tool") run where Redis cannot be reached says nothing about the
        # servers' Redis: it serves from the database itself but does not move the store there.
        self._may_mark = rt.role != "tool"
        self.stages = ReplaceStages(self)  # a replace import's working memory, staged then swapped in
        # A server process's write to the database's working memory checks the store's mark (the
        # fallback may have been healed before this process followed: it then writes to Redis).
        self.sqlite.follows_mark = self.configured == "redis" and self._may_mark
        # When this process went onto the store's fallback (time.monotonic) and the mark it saw:
        # a replace import on the fallback waits until every other process has followed it.
        self._fell_back_at: float | None = None
        self._mark_seen: dict[str, str] | None = None
        self.pause = time.sleep
        if self.configured == "redis":
            self._connect_redis()
            self._follow_the_store()
        rt.every(SWEEP_SECONDS, "working_memory_sweep", self.sweep)

    def _connect_redis(self) -> None:

        try:
            self.backend = RedisBackend(
                self.settings.redis_url, self.settings.working_memory_redis_prefix, audit=self._audit
            )
            log.info("working memory: Redis backend at %s", without_password(self.settings.redis_url))
        except BackendDown as exc:
            self._fall_back(None, exc)

    @property
    def using_fallback(self) -> bool:
        return self.fallback_reason is not None

    def describe(self) -> dict[str, Any]:
        """The part of every response that says where the data lives."""
        out: dict[str, Any] = {"backend": self.backend.name, "usingFallback": self.using_fallback}
        if self.using_fallback:
            out["warning"] = (
                f"Redis is unavailable ({self.fallback_reason}); working memory is "
                f"served from the SQLite fallback since {self.fallback_since} "
                "until the fallback is healed (POST /agentmemory/diagnostics/heal)"
            )
        return out

    def run(self, op: Callable[[Any], Any]) -> Any:
        """Run ``op(backend)``; if Redis is down, switch to SQLite (once, loudly) and rerun. A
        write to the database that finds the fallback healed (this process had not followed it
        yet) wrote nothing: the process follows now and reruns it on Redis."""
        self._follow_the_store()
        try:
            return self._run_on(self.backend, op)
        except FallbackEnded:
            self._follow_now()
        try:
            return self._run_on(self.backend, op)
        except FallbackEnded:  # the database could not say where working memory lives now
            raise Unavailable(
                "the working-memory fallback was healed, but this process could not return to Redis yet; "
                "nothing was written: retry",
                code=errors.WORKING_MEMORY_UNAVAILABLE,
                retry_after=1,
            ) from None

    def _run_on(self, backend: Any, op: Callable[[Any], Any]) -> Any:
        try:
            return op(backend)
        except BackendDown as exc:
            if backend is self.sqlite:
                raise
            self._fall_back(backend, exc)
            return op(self.sqlite)

    def _fall_back(self, failed: Any, exc: Exception) -> None:
        with self._lock:
            first = self.fallback_reason is None
            if first and not self._may_mark:
                self.fallback_reason = str(exc)[:300] or type(exc).__name__
                self.fallback_since = self.rt.clock.iso()
                log.warning(
                    "working memory: Redis at %s is unavailable (%s); this command reads and writes the "
                    "database's working memory only (the servers' store is not moved to the fallback)",
                    without_password(self.settings.redis_url),
                    self.fallback_reason,
                )
            elif first:
                self.fallback_reason = str(exc)[:300] or type(exc).__name__
                self.fallback_since = self.rt.clock.iso()
                log.error(
                    "working memory: Redis at %s is unavailable (%s); using the SQLite "
                    "fallback (the server's database) for every process sharing it, until "
                    "POST /agentmemory/diagnostics/heal once Redis answers. Working memory written "
                    "to Redis before now is not visible until then.",
                    without_password(self.settings.redis_url),
                    self.fallback_reason,
                )
            if first:
                self._fell_back_at = time.monotonic()
            self.backend = self.sqlite
            if first:
                self.errors.failed(self.fallback_reason or "", self.fallback_since)
        if failed is not None:
            failed.close()
        if first:
            self._mark_the_store()
            self._mark_seen = self._read_mark()

    def _read_mark(self) -> dict[str, str] | None:
        try:
            return self.sqlite.fallback_mark()
        except AppError:
            return None

    def _mark_the_store(self) -> None:
        """Tell the other processes (and those started later) to serve from the database too."""
        if not self._may_mark:
            return
        try:
            self.sqlite.mark_fallback(self.fallback_since or self.rt.clock.iso(), self.fallback_reason or "")
        except AppError as exc:  # the database is down too: nothing is served from it anyway
            log.warning("working memory: could not record the fallback in the database (%s)", exc.message)

    def _follow_the_store(self) -> None:
        """Serve from where the store's mark says working memory is (read at most every
        FOLLOW_SECONDS): onto the database when another process fell back, back to Redis when
        the fallback was healed."""
        if self.configured != "redis":
            return
        now = time.monotonic()
        if self._mark_read_at is not None and now - self._mark_read_at < FOLLOW_SECONDS:
            return
        if not self._following.acquire(blocking=False):
            return  # another thread is looking right now
        try:
            self._look_at_the_mark(now)
        finally:
            self._following.release()

    def _follow_now(self) -> None:
        """Read the store's mark and act on it now, waiting for a thread of this process that is
        doing so (returning to Redis, say) rather than going on where the process was."""
        with self._following:
            self._look_at_the_mark(time.monotonic())

    def _look_at_the_mark(self, now: float) -> None:
        """With ``_following`` held: follow the store's mark onto the database or back to Redis."""
        try:
            self._mark_read_at = now
            mark = self.sqlite.fallback_mark()
            if mark is not None and self.backend is not self.sqlite:
                self._follow_fallback(mark)
            elif mark is None and self.backend is self.sqlite and self._may_mark:
                self._return_to_redis()
        except AppError:
            return  # the database cannot say: keep serving where we are

    def _follow_fallback(self, mark: dict[str, str]) -> None:
        with self._lock:
            if self.backend is self.sqlite:
                return
            failed, self.backend = self.backend, self.sqlite
            self._fell_back_at, self._mark_seen = time.monotonic(), mark
            self.fallback_reason = mark.get("reason") or "another process found Redis unavailable"
            self.fallback_since = mark.get("since") or self.rt.clock.iso()
            self.errors.failed(self.fallback_reason, self.fallback_since)
        failed.close()
        log.error(
            "working memory: another process moved working memory to the SQLite fallback (the server's "
            "database) at %s (%s); this one follows it until POST /agentmemory/diagnostics/heal",
            self.fallback_since,
            self.fallback_reason,
        )

    def _return_to_redis(self) -> None:
        try:
            redis = RedisBackend(self.settings.redis_url, self.settings.working_memory_redis_prefix, audit=self._audit)
        except BackendDown as exc:
            with self._lock:
                self.fallback_reason = str(exc)[:300] or type(exc).__name__
            self._mark_the_store()  # healed while Redis is down again: the store stays on the database
            # Processes that returned meanwhile follow this new fallback only from now on.
            self._fell_back_at, self._mark_seen = time.monotonic(), self._read_mark()
            return
        # Before this process serves from Redis (its other threads would at once): a swap empties
        # every scope, so it would delete what they wrote. The heal swapped them in already; this
        # finds those whose swap Redis failed without the store falling back.
        self.stages.complete_swaps(redis)
        with self._lock:
            self.backend, self.fallback_reason, self.fallback_since = redis, None, None
            self.errors.succeeded()
        log.info(
            "working memory: the fallback was healed; back on Redis at %s", without_password(self.settings.redis_url)
        )
        self.moved_at_return = self._move_to_redis(redis)

    def _move_to_redis(self, redis: RedisBackend) -> int:
        """Move working memory held in the database to Redis, scope by scope; returns how many
        scopes moved. Stops when the store falls back again (the database is then where it lives)."""
        now, moved = self.rt.clock.time(), 0
        settings = self.settings

        def deliver(scope: Scope, copy: ScopeCopy) -> None:
            redis.absorb(
                scope,
                copy,
                scratch_cap=settings.working_memory_max_items_per_session,
                keep_checkpoints=settings.working_memory_max_checkpoints,
                now=now,
            )

        try:
            for scope in self.sqlite.held_scopes():
                if self.sqlite.hand_over(scope, now, functools.partial(deliver, scope)) is None:
                    break
                moved += 1
        except BackendDown as exc:
            self._fall_back(redis, exc)
        except AppError as exc:  # the database cannot say: what is left there moves at the next sweep
            log.warning("working memory: could not move the database's working memory to Redis (%s)", exc.message)
        if moved:
            log.warning(
                "working memory: moved the working memory of %d session scope(s) written to the database "
                "during the Redis outage to Redis",
                moved,
            )
        return moved

    # -- export and import (memory/working_transfer.py) ------------------------------------------

    def outside_database(self) -> bool:
        """True while working memory lives in Redis, not in the database's tables."""
        self._follow_the_store()
        return self.backend is not self.sqlite

    def on_fallback(self) -> bool:
        """Is the store configured for Redis but serving working memory from the database, as this
        process last looked (``outside_database`` did, as the import began)? Asked inside a
        replace import's transaction, where it must not look again: a return to Redis would move
        working memory inside that transaction; ``record_redis_wipe`` checks the mark there."""
        return self.configured == "redis" and self.backend is self.sqlite

    def await_followers(self) -> None:
        """Before a replace import's transaction on the fallback: wait until every process of
        every node has followed the store onto the database (FOLLOW_SECONDS after this process
        saw the fallback begin, plus IN_FLIGHT_SECONDS for a write already on its way). Until then
        a process that has not looked at the mark may still write to Redis, and the import's
        emptying of Redis at the heal would delete that write, made after the import."""
        mark = self._read_mark()
        if mark is None:
            return  # not on the fallback (any more): the import's transaction refuses
        if mark != self._mark_seen or self._fell_back_at is None:  # a fallback this process had not seen
            self._fell_back_at, self._mark_seen = time.monotonic(), mark
        said = False
        while (left := self._followers_due() - time.monotonic()) > 0:
            if not said:
                log.warning(
                    "working memory: a replace import waits %.1f s for every process to follow the fallback "
                    "(until then one may still write to Redis, which the import empties at the heal)",
                    left,
                )
                said = True
            self.pause(min(left, 0.25))

    def check_followers(self, mark: dict[str, str]) -> None:
        """In a replace import's transaction, which found the store's fallback ``mark``: refuse
        unless every process has followed it (``await_followers`` waited for the mark this
        process had seen; a different one is a new fallback, begun since).

        :raise Unavailable: a process may still write to Redis (Retry-After: the seconds left)."""
        if mark != self._mark_seen or self._fell_back_at is None:
            self._fell_back_at, self._mark_seen = time.monotonic(), mark
        left = self._followers_due() - time.monotonic()
        if left > 0:
            raise Unavailable(
                f"working memory fell back to the database {mark.get('since')} and other processes may still "
                f"write to Redis for {left:.1f} s (each follows within {FOLLOW_SECONDS:g} s); a replace import "
                "now would delete what they write after it when the fallback is healed. Nothing was imported: retry",
                code=errors.WORKING_MEMORY_UNAVAILABLE,
                retry_after=max(1, math.ceil(left)),
            )

    def _followers_due(self) -> float:
        """When every process will have followed the fallback this process is on (monotonic)."""
        return (self._fell_back_at or 0.0) + FOLLOW_SECONDS + IN_FLIGHT_SECONDS

    def check_still_on_fallback(self, tx: Any) -> None:
        """In an import's transaction writing working memory to the database's tables while this
        process serves it from the fallback (merge or skip; a replace: ``record_redis_wipe``).

        :raise Unavailable: the fallback was healed before this process followed (it looks every
            FOLLOW_SECONDS): working memory lives in Redis again, where a retry writes it."""
        if not self.sqlite.follows_mark or SqliteBackend.marked(tx):
            return
        self.look_again()
        raise Unavailable(
            f"the working-memory fallback was healed meanwhile: working memory is kept in {self.where()} again, "
            "not in the database this import was about to write it to. Nothing was imported: retry it (it then "
            "writes the working memory to Redis)",
            code=errors.WORKING_MEMORY_UNAVAILABLE,
            retry_after=1,
        )

    def look_again(self) -> None:
        """Read the store's fallback mark at the next call, not FOLLOW_SECONDS after the last read."""
        self._mark_read_at = None

    def export_entries(self, now: float, keep_agent: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The export's entries of the working memory Redis holds (none once on the fallback:
        the database's tables are then read with the rest of the export)."""

        def read(backend: Any) -> list[dict[str, Any]]:
            if backend is self.sqlite:
                return []
            out = []
            for scope in backend.held_scopes():
                copy = backend.copy_scope(scope, now) if keep_agent(scope.agent) else None
                if copy is not None and not copy.empty:
                    out.append(_entry_of(scope, copy))
            return out

        return self.run(read)

    def import_entries(self, entries: list[dict[str, Any]], strategy: str, *, wipe: bool) -> None:
        """Write an import's working-memory entries where working memory lives; ``wipe`` (a
        ``replace``) empties every scope first. If Redis fails, the store falls back and they
        go to the database, where working memory then lives."""
        now = self.rt.clock.time()
        backend = self.backend
        if backend is not self.sqlite:
            try:
                if wipe:
                    backend.wipe_all()
                for entry in entries:
                    backend.load(entry_scope(entry), entry_copy(entry), keep_ours=strategy == "skip", now=now)
                return
            except BackendDown as exc:
                self._fall_back(backend, exc)
        with self.rt.db.transaction("import_working") as tx:
            for entry in entries:
                working_transfer.write(tx, entry, strategy, now=now, stamp=self.rt.clock.iso())

    # -- moving working memory to another store (``agentmemory migrate``) ------------------------

    def require_reachable(self, whose: str, hint: str) -> None:
        """Raise unless working memory can be read and written where the settings say it lives:
        an admin command that moves it must not take the database's tables for all of it.

        :raise Conflict: the store is on the Redis fallback (part of it in each place).
        :raise Unavailable: Redis does not answer (``hint`` says what to do)."""
        if self.configured != "redis" or not self.using_fallback:
            return
        mark = self.sqlite.fallback_mark()
        if mark is not None:
            raise Conflict(
                f"the {whose}'s working memory is on the database fallback since {mark.get('since')} "
                f"({mark.get('reason')}): part of it is in the database, part in {self.where()}. Once Redis answers, "
                "heal the fallback (POST /agentmemory/diagnostics/heal) and run this again; or set "
                "WORKING_MEMORY_BACKEND=sqlite to take only the database's part"
            )
        raise Unavailable(
            f"the {whose}'s working memory is kept in {self.where()}, which does not answer "
            f"({self.fallback_reason}); nothing was migrated. {hint}",
            code=errors.WORKING_MEMORY_UNAVAILABLE,
        )

    def shares_keys_with(self, other: WorkingMemory) -> bool:
        """Do both keep working memory in the same Redis keys (one server, database and prefix,
        however the URLs are spelled)?"""
        mine, theirs = self.backend, other.backend
        if not (isinstance(mine, RedisBackend) and isinstance(theirs, RedisBackend)):
            return False
        try:
            return mine.identity() == theirs.identity()
        except (BackendDown, AppError) as exc:
            raise Unavailable(f"Redis failed: {reason_of(exc)}", code=errors.WORKING_MEMORY_UNAVAILABLE) from None

    def held_entries(self, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the entries Redis holds, the entries the database's tables hold), every agent's; a
        Redis failure raises instead of falling back, so nothing is left out unsaid.

        :raise Unavailable: Redis failed."""
        stored = list(working_transfer.export_entries(self.rt.db.reader(), now, lambda _agent: True))
        backend = self.backend
        if backend is self.sqlite:
            return [], stored
        try:
            copies = [(scope, backend.copy_scope(scope, now)) for scope in backend.held_scopes()]
        except (BackendDown, AppError) as exc:
            raise Unavailable(
                f"reading working memory from {self.where()} failed: {reason_of(exc)}",
                code=errors.WORKING_MEMORY_UNAVAILABLE,
            ) from None
        return [_entry_of(scope, copy) for scope, copy in copies if not copy.empty], stored

    def write_entries(self, entries: list[dict[str, Any]], now: float) -> None:
        """Write entries where working memory lives (``merge``: theirs win, checkpoints added by
        id, so writing them again doubles nothing): one database transaction, or one Redis
        transaction a scope.

        :raise Unavailable: Redis failed, naming how many scopes were written."""
        backend = self.backend
        if backend is self.sqlite:
            with self.rt.db.transaction("migrate_working") as tx:
                for entry in entries:
                    working_transfer.write(tx, entry, "merge", now=now, stamp=self.rt.clock.iso())
            return
        for done, entry in enumerate(entries):
            try:
                backend.load(entry_scope(entry), entry_copy(entry), keep_ours=False, now=now)
            except (BackendDown, AppError) as exc:
                raise Unavailable(
                    f"writing working memory to {self.where()} failed after {done} of {len(entries)} session "
                    f"scope(s): {reason_of(exc)}",
                    code=errors.WORKING_MEMORY_UNAVAILABLE,
                ) from None

    # -- a replace import on Redis: staged, then swapped in once the records are committed ------
    # staged.py does it; these are the entry points memory/transfer.py calls (see ReplaceStages).

    def where(self) -> str:
        """Where working memory lives, as shown (the password hidden)."""
        if self.configured != "redis":
            return "the database"
        prefix = self.settings.working_memory_redis_prefix
        return f"Redis at {without_password(self.settings.redis_url)} (prefix {prefix})"

    def stage_replace(self, entries: list[dict[str, Any]]) -> str | None:
        return self.stages.stage_replace(entries)

    def open_stage(self) -> str | None:
        return self.stages.open_stage()

    def add_to_stage(self, stage_id: str, entries: list[dict[str, Any]]) -> None:
        self.stages.add_to_stage(stage_id, entries)

    def seal_stage(self, stage_id: str) -> None:
        self.stages.seal_stage(stage_id)

    def record_swap(self, tx: Any, stage_id: str) -> list[str]:
        return self.stages.record_swap(tx, stage_id)

    def record_redis_wipe(self, tx: Any) -> None:
        self.stages.record_redis_wipe(tx)

    def discard_stage(self, stage_id: str) -> None:
        self.stages.discard_stage(stage_id)

    def finish_swap(self, stage_id: str, superseded: list[str]) -> None:
        self.stages.finish_swap(stage_id, superseded)

    def complete_swaps(self) -> int:
        return self.stages.complete_swaps()

    def _audit(self, operation: str, scope: Scope, message: str) -> None:
        """Audit row for a destructive Redis operation (SQLite ones audit in their transaction)."""
        with self.rt.db.transaction(f"working_{operation}", agent_id=scope.agent) as tx:
            tx.record_change("working/" + "/".join(scope.key), message)

    def sweep(self) -> int:
        """Delete expired keys (reads already ignore them); returns how many were removed."""
        now = self.rt.clock.time()
        removed = self.sqlite.sweep(now)
        if self.backend is not self.sqlite:
            removed += self.run(lambda b: b.sweep(now) if b is not self.sqlite else 0)
        backend = self.backend
        if isinstance(backend, RedisBackend) and self._may_mark:
            self.complete_swaps()  # a replace import whose swap Redis failed
            self.stages.drop_stale_stages(backend, now)
            # Written to the database by a process that had not yet followed the heal.
            self._move_to_redis(backend)
        return removed

    def health(self) -> dict[str, Any]:
        self._follow_the_store()  # a process with no working-memory call yet reports the store's state
        body: dict[str, Any] = {
            "status": "degraded" if self.using_fallback else "ok",
            "backend": self.backend.name,
            "configuredBackend": self.configured,
            "usingFallback": self.using_fallback,
        }
        if self.configured == "redis":
            body["redisUrl"] = without_password(self.settings.redis_url)
            body |= self.errors.fields()
        if self.using_fallback:
            body.update(
                fallbackReason=self.fallback_reason,
                fallbackSince=self.fallback_since,
                recovery=HEAL_HINT,
            )
        return body

    def diagnose(self) -> list[dict[str, Any]]:
        return self._diagnose_backend() + self.stages.diagnose()

    def _diagnose_backend(self) -> list[dict[str, Any]]:
        self._follow_the_store()
        check = {"name": "working_memory_backend", "category": "working_memory", "fixable": False}
        if self.configured == "sqlite":
            return [{**check, "status": "pass", "message": "SQLite backend (the server's database file)", "fix": None}]
        if not self.using_fallback:
            return [
                {
                    **check,
                    "status": "pass",
                    "message": f"Redis backend at {without_password(self.settings.redis_url)}",
                    "fix": None,
                },
                self.backend.eviction_check(),
            ]

        back = probe(self.settings.redis_url)
        where = without_password(self.settings.redis_url)
        if back:
            return [
                {
                    **check,
                    "status": "warn",
                    "message": f"Redis at {where} answers again, but working memory stays on the SQLite "
                    f"fallback (since {self.fallback_since}) until the fallback is healed",
                    "fix": HEAL_HINT,
                    "fixable": True,
                }
            ]
        return [
            {
                **check,
                "status": "fail",
                "message": f"WORKING_MEMORY_BACKEND=redis but Redis at {where} is unreachable "
                f"({self.fallback_reason}); using the SQLite fallback since {self.fallback_since}",
                "fix": "start Redis or correct REDIS_URL, then heal (POST /agentmemory/diagnostics/heal)",
            }
        ]

    def heal(self, dry_run: bool) -> list[dict[str, Any]]:
        """End the store's fallback once Redis answers: this process returns to Redis now, every
        other one (every node's) within FOLLOW_SECONDS."""
        if self.configured != "redis" or not probe(self.settings.redis_url):
            return []
        self.look_again()  # heal what the store is in, not what this process last saw
        self._follow_the_store()
        if not self.using_fallback:
            return self.stages.heal(dry_run)
        detail = {"name": "working_memory_backend", "category": "working_memory", "wouldFix": 1}
        if dry_run:
            return [{**detail, "fixed": 0}]
        self._end_the_fallback()
        self.look_again()
        self._follow_the_store()
        return [{**detail, "fixed": 0 if self.using_fallback else 1, "movedScopes": self.moved_at_return}]

    def _end_the_fallback(self) -> None:
        """Remove the store's fallback mark, once what replace imports left to swap in on Redis is
        (one made on the fallback empties it): while the mark holds, every process serves from
        the database, so emptying Redis deletes nothing written since. Then what Redis holds of
        the scopes waiting in the database is copied (``hold_for_return``): a key a process back
        on Redis writes before its scope moves is newer than the moved one and stays. The removal
        is refused while a swap waits (an import made on the fallback committed meanwhile: tried again);
        if Redis fails a swap, the store stays on the fallback. It is refused too while a scope waits
        in the database that was not copied (first written there after the listing): that one is
        copied and the removal tried again. After the removal no process writes to the database
        (``SqliteBackend._tx`` refuses), so every scope that will move has its copy."""
        try:
            redis = RedisBackend(self.settings.redis_url, self.settings.working_memory_redis_prefix, audit=self._audit)
        except BackendDown as exc:
            log.warning("working memory: the fallback stays: Redis stopped answering (%s)", reason_of(exc))
            return
        heal_id, copied = uuid.uuid4().hex, set[Scope]()
        try:
            for _attempt in range(END_ATTEMPTS):
                if self.stages.complete_swaps(redis):
                    copied = set()  # a swap emptied Redis: what was copied before it is gone
                # After the swaps (they empty Redis), before any process serves from Redis again.
                waiting = [scope for scope in self.sqlite.held_scopes() if scope not in copied]
                redis.hold_for_return(waiting, heal_id)
                copied.update(waiting)
                if self.sqlite.clear_fallback_mark(copied):
                    return
            swaps_wait = bool(self.sqlite.pending_swaps())
        except BackendDown as exc:
            log.warning("working memory: the fallback stays: Redis stopped answering (%s)", reason_of(exc))
            return
        finally:
            redis.close()
        if swaps_wait:
            log.warning(
                "working memory: the fallback stays: a replace import's working memory could not be swapped in on "
                "Redis (diagnose: working_memory_import_swap); heal again once it can"
            )
        else:
            log.warning(
                "working memory: the fallback stays: new sessions kept being written to the database while the heal "
                "copied what Redis holds of them (%d tries); heal again",
                END_ATTEMPTS,
            )

    def close(self) -> None:
        if self.backend is not self.sqlite:
            self.backend.close()
