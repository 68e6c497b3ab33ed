"""The embedding backlog worker: what turns queued records into stored vectors.

Indexing a record queues it on ``embed_backlog`` (the search index's storage does it, in the
record's own transaction). Where the background loops run (``kernel/background.py``), the
worker thread here claims a batch with a lease, embeds it on a low-priority model thread, and
stores the vectors (and, with late interaction on, the token vectors) in a short transaction,
tried again while another writer holds the database or the store does not answer. It paces
itself by the machine's request load, queues again what the bounded backlog shed or a long
backlog left without token vectors (``reconcile``), and retries a failed batch with backoff.

``EmbeddingBacklog`` is a part of ``vectors.VectorService``, kept apart because request
processes never run it: the service inherits it and provides the state it declares below (the
embedder, the late-interaction encoder, the error fields ``/health`` shows). The query side,
the index follower, health and diagnose/repair stay in ``vectors.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import LastError, Unavailable
from agentmemory_server.kernel import background
from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.kernel.util import WorkerFailures
from agentmemory_server.retrieval import late_interaction, search
from agentmemory_server.retrieval.embeddings import Embedder, to_blob
from agentmemory_server.storage.interfaces import VectorIndex
from agentmemory_server.threads import lower_thread_priority

log = logging.getLogger("agentmemory.vectors")
RETRY_CAP_SECONDS = 3600.0
CONTEXT_EMBED_CHARS = 200


def _stamp() -> str:
    """Wall-clock stamp with microseconds: orders queue entries against a running batch."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Pacing of the backlog worker (see ``kernel/background.py``'s activity board). While any
# request-serving process on this machine is busy (a request in flight, or one ended less than
# QUIET_SECONDS ago) the worker waits up to BUSY_WAIT_SECONDS for a gap, then embeds one
# BUSY_SLICE of records and rests REST_FACTOR times as long as the slice took: requests keep
# their cores and the backlog still moves under steady load. When requests stop it embeds full
# batches back to back.
QUIET_SECONDS = 0.05
BUSY_WAIT_SECONDS = 0.5
BUSY_SLICE = 8
REST_FACTOR = 1.0
LEASE_SECONDS = 600.0  # a claimed batch is hidden this long from other workers
# Token vectors for late interaction cost about as much CPU again as the dense vector. While at
# least this many records wait, batches get their dense vector only (the backlog drains at the
# dense model's rate: new records become searchable by meaning as fast as before), and the
# records left without token vectors are queued again once the backlog is empty, for their token
# vectors alone (whatever the backlog's length then).
LATE_DEFER_BACKLOG = 500
RECONCILE_CHUNK = 500  # rows a reconcile queues per write transaction


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


class EmbeddingBacklog(ABC):
    """The backlog worker's half of the ``vectors`` subsystem (``vectors.VectorService``)."""

    # Provided by VectorService, shared with the query side and /health.
    rt: Runtime
    embedder: Embedder | None
    late: late_interaction.LateEncoder | None
    late_error: str | None
    error: str | None
    last_error: LastError
    _wake: threading.Event
    _stop: threading.Event
    _index: VectorIndex | None
    _threads: list[threading.Thread]

    def _init_backlog(self) -> None:
        """The worker's own state: its counters, its log of busy retries, its model thread."""
        self.embedded = 0
        self.failed_batches = 0
        self.tokens_deferred = False  # a batch went without token vectors: reconcile once drained
        self._busy = WorkerFailures(log, "embedding batch (stored once the database takes writes)")
        # The model runs on a thread at the lowest priority, the backlog's transactions on the
        # calling thread at normal priority: a batch holding the database's write lock must not
        # wait behind request threads for a core while every writer waits for it (a worker
        # niced as a whole held the lock 20-50 ms per batch under load, for 0.2 ms of work).
        # The model loads on its first call, so onnxruntime's own threads start there and
        # inherit the low priority.
        self._compute: ThreadPoolExecutor | None = None

    @property
    @abstractmethod
    def model(self) -> str | None: ...

    @property
    @abstractmethod
    def tokens_model(self) -> str | None: ...

    @abstractmethod
    def catch_up(self) -> int: ...

    def _work(self) -> None:
        try:
            self.release_leases()
            self.reconcile()
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything
            WorkerFailures(log, "vector reconcile").failed(exc)
        failures = WorkerFailures(log, "embedding batch")
        shed_seen: dict[int, int] = {}
        self._shed_since(shed_seen)  # what was shed before start is queued by the reconcile above
        more_missing = True
        while not self._stop.is_set():
            limit = self._pace()
            started = time.monotonic()
            try:
                done = self.drain_once(limit)
                if done == 0 and (self._shed_since(shed_seen) or more_missing or self.tokens_deferred):
                    # Rows the bounded backlog could not take (shed by any process, or beyond its
                    # room at the last reconcile) are queued once it has drained.
                    done = self._reconcile_after_drain()
                    more_missing = done > 0
            except Exception as exc:  # noqa: BLE001
                failures.failed(exc)
                done = 0
            if done == 0:
                self._wake.wait(2.0)
                self._wake.clear()
            elif limit == BUSY_SLICE:  # requests are being served: give their cores back a while
                self._stop.wait(REST_FACTOR * (time.monotonic() - started))

    def _pace(self) -> int:
        """How many records the next batch may take: a full batch when no request is being
        served on this machine, else one small slice after waiting a moment for a gap."""
        deadline = time.monotonic() + BUSY_WAIT_SECONDS
        while background.busy(self.rt.settings.database_path, QUIET_SECONDS):
            if time.monotonic() >= deadline or self._stop.wait(0.02):
                return BUSY_SLICE
        return int(self.rt.settings.embed_batch_size)

    def release_leases(self) -> int:
        """Make batches claimed by a worker that died due again (a starting worker takes them
        over; with several workers one batch may be embedded twice, which changes nothing)."""
        with self.rt.db.transaction("embed_release") as tx:
            return tx.vectors.backlog_release(time.time())

    def _shed(self) -> int:
        """Backlog entries this process shed (the backlog was at its bound)."""
        return self.rt.db.queue_stats().get("embed_backlog", {}).get("shed", 0)

    def _shed_since(self, seen: dict[int, int]) -> bool:
        """Did this process or a request process on the activity board shed entries since the
        last call with ``seen`` (pid -> count, updated)?"""
        counts = background.shed_by_process(self.rt.settings.database_path)
        counts[os.getpid()] = self._shed()
        grew = any(count > seen.get(pid, 0) for pid, count in counts.items())
        seen.clear()
        seen.update(counts)
        return grew

    def reconcile(self) -> int:
        """Queue every search row that has no vector of the current model, or no token vectors
        (new model, lost work, an upgrade); returns how many were queued.

        The rows are found on a reader, RECONCILE_CHUNK at a time in rowid order, and each chunk
        is queued in its own short transaction (which checks them again): the anti-join over
        every record costs ~0.2 s at 100k and would hold the database's write lock that long
        each time the worker starts or a drain ends with records shed or deferred, when it
        usually finds nothing. It stops when the backlog is full."""
        if self.embedder is None:
            return 0
        model, queued, after, full = self.embedder.model_id, 0, 0, False
        while not full:
            rowids = self.rt.db.reader().vectors.missing_rowids(model, self.tokens_model, after, RECONCILE_CHUNK)
            if rowids:
                with self.rt.db.transaction("vector_reconcile") as tx:
                    queued += tx.vectors.backlog_requeue_missing(
                        model, _stamp(), tokens_model=self.tokens_model, rowids=rowids
                    )
                    # At its bound the backlog takes no more: the rest are found once it drained.
                    full = tx.vectors.backlog_room() == 0
            if len(rowids) < RECONCILE_CHUNK:
                break
            after = rowids[-1]
        return queued

    def _reconcile_after_drain(self) -> int:
        """``reconcile`` once the backlog is empty: it queues the records a long backlog left
        without token vectors, for those alone (``tokens_only``: never deferred)."""
        self.tokens_deferred = False
        return self.reconcile()

    def requeue_all(self) -> int:
        """Re-embed everything (the CLI's reindex): every search row goes back on the backlog."""
        with self.rt.db.transaction("vector_requeue") as tx:
            count = tx.vectors.backlog_requeue_missing(self.model or "", _stamp(), everything=True)
        self._wake.set()
        return count

    def drain_once(self, limit: int | None = None) -> int:
        """Claim, embed and store one batch of due backlog rows; returns how many it handled."""
        if self.embedder is None:
            return 0
        started = _stamp()
        now = time.time()
        with self.rt.db.transaction("embed_claim") as tx:
            rows = tx.vectors.backlog_claim(limit or self.rt.settings.embed_batch_size, now, now + LEASE_SECONDS)
            defer = self.late is not None and tx.vectors.backlog_at_least(LATE_DEFER_BACKLOG)
        if not rows:
            return 0
        rowids = [r["rowid"] for r in rows]
        full = [r for r in rows if not r["tokens_only"]]  # the others were queued for token vectors alone
        tokened = [r for r in rows if r["tokens_only"] or not defer] if self.late is not None else []
        self.tokens_deferred |= len(tokened) < len(rows) and self.late is not None
        texts = [embedding_text(r["title"], r["body"], r["concepts"], r["context"]) for r in full]
        # Token vectors read the record alone: with its session context too, LoCoMo R@10 fell a point.
        own = [embedding_text(r["title"], r["body"], r["concepts"]) for r in tokened]
        try:
            vectors, tokens = self._embed_documents(texts, own)
        except Exception as exc:  # noqa: BLE001 - provider errors become a retry with backoff
            self._batch_failed(rows, exc)
            return len(rows)
        stamp, embedder = self.rt.clock.iso(), self.embedder

        def store() -> int:
            stored = 0
            with self.rt.db.transaction("embed") as tx:
                for row, vector in zip(full, vectors, strict=True):
                    stored += tx.vectors.put(row["rowid"], embedder.model_id, to_blob(vector), embedder.dim, stamp)
                for row, packed in zip(tokened, tokens or [], strict=False):
                    tx.vectors.put_tokens(row["rowid"], late_interaction.MODEL_ID, packed)
                tx.vectors.backlog_done(rowids, started)
            return stored

        self._batch_stored(self._once_the_database_takes_it(store))
        return len(rows)

    def _batch_stored(self, stored: int) -> None:
        """After a batch's vectors are written: the provider's memory given back, the count and
        the error state brought up to date."""
        release_memory()
        self.embedded += stored
        self.error = None
        self.last_error.succeeded()

    def _batch_failed(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        """Record the provider's error and put the batch back, due again after a backoff that
        doubles with its most retried row's attempts."""
        attempts = max(r["attempts"] for r in rows) + 1
        delay = min(RETRY_CAP_SECONDS, 5.0 * 2**attempts)
        self.failed_batches += 1
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        self.last_error.failed(self.error)
        with self.rt.db.transaction("embed_failed") as tx:
            tx.vectors.backlog_failed([r["rowid"] for r in rows], self.error, time.time() + delay)

    def _once_the_database_takes_it(self, write: Callable[[], int]) -> int:
        """``write()``, tried again while the store cannot take it (``errors.waits_for_the_store``):
        another writer, such as a replace import, holds its write lock past the wait (each try
        waits for it), or the store does not answer (a PostgreSQL restart, or its connection
        ended under the write). A batch already embedded is stored as soon as the store takes
        it, not left to its lease (LEASE_SECONDS) and embedded again, and is no failed batch of
        the embedder's. Logged once a minute meanwhile."""
        while True:
            try:
                return write()
            except Unavailable as exc:
                if not errors.waits_for_the_store(exc) or self._stop.is_set():
                    raise
                self._busy.failed(exc)
                self._stop.wait(1.0)  # an answer that came at once (no database) does not spin

    def _embed_documents(self, texts: list[str], own: list[str]) -> tuple[Any, list[bytes] | None]:
        """The documents' vectors and (late interaction on) packed token vectors, computed on
        the low-priority model thread."""
        if self._compute is None:
            self._compute = ThreadPoolExecutor(
                1, thread_name_prefix="agentmemory-embed-model", initializer=lower_thread_priority
            )
        return self._compute.submit(self._compute_documents, texts, own).result()

    def _compute_documents(self, texts: list[str], own: list[str]) -> tuple[Any, list[bytes] | None]:
        assert self.embedder is not None
        vectors: Any = self.embedder.embed(texts) if texts else []
        if self.late is None or not own:
            return vectors, None
        try:
            return vectors, self.late.documents(own)
        except Unavailable as exc:  # a damaged model file: keep embedding, re-score nothing
            self.late, self.late_error = None, exc.message
            log.warning("late interaction off: %s", exc.message)
            return vectors, None

    def drain(self, max_batches: int | None = None) -> int:
        """Embed due backlog rows until none is left (or ``max_batches``); for tests and tools."""
        total, batches = 0, 0
        while max_batches is None or batches < max_batches:
            done = self.drain_once()
            if done == 0 and self.tokens_deferred:  # then the records left without token vectors
                self._reconcile_after_drain()
                continue
            if done == 0:
                break
            total, batches = total + done, batches + 1
        if self._index is not None and not self._threads:
            self.catch_up()
        return total

    def notify(self) -> None:
        self._wake.set()
