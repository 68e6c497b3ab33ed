"""SQLite storage: the file's facts (sizes, derived indexes' health) and its lifecycle (flush,
checkpoint, bulk load, close).

A mixin of ``database.Database``, apart from it so that module keeps to opening the file,
handing out units of work and the write path. It holds no state of its own: the attributes
below are the database's, set in ``Database.__init__``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentmemory_server.storage.lexical.tantivy_index import TantivyLexical
from agentmemory_server.storage.sqlite.checkpoint import SAFETY_NET_PAGES, WalCheckpointer, final_checkpoint
from agentmemory_server.storage.sqlite.live import PollSignal
from agentmemory_server.storage.sqlite.vector_index import SqliteVectorIndex
from agentmemory_server.storage.sqlite.write_gate import ProcessWriteGate

log = logging.getLogger("agentmemory.storage")


class FileLifecycle:
    """The part of ``Database`` that reports on the file and closes it."""

    path: Path
    lexical: TantivyLexical | None
    checkpointer: WalCheckpointer | None
    last_write: float
    _lock: threading.RLock
    _writer: sqlite3.Connection
    _gate: ProcessWriteGate
    _closed: bool
    _readers: list[sqlite3.Connection]
    _readers_lock: threading.Lock
    _vector_indexes: dict[tuple[str, int], SqliteVectorIndex]
    _vector_indexes_lock: threading.Lock
    _retry_stop: threading.Event

    def file_sizes(self) -> dict[str, int]:
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            sizes["db" if not suffix else suffix[1:]] = p.stat().st_size if p.exists() else 0
        return sizes

    def health(self) -> dict[str, Any]:
        """The state of the storage's derived indexes (for /health)."""
        lexical = self.lexical.health() if self.lexical is not None else {"engine": "fts5", "state": "ready"}
        if self.checkpointer is None:
            return {"lexical": lexical}
        section: dict[str, Any] = {"lexical": lexical, "walCheckpoints": self.checkpointer.health()}
        if self.checkpointer.failing:  # /status alerts on it; the WAL grows meanwhile
            section |= {"status": "degraded", "error": f"WAL checkpoints fail: {section['walCheckpoints']['error']}"}
        return section

    def event_signal(self) -> PollSignal:
        return PollSignal()

    def verify_index(self) -> None:
        """Ask the derived indexes to check themselves against the records soon (and repair)."""
        if self.lexical is not None:
            self.lexical.request_verify()

    def flush(self, *, commit: bool = True) -> None:
        """Bring derived indexes up to date with the records now (admin commands, benchmarks);
        ``commit`` False: without making that durable yet (see ``Database.flush``)."""
        if self.lexical is not None:
            self.lexical.flush(commit=commit)

    def checkpoint(self) -> None:
        with self._lock:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """While a bulk import runs, commits copy the WAL into the file only every
        SAFETY_NET_PAGES (as a server's do) rather than at SQLite's default of ~1,000 pages,
        which a batch of 5,000 records passes each time: the index pages every batch changes
        were copied once a batch. Commits stay exactly as durable."""
        with self._lock:
            before = self._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            if 0 < before < SAFETY_NET_PAGES:
                self._writer.execute(f"PRAGMA wal_autocheckpoint = {SAFETY_NET_PAGES}")
        try:
            yield
        finally:
            with self._lock:
                self._writer.execute(f"PRAGMA wal_autocheckpoint = {before}")

    def drop_connections_if_unreachable(self) -> bool:
        return False  # a local file: nothing waits on a server that may be gone

    def close(self) -> None:
        self._retry_stop.set()
        with self._vector_indexes_lock:
            indexes, self._vector_indexes = list(self._vector_indexes.values()), {}
        if not self._closed:
            for index in indexes:  # saved while the database is still open (log pruning)
                index.close()
        if self.lexical is not None and not self._closed:
            self.lexical.close()  # its last commit needs the database still open
        if self.checkpointer is not None:
            self.checkpointer.stop()  # before the final checkpoint, which empties the WAL
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                for conn in self._readers:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
                self._readers.clear()
            try:
                self._writer.execute("PRAGMA optimize")
                if self.last_write:
                    final_checkpoint(self._writer, self.path)
                else:  # wrote nothing: never wait for another process's writer (a long replace import)
                    self._writer.execute("PRAGMA busy_timeout = 0")
                    self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("closing %s: the WAL could not be checkpointed: %s", self.path, exc)
            self._gate.close()
            try:
                self._writer.close()
            except sqlite3.Error:
                pass
