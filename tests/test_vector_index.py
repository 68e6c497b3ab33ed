"""The persistent nearest-neighbour index behind ``store.vectors.search``: exact filters on both
paths (exact scan and graph walk), exact scores, survival of restarts and SIGKILL, repair of a
lost or foreign index file in the background, and catching up with vectors another process wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from agentmemory_server.retrieval import vectors
from agentmemory_server.storage.sqlite import ann, vector_index
from conftest import hook as make_hook
from conftest import post, wait_for

DIM = 384
MODEL = "test-model"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def seed(db, n: int, rng: np.random.Generator) -> tuple[dict[int, np.ndarray], dict[int, dict]]:
    """n search rows with vectors and varied metadata, through the storage interface."""
    vecs, metas = {}, {}
    block = unit(rng, n)
    with db.transaction("test_seed") as tx:
        for i in range(n):
            is_memory = i % 7 == 0
            meta = {"kind": "memory" if is_memory else "observation",
                    "project": None if i % 14 == 0 else f"p{i % 3}",
                    "agent_id": f"a{i % 2}", "session_id": f"s{i % 10}"}
            doc = {"doc_id": f"d{i}", "scope": "t", "key": f"k{i}", "type": None, "ts": "2026-12-01T00:00:00Z",
                   "active": True, "global": meta["project"] is None and is_memory, **meta}
            rowid = tx.index.upsert(doc, {"title": f"row {i}"})
            tx.vectors.put(rowid, MODEL, block[i].astype("<f4").tobytes(), DIM, "2026-12-01T00:00:00Z")
            vecs[rowid], metas[rowid] = block[i], doc
    return vecs, metas


def indexed(db, n: int, rng: np.random.Generator) -> tuple[dict[int, np.ndarray], dict[int, dict], object]:
    """``seed``'s rows, and this process's index once it has taken them all in."""
    vecs, metas = seed(db, n, rng)
    index = db.vector_index(MODEL, DIM)
    while index.refresh():
        pass
    return vecs, metas, index


def brute_force(vecs, metas, query, k, filters) -> list[int]:
    def passes(m) -> bool:
        if filters.get("kinds") and m["kind"] not in filters["kinds"]:
            return False
        if filters.get("project") is not None and not (m["project"] == filters["project"] or m["global"]):
            return False
        if filters.get("agent_id") is not None and m["agent_id"] != filters["agent_id"]:
            return False
        return filters.get("session_ids") is None or m["session_id"] in filters["session_ids"]

    scored = sorted(((float(v @ query), r) for r, v in vecs.items() if passes(metas[r])), reverse=True)
    return [r for _, r in scored[:k]]


FILTERS = [{}, {"project": "p1"}, {"kinds": ["memory"]}, {"agent_id": "a0", "project": "p2"},
           {"session_ids": ["s3", "s4"]}, {"project": "nope"}, {"kinds": ["observation"], "session_ids": ["s1"]}]


@pytest.mark.parametrize("exact_limit", [10_000, 20], ids=["exact-scan", "graph-walk"])
def test_filters_are_exact_and_scores_are_exact_cosines(make_runtime, monkeypatch, exact_limit):
    monkeypatch.setattr(ann, "EXACT_LIMIT", exact_limit)
    rt = make_runtime()
    rng = np.random.default_rng(3)
    vecs, metas, index = indexed(rt.db, 400, rng)
    assert len(index) == 400
    store = rt.db.reader()
    for query in unit(rng, 5):
        for filters in FILTERS:
            want = brute_force(vecs, metas, query, 10, filters)
            got = store.vectors.search(MODEL, DIM, query, 10, filters)
            assert [r for r, _ in got] == want, filters
            for rowid, score in got:  # re-scored against the stored float32 vectors
                assert score == pytest.approx(float(vecs[rowid] @ query), abs=1e-5)
            if filters.get("project") == "nope":
                assert {metas[r]["global"] for r, _ in got} <= {True}  # only global rows


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_index_is_saved_and_replays_the_log_after_a_restart(make_runtime):
    rt = make_runtime()
    rng = np.random.default_rng(4)
    vecs, metas, index = indexed(rt.db, 120, rng)
    assert index.save() and index.status()["savedSeq"] == index.seq
    more, more_metas = seed_more(rt.db, rng)  # written after the save: only the log has them
    rt.close()
    again = make_runtime()
    reopened = again.db.vector_index(MODEL, DIM)
    assert reopened.status()["repair"] is None and len(reopened) == 120  # loaded, not rebuilt
    assert reopened.lag() == len(more) and reopened.refresh() == len(more)
    assert len(reopened) == 120 + len(more)
    vecs.update(more)
    metas.update(more_metas)
    query = unit(rng, 1)[0]
    got = again.db.reader().vectors.search(MODEL, DIM, query, 10, {})
    assert [r for r, _ in got] == brute_force(vecs, metas, query, 10, {})


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_an_index_built_from_the_table_is_saved_at_once(make_runtime):
    # A crash before the first timed save (60 s and 1,000 changes, or 10 minutes) used to mean
    # building the whole index again at the next start.
    rt = make_runtime(embedding_provider="hash")
    svc = vectors.service(rt)
    assert svc.index.status()["savedSeq"] is None and not svc.index.state_path.exists()
    svc._maybe_save()  # what the follower does after each step
    assert svc.index.state_path.exists() and svc.index.status()["unsaved"] == 0
    saved = svc.index.status()["savedSeq"]
    svc._maybe_save()  # nothing new: nothing written
    assert svc.index.status()["savedSeq"] == saved


def seed_more(db, rng):
    vecs, metas = {}, {}
    with db.transaction("test_more") as tx:
        for i, vector in enumerate(unit(rng, 15)):
            doc = {"doc_id": f"late{i}", "kind": "observation", "scope": "t", "key": f"late{i}", "session_id": "s9",
                   "project": "p1", "agent_id": "a1", "type": None, "ts": "2026-12-02T00:00:00Z", "active": True,
                   "global": False}
            rowid = tx.index.upsert(doc, {"title": "late"})
            tx.vectors.put(rowid, MODEL, vector.astype("<f4").tobytes(), DIM, "2026-12-02T00:00:00Z")
            vecs[rowid], metas[rowid] = vector, doc
    return vecs, metas


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_a_foreign_or_damaged_index_file_is_rebuilt(make_runtime):
    rt = make_runtime()
    rng = np.random.default_rng(5)
    _, _, index = indexed(rt.db, 60, rng)
    index.save()
    state = json.loads(index.state_path.read_text())
    rt.close()
    # The saved index claims more history than the database has: an older copy was restored.
    index.state_path.write_text(json.dumps({**state, "seq": state["seq"] + 1000}))
    again = make_runtime()
    reopened = again.db.vector_index(MODEL, DIM)
    assert reopened.status()["repair"]["reason"].startswith("the saved index is ahead")
    assert len(reopened) == 0
    while reopened.refresh(7):  # bounded steps
        pass
    assert reopened.status()["repair"] is None and len(reopened) == 60
    reopened.save()
    again.close()
    (index.dir / f"{json.loads(index.state_path.read_text())['stem']}.faiss").write_bytes(b"garbage")
    third = make_runtime()
    damaged = third.db.vector_index(MODEL, DIM)
    assert damaged.status()["repair"]["reason"].startswith("unreadable index file")


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_dead_rows_are_skipped_and_replaced_rows_hold_their_new_vector(make_runtime):
    rt = make_runtime()
    rng = np.random.default_rng(6)
    vecs, metas, index = indexed(rt.db, 50, rng)
    target = next(iter(vecs))
    query = unit(rng, 1)[0]
    with rt.db.transaction("test_replace") as tx:  # re-embedded: its vector is now the query
        tx.vectors.put(target, MODEL, query.astype("<f4").tobytes(), DIM, "2026-12-03T00:00:00Z")
    index.refresh()
    best = rt.db.reader().vectors.search(MODEL, DIM, query, 1, {})
    assert best[0][0] == target and best[0][1] == pytest.approx(1.0, abs=1e-5)
    with rt.db.transaction("test_delete") as tx:
        tx.index.delete(["d1", "d2"])  # the vectors go by cascade; the log tells the index
    assert index.refresh() == 2 and len(index) == 48 and index.status()["graphSlots"] == 51


def exact_everywhere(store, vecs, metas, rng) -> None:
    """Every filter's search gives the brute-force rows, in order."""
    for query in unit(rng, 3):
        for filters in FILTERS:
            got = store.vectors.search(MODEL, DIM, query, 10, filters)
            assert [r for r, _ in got] == brute_force(vecs, metas, query, 10, filters), filters


def replace_and_delete(db, vecs, metas, rng) -> None:
    """Re-embed five rows and delete three (with their vectors), here and in ``vecs``."""
    rowids = sorted(vecs)
    with db.transaction("test_change") as tx:
        for rowid, vector in zip(rowids[5:10], unit(rng, 5), strict=True):
            tx.vectors.put(rowid, MODEL, vector.astype("<f4").tobytes(), DIM, "2026-12-03T00:00:00Z")
            vecs[rowid] = vector
        tx.index.delete([metas[r]["doc_id"] for r in rowids[:3]])
    for rowid in rowids[:3]:
        vecs.pop(rowid), metas.pop(rowid)


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
@pytest.mark.parametrize("exact_limit", [10_000, 10], ids=["exact-scan", "graph-walk"])
def test_a_saved_index_is_served_mapped_and_grows_beside_it(make_runtime, monkeypatch, exact_limit):
    """A saved index is opened mapped (faiss reads it in place: nothing copied), rows written
    after it go to this process's own small graph, searches over both stay exact, and a save
    writes one graph again, which is then served mapped too."""
    monkeypatch.setattr(ann, "EXACT_LIMIT", exact_limit)
    monkeypatch.setattr(ann, "DELTA_SCAN_LIMIT", min(exact_limit, ann.DELTA_SCAN_LIMIT))
    rt = make_runtime()
    rng = np.random.default_rng(12)
    vecs, metas, index = indexed(rt.db, 300, rng)
    assert index.save()
    rt.close()

    db = make_runtime().db
    opened = db.vector_index(MODEL, DIM)
    status = opened.status()
    assert status["mapped"] and status["privateSlots"] == 0 and len(opened) == 300
    assert not ann._storage(opened.ann.graph).codes.is_owned and not opened.ann.graph.hnsw.neighbors.is_owned
    more, more_metas = seed_more(db, rng)
    vecs.update(more)
    metas.update(more_metas)
    replace_and_delete(db, vecs, metas, rng)
    while opened.refresh():
        pass
    status = opened.status()
    assert status["mapped"] and status["privateSlots"] == 15 + 5  # the new rows and the re-embedded ones
    assert len(opened) == 300 + 15 - 3 and status["graphSlots"] == 300 + 20
    exact_everywhere(db.reader(), vecs, metas, rng)

    assert opened.save()
    status = opened.status()
    assert status["mapped"] and status["privateSlots"] == 0 and status["graphSlots"] == 320
    exact_everywhere(db.reader(), vecs, metas, rng)
    third = make_runtime().db.vector_index(MODEL, DIM)
    assert third.status()["mapped"] and len(third) == 312 and third.lag() == 0
    query = unit(rng, 1)[0]
    assert third.search(third._connect(), query, 10, {}) == opened.search(opened._connect(), query, 10, {})


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_opening_follows_a_save_that_replaced_the_files_meanwhile(make_runtime, monkeypatch):
    """Another process's save between reading the state file and opening the files it names
    removes those files: the opener follows the newer copy instead of rebuilding."""
    rt = make_runtime()
    rng = np.random.default_rng(15)
    vecs, metas, index = indexed(rt.db, 100, rng)
    assert index.save()
    seed_more(rt.db, rng)
    assert index.refresh() == 15
    real_load, asked = ann.AnnIndex.load, []

    def load_after_another_save(directory, stem, dim):
        asked.append(stem)
        if len(asked) == 1:
            assert index.save()  # the other process, just then (it removes ``stem``'s files)
        return real_load(directory, stem, dim)

    monkeypatch.setattr(ann.AnnIndex, "load", load_after_another_save)
    opened = make_runtime().db.vector_index(MODEL, DIM)
    assert asked[0] != asked[-1] == index.saved["stem"]
    assert opened.status()["repair"] is None and opened.status()["mapped"] and len(opened) == 115


SEARCH_AND_WAIT = """
import sys
import numpy as np
from pathlib import Path
from agentmemory_server.storage.sqlite.ann import AnnIndex
index = AnnIndex.load(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
queries = np.random.default_rng(1).standard_normal((50, index.dim)).astype(np.float32)
for q in queries:
    assert index.candidates(q, 10, {})
print("searched", flush=True)
sys.stdin.read()
"""


def mapped_kb(pid: int, path: Path) -> dict[str, int]:
    """Rss, Shared_Clean and Anonymous kB of the process's mappings of ``path``."""
    totals, inside = {"Rss": 0, "Shared_Clean": 0, "Anonymous": 0}, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line: address range ... path
            inside = line.rstrip().endswith(str(path))
        elif inside and line.split(":")[0] in totals:
            totals[line.split(":")[0]] += int(line.split()[1])
    return totals


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_two_processes_serving_one_saved_index_share_its_pages(make_runtime):
    """What mapping is for: two processes that open and search the same saved index hold its
    graph and codes as the same page-cache pages, not a copy each."""
    rt = make_runtime()
    _vecs, _metas, index = indexed(rt.db, 2000, np.random.default_rng(14))
    assert index.save()
    stem = index.saved["stem"]
    graph_file = index.dir / f"{stem}.faiss"
    src = Path(__file__).resolve().parent.parent / "src"
    procs = [
        subprocess.Popen([sys.executable, "-c", SEARCH_AND_WAIT, str(index.dir), stem, str(DIM)], cwd=src,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "searched"
        for proc in procs:
            pages = mapped_kb(proc.pid, graph_file)
            assert pages["Rss"] > 0 and pages["Anonymous"] == 0  # read in place, not copied
            assert pages["Shared_Clean"] > 0, pages  # the other process maps the same pages
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()  # (closes the pipes)


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_a_save_by_another_process_is_adopted_and_its_own_rows_replayed_onto_it(make_runtime):
    """Two processes (two runtimes here) serve one saved index. When one saves, the other opens
    that copy on its next refresh instead of keeping its own rows, with what it applied past
    that save replayed onto it; a process whose mapped file another's save removed still saves."""
    rt = make_runtime()
    rng = np.random.default_rng(13)
    vecs, metas, index = indexed(rt.db, 200, rng)
    assert index.save()
    rt.close()
    first_db, second_db = make_runtime().db, make_runtime().db
    first, second = first_db.vector_index(MODEL, DIM), second_db.vector_index(MODEL, DIM)
    more, more_metas = seed_more(first_db, rng)
    vecs.update(more)
    metas.update(more_metas)
    while first.refresh() or second.refresh():
        pass
    assert first.save()  # removes the copy both opened; the second still maps it
    replace_and_delete(first_db, vecs, metas, rng)  # past the first's save: only the log has it
    assert second.refresh() == 8  # adopted the first's save, replayed the log onto it, caught up
    status = second.status()
    assert status["savedSeq"] == first.status()["savedSeq"] and status["mapped"]
    assert status["privateSlots"] == 5 and status["unsaved"] == 8 and len(second) == 212
    exact_everywhere(second_db.reader(), vecs, metas, rng)

    # The first saved, the second adopted: the first's rows past its save are still its own.
    assert first.refresh() == 8 and first.status()["privateSlots"] == 5
    more, more_metas = seed_more(second_db, rng)
    vecs.update(more)
    metas.update(more_metas)
    assert second.refresh() == 15 and second.save()
    assert first.refresh() == 15  # adopted: the second's save holds all of it
    assert first.status()["privateSlots"] == 0 and first.status()["savedSeq"] == second.status()["savedSeq"]
    assert first.status()["unsaved"] == 0
    exact_everywhere(first_db.reader(), vecs, metas, rng)

    # Both save at the same point: same name, two files (the second renamed over the first);
    # whichever saved first then serves the other's, so both map one file again.
    more, more_metas = seed_more(first_db, rng)
    assert first.refresh() == second.refresh() == 15 and first.save() and second.save()
    assert first.saved["stem"] == second.saved["stem"]
    assert os.fstat(first.ann.file).st_ino != os.fstat(second.ann.file).st_ino
    assert first.refresh() == 0 and second.refresh() == 0
    assert os.fstat(first.ann.file).st_ino == os.fstat(second.ann.file).st_ino


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_one_process_builds_the_index_and_the_others_take_its_copy(make_runtime):
    """Two processes start without a saved index: one builds it, the other waits (BM25 alone
    meanwhile) and then serves the copy the first saved. Asked to rebuild, a process builds its
    own whatever others save."""
    rt = make_runtime()
    rng = np.random.default_rng(16)
    vecs, metas = seed(rt.db, 120, rng)
    other = make_runtime()
    builder, waiter = rt.db.vector_index(MODEL, DIM), other.db.vector_index(MODEL, DIM)
    assert builder.status()["repair"]["reason"] == waiter.status()["repair"]["reason"] == "no saved index"
    assert builder.refresh(50) == 50
    assert waiter.refresh(50) == 0 and waiter.status()["repair"]["waitingForAnotherProcess"]
    assert waiter.status()["repair"]["done"] == 0 and len(waiter) == 0
    while builder.refresh(50):
        pass
    assert builder.save() and builder.status()["repair"] is None
    waiter.refresh(50)
    assert waiter.status()["repair"] is None and waiter.status()["mapped"] and len(waiter) == 120
    assert waiter.status()["savedSeq"] == builder.status()["savedSeq"]
    exact_everywhere(other.db.reader(), vecs, metas, rng)

    waiter.rebuild("asked to")
    seed_more(rt.db, rng)
    assert builder.refresh() == 15 and builder.save()
    waiter.refresh(50)
    assert waiter.status()["repair"]["reason"] == "asked to" and waiter.status()["repair"]["done"] == 50


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_diagnose_says_when_another_process_builds_the_index(make_runtime, tmp_path):
    elsewhere = vectors.service(make_runtime(embedding_provider="hash", data_dir=str(tmp_path / "elsewhere")))
    model, dim = elsewhere.embedder.model_id, elsewhere.embedder.dim  # the hash embedder's, as below
    rt = make_runtime()
    rng = np.random.default_rng(18)
    with rt.db.transaction("test_seed") as tx:
        for i, vector in enumerate(unit(rng, 120)):
            rowid = tx.index.upsert({"doc_id": f"d{i}", "scope": "t", "key": f"k{i}", "type": None,
                                     "ts": "2026-12-01T00:00:00Z", "active": True, "global": False,
                                     "kind": "observation", "project": "p", "agent_id": "a", "session_id": "s"},
                                    {"title": f"row {i}"})
            tx.vectors.put(rowid, model, vector.astype("<f4").tobytes(), dim, "2026-12-01T00:00:00Z")
    assert rt.db.vector_index(model, dim).refresh(50) == 50  # this process takes the build
    svc = vectors.service(make_runtime(embedding_provider="hash"))
    assert svc.index.refresh(50) == 0
    check = next(c for c in svc.diagnose() if c["name"] == "vector-index")
    assert check["status"] == "warn" and "being built by another process" in check["message"], check


BUILD_AND_WAIT = """
import sys
from agentmemory_server.wiring import build_runtime
from agentmemory_server.kernel.settings import Settings
rt = build_runtime(Settings.from_env({}, data_dir=sys.argv[1], background_jobs=False, embedding_provider="none",
                                     auth="off"))
index = rt.db.vector_index(sys.argv[2], int(sys.argv[3]))
assert index.refresh(50) == 50
print("building", flush=True)
sys.stdin.read()
"""


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_a_build_whose_process_died_is_taken_over(make_runtime, tmp_path):
    """The build lock is the kernel's: a builder killed mid-build leaves nothing held."""
    rt = make_runtime()
    seed(rt.db, 120, np.random.default_rng(17))
    src = Path(__file__).resolve().parent.parent / "src"
    builder = subprocess.Popen([sys.executable, "-c", BUILD_AND_WAIT, str(tmp_path / "data"), MODEL, str(DIM)],
                               cwd=src, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "building"
        index = rt.db.vector_index(MODEL, DIM)
        assert index.refresh(50) == 0 and index.status()["repair"]["waitingForAnotherProcess"]
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=30)
        assert index.refresh(50) == 50 and not index.status()["repair"]["waitingForAnotherProcess"]
        while index.refresh(50):
            pass
        assert index.status()["repair"] is None and len(index) == 120
    finally:
        builder.kill()
        builder.communicate()


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_a_graph_full_of_dead_rows_is_rebuilt_aside_while_it_keeps_serving(make_runtime, monkeypatch):
    monkeypatch.setattr(vector_index, "REBUILD_MIN_VECTORS", 10)
    rt = make_runtime()
    rng = np.random.default_rng(8)
    vecs, metas, index = indexed(rt.db, 60, rng)
    with rt.db.transaction("test_delete") as tx:
        tx.index.delete([f"d{i}" for i in range(25)])
    gone = {r for r, m in metas.items() if int(m["doc_id"][1:]) < 25}
    for rowid in gone:
        vecs.pop(rowid)
    assert index.refresh() == 25  # applies the deletes
    assert index.refresh(10) == 0  # nothing new; 25 dead of 60 slots: a rebuild starts beside
    assert index.refresh(10) == 10  # 10 rows a step
    status = index.status()
    assert status["repair"]["reason"].endswith("deleted rows") and status["graphSlots"] == 60
    query = unit(rng, 1)[0]
    store = rt.db.reader()
    assert [r for r, _ in store.vectors.search(MODEL, DIM, query, 10, {})] == brute_force(vecs, metas, query, 10, {})
    while index.refresh(10):
        pass
    assert index.status()["repair"] is None and index.status()["graphSlots"] == 35 and len(index) == 35
    assert [r for r, _ in store.vectors.search(MODEL, DIM, query, 10, {})] == brute_force(vecs, metas, query, 10, {})


@pytest.mark.sqlite_only("the faiss index file beside a SQLite database; PostgreSQL uses pgvector's HNSW in the database")
def test_a_request_process_serves_the_saved_index_mapped(make_runtime):
    """A server's vector service opens the saved index (mapped, nothing rebuilt) and its
    vector search answers from it."""
    rt = make_runtime(embedding_provider="hash")
    rowids = [rt.db.write("test", lambda tx, i=i: tx.index.upsert(
        {"doc_id": f"d{i}", "scope": "t", "key": f"k{i}", "type": None, "ts": "2026-12-01T00:00:00Z",
         "active": True, "global": False, "kind": "observation", "project": "p", "agent_id": "a",
         "session_id": "s"}, {"title": f"row {i}"})) for i in range(3)]
    rng = np.random.default_rng(9)
    svc = vectors.service(rt)
    model, dim = svc.embedder.model_id, svc.embedder.dim
    vecs = unit(rng, 3)
    with rt.db.transaction("test_vectors") as tx:
        for rowid, vector in zip(rowids, vecs, strict=True):
            tx.vectors.put(rowid, model, vector.astype("<f4").tobytes(), dim, "2026-12-01T00:00:00Z")
    svc.catch_up()
    assert svc.index.save() and len(svc.index) == 3
    rt.close()
    again = make_runtime(embedding_provider="hash", background_jobs=True)
    served = vectors.service(again)
    wait_for(lambda: served.ready, timeout=20, interval=0.05, message="the saved index was never served")
    status = served.index.status()
    assert status["mapped"] and status["repair"] is None and status["loadSeconds"] is not None
    got = again.db.reader().vectors.search(model, dim, vecs[1], 1, {})
    assert got[0][0] == rowids[1] and got[0][1] == pytest.approx(1.0, abs=1e-5)


def _search_rows(server, query: str) -> list[str]:
    """Vector-mode hits ([] while the server has no vector yet: it answers with BM25 and says so)."""
    body = post(server.api("/smart-search"), {"query": query, "mode": "vector", "limit": 50}).json()
    return sorted(r["obsId"] for r in body["results"]) if body["mode"] == "vector" else []


def test_index_survives_sigkill_and_repairs_a_lost_file(live_server):
    """Real server and worker processes: vectors the worker wrote are searchable in the server;
    after SIGKILL the index comes back (saved file + log replay); a deleted index file is
    rebuilt in the background with its progress in /health and diagnose."""
    env = {"EMBEDDING_PROVIDER": "hash"}
    server = live_server(env=env)
    ids = [post(server.api("/observe"), make_hook(f"s{i}", data={"tool_name": "Bash", "tool_input": {
        "command": f"deploy service number {i} to staging"}})).json()["observationId"] for i in range(12)]

    def searchable() -> list[str] | None:
        rows = _search_rows(server, "deploy service to staging")
        return rows if len(rows) == 12 else None

    assert wait_for(searchable, timeout=60, interval=0.3, message="worker vectors never became searchable") == sorted(ids)
    server.stop(signal.SIGKILL)  # no clean shutdown: nothing saved since start
    server.start()
    health = requests.get(server.api("/health"), timeout=10).json()["vectors"]["index"]
    assert health["repair"] is None  # nothing lost, nothing to rebuild: the log replays
    assert wait_for(searchable, timeout=30, interval=0.3, message="vectors lost after SIGKILL") == sorted(ids)
    server.stop()  # clean: the index is saved
    vectors_dir = server.db_path.parent / (server.db_path.name + ".vectors")
    assert any(vectors_dir.glob("*.faiss"))
    for path in vectors_dir.iterdir():
        path.unlink()
    server.start()
    status = wait_for(lambda: requests.get(server.api("/health"), timeout=10).json()["vectors"]["index"],
                      timeout=10, interval=0.2)
    assert status["repair"] is None or status["repair"]["reason"] == "no saved index"
    assert wait_for(searchable, timeout=60, interval=0.3, message="the index was not rebuilt") == sorted(ids)
    checks = post(server.api("/diagnostics"), {}).json()["checks"]
    index_check = next(c for c in checks if c["name"] == "vector-index")
    assert index_check["status"] == "pass", index_check


def test_the_service_reports_the_index_in_health(make_runtime, backend):
    rt = make_runtime(embedding_provider="hash")
    health = rt.health_sections()["vectors"]
    engine = ann.ENGINE if backend == "sqlite" else "pgvector-hnsw"
    assert health["index"]["engine"] == engine and health["index"]["vectors"] == 0
    assert health["embedsHere"] is False and vectors.service(rt).ready is False
