"""The SQLite working-memory backend: each operation is one transaction on the server's
database (``storage.WorkingStore``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import Conflict
from agentmemory_server.storage import codec
from agentmemory_server.storage.interfaces import Database
from agentmemory_server.working.model import (
    FallbackEnded,
    Scope,
    ScopeCopy,
    build_snapshot,
    capacity_error,
    checkpoint_meta,
    checkpoint_missing,
    restore_rows,
    restored,
)

# Where the database says working memory moved to it from Redis (fallback.py: every process and
# node follows this mark). A key no request can write (user keys never start with '_') in a scope
# no request can name (a request's project and session are never empty).
FALLBACK_SCOPE = ("", "", "")
FALLBACK_KEY = "_redis_fallback"
SWAP_KEY = "_redis_swap:"  # + a stage id: a replace import's working memory still to swap in on Redis


class SqliteBackend:
    """Working memory in the server's SQLite file (wm_* tables); every method is one
    transaction (reads: one statement or one read transaction)."""

    name = "sqlite"

    def __init__(self, database: Database, clock_iso: Callable[[], str]):
        self.db = database
        self._iso = clock_iso
        # Set by the subsystem when this is the fallback of a Redis store (a server process): a
        # write then checks, in its transaction, that the store is still on the fallback.
        self.follows_mark = False

    @contextmanager
    def _tx(self, operation: str, scope: Scope) -> Iterator[Any]:
        """A request's write transaction. As the fallback of a Redis store it refuses
        (``FallbackEnded``, nothing written) once the store's mark is gone: a process that has
        not yet followed the heal must not write a scope to the database that Redis holds no
        copy of (the heal copies only what waits in the database as it removes the mark, and
        writes are serialised, so every scope written before the removal has one)."""
        with self.db.transaction(f"working_{operation}", agent_id=scope.agent) as tx:
            if self.follows_mark and not self.marked(tx):
                raise FallbackEnded("the working-memory fallback was healed: working memory is in Redis again")
            yield tx

    def set_key(self, scope: Scope, key: str, value: str, expires_at: float | None, now: float, max_keys: int) -> bool:
        with self._tx("set", scope) as tx:
            exists = tx.working.kv_get(scope.key, key, now) is not None
            if not exists and tx.working.kv_count(scope.key, now) >= max_keys:
                raise capacity_error(scope, max_keys)
            tx.working.kv_put_many(scope.key, [(key, value, expires_at)], self._iso())
        return not exists

    def get_key(self, scope: Scope, key: str, now: float) -> tuple[str, float | None] | None:
        return self.db.reader().working.kv_get(scope.key, key, now)

    def items(
        self, scope: Scope, now: float, pattern: str | None = None, values: bool = True
    ) -> list[tuple[str, str | None, float | None]]:
        return self.db.reader().working.kv_items(scope.key, now, pattern=pattern, values=values)

    def delete_key(self, scope: Scope, key: str, now: float) -> bool:
        with self._tx("delete", scope) as tx:
            return tx.working.kv_delete(scope.key, key, now)

    def delete_glob(self, scope: Scope, pattern: str, now: float) -> list[str]:
        with self._tx("delete_pattern", scope) as tx:
            return tx.working.kv_delete_glob(scope.key, pattern, now)

    def clear_keys(self, scope: Scope, now: float) -> int:
        with self._tx("clear", scope) as tx:
            return tx.working.kv_clear(scope.key, now)

    def task_get(self, scope: Scope) -> tuple[dict, int] | None:
        row = self.db.reader().working.task_get(scope.key)
        return (json.loads(row[0]), row[1]) if row else None

    def task_write(self, scope: Scope, mutate: Callable[[dict | None, int], dict]) -> tuple[dict, int]:
        """Read-modify-write of the task under the write lock, committed by compare-and-set."""
        with self._tx("task", scope) as tx:
            row = tx.working.task_get(scope.key)
            current, version = (json.loads(row[0]), row[1]) if row else (None, 0)
            task = mutate(current, version)
            if not tx.working.task_put(scope.key, codec.dumps(task), version + 1, version if row else None):
                raise Conflict("the task state changed during the update; retry", code=errors.TASK_CONFLICT)
        return task, version + 1

    def task_clear(self, scope: Scope) -> bool:
        with self._tx("task_clear", scope) as tx:
            return tx.working.task_delete(scope.key)

    def scratch_append(self, scope: Scope, entry: dict, cap: int) -> tuple[int, int]:
        with self._tx("scratchpad_append", scope) as tx:
            return tx.working.scratch_append(scope.key, entry["content"], entry["timestamp"], cap)

    def scratch_get(self, scope: Scope, limit: int | None) -> list[dict]:
        rows = self.db.reader().working.scratch_list(scope.key, limit)
        return [{"content": c, "timestamp": t} for c, t in rows]

    def scratch_clear(self, scope: Scope) -> int:
        with self._tx("scratchpad_clear", scope) as tx:
            return tx.working.scratch_clear(scope.key)

    def checkpoint_create(
        self, scope: Scope, checkpoint_id: str, description: str, now: float, keep: int, created_at: str
    ) -> tuple[dict, list[str]]:
        # BEGIN IMMEDIATE holds the writer lock: no write lands between the reads below, so
        # the snapshot is one point in time.
        with self._tx("checkpoint_create", scope) as tx:
            task = tx.working.task_get(scope.key)
            snapshot = build_snapshot(
                tx.working.kv_items(scope.key, now),
                json.loads(task[0]) if task else None,
                task[1] if task else 0,
                [{"content": c, "timestamp": t} for c, t in tx.working.scratch_list(scope.key)],
            )
            meta = checkpoint_meta(checkpoint_id, description, created_at, snapshot)
            tx.working.checkpoint_insert(scope.key, checkpoint_id, codec.dumps(meta), codec.dumps(snapshot))
            pruned = tx.working.checkpoint_prune(scope.key, keep)
        return meta, pruned

    def checkpoint_restore(self, scope: Scope, checkpoint_id: str, now: float, max_keys: int) -> dict[str, Any]:
        with self._tx("checkpoint_restore", scope) as tx:
            found = tx.working.checkpoint_get(scope.key, checkpoint_id)
            if found is None:
                raise checkpoint_missing(checkpoint_id)
            meta, snapshot = json.loads(found[0]), json.loads(found[1])
            rows, dropped = restore_rows(snapshot, now, max_keys)
            tx.working.kv_clear(scope.key, now)
            tx.working.kv_put_many(scope.key, rows, self._iso())
            current = tx.working.task_get(scope.key)
            tx.working.task_delete(scope.key)
            version = None
            if snapshot["task"] is not None:
                # A new version number (never the snapshot's) so a stale expectedVersion
                # taken before the restore cannot match by accident.
                version = max(current[1] if current else 0, snapshot["taskVersion"]) + 1
                tx.working.task_put(scope.key, codec.dumps(snapshot["task"]), version, None)
            tx.working.scratch_clear(scope.key)
            tx.working.scratch_put_many(scope.key, [(e["content"], e["timestamp"]) for e in snapshot["scratchpad"]])
            tx.record_change(
                "working/" + "/".join(scope.key), f"working memory of {scope.session!r} restored to {checkpoint_id}"
            )
        return restored(meta, rows, dropped, snapshot, version)

    def checkpoint_list(self, scope: Scope) -> list[dict]:
        return [json.loads(meta) for _seq, meta in self.db.reader().working.checkpoint_list(scope.key)]

    def checkpoint_delete(self, scope: Scope, checkpoint_id: str) -> bool:
        with self._tx("checkpoint_delete", scope) as tx:
            return tx.working.checkpoint_delete(scope.key, checkpoint_id)

    def counts(self, scope: Scope, now: float) -> dict[str, int]:
        return self.db.reader().working.counts(scope.key, now)

    def sweep(self, now: float) -> int:
        with self.db.transaction("working_sweep") as tx:
            return tx.working.kv_sweep(now)

    def session_scopes(self, session: str) -> list[Scope]:
        return [Scope(p, a, session) for p, a in self.db.reader().working.session_scopes(session)]

    def held_scopes(self) -> list[Scope]:
        """Every scope with working memory in the database (the fallback's mark is not one)."""
        return [Scope(*key) for key in self.db.reader().working.held_scopes() if key != FALLBACK_SCOPE]

    def hand_over(self, scope: Scope, now: float, deliver: Callable[[ScopeCopy], None]) -> ScopeCopy | None:
        """Give the scope's working memory to ``deliver`` and remove it from the database, in one
        transaction: if ``deliver`` raises, nothing is removed. Refused (None, nothing moves)
        while the store is on the fallback: then the database is where working memory lives."""
        with self.db.transaction("working_move_to_redis", agent_id=scope.agent) as tx:
            if self.marked(tx):
                return None
            task = tx.working.task_get(scope.key)
            checkpoints = []
            for _seq, meta in tx.working.checkpoint_list(scope.key):
                checkpoint_id = json.loads(meta)["checkpointId"]
                found = tx.working.checkpoint_get(scope.key, checkpoint_id)
                if found is not None:
                    checkpoints.append((checkpoint_id, found[0], found[1]))
            copy = ScopeCopy(
                keys=[(k, v, e) for k, v, e in tx.working.kv_items(scope.key, now) if v is not None],
                task=(task[0], task[1]) if task else None,
                scratch=[{"content": c, "timestamp": t} for c, t in tx.working.scratch_list(scope.key)],
                checkpoints=checkpoints,
            )
            deliver(copy)
            tx.working.kv_clear(scope.key, now)
            tx.working.task_delete(scope.key)
            tx.working.scratch_clear(scope.key)
            for checkpoint_id, _meta, _snapshot in checkpoints:
                tx.working.checkpoint_delete(scope.key, checkpoint_id)
        return copy

    def fallback_mark(self) -> dict[str, str] | None:
        """``{since, reason}`` of the fallback every process must follow, or None."""
        row = self.db.reader().working.kv_get(FALLBACK_SCOPE, FALLBACK_KEY, 0.0)
        return json.loads(row[0]) if row else None

    def mark_fallback(self, since: str, reason: str) -> None:
        """Record the fallback; the first process to record it keeps its time and reason."""
        with self.db.transaction("working_fallback") as tx:
            if tx.working.kv_get(FALLBACK_SCOPE, FALLBACK_KEY, 0.0) is None:
                mark = codec.dumps({"since": since, "reason": reason})
                tx.working.kv_put_many(FALLBACK_SCOPE, [(FALLBACK_KEY, mark, None)], self._iso())

    @staticmethod
    def marked(tx: Any) -> bool:
        """In a write transaction: is the store on the fallback? Writes are serialised, so the
        answer holds until the transaction commits (a heal's removal of the mark commits before
        it or after it)."""
        return SqliteBackend.mark_in(tx) is not None

    @staticmethod
    def mark_in(tx: Any) -> dict[str, str] | None:
        """In a write transaction: the store's fallback mark (``{since, reason}``), or None."""
        row = tx.working.kv_get(FALLBACK_SCOPE, FALLBACK_KEY, 0.0)
        return json.loads(row[0]) if row else None

    def clear_fallback_mark(self, copied: Collection[Scope]) -> bool:
        """End the fallback, unless a replace import's working memory still waits to be swapped in
        on Redis (staged.py): that must be done first, while the mark keeps every process on the
        database, or the swap would empty what processes back on Redis wrote meanwhile. Refused
        too while a scope waits in the database that is not in ``copied`` (the scopes of which
        the heal copied what Redis holds): one first written after the heal listed them would
        move with no copy, over what a process back on Redis wrote to it. Returns whether the
        mark is gone."""
        with self.db.transaction("working_fallback_end") as tx:
            if any(key.startswith(SWAP_KEY) for key, _v, _e in tx.working.kv_items(FALLBACK_SCOPE, 0.0, values=False)):
                return False
            if any(Scope(*key) not in copied for key in tx.working.held_scopes() if key != FALLBACK_SCOPE):
                return False
            tx.working.kv_delete(FALLBACK_SCOPE, FALLBACK_KEY, 0.0)
            return True

    # -- a replace import's working memory waiting to be swapped in on Redis (staged.py)
    @staticmethod
    def record_swap(tx: Any, stage_id: str, since: str, empty_seq: int | None = None) -> list[str]:
        """In a replace import's transaction: the stage ``stage_id`` must become Redis's working
        memory once it commits (``empty_seq``: an empty stage, numbered so: Redis is to be
        emptied). Replaces the record of any earlier import's stage (this import supersedes it);
        returns those stages' ids."""
        earlier = [
            key[len(SWAP_KEY) :] for key, _v, _e in tx.working.kv_items(FALLBACK_SCOPE, 0.0) if key.startswith(SWAP_KEY)
        ]
        for stage in earlier:
            tx.working.kv_delete(FALLBACK_SCOPE, SWAP_KEY + stage, 0.0)
        mark = codec.dumps({"stage": stage_id, "since": since, **({"emptySeq": empty_seq} if empty_seq else {})})
        tx.working.kv_put_many(FALLBACK_SCOPE, [(SWAP_KEY + stage_id, mark, None)], since)
        return earlier

    def pending_swaps(self) -> list[dict[str, Any]]:
        """``{stage, since, emptySeq?}`` of each committed replace import whose working memory is not yet
        swapped in on Redis."""
        rows = self.db.reader().working.kv_items(FALLBACK_SCOPE, 0.0)
        return [json.loads(value) for key, value, _e in rows if key.startswith(SWAP_KEY) and value is not None]

    def clear_swap(self, stage_id: str) -> None:
        with self.db.transaction("working_swap_done") as tx:
            tx.working.kv_delete(FALLBACK_SCOPE, SWAP_KEY + stage_id, 0.0)

    def close(self) -> None:
        """The database belongs to the runtime; nothing to release."""
