"""Lexical search on Tantivy: BM25 with block-max WAND, so a query made of words most records hold
costs milliseconds however big the store grows (SQLite FTS5 scores every matching row).

The index is derived data kept in a directory on the node (``<db>.tantivy`` beside a SQLite
file); the database stays the source of truth. Every change to a search row also appends its
rowid to the backend's outbox in the same transaction (feed.py). An applier (a thread in
whichever process of the node holds Tantivy's writer lock) feeds the outbox into the index and
commits about once a second, storing the last applied sequence number inside the commit itself
(a metadata document), then records it in the database, which prunes the outbox below what
every live node has committed. Other processes of the node only search: Tantivy reloads their
searcher a moment after each commit. So after a crash the index resumes from its last commit
and replays the rest; nothing is rebuilt at start-up in the normal case. Records not committed yet are scored by
``tantivy_tail.PendingIndex``, so a write is searchable as soon as it is acknowledged.

When the index is missing, unreadable, or older than the records (it was built while another
engine served writes), it is rebuilt in the background with progress in /health, and searches
are answered by the database's own full-text engine meanwhile (``search`` returns None). An idle
applier also checks now and then that the index holds exactly one document per active search
row; a difference (a lost segment, a bug) is repaired by a rebuild while the old index keeps
answering.

The index's fields, how a row becomes a document and how filters become queries are in
``tantivy_schema``; this module holds the engine's state and what it does with it. How a query is
answered (the committed index and the pending tail, merged) is ``tantivy_search``'s.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import tantivy

from agentmemory_server.errors import LastError, Unavailable
from agentmemory_server.storage.lexical.feed import LexicalFeed
from agentmemory_server.storage.lexical.tantivy_schema import (
    ANALYZER,
    META_ROWID,
    build_analyzer,
    build_schema,
    document,
    rowid_query,
)
from agentmemory_server.storage.lexical.tantivy_search import TantivySearching
from agentmemory_server.storage.lexical.tantivy_tail import (
    PendingIndex,
    column_repeats,
)

log = logging.getLogger("agentmemory.lexical")

COMMIT_SECONDS = 1.0
APPLY_BATCH = 5000
# A commit costs an fsync and a segment: catching up commits once a second, or at this many changes.
COMMIT_MAX_CHANGES = 100_000
# Once caught up, the applier also commits at this many changes: every search scores the
# uncommitted records (the pending tail) in Python, and under a steady write load a second's
# worth of them was a third of remember's CPU.
TAIL_COMMIT_CHANGES = 128
# Woken by a commit, the applier waits this long for more before applying: under a stream of
# writes it then applies them a few at a time instead of one by one (about 4% of an observe's
# CPU at 700/s). Searches do not wait for it: they score what is not committed yet themselves.
APPLY_GATHER_SECONDS = 0.005
# How often an idle applier compares the index with the search rows (the first check runs soon
# after start-up); diagnose's heal asks for one at once.
VERIFY_SECONDS = 600.0
FIRST_VERIFY_SECONDS = 30.0
# Applied outbox entries stay this long: searchers of this node in other processes reload the
# index a moment after a commit (Tantivy watches its meta file) and read the pending tail from
# the outbox until then.
KEEP_APPLIED_SECONDS = 30.0
# How long a searching-only process keeps one searcher (well inside KEEP_APPLIED_SECONDS).
VIEW_SECONDS = 0.25


class FeedSource(Protocol):
    """How the engine reaches its backend's change feed outside a request."""

    def reading(self) -> LexicalFeed:
        """A feed on a reader (each call may use another connection)."""
        ...

    def writing(self) -> AbstractContextManager[LexicalFeed]:
        """A feed inside a short write transaction (pruning the outbox)."""
        ...

    def snapshot(self) -> AbstractContextManager[LexicalFeed]:
        """A feed whose queries all see one state (comparing the index with the records)."""
        ...


class TantivyLexical(TantivySearching):
    """The Tantivy engine of one process.

    :param directory: this node's index (processes of one node share it; one of them applies).
    :param feeds: the backend's change feed.
    :param node: names this index among the nodes sharing the outbox (the outbox is pruned only
        below what every live node has committed).
    :param background: run the applier thread."""

    def __init__(
        self,
        directory: Path,
        feeds: FeedSource,
        *,
        weights: Mapping[str, float],
        stale: bool,
        background: bool,
        node: str = "local",
    ):
        self.dir = directory
        self._feeds = feeds
        self.node = node
        self.repeats = column_repeats(weights)  # {} (no weights given) repeats every column once
        self.schema = build_schema()
        self.analyzer = build_analyzer()
        self._lock = threading.RLock()  # the writer and the applier's state
        self._pending_lock = threading.Lock()
        self._writer: tantivy.IndexWriter | None = None
        self._applied = 0
        self._committed = 0
        self._uncommitted = 0
        self._last_commit = time.monotonic()
        self._avg: tuple[float, dict[str, float]] | None = None
        self.pending = PendingIndex(self.analyze, self.repeats)
        self.building: dict[str, int] | None = None
        self.last_error = LastError()
        self.verified: dict[str, Any] | None = None
        self.repairs = 0
        self._next_verify = time.monotonic() + FIRST_VERIFY_SECONDS
        self._wake, self._stop = threading.Event(), threading.Event()
        self._view: tuple[tantivy.Searcher, int | None] | None = None
        self._view_at = 0.0
        self.index = self._open(stale)
        # A store with no search rows yet needs no build: its outbox holds every change to come.
        self._fresh = self._read_meta(self.index.searcher()) is None and not self._has_docs()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="agentmemory-lexical", daemon=True)
            self._thread.start()

    # ---- opening -----------------------------------------------------------------------------------
    def _open(self, stale: bool) -> tantivy.Index:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            index = tantivy.Index(self.schema, path=str(self.dir), reuse=True)
        except (OSError, ValueError) as exc:  # unreadable or from another schema: start over
            log.error("the lexical index in %s cannot be opened (%s); rebuilding it", self.dir, exc)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
            index = tantivy.Index(self.schema, path=str(self.dir), reuse=False)
            stale = True
        index.register_tokenizer(ANALYZER, self.analyzer)
        index.reload()
        if stale:
            self._clear_meta(index)
        return index

    def _clear_meta(self, index: tantivy.Index) -> None:
        """Forget the applied sequence, so the index counts as not built until a rebuild ends."""
        writer = self._acquire_writer(index)
        if writer is not None:
            writer.delete_documents_by_query(self._rowid_query(META_ROWID))
            writer.commit()
            index.reload()
            self._view = None

    def _rowid_query(self, rowid: int) -> tantivy.Query:
        return rowid_query(self.schema, rowid)

    def analyze(self, text: str) -> list[str]:
        return self.analyzer.analyze(text) if text else []

    # ---- state -------------------------------------------------------------------------------------
    def _reload(self) -> None:
        self.index.reload()
        self._view = None

    def view(self) -> tuple[tantivy.Searcher, int | None]:
        """The current searcher and the outbox sequence its commit holds (``committed_seq``),
        read once per reload rather than by a metadata query on every search. A process that
        does not apply (another worker of the node) never reloads itself: Tantivy reloads its
        reader after another process's commit, so its view is read again every ``VIEW_SECONDS``."""
        view = self._view
        now = time.monotonic()
        if view is None or (self._writer is None and now - self._view_at >= VIEW_SECONDS):
            searcher = self.index.searcher()
            view = self._view = (searcher, self.committed_seq(searcher))
            self._view_at = now
        return view

    def committed_seq(self, searcher: tantivy.Searcher) -> int | None:
        """The outbox sequence the searcher's commit includes; None: the index is not built."""
        seq = self._read_meta(searcher)
        return 0 if seq is None and self._fresh else seq

    def _read_meta(self, searcher: tantivy.Searcher) -> int | None:
        found = searcher.search(tantivy.Query.term_query(self.schema, "rowid", META_ROWID), 1, count=False)
        if not found.hits:
            return None
        (value,) = searcher.fast_field_values("meta_seq", [found.hits[0][1]])
        return int(value) if isinstance(value, int) else 0

    def _has_docs(self) -> bool:
        return self._feeds.reading().has_docs()

    def health(self) -> dict[str, Any]:
        searcher, committed = self.view()
        newest = self._feeds.reading().newest_seq()
        state = "building" if self.building else "ready" if committed is not None else "not built"
        return {
            "engine": "tantivy",
            "node": self.node,
            "state": state,
            "documents": max(0, searcher.num_docs - 1),
            "committedSeq": committed,
            "pending": max(0, newest - (committed or 0)) if committed is not None else None,
            "applier": self._writer is not None,
            "rebuild": self.building,
            "verified": self.verified,
            "repairs": self.repairs,
            **self.last_error.fields(),
        }

    # ---- applying the outbox -----------------------------------------------------------------------
    def _acquire_writer(self, index: tantivy.Index | None = None) -> tantivy.IndexWriter | None:
        """This process's writer, or None while another process holds Tantivy's writer lock."""
        if self._writer is None:
            try:
                self._writer = (index or self.index).writer(heap_size=30_000_000, num_threads=1)
            except ValueError:  # LockBusy: another process applies the outbox
                return None
        return self._writer

    def _run(self) -> None:
        # Normal priority, unlike the other background threads: what the applier leaves undone,
        # every search pays for in the pending tail (at nice 10 on a busy machine it fell 800
        # records behind, at normal priority 200).
        while not self._stop.is_set():
            try:
                if not self.apply(commit_due=False):
                    self.verify()
                self.last_error.succeeded()
            except Unavailable as exc:  # a database outage: one line per attempt, not a traceback
                self.last_error.failed(f"{type(exc).__name__}: {exc}")
                log.warning("the lexical outbox waits for the database: %s", exc)
                self._stop.wait(5.0)
            except Exception as exc:  # noqa: BLE001 - the applier must survive anything; searches fall back
                self.last_error.failed(f"{type(exc).__name__}: {exc}")
                log.exception("applying the lexical outbox failed")
                self._stop.wait(5.0)
            if self._wake.wait(COMMIT_SECONDS / 2):
                self._stop.wait(APPLY_GATHER_SECONDS)
            self._wake.clear()

    def notify(self) -> None:
        self._wake.set()

    def apply(self, *, commit_due: bool, hold: bool = False) -> int:
        """Feed outbox entries into the index; commit when a second has passed (or ``commit_due``);
        ``hold``: only at COMMIT_MAX_CHANGES (a bulk import feeds each batch, then commits once).
        Returns how many entries were applied."""
        with self._lock:
            writer = self._acquire_writer()
            if writer is None:
                return 0
            feed = self._feeds.reading()
            if self._committed == 0 and self._applied == 0:
                self._resume()
            if self.building is not None or self._needs_rebuild(feed):
                self._rebuild(feed, writer)
            rows = feed.entries_after(self._applied, APPLY_BATCH)
            if rows:
                self._apply_rows(feed, writer, rows)
            caught_up = len(rows) < APPLY_BATCH
            due = self._uncommitted >= COMMIT_MAX_CHANGES or (
                not hold
                and (
                    time.monotonic() - self._last_commit >= COMMIT_SECONDS
                    or (caught_up and self._uncommitted >= TAIL_COMMIT_CHANGES)
                )
            )
            if self._uncommitted and (commit_due or due):
                self._commit(writer)
            return len(rows)

    def request_verify(self) -> None:
        """Check the index against the records on the applier's next idle moment."""
        self._next_verify = 0.0
        self._wake.set()

    def verify(self, *, force: bool = False) -> dict[str, Any] | None:
        """When due (or ``force``) and nothing is waiting to be applied, compare the index's
        document count with the active search rows in one consistent read; rebuild on a
        difference. Returns the comparison, or None when it did not run."""
        with self._lock:
            if not force and time.monotonic() < self._next_verify:
                return None
            writer = self._acquire_writer()
            if writer is None or self._uncommitted or self.building is not None:
                return None
            with self._feeds.snapshot() as snapshot:
                newest, records = snapshot.newest_seq(), snapshot.active_count()
            if newest > self._committed:
                return None  # writes arrived since; the next idle moment compares
            self._next_verify = time.monotonic() + VERIFY_SECONDS
            self._reload()
            documents = max(0, self.view()[0].num_docs - 1)
            self.verified = {
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "documents": documents,
                "records": records,
                "ok": documents == records,
            }
            if documents != records:
                self.repairs += 1
                log.warning("the lexical index holds %d documents for %d records; rebuilding it", documents, records)
                self._rebuild(self._feeds.reading(), writer)
            return self.verified

    def flush(self, *, commit: bool = True) -> None:
        """Apply the whole outbox and commit now (admin commands, shutdown, tests). ``commit``
        False: hand Tantivy the outbox without committing (a bulk import after each batch: its
        indexing threads work while the next batch is written; a crash replays the outbox)."""
        while self.apply(commit_due=False, hold=not commit):
            pass
        if commit:
            self.apply(commit_due=True)

    def _resume(self) -> None:
        seq = self.committed_seq(self.index.searcher())
        if seq is not None:
            self._applied = self._committed = seq

    def _needs_rebuild(self, feed: LexicalFeed) -> bool:
        committed = self._read_meta(self.index.searcher())
        if committed is not None:
            # Entries this index never applied were pruned (this node was away longer than the
            # other nodes keep the outbox for it): only a rebuild brings it back.
            return feed.pruned_through() > self._applied
        if self._fresh:  # commit the (empty) state now so other processes see a built index
            self._uncommitted = max(self._uncommitted, 1)
            return False
        return True

    def _apply_rows(self, feed: LexicalFeed, writer: tantivy.IndexWriter, rows: list[tuple[int, int]]) -> None:
        changed: dict[int, int] = {}
        for seq, rowid in rows:
            if rowid < 0:  # everything before this entry was wiped
                self._apply_changed(feed, writer, changed)
                changed = {}
                writer.delete_all_documents()
            else:
                changed[rowid] = seq
        self._apply_changed(feed, writer, changed)
        self._applied = rows[-1][0]
        self._uncommitted += len(rows)

    def _apply_changed(self, feed: LexicalFeed, writer: tantivy.IndexWriter, changed: dict[int, int]) -> None:
        rowids = list(changed)
        for start in range(0, len(rowids), 500):
            chunk = rowids[start : start + 500]
            rows = {r[0]: r for r in feed.documents(chunk)}
            for rowid in chunk:
                writer.delete_documents_by_query(self._rowid_query(rowid))
                row = rows.get(rowid)
                if row is not None and row[7]:  # stored and active
                    writer.add_document(document(row, self.repeats))

    def _commit(self, writer: tantivy.IndexWriter) -> None:
        writer.delete_documents_by_query(self._rowid_query(META_ROWID))
        meta = tantivy.Document()
        meta.add_unsigned("rowid", META_ROWID)
        meta.add_unsigned("meta_seq", self._applied)
        writer.add_document(meta)
        writer.commit()
        self._reload()
        self._committed, self._uncommitted, self._last_commit = self._applied, 0, time.monotonic()
        with self._feeds.writing() as feed:
            feed.applied(self.node, self._committed, time.time(), keep_seconds=KEEP_APPLIED_SECONDS)

    def _rebuild(self, feed: LexicalFeed, writer: tantivy.IndexWriter) -> None:
        """Index every active record again, in rowid order, then resume from the outbox."""
        start_seq = feed.newest_seq()
        with self._feeds.writing() as claim:  # other nodes keep the outbox after start_seq for us
            claim.applied(self.node, start_seq, time.time(), keep_seconds=KEEP_APPLIED_SECONDS)
        total = feed.active_count()
        self.building = {"done": 0, "total": total}
        log.warning(
            "building the lexical index of %d records in %s (the database's own full text answers meanwhile: "
            "FTS5 on SQLite, PostgreSQL's on PostgreSQL)",
            total,
            self.dir,
        )
        writer.delete_all_documents()
        after = 0
        while rows := feed.documents_after(after, APPLY_BATCH):
            for row in rows:
                writer.add_document(document(row, self.repeats))
            after = rows[-1][0]
            self.building["done"] += len(rows)
            if self._stop.is_set():
                return  # resumed (from scratch) by the next process
        self._applied = start_seq
        self._uncommitted = max(self._uncommitted, 1)
        self._commit(writer)
        self.building, self._fresh = None, False
        log.warning("the lexical index is built (%d records)", total)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self._writer is not None:
                try:
                    if self._uncommitted and self.building is None:
                        self._commit(self._writer)
                    self._writer.wait_merging_threads()
                except Unavailable as exc:  # the database is gone; the outbox replays these changes
                    log.warning("closing the lexical index without its last commit: %s", exc)
                except Exception:  # noqa: BLE001 - closing: the outbox replays what was not committed
                    log.exception("closing the lexical index")
                self._writer = None
