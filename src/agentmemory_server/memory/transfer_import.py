"""Writing imported records into the store: the ``merge``/``skip``/``replace`` strategies.

``transfer.py`` reads and validates an export document; this module writes its records (and
the images they reference) in one transaction and indexes them (``import_records``), or, for a
``replace`` of a JSON Lines file of any size, a batch at a time into one transaction
(``replace_stream``). A replace wipes the store first, inside the same transaction, so a failure
anywhere leaves the old store as it was. Working memory goes where it lives: the database's
tables in the same transaction, or Redis, written after the commit (merge, skip) or staged and
swapped in once the records' transaction commits (replace; ``working/staged.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.scopes import is_obs_scope
from agentmemory_server.memory import working_transfer
from agentmemory_server.retrieval import search
from agentmemory_server.storage.interfaces import UnitOfWork


def import_records(
    ctx: Ctx,
    records: list[tuple[str, str, Any]],
    strategy: str,
    *,
    stripped: bool = False,
    pictures: list[tuple[str, str, bytes]] | None = None,
) -> dict[str, dict[str, int]]:
    """Write validated (scope, key, value) records (and the images they reference) in one
    transaction and index them; returns imported/skipped counts per section. ``replace`` wipes
    first (a JSON Lines replace goes through ``replace_stream`` instead). ``stripped``:
    the values went through ``strip_private_data`` already (a bulk import strips in a worker
    process)."""
    counts: dict[str, dict[str, int]] = {}
    now = ctx.rt.clock.iso()
    epoch = ctx.rt.clock.now().timestamp()
    wiping = strategy == "replace"
    outside = working_transfer.outside_database(ctx.rt)
    if wiping and outside is None:
        working_transfer.before_replace(ctx.rt)
    stage, total = None, len(records)
    if outside is not None and wiping:
        stage, records = _stage_working(outside, records, counts, stripped=stripped)
    held: list[dict[str, Any]] | None = [] if outside is not None and stage is None else None
    with (
        _swapped_after_commit(outside, stage) as swap,
        ctx.rt.db.transaction("import", agent_id=ctx.rt.settings.agent_id) as tx,
    ):
        _wipe_or_check_fallback(ctx, tx, records, epoch, wiping=wiping, outside=outside)
        _put_pictures(tx, pictures, counts, now)
        _write_records(tx, records, strategy, counts, stripped=stripped, now=now, epoch=epoch, held=held)
        swap.record(tx)
        tx.audit_message = f"import ({strategy}) of {total} record(s)"
        tx.audit_details = {"strategy": strategy, "counts": counts}
    if stage is None and outside is not None and (held or wiping):
        # Written once the records are committed (a merge's entries, scope by scope).
        outside.import_entries(held or [], strategy, wipe=wiping)
    return counts


def _wipe_or_check_fallback(
    ctx: Ctx, tx: UnitOfWork, records: list[tuple[str, str, Any]], epoch: float, *, wiping: bool, outside: Any | None
) -> None:
    """Before the records are written: a replace wipes the store (and Redis's working memory
    unless it is outside the database); a merge or skip of working memory into the database
    checks the store is still on the Redis fallback."""
    if wiping:
        _wipe(ctx, tx, epoch, redis_too=outside is None)
    elif outside is None and any(scope == working_transfer.SECTION for scope, _k, _v in records):
        working_transfer.check_still_on_fallback(ctx.rt, tx)


def _put_pictures(tx: UnitOfWork, pictures: list[tuple[str, str, bytes]] | None, counts: dict, now: str) -> None:
    """The images the records reference, counted under ``images``."""
    if pictures:
        for image_id, mime, data in pictures:  # inside the transaction: the sweep waits for it
            tx.images.put(image_id, mime, data, now)
        counts["images"] = {"imported": len(pictures), "skipped": 0}


class ReplaceStream:
    """A replace import written a batch at a time into one transaction (a JSON Lines file of any
    size): the wipe and every batch commit together or not at all, so a bad line late in the
    file, a full disk, a killed process or a lost database leaves the old store as it was.
    Memory stays bounded: each batch is written and dropped (the transaction's list of changed
    keys is cut to what its audit row lists). With working memory in Redis, each batch's working
    memory goes into one stage, sealed and recorded for the swap in the same transaction
    (``working/staged.py``), deleted if it fails. Use ``replace_stream``."""

    def __init__(self, ctx: Ctx, tx: UnitOfWork, outside: Any | None, stage: str | None):
        self.ctx, self.tx, self.outside, self.stage = ctx, tx, outside, stage
        self.now, self.epoch = ctx.rt.clock.iso(), ctx.rt.clock.now().timestamp()
        # Working memory outside the database but no stage (the store is on the Redis fallback):
        # written after the commit, as import_records does.
        self.held: list[dict[str, Any]] | None = [] if outside is not None and stage is None else None
        self.counts: dict[str, dict[str, int]] = {}
        self.records = 0
        self.changed = 0  # the changes cut from the transaction's list (``cut``)

    def write(self, records: list[tuple[str, str, Any]], pictures: list[tuple[str, str, bytes]]) -> None:
        """One batch of validated, privacy-stripped records and the images they reference."""
        counts: dict[str, dict[str, int]] = {}
        self.records += len(records)
        if self.stage is not None and self.outside is not None:
            entries = [v for s, _k, v in records if s == working_transfer.SECTION]
            self.outside.add_to_stage(self.stage, entries)  # with none, it keeps the stage from looking abandoned
            if entries:
                counts[working_transfer.SECTION] = {"imported": len(entries), "skipped": 0}
                records = [r for r in records if r[0] != working_transfer.SECTION]
        _put_pictures(self.tx, pictures, counts, self.now)
        _write_records(
            self.tx, records, "replace", counts, stripped=True, now=self.now, epoch=self.epoch, held=self.held
        )
        add_counts(self.counts, counts)
        self.cut()

    def cut(self) -> None:
        """Keep the first 50 of the transaction's changes (what its audit row lists) and count
        the rest: a set of every key the file names would grow with the file, so a key written
        twice (a file naming it on two lines) is counted twice."""
        changed = self.tx.changed
        if len(changed) > 50:
            self.changed += len(changed) - 50
            del changed[50:]

    def change_count(self) -> int:
        """Every change the transaction recorded: the wipe, each record, image and working-memory
        scope written (counted as often as written), not the number of distinct targets."""
        return self.changed + len(self.tx.changed)


@contextlib.contextmanager
def replace_stream(ctx: Ctx) -> Iterator[ReplaceStream]:
    """A ``ReplaceStream``: the store is wiped and the batches written in one transaction,
    committed when the block ends without an error; the counts are in ``.counts``."""
    outside = working_transfer.outside_database(ctx.rt)
    if outside is None:
        working_transfer.before_replace(ctx.rt)
    stage = outside.open_stage() if outside is not None else None
    with (
        _swapped_after_commit(outside, stage) as swap,
        ctx.rt.db.transaction("import", agent_id=ctx.rt.settings.agent_id) as tx,
    ):
        stream = ReplaceStream(ctx, tx, outside, stage)
        _wipe(ctx, tx, stream.epoch, redis_too=outside is None)
        yield stream
        swap.record(tx, seal=True)
        tx.audit_message = f"import (replace) of {stream.records} record(s)"
        tx.audit_details = {"strategy": "replace", "counts": stream.counts}
        stream.cut()  # the audit row lists 50 and counts the rest, under a name saying what it counts
        if stream.changed:
            tx.audit_details["changeCount"] = stream.change_count()
    if stage is None and outside is not None:
        outside.import_entries(stream.held or [], "replace", wipe=True)


class _Swap:
    """A replace import's staged working memory (``WorkingMemory.stage_replace``/``open_stage``),
    recorded in the records' transaction by ``record``; see ``_swapped_after_commit``."""

    def __init__(self, outside: Any, stage: str | None):
        self.outside, self.stage = outside, stage
        self.superseded: list[str] = []

    def record(self, tx: Any, *, seal: bool = False) -> None:
        if self.stage is None or self.outside is None:
            return
        if seal:  # a streamed stage is sealed once its last batch is in
            self.outside.seal_stage(self.stage)
        self.superseded = self.outside.record_swap(tx, self.stage)


@contextlib.contextmanager
def _swapped_after_commit(outside: Any, stage: str | None) -> Iterator[_Swap]:
    """Around the records' transaction: once it has committed, the stage is swapped in; if it
    failed, the stage goes and Redis keeps the old working memory, as the database its records."""
    swap = _Swap(outside, stage)
    try:
        yield swap
    except BaseException:
        if stage is not None and outside is not None:
            outside.discard_stage(stage)
        raise
    if stage is not None and outside is not None:
        outside.finish_swap(stage, swap.superseded)


def _stage_working(
    outside: Any, records: list[tuple[str, str, Any]], counts: dict, *, stripped: bool
) -> tuple[str | None, list[tuple[str, str, Any]]]:
    """A replace into Redis: Redis has no part in the database's transaction, so the new working
    memory is written aside first (a Redis failure there changes nothing), the transaction records
    that the stage must be swapped in, and it is swapped in at once after the commit
    (``working/staged.py``). Returns the stage and the records left for the transaction."""
    entries = [v if stripped else strip_private_data(v) for s, _k, v in records if s == working_transfer.SECTION]
    stage = outside.stage_replace(entries)
    if stage is None:
        return None, records
    if entries:
        counts[working_transfer.SECTION] = {"imported": len(entries), "skipped": 0}
    return stage, [r for r in records if r[0] != working_transfer.SECTION]


def _wipe(ctx: Ctx, tx: UnitOfWork, epoch: float, *, redis_too: bool) -> None:
    """A replace's wipe: the records and the database's working memory; ``redis_too`` while the
    store is on the Redis fallback, Redis's old working memory too, once it answers (or the heal
    would merge it back)."""
    tx.admin.wipe_records()
    working_transfer.wipe(tx, epoch)
    fallen = working_transfer.on_redis_fallback(ctx.rt) if redis_too else None
    if fallen is not None:
        fallen.record_redis_wipe(tx)


def _write_records(
    tx: UnitOfWork,
    records: list[tuple[str, str, Any]],
    strategy: str,
    counts: dict,
    *,
    stripped: bool,
    now: str,
    epoch: float,
    held: list[dict[str, Any]] | None = None,
) -> None:
    """The records, their search rows and their capture events, batched: on PostgreSQL a
    statement a record and a few round trips a batch, not several of each a record. A working
    memory entry (``working_transfer.SECTION``) goes to the working-memory tables instead, or
    into ``held`` when working memory lives outside the database (written after the commit)."""
    to_index: list[tuple[str, dict[str, Any]]] = []
    events: list[tuple[str, str, str]] = []
    written: list[tuple[str, str, Any]] = []
    for scope, key, value in records:
        section = "observations" if is_obs_scope(scope) else scope
        tally = counts.setdefault(section, {"imported": 0, "skipped": 0})
        if strategy == "skip" and tx.records.get(scope, key) is not None:
            tally["skipped"] += 1
            continue
        if not stripped:
            value = strip_private_data(value)
        if scope == working_transfer.SECTION:
            _write_working_entry(tx, value, strategy, held, now=now, epoch=epoch)
        else:
            written.append((scope, key, value))
            kind = search.kind_for_scope(scope)
            if kind and isinstance(value, dict):
                to_index.append((kind, value))
            event_id = value.get("eventId") if is_obs_scope(scope) and isinstance(value, dict) else None
            if event_id:
                events.append((event_id, value["sessionId"], key))
        tally["imported"] += 1
    tx.records.set_many(written, now=now)
    search.index_records(tx, to_index)
    _put_new_events(tx, events, now)


def _write_working_entry(
    tx: UnitOfWork, value: Any, strategy: str, held: list[dict[str, Any]] | None, *, now: str, epoch: float
) -> None:
    """A working memory entry: into ``held`` when working memory lives outside the database
    (written after the commit), else into the working-memory tables."""
    if held is not None:
        held.append(value)
    else:
        working_transfer.write(tx, value, strategy, now=epoch, stamp=now)


def _put_new_events(tx: UnitOfWork, events: list[tuple[str, str, str]], now: str) -> None:
    """Record the imported observations' capture events, each event id once: those the store
    already knows, or that come twice in the batch, are left out."""
    known = tx.events.known([event_id for event_id, _sid, _key in events])
    new = []
    for event in events:
        if event[0] not in known:
            new.append(event)
            known.add(event[0])
    tx.events.put_many(new, now)


def add_counts(total: dict[str, dict[str, int]], counts: dict[str, dict[str, int]]) -> None:
    for section, tally in counts.items():
        into = total.setdefault(section, {"imported": 0, "skipped": 0})
        for field, n in tally.items():
            into[field] += n


def import_result(strategy: str, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "success": True,
        "strategy": strategy,
        "counts": counts,
        "imported": sum(c["imported"] for c in counts.values()),
        "skipped": sum(c["skipped"] for c in counts.values()),
    }
