"""The product's vector search at 100k and 1M vectors: build, save, start-up, RSS, latency, recall.

    python bench/vector_search.py --size 100000 [--queries 500] [--keep DIR]

Seeds a fresh SQLite database through the storage interface (one search row per record, as the
indexer writes it, and a 384-d unit vector per row, as the embedding worker stores it; vectors
are synthetic: clustered around 2,000 topics like sentence embeddings, see bench/ann_engines.py),
then lets the product build its nearest-neighbour index from the stored vectors (the repair path
a first start or a lost index file takes), saves it, and starts a fresh process that opens the
database and its index like a server start (load time, RSS) and asks ``store.vectors.search``
for the top 10 among rows of: everything; one of 20 projects (plus global rows); one session.
Recall@10 is against exact float32 brute force with the same filters. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ann_engines import DIM, clustered, commit, rss_mb  # noqa: E402

MODEL = "bench-synthetic-384"
PROJECTS = 20
SESSION_SIZE = 200


def open_db(path: Path) -> Any:
    from agentmemory_server.storage import open_database

    return open_database(path, now=lambda: "2026-12-01T00:00:00.000Z")


def meta(i: int) -> dict[str, Any]:
    is_memory = i % 20 == 0  # 5 % memories without a project: global rows
    return {"kind": "memory" if is_memory else "observation", "project": None if is_memory else f"proj-{i % PROJECTS}",
            "session": f"s-{i // SESSION_SIZE}", "global": is_memory}


def seed(path: Path, size: int, workdir: Path) -> float:
    """Search rows and vectors through the storage interface; the float32 vectors also go to
    data.npy for the exact ground truth."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = np.lib.format.open_memmap(workdir / "data.npy", mode="w+", dtype=np.float32, shape=(size, DIM))
    rowids = np.zeros(size, np.int64)
    db = open_db(path)
    t0 = time.perf_counter()
    for start in range(0, size, 10_000):
        block = clustered(min(10_000, size - start), 100 + start, centres)
        data[start : start + len(block)] = block
        with db.transaction("bench_seed") as tx:
            for j, vector in enumerate(block):
                i = start + j
                m = meta(i)
                doc = {"doc_id": f"d{i}", "kind": m["kind"], "scope": "bench", "key": f"k{i}", "session_id": m["session"],
                       "project": m["project"], "agent_id": None, "type": None, "ts": "2026-12-01T00:00:00Z",
                       "active": True, "global": m["global"]}
                rowid = tx.index.upsert(doc, {"title": f"record {i}", "body": ""})
                tx.vectors.put(rowid, MODEL, vector.astype("<f4").tobytes(), DIM, "2026-12-01T00:00:00Z")
                rowids[i] = rowid
            tx.vectors.backlog_done([int(r) for r in rowids[start : start + len(block)]], "9999")
    data.flush()
    np.save(workdir / "rowids.npy", rowids)
    db.close()
    return time.perf_counter() - t0


def build(path: Path) -> dict[str, Any]:
    """The product's rebuild from stored vectors, then a save (what a first start does)."""
    db = open_db(path)
    index = db.vector_index(MODEL, DIM)
    base = rss_mb()
    t0 = time.perf_counter()
    while index.refresh(20_000):
        pass
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    index.save()
    out = {"build_s": round(built, 1), "save_s": round(time.perf_counter() - t1, 2), "vectors": len(index),
           "build_rss_mb": round(rss_mb() - base),
           "files_mb": round(sum(p.stat().st_size for p in index.dir.iterdir()) / 2**20)}
    db.close()
    return out


CASES = ("unfiltered", "project", "session")


def ground_truth(workdir: Path, queries: int) -> None:
    """Queries, their filters and the exact top 10 (float32 brute force), saved for the query
    step, so its process holds nothing but the database and the index."""
    data = np.load(workdir / "data.npy", mmap_mode="r")
    rowids = np.load(workdir / "rowids.npy")
    rng = np.random.default_rng(5)
    picks = rng.integers(0, len(data), queries)
    qs = data[picks] + 0.5 * rng.standard_normal((queries, DIM)).astype(np.float32) / np.sqrt(DIM) * 3
    qs = (qs / np.linalg.norm(qs, axis=1, keepdims=True)).astype(np.float32)
    metas = [meta(int(i)) for i in picks]
    filters = {
        "unfiltered": [{} for _ in picks],
        "project": [{"project": m["project"] or "proj-0"} for m in metas],
        "session": [{"session_ids": [m["session"]]} for m in metas],
    }
    truth = {case: rowids[exact(data, qs, [allowed_rows(len(data), f) for f in fs])] for case, fs in filters.items()}
    np.save(workdir / "queries.npy", qs)
    np.savez(workdir / "truth.npz", **truth)
    (workdir / "filters.json").write_text(json.dumps(filters))


def query(path: Path, workdir: Path) -> dict[str, Any]:
    """A fresh process: open the database and its index as a server start does, then search."""
    qs = np.load(workdir / "queries.npy")
    filters = json.loads((workdir / "filters.json").read_text())
    with np.load(workdir / "truth.npz") as data:
        truth = {case: data[case] for case in CASES}
    base = rss_mb()
    t0 = time.perf_counter()
    db = open_db(path)
    index = db.vector_index(MODEL, DIM)
    load_s = time.perf_counter() - t0
    assert index.status()["repair"] is None, index.status()
    out: dict[str, Any] = {"load_s": round(load_s, 2), "rss_after_load_mb": round(rss_mb() - base)}
    store = db.reader()
    for case in CASES:
        times, hits = [], 0
        for i, q in enumerate(qs):
            t = time.perf_counter()
            found = store.vectors.search(MODEL, DIM, q, 10, filters[case][i])
            times.append((time.perf_counter() - t) * 1000)
            hits += len({r for r, _ in found} & set(truth[case][i].tolist()))
        times.sort()
        out[case] = {"p50_ms": round(times[len(times) // 2], 2), "p95_ms": round(times[int(len(times) * 0.95)], 2),
                     "p99_ms": round(times[int(len(times) * 0.99)], 2), "recall@10": round(hits / (10 * len(qs)), 4)}
    out["rss_after_queries_mb"] = round(rss_mb() - base)
    out["rss_process_mb"] = round(rss_mb())
    db.close()
    return out


def allowed_rows(size: int, filters: dict[str, Any]) -> np.ndarray | None:
    if "project" in filters:
        i = np.arange(size)
        memory = i % 20 == 0
        return memory | ((i % PROJECTS == int(filters["project"].split("-")[1])) & ~memory)
    if "session_ids" in filters:
        mask = np.zeros(size, bool)
        s = int(filters["session_ids"][0].split("-")[1])
        mask[s * SESSION_SIZE : (s + 1) * SESSION_SIZE] = True
        return mask
    return None


def exact(data: np.ndarray, qs: np.ndarray, allowed: list[np.ndarray | None], k: int = 10) -> np.ndarray:
    out = np.zeros((len(qs), k), np.int64)
    best = np.full((len(qs), k), -np.inf, np.float32)
    for start in range(0, len(data), 100_000):
        block = np.asarray(data[start : start + 100_000])
        scores = qs @ block.T
        for i, mask in enumerate(allowed):
            if mask is not None:
                scores[i, ~mask[start : start + len(block)]] = -np.inf
        s = np.concatenate([best, scores], axis=1)
        ids = np.concatenate([out, np.arange(start, start + len(block))[None, :].repeat(len(qs), 0)], axis=1)
        top = np.argsort(-s, axis=1)[:, :k]
        best, out = np.take_along_axis(s, top, 1), np.take_along_axis(ids, top, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--keep", help="work in this directory and keep it (reuse a seeded database)")
    parser.add_argument("--child", nargs=3, metavar=("STEP", "DB", "DIR"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        step, db, workdir = opts.child
        result = build(Path(db)) if step == "build" else query(Path(db), Path(workdir))
        print(json.dumps(result))
        return
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, {os.cpu_count()} cores, "
          f"{opts.size:,} vectors x {DIM}, {opts.queries} queries, load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(opts.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        db = workdir / "bench.db"
        result: dict[str, Any] = {"size": opts.size}
        if not db.exists():
            result["seed_s"] = round(seed(db, opts.size, workdir), 1)
            print(f"seeded in {result['seed_s']} s", flush=True)
        ground_truth(workdir, opts.queries)
        for step in ("build", "query"):
            done = subprocess.run([sys.executable, __file__, "--queries", str(opts.queries), "--child", step, str(db),
                                   str(workdir)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{step} failed:\n{done.stderr[-3000:]}")
            result[step] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{step}: {json.dumps(result[step])}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
