"""The persistent nearest-neighbour index beside a SQLite database, kept in step with
``search_vectors`` through the ``vector_log`` sequence.

Every change to ``search_vectors`` (insert, update, delete, also by cascade) appends its rowid to
``vector_log`` (triggers, migration 7); ``seq`` only grows and commits in order, because SQLite
has one writer at a time. The index remembers the last ``seq`` it applied. ``refresh`` reads the
log past it and applies the rows' current state (a vector of this model: add or replace; anything
else: drop), so any process - the server, whichever process wrote the vectors - catches up by
itself, and a crash loses nothing: the files on disk name the ``seq`` they hold, and start-up
replays the log from there. A missing, unreadable or foreign file (another model, a database
restored from an older backup, a log pruned past it) is rebuilt from ``search_vectors`` by
``refresh`` in bounded steps (searches answer from what is built so far; ``status`` shows the
progress). Saving writes new files and then switches ``state-*.json`` with an atomic rename.

The saved files are opened mapped (``ann.AnnIndex.load``): ~50 ms at 1M, shared by every process
that serves them; rows applied since sit in the process's own small graph until a save (by any
process: the others adopt it) folds them in.

Searches re-score the index's candidates against the float32 vectors in SQLite, so scores are
exact and rows deleted since the last ``refresh`` never come back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from agentmemory_server.errors import AppError, LastError
from agentmemory_server.storage.file_locks import try_lock
from agentmemory_server.storage.sqlite.ann import ENGINE, EXACT_LIMIT, AnnIndex, dot_rows
from agentmemory_server.storage.sqlite.faults import FreeSpace, classify_os_error

log = logging.getLogger("agentmemory.vectors")
APPLY_CHUNK = 16  # rows added under the write lock at once: searches wait at most this long
KEEP_LOG = 50_000  # log rows kept behind the saved index, for other processes still catching up
REBUILD_DEAD_RATIO = 0.3  # rebuild when this share of the graph is deleted or replaced rows
REBUILD_MIN_VECTORS = 10_000  # (below that, dead slots cost next to nothing)


class RWLock:
    """Many readers or one writer; a waiting writer stops new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _meta(row: tuple) -> dict[str, Any]:
    kind, project, agent, session, is_global = row
    return {"kind": kind, "project": project, "agent": agent, "session": session, "global": bool(is_global)}


class SqliteVectorIndex:
    """The index of one model's vectors. ``connect`` gives this thread's read connection and
    ``write`` runs a statement in a short write transaction (log pruning)."""

    def __init__(
        self,
        db_path: Path,
        model: str,
        dim: int,
        *,
        connect: Callable[[], sqlite3.Connection],
        write: Callable[[str, tuple], None],
        space: FreeSpace | None = None,
    ):
        self.model, self.dim = model, dim
        self.dir = Path(str(db_path) + ".vectors")
        self.name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{dim}")
        self._connect, self._write, self._space = connect, write, space
        self._rw = RWLock()
        self._refresh_lock = threading.Lock()  # one refresher (and saver) at a time
        self.ann = AnnIndex(dim)
        self._next: AnnIndex | None = None  # a rebuild in progress beside the serving index
        self.seq = 0
        self.dirty = 0
        self.saved: dict[str, Any] = {}
        self.repair: dict[str, Any] | None = None
        self.last_error = LastError()
        self._state_seen: tuple[int, int] | None = None  # the state file's (mtime, size) last read
        self._build_lock: int | None = None  # held while this process builds the index for all
        started = time.perf_counter()
        self._open()
        self.load_seconds = round(time.perf_counter() - started, 3)

    # ---- files -------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.dir / f"state-{self.name}.json"

    def _open(self) -> None:
        """Open the saved index (mapped), or start rebuilding it. The state file is read here, when
        the index loads: a later save by another process may have replaced the one seen earlier,
        and one that does so while the files are read (removing the older ones) is followed."""
        problem = None
        for _attempt in range(3):
            try:
                state = json.loads(self.state_path.read_text())
            except (OSError, ValueError):
                self._start_repair("no saved index" if not self.state_path.exists() else "unreadable state file")
                return
            problem = self._check(state)
            if problem is not None:
                break
            try:
                loaded = AnnIndex.load(self.dir, state["stem"], self.dim)
            except Exception as exc:  # noqa: BLE001 - any damage means rebuild
                problem = f"unreadable index file: {type(exc).__name__}: {exc}"[:300]
                if self._saved_stem() != state["stem"]:
                    continue  # saved again meanwhile: open the newer copy
                break
            with self._rw.write():  # searches meanwhile used the empty index, as in a rebuild
                self.ann = loaded
            self.seq, self.saved = int(state["seq"]), state
            return
        log.warning("vector index %s: %s; rebuilding it in the background", self.name, problem)
        self._start_repair(str(problem))

    def _saved_stem(self) -> str | None:
        try:
            return str(json.loads(self.state_path.read_text()).get("stem"))
        except (OSError, ValueError, AttributeError):
            return None

    def _adopt_newer_save(self) -> int:
        """Another process saved the index since this one opened or saved it: open that copy
        (mapped, so its pages are shared), bring it up to this index's ``seq`` from the log, and
        serve it instead of the rows this process holds in its own memory. Also spares this
        process a save of its own, and when both started without a usable saved index, the rest of
        its own rebuild (not when asked to rebuild, nor while a rebuild goes on beside the index).
        Returns how far that moved this index along the log (0 when there is nothing newer: one
        ``stat`` a call)."""
        try:
            seen = self.state_path.stat()
        except OSError:
            return 0
        if (seen.st_mtime_ns, seen.st_size) == self._state_seen or not (self.repair or {}).get("adoptable", True):
            return 0
        self._state_seen = (seen.st_mtime_ns, seen.st_size)
        try:
            state = json.loads(self.state_path.read_text())
            # Another save, as far along or further: also one of the same name (two processes that
            # built the index at once save the same ``seq``; each serves its own file until then).
            newer = state != self.saved and int(state["seq"]) >= int(self.saved.get("seq", -1))
            if not newer or self._check(state) is not None:
                return 0
            loaded = AnnIndex.load(self.dir, state["stem"], self.dim)
        except Exception as exc:  # noqa: BLE001 - keep serving this process's copy; it is right
            log.info("vector index %s: not adopting another process's save: %s", self.name, exc)
            return 0
        seq = int(state["seq"])
        while seq < self.seq and (rows := self._changes(seq, 5000, upto=self.seq)):
            seq = self._apply_changes(rows, loaded)  # what this index applied past that save
        with self._rw.write():
            self.ann = loaded
        if self.repair is not None:  # another process built it first: its copy is complete
            log.info("vector index %s: serving the copy another process built and saved", self.name)
            self.repair = None
            self._release_build()
        moved = max(0, seq - self.seq)
        self.saved, self.dirty, self.seq = state, max(0, self.seq - int(state["seq"])), max(self.seq, seq)
        return moved

    def _check(self, state: Mapping[str, Any]) -> str | None:
        if (state.get("engine"), state.get("model"), state.get("dim")) != (ENGINE, self.model, self.dim):
            return "the saved index is of another engine, model or dimension"
        first, last = self._log_bounds()
        seq = int(state.get("seq", -1))
        if seq > last:
            return f"the saved index is ahead of the database (seq {seq} > {last}): an older copy was restored"
        if first is not None and first > seq + 1:
            return f"the change log was pruned past the saved index (seq {seq}, log starts at {first})"
        return None

    def _log_bounds(self) -> tuple[int | None, int]:
        first, last = self._connect().execute("SELECT min(seq), max(seq) FROM vector_log").fetchone()
        if last is None:  # empty log: the next seq continues after sqlite_sequence's
            row = self._connect().execute("SELECT seq FROM sqlite_sequence WHERE name = 'vector_log'").fetchone()
            last = row[0] if row else 0
        return first, int(last)

    def save(self) -> bool:
        """Write the index if it changed since the last save; True when it did."""
        with self._refresh_lock:
            if self.dirty == 0 or self.repair is not None:
                return False
            self.dir.mkdir(parents=True, exist_ok=True)
            stem, seq = f"{self.name}.{self.seq}", self.seq
            if self._space is not None:  # the new copy is written before the old one goes
                self._space.check_room(self._save_size(), "the vector index")
            partial = self.state_path.with_suffix(f".{os.getpid()}.partial")
            try:
                with self._rw.read():  # searches go on; nothing changes (we hold the refresh lock)
                    self.ann.save(self.dir, stem)
                    vectors = len(self.ann)
                state = {
                    "engine": ENGINE,
                    "model": self.model,
                    "dim": self.dim,
                    "seq": seq,
                    "stem": stem,
                    "vectors": vectors,
                    "savedAt": time.time(),
                }
                partial.write_text(json.dumps(state))
                os.replace(partial, self.state_path)
            except (OSError, RuntimeError) as exc:  # ENOSPC, EROFS: no half-written copy stays behind
                half_written = self.dir.glob(f"{stem}.*") if stem != self.saved.get("stem") else ()
                for path in (*half_written, partial):
                    path.unlink(missing_ok=True)
                raise classify_os_error(exc, self.state_path) or exc from exc
            old, self.saved, self.dirty = self.saved.get("stem"), state, 0
            self._state_seen = None
            self._reopen_mapped(stem)
        if old and old != stem:
            for path in self.dir.glob(f"{old}.*"):
                path.unlink(missing_ok=True)
        _first, last = self._log_bounds()
        self._write("DELETE FROM vector_log WHERE seq <= ?", (min(seq, last - KEEP_LOG),))
        return True

    def _reopen_mapped(self, stem: str) -> None:
        """Serve the copy just written, mapped: the rows this process held in its own memory
        (a delta, or a whole graph after a rebuild) are then pages shared with other processes."""
        try:
            loaded = AnnIndex.load(self.dir, stem, self.dim)
        except Exception:  # noqa: BLE001 - the index in memory is still right
            log.exception("vector index %s: reopening the saved copy failed; serving the one in memory", self.name)
            return
        with self._rw.write():
            self.ann = loaded

    def _save_size(self) -> int:
        """Bytes the next save may take: the last saved copy's size, or an estimate (vectors,
        graph links and slot rows)."""
        stem = self.saved.get("stem")
        saved = sum(p.stat().st_size for p in self.dir.glob(f"{stem}.*")) if stem else 0
        return max(saved, len(self.ann) * (self.dim * 4 + 320))

    # ---- keeping up with the database ------------------------------------------------------------
    def rebuild(self, reason: str) -> None:
        """Build the index again from the stored vectors, whatever other processes save meanwhile."""
        with self._refresh_lock:
            self._start_repair(reason)
            assert self.repair is not None
            self.repair["adoptable"] = False

    def _may_build(self) -> bool:
        """Whether this process takes the next rebuild step. A build from scratch that another
        process's save could replace is done by one process at a time (an ``flock`` on
        ``build-<name>.lock``, released when the build is done, or the process closes or dies);
        the others wait for its save and serve that (``_adopt_newer_save``): at 1M the build
        takes minutes of a core."""
        assert self.repair is not None
        if self._build_lock is not None or not self.repair.get("adoptable"):
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self.dir / f"build-{self.name}.lock")
        self.repair["waiting"] = fd is None
        if fd is None:
            return False
        self._build_lock = fd
        return True

    def _release_build(self) -> None:
        if self._build_lock is not None:
            os.close(self._build_lock)  # (closing the descriptor releases the flock)
            self._build_lock = None

    def _start_repair(self, reason: str, *, aside: bool = False) -> None:
        """Rebuild from the stored vectors. ``aside``: the current index is still right (it only
        carries dead slots), so it keeps serving and following the log while the new one is
        built next to it (for a while both are in memory); otherwise searches use what is built
        so far."""
        self._next = AnnIndex(self.dim) if aside else None
        if not aside:
            self.ann = AnnIndex(self.dim)
        self.repair = {"reason": reason, "done": 0, "total": None, "cursor": 0, "fromSeq": None, "adoptable": not aside}

    def refresh(self, budget: int = 2000) -> int:
        """Apply up to ``budget`` changes (or rebuild steps); returns how many it applied."""
        with self._refresh_lock:
            try:
                applied = self._adopt_newer_save()
                if self.repair is not None:
                    if not self._may_build():
                        return applied
                    applied += self._repair_step(budget)
                    if self.repair is not None and self._next is None:
                        return applied
                applied += self._catch_up(budget)
                if (
                    applied == 0
                    and self.repair is None
                    and len(self.ann) > REBUILD_MIN_VECTORS
                    and self.ann.dead_ratio() > REBUILD_DEAD_RATIO
                ):
                    self._start_repair(f"{self.ann.dead_ratio():.0%} of the graph is deleted rows", aside=True)
                self.last_error.succeeded()
                return applied
            except sqlite3.Error as exc:
                self.last_error.failed(f"{type(exc).__name__}: {exc}")
                return 0

    def _catch_up(self, budget: int) -> int:
        rows = self._changes(self.seq, budget)
        if not rows:
            return 0
        if rows[0][0] != self.seq + 1 and self._log_bounds()[0] not in (None, self.seq + 1):
            self._start_repair(f"the change log was pruned past this index (seq {self.seq})")
            return 0
        self.seq = self._apply_changes(rows)
        self.dirty += len(rows)
        return len(rows)

    def _changes(self, since: int, budget: int, upto: int | None = None) -> list[tuple]:
        """Log entries past ``since`` (up to ``upto``), each with its row's current state."""
        return (
            self._connect()
            .execute(
                "SELECT l.seq, l.doc_rowid, v.model, v.dim, v.vector, d.kind, d.project, d.agent_id, d.session_id, "
                "d.global FROM vector_log l LEFT JOIN search_vectors v ON v.doc_rowid = l.doc_rowid "
                "LEFT JOIN search_docs d ON d.id = l.doc_rowid WHERE l.seq > ? AND l.seq <= ? ORDER BY l.seq LIMIT ?",
                (since, upto if upto is not None else 2**62, budget),
            )
            .fetchall()
        )

    def _apply_changes(self, rows: list[tuple], target: AnnIndex | None = None) -> int:
        """Apply log entries (``_changes``) to the serving index (or ``target``, not serving
        yet: no lock needed); returns the last ``seq`` applied."""
        latest = {row[1]: row for row in rows}  # the join shows each row's current state
        keep = [r for r in latest.values() if r[2] == self.model and r[3] == self.dim and r[5] is not None]
        gone = [rowid for rowid, r in latest.items() if not (r[2] == self.model and r[3] == self.dim and r[5])]
        if target is not None:
            target.remove(gone)
        else:
            with self._rw.write():
                self.ann.remove(gone)
        self._apply(keep, target)
        return int(rows[-1][0])

    def _apply(self, rows: list[tuple], target: AnnIndex | None = None) -> None:
        """Add rows shaped (seq, rowid, model, dim, vector, kind, project, agent, session, global)
        to the serving index (or to ``target``, an index being built aside: no lock needed)."""
        for start in range(0, len(rows), APPLY_CHUNK):
            part = rows[start : start + APPLY_CHUNK]
            vectors = np.vstack([np.frombuffer(r[4], dtype="<f4") for r in part])
            args = ([r[1] for r in part], vectors, [_meta(r[5:10]) for r in part])
            if target is not None:
                target.upsert(*args)
                continue
            with self._rw.write():
                self.ann.upsert(*args)

    def _repair_step(self, budget: int) -> int:
        assert self.repair is not None
        conn = self._connect()
        if self.repair["fromSeq"] is None:  # note where the log is before reading the table
            self.repair["fromSeq"] = self._log_bounds()[1]
            self.repair["total"] = conn.execute(
                "SELECT count(*) FROM search_vectors WHERE model = ? AND dim = ?", (self.model, self.dim)
            ).fetchone()[0]
        rows = conn.execute(
            "SELECT 0, v.doc_rowid, v.model, v.dim, v.vector, d.kind, d.project, d.agent_id, d.session_id, d.global "
            "FROM search_vectors v JOIN search_docs d ON d.id = v.doc_rowid WHERE v.model = ? AND v.dim = ? "
            "AND v.doc_rowid > ? ORDER BY v.doc_rowid LIMIT ?",
            (self.model, self.dim, self.repair["cursor"], budget),
        ).fetchall()
        self._apply(rows, self._next)
        self.repair["done"] += len(rows)
        if rows:
            self.repair["cursor"] = rows[-1][1]
        if len(rows) < budget:  # done: changes made meanwhile come from the log, re-applied
            if self._next is not None:
                with self._rw.write():
                    self.ann, self._next = self._next, None
            self.seq, self.dirty = int(self.repair["fromSeq"]), self.dirty + len(rows) + 1
            log.info("vector index %s rebuilt: %d vectors", self.name, len(self.ann))
            self.repair = None
            self._release_build()  # a process waiting meanwhile adopts the save that follows
        return len(rows)

    def lag(self) -> int:
        """Log entries not applied yet."""
        return max(0, self._log_bounds()[1] - self.seq)

    # ---- queries ---------------------------------------------------------------------------------
    def search(
        self, conn: sqlite3.Connection, query: np.ndarray, k: int, filters: Mapping[str, Any]
    ) -> list[tuple[int, float]]:
        """The ``k`` best (rowid, cosine) passing the filters, re-scored exactly on ``conn``."""
        want = k + max(10, k // 4)  # a margin for the 8-bit ordering, re-scored exactly below
        with self._rw.read():
            rowids = self.ann.candidates(query, want, dict(filters))
        if not rowids:
            return []
        found: list[tuple[int, bytes]] = []
        for start in range(0, len(rowids), 500):
            part = rowids[start : start + 500]
            found += conn.execute(
                f"SELECT doc_rowid, vector FROM search_vectors WHERE model = ? AND dim = ? AND doc_rowid IN "
                f"({','.join('?' * len(part))})",
                (self.model, self.dim, *part),
            ).fetchall()
        if not found:
            return []
        matrix = np.vstack([np.frombuffer(blob, dtype="<f4") for _rowid, blob in found])
        scores = dot_rows(matrix, np.asarray(query, dtype=np.float32))
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(found[i][0]), float(scores[i])) for i in order]

    def __len__(self) -> int:
        return len(self.ann)

    def status(self) -> dict[str, Any]:
        repair = None
        if self.repair is not None:
            repair = {k: self.repair[k] for k in ("reason", "done", "total")}
            repair["waitingForAnotherProcess"] = bool(self.repair.get("waiting"))
        return {
            "engine": ENGINE,
            "vectors": len(self.ann),
            "graphSlots": self.ann.total,
            "mapped": self.ann.mapped,
            "privateSlots": self.ann.private_slots(),
            "exactBelow": EXACT_LIMIT,
            "seq": self.seq,
            "unsaved": self.dirty,
            "savedSeq": self.saved.get("seq"),
            "savedAt": self.saved.get("savedAt"),
            "loadSeconds": self.load_seconds,
            "repair": repair,
            **self.last_error.fields(),
            "file": str(self.dir),
        }

    def close(self) -> None:
        self._release_build()
        try:
            self.save()
        except AppError as exc:  # a full or read-only disk: one line, the log replays at start-up
            log.warning("not saving the vector index %s: %s (replayed at start-up)", self.name, exc.message)
        except (OSError, sqlite3.Error, RuntimeError):
            log.exception("saving the vector index %s failed (it is rebuilt or replayed at start-up)", self.name)
