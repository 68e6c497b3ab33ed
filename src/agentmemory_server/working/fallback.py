"""The Redis fallback's life cycle, for the ``working_memory`` subsystem (service.py).

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

A replace import's swap empties every scope (staged.py), so the heal does the ones still waiting
before it removes the mark, and a returning process before it serves from Redis; a replace import
on the fallback begins only once every process has followed it (``await_followers``), so none
writes to Redis after it.

``RedisFallback`` is this, for one process: it switches the subsystem's active backend (which
``WorkingMemory`` owns and serves from) onto the database and back, and keeps what it needs to know
when (the last look at the mark, when this process saw the fallback begin).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Unavailable
from agentmemory_server.storage.urls import without_password
from agentmemory_server.working.model import BackendDown, Scope, ScopeCopy, reason_of
from agentmemory_server.working.redis_backend import RedisBackend
from agentmemory_server.working.sqlite_backend import SqliteBackend

if TYPE_CHECKING:
    from agentmemory_server.working.service import WorkingMemory

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


class RedisFallback:
    """One process's part in the store's fallback: falling back, following the store's mark,
    returning to Redis (moving what the database holds there), and the heal's end of it."""

    def __init__(self, working: WorkingMemory):
        # The subsystem, not its backend: this switches the backend the subsystem serves from.
        self.working = working
        self._lock = threading.Lock()
        self._following = threading.Lock()  # one thread of the process reads the mark and acts on it
        self._mark_read_at: float | None = None
        self.moved_at_return = 0  # scopes this process moved from the database when it last returned to Redis
        # An admin command (role "tool") run where Redis cannot be reached says nothing about the
        # servers' Redis: it serves from the database itself but does not move the store there.
        self.may_mark = working.rt.role != "tool"
        # When this process went onto the store's fallback (time.monotonic) and the mark it saw:
        # a replace import on the fallback waits until every other process has followed it.
        self._fell_back_at: float | None = None
        self._mark_seen: dict[str, str] | None = None
        self.pause = time.sleep

    # -- falling back --------------------------------------------------------------------------

    def fall_back(self, failed: Any, exc: Exception) -> None:
        working = self.working
        with self._lock:
            first = working.fallback_reason is None
            if first and not self.may_mark:
                working.fallback_reason = str(exc)[:300] or type(exc).__name__
                working.fallback_since = working.rt.clock.iso()
                log.warning(
                    "working memory: Redis at %s is unavailable (%s); this command reads and writes the "
                    "database's working memory only (the servers' store is not moved to the fallback)",
                    without_password(working.settings.redis_url),
                    working.fallback_reason,
                )
            elif first:
                working.fallback_reason = str(exc)[:300] or type(exc).__name__
                working.fallback_since = working.rt.clock.iso()
                log.error(
                    "working memory: Redis at %s is unavailable (%s); using the SQLite "
                    "fallback (the server's database) for every process sharing it, until "
                    "POST /agentmemory/diagnostics/heal once Redis answers. Working memory written "
                    "to Redis before now is not visible until then.",
                    without_password(working.settings.redis_url),
                    working.fallback_reason,
                )
            if first:
                self._fell_back_at = time.monotonic()
            working.backend = working.sqlite
            if first:
                working.errors.failed(working.fallback_reason or "", working.fallback_since)
        if failed is not None:
            failed.close()
        if first:
            self._mark_the_store()
            self._mark_seen = self._read_mark()

    def _read_mark(self) -> dict[str, str] | None:
        try:
            return self.working.sqlite.fallback_mark()
        except AppError:
            return None

    def _mark_the_store(self) -> None:
        """Tell the other processes (and those started later) to serve from the database too."""
        if not self.may_mark:
            return
        working = self.working
        try:
            working.sqlite.mark_fallback(
                working.fallback_since or working.rt.clock.iso(), working.fallback_reason or ""
            )
        except AppError as exc:  # the database is down too: nothing is served from it anyway
            log.warning("working memory: could not record the fallback in the database (%s)", exc.message)

    # -- following the store's mark ------------------------------------------------------------

    def follow_the_store(self) -> None:
        """Serve from where the store's mark says working memory is (read at most every
        FOLLOW_SECONDS): onto the database when another process fell back, back to Redis when
        the fallback was healed."""
        if self.working.configured != "redis":
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

    def follow_now(self) -> None:
        """Read the store's mark and act on it now, waiting for a thread of this process that is
        doing so (returning to Redis, say) rather than going on where the process was."""
        with self._following:
            self._look_at_the_mark(time.monotonic())

    def look_again(self) -> None:
        """Read the store's fallback mark at the next call, not FOLLOW_SECONDS after the last read."""
        self._mark_read_at = None

    def _look_at_the_mark(self, now: float) -> None:
        """With ``_following`` held: follow the store's mark onto the database or back to Redis."""
        working = self.working
        try:
            self._mark_read_at = now
            mark = working.sqlite.fallback_mark()
            if mark is not None and working.backend is not working.sqlite:
                self._follow_fallback(mark)
            elif mark is None and working.backend is working.sqlite and self.may_mark:
                self._return_to_redis()
        except AppError:
            return  # the database cannot say: keep serving where we are

    def _follow_fallback(self, mark: dict[str, str]) -> None:
        working = self.working
        with self._lock:
            if working.backend is working.sqlite:
                return
            failed, working.backend = working.backend, working.sqlite
            self._fell_back_at, self._mark_seen = time.monotonic(), mark
            working.fallback_reason = mark.get("reason") or "another process found Redis unavailable"
            working.fallback_since = mark.get("since") or working.rt.clock.iso()
            working.errors.failed(working.fallback_reason, working.fallback_since)
        failed.close()
        log.error(
            "working memory: another process moved working memory to the SQLite fallback (the server's "
            "database) at %s (%s); this one follows it until POST /agentmemory/diagnostics/heal",
            working.fallback_since,
            working.fallback_reason,
        )

    # -- returning to Redis --------------------------------------------------------------------

    def _return_to_redis(self) -> None:
        working = self.working
        try:
            redis = working.open_redis()
        except BackendDown as exc:
            with self._lock:
                working.fallback_reason = str(exc)[:300] or type(exc).__name__
            self._mark_the_store()  # healed while Redis is down again: the store stays on the database
            # Processes that returned meanwhile follow this new fallback only from now on.
            self._fell_back_at, self._mark_seen = time.monotonic(), self._read_mark()
            return
        # Before this process serves from Redis (its other threads would at once): a swap empties
        # every scope, so it would delete what they wrote. The heal swapped them in already; this
        # finds those whose swap Redis failed without the store falling back.
        working.stages.complete_swaps(redis)
        with self._lock:
            working.backend, working.fallback_reason, working.fallback_since = redis, None, None
            working.errors.succeeded()
        log.info(
            "working memory: the fallback was healed; back on Redis at %s", without_password(working.settings.redis_url)
        )
        self.moved_at_return = self.move_to_redis(redis)

    def move_to_redis(self, redis: RedisBackend) -> int:
        """Move working memory held in the database to Redis, scope by scope; returns how many
        scopes moved. Stops when the store falls back again (the database is then where it lives)."""
        sqlite = self.working.sqlite
        now, moved = self.working.rt.clock.time(), 0
        settings = self.working.settings

        def deliver(scope: Scope, copy: ScopeCopy) -> None:
            redis.absorb(
                scope,
                copy,
                scratch_cap=settings.working_memory_max_items_per_session,
                keep_checkpoints=settings.working_memory_max_checkpoints,
                now=now,
            )

        try:
            for scope in sqlite.held_scopes():
                if sqlite.hand_over(scope, now, functools.partial(deliver, scope)) is None:
                    break
                moved += 1
        except BackendDown as exc:
            self.fall_back(redis, exc)
        except AppError as exc:  # the database cannot say: what is left there moves at the next sweep
            log.warning("working memory: could not move the database's working memory to Redis (%s)", exc.message)
        if moved:
            log.warning(
                "working memory: moved the working memory of %d session scope(s) written to the database "
                "during the Redis outage to Redis",
                moved,
            )
        return moved

    # -- a replace import or an import on the fallback -----------------------------------------

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
        if not self.working.sqlite.follows_mark or SqliteBackend.marked(tx):
            return
        self.look_again()
        raise Unavailable(
            f"the working-memory fallback was healed meanwhile: working memory is kept in {self.working.where()} "
            "again, not in the database this import was about to write it to. Nothing was imported: retry it (it "
            "then writes the working memory to Redis)",
            code=errors.WORKING_MEMORY_UNAVAILABLE,
            retry_after=1,
        )

    # -- the heal ------------------------------------------------------------------------------

    def _remove_the_mark(self, redis: RedisBackend) -> bool:
        """``end_the_fallback``'s tries (at most ``END_ATTEMPTS``): the waiting swaps, then the
        copy of what Redis holds of the scopes waiting in the database, then the removal.
        True once the mark is removed."""
        working = self.working
        heal_id, copied = uuid.uuid4().hex, set[Scope]()
        for _attempt in range(END_ATTEMPTS):
            if working.stages.complete_swaps(redis):
                copied = set()  # a swap emptied Redis: what was copied before it is gone
            # After the swaps (they empty Redis), before any process serves from Redis again.
            waiting = [scope for scope in working.sqlite.held_scopes() if scope not in copied]
            redis.hold_for_return(waiting, heal_id)
            copied.update(waiting)
            if working.sqlite.clear_fallback_mark(copied):
                return True
        return False

    def end_the_fallback(self) -> None:
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
        working = self.working
        try:
            redis = working.open_redis()
        except BackendDown as exc:
            log.warning("working memory: the fallback stays: Redis stopped answering (%s)", reason_of(exc))
            return
        try:
            if self._remove_the_mark(redis):
                return
            swaps_wait = bool(working.sqlite.pending_swaps())
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
