"""Redis for working memory: the connection, and where each scope's data lives in it.

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

Connections fail fast (0.5 s connect timeout, no retries): a failure raises ``BackendDown`` and the
subsystem falls back to SQLite; any other Redis error is a 503 (``guarded``).

``RedisKeys`` is the base of the Redis backend: ``ScopeMoves`` (redis_moves.py) adds what moves whole
scopes, ``RedisBackend`` (redis_backend.py) one request's operations on one scope.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agentmemory_server import errors
from agentmemory_server.errors import Unavailable
from agentmemory_server.working.model import BackendDown, Scope

CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 5.0


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


def guarded(fn: Callable) -> Callable:
    """Connection failures become BackendDown (-> fallback); other Redis errors a clear 503."""

    @functools.wraps(fn)
    def wrapper(self: RedisKeys, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendDown(f"{type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:
            raise Unavailable(
                f"Redis refused the working-memory operation: {exc}", code=errors.WORKING_MEMORY_UNAVAILABLE
            ) from exc

    return wrapper


def is_live(expiry: float | None, now: float) -> bool:
    return expiry is None or expiry > now


T = TypeVar("T")


class RedisKeys:
    """A connection to Redis and the names of a scope's keys in it (see the module docstring)."""

    def __init__(self, url: str, prefix: str, *, audit: Callable[[str, Scope, str], None]):
        self.prefix = prefix
        self._audit = audit
        self.r = connect(url)
        try:
            self.r.ping()
        except redis.RedisError as exc:
            self.r.close()
            raise BackendDown(f"{type(exc).__name__}: {exc}") from exc

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

    def _tokens(self) -> list[tuple[str, Scope]]:
        out = []
        for token in self.r.sscan_iter(self._scopes, count=500):
            parts = token.split(":")
            if len(parts) == 3:
                out.append((token, Scope(*(unquote(p) for p in parts))))
        return out

    @guarded
    def identity(self) -> tuple[str, int, str]:
        """(server run id, database number, prefix): two backends with the same identity hold the
        same keys, however their URLs are spelled."""
        run_id = str(self.r.info("server").get("run_id", ""))
        return run_id, int(self.r.connection_pool.connection_kwargs.get("db", 0)), self.prefix

    def close(self) -> None:
        try:
            self.r.close()
        except redis.RedisError:
            pass
