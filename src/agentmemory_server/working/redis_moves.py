"""Whole scopes in and out of Redis, for the Redis working-memory backend.

One request reads or writes a part of one scope (redis_backend.py); these move whole scopes, each
in one Redis transaction:

- an export reads every scope (``held_scopes``, ``copy_scope``) and an import writes them
  (``load``; ``wipe_all`` first for one that replaces everything);
- a ``replace`` import writes its working memory under staged keys that no request reads
  (``staged``, ``begin_stage``, ``seal_stage``), then swaps them in once the records are committed
  (``swap``) or drops them (``discard``); staged.py drives this;
- as a fallback ends, the heal copies what Redis holds of every scope waiting in the database
  (``hold_for_return``), and each scope then moves in (``absorb``) without replacing what a
  process back on Redis wrote since; fallback.py drives this.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from typing import Any, Self, cast

from agentmemory_server.storage import codec
from agentmemory_server.working.model import Scope, ScopeCopy
from agentmemory_server.working.redis_keys import RedisKeys, guarded, is_live

# KEYS kv, task, held, heldat; ARGV the heal's id, seconds to keep the copy.
# Copies what the scope's keys and task hold now, as the fallback ends (see ``hold_for_return``).
_HOLD = """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[3], KEYS[4])
for i = 1, #fields, 1000 do
  redis.call('HSET', KEYS[3], unpack(fields, i, math.min(i + 999, #fields)))
end
local version = redis.call('HGET', KEYS[2], 'version') or ''
redis.call('HSET', KEYS[4], 'return', ARGV[1], 'task', version)
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[2])
"""

# How long the copy of what Redis held as a fallback ended is kept: processes follow the heal
# within seconds and the sweep moves what a late one wrote to the database within a minute.
HOLD_SECONDS = 3600


class ScopeMoves(RedisKeys):
    """What moves whole scopes, for ``RedisBackend``; see the module docstring."""

    def __init__(self, url: str, prefix: str, *, audit: Callable[[str, Scope, str], None]):
        super().__init__(url, prefix, audit=audit)
        self._hold = self.r.register_script(_HOLD)

    # ---- moving a scope in from the database (the end of a fallback)
    @property
    def _returned(self) -> str:
        return f"{self.prefix}:returned"  # the id of the last heal

    @guarded
    def hold_for_return(self, scopes: list[Scope], heal_id: str) -> None:
        """Copy what Redis holds of each scope's keys and task as the fallback ends (the heal,
        while every process still serves from the database): ``absorb`` then tells a key Redis
        got after the return, which it keeps, from one it held before the outage, which the
        moved one replaces."""
        self.r.set(self._returned, heal_id)
        for scope in scopes:
            self._hold(
                keys=[self._k(scope, part) for part in ("kv", "task", "held", "heldat")],
                args=[heal_id, HOLD_SECONDS],
            )

    @guarded
    def absorb(self, scope: Scope, copy: ScopeCopy, *, scratch_cap: int, keep_checkpoints: int, now: float) -> None:
        """Add, in one transaction, a scope's working memory written to the database during a
        Redis outage. It is newer than what Redis held before the outage: its keys and task
        replace those, its scratchpad entries follow Redis's and its checkpoints Redis's (the
        usual caps then drop the oldest). A key or task Redis got after the fallback ended (a
        process back on Redis wrote it while this scope waited to move) is newer still and stays."""
        parts = ("kv", "exp", "task", "scratch", "cps", "cpmeta", "cpdata", "cpseq", "held", "heldat")
        k = {p: self._k(scope, p) for p in parts}

        def attempt(pipe: Any) -> None:
            version = pipe.hget(k["task"], "version")
            current = int(version or 0)
            seq = int(pipe.get(k["cpseq"]) or 0)
            held = [cid for cid in pipe.zrange(k["cps"], 0, -1) if cid not in {c[0] for c in copy.checkpoints}]
            holding, keys, task = self._unchanged_since_return(pipe, k, copy, version, now)
            pipe.multi()
            self._absorb_keys(pipe, k, keys)
            if task is not None:
                self._absorb_task(pipe, k, task, current, holding)
            if copy.scratch:
                pipe.rpush(k["scratch"], *[codec.dumps(e) for e in copy.scratch])
                pipe.ltrim(k["scratch"], -scratch_cap, -1)
            self._absorb_checkpoints(pipe, k, copy.checkpoints, held, seq, keep_checkpoints)
            pipe.sadd(self._scopes, self._token(scope))
            if holding and keys:
                pipe.hset(k["held"], mapping={key: value for key, value, _e in keys})
                pipe.expire(k["held"], HOLD_SECONDS)

        watched = ("kv", "exp", "task", "cps", "cpseq", "held", "heldat")
        self._transaction(attempt, *[k[part] for part in watched], self._returned)

    @staticmethod
    def _absorb_task(pipe: Any, k: dict[str, str], task: tuple[str, int], current: int, holding: bool) -> None:
        """Queue the moved task in place of Redis's (at version ``current``)."""
        moved_task, moved_version = task
        # The version a client read during the outage stays valid, unless Redis's
        # older task had got further: then a new one, so no stale version matches.
        new_version = moved_version if moved_version > current else current + 1
        pipe.hset(k["task"], mapping={"task": moved_task, "version": new_version})
        if holding:  # what moves in is not a write made after the return
            pipe.hset(k["heldat"], "task", new_version)

    @staticmethod
    def _absorb_checkpoints(
        pipe: Any, k: dict[str, str], moved: list[tuple[str, str, str]], held: list[str], seq: int, keep: int
    ) -> None:
        """Queue the moved checkpoints after the ``held`` ones Redis has (numbered on from
        ``seq``), then drop the oldest beyond ``keep``."""
        for checkpoint_id, meta, snapshot in moved:
            seq += 1
            pipe.zadd(k["cps"], {checkpoint_id: seq})
            pipe.hset(k["cpmeta"], checkpoint_id, meta)
            pipe.hset(k["cpdata"], checkpoint_id, snapshot)
            pipe.set(k["cpseq"], seq)
        every = held + [c[0] for c in moved]
        pruned = every[: max(0, len(every) - keep)]
        if pruned:
            pipe.zrem(k["cps"], *pruned)
            pipe.hdel(k["cpmeta"], *pruned)
            pipe.hdel(k["cpdata"], *pruned)

    def _unchanged_since_return(
        self, pipe: Any, k: dict[str, str], copy: ScopeCopy, version: str | None, now: float
    ) -> tuple[bool, list[tuple[str, str, float | None]], tuple[str, int] | None]:
        """(whether Redis holds a copy of the scope from the last heal, the moved keys and task
        to write). With a copy: every key but those Redis holds with another live value than the
        copy's (written after the return), and the task unless its version is not the copy's.
        Without one (the scope had nothing in the database at the heal, or the copy expired): all."""
        at = pipe.hgetall(k["heldat"])
        if not at or at.get("return") != pipe.get(self._returned):
            return False, copy.keys, copy.task
        held = pipe.hgetall(k["held"])
        expiry = dict(pipe.zrange(k["exp"], 0, -1, withscores=True))
        names = [key for key, _v, _e in copy.keys]
        found = dict(zip(names, pipe.hmget(k["kv"], names), strict=True)) if names else {}
        keys = [
            row
            for row in copy.keys
            if found[row[0]] is None or not is_live(expiry.get(row[0]), now) or found[row[0]] == held.get(row[0])
        ]
        task = copy.task if (version or "") == at.get("task", "") else None
        return True, keys, task

    @staticmethod
    def _absorb_keys(pipe: Any, k: dict[str, str], keys: list[tuple[str, str, float | None]]) -> None:
        if not keys:
            return
        pipe.hset(k["kv"], mapping={key: value for key, value, _e in keys})
        expiring = {key: e for key, _v, e in keys if e is not None}
        lasting = [key for key, _v, e in keys if e is None]
        if expiring:
            pipe.zadd(k["exp"], expiring)
        if lasting:
            pipe.zrem(k["exp"], *lasting)

    # ---- export and import (memory/working_transfer.py's entries, through the subsystem)
    @guarded
    def held_scopes(self) -> list[Scope]:
        return sorted((s for _t, s in self._tokens()), key=lambda s: s.key)

    @guarded
    def copy_scope(self, scope: Scope, now: float) -> ScopeCopy:
        """Everything the scope holds, read in one MULTI/EXEC (one point in time); expired keys
        are left out."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(self._k(scope, "kv"))
        pipe.zrange(self._k(scope, "exp"), 0, -1, withscores=True)
        pipe.hgetall(self._k(scope, "task"))
        pipe.lrange(self._k(scope, "scratch"), 0, -1)
        pipe.zrange(self._k(scope, "cps"), 0, -1)
        pipe.hgetall(self._k(scope, "cpmeta"))
        pipe.hgetall(self._k(scope, "cpdata"))
        values, expiries, task, scratch, order, metas, snapshots = pipe.execute()
        expiry = dict(expiries)
        return ScopeCopy(
            keys=[(k, v, expiry.get(k)) for k, v in sorted(values.items()) if is_live(expiry.get(k), now)],
            task=(task["task"], int(task["version"])) if task.get("task") else None,
            scratch=[json.loads(e) for e in scratch],
            checkpoints=[(cid, metas[cid], snapshots[cid]) for cid in order if cid in metas and cid in snapshots],
        )

    @guarded
    def wipe_all(self) -> int:
        """Delete every scope's working memory (a ``replace`` import) in one MULTI/EXEC; returns
        how many scopes there were."""
        tokens = [token for token, _scope in self._tokens()]
        pipe = self.r.pipeline(transaction=True)
        for token in tokens:
            parts = ("kv", "exp", "task", "scratch", "cps", "cpmeta", "cpdata", "cpseq")
            pipe.delete(*[f"{self.prefix}:{token}:{part}" for part in parts])
        pipe.delete(self._scopes)
        pipe.execute()
        return len(tokens)

    @guarded
    def load(self, scope: Scope, copy: ScopeCopy, *, keep_ours: bool, now: float) -> None:
        """Write an imported scope in one transaction, as the database's import does: the file's
        keys, task and scratchpad win unless ``keep_ours`` (then what the scope holds stays);
        checkpoints are added by id."""
        k = {p: self._k(scope, p) for p in ("kv", "exp", "task", "scratch", "cps", "cpmeta", "cpdata", "cpseq")}

        def attempt(pipe: Any) -> None:
            expiry = dict(pipe.zrange(k["exp"], 0, -1, withscores=True))
            live = {key for key in pipe.hkeys(k["kv"]) if is_live(expiry.get(key), now)}
            has_task, scratch_len = pipe.exists(k["task"]), pipe.llen(k["scratch"])
            held, seq = set(pipe.zrange(k["cps"], 0, -1)), int(pipe.get(k["cpseq"]) or 0)
            pipe.multi()
            self._absorb_keys(pipe, k, [row for row in copy.keys if not (keep_ours and row[0] in live)])
            if copy.task is not None and not (keep_ours and has_task):
                pipe.delete(k["task"])
                pipe.hset(k["task"], mapping={"task": copy.task[0], "version": copy.task[1]})
            if copy.scratch and not (keep_ours and scratch_len):
                pipe.delete(k["scratch"])  # the file's pad whole: appending would repeat it on a re-run
                pipe.rpush(k["scratch"], *[codec.dumps(e) for e in copy.scratch])
            for checkpoint_id, meta, snapshot in copy.checkpoints:
                if checkpoint_id in held:
                    continue
                seq += 1
                pipe.zadd(k["cps"], {checkpoint_id: seq})
                pipe.hset(k["cpmeta"], checkpoint_id, meta)
                pipe.hset(k["cpdata"], checkpoint_id, snapshot)
                pipe.set(k["cpseq"], seq)
            pipe.sadd(self._scopes, self._token(scope))

        self._transaction(attempt, k["kv"], k["exp"], k["task"], k["scratch"], k["cps"], k["cpseq"])

    # ---- a replace import: staged under other keys, swapped in at once (see ``staged.py``)
    _PARTS = ("kv", "exp", "task", "scratch", "cps", "cpmeta", "cpdata", "cpseq")

    def staged(self, stage_id: str) -> Self:
        """This backend with its keys under ``P:staged:<stage_id>``: an import's new working
        memory is written there (``load``) where no request reads it, then ``swap`` makes it the
        working memory in one transaction."""
        view = copy.copy(self)
        view.prefix = f"{self.prefix}:staged:{stage_id}"
        return view

    def _stage_ready(self, stage_id: str) -> str:
        return f"{self.prefix}:staged:{stage_id}:ready"

    @property
    def _stages(self) -> str:
        return f"{self.prefix}:stages"  # stage id -> when its writing began (epoch seconds)

    @guarded
    def begin_stage(self, stage_id: str, now: float) -> None:
        self.r.hset(self._stages, stage_id, repr(now))

    @guarded
    def stages_begun_before(self, cutoff: float) -> list[str]:
        """Stages begun before ``cutoff`` that are still in Redis (swapped and dropped ones are not)."""
        begun = cast(dict[str, str], self.r.hgetall(self._stages))
        return sorted(stage for stage, began in begun.items() if float(began) < cutoff)

    @property
    def _swapped(self) -> str:
        return f"{self.prefix}:swapped"  # the sequence number of the last stage swapped in

    @guarded
    def seal_stage(self, stage_id: str, seq: int) -> None:
        """Mark a stage complete: written whole, to be swapped in as import number ``seq``."""
        self.r.set(self._stage_ready(stage_id), seq)

    @guarded
    def swap(self, stage_id: str, empty_seq: int | None = None) -> str:
        """Make a sealed stage the working memory, in one WATCH-guarded MULTI/EXEC: every scope's
        keys deleted and the stage's renamed into their place, or nothing at all. Returns
        ``swapped``; ``superseded`` when a later import was swapped in first (the stage is
        dropped); ``missing`` when the stage is gone (Redis lost its data) and nothing changed.
        ``empty_seq``: no stage was written (a replace import while the store was on the
        fallback); an empty one is swapped in as import number ``empty_seq``."""
        stage = self.staged(stage_id)
        ready, swapped = self._stage_ready(stage_id), self._swapped

        def attempt(pipe: Any) -> str:
            seq, last = pipe.get(ready) if empty_seq is None else empty_seq, pipe.get(swapped)
            if seq is None:
                return "missing"
            if last is not None and int(last) >= int(seq):
                return "superseded"
            live = list(pipe.smembers(self._scopes))
            present = self._stage_keys_held(stage, pipe.smembers(stage._scopes))
            pipe.multi()
            doomed = [f"{self.prefix}:{token}:{part}" for token in live for part in self._PARTS]
            for i in range(0, len(doomed), 1000):
                pipe.delete(*doomed[i : i + 1000])
            pipe.delete(self._scopes)
            for src, dst in present:
                pipe.rename(src, dst)
            if present:
                pipe.rename(stage._scopes, self._scopes)
            pipe.delete(stage._scopes, ready)
            pipe.hdel(self._stages, stage_id)
            pipe.set(swapped, seq)
            return "swapped"

        outcome = self._transaction(attempt, ready, swapped, self._scopes)
        if outcome == "superseded":
            self.discard(stage_id)
        return outcome

    def _stage_keys_held(self, stage: ScopeMoves, tokens: Iterable[str]) -> list[tuple[str, str]]:
        """(stage key, live key) of every part the stage holds for the scopes ``tokens``."""
        moved = [
            (f"{stage.prefix}:{token}:{part}", f"{self.prefix}:{token}:{part}")
            for token in tokens
            for part in self._PARTS
        ]
        probe = self.r.pipeline(transaction=False)  # one round trip, not one a key (the stage is ours alone)
        for src, _dst in moved:
            probe.exists(src)
        return [pair for pair, found in zip(moved, probe.execute(), strict=True) if found]

    @guarded
    def discard(self, stage_id: str) -> None:
        """Drop a stage: its import's records were not committed, or a later import superseded it."""
        stage = self.staged(stage_id)
        tokens: set[str] = cast(set[str], self.r.smembers(stage._scopes))
        keys = [f"{stage.prefix}:{t}:{part}" for t in tokens for part in self._PARTS]
        for i in range(0, len(keys), 1000):
            self.r.delete(*keys[i : i + 1000])
        self.r.delete(stage._scopes, self._stage_ready(stage_id))
        self.r.hdel(self._stages, stage_id)
