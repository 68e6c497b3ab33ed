"""Maintenance of a store: rebuild the search index, stream an export, import in batches, stats.

Library code behind the admin CLI (``src/cli.py``). Everything goes through ``db.Store`` methods
and the domain modules, in short transactions, so it is safe to run while the server is serving
the same file (WAL lets readers and one writer work together; ``busy_timeout`` makes the two
processes' writers wait for each other instead of failing).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS, SUMMARIES, obs_scope
from agentmemory_server.memory import transfer
from agentmemory_server.retrieval import search
from agentmemory_server.storage.codec import dumps
from agentmemory_server.storage.interfaces import UnitOfWork as Store

T = TypeVar("T")


class Bar(Protocol):
    """What a progress bar must do (a ``tqdm`` instance qualifies)."""

    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


# make_bar(label, total) -> Bar. The CLI passes tqdm bars on stderr; library callers none.
Progress = Callable[[str, int], Bar]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(label: str, total: int) -> Bar:
    return _NoBar()


# Run after the FTS rebuild by ``reindex``: hook(rt, progress) -> summary dict or None. The
# vector index registers its re-embedding here, so one `cli.py reindex` rebuilds both.


def reembed_vectors(rt: Any, progress: Progress) -> dict[str, Any] | None:
    """Queue every indexed record for a new vector, then embed them here with a progress bar
    (a running server's worker shares the backlog, so the two simply finish sooner)."""
    from agentmemory_server.retrieval import vectors  # late: only reindex needs the vector subsystem

    service = vectors.service(rt)
    if service.embedder is None:
        return {"queued": 0, "embedded": 0, "reason": "no embedding provider configured"}
    queued = vectors.requeue_all_embeddings(rt)
    bar = progress("embed", queued)
    embedded = 0
    try:
        while done := service.drain(max_batches=1):
            embedded += done
            bar.update(done)
    finally:
        bar.close()
    return {"queued": queued, "embedded": embedded, "model": service.model}


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# -- reindex ----------------------------------------------------------------------------------------


def indexed_scopes(store: Store) -> list[tuple[str, str]]:
    """(scope, kind) of every scope in the store whose records are searchable."""
    return [(scope, kind) for scope in store.records.scopes() if (kind := search.kind_for_scope(scope))]


def _rebuild_scope(rt: Any, scope: str, kind: str, batch: int, bar: Bar) -> tuple[int, int]:
    indexed = skipped = 0
    for rows in chunked(rt.db.reader().records.iter_scope(scope, batch=batch), batch):
        with rt.db.transaction("reindex") as tx:
            for _key, value in rows:
                try:
                    search.index_record(tx, kind, value)
                    indexed += 1
                except (KeyError, TypeError, AttributeError):  # a record too damaged to index
                    skipped += 1
        bar.update(len(rows))
    return indexed, skipped


def _drop_stale_docs(rt: Any, batch: int) -> int:
    """Remove index rows whose record is gone (or whose scope is no longer indexed)."""
    removed, after = 0, 0
    while refs := rt.db.reader().index.refs(after_id=after, limit=batch):
        after = refs[-1][0]
        by_scope: dict[str, list[tuple[str, str]]] = {}
        for _rowid, doc_id, scope, key in refs:
            by_scope.setdefault(scope, []).append((doc_id, key))
        stale = []
        for scope, docs in by_scope.items():
            present = rt.db.reader().records.get_many(scope, [key for _d, key in docs]) if search.kind_for_scope(scope) else {}
            stale += [doc_id for doc_id, key in docs if key not in present]
        if stale:
            with rt.db.transaction("reindex") as tx:
                removed += tx.index.delete(stale)
    return removed


def reindex(rt: Any, *, batch: int = 500, progress: Progress = no_progress) -> dict[str, Any]:
    """Rebuild the FTS index of every indexed kind from the stored records, drop index rows whose
    record is gone, then run the ``reindex`` hooks (vector re-embedding). Each batch is its own short
    transaction, so a running server keeps serving (searches may miss a record for a moment)."""
    scopes = indexed_scopes(rt.db.reader())
    counts = rt.db.reader().records.scope_counts()
    bar = progress("reindex", sum(counts.get(scope, 0) for scope, _k in scopes))
    by_kind: dict[str, int] = {}
    skipped = 0
    try:
        for scope, kind in scopes:
            indexed, bad = _rebuild_scope(rt, scope, kind, batch, bar)
            by_kind[kind] = by_kind.get(kind, 0) + indexed
            skipped += bad
    finally:
        bar.close()
    removed = _drop_stale_docs(rt, batch)
    with rt.db.transaction("reindex") as tx:
        orphans = tx.index.prune_orphan_text()
    hooks = {getattr(hook, "__name__", repr(hook)): hook(rt, progress) for hook in rt.hooks.reindex}
    return {"indexed": by_kind, "skipped": skipped, "staleRemoved": removed, "orphansRemoved": orphans, "hooks": hooks}


# -- export -----------------------------------------------------------------------------------------


class _JsonWriter:
    """Writes one JSON document piece by piece (objects and arrays nest)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.first = [True]

    def _sep(self) -> None:
        if not self.first[-1]:
            self.out.write(",")
        self.first[-1] = False

    def open(self, bracket: str, key: str | None = None) -> None:
        self._sep()
        self.out.write((json.dumps(key) + ":" if key is not None else "") + bracket)
        self.first.append(True)

    def close(self, bracket: str) -> None:
        self.first.pop()
        self.out.write(bracket)

    def value(self, value: Any, key: str | None = None) -> None:
        self._sep()
        self.out.write((json.dumps(key) + ":" if key is not None else "") + dumps(value))


def _write_scope(w: _JsonWriter, store: Store, scope: str, batch: int, bar: Bar, *, as_object: bool) -> None:
    for rows in chunked(store.records.iter_scope(scope, batch=batch), batch):
        for key, value in rows:
            w.value(value, key if as_object else None)
        bar.update(len(rows))


def _write_observations(w: _JsonWriter, store: Store, batch: int, bar: Bar) -> None:
    w.open("{", "observations")
    for session_ids in chunked((key for key, _v in store.records.iter_scope(SESSIONS, batch=batch)), batch):
        for sid in session_ids:
            w.open("[", sid)
            _write_scope(w, store, obs_scope(sid), batch, bar, as_object=False)
            w.close("]")
    # Observations whose session row is gone still export (as GET /export does).
    for scope in store.records.scopes():
        sid = scope[len("mem:obs:") :]
        if scope.startswith("mem:obs:") and store.records.get(SESSIONS, sid) is None:
            w.open("[", sid)
            _write_scope(w, store, scope, batch, bar, as_object=False)
            w.close("]")
    w.close("}")


def stream_export(rt: Any, out: TextIO, *, batch: int = 500, progress: Progress = no_progress) -> dict[str, int]:
    """Write the same document as ``GET /export`` to ``out``, reading ``batch`` records at a time
    inside one read transaction (a consistent export while the server keeps writing)."""
    with rt.db.snapshot_reader() as store:
        counts = store.records.scope_counts()
        bar = progress("export", sum(counts.values()))
        try:
            w = _JsonWriter(out)
            w.open("{")
            for key, value in (
                ("version", transfer.FORMAT_VERSION),
                ("service", "agentmemory"),
                ("exportedAt", rt.clock.iso()),
            ):
                w.value(value, key)
            w.open("[", "sessions")
            _write_scope(w, store, SESSIONS, batch, bar, as_object=False)
            w.close("]")
            _write_observations(w, store, batch, bar)
            for name, scope in (("memories", MEMORIES), ("summaries", SUMMARIES)):
                w.open("[", name)
                _write_scope(w, store, scope, batch, bar, as_object=False)
                w.close("]")
            w.open("{", "kv")
            for scope in store.records.scopes():
                if not transfer._is_core(scope):
                    w.open("{", scope)
                    _write_scope(w, store, scope, batch, bar, as_object=True)
                    w.close("}")
            w.close("}")
            sessions = counts.get(SESSIONS, 0)
            w.value({"offset": 0, "limit": None, "total": sessions, "hasMore": False}, "pagination")
            w.close("}")
            out.write("\n")
        finally:
            bar.close()
    return {"records": sum(counts.values()), "sessions": counts.get(SESSIONS, 0)}


# -- import -----------------------------------------------------------------------------------------


def load_export(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{path} does not hold an export (a JSON object)")
    return document


def import_document(
    ctx: Ctx, document: dict[str, Any], strategy: str, *, batch: int = 1000, progress: Progress = no_progress
) -> dict[str, Any]:
    """Import an export through the ``import`` tool. merge and skip run in batches of ``batch``
    records, each its own transaction (idempotent, so an interrupted import can simply be run
    again, and the server's writers never wait long); replace runs as one transaction so it is
    all or nothing. Everything is validated before anything is written."""
    if strategy == "replace":
        return registry.call(ctx, "import", {"exportData": document, "strategy": "replace"})
    transfer._check_version(document)
    records = list(transfer._records(document))
    bar = progress("import", len(records))
    totals: dict[str, dict[str, int]] = {}
    try:
        for rows in chunked(records, batch):
            kv: dict[str, dict[str, Any]] = {}
            for scope, key, value in rows:
                kv.setdefault(scope, {})[key] = value
            result = registry.call(
                ctx, "import", {"exportData": {"version": transfer.FORMAT_VERSION, "kv": kv}, "strategy": strategy}
            )
            for section, tally in result["counts"].items():
                total = totals.setdefault(section, {"imported": 0, "skipped": 0})
                for field in total:
                    total[field] += tally[field]
            bar.update(len(rows))
    finally:
        bar.close()
    return {
        "success": True,
        "strategy": strategy,
        "counts": totals,
        "imported": sum(c["imported"] for c in totals.values()),
        "skipped": sum(c["skipped"] for c in totals.values()),
    }


# -- stats ------------------------------------------------------------------------------------------


def stats(rt: Any) -> dict[str, Any]:
    """Record counts per scope and per indexed kind, table sizes, database and WAL size, schema."""
    store = rt.db.reader()
    scopes = store.records.scope_counts()
    per_scope = {scope: n for scope, n in scopes.items() if not scope.startswith("mem:obs:")}
    observation_scopes = {scope: n for scope, n in scopes.items() if scope.startswith("mem:obs:")}
    per_scope["mem:obs:*"] = sum(observation_scopes.values())
    sizes = rt.db.file_sizes()
    return {
        "db": {
            "path": str(rt.db.path),
            "schemaVersion": rt.db.schema_version,
            "sizeBytes": sizes["db"],
            "walBytes": sizes["wal"],
            "shmBytes": sizes["shm"],
        },
        "scopes": dict(sorted(per_scope.items())),
        "sessionsWithObservations": len(observation_scopes),
        "indexed": store.index.kind_counts(),
        "tables": store.admin.table_counts(),
    }
