"""Latency of the memory-model tools in-process (no HTTP), at a given corpus size.

    python bench/memory_model.py [--observations 10000] [--lessons 1000] [--actions 500]
                                 [--memories 1000] [--queries 200]

Seeds a fresh database through the real tools (observe, lesson save, action create with
requires edges, remember), then times lesson recall, context compilation (pinned slots +
lessons + past sessions), frontier, slot listing, diagnose, consolidate, auto-forget (dry run)
and the session-end work (summary + reflection) on a 200-observation session. Prints
p50/p95/max per operation and ends with one JSON line. Timings on a shared 2-core machine are
noisy; compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.runtime import Runtime  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402

WORDS = ("cache redis timeout retry deploy staging schema migration index query login token session "
         "upload billing invoice queue worker cron lint pytest fixture docker build release").split()


def call(rt: Runtime, name: str, **args):
    return registry.unwrap(registry.call(Ctx(rt, source="bench"), name, args))[0]


def phrase(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def seed(rt: Runtime, opts: argparse.Namespace, rng: random.Random) -> float:
    start = time.perf_counter()
    for i in range(opts.observations):
        sid = f"s{i // 200}"
        data = {"tool_name": rng.choice(["Bash", "Edit", "Read"]),
                "tool_input": {"command": phrase(rng, 3), "file_path": f"src/{rng.choice(WORDS)}.py"},
                "tool_output": phrase(rng, 20) + (" TODO: " + phrase(rng, 4) if i % 50 == 0 else "")}
        call(rt, "agent_observe", sessionId=sid, hookType="post_tool_use", project=f"p{i % 3}",
             timestamp=f"2026-10-{1 + (i // 2000) % 28:02d}T10:00:00Z", data=data)
    for i in range(opts.lessons):
        call(rt, "memory_lesson_save", content=f"lesson {i}: {phrase(rng)}", project=f"p{i % 3}",
             confidence=round(rng.uniform(0.2, 0.9), 2))
    ids: list[str] = []
    for i in range(opts.actions):
        requires = rng.sample(ids, 1) if ids and i % 3 == 0 else []
        action = call(rt, "memory_action_create", title=f"action {i} {phrase(rng, 3)}", project="p0",
                      priority=rng.randint(1, 10), requires=requires)["action"]
        ids.append(action["id"])
    for i in range(opts.memories):
        call(rt, "memory_save", content=f"memory {i} {phrase(rng, 12)}", project=f"p{i % 3}")
    call(rt, "memory_slot_replace", label="guidance", content=phrase(rng, 40), project="p0")
    return time.perf_counter() - start


def timed(fn, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 2),
            "max_ms": round(samples[-1], 2), "n": repeat}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observations", type=int, default=10_000)
    parser.add_argument("--lessons", type=int, default=1000)
    parser.add_argument("--actions", type=int, default=500)
    parser.add_argument("--memories", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    opts = parser.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        rt = build_runtime(Settings.from_env({}, data_dir=tmp, background_jobs=False,
                                       max_obs_per_session=100_000))
        try:
            seconds = seed(rt, opts, rng)
            print(f"seeded {opts.observations} observations, {opts.lessons} lessons, {opts.actions} actions, "
                  f"{opts.memories} memories in {seconds:.1f} s")
            q = opts.queries
            results = {
                "lesson_recall": timed(lambda: call(rt, "memory_lesson_recall", query=phrase(rng, 3), project="p0"), q),
                "context": timed(lambda: call(rt, "context", sessionId="new", project="p0"), q),
                "frontier": timed(lambda: call(rt, "memory_frontier", project="p0"), q),
                "slot_list": timed(lambda: call(rt, "memory_slot_list", project="p0"), q),
                "diagnose": timed(lambda: call(rt, "memory_diagnose"), 5),
                "consolidate": timed(lambda: call(rt, "memory_consolidate", project="p0"), 3),
                "auto_forget_dry_run": timed(lambda: call(rt, "auto_forget", dryRun=True), 3),
                "session_end_200_obs": timed(lambda: call(rt, "session_end", sessionId="s0"), 3),
            }
        finally:
            rt.close()
    for name, figures in results.items():
        print(f"{name:22s} p50 {figures['p50_ms']:8.2f} ms   p95 {figures['p95_ms']:8.2f} ms   "
              f"max {figures['max_ms']:8.2f} ms   (n={figures['n']})")
    print(json.dumps({"bench": "memory_model", "observations": opts.observations, "lessons": opts.lessons,
                      "actions": opts.actions, "memories": opts.memories, "seed_seconds": round(seconds, 1),
                      "results": results}))


if __name__ == "__main__":
    main()
