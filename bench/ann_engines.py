"""Candidate vector-index engines compared on the same synthetic 384-d vectors (issue 14 item 4).

    python bench/ann_engines.py --size 100000 [--engines usearch-i8,faiss-hnsw-sq8,numpy-f32] [--queries 500]

Run once to choose the engine the SQLite backend uses (AGENTMEMORY.md / AGENTS.md "Dependencies"
records why); ``bench/vector_search.py`` measures the product's own index afterwards. The engines
are not project dependencies: install the ones you compare (``pip install usearch faiss-cpu``).

Data: unit vectors drawn around 2,000 random topic centres (a vector's cosine to another of its
topic is about 0.5, to its nearest neighbour 0.6-0.8, as with sentence embeddings; uniformly
random vectors would make every graph index look worse than it is on real text), queries are
perturbed copies of stored vectors. Ground truth: exact top-10 by brute force. Each engine builds
in its own process (build time, RSS), saves its file, and a second fresh process loads it (load
time, RSS: what a server start pays) and answers the queries unfiltered and with a filter that
keeps 5 % of the rows (the engine's own filter, or over-fetch and drop). Ends with one JSON line.
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

DIM = 384
ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def clustered(n: int, seed: int, centres: np.ndarray, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, DIM)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), n)] + spread * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(size: int, queries: int, workdir: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = np.lib.format.open_memmap(workdir / "data.npy", mode="w+", dtype=np.float32, shape=(size, DIM))
    for start in range(0, size, 100_000):
        stop = min(size, start + 100_000)
        data[start:stop] = clustered(stop - start, 100 + start, centres)
    data.flush()
    picks = rng.integers(0, size, queries)
    q = data[picks] + 0.5 * clustered(queries, 7, centres, spread=3.0)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    allowed = rng.random(size) < 0.05  # the 5 % filter
    truth, truth_f = exact_top(data, q, None), exact_top(data, q, allowed)
    np.save(workdir / "queries.npy", q)
    np.save(workdir / "allowed.npy", allowed)
    np.save(workdir / "truth.npy", truth)
    np.save(workdir / "truth_filtered.npy", truth_f)


def exact_top(data: np.ndarray, q: np.ndarray, allowed: np.ndarray | None, k: int = 10) -> np.ndarray:
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for start in range(0, len(data), 100_000):
        block = np.asarray(data[start : start + 100_000])
        scores = q @ block.T
        if allowed is not None:
            scores[:, ~allowed[start : start + len(block)]] = -np.inf
        s = np.concatenate([best_s, scores], axis=1)
        i = np.concatenate([best_i, np.arange(start, start + len(block))[None, :].repeat(len(q), 0)], axis=1)
        top = np.argsort(-s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


# -- engines: build(data_path, index_path) and open(index_path) -> search(q, k, allowed|None) -> keys ----------


def usearch_build(data: np.ndarray, path: Path, dtype: str, scale: float = 1.0) -> None:
    from usearch.index import Index

    index = Index(ndim=DIM, metric="cos", dtype=dtype, connectivity=16, expansion_add=128, expansion_search=64)
    for start in range(0, len(data), 50_000):
        # usearch maps [-1, 1] onto int8; a unit vector of 384 values uses a few levels only, so
        # i8 vectors are scaled up first (cosine ignores the scale; the rare outlier is clipped).
        block = np.clip(np.asarray(data[start : start + 50_000]) * scale, -1, 1)
        index.add(np.arange(start, start + len(block), dtype=np.uint64), block, threads=2)
    index.save(str(path))


def usearch_open(path: Path, view: bool = False) -> Any:
    from usearch.index import Index

    index = Index.restore(str(path), view=view)

    def search(q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[int]:
        if allowed is None:
            return [int(key) for key in index.search(q, k, threads=1).keys]
        fetch = k * 40  # 5 % pass: over-fetch, keep the allowed, widen when short
        while True:
            index.expansion_search = max(64, fetch)
            keys = [int(key) for key in index.search(q, fetch, threads=1).keys if allowed[int(key)]]
            if len(keys) >= k or fetch >= 20_000:
                index.expansion_search = 64
                return keys[:k]
            fetch *= 4

    return search


def faiss_build(data: np.ndarray, path: Path) -> None:
    import faiss

    index = faiss.IndexHNSWSQ(DIM, faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.train(np.asarray(data[: min(len(data), 100_000)]))
    for start in range(0, len(data), 50_000):
        index.add(np.asarray(data[start : start + 50_000]))
    faiss.write_index(index, str(path))


def faiss_open(path: Path) -> Any:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.read_index(str(path))
    cache: dict[int, Any] = {}

    def search(q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[int]:
        params = faiss.SearchParametersHNSW()
        params.efSearch = 64
        if allowed is not None:
            if id(allowed) not in cache:
                bits = np.packbits(allowed, bitorder="little")
                cache[id(allowed)] = (bits, faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits)))
            params.sel = cache[id(allowed)][1]
            params.efSearch = 256
        _, ids = index.search(q[None, :], k, params=params)
        return [int(i) for i in ids[0] if i >= 0]

    return search


def numpy_build(data: np.ndarray, path: Path) -> None:
    np.save(path, np.asarray(data))


def numpy_open(path: Path) -> Any:
    matrix = np.load(path)

    def search(q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[int]:
        scores = matrix @ q
        if allowed is not None:
            scores[~allowed] = -np.inf
        top = np.argpartition(-scores, k)[:k]
        return [int(i) for i in top[np.argsort(-scores[top])]]

    return search


ENGINES: dict[str, tuple[Any, Any]] = {
    "usearch-i8": (lambda d, p: usearch_build(d, p, "i8"), usearch_open),
    "usearch-i8-scaled": (lambda d, p: usearch_build(d, p, "i8", 4.0), usearch_open),
    "usearch-f16": (lambda d, p: usearch_build(d, p, "f16"), usearch_open),
    "faiss-hnsw-sq8": (faiss_build, faiss_open),
    "numpy-f32": (numpy_build, numpy_open),
}


def child_build(engine: str, workdir: Path) -> dict[str, Any]:
    data = np.load(workdir / "data.npy", mmap_mode="r")
    base = rss_mb()
    t0 = time.perf_counter()
    ENGINES[engine][0](data, workdir / f"{engine}.index")
    path = workdir / f"{engine}.index"
    size = (path if path.exists() else path.with_suffix(".index.npy")).stat().st_size
    return {"build_s": round(time.perf_counter() - t0, 1), "build_rss_mb": round(rss_mb() - base),
            "file_mb": round(size / 2**20)}


def child_query(engine: str, workdir: Path) -> dict[str, Any]:
    q, allowed = np.load(workdir / "queries.npy"), np.load(workdir / "allowed.npy")
    truth, truth_f = np.load(workdir / "truth.npy"), np.load(workdir / "truth_filtered.npy")
    base = rss_mb()
    t0 = time.perf_counter()
    path = workdir / f"{engine}.index"
    search = ENGINES[engine][1](path if path.exists() else path.with_suffix(".index.npy"))
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 2)}
    for label, mask, gold in (("unfiltered", None, truth), ("filtered5pct", allowed, truth_f)):
        times, hits = [], 0
        for i, query in enumerate(q):
            s = time.perf_counter()
            keys = search(query, 10, mask)
            times.append((time.perf_counter() - s) * 1000)
            hits += len(set(keys) & set(gold[i].tolist()))
        times.sort()
        out[label] = {"p50_ms": round(times[len(times) // 2], 2), "p95_ms": round(times[int(len(times) * 0.95)], 2),
                      "recall@10": round(hits / (10 * len(q)), 4)}
    out["rss_mb"] = round(rss_mb() - base)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--engines", default="usearch-i8,faiss-hnsw-sq8,numpy-f32")
    parser.add_argument("--child", nargs=3, metavar=("STEP", "ENGINE", "DIR"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        step, engine, workdir = opts.child
        result = (child_build if step == "build" else child_query)(engine, Path(workdir))
        print(json.dumps(result))
        return
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, {os.cpu_count()} cores; "
          f"{opts.size:,} vectors x {DIM}, {opts.queries} queries")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t0 = time.perf_counter()
        make_data(opts.size, opts.queries, Path(tmp))
        print(f"data + exact ground truth: {time.perf_counter() - t0:.1f} s", flush=True)
        for engine in opts.engines.split(","):
            row: dict[str, Any] = {}
            for step in ("build", "query"):
                done = subprocess.run([sys.executable, __file__, "--child", step, engine, tmp], capture_output=True,
                                      text=True)
                if done.returncode:
                    row[step] = f"failed: {done.stderr.strip()[-300:]}"
                    break
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            results[engine] = row
            print(f"{engine}: {json.dumps(row)}", flush=True)
    print(json.dumps({"size": opts.size, "queries": opts.queries, "engines": results}))


if __name__ == "__main__":
    main()
