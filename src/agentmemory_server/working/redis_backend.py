"""The Redis working-memory backend (``WORKING_MEMORY_BACKEND=redis``, ``REDIS_URL``).

Key layout, with ``P`` the prefix (WORKING_MEMORY_REDIS_PREFIX) and ``T`` the scope token
``project:agent:session`` (each part percent-encoded, so ``:`` inside an id cannot collide):

    P:T:kv       HASH  user key -> value JSON
    P:T:exp      ZSET  user key -> absolute expiry (epoch seconds); keys without TTL are absent
    P:T:task     HASH  task (JSON), version
    P:T:scratch  LIST  scratchpad entries (JSON {content, timestamp}), oldest first
    P:T:cps      ZSET  checkpoint id -> creation sequence number
    P:T:cpmeta   HASH  checkpoint id -> metadata JSON
    P:T:cpdata   HASH  checkpoint id -> snapshot JSON
    P:T:cpseq    STRING checkpoint sequence counter
    P:scopes     SET   every T that has held data (for the expiry sweep and session-end summaries)
    P:staged:I:...     a replace import's new working memory (stage I), the same layout under
                       ``P:staged:I``, read by no request; ``P:staged:I:ready`` once written whole
    P:swapped    STRING the sequence number of the last stage swapped in (an older one never is)
    P:stages     HASH  stage id -> when its writing began (the sweep drops stages left behind)
    P:returned   STRING the id of the last heal (the end of a fallback)
    P:T:held     HASH  user key -> value JSON: what Redis held when that heal ended the fallback,
                       plus what was moved in from the database since (``hold_for_return``)
    P:T:heldat   HASH  return (the heal's id), task (the task version Redis then held, '' none);
                       both expire after HOLD_SECONDS

Expiry is ours, not Redis's: a key is gone once its ``exp`` score is <= now (the server clock),
on every read, and the sweep deletes it. That keeps TTL semantics identical to the SQLite
backend, lets capacity count exactly the live keys, lets a checkpoint keep each key's absolute
expiry, and means checkpoints never carry a Redis TTL. Multi-key operations run in one
MULTI/EXEC block, a WATCH-guarded transaction or a Lua script, so each is atomic. Connections
fail fast (0.5 s connect timeout, no retries): a failure raises ``BackendDown`` and the
subsystem falls back to SQLite.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agentmemory_server import errors
from agentmemory_server.errors import Unavailable
from agentmemory_server.storage import codec
from agentmemory_server.storage.sqlite.working import glob_filter
from agentmemory_server.working.model import (
    BackendDown,
    Scope,
    ScopeCopy,
    build_snapshot,
    capacity_error,
    checkpoint_meta,
    checkpoint_missing,
    restore_rows,
    restored,
)

CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 5.0

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


def connect(url: str) -> redis.Redis:
    """A client that fails fast: redis-py 8 otherwise retries with backoff for seconds."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        health_check_interval=0,
    )


def probe(url: str) -> bool:
    """Does a Redis server answer PING at ``url`` right now?"""
    client = connect(url)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _guarded(fn: Callable) -> Callable:
    """Connection failures become BackendDown (-> fallback); other Redis errors a clear 503."""

    @functools.wraps(fn)
    def wrapper(self: RedisBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendDown(f"{type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:
            raise Unavailable(
                f"Redis refused the working-memory operation: {exc}", code=errors.WORKING_MEMORY_UNAVAILABLE
            ) from exc

    return wrapper


def _live(expiry: float | None, now: float) -> bool:
    return expiry is None or expiry > now


T = TypeVar("T")


class RedisBackend:
    """Working memory in Redis; see the module docstring for the key layout."""

    name = "redis"

    def __init__(self, url: str, prefix: str, *, audit: Callable[[str, Scope, str], None]):
        self.prefix = prefix
        self._audit = audit
        self.r = connect(url)
        try:
            self.r.ping()
        except redis.RedisError as exc:
            self.r.close()
            raise BackendDown(f"{type(exc).__name__}: {exc}") from exc
        self._set = self.r.register_script(_SET)
        self._purge = self.r.register_script(_SWEEP)
        self._checkpoint = self.r.register_script(_CHECKPOINT)
        self._hold = self.r.register_script(_HOLD)

    # ---- keys
    def _token(self, scope: Scope) -> str:
        return ":".join(quote(part, safe="") for part in scope.key)

    def _transaction(self, attempt: Callable[[Any], T], *watched: str) -> T:
        """Run ``attempt(pipe)`` as a WATCH/MULTI/EXEC transaction (redis-py re-runs it when a
        watched key changed) and return what it returned."""
        return cast(T, self.r.transaction(attempt, *watched, value_from_callable=True))  # type: ignore[arg-type]

    def _k(self, scope: Scope, part: str) -> str:
        return f"{self.prefix}:{self._token(scope)}:{part}"

    @property
    def _scopes(self) -> str:
        return f"{self.prefix}:scopes"

    def _read(self, scope: Scope, values: bool) -> tuple[Any, dict[str, float]]:
        pipe = self.r.pipeline(transaction=True)
        (pipe.hgetall if values else pipe.hkeys)(self._k(scope, "kv"))
        pipe.zrange(self._k(scope, "exp"), 0, -1, withscores=True)
        found, expiries = pipe.execute()
        return found, dict(expiries)

    # ---- user keys
    @_guarded
    def set_key(self, scope: Scope, key: str, value: str, expires_at: float | None, now: float, max_keys: int) -> bool:
        result = self._set(
            keys=[self._k(scope, "kv"), self._k(scope, "exp"), self._scopes],
            args=[key, value, "" if expires_at is None else repr(expires_at), repr(now), max_keys, self._token(scope)],
        )
        if result == -1:
            raise capacity_error(scope, max_keys)
        return result == 1

    @_guarded
    def get_key(self, scope: Scope, key: str, now: float) -> tuple[str, float | None] | None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hget(self._k(scope, "kv"), key)
        pipe.zscore(self._k(scope, "exp"), key)
        value, expiry = pipe.execute()
        return (value, expiry) if value is not None and _live(expiry, now) else None

    @_guarded
    def items(
        self, scope: Scope, now: float, pattern: str | None = None, values: bool = True
    ) -> list[tuple[str, str | None, float | None]]:
        found, expiries = self._read(scope, values)
        names = [k for k in found if _live(expiries.get(k), now)]
        names = glob_filter(names, pattern) if pattern is not None else sorted(names)
        return [(k, found[k] if values else None, expiries.get(k)) for k in names]

    @_guarded
    def delete_key(self, scope: Scope, key: str, now: float) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.zscore(self._k(scope, "exp"), key)
        pipe.hdel(self._k(scope, "kv"), key)
        pipe.zrem(self._k(scope, "exp"), key)
        expiry, removed, _ = pipe.execute()
        return removed == 1 and _live(expiry, now)

    @_guarded
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
            return matched, [k for k in matched if _live(expiries.get(k), now)]

        matched, live = self._transaction(attempt, kv, exp)
        if matched:
            self._audit("delete_pattern", scope, f"deleted {len(matched)} key(s) matching {pattern!r}")
        return live

    @_guarded
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
    @_guarded
    def task_get(self, scope: Scope) -> tuple[dict, int] | None:
        task, version = self.r.hmget(self._k(scope, "task"), ["task", "version"])
        return (json.loads(task), int(version or 0)) if task is not None else None

    @_guarded
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

    @_guarded
    def task_clear(self, scope: Scope) -> bool:
        deleted = self.r.delete(self._k(scope, "task")) == 1
        if deleted:
            self._audit("task_clear", scope, "task state cleared")
        return deleted

    # ---- scratchpad
    @_guarded
    def scratch_append(self, scope: Scope, entry: dict, cap: int) -> tuple[int, int]:
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(self._k(scope, "scratch"), codec.dumps(entry))
        pipe.ltrim(self._k(scope, "scratch"), -cap, -1)
        pipe.sadd(self._scopes, self._token(scope))
        length = pipe.execute()[0]
        return min(length, cap), max(length - cap, 0)

    @_guarded
    def scratch_get(self, scope: Scope, limit: int | None) -> list[dict]:
        start = 0 if limit is None else -limit
        return [json.loads(e) for e in self.r.lrange(self._k(scope, "scratch"), start, -1)]

    @_guarded
    def scratch_clear(self, scope: Scope) -> int:
        pipe = self.r.pipeline(transaction=True)
        pipe.llen(self._k(scope, "scratch"))
        pipe.delete(self._k(scope, "scratch"))
        count = pipe.execute()[0]
        if count:
            self._audit("scratchpad_clear", scope, f"cleared {count} scratchpad entries")
        return count

    # ---- checkpoints
    @_guarded
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
        items = [(k, values[k], expiries.get(k)) for k in sorted(values) if _live(expiries.get(k), now)]
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

    @_guarded
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

    @_guarded
    def checkpoint_list(self, scope: Scope) -> list[dict]:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrange(self._k(scope, "cps"), 0, -1)
        pipe.hgetall(self._k(scope, "cpmeta"))
        order, metas = pipe.execute()
        return [json.loads(metas[cid]) for cid in order if cid in metas]

    @_guarded
    def checkpoint_delete(self, scope: Scope, checkpoint_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self._k(scope, "cps"), checkpoint_id)
        pipe.hdel(self._k(scope, "cpmeta"), checkpoint_id)
        pipe.hdel(self._k(scope, "cpdata"), checkpoint_id)
        deleted = pipe.execute()[0] == 1
        if deleted:
            self._audit("checkpoint_delete", scope, f"checkpoint {checkpoint_id} deleted")
        return deleted

    # ---- moving a scope in from the database (the end of a fallback)
    @property
    def _returned(self) -> str:
        return f"{self.prefix}:returned"  # the id of the last heal

    @_guarded
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

    @_guarded
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
                moved_task, moved_version = task
                # The version a client read during the outage stays valid, unless Redis's
                # older task had got further: then a new one, so no stale version matches.
                new_version = moved_version if moved_version > current else current + 1
                pipe.hset(k["task"], mapping={"task": moved_task, "version": new_version})
                if holding:  # what moves in is not a write made after the return
                    pipe.hset(k["heldat"], "task", new_version)
            if copy.scratch:
                pipe.rpush(k["scratch"], *[codec.dumps(e) for e in copy.scratch])
                pipe.ltrim(k["scratch"], -scratch_cap, -1)
            for checkpoint_id, meta, snapshot in copy.checkpoints:
                seq += 1
                pipe.zadd(k["cps"], {checkpoint_id: seq})
                pipe.hset(k["cpmeta"], checkpoint_id, meta)
                pipe.hset(k["cpdata"], checkpoint_id, snapshot)
                pipe.set(k["cpseq"], seq)
            every = held + [c[0] for c in copy.checkpoints]
            pruned = every[: max(0, len(every) - keep_checkpoints)]
            if pruned:
                pipe.zrem(k["cps"], *pruned)
                pipe.hdel(k["cpmeta"], *pruned)
                pipe.hdel(k["cpdata"], *pruned)
            pipe.sadd(self._scopes, self._token(scope))
            if holding and keys:
                pipe.hset(k["held"], mapping={key: value for key, value, _e in keys})
                pipe.expire(k["held"], HOLD_SECONDS)

        watched = ("kv", "exp", "task", "cps", "cpseq", "held", "heldat")
        self._transaction(attempt, *[k[part] for part in watched], self._returned)

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
            if found[row[0]] is None or not _live(expiry.get(row[0]), now) or found[row[0]] == held.get(row[0])
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
    @_guarded
    def held_scopes(self) -> list[Scope]:
        return sorted((s for _t, s in self._tokens()), key=lambda s: s.key)

    @_guarded
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
            keys=[(k, v, expiry.get(k)) for k, v in sorted(values.items()) if _live(expiry.get(k), now)],
            task=(task["task"], int(task["version"])) if task.get("task") else None,
            scratch=[json.loads(e) for e in scratch],
            checkpoints=[(cid, metas[cid], snapshots[cid]) for cid in order if cid in metas and cid in snapshots],
        )

    @_guarded
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

    @_guarded
    def load(self, scope: Scope, copy: ScopeCopy, *, keep_ours: bool, now: float) -> None:
        """Write an imported scope in one transaction, as the database's import does: the file's
        keys, task and scratchpad win unless ``keep_ours`` (then what the scope holds stays);
        checkpoints are added by id."""
        k = {p: self._k(scope, p) for p in ("kv", "exp", "task", "scratch", "cps", "cpmeta", "cpdata", "cpseq")}

        def attempt(pipe: Any) -> None:
            expiry = dict(pipe.zrange(k["exp"], 0, -1, withscores=True))
            live = {key for key in pipe.hkeys(k["kv"]) if _live(expiry.get(key), now)}
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

    def staged(self, stage_id: str) -> RedisBackend:
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

    @_guarded
    def begin_stage(self, stage_id: str, now: float) -> None:
        self.r.hset(self._stages, stage_id, repr(now))

    @_guarded
    def stages_begun_before(self, cutoff: float) -> list[str]:
        """Stages begun before ``cutoff`` that are still in Redis (swapped and dropped ones are not)."""
        begun = cast(dict[str, str], self.r.hgetall(self._stages))
        return sorted(stage for stage, began in begun.items() if float(began) < cutoff)

    @property
    def _swapped(self) -> str:
        return f"{self.prefix}:swapped"  # the sequence number of the last stage swapped in

    @_guarded
    def seal_stage(self, stage_id: str, seq: int) -> None:
        """Mark a stage complete: written whole, to be swapped in as import number ``seq``."""
        self.r.set(self._stage_ready(stage_id), seq)

    @_guarded
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
            moved = [
                (f"{stage.prefix}:{token}:{part}", f"{self.prefix}:{token}:{part}")
                for token in pipe.smembers(stage._scopes)
                for part in self._PARTS
            ]
            probe = self.r.pipeline(transaction=False)  # one round trip, not one a key (the stage is ours alone)
            for src, _dst in moved:
                probe.exists(src)
            present = [pair for pair, found in zip(moved, probe.execute(), strict=True) if found]
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

    @_guarded
    def discard(self, stage_id: str) -> None:
        """Drop a stage: its import's records were not committed, or a later import superseded it."""
        stage = self.staged(stage_id)
        tokens: set[str] = cast(set[str], self.r.smembers(stage._scopes))
        keys = [f"{stage.prefix}:{t}:{part}" for t in tokens for part in self._PARTS]
        for i in range(0, len(keys), 1000):
            self.r.delete(*keys[i : i + 1000])
        self.r.delete(stage._scopes, self._stage_ready(stage_id))
        self.r.hdel(self._stages, stage_id)

    @_guarded
    def identity(self) -> tuple[str, int, str]:
        """(server run id, database number, prefix): two backends with the same identity hold the
        same keys, however their URLs are spelled."""
        run_id = str(self.r.info("server").get("run_id", ""))
        return run_id, int(self.r.connection_pool.connection_kwargs.get("db", 0)), self.prefix

    # ---- stats, sweep, discovery
    @_guarded
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

    def _tokens(self) -> list[tuple[str, Scope]]:
        out = []
        for token in self.r.sscan_iter(self._scopes, count=500):
            parts = token.split(":")
            if len(parts) == 3:
                out.append((token, Scope(*(unquote(p) for p in parts))))
        return out

    @_guarded
    def sweep(self, now: float) -> int:
        return sum(
            self._purge(keys=[self._k(scope, "kv"), self._k(scope, "exp")], args=[repr(now)])
            for _token, scope in self._tokens()
        )

    @_guarded
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

    def close(self) -> None:
        try:
            self.r.close()
        except redis.RedisError:
            pass
