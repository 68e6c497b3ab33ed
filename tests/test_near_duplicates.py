"""Remember's near-duplicate lookup: the MinHash band keys of each memory's word set
(similarity.py), indexed by the lexical engine and looked up in its committed index and in its
pending tail; FTS5 alone (or an index being rebuilt) falls back to a BM25 search."""

from __future__ import annotations

import random
import subprocess
import sys

from agentmemory_server.retrieval import search
from agentmemory_server.similarity import BANDS, band_keys, jaccard
from agentmemory_server.storage.lexical import tantivy_schema, tantivy_search, tantivy_tail
from conftest import SRC, ToolCaller

VOCABULARY = [f"term{i}" for i in range(5000)]
QUERY = "the payment worker retries webhook deliveries with exponential backoff and random jitter before giving up"


def _variant(text: str, replaced: list[str]) -> str:
    """``text`` with its last three words replaced: 12 of its 14 words longer than two characters
    stay, so with three new ones the Jaccard is 12/17 = 0.71 to ``text`` and 12/18 between two."""
    words = text.split()
    return " ".join(words[: len(words) - len(replaced)] + replaced)


def test_band_keys_do_not_depend_on_the_process():
    code = "import sys; from agentmemory_server.similarity import band_keys; print(band_keys(sys.argv[1]))"
    for seed in ("1", "2"):  # Python's own str hash differs with the seed; the keys must not
        out = subprocess.run([sys.executable, "-c", code, QUERY], capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(SRC), "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == str(band_keys(QUERY))
    assert len(band_keys(QUERY)) == BANDS == len(set(band_keys(QUERY)))


def test_texts_above_the_threshold_share_a_key_and_unrelated_texts_rarely_do():
    rng = random.Random(7)
    near = loose = unrelated = 0
    for _ in range(300):
        base = rng.sample(VOCABULARY, 20)
        close = base[:17] + rng.sample(VOCABULARY, 3)  # Jaccard 17/23 = 0.74
        half = base[:13] + rng.sample(VOCABULARY, 7)  # 13/27 = 0.48
        other = rng.sample(VOCABULARY, 20)
        keys = set(band_keys(" ".join(base)))
        assert jaccard(" ".join(base), " ".join(close)) > 0.7
        near += bool(keys & set(band_keys(" ".join(close))))
        loose += bool(keys & set(band_keys(" ".join(half))))
        unrelated += bool(keys & set(band_keys(" ".join(other))))
    assert near == 300  # at 0.74 a pair misses every band with probability about 1e-5
    assert 0.3 * 300 < loose < 0.95 * 300  # about 0.7 at 0.48: a candidate, checked exactly
    assert unrelated <= 3


def test_texts_without_long_words_match_when_equal_ignoring_case_and_spaces():
    assert band_keys("ok to go") == band_keys("OK  to go") != band_keys("ok to do")
    assert len(band_keys("ok to go")) == 1


def _contents(rt, text: str, filters: dict) -> list[tuple[str, str]]:
    """(project, content) of the memories the lookup offers; "" for no project."""
    store = rt.db.reader()
    docs = store.index.near_duplicates(text, limit=10, filters=filters)
    assert docs is not None
    return sorted((record.get("project") or "", record["content"]) for _doc, record in search.hydrate(store, docs))


def test_the_lookup_finds_pending_and_committed_memories_of_the_project_and_global_ones(make_runtime):
    rt = make_runtime()
    call = ToolCaller(rt)
    # Three memories close to the query but not to one another (none supersedes another).
    alpha = _variant(QUERY, ["for", "alpha", "tenants"])
    beta = _variant(QUERY, ["across", "beta", "regions"])
    anywhere = _variant(QUERY, ["over", "every", "cluster"])
    assert min(jaccard(QUERY, t) for t in (alpha, beta, anywhere)) > 0.7 > jaccard(alpha, beta)
    call("memory_save", content=alpha, project="alpha")
    call("memory_save", content=beta, project="beta")
    call("memory_save", content=anywhere)
    call("agent_observe", sessionId="s1", hookType="observation", project="alpha", content=QUERY)
    call("memory_save", content="the cafeteria closes early on fridays", project="alpha")
    for flushed in (False, True):
        if flushed:
            rt.db.flush()  # the applier commits: the keys are looked up in Tantivy's index now
        assert rt.db.health()["lexical"]["pending"] == (0 if flushed else 5)
        assert _contents(rt, QUERY, {"kinds": ["memory"], "project": "alpha"}) == [("", anywhere), ("alpha", alpha)]
        assert {c for _p, c in _contents(rt, QUERY, {"kinds": ["memory"]})} == {alpha, beta, anywhere}
        assert _contents(rt, "an unrelated note about printer drivers and toner", {"kinds": ["memory"]}) == []


def test_other_projects_copies_do_not_hide_the_near_duplicate_in_this_project(make_runtime):
    """Memories with the same text in 25 other projects used to fill the BM25 search's 20
    candidates, and remember then kept two near-duplicate versions in this project."""
    rt = make_runtime()
    call = ToolCaller(rt)
    mine = call("memory_save", content=_variant(QUERY, ["for", "our", "shop"]), project="mine")["memory"]
    shorter = " ".join(QUERY.split()[:12])  # ranks above this project's memory in BM25 (shorter)
    for i in range(25):
        call("memory_save", content=shorter, project=f"tenant-{i}")
    for flushed in (False, True):
        newer = call("memory_save", content=_variant(QUERY, ["for", "our", "store"]), project="mine")
        assert newer["superseded"] == mine["id"], flushed
        mine = newer["memory"]
        if not flushed:
            rt.db.flush()


def test_without_the_index_remember_finds_near_duplicates_by_bm25(make_runtime):
    rt = make_runtime(lexical_engine="fts5")
    call = ToolCaller(rt)
    assert rt.db.reader().index.near_duplicates(QUERY, limit=10, filters={}) is None
    first = call("memory_save", content=QUERY, project="p")["memory"]
    assert call("memory_save", content=QUERY + " twice", project="p")["superseded"] == first["id"]


def test_an_index_with_other_band_keys_is_rebuilt_with_these(make_runtime, tmp_path, monkeypatch):
    """Keys made another way (an older KEYS_VERSION, or none at all before they existed) live in
    another field, so the index has another schema and is rebuilt at start-up; remember finds
    near-duplicates by BM25 meanwhile."""
    data = str(tmp_path / "upgrade")
    with monkeypatch.context() as older:
        older.setattr(tantivy_search, "NEAR_DUP", "near_dup_v0")
        older.setattr(tantivy_schema, "NEAR_DUP", "near_dup_v0")
        older.setattr(tantivy_tail, "NEAR_DUP", "near_dup_v0")
        rt = make_runtime(data_dir=data)
        first = ToolCaller(rt)("memory_save", content=QUERY, project="p")["memory"]
        rt.db.flush()
        rt.close()
    again = make_runtime(data_dir=data)
    assert again.db.lexical.health()["state"] == "not built"  # another schema: rebuilt in the background
    assert again.db.reader().index.near_duplicates(QUERY, limit=10, filters={}) is None
    newer = ToolCaller(again)("memory_save", content=QUERY + " again", project="p")
    assert newer["superseded"] == first["id"]  # found by BM25 meanwhile
    again.db.flush()
    assert again.db.lexical.health()["state"] == "ready"
    assert _contents(again, QUERY, {"kinds": ["memory"]}) == [("p", QUERY + " again")]
