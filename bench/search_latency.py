"""Smart-search latency, start-up time and memory at 10k and 100k observations.

    python bench/search_latency.py [--sizes 10000,100000] [--queries 500] [--rerank]

For each size: a fresh database is seeded through the product's own ``agent_observe`` tool
(post_tool_use hook payloads with realistic tools, commands, files and outputs), then every
search row gets a 384-d vector. Embedding 100k texts with the real model would take 20+ minutes
on this 2-core machine, so the *stored* vectors are seeded with a fast deterministic generator
of the same dimension and tagged with the local model's id (the matrix maths per query is the
same); the *query* side uses the real local model (the default, bge-small). Each distinct query is asked once
first (reported separately: that includes embedding it), then 500 timed queries run with the
query-embedding cache warm, as SPEC §11 specifies.
Then it measures: in-process start-up (Runtime construction, which loads the vector matrix),
server start-up (``python src/app.py`` until /livez answers), 500 smart-search queries over HTTP
and in-process (p50/p95/p99), and the server's RSS and PSS after its worker has also embedded a
batch of new records (the embedder's batch path is where onnxruntime's memory peaks). Targets (SPEC §11): p95 < 25 ms @10k and
< 100 ms @100k, start-up @100k < 3 s, RSS @100k < 500 MB. ``--rerank`` measures every
smart-search a second time with ``rerank: true`` (the cross-encoder over the top candidates), on
the same database, in-process and over HTTP. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# One BLAS thread, as every server process has (adapters/__init__.py): OpenBLAS's idle threads
# spin after each small product and would be counted as in-process search CPU.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from agentmemory_server.kernel import registry  # noqa: E402
from agentmemory_server.retrieval import rerank  # noqa: E402
from agentmemory_server.retrieval import late_interaction, vectors  # noqa: E402
from agentmemory_server.retrieval.embeddings import LOCAL_DIM, LOCAL_MODEL_ID, to_blob  # noqa: E402
from ingest import free_port  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.wiring import build_runtime  # noqa: E402
from agentmemory_server.kernel.settings import Settings  # noqa: E402

TOOLS = ["Bash", "Edit", "Read", "Grep", "Write"]
AREAS = ["auth", "billing", "search", "cache", "queue", "export", "upload", "session", "config", "router",
         "parser", "scheduler", "metrics", "payments", "webhooks", "migrations", "cli", "viewer"]
VERBS = ["fix", "refactor", "add tests for", "speed up", "document", "debug", "rename", "remove dead code in"]
ERRORS = ["KeyError", "TimeoutError", "AssertionError", "ConnectionRefusedError", "TypeError", "ValueError"]
QUERIES = [f"{verb} {area}" for verb in VERBS for area in AREAS][:100] + \
          [f"{error} in {area}" for error in ERRORS for area in AREAS[:8]]


def payload(rng: random.Random, i: int) -> dict[str, Any]:
    area, tool = rng.choice(AREAS), rng.choice(TOOLS)
    path = f"src/{area}/{rng.choice(['core', 'api', 'models', 'utils'])}_{i % 97}.py"
    if tool == "Bash":
        tool_input: Any = {"command": f"pytest tests/test_{area}.py -k {rng.choice(VERBS).split()[0]} -q"}
        output = f"{rng.randint(1, 90)} passed, {rng.randint(0, 3)} failed; {rng.choice(ERRORS)} in {area} handler"
    else:
        tool_input = {"file_path": path, "pattern": f"def {area}_{i % 13}"}
        output = f"{rng.choice(VERBS)} {area}: updated {rng.randint(1, 40)} lines in {path}"
    return {"hookType": "post_tool_use", "sessionId": f"bench-{i // 400}", "project": f"proj-{i % 4}",
            "cwd": "/work/bench", "timestamp": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:{i % 60:02d}Z",
            "data": {"tool_name": tool, "tool_input": tool_input, "tool_output": output}}


def seed(data_dir: str, size: int) -> dict[str, float]:
    # "hash", not "none": with no provider nothing is queued for embedding (no vectors to seed).
    # The backlog bound (100k by default) would shed the rest: every record gets its stand-in vectors.
    rt = build_runtime(Settings.from_env({}, data_dir=data_dir, background_jobs=False, embedding_provider="hash",
                                         embed_backlog_max=size + 1000))
    ctx, rng = Ctx(rt, source="bench"), random.Random(7)
    t0 = time.perf_counter()
    for i in range(size):
        registry.call(ctx, "agent_observe", payload(rng, i))
    t1 = time.perf_counter()
    vectors_rng = np.random.default_rng(11)
    now = rt.clock.iso()
    while True:  # the stand-in embedder: the same BLOBs and SQL as the worker, other numbers
        rows = rt.db.reader().vectors.backlog_take(5000, time.time())
        if not rows:
            break
        matrix = vectors_rng.standard_normal((len(rows), LOCAL_DIM)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        with rt.db.transaction("bench_seed_vectors") as tx:
            for row, vector in zip(rows, matrix):
                tx.vectors.put(row["rowid"], LOCAL_MODEL_ID, to_blob(vector), LOCAL_DIM, now)
                # late interaction's token vectors, 24-64 of them as these records' texts give
                tokens = vectors_rng.standard_normal((int(vectors_rng.integers(24, 65)), late_interaction.DIMS))
                tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
                tx.vectors.put_tokens(row["rowid"], late_interaction.MODEL_ID, late_interaction.pack(tokens))
            tx.vectors.backlog_done([r["rowid"] for r in rows], "9999")
    rt.db.checkpoint()
    rt.close()
    return {"observe_s": round(t1 - t0, 1), "vectors_s": round(time.perf_counter() - t1, 1)}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)  # noqa: E731
    return {"p50": round(statistics.median(ordered), 2), "p95": pick(0.95), "p99": pick(0.99)}


UNIQUE = False  # --unique-queries: every search a query no process has seen (no query cache hits)
TRACE_SLOW = 0  # --trace-slow N: print the N slowest searches of each concurrent run
CLIENT_ROUNDS = 1  # --client-rounds N: the concurrent run N times on one server


def query_text(rng: random.Random) -> str:
    if not UNIQUE:
        return rng.choice(QUERIES)
    return f"{rng.choice(VERBS)} {rng.choice(AREAS)} after {rng.choice(ERRORS)} in {rng.choice(AREAS)} {rng.randint(0, 10**6)}"


def query_args(rng: random.Random, rerank: bool = False) -> dict[str, Any]:
    args: dict[str, Any] = {"query": query_text(rng), "limit": 10, "includeLessons": False, "rerank": rerank}
    if rng.random() < 0.5:
        args["project"] = f"proj-{rng.randint(0, 3)}"
    return args


def in_process(data_dir: str, queries: int, rerank: bool = False, late: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    rt = build_runtime(Settings.from_env({}, data_dir=data_dir, background_jobs=False, embedding_provider="local",
                                         search_late_interaction=late))
    engine = rt.health_sections().get("storage", {}).get("lexical", {})
    startup = time.perf_counter() - t0
    ctx, rng, lat, modes = Ctx(rt, source="bench"), random.Random(3), [], set()
    cold, cpu = [], []
    for text in QUERIES:  # first sight of each query: embedding included (the cache is then warm)
        q0 = time.perf_counter()
        registry.call(ctx, "memory_smart_search", {"query": text, "limit": 10, "includeLessons": False,
                                                   "rerank": rerank})
        cold.append((time.perf_counter() - q0) * 1000)
    for _ in range(queries):
        q0, c0 = time.perf_counter(), time.thread_time()
        data, _ = registry.unwrap(registry.call(ctx, "memory_smart_search", query_args(rng, rerank)))
        lat.append((time.perf_counter() - q0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)  # this thread's CPU: what other load cannot inflate
        modes.add(data["mode"])
    vectors_loaded = rt.health_sections()["vectors"]["vectors"]
    reconcile = reconcile_cost(rt)
    rt.close()
    return {"startup_s": round(startup, 3), "vectors": vectors_loaded, "modes": sorted(modes), "reconcile": reconcile,
            "lexical": f"{engine.get('engine')} ({engine.get('state')})",
            "cold_query": percentiles(cold[1:]), "cpu_ms": percentiles(cpu), **percentiles(lat)}


def reconcile_cost(rt: Any) -> dict[str, Any]:
    """The worker's reconcile when nothing is missing (what it does after every burst): its time,
    and how many write transactions it opened; against the single INSERT ... SELECT it used to
    run inside one write transaction (the time it held the database's write lock)."""
    service = vectors.service(rt)
    opened, transaction = [], rt.db.transaction

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(name)
        return transaction(name, *args, **kwargs)

    rt.db.transaction = counting
    t0 = time.perf_counter()
    queued = service.reconcile()
    now_s = time.perf_counter() - t0
    rt.db.transaction = transaction
    t0 = time.perf_counter()
    with rt.db.transaction("bench_reconcile_before") as tx:
        queued_before = tx.vectors.backlog_requeue_missing(service.model, "9999", tokens_model=service.tokens_model)
    return {"seconds": round(now_s, 3), "write_transactions": len(opened), "queued": queued,
            "before_lock_s": round(time.perf_counter() - t0, 3), "queued_before": queued_before}


def memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS of the server: gunicorn's arbiter plus its worker (the process group). RSS
    counts pages the two share twice; PSS splits them."""
    totals = {"rss_mb": 0, "pss_mb": 0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                key = {"Rss:": "rss_mb", "Pss:": "pss_mb"}.get(line.split(" ", 1)[0])
                if key:
                    totals[key] += int(line.split()[1])
        except (OSError, ProcessLookupError):
            continue
    return {k: round(v / 1024, 1) for k, v in totals.items()}


def embed_a_batch(http: requests.Session, url: str, rng: random.Random) -> None:
    """Observe a few new records and wait until the server's worker has embedded them, so the
    memory figure includes the embedder's batch path as it runs in production."""
    for i in range(64):
        http.post(url + "/observe", json=payload(rng, 10_000_000 + i), timeout=60)
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        if http.get(url + "/health", timeout=30).json()["vectors"]["backlog"] == 0:
            return
        time.sleep(0.5)


def lexical_ready(http: requests.Session, url: str, timeout: float = 1800) -> float:
    """Seconds until the server's lexical index (Tantivy, built in the background on a database
    it has not indexed yet) answers: until then searches fall back to FTS5 while the build takes
    a core, which is not the steady state this bench measures."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        lexical = http.get(url + "/health", timeout=30).json().get("storage", {}).get("lexical", {})
        if lexical.get("state") in (None, "ready") and not lexical.get("pending"):
            return round(time.perf_counter() - t0, 1)
        time.sleep(0.5)
    raise SystemExit("the lexical index was not ready in time")


def concurrent(url: str, queries: int, clients: int, rerank: bool, seed: int = 100) -> dict[str, Any]:
    """``queries`` smart-searches from ``clients`` threads, each on its own kept-alive session:
    searches per second and the latency percentiles under that load."""
    import threading

    timed: list[tuple[float, int, int, float]] = []  # ms, client, its nth request, start (s into the run)
    lock = threading.Lock()

    def client(number: int) -> None:
        http, rng, mine = requests.Session(), random.Random(seed + number), []
        for nth in range(queries // clients):
            q0 = time.perf_counter()
            resp = http.post(url + "/smart-search", json=query_args(rng, rerank), timeout=60)
            mine.append(((time.perf_counter() - q0) * 1000, number, nth, q0 - t0))
            assert resp.status_code == 200, resp.text
        with lock:
            timed.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if TRACE_SLOW:
        print(f"  the {TRACE_SLOW} slowest of {len(timed)} searches from {clients} clients "
              "(ms, client, its nth search, started s into the run):")
        for ms, number, nth, start in sorted(timed, reverse=True)[:TRACE_SLOW]:
            print(f"    {ms:8.1f}  client {number:2d}  #{nth:<3d} at {start:6.2f} s")
    lat = [t[0] for t in timed]
    return {"clients": clients, "per_s": round(len(lat) / elapsed, 1), **percentiles(lat)}


def wait_for_livez(url: str, proc: subprocess.Popen, started: float, timeout: float = 120) -> float:
    """Seconds from ``started`` until the server at ``url`` answers /livez (exits if it died)."""
    while True:
        try:
            requests.get(url + "/livez", timeout=1)
            return time.perf_counter() - started
        except requests.RequestException:
            if proc.poll() is not None or time.perf_counter() - started > timeout:
                raise SystemExit("server did not start") from None
            time.sleep(0.02)


def over_http(data_dir: str, queries: int, rerank: bool = False, clients: int = 0, late: bool = True) -> dict[str, Any]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    env.update(AGENTMEMORY_DATA_DIR=data_dir, PORT=str(port), HOST="127.0.0.1", EMBEDDING_PROVIDER="local",
               AGENTMEMORY_LOG_LEVEL="warning", AGENTMEMORY_THREADS="8",
               AGENTMEMORY_AUTH="off", AGENTMEMORY_RATE_LIMIT="0",  # loopback only; auth is on by default
               AGENTMEMORY_SEARCH_LATE_INTERACTION=str(late).lower())
    url = f"http://127.0.0.1:{port}/agentmemory"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "app.py")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        startup = wait_for_livez(url, proc, t0)
        http, rng, lat = requests.Session(), random.Random(3), []
        lexical_s = lexical_ready(http, url)
        for text in QUERIES:  # warm the server's query-embedding cache
            http.post(url + "/smart-search", json={"query": text, "includeLessons": False, "rerank": rerank},
                      timeout=60)
        for _ in range(queries):
            q0 = time.perf_counter()
            resp = http.post(url + "/smart-search", json=query_args(rng, rerank), timeout=60)
            lat.append((time.perf_counter() - q0) * 1000)
            assert resp.status_code == 200, resp.text
        # Each round opens its clients' connections anew; later rounds find the server's threads warm.
        rounds = [concurrent(url, queries, clients, rerank, 100 * (r + 1)) for r in range(CLIENT_ROUNDS if clients else 0)]
        loaded = {**rounds[0], "later_rounds": rounds[1:]} if rounds else None
        embed_a_batch(http, url, rng)
        health = http.get(url + "/health", timeout=30).json()
        return {"startup_s": round(startup, 3), "lexical_ready_s": lexical_s, **memory_mb(proc.pid),
                "vectors": health["vectors"]["vectors"], **percentiles(lat),
                "late_counts_one_process": health["vectors"]["lateInteraction"],
                **({"concurrent": loaded} if loaded else {})}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--rerank", action="store_true", help="also measure smart-search with rerank: true")
    parser.add_argument("--clients", type=int, default=0,
                        help="also run the HTTP queries from this many concurrent clients (searches/s)")
    parser.add_argument("--late-ab", type=int, default=0, metavar="ROUNDS",
                        help="then ROUNDS servers with late interaction on and off, alternately, over HTTP "
                             "(with --clients: searches/s); the fair comparison on one database")
    parser.add_argument("--late-cost", action="store_true",
                        help="also measure in-process smart-search with late interaction off (what it costs)")
    parser.add_argument("--unique-queries", action="store_true",
                        help="every search a new query (no query-cache hits), as agents' prompts are")
    parser.add_argument("--second-round-cost", action="store_true",
                        help="with --rerank: also rerank in-process without the second round (what it costs)")
    parser.add_argument("--trace-slow", type=int, default=0, metavar="N",
                        help="with --clients: print the N slowest searches (which client, its nth search, when)")
    parser.add_argument("--client-rounds", type=int, default=1, metavar="N",
                        help="with --clients: run the concurrent searches N times on the same server")
    opts = parser.parse_args()
    global UNIQUE, TRACE_SLOW, CLIENT_ROUNDS
    UNIQUE, TRACE_SLOW, CLIENT_ROUNDS = opts.unique_queries, opts.trace_slow, opts.client_rounds
    print("stored vectors: deterministic random 384-d stand-ins tagged with the local model id; "
          "queries: the real local model (query cache on). Timings are noisy: 2 shared cores.")
    report: dict[str, Any] = {}
    for size in (int(s) for s in opts.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            seeded = seed(tmp, size)
            # The server first: it builds the Tantivy index, which the in-process runs then read
            # (a runtime without background jobs builds none and searches with FTS5).
            remote = over_http(tmp, opts.queries, clients=opts.clients)
            local = in_process(tmp, opts.queries)
            without_late = in_process(tmp, opts.queries, late=False) if opts.late_cost else None
            if without_late is not None and opts.clients:
                without_late["http"] = over_http(tmp, opts.queries, clients=opts.clients, late=False)
            if opts.rerank:
                reranked = {"in_process": in_process(tmp, opts.queries, True),
                            "http": over_http(tmp, opts.queries, True)}
                if opts.second_round_cost:
                    seeds, rerank.SECOND_ROUND_SEEDS = rerank.SECOND_ROUND_SEEDS, 0
                    reranked["in_process_one_round"] = in_process(tmp, opts.queries, True)
                    rerank.SECOND_ROUND_SEEDS = seeds
            late_ab = [
                {"late": late, **over_http(tmp, opts.queries, clients=opts.clients, late=late)}
                for _ in range(opts.late_ab)
                for late in (True, False)
            ]
            db_mb = round(sum(p.stat().st_size for p in Path(tmp).glob("agentmemory.db*")) / 2**20, 1)
        report[str(size)] = {"seed": seeded, "db_mb": db_mb, "in_process": local, "http": remote}
        if opts.rerank:
            report[str(size)]["rerank"] = reranked
        if without_late is not None:
            report[str(size)]["in_process_without_late"] = without_late
        if late_ab:
            report[str(size)]["late_ab"] = late_ab
        print(f"\n{size} observations (db {db_mb} MB; seeded in {seeded['observe_s']} s + vectors {seeded['vectors_s']} s)")
        print(f"  in-process: start-up {local['startup_s']} s ({local['vectors']} vectors loaded); smart-search "
              f"p50 {local['p50']} / p95 {local['p95']} / p99 {local['p99']} ms (query cache warm; CPU of the "
              f"query's thread p50 {local['cpu_ms']['p50']} / p95 {local['cpu_ms']['p95']} ms); modes "
              f"{local['modes']}, lexical {local['lexical']}; first sight of a query (embedding it): p50 {local['cold_query']['p50']} / "
              f"p95 {local['cold_query']['p95']} ms")
        rec = local["reconcile"]
        print(f"  reconcile with nothing missing: {rec['seconds']} s on a reader, {rec['write_transactions']} write "
              f"transactions, {rec['queued']} queued; as one INSERT ... SELECT it held the write lock "
              f"{rec['before_lock_s']} s ({rec['queued_before']} queued)")
        if without_late is not None:
            w = without_late
            print(f"  in-process, late interaction off: p50 {w['p50']} / p95 {w['p95']} ms (CPU p50 "
                  f"{w['cpu_ms']['p50']} / p95 {w['cpu_ms']['p95']} ms); first sight p50 {w['cold_query']['p50']} "
                  f"/ p95 {w['cold_query']['p95']} ms")
            if "http" in w:
                c = w["http"]["concurrent"]
                print(f"  HTTP, late interaction off: p95 {w['http']['p95']} ms; {c['clients']} clients: "
                      f"{c['per_s']} searches/s, p50 {c['p50']} / p95 {c['p95']} ms")
        print(f"  HTTP:       start-up {remote['startup_s']} s, lexical index ready {remote['lexical_ready_s']} s later; RSS {remote['rss_mb']} MB (PSS "
              f"{remote['pss_mb']} MB, after embedding a batch of 64 new records); smart-search "
              f"p50 {remote['p50']} / p95 {remote['p95']} / p99 {remote['p99']} ms")
        if "concurrent" in remote:
            c = remote["concurrent"]
            print(f"  HTTP, {c['clients']} clients: {c['per_s']} searches/s, p50 {c['p50']} / p95 {c['p95']} / "
                  f"p99 {c['p99']} ms")
            for n, later in enumerate(c["later_rounds"], 2):
                print(f"    round {n} (new connections, same server): {later['per_s']} searches/s, "
                      f"p50 {later['p50']} / p95 {later['p95']} / p99 {later['p99']} ms")
        for run in late_ab:
            c = run.get("concurrent") or {}
            print(f"  HTTP, late interaction {'on ' if run['late'] else 'off'}: p50 {run['p50']} / p95 {run['p95']} ms"
                  + (f"; {c['clients']} clients: {c['per_s']} searches/s, p95 {c['p95']} ms" if c else "")
                  + f"; RSS {run['rss_mb']} MB; one process's late-interaction counts {run['late_counts_one_process']}")
        if opts.rerank:
            ri, rh = reranked["in_process"], reranked["http"]
            print(f"  rerank:     in-process p50 {ri['p50']} / p95 {ri['p95']} / p99 {ri['p99']} ms (CPU p50 "
                  f"{ri['cpu_ms']['p50']} / p95 {ri['cpu_ms']['p95']} ms; first sight "
                  f"p95 {ri['cold_query']['p95']} ms); HTTP p50 {rh['p50']} / p95 {rh['p95']} / p99 {rh['p99']} ms; "
                  f"RSS {rh['rss_mb']} MB (PSS {rh['pss_mb']} MB)")
            if "in_process_one_round" in reranked:
                r1 = reranked["in_process_one_round"]
                print(f"  rerank without the second round: in-process p50 {r1['p50']} / p95 {r1['p95']} ms (CPU p50 "
                      f"{r1['cpu_ms']['p50']} / p95 {r1['cpu_ms']['p95']} ms; first sight "
                      f"p95 {r1['cold_query']['p95']} ms)")
    print(json.dumps({"benchmark": "search_latency", "queries": opts.queries, "sizes": report}))


if __name__ == "__main__":
    main()
