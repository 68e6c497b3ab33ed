"""Rate-limit buckets shared by processes (see ``limits.py``): per node in a file, per cluster in
Redis.

``NodeBuckets``: a fixed table of ``SLOTS`` buckets in ``<db dir>/ratelimit.bin``, mapped into
every worker process of the node and changed under an exclusive ``flock`` (held for a few
microseconds, released by the kernel if a process dies). A key lives in one of ``PROBE`` slots
after its hash; when all are taken the least recently used one is reused, which only forgives a
client that has gone quiet (a full bucket is what a new one starts with). The header names the
process that started the node's workers (the gunicorn arbiter): once it has exited, the next
process to open the table zeroes it, so the refusal counts cover "since the node started".

``RedisBuckets``: one hash per client, ``<prefix>:bucket:<client>``, spent by a Lua script (one
atomic round trip, Redis's clock for every node), expiring once the bucket would be full again;
refusals are counted in ``<prefix>:limited``. Connections fail fast (0.5 s, no retries): an
error raises ``StoreDown`` and the limiter counts on the node meanwhile.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agentmemory_server.kernel.limits import SHOWN_CLIENTS, Buckets, ProcessBuckets, RateLimiter, StoreDown
from agentmemory_server.kernel.util import process_alive

NODE_FILE = "ratelimit.bin"
SLOTS = 4096
PROBE = 16
_MAGIC = b"AMRLv001"
_HEADER = struct.Struct("<8sIIq")  # magic, slots, owner pid, refusals
_HEADER_SIZE = 64
_SLOT = struct.Struct("<Qddq64s")  # key hash (0: empty), tokens, at (CLOCK_MONOTONIC s), refusals, key
_SIZE = _HEADER_SIZE + SLOTS * _SLOT.size
REDIS_TIMEOUT = 0.5
MAX_COUNTED_CLIENTS = 1000  # clients counted by name in Redis; the total counts everyone


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest(), "little") or 1


class NodeBuckets:
    """:param path: the table's file (created on first use)."""

    scope = "node"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._map: mmap.mmap | None = None

    def _open(self) -> mmap.mmap:
        if self._map is not None:
            return self._map
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < _SIZE:
                    os.ftruncate(fd, _SIZE)  # never shrunk: another process may have it mapped
                magic, slots, owner, _ = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
                if magic != _MAGIC or slots != SLOTS or (owner != os.getppid() and not process_alive(owner)):
                    os.pwrite(fd, bytes(_SIZE), 0)  # a new node start (or a new layout): start afresh
                    os.pwrite(fd, _HEADER.pack(_MAGIC, SLOTS, os.getppid(), 0), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self._map

    def _locked(self) -> _Locked:
        return _Locked(self)

    def spend(self, key: str, rate: float, burst: int) -> float:
        wanted = _hash(key)
        with self._locked() as table:
            now = time.monotonic()
            offset = _find(table, wanted)
            found, tokens, at, refused, _name = _SLOT.unpack_from(table, offset)
            if found != wanted:
                tokens, at, refused = float(burst), now, 0
            tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
            spent = tokens >= 1.0
            if spent:
                tokens -= 1.0
            else:
                refused += 1
                _bump_total(table)
            name = key.encode("utf-8", "replace")[:64]
            _SLOT.pack_into(table, offset, wanted, tokens, now, refused, name)
        return 0.0 if spent else (1.0 - tokens) / rate

    def refusals(self) -> tuple[int, dict[str, int]]:
        with self._locked() as table:
            total = _HEADER.unpack_from(table, 0)[3]
            counted = []
            for i in range(SLOTS):
                found, _tokens, _at, refused, name = _SLOT.unpack_from(table, _HEADER_SIZE + i * _SLOT.size)
                if found and refused:
                    counted.append((refused, name.rstrip(b"\0").decode("utf-8", "replace")))
        counted.sort(reverse=True)
        return total, {name: n for n, name in counted[:SHOWN_CLIENTS]}

    def size(self) -> int:
        with self._locked() as table:
            return sum(1 for i in range(SLOTS) if struct.unpack_from("<Q", table, _HEADER_SIZE + i * _SLOT.size)[0])

    def close(self) -> None:
        with self._lock:
            if self._map is not None:
                self._map.close()
                self._map = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class _Locked:
    """The mapped table, held by this thread (the process lock) and this process (``flock``)."""

    def __init__(self, buckets: NodeBuckets):
        self.buckets = buckets

    def __enter__(self) -> mmap.mmap:
        self.buckets._lock.acquire()
        try:
            table = self.buckets._open()
            fcntl.flock(self.buckets._fd or 0, fcntl.LOCK_EX)
        except BaseException:
            self.buckets._lock.release()
            raise
        return table

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self.buckets._fd or 0, fcntl.LOCK_UN)
        finally:
            self.buckets._lock.release()


def _find(table: mmap.mmap, wanted: int) -> int:
    """The offset of ``wanted``'s slot: its own, else the first empty one of its probe run, else
    the least recently used one."""
    empty = oldest = None
    oldest_at = math.inf
    start = wanted % SLOTS
    for step in range(PROBE):
        offset = _HEADER_SIZE + ((start + step) % SLOTS) * _SLOT.size
        found, _tokens, at = struct.unpack_from("<Qdd", table, offset)
        if found == wanted:
            return offset
        if found == 0:
            empty = offset if empty is None else empty
        elif at < oldest_at:
            oldest, oldest_at = offset, at
    chosen = empty if empty is not None else oldest
    assert chosen is not None
    return chosen


def _bump_total(table: mmap.mmap) -> None:
    magic, slots, owner, total = _HEADER.unpack_from(table, 0)
    _HEADER.pack_into(table, 0, magic, slots, owner, total + 1)


# KEYS bucket, refusals; ARGV rate, burst, ttl ms, client, most clients counted by name.
# Returns {1, "0"} spent, or {0, "<seconds until a token is back>"}.
_SPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(held[1]) or burst, tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local spent = tokens >= 1
if spent then tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if spent then return {1, '0'} end
redis.call('HINCRBY', KEYS[2], '*', 1)
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 or redis.call('HLEN', KEYS[2]) <= tonumber(ARGV[5]) then
  redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
end
return {0, tostring((1 - tokens) / rate)}
"""


class RedisBuckets:
    """:param url: Redis (REDIS_URL). :param prefix: of every key written."""

    scope = "cluster"

    def __init__(self, url: str, prefix: str):
        self.prefix = prefix
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._spend = self.client.register_script(_SPEND)

    def spend(self, key: str, rate: float, burst: int) -> float:
        ttl_ms = math.ceil(burst / rate * 1000) + 1000  # full again by then: the same as no bucket
        try:
            spent, wait = self._spend(
                keys=[f"{self.prefix}:bucket:{key}", f"{self.prefix}:limited"],
                args=[repr(float(rate)), burst, ttl_ms, key, MAX_COUNTED_CLIENTS],
            )
        except redis.RedisError as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from None
        return 0.0 if spent else float(wait)

    def refusals(self) -> tuple[int, dict[str, int]]:
        try:
            raw: dict[Any, Any] = self.client.hgetall(f"{self.prefix}:limited")
        except redis.RedisError as exc:
            raise StoreDown(f"{type(exc).__name__}: {exc}") from None
        counts = {bytes(k).decode("utf-8", "replace"): int(v) for k, v in raw.items()}
        total = counts.pop("*", 0)
        return total, dict(sorted(counts.items(), key=lambda kv: -kv[1])[:SHOWN_CLIENTS])

    def size(self) -> None:
        return None  # a count of Redis keys would be a scan

    def close(self) -> None:
        self.client.close()


def build_limiter(settings: Any) -> RateLimiter:
    """The limiter ``settings`` ask for (AGENTMEMORY_RATE_LIMIT_STORE, see the module doc)."""
    configured = settings.rate_limit_store
    if configured == "auto":
        if settings.working_memory_backend == "redis":
            configured = "redis"
        else:
            configured = "node" if settings.workers > 1 else "process"
    rate, burst = settings.rate_limit, settings.rate_burst
    if configured == "process" or rate <= 0:
        return RateLimiter(rate, burst, configured="process")

    def node() -> Buckets:
        return NodeBuckets(Path(settings.database_path).parent / NODE_FILE)

    if configured == "node":
        return RateLimiter(rate, burst, store=node(), configured="node")
    store = RedisBuckets(settings.redis_url, settings.rate_limit_redis_prefix)
    fallback = node() if settings.workers > 1 else ProcessBuckets()
    return RateLimiter(rate, burst, store=store, fallback=fallback, configured="redis")
