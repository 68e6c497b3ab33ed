"""Working memory: every behaviour against both backends (SQLite and a real redis-server).

The ``wm`` fixture is parametrised over the backends; each test builds runtimes through it with
an injectable clock (TTL tests move time instead of sleeping) and, for Redis, a key prefix of
its own on the session's redis-server.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from agentmemory_server.kernel import registry
from agentmemory_server.errors import AppError
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.settings import Settings, SettingsError
from agentmemory_server.kernel.util import Clock

BACKENDS = ["sqlite", "redis"]


class Harness:
    """One runtime plus helpers: ``h(tool, **args)`` calls a tool in scope session s1."""

    def __init__(self, rt: Any, clock_state: list[float]):
        self.rt = rt
        self.clock_state = clock_state

    def __call__(self, name: str, **args: Any) -> Any:
        args.setdefault("sessionId", "s1")
        data, _status = registry.unwrap(registry.call(Ctx(self.rt, source="test"), name, args))
        return data

    def status(self, name: str, **args: Any) -> int | None:
        args.setdefault("sessionId", "s1")
        return registry.unwrap(registry.call(Ctx(self.rt, source="test"), name, args))[1]

    def error(self, name: str, **args: Any) -> AppError:
        with pytest.raises(AppError) as info:
            self(name, **args)
        return info.value

    def advance(self, seconds: float) -> None:
        self.clock_state[0] += seconds

    @property
    def service(self) -> Any:
        return self.rt.services["working_memory"]

    # short forms
    def set(self, key: str, value: Any, **args: Any) -> Any:
        return self("memory_working_set", key=key, value=value, **args)

    def get(self, key: str, **args: Any) -> Any:
        return self("memory_working_get", key=key, **args)

    def all(self, **args: Any) -> dict:
        return self("memory_working_get", operation="all", **args)["values"]

    def keys(self, pattern: str = "*", **args: Any) -> list[str]:
        return self("memory_working_get", operation="list", pattern=pattern, **args)["keys"]

    def task(self, operation: str, **args: Any) -> Any:
        return self("memory_working_task", operation=operation, **args)

    def pad(self, operation: str, **args: Any) -> Any:
        return self("memory_working_scratchpad", operation=operation, **args)

    def cp(self, operation: str, **args: Any) -> Any:
        return self("memory_working_checkpoint", operation=operation, **args)

    def stats(self, **args: Any) -> dict:
        return self("memory_working_stats", **args)


@pytest.fixture(params=BACKENDS)
def wm(request, make_runtime):
    """Factory ``wm(**setting overrides) -> Harness`` on the parametrised backend. Calling it
    again with ``same=True`` reopens the same storage (file and Redis prefix)."""
    backend = request.param
    base: dict[str, Any] = {"working_memory_backend": backend}
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        base.update(redis_url=server.url, working_memory_redis_prefix=f"t-{uuid.uuid4().hex}")
    clock_state = [1_790_000_000.0]

    def make(**overrides: Any) -> Harness:
        rt = make_runtime(clock=Clock(lambda: clock_state[0]), **{**base, **overrides})
        assert rt.services["working_memory"].backend.name == backend
        assert not rt.services["working_memory"].using_fallback
        return Harness(rt, clock_state)

    make.backend = backend  # type: ignore[attr-defined]
    return make


def run_threads(n: int, target) -> list[Any]:
    """Start n threads together (barrier) and return their results (or exceptions)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


# -- keys ------------------------------------------------------------------------------------------------


def test_set_get_exists_delete(wm):
    h = wm()
    r = h.set("plan", {"steps": ["a", "b"]})
    assert r["created"] is True and r["backend"] == wm.backend and r["usingFallback"] is False
    assert r["scope"] == {"project": "default", "agentId": "default", "sessionId": "s1"}
    assert h.set("plan", {"steps": ["c"]})["created"] is False
    got = h.get("plan")
    assert got["found"] is True and got["value"] == {"steps": ["c"]}
    assert h("memory_working_get", operation="exists", key="plan")["exists"] is True
    missing = h.get("nope", default={"fallback": 1})
    assert missing["found"] is False and missing["value"] == {"fallback": 1}
    assert h("memory_working_delete", key="plan")["deleted"] is True
    assert h("memory_working_delete", key="plan")["deleted"] is False
    assert h("memory_working_get", operation="exists", key="plan")["exists"] is False


def test_reserved_keys_and_non_json_values_are_refused(wm):
    h = wm()
    for tool, extra in (("memory_working_set", {"value": 1}), ("memory_working_get", {}),
                        ("memory_working_delete", {})):
        err = h.error(tool, key="_scratchpad", **extra)
        assert err.status == 400 and err.code == "reserved_key"
    bad = [{1, 2}, datetime.now(timezone.utc), float("nan"), float("inf"), b"bytes", {1: "int key"},
           {"nested": [object()]}]
    for value in bad:
        err = h.error("memory_working_set", key="k", value=value)
        assert err.status == 400 and err.details["field"] == "value", value
    assert h.stats()["userKeys"] == 0


def test_json_round_trip(wm):
    h = wm()
    values = {
        "tuple": ((1, 2), [1, 2]), "big": (2**70, 2**70), "neg": (-7, -7), "float": (1.5, 1.5),
        "zero_float": (0.0, 0.0), "bools": ([True, False, None], [True, False, None]),
        "nested": ({"a": {"b": [{"c": (3,)}]}}, {"a": {"b": [{"c": [3]}]}}),
        "unicode": ("héllo ✓ 𝄞 日本語 \"quoted\" \\ back", "héllo ✓ 𝄞 日本語 \"quoted\" \\ back"),
        "empty": ([[], {}, ""], [[], {}, ""]), "string": ("1", "1"),
    }
    for key, (stored, _expected) in values.items():
        h.set(key, stored)
    for key, (_stored, expected) in values.items():
        got = h.get(key)["value"]
        assert got == expected and type(got) is type(expected), key
    assert h.all() == {k: e for k, (_s, e) in values.items()}
    # every read is a fresh copy: changing what came back changes nothing stored
    h.get("nested")["value"]["a"]["b"].append("x")
    assert h.get("nested")["value"] == {"a": {"b": [{"c": [3]}]}}


def test_secrets_in_values_are_stripped(wm):
    h = wm()
    h.set("creds", {"password": "hunter2-long-enough", "note": "key sk-ant-" + "a" * 30})
    value = h.get("creds")["value"]
    assert value["password"] == "[REDACTED_SECRET]" and "sk-ant-" not in value["note"]


def test_ttl_expiry_filtering_and_sweep(wm):
    h = wm(working_memory_default_ttl_seconds=60, working_memory_max_keys=4)
    h.set("default_ttl", 1)
    h.set("short", 2, ttlSeconds=5)
    h.set("forever", 3, ttlSeconds=0)
    assert h.get("short")["ttlRemainingSeconds"] == 5
    assert h.get("default_ttl")["ttlRemainingSeconds"] == 60
    assert h.get("forever")["expiresAt"] is None
    h.advance(5)  # expiry is inclusive: at expires_at the key is gone
    assert h.get("short")["found"] is False
    assert h.keys() == ["default_ttl", "forever"]
    h.advance(60)
    assert h.all() == {"forever": 3}
    assert h("memory_working_get", operation="exists", key="default_ttl")["exists"] is False
    stats = h.stats()
    assert stats["userKeys"] == 1 and stats["expiredKeysPendingSweep"] == 2
    h.set("a", 1)
    h.set("b", 2)  # expired keys do not count against capacity (3)
    h.service.sweep()
    assert h.stats()["expiredKeysPendingSweep"] == 0
    h.set("c", 3, ttlSeconds=1)
    h.advance(1)
    h.rt.jobs.run_now("working_memory_sweep")  # registered as a periodic job
    assert h.stats()["expiredKeysPendingSweep"] == 0
    assert h.all() == {"forever": 3, "a": 1, "b": 2}


# -- globs and bulk deletes ---------------------------------------------------------------------------

GLOB_KEYS = ["a", "ab", "abc", "A1", "b.txt", "c.txt", "x*y", "日本", "日本語", "[x]", "a\\b"]
GLOB_CASES = {
    "*": sorted(GLOB_KEYS),
    "a*": ["a", "a\\b", "ab", "abc"],
    "A*": ["A1"],
    "a?": ["ab"],
    "*.txt": ["b.txt", "c.txt"],
    "[ab]*": ["a", "a\\b", "ab", "abc", "b.txt"],
    "[^ab]*": ["A1", "[x]", "c.txt", "x*y", "日本", "日本語"],
    "[a-c]?txt": ["b.txt", "c.txt"],
    "x[*]y": ["x*y"],
    "日?": ["日本"],
    "[[]x]": ["[x]"],
    "a\\*": ["a\\b"],
    "zzz*": [],
}


def test_glob_semantics_are_sqlite_glob(wm):
    h = wm()
    for key in GLOB_KEYS:
        h.set(key, key)
    for pattern, expected in GLOB_CASES.items():
        assert h.keys(pattern) == expected, pattern
    err = h.error("memory_working_get", operation="list", pattern="")
    assert err.status == 400 and err.details["field"] == "pattern"


def test_bulk_delete_needs_confirm_and_never_reaches_reserved_data(wm):
    h = wm()
    for key in ("k1", "k2", "other"):
        h.set(key, 1)
    h.task("set", taskId="t")
    h.pad("append", content="note")
    h.cp("create", description="before")
    for pattern in ("*", "**"):
        err = h.error("memory_working_delete", operation="pattern", pattern=pattern)
        assert err.status == 400 and err.code == "confirmation_required"
    assert h.error("memory_working_delete", operation="pattern").status == 400
    assert h.error("memory_working_delete", operation="pattern", pattern="").status == 400
    r = h("memory_working_delete", operation="pattern", pattern="k*")
    assert r["deleted"] == 2 and r["keys"] == ["k1", "k2"]
    r = h("memory_working_delete", operation="pattern", pattern="*", confirm=True)
    assert r["deleted"] == 1 and h.all() == {}
    stats = h.stats()
    assert stats["hasTaskState"] and stats["scratchpadEntries"] == 1 and stats["checkpointCount"] == 1


def test_clear_keeps_task_scratchpad_and_checkpoints(wm):
    h = wm()
    for i in range(4):
        h.set(f"k{i}", i)
    h.set("gone", 1, ttlSeconds=1)
    h.advance(2)
    h.task("set", taskId="t1", description="ship it")
    h.pad("append", content="remember this")
    cid = h.cp("create")["checkpointId"]
    assert h("memory_working_delete", operation="clear")["cleared"] == 4  # expired key not counted
    assert h.all() == {}
    assert h.task("get")["task"]["taskId"] == "t1"
    assert h.pad("get")["entries"] == ["remember this"]
    assert [c["checkpointId"] for c in h.cp("list")["checkpoints"]] == [cid]
    audit = h("memory_audit", operation="working_clear")["entries"]
    assert audit and "working/default/default/s1" in audit[0]["targetIds"][0]


def test_scopes_are_separate(wm):
    h = wm(agent_id="agent-a")
    h.set("k", "p1", project="p1")
    h.set("k", "p2", project="p2")
    h.set("k", "other-agent", project="p1", agentId="agent-b")
    h.set("k", "s2", project="p1", sessionId="s2")
    assert h.get("k", project="p1")["value"] == "p1"
    assert h.get("k", project="p1")["scope"]["agentId"] == "agent-a"  # AGENT_ID is the default
    assert h.get("k", project="p2")["value"] == "p2"
    assert h.get("k", project="p1", agentId="agent-b")["value"] == "other-agent"
    assert h.get("k", project="p1", sessionId="s2")["value"] == "s2"
    assert h.get("k")["found"] is False  # project "default"
    # ids with the separator characters of either backend's key layout stay apart
    h.set("k", 1, project="a:b", sessionId="c")
    h.set("k", 2, project="a", sessionId="b:c")
    assert h.get("k", project="a:b", sessionId="c")["value"] == 1
    assert h.get("k", project="a", sessionId="b:c")["value"] == 2
    assert h.error("memory_working_get", key="k", agentId="*").status == 400


def test_isolated_agent_scope(wm):
    h = wm(agent_scope="isolated", agent_id="me")
    assert h.set("k", 1)["scope"]["agentId"] == "me"
    err = h.error("memory_working_get", key="k", agentId="someone-else")
    assert err.status == 403
    assert h.get("k", agentId="me")["value"] == 1


# -- task state -------------------------------------------------------------------------------------------


def test_task_state(wm):
    h = wm()
    assert h.task("get")["task"] is None
    assert h.error("memory_working_task", operation="update_progress", advance=1).status == 404
    assert h.error("memory_working_task", operation="set").details["field"] == "taskId"
    r = h.task("set", taskId="t1", description="refactor auth", totalSteps=4, context={"files": ["a.py"]})
    task = r["task"]
    assert r["version"] == 1 and task["status"] == "in_progress" and task["progressPercent"] == 0
    assert task["startedAt"] == task["updatedAt"] and task["context"] == {"files": ["a.py"]}
    h.advance(10)
    r = h.task("update_progress", advance=1, contextUpdate={"branch": "wip"})
    assert r["version"] == 2 and r["task"]["currentStep"] == 1 and r["task"]["progressPercent"] == 25
    assert r["task"]["context"] == {"files": ["a.py"], "branch": "wip"}
    assert r["task"]["updatedAt"] != r["task"]["startedAt"]
    assert h.task("update_progress", progressPercent=250)["task"]["progressPercent"] == 100
    assert h.task("update_progress", progressPercent=-3)["task"]["progressPercent"] == 0
    done = h.task("update_progress", status="completed")["task"]
    assert done["status"] == "completed" and done["progressPercent"] == 100
    err = h.error("memory_working_task", operation="update_progress", advance=1, expectedVersion=1)
    assert err.status == 409 and err.details["version"] == 5
    assert h.task("update_progress", advance=1, expectedVersion=5)["version"] == 6
    again = h.task("set", taskId="t1", description="same task, new plan")["task"]
    assert again["startedAt"] == task["startedAt"]  # the same task keeps its start
    other = h.task("set", taskId="t2")["task"]
    assert other["startedAt"] != task["startedAt"]
    assert h.task("get")["task"] == other and h.task("get")["version"] == 8
    assert h.task("clear")["cleared"] is True and h.task("get")["task"] is None


def test_concurrent_task_progress_updates_lose_nothing(wm):
    h = wm()
    h.task("set", taskId="t", totalSteps=100)
    n = 40
    results = run_threads(n, lambda i: h.task("update_progress", advance=1, contextUpdate={f"w{i}": i}))
    assert not [r for r in results if isinstance(r, Exception)]
    final = h.task("get")
    assert final["task"]["currentStep"] == n and final["version"] == n + 1
    assert final["task"]["context"] == {f"w{i}": i for i in range(n)}
    assert sorted(r["version"] for r in results) == list(range(2, n + 2))


# -- scratchpad -------------------------------------------------------------------------------------------


def test_scratchpad_cap_timestamps_and_clear(wm):
    h = wm(working_memory_max_items_per_session=5)
    for i in range(8):
        r = h.pad("append", content=f"note {i}")
        h.advance(1)
    assert r["count"] == 5 and r["dropped"] == 1
    assert h.pad("get")["entries"] == [f"note {i}" for i in range(3, 8)]
    stamped = h.pad("get", withTimestamps=True)["entries"]
    assert [e["content"] for e in stamped] == [f"note {i}" for i in range(3, 8)]
    stamps = [e["timestamp"] for e in stamped]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert h.pad("get", limit=2)["entries"] == ["note 6", "note 7"]
    assert h("working_scratchpad_get")["entries"] == h.pad("get")["entries"]
    assert h.error("memory_working_scratchpad", operation="append").details["field"] == "content"
    assert h.pad("clear")["cleared"] == 5
    assert h.pad("get")["entries"] == [] and h.pad("clear")["cleared"] == 0


def test_fifty_concurrent_scratchpad_appends_keep_all_fifty(wm):
    h = wm(working_memory_max_items_per_session=100)
    results = run_threads(50, lambda i: h.pad("append", content=f"entry {i}"))
    assert not [r for r in results if isinstance(r, Exception)]
    entries = h.pad("get")["entries"]
    assert len(entries) == 50 and sorted(entries) == sorted(f"entry {i}" for i in range(50))
    assert sorted(r["count"] for r in results) == list(range(1, 51))


# -- checkpoints -------------------------------------------------------------------------------------------


def test_checkpoint_lifecycle_and_retention(wm):
    h = wm(working_memory_max_checkpoints=3)
    assert h.status("memory_working_checkpoint", operation="create") == 201
    ids = [h.cp("create", description=f"cp {i}")["checkpointId"] for i in range(3)]
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    listed = h.cp("list")["checkpoints"]
    assert [c["checkpointId"] for c in listed] == ids  # oldest first; the first one was pruned
    assert [c["description"] for c in listed] == ["cp 0", "cp 1", "cp 2"]
    r = h.cp("create", description="cp 3")
    assert r["pruned"] == [ids[0]]
    missing = h.error("memory_working_checkpoint", operation="restore", checkpointId=str(uuid.uuid4()))
    assert missing.status == 404 and missing.code == "checkpoint_not_found"
    assert h.error("memory_working_checkpoint", operation="restore", checkpointId=ids[0]).status == 404
    assert h.error("memory_working_checkpoint", operation="delete", checkpointId=ids[0]).status == 404
    assert h.error("memory_working_checkpoint", operation="restore").details["field"] == "checkpointId"
    assert h.cp("delete", checkpointId=ids[1])["deleted"] is True
    assert [c["checkpointId"] for c in h("working_checkpoints_list")["checkpoints"]] == [ids[2], r["checkpointId"]]


def _state(h: Harness) -> dict[str, Any]:
    values = h.all()
    return {"values": values, "expiry": {k: h.get(k)["expiresAt"] for k in values},
            "task": h.task("get")["task"], "pad": h.pad("get", withTimestamps=True)["entries"]}


def test_restore_is_exact_and_all_or_nothing(wm):
    h = wm()
    h.set("plan", {"step": 1}, ttlSeconds=300)
    h.set("notes", ["a", "b"], ttlSeconds=0)
    h.task("set", taskId="t", totalSteps=3, context={"x": 1})
    h.pad("append", content="first")
    h.pad("append", content="second")
    before = _state(h)
    cid = h.cp("create", description="before refactor")["checkpointId"]
    h.advance(30)
    h.set("plan", {"step": 9})
    h.set("extra", True)
    h("memory_working_delete", key="notes")
    h.task("update_progress", advance=2, contextUpdate={"y": 2})
    h.pad("append", content="third")
    version = h.task("get")["version"]
    r = h.cp("restore", checkpointId=cid)
    assert r["restoredKeys"] == 2 and r["droppedExpiredKeys"] == 0 and r["hasTaskState"]
    assert _state(h) == before
    assert r["taskVersion"] == version + 1  # never reuses an old version number
    # restoring into a scope the snapshot no longer fits changes nothing at all
    h2 = wm(working_memory_max_keys=1)  # same file and Redis prefix, smaller capacity
    h2.set("plan", "changed")
    err = h2.error("memory_working_checkpoint", operation="restore", checkpointId=cid)
    assert err.status == 409 and err.code == "capacity_exceeded"
    assert h2.all() == {"plan": "changed", "notes": ["a", "b"]}
    assert h2.task("get")["task"] == before["task"]


def test_restore_keeps_absolute_expiry_and_never_resurrects(wm):
    h = wm()
    h.set("short", 1, ttlSeconds=10)
    h.set("long", 2, ttlSeconds=100)
    h.set("forever", 3, ttlSeconds=0)
    long_expiry = h.get("long")["expiresAt"]
    cid = h.cp("create")["checkpointId"]
    h.advance(50)
    h.service.sweep()
    r = h.cp("restore", checkpointId=cid)
    assert r["restoredKeys"] == 2 and r["droppedExpiredKeys"] == 1
    assert h.all() == {"long": 2, "forever": 3}
    assert h.get("long")["expiresAt"] == long_expiry and h.get("long")["ttlRemainingSeconds"] == 50
    assert h.get("forever")["expiresAt"] is None


def test_checkpoints_survive_key_ttl_and_capacity(wm):
    h = wm(working_memory_max_keys=5)
    for i in range(5):
        h.set(f"k{i}", i, ttlSeconds=10)
    ids = [h.cp("create")["checkpointId"] for _ in range(3)]  # not counted as keys
    err = h.error("memory_working_set", key="k5", value=5)
    assert err.status == 409 and err.code == "capacity_exceeded" and err.details["limit"] == 5
    assert h.all() == {f"k{i}": i for i in range(5)}  # nothing evicted
    assert h.set("k0", "overwrite ok", ttlSeconds=10)["created"] is False
    stats = h.stats()
    assert stats["userKeys"] == 5 and stats["checkpointCount"] == 3
    h.advance(3600)
    h.service.sweep()
    assert h.all() == {} and [c["checkpointId"] for c in h.cp("list")["checkpoints"]] == ids
    assert h.cp("restore", checkpointId=ids[0])["droppedExpiredKeys"] == 5


def test_capacity_is_atomic_under_concurrency(wm):
    h = wm(working_memory_max_keys=10)
    results = run_threads(20, lambda i: h.set(f"k{i}", i))
    refused = [r for r in results if isinstance(r, AppError)]
    assert len(refused) == 10 and all(r.code == "capacity_exceeded" for r in refused)
    assert len(h.all()) == 10


def test_checkpoint_is_a_point_in_time_snapshot(wm):
    """A writer moves a token: set k<i+1>, then delete k<i>. Any atomic snapshot holds one key
    or two consecutive ones; a snapshot assembled from several reads can catch none."""
    h = wm(working_memory_max_checkpoints=50)
    h.set("k0", 0, ttlSeconds=0)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 100_000:
            h.set(f"k{i + 1}", i + 1, ttlSeconds=0)
            h.pad("append", content=str(i + 1))
            h("memory_working_delete", key=f"k{i}")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        ids = [h.cp("create")["checkpointId"] for _ in range(25)]
    finally:
        stop.set()
        thread.join(timeout=60)
    for cid in ids:
        h.cp("restore", checkpointId=cid)
        numbers = sorted(int(k[1:]) for k in h.all())
        assert len(numbers) in (1, 2) and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        pad = h.pad("get")["entries"]
        last = int(pad[-1]) if pad else 0
        # entry i+1 is appended after k<i+1> is set and before k<i> is deleted
        assert last in ((numbers[0], numbers[1]) if len(numbers) == 2 else (numbers[0],))


def test_restore_is_atomic_for_readers(wm):
    h = wm()
    checkpoints = {}
    for name in ("B", "A"):
        h("memory_working_delete", operation="clear")
        for i in range(30):
            h.set(f"{name.lower()}{i}", name, ttlSeconds=0)
        h.task("set", taskId=name)
        checkpoints[name] = h.cp("create")["checkpointId"]
    cp_a, cp_b = checkpoints["A"], checkpoints["B"]
    stop = threading.Event()
    seen: list[dict] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(h.all())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20):
            h.cp("restore", checkpointId=cp_b if i % 2 == 0 else cp_a)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert seen
    states = {frozenset(s.items()) for s in seen}
    valid = {frozenset({f"a{i}": "A" for i in range(30)}.items()),
             frozenset({f"b{i}": "B" for i in range(30)}.items())}
    assert states <= valid, "a reader saw a half-restored state"


# -- stats, bad input, session end ---------------------------------------------------------------------


def test_stats(wm):
    h = wm(working_memory_max_keys=50)
    h.set("a", 1)
    h.set("b", 2)
    h.task("set", taskId="t")
    h.pad("append", content="x")
    h.pad("append", content="y")
    h.cp("create")
    s = h.stats()
    assert s["scope"] == {"project": "default", "agentId": "default", "sessionId": "s1"}
    assert (s["backend"], s["usingFallback"]) == (wm.backend, False)
    assert s["userKeys"] == 2 and s["checkpointCount"] == 1 and s["scratchpadEntries"] == 2
    assert s["hasTaskState"] is True and s["totalKeys"] == 2 + 1 + 2 + 1
    assert s["limits"]["maxKeys"] == 50
    assert h.stats(sessionId="empty")["totalKeys"] == 0


def test_bad_input_is_a_clear_400(wm):
    h = wm()
    cases = [
        ("memory_working_set", {"sessionId": None, "key": "k", "value": 1}, "sessionId"),
        ("memory_working_set", {"key": "k"}, "value"),
        ("memory_working_set", {"key": "k", "value": 1, "ttlSeconds": -1}, "ttlSeconds"),
        ("memory_working_set", {"key": "", "value": 1}, "key"),
        ("memory_working_set", {"key": "a\x00b", "value": 1}, "key"),
        ("memory_working_get", {}, "key"),
        ("memory_working_get", {"operation": "peek", "key": "k"}, "operation"),
        ("memory_working_task", {}, "operation"),
        ("memory_working_task", {"operation": "set", "taskId": "t", "status": "done-ish"}, "status"),
        ("memory_working_task", {"operation": "set", "taskId": "t", "context": {"d": {1, 2}}}, "context"),
        ("memory_working_task", {"operation": "set", "taskId": "t", "progressPercent": float("nan")},
         "progressPercent"),
        ("memory_working_delete", {"operation": "pattern"}, "pattern"),
    ]
    for tool, args, field in cases:
        err = h.error(tool, **args)
        assert err.status == 400 and err.details.get("field") == field, (tool, args, err.message)


@pytest.mark.parametrize("enabled", [True, False])
def test_session_end_summarises_into_long_term_memory(wm, enabled):
    h = wm(working_memory_summarize_on_end=enabled)
    h("session_start", project="demo")
    h.set("decision", "use sqlite", project="demo")
    h.task("set", taskId="T-42", description="fix login", totalSteps=2, project="demo")
    h.pad("append", content="login fails on expired cookie", project="demo")
    h("session_end")
    memories = h("memories_list")["memories"]
    if not enabled:
        assert memories == []
        return
    assert len(memories) == 1
    memory = memories[0]
    assert memory["project"] == "demo" and memory["sessionIds"] == ["s1"]
    for text in ("T-42", "fix login", "login fails on expired cookie", "decision", "use sqlite"):
        assert text in memory["content"]
    assert h("memory_working_get", operation="all", project="demo")["count"] == 1  # kept, not cleared


def test_key_order_and_number_types_survive(wm):
    h = wm()
    value = {"z": 1, "a": [1.0, 2**64, "ü"], "t": (None, True)}
    h.set("v", value)
    assert json.dumps(h.get("v")["value"]) == '{"z": 1, "a": [1.0, 18446744073709551616, "\\u00fc"], "t": [null, true]}'


def test_a_redis_url_is_checked_when_the_settings_are_read(redis_server, make_runtime):
    # A mistyped REDIS_URL used to end the server's start (or any CLI command) in a traceback from
    # redis-py; a scheme in capitals is a valid URL (RFC 3986) and is lowered.
    shouted = "REDIS" + redis_server.url[len("redis"):]
    settings = Settings.from_env({"REDIS_URL": shouted})
    assert settings.redis_url == redis_server.url
    rt = make_runtime(redis_url=settings.redis_url, working_memory_backend="redis")
    assert rt.services["working_memory"].backend.name == "redis" and not rt.services["working_memory"].using_fallback
    for wrong, found in (("http://u:hunter2@127.0.0.1:6379", "got a 'http' URL"), ("127.0.0.1:6379", "got no URL")):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"REDIS_URL": wrong})
        assert f"REDIS_URL: expected redis://host:port/db (or rediss://, unix://), {found}" in str(refused.value)
        assert "hunter2" not in str(refused.value)


def test_a_scope_leaves_the_database_only_once_redis_has_it_and_never_during_a_fallback(make_runtime):
    """The database's half of moving working memory to Redis when a fallback is healed (on each
    store: SQLite, and PostgreSQL in its pass)."""
    from agentmemory_server.working.model import BackendDown, Scope

    h = Harness(make_runtime(), [0.0])
    sqlite = h.service.sqlite
    h.set("k", 1, sessionId="s")
    scope = Scope("default", "default", "s")
    assert sqlite.held_scopes() == [scope]

    def redis_gone(copy):
        raise BackendDown("ConnectionError: refused")

    with pytest.raises(BackendDown):
        sqlite.hand_over(scope, 0.0, redis_gone)
    assert h.get("k", sessionId="s")["value"] == 1  # nothing removed
    sqlite.mark_fallback("2026-12-07T00:00:00Z", "Redis went away again")
    taken = []
    assert sqlite.hand_over(scope, 0.0, taken.append) is None and taken == []
    assert sqlite.held_scopes() == [scope]  # the fallback's own mark is not a scope
    sqlite.clear_fallback_mark([scope])
    copy = sqlite.hand_over(scope, 0.0, taken.append)
    assert copy is not None and taken == [copy] and [key[:2] for key in copy.keys] == [("k", "1")]
    assert sqlite.held_scopes() == []
