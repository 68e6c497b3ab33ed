"""The vector index: embeddings in SQLite, an in-memory matrix for brute-force cosine search.

Writes never wait for a model. Indexing a record queues its search row in ``embed_backlog``
inside the same transaction (the search index's storage does it), so a crash loses no work; a background
worker drains the backlog in batches, stores float32 BLOBs in ``search_vectors`` tagged with
the model id and dimension, and adds them to the matrix. At start-up the matrix is read from
SQLite (nothing is embedded); vectors of another model or dimension are ignored and their rows
re-queued by the worker, so a model change neither mixes vector spaces nor blocks start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agentmemory_server.errors import Unavailable
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.retrieval import search
from agentmemory_server.retrieval.embeddings import Embedder, choose_provider, make_embedder, to_blob
from agentmemory_server.storage.interfaces import UnitOfWork
from agentmemory_server.threads import lower_thread_priority

log = logging.getLogger("agentmemory.vectors")
QUERY_CACHE_SIZE = 512
RETRY_CAP_SECONDS = 3600.0
PRUNE_EVERY_SECONDS = 300.0
CONTEXT_EMBED_CHARS = 200


def _stamp() -> str:
    """Wall-clock stamp with microseconds: orders queue entries against a running batch."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Embedding waits for a lull in writes: it competes with requests for the cores and the GIL
# (a lowered thread priority covers only the former). Writes arrive in bursts, so vectors follow
# within a moment of a burst; a steady stream still gets them after MAX_DEFER_SECONDS.
QUIET_SECONDS = 0.25
MAX_DEFER_SECONDS = 30.0


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Hand memory freed by the C heap back to the OS (glibc's ``malloc_trim``; a no-op
    elsewhere). onnxruntime frees its activations after every batch, but glibc keeps freed
    blocks in per-thread arenas: measured on a server with 10k records, one batch of 64
    documents left RSS 130 MB higher for good; trimming after each batch brought it below
    where it was before the batch."""
    if _TRIM is not None:
        _TRIM(0)


def embedding_text(title: str, body: str, concepts: str = "", context: str = "") -> str:
    """What a record's vector represents: its title and body (the title is skipped when the body
    already starts with it, as agent notes do), its concepts, then the text that came just
    before it in its session."""
    title, body = search.distinct_title((title or "").strip(), (body or "").strip()), (body or "").strip()
    text = " ".join(p for p in (title, body, concepts) if p)
    return f"{text} | {context[:CONTEXT_EMBED_CHARS]}" if context else text


class Codes:
    """Interned strings -> small ints, so metadata filters are vectorised comparisons."""

    def __init__(self) -> None:
        self._codes: dict[str | None, int] = {None: 0}

    def code(self, value: str | None) -> int:
        return self._codes.setdefault(value, len(self._codes))

    def find(self, value: str | None) -> int:
        return self._codes.get(value, -1)


class MatrixIndex:
    """Rows of unit vectors keyed by search rowid, with kind/project/agent/session codes."""

    def __init__(self, dim: int, capacity: int = 1024):
        self.dim = dim
        self.n = 0
        self.alive_count = 0
        self._lock = threading.Lock()
        self._pos: dict[int, int] = {}
        self.codes = {"kind": Codes(), "project": Codes(), "agent": Codes(), "session": Codes()}
        self.matrix: np.ndarray
        self.meta: dict[str, np.ndarray] = {}
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        old = self.matrix if self.meta else None
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        arrays = {
            "rowid": np.zeros(capacity, np.int64),
            "alive": np.zeros(capacity, bool),
            **{name: np.zeros(capacity, np.int32) for name in self.codes},
        }
        if old is not None:
            matrix[: self.n] = old[: self.n]
            for name, arr in arrays.items():
                arr[: self.n] = self.meta[name][: self.n]
        self.matrix, self.meta = matrix, arrays

    def upsert(self, rowids: list[int], vectors: np.ndarray, metas: list[dict]) -> None:
        with self._lock:
            if self.n + len(rowids) > self.matrix.shape[0]:
                # Grow by a quarter: at 100k x 384 a doubling would cost 150 MB at once.
                capacity = self.matrix.shape[0]
                self._alloc(max(capacity + capacity // 4, self.n + len(rowids), capacity + 1024))
            for rowid, vector, meta in zip(rowids, vectors, metas, strict=True):
                i = self._pos.get(rowid)
                if i is None:
                    i, self.n = self.n, self.n + 1
                    self._pos[rowid] = i
                    self.alive_count += 1
                self.matrix[i] = vector
                self.meta["rowid"][i], self.meta["alive"][i] = rowid, True
                for name in ("kind", "project", "agent", "session"):
                    self.meta[name][i] = self.codes[name].code(meta.get(name))

    def bulk_load(self, rows: Iterable[tuple]) -> None:
        """Fill an empty index from (rowid, blob, kind, project, agent, session) rows, one row
        at a time so start-up never holds a second copy of the matrix."""
        with self._lock:
            for rowid, blob, kind, project, agent, session in rows:
                if self.n == self.matrix.shape[0]:
                    self._alloc(self.n + max(1024, self.n // 4))
                i = self.n
                self.matrix[i] = np.frombuffer(blob, dtype="<f4")
                self.meta["rowid"][i], self.meta["alive"][i] = rowid, True
                for name, value in (("kind", kind), ("project", project), ("agent", agent), ("session", session)):
                    self.meta[name][i] = self.codes[name].code(value)
                self._pos[rowid] = i
                self.n += 1
            self.alive_count = self.n

    def remove(self, rowids: Iterable[int]) -> None:
        with self._lock:
            for rowid in rowids:
                i = self._pos.pop(rowid, None)
                if i is not None:
                    self.meta["alive"][i] = False
                    self.alive_count -= 1
            if self.n > 1024 and self.alive_count < self.n // 2:
                self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self.meta["alive"][: self.n])
        self.matrix[: len(keep)] = self.matrix[keep]
        for arr in self.meta.values():
            arr[: len(keep)] = arr[keep]
        self.n = len(keep)
        self._pos = {int(r): i for i, r in enumerate(self.meta["rowid"][: self.n])}

    def rowids(self) -> set[int]:
        with self._lock:
            return set(self._pos)

    def _mask(self, meta: dict[str, np.ndarray], filters: dict[str, Any]) -> np.ndarray:
        mask = meta["alive"].copy()
        kinds = filters.get("kinds")
        if kinds:
            mask &= np.isin(meta["kind"], [self.codes["kind"].find(k) for k in kinds])
        if filters.get("project") is not None:
            # Same rule as the SQL filter: project-less memories and lessons are global.
            global_rows = (meta["project"] == 0) & (meta["kind"] != self.codes["kind"].find("observation"))
            mask &= (meta["project"] == self.codes["project"].find(filters["project"])) | global_rows
        if filters.get("agent_id") is not None:
            mask &= meta["agent"] == self.codes["agent"].find(filters["agent_id"])
        if filters.get("session_ids") is not None:
            mask &= np.isin(meta["session"], [self.codes["session"].find(s) for s in filters["session_ids"]])
        return mask

    def search(self, query: np.ndarray, k: int, filters: dict[str, Any]) -> list[tuple[int, float]]:
        """Top-k (rowid, cosine) among rows passing the metadata filters."""
        with self._lock:
            n = self.n
            matrix = self.matrix[:n]
            meta = {name: arr[:n] for name, arr in self.meta.items()}
        if n == 0:
            return []
        scores = matrix @ query.astype(np.float32)
        mask = self._mask(meta, filters)
        candidates = np.flatnonzero(mask)
        if len(candidates) == 0:
            return []
        scores = scores[candidates]
        k = min(k, len(candidates))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(meta["rowid"][candidates[i]]), float(scores[i])) for i in top]


class VectorService:
    """The ``vectors`` subsystem: provider, in-memory index, backlog worker, health."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.provider = choose_provider(rt.settings)
        self.error: str | None = None
        self.embedder: Embedder | None = None
        try:
            self.embedder = make_embedder(rt.settings)
        except Unavailable as exc:  # a broken provider degrades search to BM25, never start-up
            self.error = exc.message
            log.warning("embeddings disabled: %s", exc.message)
        self.index = MatrixIndex(self.embedder.dim if self.embedder else 1)
        self.embedded = 0
        self.failed_batches = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        started = time.perf_counter()
        self.load()
        self.load_seconds = round(time.perf_counter() - started, 3)
        if self.embedder is not None and rt.settings.background_jobs:
            self._thread = threading.Thread(target=self._work, name="agentmemory-embed", daemon=True)
            self._thread.start()
            rt.every(PRUNE_EVERY_SECONDS, "vector_prune", self.prune)

    @property
    def model(self) -> str | None:
        return self.embedder.model_id if self.embedder else None

    # ---- start-up load ------------------------------------------------------------------------
    def load(self) -> None:
        """Read every vector of the current model into the matrix (one query, no embedding)."""
        if self.embedder is None:
            return
        dim = self.embedder.dim
        store = self.rt.db.reader()
        count = store.vectors.counts().get(f"{self.model}/{dim}", 0)
        self.index = MatrixIndex(dim, capacity=count + 1024)
        self.index.bulk_load(store.vectors.load(self.embedder.model_id, dim))

    # ---- the backlog worker ---------------------------------------------------------------------
    def _work(self) -> None:
        lower_thread_priority()
        try:
            self.reconcile()
        except Exception:  # noqa: BLE001 - the worker must survive anything
            log.exception("vector reconcile failed")
        while not self._stop.is_set():
            self._wait_for_lull()
            try:
                done = self.drain_once()
            except Exception:  # noqa: BLE001
                log.exception("embedding batch failed")
                done = 0
            if done == 0:
                self._wake.wait(2.0)
                self._wake.clear()

    def _wait_for_lull(self) -> None:
        deadline = time.monotonic() + MAX_DEFER_SECONDS
        while not self._stop.is_set():
            now = time.monotonic()
            quiet_for = now - self.rt.db.last_write
            if quiet_for >= QUIET_SECONDS or now >= deadline:
                return
            self._stop.wait(min(QUIET_SECONDS - quiet_for, deadline - now))

    def reconcile(self) -> int:
        """Queue every search row that has no vector of the current model (new model, lost
        work, an upgrade); returns how many were queued."""
        if self.embedder is None:
            return 0
        with self.rt.db.transaction("vector_reconcile") as tx:
            return tx.vectors.backlog_requeue_missing(self.embedder.model_id, _stamp())

    def requeue_all(self) -> int:
        """Re-embed everything (the CLI's reindex): every search row goes back on the backlog."""
        with self.rt.db.transaction("vector_requeue") as tx:
            count = tx.vectors.backlog_requeue_missing(self.model or "", _stamp(), everything=True)
        self._wake.set()
        return count

    def drain_once(self) -> int:
        """Embed one batch of due backlog rows; returns how many rows it handled."""
        if self.embedder is None:
            return 0
        started = _stamp()
        rows = self.rt.db.reader().vectors.backlog_take(self.rt.settings.embed_batch_size, time.time())
        if not rows:
            return 0
        rowids = [r["rowid"] for r in rows]
        texts = [embedding_text(r["title"], r["body"], r["concepts"], r["context"]) for r in rows]
        try:
            vectors = self.embedder.embed(texts)
        except Exception as exc:  # noqa: BLE001 - provider errors become a retry with backoff
            attempts = max(r["attempts"] for r in rows) + 1
            delay = min(RETRY_CAP_SECONDS, 5.0 * 2**attempts)
            self.failed_batches += 1
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            with self.rt.db.transaction("embed_failed") as tx:
                tx.vectors.backlog_failed(rowids, self.error, time.time() + delay)
            return len(rows)
        now = self.rt.clock.iso()
        stored = []
        with self.rt.db.transaction("embed") as tx:
            for row, vector in zip(rows, vectors, strict=True):
                if tx.vectors.put(row["rowid"], self.embedder.model_id, to_blob(vector), self.embedder.dim, now):
                    stored.append(row)
            tx.vectors.backlog_done(rowids, started)
        release_memory()
        keep = {r["rowid"] for r in stored}
        self.index.upsert(
            [r["rowid"] for r in stored],
            vectors[[i for i, r in enumerate(rows) if r["rowid"] in keep]],
            [
                {"kind": r["kind"], "project": r["project"], "agent": r["agent_id"], "session": r["session_id"]}
                for r in stored
            ],
        )
        self.embedded += len(stored)
        self.error = None
        return len(rows)

    def drain(self, max_batches: int | None = None) -> int:
        """Embed due backlog rows until none is left (or ``max_batches``); for tests and tools."""
        total, batches = 0, 0
        while max_batches is None or batches < max_batches:
            done = self.drain_once()
            if done == 0:
                break
            total, batches = total + done, batches + 1
        return total

    def notify(self) -> None:
        self._wake.set()

    def prune(self) -> int:
        """Drop matrix rows whose search row is gone (deleted records); returns how many."""
        if self.embedder is None:
            return 0
        stored = {r for r, *_ in self.rt.db.reader().vectors.load(self.embedder.model_id, self.embedder.dim)}
        gone = self.index.rowids() - stored
        self.index.remove(gone)
        release_memory()  # and what queries left behind, every few minutes
        return len(gone)

    # ---- queries ---------------------------------------------------------------------------------
    def embed_query(self, text: str) -> np.ndarray:
        """The query's vector (cached; repeated queries cost nothing). Raises Unavailable."""
        if self.embedder is None:
            raise Unavailable(self.error or "no embedding provider configured")
        key = text.strip()[:2000]
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

    def search(self, store: UnitOfWork, query: str, *, limit: int, filters: dict[str, Any]) -> list[dict]:
        """Ranked search rows by cosine similarity, checked against SQLite (deleted, inactive and
        filtered-out rows dropped). Raises Unavailable when no query vector can be made."""
        vector = self.embed_query(query)
        ranked = self.index.search(vector, max(limit * 2, limit + 20), filters)
        scores = dict(ranked)
        docs = store.index.by_rowid(list(scores), filters)
        for doc in docs:
            doc["score"] = scores[doc["rowid"]]
        docs.sort(key=lambda d: -d["score"])
        return docs[:limit]

    @property
    def ready(self) -> bool:
        return self.embedder is not None and self.index.alive_count > 0

    # ---- subsystem contract ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        stats = self.rt.db.reader().vectors.backlog_stats() if self.embedder else {}
        status = "degraded" if self.error and (self.embedder is None or stats.get("failing")) else "healthy"
        return {
            "status": status,
            "provider": self.provider,
            "model": self.model,
            "dimensions": self.embedder.dim if self.embedder else None,
            "vectors": self.index.alive_count,
            "backlog": stats.get("pending", 0),
            "failing": stats.get("failing", 0),
            "embeddedSinceStart": self.embedded,
            "loadSeconds": self.load_seconds,
            "worker": bool(self._thread and self._thread.is_alive()),
            "lastError": self.error or stats.get("lastError"),
        }

    def diagnose(self) -> list[dict[str, Any]]:
        if self.embedder is None:
            ok = self.provider == "none"
            return [
                _check(
                    "vector-provider",
                    "pass" if ok else "fail",
                    "embeddings off (EMBEDDING_PROVIDER=none): search is BM25 only"
                    if ok
                    else f"embedding provider {self.provider!r} unavailable: {self.error}",
                    "install requirements.txt or set the provider's key",
                    False,
                )
            ]
        store = self.rt.db.reader()
        stats, counts = store.vectors.backlog_stats(), store.vectors.counts()
        current = f"{self.model}/{self.embedder.dim}"
        other = sum(n for key, n in counts.items() if key != current)
        missing = store.vectors.missing(self.embedder.model_id)
        return [
            _check("vector-provider", "pass", f"{self.provider}: {self.model} ({self.embedder.dim}-d)", "", False),
            _check(
                "vector-backlog",
                "warn" if stats["failing"] else "pass",
                f"{stats['pending']} record(s) waiting for a vector, {stats['failing']} failing"
                + (f" (last error: {stats['lastError']})" if stats["lastError"] else ""),
                "check the provider; failed rows are retried with backoff",
                False,
            ),
            _check(
                "vector-missing",
                "fail" if missing else "pass",
                f"{missing} indexed record(s) have no vector and are not queued",
                "heal re-queues them",
                bool(missing),
            ),
            _check(
                "vector-stale-model",
                "warn" if other else "pass",
                f"{other} vector(s) of another model or dimension are ignored until re-embedded",
                "heal re-queues them",
                bool(other),
            ),
        ]

    def heal(self, dry_run: bool = False) -> list[dict[str, Any]]:
        if self.embedder is None:
            return []
        store = self.rt.db.reader()
        missing = store.vectors.missing(self.embedder.model_id)
        if dry_run:
            return [{"name": "vector-missing", "wouldQueue": missing}]
        queued = self.reconcile()
        self._wake.set()
        return [{"name": "vector-missing", "queued": queued}]

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _check(name: str, status: str, message: str, fix: str, fixable: bool) -> dict[str, Any]:
    return {"name": name, "category": "search", "status": status, "message": message, "fix": fix, "fixable": fixable}


def service(rt: Runtime) -> VectorService:
    return rt.services["vectors"]


def requeue_all_embeddings(rt: Runtime) -> int:
    """Queue every indexed record for re-embedding (for ``reindex``); returns the count."""
    return service(rt).requeue_all()
