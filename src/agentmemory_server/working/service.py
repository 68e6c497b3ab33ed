"""The ``working_memory`` subsystem: it picks a backend and falls back loudly.

With ``WORKING_MEMORY_BACKEND=redis`` working memory lives in Redis; if Redis cannot be reached, at
start-up or later, the whole store (every process sharing the database) serves it from the SQLite
backend (the server's database) until an operator heals the fallback once Redis answers, and what
was written to the database meanwhile then moves to Redis. fallback.py (``RedisFallback``) keeps
that life cycle: falling back, following the store's mark, returning to Redis and the heal's end of
the fallback; its module docstring says why each step is as it is.

A ``replace`` import is all or nothing for working memory as for the records, although Redis takes
no part in the database's transaction: its working memory is staged in Redis, then swapped in after
the records' commit. staged.py (``ReplaceStages``) does it.

``WorkingMemory`` owns the active backend both work on (it changes on a fallback or a return to
Redis), runs every operation on it (falling back when Redis fails) and is the entry point for the
tools (tools.py), memory/transfer.py and transfer_import.py (export, import) and ``agentmemory
migrate``, the sweep, health, diagnose and heal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Conflict, LastError, Unavailable
from agentmemory_server.memory import working_transfer
from agentmemory_server.storage.urls import without_password
from agentmemory_server.working.fallback import HEAL_HINT, RedisFallback
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
from agentmemory_server.working.redis_backend import RedisBackend
from agentmemory_server.working.redis_keys import probe
from agentmemory_server.working.sqlite_backend import SqliteBackend
from agentmemory_server.working.staged import ReplaceStages

log = logging.getLogger("agentmemory.working")


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
        self.fallback = RedisFallback(self)  # falling back, following the store's mark, the return
        self.stages = ReplaceStages(self)  # a replace import's working memory, staged then swapped in
        # A server process's write to the database's working memory checks the store's mark (the
        # fallback may have been healed before this process followed: it then writes to Redis).
        self.sqlite.follows_mark = self.configured == "redis" and self.fallback.may_mark
        if self.configured == "redis":
            self._connect_redis()
            self.fallback.follow_the_store()
        rt.every(SWEEP_SECONDS, "working_memory_sweep", self.sweep)

    def open_redis(self) -> RedisBackend:
        """A new connection to the configured Redis.

        :raise BackendDown: Redis does not answer."""
        return RedisBackend(self.settings.redis_url, self.settings.working_memory_redis_prefix, audit=self._audit)

    def _connect_redis(self) -> None:
        try:
            self.backend = self.open_redis()
            log.info("working memory: Redis backend at %s", without_password(self.settings.redis_url))
        except BackendDown as exc:
            self.fallback.fall_back(None, exc)

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
        self.fallback.follow_the_store()
        try:
            return self._run_on(self.backend, op)
        except FallbackEnded:
            self.fallback.follow_now()
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
            self.fallback.fall_back(backend, exc)
            return op(self.sqlite)

    # -- export and import (memory/working_transfer.py) ------------------------------------------

    def outside_database(self) -> bool:
        """True while working memory lives in Redis, not in the database's tables."""
        self.fallback.follow_the_store()
        return self.backend is not self.sqlite

    def on_fallback(self) -> bool:
        """Is the store configured for Redis but serving working memory from the database, as this
        process last looked (``outside_database`` did, as the import began)? Asked inside a
        replace import's transaction, where it must not look again: a return to Redis would move
        working memory inside that transaction; ``record_redis_wipe`` checks the mark there."""
        return self.configured == "redis" and self.backend is self.sqlite

    # An import on the fallback: these are RedisFallback's (fallback.py), named here for
    # memory/working_transfer.py and staged.py.

    def await_followers(self) -> None:
        self.fallback.await_followers()

    def check_followers(self, mark: dict[str, str]) -> None:
        self.fallback.check_followers(mark)

    def check_still_on_fallback(self, tx: Any) -> None:
        self.fallback.check_still_on_fallback(tx)

    def look_again(self) -> None:
        self.fallback.look_again()

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
                self.fallback.fall_back(backend, exc)
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
    # staged.py does it; these are the entry points memory/transfer_import.py calls (see ReplaceStages).

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
        if isinstance(backend, RedisBackend) and self.fallback.may_mark:
            self.complete_swaps()  # a replace import whose swap Redis failed
            self.stages.drop_stale_stages(backend, now)
            # Written to the database by a process that had not yet followed the heal.
            self.fallback.move_to_redis(backend)
        return removed

    def health(self) -> dict[str, Any]:
        self.fallback.follow_the_store()  # a process with no working-memory call yet reports the store's state
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
        self.fallback.follow_the_store()
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
        self.fallback.look_again()  # heal what the store is in, not what this process last saw
        self.fallback.follow_the_store()
        if not self.using_fallback:
            return self.stages.heal(dry_run)
        detail = {"name": "working_memory_backend", "category": "working_memory", "wouldFix": 1}
        if dry_run:
            return [{**detail, "fixed": 0}]
        self.fallback.end_the_fallback()
        self.fallback.look_again()
        self.fallback.follow_the_store()
        return [{**detail, "fixed": 0 if self.using_fallback else 1, "movedScopes": self.fallback.moved_at_return}]

    def close(self) -> None:
        if self.backend is not self.sqlite:
            self.backend.close()
