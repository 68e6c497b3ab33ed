"""The CPU one observe costs, in process, on a fresh SQLite store.

    python bench/observe_cpu.py [--observes 3000] [--embedder auto|none|hash] [--profile 25]

Builds the product's runtime (``wiring.build_runtime``, background jobs off, so no worker
competes) on a fresh data directory and drives ``--observes`` observes through
``registry.call(Ctx(rt, source="rest"), "agent_observe", args)``, the call the REST route makes,
with ``bench/ingest.py``'s payloads (~1 KB, a secret in every tenth, 8 interleaved clients'
sessions). Prints CPU ms per observe (``time.process_time``: the whole process;
``time.thread_time``: the calling thread alone), p50/p95 wall per call, SQL statements per
observe (a trace callback on the store's connections, set only for a separate counting pass so
it does not weigh on the timed one), RSS, and ``bench/machine.py``'s line. ``--profile N`` adds a
cProfile pass printing the N costliest functions (cumulative).

No HTTP, no Flask: the figure is the observe path's own cost, which the machine's load moves
much less than a throughput figure.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ingest import payload  # noqa: E402
from machine import header  # noqa: E402

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402

CLIENTS = 8


def observe_args(run: str, n: int) -> dict[str, Any]:
    """The ``n``-th observe of a run, as the REST route hands it to the registry (the JSON body)."""
    return json.loads(payload(run, n % CLIENTS, n // CLIENTS))


def drive(rt: Any, run: str, count: int) -> list[float]:
    """``count`` observes; the wall seconds of each. Every one must be stored (201)."""
    walls = []
    for n in range(count):
        args = observe_args(run, n)
        started = time.perf_counter()
        result = registry.call(Ctx(rt, source="rest"), "agent_observe", args)
        walls.append(time.perf_counter() - started)
        _data, status = registry.unwrap(result)
        if status != 201:
            raise SystemExit(f"observe {n} answered {status}: {_data}")
    return walls


class StatementCounter:
    """Counts the statements SQLite runs on the store's connections (writer and this thread's
    reader), by verb. Bench-only: it reads the database object's connections."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.by_verb: dict[str, int] = {}
        self.total = 0
        self.nested = 0  # statements SQLite runs inside one (FTS5's own, trigger programs)
        self._last = ""

    def _seen(self, sql: str) -> None:
        # The callback also fires at the start of each trigger program, with the text of the
        # statement that fired it again (or a "-- ..." comment): those are not statements sent.
        repeated, self._last = sql == self._last, sql
        if repeated or sql.startswith("--"):
            self.nested += 1
            return
        self.total += 1
        verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
        self.by_verb[verb] = self.by_verb.get(verb, 0) + 1

    def connections(self) -> list[Any]:
        return [self.db._writer, *getattr(self.db, "_readers", [])]

    def __enter__(self) -> StatementCounter:
        for conn in self.connections():
            conn.set_trace_callback(self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        for conn in self.connections():
            conn.set_trace_callback(None)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB."""
    current = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
    return round(current, 1), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def pct(values: list[float], p: int) -> float:
    return round(statistics.quantiles(values, n=100)[p - 1] * 1000, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--observes", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--count-pass", type=int, default=400, help="observes run with the statement trace on")
    ap.add_argument("--embedder", default="auto", help="EMBEDDING_PROVIDER (auto: the product's default)")
    ap.add_argument("--profile", type=int, default=0, help="print the N costliest functions of a cProfile pass")
    args = ap.parse_args()
    commit, machine = header(f"in-process observe, SQLite, embedder {args.embedder}")
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            {}, data_dir=data_dir, background_jobs=False, embedding_provider=args.embedder, auth="off",
            rate_limit=0,
        )
        rt = build_runtime(settings)
        try:
            drive(rt, "warmup", args.warmup)
            cpu0, thread0 = time.process_time(), time.thread_time()
            walls = drive(rt, "timed", args.observes)
            cpu = (time.process_time() - cpu0) / args.observes * 1000
            thread = (time.thread_time() - thread0) / args.observes * 1000
            with StatementCounter(rt.db) as counter:
                drive(rt, "counted", args.count_pass)
            per_observe = {verb: round(n / args.count_pass, 2) for verb, n in sorted(counter.by_verb.items())}
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                drive(rt, "profiled", args.observes // 3)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
            rss, peak = rss_mb()
        finally:
            rt.close()
    result = {
        "commit": commit, "observes": args.observes, "embedder": args.embedder,
        "cpu_ms_per_observe": round(cpu, 3), "thread_cpu_ms_per_observe": round(thread, 3),
        "p50_ms": pct(walls, 50), "p95_ms": pct(walls, 95),
        "statements_per_observe": round(counter.total / args.count_pass, 2), "statements_by_verb": per_observe,
        "nested_per_observe": round(counter.nested / args.count_pass, 2),
        "rss_mb": rss, "peak_rss_mb": peak, "machine": machine,
    }
    print(f"observe x{args.observes} in process: {result['cpu_ms_per_observe']} ms CPU each "
          f"({result['thread_cpu_ms_per_observe']} ms on the calling thread), wall p50 {result['p50_ms']} ms, "
          f"p95 {result['p95_ms']} ms; {result['statements_per_observe']} SQL statements each {per_observe} "
          f"(+{result['nested_per_observe']} run inside them: triggers, FTS5); "
          f"RSS {rss} MB (peak {peak})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
