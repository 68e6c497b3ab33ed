"""The Redis working-memory backend (``WORKING_MEMORY_BACKEND=redis``, ``REDIS_URL``).

Expiry is ours, not Redis's: a key is gone once its ``exp`` score is <= now (the server clock),
on every read, and the sweep deletes it. That keeps TTL semantics identical to the SQLite
backend, lets capacity count exactly the live keys, lets a checkpoint keep each key's absolute
expiry, and means checkpoints never carry a Redis TTL. Multi-key operations run in one
MULTI/EXEC block, a WATCH-guarded transaction or a Lua script, so each is atomic.

``RedisBackend`` is what the subsystem serves from. This module holds one request's operations on
one scope (keys, task state, scratchpad, checkpoints) and the sweep; the connection and the key
layout are redis_keys.py's (a connection failure raises ``BackendDown`` and the subsystem falls
back to SQLite), and what moves whole scopes (an export, an import, a replace import's stage and
swap, the move in from the database as a fallback ends) is redis_moves.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from agentmemory_server.storage import codec
from agentmemory_server.storage.sqlite.working import glob_filter
from agentmemory_server.working.model import (
    Scope,
    build_snapshot,
    capacity_error,
    checkpoint_meta,
    checkpoint_missing,
    restore_rows,
    restored,
)
from agentmemory_server.working.redis_keys import guarded, is_live
from agentmemory_server.working.redis_moves import ScopeMoves

# Delete the scope's expired keys; used by the set script and the sweep.
_PURGE = """
local function purge(kv, exp, now)
  local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  for i = 1, #dead, 1000 do
    redis.call('HDEL', kv, unpack(dead, i, math.min(i + 999, #dead)))
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', exp, '-inf', now) end
  return #dead
end
"""

# KEYS kv, exp, scopes; ARGV key, value, expires_at ('' = never), now, max_keys, token.
# Returns 1 created, 0 replaced, -1 at capacity (nothing written).
_SET = (
    _PURGE
    + """
purge(KEYS[1], KEYS[2], ARGV[4])
local existed = redis.call('HEXISTS', KEYS[1], ARGV[1])
if existed == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1]) end
redis.call('SADD', KEYS[3], ARGV[6])
if existed == 0 then return 1 end
return 0
"""
)

_SWEEP = _PURGE + "return purge(KEYS[1], KEYS[2], ARGV[1])"

# KEYS cps, cpmeta, cpdata, cpseq, scopes; ARGV id, meta, snapshot, keep, token.
# Stores a checkpoint, then deletes all but the newest ``keep``; returns the deleted ids.
_CHECKPOINT = """
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[5])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if extra <= 0 then return {} end
local pruned = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
redis.call('ZREM', KEYS[1], unpack(pruned))
redis.call('HDEL', KEYS[2], unpack(pruned))
redis.call('HDEL', KEYS[3], unpack(pruned))
return pruned
"""


class RedisBackend(ScopeMoves):
    """Working memory in Redis; see redis_keys.py's docstring for the key layout."""

    name = "redis"

    def __init__(self, url: str, prefix: str, *, audit: Callable[[str, Scope, str], None]):
        super().__init__(url, prefix, audit=audit)
        self._set = self.r.register_script(_SET)
        self._purge = self.r.register_script(_SWEEP)
        self._checkpoint = self.r.register_script(_CHECKPOINT)

    def _read(self, scope: Scope, values: bool) -> tuple[Any, dict[str, float]]:
        pipe = self.r.pipeline(transaction=True)
        (pipe.hgetall if values else pipe.hkeys)(self._k(scope, "kv"))
        pipe.zrange(self._k(scope, "exp"), 0, -1, withscores=True)
        found, expiries = pipe.execute()
        return found, dict(expiries)

    # ---- user keys
    @guarded
    def set_key(self, scope: Scope, key: str, value: str, expires_at: float | None, now: float, max_keys: int) -> bool:
        result = self._set(
            keys=[self._k(scope, "kv"), self._k(scope, "exp"), self._scopes],
            args=[key, value, "" if expires_at is None else repr(expires_at), repr(now), max_keys, self._token(scope)],
        )
        if result == -1:
            raise capacity_error(scope, max_keys)
        return result == 1

    @guarded
    def get_key(self, scope: Scope, key: str, now: float) -> tuple[str, float | None] | None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hget(self._k(scope, "kv"), key)
        pipe.zscore(self._k(scope, "exp"), key)
        value, expiry = pipe.execute()
        return (value, expiry) if value is not None and is_live(expiry, now) else None

    @guarded
    def items(
        self, scope: Scope, now: float, pattern: str | None = None, values: bool = True
    ) -> list[tuple[str, str | None, float | None]]:
        found, expiries = self._read(scope, values)
        names = [k for k in found if is_live(expiries.get(k), now)]
        names = glob_filter(names, pattern) if pattern is not None else sorted(names)
        return [(k, found[k] if values else None, expiries.get(k)) for k in names]

    @guarded
    def delete_key(self, scope: Scope, key: str, now: float) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.zscore(self._k(scope, "exp"), key)
        pipe.hdel(self._k(scope, "kv"), key)
        pipe.zrem(self._k(scope, "exp"), key)
        expiry, removed, _ = pipe.execute()
        return removed == 1 and is_live(expiry, now)

    @guarded
    def delete_glob(self, scope: Scope, pattern: str, now: float) -> list[str]:
        kv, exp = self._k(scope, "kv"), self._k(scope, "exp")

        def attempt(pipe: Any) -> tuple[list[str], list[str]]:
            # WATCHed: if any key of the scope changes before EXEC, redis-py runs this again,
            # so the match and the delete see the same set of keys.
            expiries = dict(pipe.zrange(exp, 0, -1, withscores=True))
            matched = glob_filter(pipe.hkeys(kv), pattern)
            pipe.multi()
            if matched:
                pipe.hdel(kv, *matched)
                pipe.zrem(exp, *matched)
            return matched, [k for k in matched if is_live(expiries.get(k), now)]

        matched, live = self._transaction(attempt, kv, exp)
        if matched:
            self._audit("delete_pattern", scope, f"deleted {len(matched)} key(s) matching {pattern!r}")
        return live

    @guarded
    def clear_keys(self, scope: Scope, now: float) -> int:
        pipe = self.r.pipeline(transaction=True)
        pipe.hlen(self._k(scope, "kv"))
        pipe.zcount(self._k(scope, "exp"), "-inf", repr(now))
        pipe.delete(self._k(scope, "kv"), self._k(scope, "exp"))
        total, expired, _ = pipe.execute()
        if total:
            self._audit("clear", scope, f"cleared {total - expired} key(s)")
        return total - expired

    # ---- task state
    @guarded
    def task_get(self, scope: Scope) -> tuple[dict, int] | None:
        task, version = self.r.hmget(self._k(scope, "task"), ["task", "version"])
        return (json.loads(task), int(version or 0)) if task is not None else None

    @guarded
    def task_write(self, scope: Scope, mutate: Callable[[dict | None, int], dict]) -> tuple[dict, int]:
        key = self._k(scope, "task")

        def attempt(pipe: Any) -> tuple[dict, int]:
            # Compare-and-set on the task's version: WATCH makes EXEC fail (and redis-py
            # retry) if another writer changed the task after we read it.
            raw, version = pipe.hmget(key, ["task", "version"])
            current_version = int(version) if version is not None else 0
            task = mutate(json.loads(raw) if raw is not None else None, current_version)
            pipe.multi()
            pipe.hset(key, mapping={"task": codec.dumps(task), "version": current_version + 1})
            pipe.sadd(self._scopes, self._token(scope))
            return task, current_version + 1

        return self._transaction(attempt, key)

    @guarded
    def task_clear(self, scope: Scope) -> bool:
        deleted = self.r.delete(self._k(scope, "task")) == 1
        if deleted:
            self._audit("task_clear", scope, "task state cleared")
        return deleted

    # ---- scratchpad
    @guarded
    def scratch_append(self, scope: Scope, entry: dict, cap: int) -> tuple[int, int]:
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(self._k(scope, "scratch"), codec.dumps(entry))
        pipe.ltrim(self._k(scope, "scratch"), -cap, -1)
        pipe.sadd(self._scopes, self._token(scope))
        length = pipe.execute()[0]
        return min(length, cap), max(length - cap, 0)

    @guarded
    def scratch_get(self, scope: Scope, limit: int | None) -> list[dict]:
        start = 0 if limit is None else -limit
        return [json.loads(e) for e in self.r.lrange(self._k(scope, "scratch"), start, -1)]

    @guarded
    def scratch_clear(self, scope: Scope) -> int:
        pipe = self.r.pipeline(transaction=True)
        pipe.llen(self._k(scope, "scratch"))
        pipe.delete(self._k(scope, "scratch"))
        count = pipe.execute()[0]
        if count:
            self._audit("scratchpad_clear", scope, f"cleared {count} scratchpad entries")
        return count

    # ---- checkpoints
    @guarded
    def checkpoint_create(
        self, scope: Scope, checkpoint_id: str, description: str, now: float, keep: int, created_at: str
    ) -> tuple[dict, list[str]]:
        pipe = self.r.pipeline(transaction=True)  # one MULTI: a point-in-time read
        pipe.hgetall(self._k(scope, "kv"))
        pipe.zrange(self._k(scope, "exp"), 0, -1, withscores=True)
        pipe.hmget(self._k(scope, "task"), ["task", "version"])
        pipe.lrange(self._k(scope, "scratch"), 0, -1)
        values, expiries, (task, version), scratch = pipe.execute()
        expiries = dict(expiries)
        items = [(k, values[k], expiries.get(k)) for k in sorted(values) if is_live(expiries.get(k), now)]
        snapshot = build_snapshot(
            items, json.loads(task) if task else None, int(version or 0), [json.loads(e) for e in scratch]
        )
        meta = checkpoint_meta(checkpoint_id, description, created_at, snapshot)
        pruned = self._checkpoint(
            keys=[self._k(scope, p) for p in ("cps", "cpmeta", "cpdata", "cpseq")] + [self._scopes],
            args=[checkpoint_id, codec.dumps(meta), codec.dumps(snapshot), keep, self._token(scope)],
        )
        if pruned:
            self._audit("checkpoint_prune", scope, f"pruned checkpoints {', '.join(pruned)}")
        return meta, list(pruned)

    @guarded
    def checkpoint_restore(self, scope: Scope, checkpoint_id: str, now: float, max_keys: int) -> dict[str, Any]:
        k = {p: self._k(scope, p) for p in ("kv", "exp", "task", "scratch", "cpmeta", "cpdata")}

        def attempt(pipe: Any) -> dict[str, Any]:
            raw, meta = pipe.hget(k["cpdata"], checkpoint_id), pipe.hget(k["cpmeta"], checkpoint_id)
            if raw is None or meta is None:
                raise checkpoint_missing(checkpoint_id)
            snapshot = json.loads(raw)
            rows, dropped = restore_rows(snapshot, now, max_keys)
            current = pipe.hget(k["task"], "version")
            pipe.multi()  # readers see the old state or the restored one, never a mix
            pipe.delete(k["kv"], k["exp"], k["task"], k["scratch"])
            if rows:
                pipe.hset(k["kv"], mapping={key: value for key, value, _e in rows})
                expiring = {key: e for key, _v, e in rows if e is not None}
                if expiring:
                    pipe.zadd(k["exp"], expiring)
            version = None
            if snapshot["task"] is not None:
                version = max(int(current or 0), snapshot["taskVersion"]) + 1
                pipe.hset(k["task"], mapping={"task": codec.dumps(snapshot["task"]), "version": version})
            if snapshot["scratchpad"]:
                pipe.rpush(k["scratch"], *[codec.dumps(e) for e in snapshot["scratchpad"]])
            return restored(json.loads(meta), rows, dropped, snapshot, version)

        result = self._transaction(attempt, k["cpdata"], k["task"])
        self._audit("checkpoint_restore", scope, f"working memory of {scope.session!r} restored to {checkpoint_id}")
        return result

    @guarded
    def checkpoint_list(self, scope: Scope) -> list[dict]:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrange(self._k(scope, "cps"), 0, -1)
        pipe.hgetall(self._k(scope, "cpmeta"))
        order, metas = pipe.execute()
        return [json.loads(metas[cid]) for cid in order if cid in metas]

    @guarded
    def checkpoint_delete(self, scope: Scope, checkpoint_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self._k(scope, "cps"), checkpoint_id)
        pipe.hdel(self._k(scope, "cpmeta"), checkpoint_id)
        pipe.hdel(self._k(scope, "cpdata"), checkpoint_id)
        deleted = pipe.execute()[0] == 1
        if deleted:
            self._audit("checkpoint_delete", scope, f"checkpoint {checkpoint_id} deleted")
        return deleted

    # ---- stats, sweep, discovery
    @guarded
    def counts(self, scope: Scope, now: float) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=True)
        pipe.hlen(self._k(scope, "kv"))
        pipe.zcount(self._k(scope, "exp"), "-inf", repr(now))
        pipe.exists(self._k(scope, "task"))
        pipe.llen(self._k(scope, "scratch"))
        pipe.zcard(self._k(scope, "cps"))
        total, expired, task, scratch, checkpoints = pipe.execute()
        return {
            "userKeys": total - expired,
            "expiredKeys": expired,
            "scratchpadEntries": scratch,
            "checkpoints": checkpoints,
            "task": task,
        }

    @guarded
    def sweep(self, now: float) -> int:
        return sum(
            self._purge(keys=[self._k(scope, "kv"), self._k(scope, "exp")], args=[repr(now)])
            for _token, scope in self._tokens()
        )

    @guarded
    def session_scopes(self, session: str) -> list[Scope]:
        return sorted((s for _t, s in self._tokens() if s.session == session), key=lambda s: s.key)

    def eviction_check(self) -> dict[str, Any]:
        """A diagnose check: an eviction policy would let Redis drop working memory silently."""
        check = {"name": "working_memory_redis_eviction", "category": "working_memory", "fixable": False}
        try:
            policy = self.r.config_get("maxmemory-policy").get("maxmemory-policy", "unknown")
        except redis.RedisError as exc:
            return {
                **check,
                "status": "warn",
                "message": f"could not read maxmemory-policy: {exc}",
                "fix": "make sure Redis runs with maxmemory-policy noeviction",
            }
        if policy == "noeviction":
            return {**check, "status": "pass", "message": "Redis maxmemory-policy is noeviction", "fix": None}
        return {
            **check,
            "status": "warn",
            "message": f"Redis maxmemory-policy is {policy}: Redis may evict working memory without telling anyone",
            "fix": "CONFIG SET maxmemory-policy noeviction (and persist it in redis.conf)",
        }
