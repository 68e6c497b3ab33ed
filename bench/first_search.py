"""The first searches a freshly started server answers: what a restart costs its first users.

    python bench/first_search.py [--size 100000 | --data-dir DIR] [--root CHECKOUT] [--pause 2] [--until-hybrid]

Seeds ``--size`` observations as bench/search_latency.py does (or uses an existing data
directory), starts the server (``python src/app.py`` of ``--root``, this checkout by default: give
another checkout to compare two versions on the same database), waits for /livez and for the
lexical index, waits ``--pause`` seconds, then opens ``--connections`` keep-alive connections one
after another and sends three new smart-searches over each. The server balances connections over
its request processes, so the first connections reach every process. Prints the start-up time and
each search's latency; the first search of each process is the one that used to load the query
models. ``--until-hybrid`` first searches from /livez on, a new connection each time, until every
process answers in hybrid mode (a process without its vector index yet, say one building it,
answers with BM25 alone), and prints the CPU seconds the server's processes had used by then.
``--until-built N`` does the same until every process's vector index holds N vectors with
nothing rebuilding (a first start that builds it), timing the searches meanwhile.
``--memory-searches N`` then sends N more searches and prints the RSS and PSS of the server's
processes (a mapped vector index counts as far as searches have read it).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import free_port  # noqa: E402
from search_latency import lexical_ready, memory_mb, percentiles, seed, wait_for_livez  # noqa: E402

UNTIL_HYBRID = False  # --until-hybrid
UNTIL_BUILT = 0  # --until-built N: until every process's vector index holds N vectors, none building
PROBE_EVERY = 0.2  # seconds between --until-hybrid's searches
HYBRID_TIMEOUT = 120.0  # --hybrid-timeout: seconds --until-hybrid waits
PROCESSES = 0  # --processes N: from /livez on, until N request processes have answered
MEMORY_SEARCHES = 0  # --memory-searches N: that many more searches, then the server's RSS and PSS


SERVER_ENV: dict[str, str] = {}  # --server-env NAME=VALUE: settings for the server under test


def first_searches(data_dir: str, root: Path, pause: float, connections: int) -> dict[str, Any]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    env.update(SERVER_ENV)
    env.update(
        AGENTMEMORY_DATA_DIR=data_dir,
        PORT=str(port),
        HOST="127.0.0.1",
        EMBEDDING_PROVIDER="local",
        AGENTMEMORY_LOG_LEVEL="warning",
        AGENTMEMORY_AUTH="off",
        AGENTMEMORY_RATE_LIMIT="0",
    )
    url = f"http://127.0.0.1:{port}/agentmemory"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(root / "src" / "app.py")],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        livez_s = wait_for_livez(url, proc, started)
        every = every_process_answering(url, started, PROCESSES, HYBRID_TIMEOUT) if PROCESSES else {}
        hybrid = until_hybrid(url, started, proc.pid, timeout=HYBRID_TIMEOUT) if UNTIL_HYBRID else {}
        built = until_built(url, started, proc.pid, UNTIL_BUILT, timeout=HYBRID_TIMEOUT) if UNTIL_BUILT else {}
        lexical_ready(requests.Session(), url)
        time.sleep(pause)
        latencies = []
        for c in range(connections):
            http, mine = requests.Session(), []
            for i in range(3):
                q0 = time.perf_counter()
                resp = http.post(
                    url + "/smart-search",
                    json={"query": f"why did the {c} build fail after step {i}", "limit": 10, "includeLessons": False},
                    timeout=60,
                )
                mine.append(round((time.perf_counter() - q0) * 1000, 1))
                assert resp.status_code == 200, resp.text
            latencies.append(mine)
            print(f"connection {c}: " + ", ".join(f"{ms} ms" for ms in mine), flush=True)
        memory = memory_after_searches(url, proc.pid, MEMORY_SEARCHES) if MEMORY_SEARCHES else {}
        return {"livez_s": round(livez_s, 3), **every, **hybrid, **built, "searches_ms": latencies, **memory}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def memory_after_searches(url: str, pid: int, searches: int) -> dict[str, Any]:
    """``searches`` more new searches over four connections, one at a time (their latency), then
    the RSS and PSS of the server's processes (a mapped index is in a process's RSS as far as its
    searches have read it)."""
    sessions, took = [requests.Session() for _ in range(4)], []
    for i in range(searches):
        q0 = time.perf_counter()
        resp = sessions[i % 4].post(
            url + "/smart-search",
            json={"query": f"retry the flaky {i} test after timeout {i * 7}", "limit": 10, "includeLessons": False},
            timeout=60,
        )
        took.append((time.perf_counter() - q0) * 1000)
        assert resp.status_code == 200 and resp.json()["mode"] == "hybrid", resp.text[:300]
    memory, latency = memory_mb(pid), percentiles(took)
    print(
        f"{searches} more searches: p50 {latency['p50']} / p95 {latency['p95']} ms; then RSS {memory['rss_mb']} MB, "
        f"PSS {memory['pss_mb']} MB",
        flush=True,
    )
    return {"memory_searches": searches, "memory_searches_ms": latency, **memory}


def every_process_answering(url: str, started: float, processes: int, timeout: float) -> dict[str, Any]:
    """From /livez on, /health on a new connection every 0.05 s until ``processes`` request
    processes have answered (told apart by the event bus's origin, host:pid). /livez is the first
    process to answer; a process still opening the database (its start-up check) answers later,
    and until then the connections go to the others."""
    seen: dict[str, float] = {}
    while len(seen) < processes:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"only {len(seen)} of {processes} request processes answered")
        health = requests.get(url + "/health", timeout=60).json()
        seen.setdefault(health["live"]["bus"]["origin"], round(time.perf_counter() - started, 3))
        time.sleep(0.05)
    print(f"every request process answering from {max(seen.values()):.2f} s after the start", flush=True)
    return {"every_process_s": max(seen.values()), "processes_from_s": sorted(seen.values())}


def until_hybrid(url: str, started: float, pid: int, in_a_row: int = 8, timeout: float = 120) -> dict[str, Any]:
    """From /livez on, a search a new connection at a time (so both request processes answer)
    until ``in_a_row`` in a row answer in hybrid mode (every process has its vectors): when that
    began, and what the searches before it answered and took."""
    before: list[tuple[float, str, float]] = []  # seconds since start, mode, ms
    streak_began, streak = None, 0
    while streak < in_a_row:
        if time.perf_counter() - started > timeout:
            raise SystemExit("searches never answered in hybrid mode")
        q0 = time.perf_counter()
        body = requests.post(
            url + "/smart-search",
            json={"query": "why did the deploy fail", "limit": 10, "includeLessons": False},
            timeout=60,
        ).json()
        at, ms = q0 - started, (time.perf_counter() - q0) * 1000
        time.sleep(PROBE_EVERY)  # a few users' searches, not a flood that takes the loader's cores
        if body["mode"] == "hybrid":
            streak_began, streak = streak_began if streak else at, streak + 1
        else:
            before.append((round(at, 2), body["mode"], round(ms, 1)))
            streak = 0
    modes = sorted({mode for _, mode, _ in before})
    cpu = server_cpu_seconds(pid)
    print(
        f"hybrid from {streak_began:.2f} s after the start; {len(before)} searches before it ({modes}); "
        f"the server's processes had used {cpu} s of CPU",
        flush=True,
    )
    return {"hybrid_s": round(streak_began or 0.0, 3), "before_hybrid": before, "cpu_s_at_hybrid": cpu}


def until_built(url: str, started: float, pid: int, vectors: int, timeout: float, in_a_row: int = 8) -> dict[str, Any]:
    """From /livez on, /health and a search on a new connection every 0.2 s until ``in_a_row``
    answers in a row show a vector index of ``vectors`` vectors that nothing is rebuilding (every
    process has the whole index: a first start that builds it); the searches' latency meanwhile,
    and the server's CPU seconds by then."""
    took, streak, done_at = [], 0, 0.0
    while streak < in_a_row:
        if time.perf_counter() - started > timeout:
            raise SystemExit("the vector index was never built in every process")
        http = requests.Session()
        index = http.get(url + "/health", timeout=60).json()["vectors"]["index"]
        q0 = time.perf_counter()
        http.post(url + "/smart-search", json={"query": "why did the deploy fail", "limit": 10}, timeout=60)
        took.append((time.perf_counter() - q0) * 1000)
        whole = index["repair"] is None and index["vectors"] >= vectors
        done_at, streak = (done_at if streak else q0 - started, streak + 1) if whole else (0.0, 0)
        time.sleep(PROBE_EVERY)
    cpu, latency = server_cpu_seconds(pid), percentiles(took)
    print(
        f"every process's vector index whole from {done_at:.2f} s after the start; the server's processes had used "
        f"{cpu} s of CPU; {len(took)} searches meanwhile p50 {latency['p50']} / p95 {latency['p95']} ms",
        flush=True,
    )
    return {"built_s": round(done_at, 3), "cpu_s_at_built": cpu, "searches_while_building_ms": latency}


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) the server's live processes have used (its process group)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == pid:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ProcessLookupError, IndexError):
            continue
    return round(ticks / os.sysconf("SC_CLK_TCK"), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="observations to seed (without --data-dir)")
    parser.add_argument("--data-dir", help="an existing data directory instead of seeding one")
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose server to start")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between start-up and the first search")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--until-hybrid",
        action="store_true",
        help="from /livez on, search until every process answers in hybrid mode (its vectors in)",
    )
    parser.add_argument(
        "--memory-searches",
        type=int,
        default=0,
        help="then this many more searches, and the RSS and PSS of the server's processes",
    )
    parser.add_argument(
        "--until-built",
        type=int,
        default=0,
        help="from /livez on, until every process's vector index holds this many vectors (a first start builds it)",
    )
    parser.add_argument(
        "--hybrid-timeout", type=float, default=120.0, help="seconds --until-hybrid or --until-built wait"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="from /livez on, until this many request processes answer /health (the default server runs 2)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server under test (repeatable)",
    )
    opts = parser.parse_args()
    SERVER_ENV.update(item.split("=", 1) for item in opts.server_env)
    global UNTIL_HYBRID, UNTIL_BUILT, MEMORY_SEARCHES, HYBRID_TIMEOUT, PROCESSES
    UNTIL_HYBRID, UNTIL_BUILT, MEMORY_SEARCHES = opts.until_hybrid, opts.until_built, opts.memory_searches
    HYBRID_TIMEOUT, PROCESSES = opts.hybrid_timeout, opts.processes
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = opts.data_dir or tmp
        if not opts.data_dir:
            print(f"seeding {opts.size} observations: {seed(tmp, opts.size)}", flush=True)
        result = first_searches(data_dir, Path(opts.root), opts.pause, opts.connections)
    commit = subprocess.run(["git", "-C", opts.root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(
        json.dumps(
            {
                "benchmark": "first_search",
                "date": time.strftime("%Y-%m-%d"),
                "server_commit": commit.stdout.strip(),
                "server_env": SERVER_ENV,
                "pause_s": opts.pause,
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
