"""How deep a vector search asks the index, and where a query's models run.

The dense ranking keeps ``limit`` rows. The index is asked for a small margin more when it applies
every filter itself, deeper only when rows drop out afterwards (inactive versions, a filter it
does not know); a new query is embedded on the service's own thread while BM25 runs, and on the
request's thread while other searches compete for the CPU; a request process loads its query
models when it starts, not in its first search. Both backends."""

import threading
import time

from agentmemory_server.retrieval import vectors
from test_vectors import note, smart

TOPICS = ["billing", "search", "queue", "cache", "auth", "export"]


def _seeded(make_runtime, count=150, **settings):
    rt = make_runtime(embedding_provider="hash", **settings)
    for i in range(count):
        note(rt, f"s{i % 7}", f"note {i} about the {TOPICS[i % len(TOPICS)]} module, step {i % 11}")
    assert vectors.service(rt).drain() == count
    return rt


def _asks(store):
    """Record the ``k`` of every nearest-neighbour search the store answers."""
    asked, search = [], store.vectors.search

    def recording(model, dim, query, k, filters):
        asked.append(k)
        return search(model, dim, query, k, filters)

    store.vectors.search = recording
    return asked


def test_the_index_is_asked_for_a_margin_and_deeper_only_when_rows_drop_out(make_runtime):
    rt = _seeded(make_runtime)
    service, store = vectors.service(rt), rt.db.reader()
    query, project = "billing module step 3", {"project": "p"}
    everything = [d["doc_id"] for d in service.search(store, query, limit=150, filters=project)]
    assert len(everything) == 150
    asked = _asks(store)
    top = service.search(store, query, limit=100, filters=project)
    assert asked == [110] and [d["doc_id"] for d in top] == everything[:100]
    inactive = everything[:40]  # as a memory's superseded versions: beside the query, not searchable
    with rt.db.transaction("test_deactivate") as tx:
        for doc_id in inactive:
            tx.index.set_active(doc_id, False)
    store, asked[:] = rt.db.reader(), []
    asked = _asks(store)
    top = [d["doc_id"] for d in service.search(store, query, limit=100, filters=project)]
    assert asked == [110, 440]  # 70 of the first 110 survived: asked again, deeper
    assert top == [d for d in everything if d not in inactive][:100]
    store = rt.db.reader()
    asked = _asks(store)
    dated = service.search(store, query, limit=100, filters={**project, "since": "2000-01-01T00:00:00Z"})
    assert asked[0] == 200 and len(dated) == 100  # a filter the index does not apply: twice from the start


def test_a_new_querys_vector_is_computed_beside_bm25_and_inline_under_load(make_runtime):
    rt = _seeded(make_runtime, 60, search_late_interaction=False)
    service = vectors.service(rt)
    threads, embed = [], service.embedder.embed

    def spy(texts, **kwargs):
        threads.append(threading.current_thread().name)
        return embed(texts, **kwargs)

    service.embedder.embed = spy
    ids = lambda body: [r["obsId"] for r in body["results"]]  # noqa: E731
    alone = smart(rt, "queue module step 5", project="p", limit=10)
    assert alone["mode"] == "hybrid" and threads == ["agentmemory-query-encode_0"]
    service._cache.clear()
    with service.searching():  # another search of this process is in flight
        busy = smart(rt, "queue module step 5", project="p", limit=10)
    assert threads[1] == threading.current_thread().name and ids(busy) == ids(alone)
    assert ids(smart(rt, "queue module step 5", project="p", limit=10)) == ids(alone)
    assert len(threads) == 2  # the cached vector served the third search


def test_a_request_process_loads_its_query_models_before_its_first_search(make_runtime):
    rt = make_runtime(embedding_provider="local", background_jobs=True, background="inline")
    service = vectors.service(rt)
    deadline = time.monotonic() + 60
    while (service.embedder._session is None or service.late._session is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    # both loaded without a search, on the query thread, and nothing put in the query caches
    assert service.embedder._session is not None and service.late._session is not None
    assert len(service._cache) == 0 and len(service.late._cache) == 0
    cold = make_runtime(embedding_provider="local", data_dir=str(rt.settings.data_dir) + "-cold")
    assert vectors.service(cold).embedder._session is None  # a runtime without background jobs loads on demand
