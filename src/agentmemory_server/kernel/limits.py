"""Write rate limits: one token bucket per client.

A client is its bearer token (a fingerprint of it, never the token) when auth is on, else its
IP address. Each write (POST/PUT/PATCH/DELETE, a WebSocket call) takes one token; a bucket
holds at most ``burst`` tokens and refills at ``rate`` per second. An empty bucket means 429
``rate_limited`` with ``Retry-After`` (the seconds until a token is back), so a flooding client
slows down instead of queueing up threads and writes for everyone else.

Where the buckets are counted (``AGENTMEMORY_RATE_LIMIT_STORE``) decides what the limit covers:

- ``process``: in this process's memory (one worker process: the whole node);
- ``node``: in a small file shared by the worker processes of one node (``limits_shared.py``);
- ``redis``: in Redis (``REDIS_URL``), shared by every process of every node: a cluster-wide
  limit. When Redis does not answer, the node's own count takes over (visible in /health) and
  Redis is tried again every ``REDIS_RETRY_SECONDS``.

``auto`` picks ``redis`` when the working memory uses Redis (Redis is part of the deployment),
else ``node`` with several worker processes (the server's resolved AGENTMEMORY_WORKERS), else
``process``. In-memory buckets are at most ``max_clients``: the least recently seen is forgotten
first (a bucket left alone refills anyway, so forgetting it only forgives a client that has gone
quiet).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from agentmemory_server.errors import LastError, RateLimited

log = logging.getLogger("agentmemory.limits")
MAX_CLIENTS = 10_000
REDIS_RETRY_SECONDS = 10.0
SHOWN_CLIENTS = 100  # clients listed by name in /health


def client_key(token: str | None, remote: str | None) -> str:
    """The bucket a request counts against: its token (fingerprinted) or its address."""
    if token:
        return "token:" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]
    return f"ip:{remote or '?'}"


def caller_key(principal: Any, secret: str | None, remote: str | None) -> str:
    """The bucket of a call made by ``principal`` (a WebSocket call: the token was shown when the
    socket opened); the same key ``client_key`` gives for that token."""
    if principal is not None and getattr(principal, "token_id", None):
        return f"token:{principal.token_id}"
    return client_key(secret if principal is not None else None, remote)


class StoreDown(Exception):
    """A shared bucket store did not answer; the caller counts locally meanwhile."""


class Buckets(Protocol):
    """Where buckets are counted. ``spend`` takes one token of ``key``'s bucket and answers 0.0,
    or, when the bucket is empty, the seconds until it holds a token again (nothing spent)."""

    scope: str  # what one bucket covers: "process", "node" or "cluster"

    def spend(self, key: str, rate: float, burst: int) -> float: ...
    def refusals(self) -> tuple[int, dict[str, int]] | None: ...
    def size(self) -> int | None: ...
    def close(self) -> None: ...


class ProcessBuckets:
    """Buckets in this process's memory."""

    scope = "process"

    def __init__(self, *, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic):
        self.max_clients, self._clock = max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def spend(self, key: str, rate: float, burst: int) -> float:
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.pop(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate)
            spent = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if spent else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return 0.0 if spent else (1.0 - tokens) / rate

    def refusals(self) -> None:
        return None  # the limiter's own counts are this store's

    def size(self) -> int:
        with self._lock:
            return len(self._buckets)

    def close(self) -> None:
        pass


class RateLimiter:
    """:param rate: tokens per second (0: no limit).
    :param burst: bucket size.
    :param store: where buckets are counted (default: this process).
    :param fallback: counts while ``store`` raises ``StoreDown`` (default: this process)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        store: Buckets | None = None,
        fallback: Buckets | None = None,
        configured: str = "process",
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate, self.burst, self.configured = rate, burst, configured
        self.store: Buckets = store or ProcessBuckets(max_clients=max_clients, clock=clock)
        self.fallback: Buckets | None = fallback if store is not None else None
        self._clock = clock
        self._lock = threading.Lock()
        self._probe = threading.Lock()  # one request at a time tries a store that was down
        self.down_since: float | None = None
        self.down_error: str | None = None
        self.store_error = LastError()  # the shared store's last failure, kept after it answers again
        self._retry_at = 0.0
        self.limited = 0
        self.by_client: dict[str, int] = {}
        self.last: dict[str, Any] | None = None

    def take(self, key: str, what: str = "") -> None:
        """Spend one token of ``key``'s bucket.

        :raise RateLimited: the bucket is empty; ``retry_after`` says when it has a token again.
        """
        if self.rate <= 0:
            return
        wait = self._spend(key)
        if wait <= 0:
            return
        with self._lock:
            self.limited += 1
            if key in self.by_client or len(self.by_client) < SHOWN_CLIENTS:
                self.by_client[key] = self.by_client.get(key, 0) + 1
            self.last = {"client": key, "what": what}
        seconds = max(1, math.ceil(wait))
        raise RateLimited(
            f"too many writes: at most {self.rate:g} per second (bursts of {self.burst}) per client "
            f"(AGENTMEMORY_RATE_LIMIT / AGENTMEMORY_RATE_BURST); retry in {seconds} s",
            retry_after=seconds,
        )

    def _spend(self, key: str) -> float:
        if self.fallback is None:
            return self.store.spend(key, self.rate, self.burst)
        probing = False
        if self.down_since is not None:
            if self._clock() < self._retry_at or not self._probe.acquire(blocking=False):
                return self.fallback.spend(key, self.rate, self.burst)
            probing = True
        try:
            wait = self.store.spend(key, self.rate, self.burst)
        except StoreDown as exc:
            self._went_down(str(exc))
            return self.fallback.spend(key, self.rate, self.burst)
        finally:
            if probing:
                self._probe.release()
        if self.down_since is not None:
            log.warning("rate limits: %s answers again; limits are %s-wide again", self.configured, self.store.scope)
            self.down_since = self.down_error = None
            self.store_error.succeeded()
        return wait

    def _went_down(self, error: str) -> None:
        now = self._clock()
        if self.down_since is None:
            self.down_since = now
            log.warning(
                "rate limits: %s is unreachable (%s); counting per %s until it answers (retried every %gs)",
                self.configured,
                error,
                self.fallback.scope if self.fallback else "process",
                REDIS_RETRY_SECONDS,
            )
        self.down_error = error[:300]
        self.store_error.failed(f"{self.configured} unreachable: {error}")
        self._retry_at = now + REDIS_RETRY_SECONDS

    @property
    def scope(self) -> str:
        """What one bucket covers right now."""
        if self.down_since is not None and self.fallback is not None:
            return self.fallback.scope
        return self.store.scope

    def health(self) -> dict[str, Any]:
        shared = None
        if self.down_since is None:
            try:
                shared = self.store.refusals()
            except StoreDown:
                shared = None
        with self._lock:
            limited, by_client = (self.limited, dict(self.by_client)) if shared is None else shared
            body: dict[str, Any] = {
                "enabled": self.rate > 0,
                "perSecond": self.rate,
                "burst": self.burst,
                "store": self.configured,
                "scope": self.scope,
                "clients": (self.fallback if self.down_since is not None and self.fallback else self.store).size(),
                "limited": limited,
                "limitedByClient": by_client,
                "limitedHere": self.limited,
                "lastLimited": self.last,
                "counted": _COUNTED[self.scope if shared is not None else "process"],
            }
        if self.fallback is not None:
            body["usingFallback"] = self.down_since is not None
            body.update(self.store_error.fields())
        if self.down_since is not None:
            body["note"] = (
                f"{self.configured} is unreachable ({self.down_error}): each {self.scope} counts its own writes, so "
                f"a client spread over several may write more than the limit until it answers"
            )
        return body

    def close(self) -> None:
        for store in (self.store, self.fallback):
            if store is not None:
                store.close()


_COUNTED = {
    "process": "refusals by this worker process since it started",
    "node": "refusals by every worker process of this node since the node started",
    "cluster": "refusals by every node sharing the Redis counters",
}
