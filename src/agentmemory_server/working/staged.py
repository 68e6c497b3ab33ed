"""A ``replace`` import's working memory on Redis: staged, then swapped in after the records' commit.

A ``replace`` import is all or nothing for working memory as for the records, although Redis takes
no part in the database's transaction: the file's working memory is first written to Redis under
staged keys no request reads (``stage_replace``; a Redis failure there changes nothing anywhere),
the records' transaction records that the stage must be swapped in (``record_swap``: a row in the
database, committed with the records), and after the commit one WATCH-guarded MULTI/EXEC deletes
every scope and renames the stage's keys into their place (``finish_swap``). If the transaction
fails, the stage is deleted and Redis keeps the old working memory. If Redis fails between the
commit and the swap, the import says so, working memory is still the old one (never a mix) and the
stage waits in Redis: the sweep or a heal swaps it in once Redis answers (``complete_swaps``),
before anything written to the database during an outage moves there; diagnose reports it meanwhile.
A replace import while the store is on the fallback records an empty stage (``record_redis_wipe``):
Redis's old working memory is emptied by the heal, or the heal would merge it back. That wipe must
not empty anything written to Redis after the import, so it is done while every process still
serves from the database: the import records it only if its own transaction finds the store's
fallback mark (else working memory is back in Redis: the import is refused, to retry), and the
heal swaps every waiting stage in before it removes the mark, in a transaction that refuses while
one waits (``SqliteBackend.clear_fallback_mark``); a process returning to Redis swaps in what is
left before it serves from there.

``ReplaceStages`` does this for the ``working_memory`` subsystem (service.py), which owns the
active backend (it changes on a fallback or a return to Redis) and delegates to it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Unavailable
from agentmemory_server.working.model import BackendDown, entry_copy, entry_scope, reason_of
from agentmemory_server.working.redis_backend import RedisBackend
from agentmemory_server.working.sqlite_backend import SqliteBackend

if TYPE_CHECKING:
    from agentmemory_server.working.service import WorkingMemory

log = logging.getLogger("agentmemory.working")

# A stage (a replace import's working memory, written aside) older than this that no committed
# import waits for is left behind and deleted by the sweep. An import writes its stage, then its
# transaction commits within seconds; an hour is far past any.
STAGE_TTL_SECONDS = 3600.0


class ReplaceStages:
    """The stages of replace imports: written aside, recorded with the records, swapped in."""

    def __init__(self, working: WorkingMemory):
        # The subsystem, not its backend: the backend it serves from changes on a fallback.
        self.working = working

    # -- writing a stage, before the records' transaction ----------------------------------------

    def stage_replace(self, entries: list[dict[str, Any]]) -> str | None:
        """Write a replace import's working memory to Redis under staged keys, where no request
        reads it, before the records' transaction; returns the stage's id (None: working memory
        lives in the database, which the records' transaction replaces itself).

        :raise Unavailable: Redis failed; nothing was imported (the stage is deleted)."""
        stage_id = self.open_stage()
        if stage_id is not None:
            self.add_to_stage(stage_id, entries)
            self.seal_stage(stage_id)
        return stage_id

    def open_stage(self) -> str | None:
        """Begin a stage that ``add_to_stage`` fills a part at a time (a JSON Lines replace import,
        batch by batch) and ``seal_stage`` closes; None: working memory lives in the database.

        :raise Unavailable: Redis failed; nothing was imported."""
        backend = self.working.backend
        if backend is self.working.sqlite:
            return None
        stage_id = uuid.uuid4().hex
        self._staging(backend, stage_id, lambda: backend.begin_stage(stage_id, self.working.rt.clock.time()))
        return stage_id

    def add_to_stage(self, stage_id: str, entries: list[dict[str, Any]]) -> None:
        """Write ``entries`` into the stage; its begin time is refreshed, so a long import's
        stage is never taken for one left behind (STAGE_TTL_SECONDS)."""
        backend = self._stage_backend(stage_id)
        view, now = backend.staged(stage_id), self.working.rt.clock.time()

        def load() -> None:
            backend.begin_stage(stage_id, now)
            for entry in entries:
                view.load(entry_scope(entry), entry_copy(entry), keep_ours=False, now=now)

        self._staging(backend, stage_id, load)

    def seal_stage(self, stage_id: str) -> None:
        """The stage is written whole: it is the working memory to swap in once the records commit."""
        backend = self._stage_backend(stage_id)
        self._staging(backend, stage_id, lambda: backend.seal_stage(stage_id, time.time_ns()))

    def _stage_backend(self, stage_id: str) -> RedisBackend:
        backend = self.working.backend
        if (
            backend is self.working.sqlite
        ):  # Redis failed meanwhile: what was staged goes with the sweep (no swap waits)
            raise self._stage_failed("the store fell back to the database meanwhile")
        return backend

    def _staging(self, backend: Any, stage_id: str, work: Callable[[], None]) -> None:
        try:
            work()
        except (BackendDown, AppError) as exc:
            self.discard(backend, stage_id)
            raise self._stage_failed(reason_of(exc)) from None

    def _stage_failed(self, reason: str) -> Unavailable:
        return Unavailable(
            f"Redis failed while the replace import's working memory was written aside "
            f"({self.working.where()}: {reason}); nothing was imported: the records and working memory are "
            "as they were",
            code=errors.WORKING_MEMORY_UNAVAILABLE,
        )

    # -- in the records' transaction, and after it -----------------------------------------------

    def record_swap(self, tx: Any, stage_id: str) -> list[str]:
        """In the records' transaction: once it commits, the stage must become the working memory
        (``pending_swaps`` survive a Redis failure right after the commit). Returns the stages of
        earlier imports this one supersedes."""
        return SqliteBackend.record_swap(tx, stage_id, self.working.rt.clock.iso())

    def record_redis_wipe(self, tx: Any) -> None:
        """In a replace import's transaction while the store is on the fallback: the database's
        working memory is replaced, but Redis still holds the old, which the heal would merge
        back. Recorded as an empty stage, swapped in by the heal before it ends the fallback.

        :raise Unavailable: the store is not on the fallback (any more): this process took it
            for on the fallback (it looks at the mark every FOLLOW_SECONDS), but a heal came
            first, or it is an admin command that cannot reach the servers' Redis. Emptying
            Redis later would delete what processes serving from it write after this import.
            Or the store fell back so lately that a process may not have followed it yet
            (``WorkingMemory.check_followers``; the import waited for that before it began)."""
        mark = SqliteBackend.mark_in(tx)
        if mark is None:
            self.working.look_again()
            where, there = self.working.where(), "not in the database this replace import was about to write it to"
            if self.working.rt.role == "tool":
                said = (
                    f"working memory is kept in {where}, which this command cannot reach "
                    f"({self.working.fallback_reason}), {there} (the servers are not on the fallback). Nothing was "
                    "imported: retry it where Redis answers (on the server)"
                )
            else:
                said = (
                    f"the working-memory fallback was healed meanwhile: working memory is kept in {where} again, "
                    f"{there}. Nothing was imported: retry it (it then replaces the working memory in Redis)"
                )
            raise Unavailable(
                said,
                code=errors.WORKING_MEMORY_UNAVAILABLE,
                retry_after=1,
            )
        # Emptying Redis at the heal must not delete what a process that had not yet followed the
        # fallback writes there after this import: it commits only once every process has.
        self.working.check_followers(mark)
        # The stages of earlier imports it supersedes are deleted by the sweep once Redis answers.
        SqliteBackend.record_swap(tx, "empty-" + uuid.uuid4().hex, self.working.rt.clock.iso(), time.time_ns())

    def discard_stage(self, stage_id: str) -> None:
        """The records' transaction failed: the stage goes, Redis keeps the old working memory."""
        self.discard(self.working.backend, stage_id)

    def discard(self, backend: Any, stage_id: str) -> None:
        if backend is self.working.sqlite:
            return
        try:
            backend.discard(stage_id)
        except (BackendDown, AppError) as exc:  # invisible to every reader; only takes room
            log.warning(
                "working memory: could not delete the staged keys %s:staged:%s* (%s)",
                self.working.settings.working_memory_redis_prefix,
                stage_id,
                reason_of(exc),
            )

    def finish_swap(self, stage_id: str, superseded: list[str]) -> None:
        """After the records' commit: swap the stage in (one Redis transaction).

        :raise Unavailable: Redis failed; the records are replaced, working memory is still the
            old one and the new one waits in Redis, swapped in as soon as Redis answers."""
        backend = self.working.backend
        try:
            if backend is self.working.sqlite:
                raise BackendDown(self.working.fallback_reason or "on the database fallback")
            outcome = backend.swap(stage_id)
        except (BackendDown, AppError) as exc:
            raise Unavailable(
                f"the records were replaced, but Redis failed before the imported working memory replaced the old "
                f"one ({self.working.where()}: {reason_of(exc)}). Working memory is still the old one; the imported "
                f"one is kept aside in Redis (stage {stage_id}) and replaces it as soon as Redis answers: the "
                "working_memory_sweep tries every minute, POST /agentmemory/diagnostics/heal at once",
                code=errors.WORKING_MEMORY_UNAVAILABLE,
            ) from None
        self._swap_done(stage_id, outcome, "")
        for old in superseded:
            self.discard(backend, old)

    def _swap_done(self, stage_id: str, outcome: str, since: str) -> None:
        if outcome == "missing":
            log.error(
                "working memory: the working memory of the replace import of %s (stage %s) is gone from Redis "
                "(%s lost its data): the records are the import's, working memory is what Redis holds now",
                since or "now",
                stage_id,
                self.working.where(),
            )
        try:
            self.working.sqlite.clear_swap(stage_id)
        except AppError as exc:  # the swap is done; the next sweep finds it done and clears it
            log.warning("working memory: could not clear the finished swap %s (%s)", stage_id, exc.message)

    # -- swaps Redis failed, and stages left behind: the sweep, heal and diagnose ----------------

    def complete_swaps(self, backend: RedisBackend | None = None) -> int:
        """Swap in the working memory of replace imports whose swap Redis failed, or made on the
        fallback (an empty stage), on ``backend`` (default: the one working memory is served
        from); returns how many were swapped. Before anything written to the database during an
        outage moves to Redis, so that lands on the imported working memory, not on the old; and
        by a heal before the fallback ends (``WorkingMemory.heal``)."""
        backend = self.working.backend if backend is None else backend
        if not isinstance(backend, RedisBackend):
            return 0
        done = 0
        try:
            pending = self.working.sqlite.pending_swaps()
        except AppError:
            return 0
        for mark in pending:
            try:
                outcome = backend.swap(mark["stage"], mark.get("emptySeq"))
            except (BackendDown, AppError) as exc:
                log.warning("working memory: the pending swap %s failed again (%s)", mark["stage"], reason_of(exc))
                return done
            self._swap_done(mark["stage"], outcome, mark.get("since", ""))
            if outcome == "swapped":
                log.warning(
                    "working memory: the replace import of %s is complete: its working memory replaced the old one",
                    mark.get("since"),
                )
                done += 1
        return done

    def drop_stale_stages(self, backend: RedisBackend, now: float) -> None:
        """The stages no committed import waits for, begun over STAGE_TTL_SECONDS ago, go: an
        import whose process died before its transaction ended, or whose stage could not be
        deleted because Redis failed then, or one a later import superseded while Redis was down."""
        try:
            waiting = {mark["stage"] for mark in self.working.sqlite.pending_swaps()}
            left = [s for s in backend.stages_begun_before(now - STAGE_TTL_SECONDS) if s not in waiting]
            for stage_id in left:
                backend.discard(stage_id)
        except (BackendDown, AppError) as exc:
            log.warning("working memory: could not look for stages left behind (%s)", reason_of(exc))
            return
        if left:
            log.warning(
                "working memory: deleted %d staged replace import(s) left behind (no import waits for them)",
                len(left),
            )

    def diagnose(self) -> list[dict[str, Any]]:
        """A failing check while replace imports wait for their working memory to be swapped in."""
        try:
            waiting = self.working.sqlite.pending_swaps() if self.working.configured == "redis" else []
        except AppError:
            waiting = []
        if not waiting:
            return []
        return [
            {
                "name": "working_memory_import_swap",
                "category": "working_memory",
                "status": "fail",
                "message": f"{len(waiting)} replace import(s) (since {waiting[0].get('since')}) replaced the "
                "records but not yet working memory: Redis failed before the swap",
                "fix": "once Redis answers, POST /agentmemory/diagnostics/heal (or wait for the minute's sweep)",
                "fixable": True,
            }
        ]

    def heal(self, dry_run: bool) -> list[dict[str, Any]]:
        """Replace imports whose working memory waits in Redis to be swapped in."""
        try:
            waiting = len(self.working.sqlite.pending_swaps())
        except AppError:
            return []
        if not waiting:
            return []
        detail = {"name": "working_memory_import_swap", "category": "working_memory", "wouldFix": waiting}
        return [{**detail, "fixed": 0 if dry_run else self.complete_swaps()}]
