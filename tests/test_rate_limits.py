"""Rate limits beyond one process: buckets shared by the worker processes of a node (a mapped
file) and by every node (Redis), with the node counting alone while Redis is down.

Real processes throughout: spenders are separate Python processes, servers are real server
processes, Redis is a real redis-server. Limits are set so that nothing refills during a test
(a rate of one write per 1000 s), so exactly ``burst`` writes get through however the work is
spread."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from agentmemory_server.adapters.web import create_app
from agentmemory_server.errors import RateLimited
from agentmemory_server.kernel.limits import ProcessBuckets, RateLimiter
from agentmemory_server.kernel.limits_shared import NodeBuckets, RedisBuckets, build_limiter
from agentmemory_server.kernel.settings import Settings
from conftest import ManualClock, post

SLOW = 0.001  # tokens per second: nothing refills within a test

# A separate process spending ``n`` tokens of one bucket; prints how many were granted.
SPENDER = """
import json, sys
from agentmemory_server.kernel.limits_shared import NodeBuckets, RedisBuckets
kind, where, key, n, burst = sys.argv[1:6]
store = NodeBuckets(where) if kind == "node" else RedisBuckets(where, sys.argv[6])
print(json.dumps(sum(store.spend(key, 0.001, int(burst)) == 0.0 for _ in range(int(n)))))
store.close()
"""


def spend_in_processes(kind: str, where: str, key: str, *, processes: int, each: int, burst: int,
                       prefix: str = "") -> list[int]:
    procs = [subprocess.Popen([sys.executable, "-c", SPENDER, kind, where, key, str(each), str(burst), prefix],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    try:
        return [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_worker_processes_of_a_node_share_one_bucket(tmp_path):
    granted = spend_in_processes("node", str(tmp_path / "ratelimit.bin"), "token:abc", processes=4, each=30,
                                 burst=50)
    assert sum(granted) == 50 and sum(1 for g in granted if g) >= 2, granted
    buckets = NodeBuckets(tmp_path / "ratelimit.bin")
    try:  # this process shares the node's table: the bucket is empty here too, and the refusals are counted
        assert buckets.spend("token:abc", SLOW, 50) > 0
        assert buckets.spend("token:other", SLOW, 50) == 0.0
        total, by_client = buckets.refusals()
        assert total == 4 * 30 - 50 + 1 and by_client == {"token:abc": total}
        assert buckets.size() == 2
    finally:
        buckets.close()


def test_a_full_node_table_reuses_the_least_recently_used_slot(tmp_path):
    buckets = NodeBuckets(tmp_path / "ratelimit.bin")
    try:
        for i in range(5000):  # more clients than slots
            assert buckets.spend(f"ip:10.0.{i // 250}.{i % 250}", SLOW, 1) == 0.0
        assert 4000 < buckets.size() <= 4096  # a few slots stay free where probe runs crowd
        # The newest clients are still remembered (their one token is spent).
        assert all(buckets.spend(f"ip:10.0.19.{i}", SLOW, 1) > 0 for i in range(240, 250))
    finally:
        buckets.close()


def test_every_process_of_every_node_shares_one_bucket_in_redis(redis_server):
    prefix = f"rl-{time.monotonic_ns()}"
    granted = spend_in_processes("redis", redis_server.url, "token:abc", processes=4, each=30, burst=50,
                                 prefix=prefix)
    assert sum(granted) == 50 and sum(1 for g in granted if g) >= 2, granted
    buckets = RedisBuckets(redis_server.url, prefix)
    try:
        wait = buckets.spend("token:abc", SLOW, 50)
        assert 900 < wait <= 1000  # Redis's clock: a token is back in about 1/rate seconds
        total, by_client = buckets.refusals()
        assert total == 4 * 30 - 50 + 1 and by_client == {"token:abc": total}
        ttl = buckets.client.pttl(f"{prefix}:bucket:token:abc")
        assert 0 < ttl <= 50 / SLOW * 1000 + 1000  # the bucket goes once it would be full again
    finally:
        buckets.close()


def test_while_redis_is_down_the_node_counts_alone_and_health_says_so(own_redis, tmp_path):
    clock = ManualClock()
    limiter = RateLimiter(2.0, 3, store=RedisBuckets(own_redis.url, "rl-down"), fallback=ProcessBuckets(),
                          configured="redis", clock=lambda: clock.now)
    try:
        for _ in range(3):
            limiter.take("ip:a")
        assert limiter.health()["scope"] == "cluster" and limiter.health()["usingFallback"] is False
        own_redis.stop()
        limiter.take("ip:a")  # Redis's bucket was empty; the process's own one is not
        health = limiter.health()
        assert health["usingFallback"] is True and health["scope"] == "process"
        assert "unreachable" in health["note"] and "ConnectionError" in health["note"]
        assert "ConnectionError" in health["lastError"] and health["lastErrorAt"] and health["recoveredAt"] is None
        for _ in range(2):
            limiter.take("ip:a")
        with pytest.raises(RateLimited):
            limiter.take("ip:a")
        own_redis.start()  # back on the same port
        limiter.take("ip:b")  # not retried before REDIS_RETRY_SECONDS: still the fallback
        assert limiter.health()["usingFallback"] is True
        clock.advance(11)
        limiter.take("ip:b")  # retried: Redis answers again
        assert limiter.health()["usingFallback"] is False and limiter.health()["scope"] == "cluster"
        back = limiter.health()  # the outage stays readable, marked recovered from
        assert back["lastError"] == health["lastError"] and back["lastErrorAt"] == health["lastErrorAt"]
        assert back["recoveredAt"] >= back["lastErrorAt"]
    finally:
        limiter.close()


def test_each_token_has_its_own_bucket(make_runtime):
    rt = make_runtime(secret="admin-secret-for-limits", rate_limit=SLOW, rate_burst=3)
    client = create_app(runtime=rt).test_client()

    def as_(token):
        return {"Authorization": f"Bearer {token}"}

    made = client.post("/agentmemory/tokens", json={"principal": "bot"}, headers=as_("admin-secret-for-limits"))
    bot = made.get_json()["token"]  # creating it was the admin's first write
    admin = [client.post("/agentmemory/remember", json={"content": f"admin {i}"}, headers=as_("admin-secret-for-limits"))
             .status_code for i in range(3)]
    assert admin == [201, 201, 429]
    mine = [client.post("/agentmemory/remember", json={"content": f"bot {i}"}, headers=as_(bot)).status_code
            for i in range(4)]
    assert mine == [201, 201, 201, 429]  # not held back by the admin's empty bucket
    by_client = client.get("/agentmemory/health", headers=as_("admin-secret-for-limits")).get_json()["rateLimit"][
        "limitedByClient"]
    assert sorted(by_client.values()) == [1, 1] and all(k.startswith("token:") for k in by_client)


def test_auto_picks_redis_with_a_redis_working_memory_and_the_node_with_several_workers(tmp_path):
    def store(**values):
        settings = Settings.from_env({}, data_dir=str(tmp_path), **values)
        limiter = build_limiter(settings)
        try:
            return limiter.configured, limiter.scope
        finally:
            limiter.close()

    assert store() == ("process", "process")
    assert store(workers=3) == ("node", "node")
    assert store(working_memory_backend="redis") == ("redis", "cluster")
    assert store(workers=3, rate_limit_store="process") == ("process", "process")
    assert store(rate_limit=0.0, working_memory_backend="redis") == ("process", "process")  # no limit at all


def test_a_client_spread_over_two_nodes_and_their_workers_gets_one_limit(live_server, redis_server):
    """Two server processes with two workers each share one bucket per client through Redis."""
    env = {"AGENTMEMORY_RATE_LIMIT": str(SLOW), "AGENTMEMORY_RATE_BURST": "12", "AGENTMEMORY_WORKERS": "2",
           "AGENTMEMORY_RATE_LIMIT_STORE": "redis", "REDIS_URL": redis_server.url,
           "AGENTMEMORY_RATE_LIMIT_REDIS_PREFIX": f"rl-{time.monotonic_ns()}"}
    a, b = live_server(env=env), live_server(env=env)
    statuses = [post(node.api("/remember"), {"content": f"limit note {i}"}, headers={"Connection": "close"})
                .status_code for i, node in enumerate([a, b] * 15)]
    assert statuses.count(201) == 12 and statuses.count(429) == 18, statuses
    for node in (a, b):
        health = requests.get(node.api("/health"), timeout=10).json()["rateLimit"]
        assert health["store"] == "redis" and health["scope"] == "cluster" and health["usingFallback"] is False
        assert health["limited"] == 18 and health["limitedByClient"] == {"ip:127.0.0.1": 18}


def test_the_workers_of_one_node_share_a_limit_without_redis(live_server):
    server = live_server(env={"AGENTMEMORY_RATE_LIMIT": str(SLOW), "AGENTMEMORY_RATE_BURST": "10",
                              "AGENTMEMORY_WORKERS": "3"})
    with server.pinned_sessions(2) as sessions:
        statuses = [sessions[i % 2].post(server.api("/remember"), json={"content": f"node note {i}"},
                                         timeout=10).status_code for i in range(25)]  # alternating processes
        limiter = sessions[0].get(server.api("/health"), timeout=10).json()["rateLimit"]
    # Each process's own bucket would have let 10 through; one bucket for the node lets 10 in all.
    assert statuses.count(201) == 10 and statuses.count(429) == 15, statuses
    assert limiter["store"] == "node" and limiter["scope"] == "node" and limiter["limited"] == 15
    assert "every worker process of this node" in limiter["counted"]
