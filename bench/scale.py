"""Scale: request latency and throughput at 10k, 100k and 1M records with 1 and 10 HTTP clients.

    bench/scale.py [--sizes 10k,100k] [--memories 10000] [--seconds 10] [--embedder none|local]
                   [--only concurrent:remember,observe]

For each size: writes a synthetic coding-agent corpus (bench/corpus.py: tool calls, edits,
errors, prompts; Zipf-like words, a few common words in most records) as JSON Lines, loads it
through the bulk import path (``agentmemory import FILE.jsonl``) and reports records/s, starts
the real server (gunicorn) on a free 127.0.0.1 port and reports the time to answer and its RSS,
then runs each workload for --seconds with keep-alive clients and prints p50/p95/p99 and
requests/s per endpoint:

- 1 client, one endpoint at a time: smart-search with all-common, mixed, rare and file queries,
  remember (a fifth of them near-duplicates, so the supersede path runs), GET /memories?latest,
  GET /sessions, GET /observations, POST /timeline, POST /context;
- 10 clients: smart-search (all kinds of query), remember, GET /memories?latest, context;
- 8 clients posting observations (POST /observe);
- 10 clients on a mixed workload (observe 40 %, smart-search 30 %, remember 10 %,
  memories 10 %, context 10 %).

With ``--embedder local`` the import queues every record for a vector, so the runs happen while
the embedder drains that backlog (the /health backlog is printed before and after). Ends with
one JSON line holding everything, the date and the commit.

``--import-only`` stops after the bulk import of each size (no server, no workloads) and adds the
peak RSS of the import's processes (``--strategy replace``: the all-or-nothing import, one
transaction over the whole file); ``--corpus FILE`` keeps the corpus there and reuses it when
it exists (written for the first size only), so repeated import runs skip writing it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from ingest import payload, start_server  # noqa: E402
from load import rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
Request = tuple[str, str, bytes | None]


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * factor)


# -- loading ---------------------------------------------------------------------------------------


def write_corpus(path: Path, observations: int, memories: int) -> int:
    header = {"version": "agentmemory-python/1", "service": "agentmemory", "exportedAt": corpus.iso(0)}
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(header) + "\n")
        for record in corpus.records(observations, memories):
            out.write(json.dumps(record) + "\n")
            count += 1
    return count


def bulk_import(data_dir: str, path: Path, env: dict[str, str], strategy: str = "merge") -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "cli.py"), "--quiet", "import", str(path), "--strategy", strategy],
        env={**env, "AGENTMEMORY_DATA_DIR": data_dir},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    # the largest peak of any child waited for so far: the import (or its parsing process)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_mb = round(after.ru_maxrss / 1024)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the import and its parser
    return {
        "records": result["imported"],
        "seconds": round(seconds, 1),
        "per_s": round(result["imported"] / seconds),
        "peak_rss_mb": peak_mb,
        "cpu_s": round(cpu, 1),
    }


def import_only(size: int, args: argparse.Namespace) -> dict:
    """Write (or reuse) the corpus and time the bulk import alone."""
    print(f"\n== {size:,} observations + {args.memories:,} memories (import only, {args.strategy})")
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        source = Path(args.corpus) if args.corpus else Path(tmp) / "corpus.jsonl"
        if not source.exists():
            started = time.perf_counter()
            lines = write_corpus(source, size, args.memories)
            took = time.perf_counter() - started
            print(f"  corpus: {lines:,} records, {source.stat().st_size / 1e6:.0f} MB in {took:.0f} s")
        else:
            print(f"  corpus: reusing {source} ({source.stat().st_size / 1e6:.0f} MB)")
        data_dir = str(Path(tmp) / "data")
        load_before = os.getloadavg()[0]
        loaded = bulk_import(data_dir, source, server_env(args.embedder), args.strategy)
        load_after = os.getloadavg()[0]
        db_bytes = sum(f.stat().st_size for f in Path(data_dir).rglob("*") if f.is_file())
    print(
        f"  bulk import: {loaded['records']:,} records in {loaded['seconds']} s ({loaded['per_s']:,}/s), "
        f"CPU {loaded['cpu_s']} s, peak RSS {loaded['peak_rss_mb']} MB, data {db_bytes / 1e6:.0f} MB, "
        f"load {load_before:.2f} before / {load_after:.2f} after"
    )
    return {
        "observations": size,
        "memories": args.memories,
        "strategy": args.strategy,
        "import": loaded,
        "data_mb": round(db_bytes / 1e6),
    }


def server_env(embedder: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the bulk import: this shell's without its AGENTMEMORY_* settings, then
    the bench's own and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMEMORY_")}
    env.update(AGENTMEMORY_AUTH="off", EMBEDDING_PROVIDER=embedder, AGENTMEMORY_LOG_LEVEL="warning")
    return {**env, **(extra or {})}


def extra_settings(items: list[str]) -> dict[str, str]:
    """``--server-env NAME=VALUE`` items: settings given to the server under test (and its
    bulk import), to measure one setting's effect."""
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--server-env wants NAME=VALUE, got {item!r}")
        found[name] = value
    return found


# -- one client ------------------------------------------------------------------------------------


class Client:
    """One keep-alive connection that times each request."""

    def __init__(self, url: str):
        host, port = url.split("//")[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def send(self, request: Request) -> tuple[int, bytes, float]:
        method, path, body = request
        start = time.perf_counter()
        self.conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - start


def get_json(url: str, path: str) -> dict:
    status, data, _ = Client(url).send(("GET", path, None))
    return json.loads(data) if status == 200 else {}


# -- workloads -------------------------------------------------------------------------------------


class Workload:
    """Builds the requests of each endpoint from a client's own random stream."""

    def __init__(self, sessions: int, client: int):
        self.rng = random.Random(1000 + client)
        self.vocab = corpus.Vocabulary()
        self.sessions = max(1, sessions)
        self.client = client
        self.remembered: list[str] = []
        self.i = 0

    def _post(self, path: str, body: dict) -> Request:
        return "POST", "/agentmemory" + path, json.dumps(body).encode()

    def _session(self) -> str:
        return f"ses_scale_{self.rng.randrange(self.sessions):06d}"

    def search(self, kind: str | None = None) -> Request:
        kind = kind or self.rng.choice(("common", "mixed", "rare", "file"))
        body: dict = {"query": corpus.query(kind, self.rng, self.vocab), "limit": 10}
        if self.rng.random() < 0.5:
            body["project"] = self.rng.choice(corpus.PROJECTS)
        return self._post("/smart-search", body)

    def remember(self) -> Request:
        if self.remembered and self.rng.random() < 0.2:
            content = self.rng.choice(self.remembered) + " again"
        else:
            content = corpus.memory_content(self.rng, self.vocab)
            self.remembered = (self.remembered + [content])[-50:]
        return self._post("/remember", {"content": content, "project": self.rng.choice(corpus.PROJECTS)})

    def memories(self) -> Request:
        return "GET", "/agentmemory/memories?latest=true&limit=20", None

    def sessions_page(self) -> Request:
        return "GET", "/agentmemory/sessions?limit=20&project=" + self.rng.choice(corpus.PROJECTS), None

    def observations(self) -> Request:
        return "GET", f"/agentmemory/observations?sessionId={self._session()}&limit=50", None

    def timeline(self) -> Request:
        return self._post("/timeline", {"anchor": corpus.iso(self.rng.randrange(10_000_000)), "before": 5})

    def context(self) -> Request:
        return self._post("/context", {"sessionId": f"ses_new_{self.client}", "project": corpus.PROJECTS[0]})

    def observe(self) -> Request:
        self.i += 1
        return "POST", "/agentmemory/observe", payload(f"scale{self.client}", self.client, self.i)


SINGLE = {
    "search common": lambda w: w.search("common"),
    "search mixed": lambda w: w.search("mixed"),
    "search rare": lambda w: w.search("rare"),
    "search file": lambda w: w.search("file"),
    "remember": Workload.remember,
    "memories latest": Workload.memories,
    "sessions": Workload.sessions_page,
    "observations": Workload.observations,
    "timeline": Workload.timeline,
    "context": Workload.context,
}
CONCURRENT = {
    "search": lambda w: w.search(),
    "remember": Workload.remember,
    "memories latest": Workload.memories,
    "context": Workload.context,
}
MIXED = (
    (Workload.observe, 40),
    (lambda w: w.search(), 30),
    (Workload.remember, 10),
    (Workload.memories, 10),
    (Workload.context, 10),
)
MIXED_NAMES = ("observe", "search", "remember", "memories latest", "context")


def drive(url: str, sessions: int, clients: int, seconds: float, pick: Callable[[Workload], tuple[str, Request]]):
    """Run ``clients`` threads for ``seconds``; returns ({name: [latency s]}, {name: errors}, elapsed)."""
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(c: int) -> None:
        work, client = Workload(sessions, c), Client(url)
        mine: dict[str, list[float]] = {}
        bad: dict[str, int] = {}
        while time.monotonic() < deadline:
            name, request = pick(work)
            status, body, took = client.send(request)
            mine.setdefault(name, []).append(took)
            if status >= 400:
                bad[name] = bad.get(name, 0) + 1
                if bad[name] == 1:
                    print(f"    {name}: HTTP {status} {body[:200]!r}", file=sys.stderr)
        with lock:
            for name, values in mine.items():
                latencies.setdefault(name, []).extend(values)
            for name, n in bad.items():
                errors[name] = errors.get(name, 0) + n

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return round(values[0] * 1000, 1) if values else 0.0
    return round(statistics.quantiles(values, n=100)[p - 1] * 1000, 1)


def summarize(latencies: dict[str, list[float]], errors: dict[str, int], elapsed: float) -> dict[str, dict]:
    return {
        name: {
            "n": len(values),
            "per_s": round(len(values) / elapsed, 1),
            "p50": pct(values, 50),
            "p95": pct(values, 95),
            "p99": pct(values, 99),
            "errors": errors.get(name, 0),
        }
        for name, values in latencies.items()
    }


def print_rows(title: str, rows: dict[str, dict]) -> None:
    print(f"  {title}")
    for name, r in rows.items():
        print(
            f"    {name:16s} {r['n']:6d} req {r['per_s']:8.1f}/s  p50 {r['p50']:7.1f}  p95 {r['p95']:7.1f}  "
            f"p99 {r['p99']:7.1f} ms  errors {r['errors']}"
        )


PHASES = ("single", "concurrent", "observe", "mixed")


def run_workloads(url: str, sessions: int, seconds: float, clients: int, only: Only) -> dict[str, dict]:
    results: dict[str, dict] = {}
    if only.wants("single"):
        single: dict[str, dict] = {}
        for name, build in only.endpoints(SINGLE).items():
            single.update(summarize(*drive(url, sessions, 1, seconds, lambda w, n=name, b=build: (n, b(w)))))
        results["1 client"] = single
        print_rows("1 client, one endpoint at a time", single)
    if only.wants("concurrent"):
        many: dict[str, dict] = {}
        for name, build in only.endpoints(CONCURRENT).items():
            many.update(summarize(*drive(url, sessions, clients, seconds, lambda w, n=name, b=build: (n, b(w)))))
        results[f"{clients} clients"] = many
        print_rows(f"{clients} clients, one endpoint at a time", many)
    if only.wants("observe"):
        observe = summarize(*drive(url, sessions, 8, seconds, lambda w: ("observe", w.observe())))
        results["8 clients observe"] = observe
        print_rows("8 clients posting observations", observe)
    if only.wants("mixed"):
        builds, weights = zip(*MIXED, strict=True)
        names = dict(zip(builds, MIXED_NAMES, strict=True))

        def mixed(w: Workload) -> tuple[str, Request]:
            build = w.rng.choices(builds, weights)[0]
            return names[build], build(w)

        mix = summarize(*drive(url, sessions, clients, seconds, mixed))
        results[f"{clients} clients mixed"] = mix
        print_rows(f"{clients} clients, mixed workload", mix)
    return results


class Only:
    """``--only``: the phases (single, concurrent, observe, mixed) and endpoints to run; empty runs all.
    ``--only concurrent:remember`` runs remember with the concurrent clients and nothing else."""

    def __init__(self, spec: str):
        self.phases: dict[str, set[str]] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            phase, _, endpoint = part.partition(":")
            if phase not in PHASES:
                raise SystemExit(f"--only: unknown phase {phase!r}; phases are {', '.join(PHASES)}")
            self.phases.setdefault(phase, set()).update([endpoint] if endpoint else [])

    def wants(self, phase: str) -> bool:
        return not self.phases or phase in self.phases

    def endpoints(self, table: dict[str, Callable]) -> dict[str, Callable]:
        chosen = set().union(*self.phases.values()) if self.phases else set()
        unknown = chosen - set(SINGLE) - set(CONCURRENT)
        if unknown:
            raise SystemExit(f"--only: unknown endpoint(s) {', '.join(sorted(unknown))}")
        return {name: build for name, build in table.items() if not chosen or name in chosen}


# -- one size --------------------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if check():
            return time.perf_counter() - start
        time.sleep(0.2)
    return -1.0


def lexical_ready(url: str) -> bool:
    lexical = get_json(url, "/agentmemory/health").get("storage", {}).get("lexical", {})
    return lexical.get("state") in (None, "ready") and not lexical.get("pending")


def backlog(url: str) -> int | None:
    health = get_json(url, "/agentmemory/health")
    return (health.get("vectors") or health.get("embeddings") or {}).get("backlog")


def run_size(size: int, args: argparse.Namespace) -> dict:
    print(f"\n== {size:,} observations + {args.memories:,} memories")
    extra = extra_settings(args.server_env)
    env = server_env(args.embedder, extra)
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        source = Path(tmp) / "corpus.jsonl"
        started = time.perf_counter()
        lines = write_corpus(source, size, args.memories)
        took = time.perf_counter() - started
        print(f"  corpus: {lines:,} records, {source.stat().st_size / 1e6:.0f} MB in {took:.0f} s")
        data_dir = str(Path(tmp) / "data")
        loaded = bulk_import(data_dir, source, env)
        source.unlink()
        print(f"  bulk import: {loaded['records']:,} records in {loaded['seconds']} s ({loaded['per_s']:,}/s)")
        spawned = time.perf_counter()
        proc, url = start_server(
            data_dir, args.threads,
            {"EMBEDDING_PROVIDER": args.embedder, "AGENTMEMORY_WORKERS": str(args.workers), **extra},
        )
        up = time.perf_counter() - spawned
        try:
            status, _, first = Client(url).send(Workload(1, 0).search("common"))
            ready = wait_until(lambda: lexical_ready(url), 1800)
            rss = rss_mb(proc.pid)
            print(
                f"  start-up: answering in {up:.2f} s, first search {first * 1000:.0f} ms (HTTP {status}), "
                f"lexical index caught up after {ready:.1f} s more; RSS {rss} MB; "
                f"vector backlog {backlog(url)}"
            )
            results = run_workloads(url, size // 200, args.seconds, args.clients, Only(args.only))
            rss_after = rss_mb(proc.pid)
            print(f"  RSS after the runs {rss_after} MB; vector backlog {backlog(url)}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        db_bytes = sum(f.stat().st_size for f in Path(data_dir).rglob("*") if f.is_file())
    return {
        "observations": size,
        "memories": args.memories,
        "import": loaded,
        "startup_s": round(up, 2),
        "lexical_catch_up_s": round(ready, 1),
        "rss_mb": rss,
        "rss_after_mb": rss_after,
        "data_mb": round(db_bytes / 1e6),
        "results": results,
    }


def targets(size: dict, clients: int) -> list[tuple[str, float, str, bool]]:
    """(what, measured, target, met) for the issue's targets that apply at this size."""
    one, many = size["results"]["1 client"], size["results"][f"{clients} clients"]
    observe = size["results"]["8 clients observe"]["observe"]
    search_p95 = max(v["p95"] for k, v in one.items() if k.startswith("search"))
    n = size["observations"]
    rows = [
        ("observe /s with 8 clients", observe["per_s"], ">= 800", observe["per_s"] >= 800),
        ("observe p95 ms with 8 clients", observe["p95"], "< 20", observe["p95"] < 20),
    ]
    if n >= 1_000_000:
        rows += [
            ("smart-search p95 ms, 1 client, any query", search_p95, "<= 40", search_p95 <= 40),
            ("start-up s", size["startup_s"], "< 3", size["startup_s"] < 3),
            ("RSS MB", size["rss_after_mb"], "< 1536", size["rss_after_mb"] < 1536),
            ("bulk import records/s", size["import"]["per_s"], ">= 5000", size["import"]["per_s"] >= 5000),
        ]
    elif n >= 100_000:
        searches = many["search"]["per_s"]
        rows += [
            ("smart-search p95 ms, 1 client, any query", search_p95, "<= 15", search_p95 <= 15),
            (f"searches/s with {clients} clients", searches, ">= 150", searches >= 150),
        ]
    else:
        for name in ("remember", "memories latest"):
            rows.append((f"{name} p50 ms with {clients} clients", many[name]["p50"], "<= 20", many[name]["p50"] <= 20))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10k,100k", help="observation counts, e.g. 10k,100k,1m")
    ap.add_argument("--memories", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--embedder", default="none", choices=("none", "local"))
    ap.add_argument("--workers", type=int, default=0,
                    help="gunicorn worker processes (AGENTMEMORY_WORKERS; 0: the server's default, one per core)")
    ap.add_argument("--import-only", action="store_true", help="time only the bulk import of each size")
    ap.add_argument("--corpus", help="keep the corpus in this file and reuse it when it exists")
    ap.add_argument("--strategy", default="merge", choices=("merge", "replace"),
                    help="--import-only: the import's strategy (replace: one transaction over the whole file)")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for the server under test (repeatable), e.g. AGENTMEMORY_BACKGROUND=external")
    ap.add_argument("--only", default="", help="phases[:endpoint] to run, e.g. concurrent:remember,observe")
    args = ap.parse_args()
    Only(args.only)  # a typo fails before the corpus is written
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    args.workers = args.workers or min(os.cpu_count() or 1, 4)  # what the server picks (settings.MAX_AUTO_WORKERS)
    print(
        f"bench/scale.py, {stamp}, commit {commit()}, {os.cpu_count()} cpus, embedder {args.embedder}, "
        f"{args.workers} worker process(es)"
    )
    if args.import_only:
        report = [import_only(parse_size(s), args) for s in args.sizes.split(",")]
        print(json.dumps({"date": stamp, "commit": commit(), "import_only": report}))
        return
    report = [run_size(parse_size(s), args) for s in args.sizes.split(",")]
    print("\ntargets (issue 14):" if not args.only else "\n(--only: the targets need every phase)")
    for size in report if not args.only else []:
        for what, value, target, met in targets(size, args.clients):
            verdict = "met" if met else "MISSED"
            print(f"  {size['observations']:>9,} obs  {what:42s} {value:>9}  target {target:8s} {verdict}")
    summary = {"date": stamp, "commit": commit(), "embedder": args.embedder, "workers": args.workers}
    print(json.dumps({**summary, "sizes": report}))


if __name__ == "__main__":
    main()
