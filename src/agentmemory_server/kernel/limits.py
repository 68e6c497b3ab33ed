"""Write rate limits: one token bucket per client.

A client is its bearer token (a fingerprint of it, never the token) when auth is on, else its
IP address. Each write (POST/PUT/PATCH/DELETE, a WebSocket call) takes one token; a bucket
holds at most ``burst`` tokens and refills at ``rate`` per second. An empty bucket means 429
``rate_limited`` with ``Retry-After`` (the seconds until a token is back), so a flooding client
slows down instead of queueing up threads and writes for everyone else.

Buckets live in memory, per server process (with several gunicorn workers, each has its own),
at most ``max_clients`` of them: the least recently seen is forgotten first (a bucket left alone
refills anyway, so forgetting it only forgives a client that has gone quiet).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agentmemory_server.errors import RateLimited

MAX_CLIENTS = 10_000


def client_key(token: str | None, remote: str | None) -> str:
    """The bucket a request counts against: its token (fingerprinted) or its address."""
    if token:
        return "token:" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]
    return f"ip:{remote or '?'}"


class RateLimiter:
    """:param rate: tokens per second (0: no limit).
    :param burst: bucket size."""

    def __init__(
        self, rate: float, burst: int, *, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic
    ):
        self.rate, self.burst, self.max_clients, self._clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()
        self.limited = 0
        self.by_client: dict[str, int] = {}
        self.last: dict[str, Any] | None = None

    def take(self, key: str, what: str = "") -> None:
        """Spend one token of ``key``'s bucket.

        :raise RateLimited: the bucket is empty; ``retry_after`` says when it has a token again.
        """
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._remember(key, tokens - 1.0, now)
                return
            self._remember(key, tokens, now)
            self.limited += 1
            if key in self.by_client or len(self.by_client) < 100:
                self.by_client[key] = self.by_client.get(key, 0) + 1
            self.last = {"client": key, "what": what}
            wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        raise RateLimited(
            f"too many writes: at most {self.rate:g} per second (bursts of {self.burst}) per client "
            f"(AGENTMEMORY_RATE_LIMIT / AGENTMEMORY_RATE_BURST); retry in {wait} s",
            retry_after=wait,
        )

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self.rate > 0,
                "perSecond": self.rate,
                "burst": self.burst,
                "clients": len(self._buckets),
                "limited": self.limited,
                "limitedByClient": dict(self.by_client),
                "lastLimited": self.last,
            }
