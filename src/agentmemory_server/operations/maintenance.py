"""Maintenance of a store: rebuild the search index, stream an export, import in batches, stats.

Library code behind the admin CLI (``agentmemory``) and the ``stats`` / ``reindex`` tools.
Everything goes through the storage repositories and the domain modules, in short
transactions (a JSON Lines ``replace`` import excepted: one transaction, all or nothing), so it
is safe to run while the server is serving the same file (WAL lets readers
and one writer work together; ``busy_timeout`` makes the two processes' writers wait for each
other instead of failing).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO, TypeVar

from agentmemory_server import errors
from agentmemory_server.errors import AppError, Forbidden, InvalidInput
from agentmemory_server.kernel.access import agent_filter, isolated
from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.kernel.registry import Ctx, params, tool
from agentmemory_server.kernel.scopes import OBSERVATIONS_PREFIX, is_obs_scope
from agentmemory_server.memory import transfer, transfer_import, transfer_sinks, working_transfer
from agentmemory_server.models import llm
from agentmemory_server.retrieval import search, vectors
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
    (a running server's worker shares the backlog, so the two simply finish sooner). The bar then
    stops short of its total: ``leftToWorker`` counts the records a worker took or will take."""
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
    return {"queued": queued, "embedded": embedded, "leftToWorker": max(0, queued - embedded), "model": service.model}


def _requeue_vectors(rt: Any) -> int:
    """Queue every indexed record for a new vector; the vector worker embeds them."""
    service = vectors.service(rt)
    return vectors.requeue_all_embeddings(rt) if service.embedder is not None else 0


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
            present = (
                rt.db.reader().records.get_many(scope, [key for _d, key in docs])
                if search.kind_for_scope(scope)
                else {}
            )
            stale += [doc_id for doc_id, key in docs if key not in present]
        if stale:
            with rt.db.transaction("reindex") as tx:
                removed += tx.index.delete(stale)
    return removed


def reindex(rt: Any, *, batch: int = 500, progress: Progress = no_progress, embed_now: bool = True) -> dict[str, Any]:
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
    hooks = (
        {getattr(hook, "__name__", repr(hook)): hook(rt, progress) for hook in rt.hooks.reindex}
        if embed_now
        else {"reembed_vectors": {"queued": _requeue_vectors(rt)}}
    )
    return {"indexed": by_kind, "skipped": skipped, "staleRemoved": removed, "orphansRemoved": orphans, "hooks": hooks}


# -- export -----------------------------------------------------------------------------------------


def stream_export(
    rt: Any,
    out: TextIO,
    *,
    batch: int = 500,
    progress: Progress = no_progress,
    lines: bool = False,
    with_working: bool = True,
) -> dict[str, int]:
    """Write the same document as ``GET /export`` to ``out`` (``transfer.write_export``, the one
    export implementation), inside one read transaction: a consistent export while the server
    keeps writing. In isolated agent scope only this AGENT_ID's records, as over HTTP.
    ``lines``: JSON Lines, one record a line (``transfer_sinks.JsonLinesSink``). ``with_working=False``:
    without working memory (``migrate`` moves it itself)."""
    agent = agent_filter(Ctx(rt, source="cli"))
    with rt.db.snapshot_reader() as store:
        bar = progress("export", sum(store.records.scope_counts().values()))
        sink = transfer_sinks.JsonLinesSink(out) if lines else transfer_sinks.JsonTextSink(out)
        try:
            summary = transfer.write_export(
                store,
                sink,
                exported_at=rt.clock.iso(),
                now=rt.clock.now().timestamp(),
                agent=agent,
                batch=batch,
                tick=bar.update,
                working=working_transfer.outside_database(rt),
                with_working=with_working,
            )
            if not lines:
                out.write("\n")
        finally:
            bar.close()
    return summary


# -- import -----------------------------------------------------------------------------------------


def load_export(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as exc:
        # The text stopped while the JSON was still open (inside a string, or between values).
        if exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise InvalidInput(
                f"cannot read {path}: it looks truncated (its {len(exc.doc)} characters end before the JSON "
                "document is closed: a copy or download that stopped, a full disk); nothing was imported. "
                "Export it again."
            ) from None
        raise InvalidInput(f"cannot read {path}: {exc}") from None
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
        return transfer.import_export(ctx, document, "replace")
    transfer.check_version(document)
    records = list(transfer.export_records(document))
    bar = progress("import", len(records))
    totals: dict[str, dict[str, int]] = {}
    pictures = transfer.export_images(document)
    if pictures:  # first, so the records that reference them find them
        transfer_import.add_counts(totals, transfer_import.import_records(ctx, [], strategy, pictures=pictures))
    try:
        for rows in chunked(records, batch):
            transfer_import.add_counts(totals, transfer_import.import_records(ctx, rows, strategy))
            bar.update(len(rows))
    finally:
        bar.close()
    ctx.rt.publish("import", {"strategy": strategy, "counts": totals})
    return transfer_import.import_result(strategy, totals)


# A JSON Lines import bigger than this parses and strips its lines in a second process while this
# one writes: on two cores that is ~1.5x the records per second of doing both in turn.
PARALLEL_IMPORT_BYTES = 8 * 1024 * 1024


def _raw_chunks(handle: BinaryIO, size: int, skip_lines: int = 0) -> Iterator[list[tuple[int, bytes]]]:
    """Lists of (line number, raw line) from the second line on (after line ``skip_lines``),
    ``size`` non-blank lines each."""
    chunk: list[tuple[int, bytes]] = []
    for number, raw in enumerate(handle, 2):
        if number > skip_lines and raw.strip():
            chunk.append((number, raw))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


Parsed = tuple[list[tuple[str, str, Any]], list[tuple[str, str, bytes]], str | None, int]


def parse_lines(path_name: str, chunk: list[tuple[int, bytes]]) -> Parsed:
    """Parse, validate and privacy-strip lines of a JSON Lines export (in a worker process for big
    files). Returns (records, images, the first problem or None, bytes read); both stop at a
    problem."""
    records: list[tuple[str, str, Any]] = []
    pictures: list[tuple[str, str, bytes]] = []
    size = sum(len(r) for _n, r in chunk)
    for number, raw in chunk:
        try:
            document = json.loads(raw)
        except ValueError as exc:
            return records, pictures, f"{path_name}, line {number}: not JSON ({exc})", size
        if not isinstance(document, dict):
            return records, pictures, f"{path_name}, line {number}: expected a JSON object", size
        try:
            records += [
                (scope, key, strip_private_data(value)) for scope, key, value in transfer.export_records(document)
            ]
            pictures += transfer.export_images(document)
        except InvalidInput as exc:
            return records, pictures, f"{path_name}, line {number}: {exc.message}", size
    return records, pictures, None, size


def _parsed_chunks(path: Path, handle: BinaryIO, batch: int, skip_lines: int) -> Iterator[tuple[Parsed, int]]:
    """``parse_lines`` over the file's chunks, each with its last line number: in a second
    process, two chunks ahead, when the file is big and there is a second core; in this process
    otherwise."""
    chunks = _raw_chunks(handle, batch, skip_lines)
    if path.stat().st_size < PARALLEL_IMPORT_BYTES or (os.cpu_count() or 1) < 2:
        yield from ((parse_lines(str(path), chunk), chunk[-1][0]) for chunk in chunks)
        return
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=gc.disable) as pool:
        ahead: deque[tuple[Future, int]] = deque()
        try:
            for chunk in chunks:
                ahead.append((pool.submit(parse_lines, str(path), chunk), chunk[-1][0]))
                if len(ahead) > 2:
                    future, last = ahead.popleft()
                    yield future.result(), last
            while ahead:
                future, last = ahead.popleft()
                yield future.result(), last
        except BrokenProcessPool:
            raise AppError(
                "the import's parsing process died (out of memory?); what was written is kept: run the same "
                "import again to finish it",
                code=errors.IMPORT_FAILED,
                status=500,
            ) from None


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while an import runs: records are trees (JSON), freed by
    their reference counts, and the collector, started by every few hundred of the batch's new
    objects, took ~10 % of the import's time walking them. Back on (and run once) at the end."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect()


def _read_header(path: Path, handle: BinaryIO) -> dict[str, Any]:
    raw = handle.readline()
    try:
        header = json.loads(raw) if raw.strip() else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or "version" not in header:
        raise InvalidInput(f"{path}, line 1: the first line must be the header with a 'version'")
    transfer.check_version(header)
    return header


def _last_line(handle: BinaryIO, limit: int = 1 << 16) -> bytes:
    """The file's last non-blank line (at most its last ``limit`` bytes), read from the end."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - limit))
    tail = handle.read().rstrip()
    handle.seek(0)
    return tail.rsplit(b"\n", 1)[-1]


def _check_complete(path: Path, handle: BinaryIO) -> None:
    """Refuse, before anything is written, an export that does not end with the end line its
    header promises: the file was cut off (a copy that stopped, a full disk, a killed export to
    stdout), and importing it would leave a store with only its first part."""
    last = _last_line(handle)
    try:
        end = json.loads(last).get(transfer_sinks.END_KEY)
    except (ValueError, AttributeError):
        end = None
    if not isinstance(end, dict) or not isinstance(end.get("lines"), int):
        shown = last[:80].decode("utf-8", "replace") + ("..." if len(last) > 80 else "")
        raise InvalidInput(
            f'{path} looks truncated: its header says it ends with the line {{"{transfer_sinks.END_KEY}": ...}} '
            f"that `agentmemory export --jsonl` writes after the last record, but its last line is {shown!r}. "
            "The file was cut off (a copy or download that stopped, a full disk, an export that was killed); "
            "nothing was imported. Export it again, or copy the whole file."
        )


def import_lines(
    ctx: Ctx,
    path: Path,
    strategy: str,
    *,
    batch: int = 5000,
    progress: Progress = no_progress,
    skip_lines: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stream a JSON Lines export (``agentmemory export --jsonl``) into the store in batches of
    about ``batch`` records, in constant memory. The first line is the header naming the format
    version; each further line is an export document of its own, and a file whose header has
    ``endMarker`` must end with the end line (checked first: a cut file imports nothing).
    ``skip_lines`` resumes after that many lines (the header is always read); ``on_batch(line)``
    is told after each committed batch that every line up to ``line`` is stored.

    merge and skip commit batch by batch: a line that does not hold valid records stops the
    import there, naming the line, and the batches before it stay written (both are idempotent,
    so run it again once the file is fixed). ``replace`` is all or nothing: the wipe and every
    batch go into one transaction (``transfer_import.replace_stream``), so any failure leaves the old
    store; the server's writers wait meanwhile (up to their lock wait, then 503 ``database_busy``)."""
    bar = progress("import", path.stat().st_size)
    try:
        with _cyclic_gc_paused(), ctx.rt.db.bulk_load(), open(path, "rb") as handle:
            if _read_header(path, handle).get(transfer_sinks.END_MARKER):  # exports from before it have no end line
                _check_complete(path, handle)
                handle.readline()  # past the header again
            chunks = _parsed_chunks(path, handle, batch, skip_lines)
            if strategy == "replace":
                totals = _replace_lines(ctx, chunks, bar, on_batch)
            else:
                totals = _merge_lines(ctx, chunks, strategy, bar, on_batch)
    finally:
        bar.close()
    ctx.rt.db.flush()  # hand the search engine everything now rather than on its next tick
    ctx.rt.publish("import", {"strategy": strategy, "counts": totals})
    return transfer_import.import_result(strategy, totals)


def _merge_lines(
    ctx: Ctx,
    chunks: Iterator[tuple[Parsed, int]],
    strategy: str,
    bar: Bar,
    on_batch: Callable[[int], None] | None,
) -> dict[str, dict[str, int]]:
    """merge or skip: a transaction a batch."""
    totals: dict[str, dict[str, int]] = {}
    for (records, pictures, problem, size), last_line in chunks:
        if records or pictures:
            transfer_import.add_counts(
                totals, transfer_import.import_records(ctx, records, strategy, stripped=True, pictures=pictures)
            )
            # Tantivy indexes this batch on its own thread while the next one is written.
            ctx.rt.db.flush(commit=False)
        if problem:
            raise InvalidInput(problem)
        if on_batch is not None:
            on_batch(last_line)
        bar.update(size)
    return totals


def _replace_lines(
    ctx: Ctx, chunks: Iterator[tuple[Parsed, int]], bar: Bar, on_batch: Callable[[int], None] | None
) -> dict[str, dict[str, int]]:
    """replace: one transaction over every batch (the search engine is fed after the commit:
    it must never index records a rollback takes back)."""
    last = 0
    with transfer_import.replace_stream(ctx) as stream:
        for (records, pictures, problem, size), last_line in chunks:
            stream.write(records, pictures)
            if problem:
                raise InvalidInput(f"{problem}; nothing was imported: the store is as it was")
            last = last_line
            bar.update(size)
    if on_batch is not None and last:
        on_batch(last)
    return stream.counts


# -- stats ------------------------------------------------------------------------------------------


def stats(rt: Any) -> dict[str, Any]:
    """Record counts per scope and per indexed kind, table sizes, database and WAL size, schema,
    and the model tokens of the last days (per day and, today, per feature).
    Refused in isolated agent scope: the counts are every agent's."""
    if rt.settings.agent_scope == "isolated":
        raise Forbidden(
            "stats count every agent's records; not available in isolated agent scope",
            code=errors.AGENT_SCOPE_VIOLATION,
        )
    store = rt.db.reader()
    scopes = store.records.scope_counts()
    per_scope = {scope: n for scope, n in scopes.items() if not is_obs_scope(scope)}
    observation_scopes = {scope: n for scope, n in scopes.items() if is_obs_scope(scope)}
    per_scope[OBSERVATIONS_PREFIX + "*"] = sum(observation_scopes.values())
    sizes = rt.db.file_sizes()
    return {
        "db": {
            "path": rt.db.location,
            "schemaVersion": rt.db.schema_version,
            "sizeBytes": sizes["db"],
            "walBytes": sizes["wal"],
            "shmBytes": sizes["shm"],
        },
        "scopes": dict(sorted(per_scope.items())),
        "sessionsWithObservations": len(observation_scopes),
        "indexed": store.index.kind_counts(),
        "tables": store.admin.table_counts(),
        "llm": llm.service(rt).accounting.report(llm.FEATURES),
    }


# -- the same operations as tools (admin routes; the CLI calls the functions above directly) --------


@tool("stats", params(), http=[("GET", "/stats")], mcp=False, answers_with_records=False, right="admin")
def stats_tool(ctx: Ctx, args: dict) -> dict[str, Any]:
    """Record counts per scope and per indexed kind, table sizes, database and WAL size, schema."""
    return stats(ctx.rt)


@tool("reindex", params(), http=[("POST", "/reindex")], mcp=False, answers_with_records=False, right="admin")
def reindex_tool(ctx: Ctx, args: dict) -> dict[str, Any]:
    """Rebuild the search index from the records and queue every record for a new vector (the
    background worker embeds them); for big stores prefer ``agentmemory reindex``, which shows
    progress."""
    if isolated(ctx):
        raise Forbidden(
            "reindex touches every agent's records; not available in isolated agent scope",
            code=errors.AGENT_SCOPE_VIOLATION,
        )
    return reindex(ctx.rt, embed_now=False)
