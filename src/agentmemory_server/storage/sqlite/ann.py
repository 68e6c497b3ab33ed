"""An approximate nearest-neighbour index of unit vectors keyed by search rowid, with the
metadata the vector search filters on.

faiss (``IndexHNSWSQ``): an HNSW graph over 8-bit scalar-quantised vectors, a quarter of float32's
memory (about 550 bytes a vector with its graph: 1M x 384 in ~550 MB). The codes use one fixed
range for every component (unit vectors of 384+ values stay well inside +-0.5), so nothing needs
training and small indexes work from the first vector. The index only proposes candidates; the
caller re-scores them against the float32 vectors it stores (``vector_index.py``), so scores are
exact.

A saved index is opened mapped (``load``): faiss reads the graph and the codes in place from the
file, so the page cache holds them once for every process that opens it (each request process of a
server, the CLI) instead of each process copying ~550 MB at 1M, and opening takes milliseconds. A
mapped graph cannot grow: rows added after opening go to a small graph of their own, the
``delta``, whose slots follow the mapped ones; a search walks both. ``save`` writes one graph
again (the mapped one read into memory for the moment, the delta's rows added to it); the file
stays open while it is mapped, so that works even after another process's save removed it.

Slots are faiss's sequential ids (the delta's follow the mapped graph's). A deleted or replaced
row's slot stays in the graph, marked dead, and every search skips it (``IDSelectorBitmap``);
``dead_ratio`` tells the owner when a rebuild pays. Filters (kinds, project with its global
rows, agent, sessions) are exact: per-slot codes in numpy arrays make a mask. When the mask (or
the whole index) keeps at most ``EXACT_LIMIT`` rows, their codes are scanned exactly in numpy (a
graph walk that throws away most of what it meets is slow and misses); otherwise the graph is
walked with the mask as its filter, its breadth raised as the filter gets more selective. Not
thread-safe by itself: ``vector_index.py`` holds a read/write lock.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

EXACT_LIMIT = 10_000  # rows: an exact scan of this many codes takes ~2-3 ms here
# Beside a mapped graph, the delta's rows are scanned up to this many (~0.5 ms), walked beyond:
# a search pays for the delta on top of the mapped graph's walk.
DELTA_SCAN_LIMIT = 2_000
M = 16  # graph degree (32 links a vector on the base layer)
EF_CONSTRUCTION = 64
EF_SEARCH = 128  # the walk's beam breadth up to EF_GROWS_AFTER vectors
# A fixed beam finds fewer of the true neighbours as the graph grows: beyond this many vectors the
# beam widens in proportion (640 at 1M: recall@10 0.50 -> ~0.85 on bench/vector_search.py's
# clustered vectors, for about 1.5 ms more CPU a search).
EF_GROWS_AFTER = 200_000
MAX_EF_SEARCH = 2048
RANGE = (-0.5, 1.0)  # quantiser: components in [vmin, vmin + vdiff]
FIELDS = ("kind", "project", "agent", "session")
ALIVE, GLOBAL = 1, 2
ENGINE = "faiss-hnsw-sq8"


class Codes:
    """Interned strings -> small ints (0 = None), so filters are vectorised comparisons."""

    def __init__(self, values: list[str | None] | None = None) -> None:
        self.values: list[str | None] = values or [None]
        self._codes = {v: i for i, v in enumerate(self.values)}

    def code(self, value: str | None) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self.values)
            self.values.append(value)
        return code

    def find(self, value: str | None) -> int:
        return self._codes.get(value, -1)


def _new_graph(dim: int) -> Any:
    faiss = _faiss()

    graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit_uniform, M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = EF_CONSTRUCTION
    storage = faiss.downcast_index(graph.storage)
    faiss.copy_array_to_vector(np.array(RANGE, dtype=np.float32), storage.sq.trained)
    storage.is_trained = graph.is_trained = True
    return graph


class AnnIndex:
    """The graph, per-slot metadata and the rowid <-> slot maps."""

    def __init__(
        self,
        dim: int,
        graph: Any = None,
        arrays: dict[str, np.ndarray] | None = None,
        codes: dict[str, Codes] | None = None,
    ):
        faiss = _faiss()

        faiss.omp_set_num_threads(1)  # searches run on request threads; one core each
        self.dim = dim
        self.graph = graph if graph is not None else _new_graph(dim)
        self.file: int | None = None  # a descriptor of the file ``graph`` is mapped from (it cannot grow then)
        self.delta: Any = None  # rows added to a mapped graph
        self.codes = codes or {name: Codes() for name in FIELDS}
        self.slots = arrays or _empty_slot_arrays(1024)
        self.alive = int(np.count_nonzero(self.slots["flags"][: self.total] & ALIVE))
        self.slot_of = np.full(1024, -1, np.int64)
        live = np.flatnonzero(self.slots["flags"][: self.total] & ALIVE)
        if len(live):
            rowids = self.slots["rowid"][live]
            self._grow_rowids(int(rowids.max()))
            self.slot_of[rowids] = live

    @property
    def total(self) -> int:
        """Slots in the graph, dead ones included."""
        return int(self.graph.ntotal) + (int(self.delta.ntotal) if self.delta is not None else 0)

    def __del__(self) -> None:
        if getattr(self, "file", None) is not None:
            os.close(self.file)  # type: ignore[arg-type]

    @property
    def mapped(self) -> bool:
        return self.file is not None

    def private_slots(self) -> int:
        """Slots this process holds in its own memory (all of them when nothing is mapped)."""
        return self.total - int(self.graph.ntotal) if self.mapped else self.total

    def _parts(self) -> list[tuple[Any, int]]:
        """(graph, its first slot) for the graphs holding slots."""
        parts = [(self.graph, 0)]
        if self.delta is not None:
            parts.append((self.delta, int(self.graph.ntotal)))
        return [(graph, first) for graph, first in parts if graph.ntotal]

    def __len__(self) -> int:
        return self.alive

    def dead_ratio(self) -> float:
        return 0.0 if self.total == 0 else 1 - self.alive / self.total

    # ---- changes
    def _grow_rowids(self, rowid: int) -> None:
        if rowid >= len(self.slot_of):
            bigger = np.full(max(rowid + 1, len(self.slot_of) + len(self.slot_of) // 4), -1, np.int64)
            bigger[: len(self.slot_of)] = self.slot_of
            self.slot_of = bigger

    def _grow_slots(self, needed: int) -> None:
        size = len(self.slots["flags"])
        if needed > size:
            bigger = _empty_slot_arrays(max(needed, size + size // 4))
            for name, array in self.slots.items():
                bigger[name][:size] = array
            self.slots = bigger

    def upsert(self, rowids: list[int], vectors: np.ndarray, metas: list[dict[str, Any]]) -> None:
        """Add or replace rows; ``metas`` hold kind, project, agent, session, global."""
        if not rowids:
            return
        self.remove(rowids)
        first = self.total
        if self.mapped and self.delta is None:
            self.delta = _new_graph(self.dim)
        # Never add to a mapped graph: faiss aborts the whole process on that.
        (self.delta if self.mapped else self.graph).add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._grow_slots(self.total)
        self._grow_rowids(max(rowids))
        for offset, (rowid, meta) in enumerate(zip(rowids, metas, strict=True)):
            slot = first + offset
            for name in FIELDS:
                self.slots[name][slot] = self.codes[name].code(meta.get(name))
            self.slots["flags"][slot] = ALIVE | (GLOBAL if meta.get("global") else 0)
            self.slots["rowid"][slot] = rowid
            self.slot_of[rowid] = slot
        self.alive += len(rowids)

    def remove(self, rowids: list[int]) -> int:
        ids = np.asarray([r for r in rowids if r < len(self.slot_of)], dtype=np.int64)
        slots = self.slot_of[ids] if len(ids) else ids
        slots = slots[slots >= 0]
        if len(slots):
            self.slots["flags"][slots] = 0
            self.slot_of[self.slots["rowid"][slots]] = -1
            self.alive -= len(slots)
        return len(slots)

    def rowids(self) -> np.ndarray:
        return np.flatnonzero(self.slot_of >= 0)

    def vectors_of(self, slots: np.ndarray) -> np.ndarray:
        """Decoded float32 vectors of ``slots`` (for rebuilding without the database)."""
        storage = _storage(self.graph)
        return storage.sa_decode(self._codes_of(slots))

    # ---- queries
    def mask(self, filters: dict[str, Any]) -> np.ndarray:
        """Slots alive and passing the filters this index knows."""
        n, s, codes = self.total, self.slots, self.codes
        mask = (s["flags"][:n] & ALIVE) > 0
        if filters.get("kinds"):
            mask &= np.isin(s["kind"][:n], [codes["kind"].find(k) for k in filters["kinds"]])
        if filters.get("project") is not None:
            mask &= (s["project"][:n] == codes["project"].find(filters["project"])) | ((s["flags"][:n] & GLOBAL) > 0)
        if filters.get("agent_id") is not None:
            mask &= s["agent"][:n] == codes["agent"].find(filters["agent_id"])
        if filters.get("session_ids") is not None:
            mask &= np.isin(s["session"][:n], [codes["session"].find(x) for x in filters["session_ids"]])
        return mask

    def candidates(self, query: np.ndarray, want: int, filters: dict[str, Any]) -> list[int]:
        """About the ``want`` best rowids passing the filters, best first (approximate order)."""
        if self.alive == 0 or want <= 0:
            return []
        mask = self.mask(filters)
        allowed = int(np.count_nonzero(mask))
        if allowed == 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if allowed <= EXACT_LIMIT:
            slots = self._scan(np.flatnonzero(mask), q[0], want)
        else:
            slots = self._walk(q, want, None if allowed == self.total else mask)
        return [int(r) for r in self.slots["rowid"][slots]]

    def _walk(self, q: np.ndarray, want: int, mask: np.ndarray | None) -> np.ndarray:
        """Walk the graph; with a delta, each part (a part with few rows passing is scanned) and
        their candidates ordered together by their codes (one quantiser: the same order)."""
        parts = self._parts()
        if len(parts) == 1:
            return _walk_graph(self.graph, q, want, mask)
        found = []
        for graph, first in parts:
            part = None if mask is None else mask[first : first + int(graph.ntotal)]
            kept = int(graph.ntotal) if part is None else int(np.count_nonzero(part))
            if kept > (EXACT_LIMIT if first == 0 else DELTA_SCAN_LIMIT):
                found.append(_walk_graph(graph, q, want, part) + first)
            elif kept:
                found.append(
                    self._scan(
                        np.flatnonzero(part) + first if part is not None else np.arange(first, first + kept), q[0], want
                    )
                )
        slots = np.concatenate(found) if found else np.zeros(0, np.int64)
        scores = dot_rows(self._codes_of(slots).astype(np.float32), q[0])
        return slots[np.argsort(-scores, kind="stable")[:want]]

    def _scan(self, slots: np.ndarray, q: np.ndarray, want: int) -> np.ndarray:
        """Exact scores on the 8-bit codes of ``slots`` (the quantiser is affine and shared by
        every component, so codes . q orders rows as the decoded vectors do)."""
        best: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for start in range(0, len(slots), 8192):
            part = slots[start : start + 8192]
            s = dot_rows(self._codes_of(part).astype(np.float32), q)
            keep = min(want, len(part))
            top = np.argpartition(-s, keep - 1)[:keep]
            best.append(part[top])
            scores.append(s[top])
        all_slots, all_scores = np.concatenate(best), np.concatenate(scores)
        return all_slots[np.argsort(-all_scores, kind="stable")[:want]]

    def _codes_of(self, slots: np.ndarray) -> np.ndarray:
        """The 8-bit codes of ``slots`` (a copy), from whichever graph holds each."""
        base = int(self.graph.ntotal)
        if self.delta is None or not len(slots) or slots.max() < base:
            return _codes(self.graph)[slots]
        out = np.empty((len(slots), self.dim), np.uint8)
        low = slots < base
        out[low] = _codes(self.graph)[slots[low]]
        out[~low] = _codes(self.delta)[slots[~low] - base]
        return out

    # ---- files
    def save(self, directory: Path, stem: str) -> None:
        """Write ``<stem>.faiss``, ``<stem>.slots.npz`` and ``<stem>.codes.json``, each synced.
        Each is written under a temporary name and renamed over: a file of that name may be
        mapped by a process serving from it, which must keep seeing the old one whole."""
        faiss = _faiss()

        n = self.total
        columns: dict[str, Any] = {name: a[:n] for name, a in self.slots.items()}
        writers = {
            ".faiss": lambda path: faiss.write_index(self._whole_graph(), str(path)),
            ".slots.npz": lambda path: np.savez(path, **columns),
            ".codes.json": lambda path: path.write_text(json.dumps({k: c.values for k, c in self.codes.items()})),
        }
        for suffix, write in writers.items():
            final = directory / f"{stem}{suffix}"
            partial = directory / f"{stem}.partial-{os.getpid()}{suffix}"  # (np.savez keeps a .npz name)
            try:
                write(partial)
                _fsync(partial)
                os.replace(partial, final)
            finally:
                partial.unlink(missing_ok=True)

    def _whole_graph(self) -> Any:
        """One graph of every slot: the serving graph, or when the delta holds rows, the mapped
        graph read into memory with the delta's rows added after it (slot order kept; decoded
        codes encode to the same codes)."""
        if self.delta is None or self.delta.ntotal == 0:
            return self.graph
        assert self.file is not None
        faiss = _faiss()

        with os.fdopen(os.dup(self.file), "rb") as file:
            file.seek(0)  # (the duplicate shares the offset a read before left at the end)
            whole = faiss.read_index(faiss.PyCallbackIOReader(file.read))
        whole.hnsw.efConstruction = EF_CONSTRUCTION
        decode = _storage(self.delta).sa_decode
        codes = _codes(self.delta)
        for start in range(0, len(codes), 4096):
            whole.add(decode(codes[start : start + 4096]))
        return whole

    @classmethod
    def load(cls, directory: Path, stem: str, dim: int) -> AnnIndex:
        """The saved index, its graph mapped from the file (read in place, shared between processes)."""
        faiss = _faiss()

        path = directory / f"{stem}.faiss"
        graph = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        if graph.d != dim:
            raise ValueError(f"{stem}.faiss holds {graph.d}-d vectors, expected {dim}")
        with np.load(directory / f"{stem}.slots.npz") as data:
            arrays = {name: data[name] for name in ("flags", "rowid", *FIELDS)}
        if len(arrays["flags"]) != graph.ntotal:
            raise ValueError(f"{stem}: {graph.ntotal} vectors but {len(arrays['flags'])} slot rows")
        raw = json.loads((directory / f"{stem}.codes.json").read_text())
        index = cls(dim, graph, _padded(arrays), {name: Codes(raw[name]) for name in FIELDS})
        index.file = os.open(path, os.O_RDONLY)  # closed with the index (``__del__``)
        if hasattr(os, "posix_fadvise"):  # the kernel reads it ahead, so first searches find it in memory
            os.posix_fadvise(index.file, 0, 0, os.POSIX_FADV_WILLNEED)
        return index


def _walk_graph(graph: Any, q: np.ndarray, want: int, mask: np.ndarray | None) -> np.ndarray:
    """The graph's best ``want`` slots passing ``mask`` (None: all), best first."""
    faiss = _faiss()

    params = faiss.SearchParametersHNSW()
    total = int(graph.ntotal)
    beam = EF_SEARCH * max(1.0, total / EF_GROWS_AFTER)
    params.efSearch = int(min(MAX_EF_SEARCH, max(beam, want)))
    allowed = total if mask is None else int(np.count_nonzero(mask))
    if mask is not None and allowed < total:
        bits = np.packbits(mask, bitorder="little")
        params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        # A filter that keeps a fraction f of the rows hides most of each step's neighbours:
        # widen the beam to about want / f (bounded) so the walk still reaches ``want`` rows.
        widened = want * min(16.0, total / allowed) * 1.5
        params.efSearch = int(min(MAX_EF_SEARCH, max(params.efSearch, widened)))
    _, ids = graph.search(q, want, params=params)
    return ids[0][ids[0] >= 0]


def _storage(graph: Any) -> Any:
    return _faiss().downcast_index(graph.storage)


def _codes(graph: Any) -> np.ndarray:
    """A graph's codes as a (slots, dim) uint8 array viewing faiss's memory (valid until the
    next add, which may move it)."""
    faiss = _faiss()

    storage = _storage(graph)
    flat = faiss.rev_swig_ptr(storage.codes.data(), int(graph.ntotal) * storage.code_size)
    return np.asarray(flat).reshape(int(graph.ntotal), storage.code_size)


def dot_rows(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` without BLAS: on a busy 2-core machine OpenBLAS's threads took
    10-70 ms to wake for a product that numpy's own loop does in 0.5 ms."""
    return np.einsum("ij,j->i", matrix, vector)


def _faiss() -> Any:
    """faiss, imported on first use (its generated stubs mistype several calls used here)."""
    return importlib.import_module("faiss")


def _empty_slot_arrays(size: int) -> dict[str, np.ndarray]:
    return {
        "flags": np.zeros(size, np.uint8),
        "rowid": np.zeros(size, np.int64),
        **{name: np.zeros(size, np.int32) for name in FIELDS},
    }


def _padded(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    size = len(arrays["flags"])
    out = _empty_slot_arrays(max(1024, size + size // 4))
    for name, array in arrays.items():
        out[name][:size] = array
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
