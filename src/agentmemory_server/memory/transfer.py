"""Export and import of everything the server holds.

The export keeps upstream's top-level shape for the core records (``sessions``,
``observations`` by session, ``memories``, ``summaries``) and carries every other scope
verbatim under ``kv``, so nothing is lost and export -> import into an empty DB -> export gives
the same document (apart from ``exportedAt``). Working memory (its own tables) travels in
``working``, one entry per scope (``working_transfer``). The images the exported records reference travel
in ``images`` (id -> mime, bytes, base64 data; an image the quota evicted is listed without data).
Imports of upstream agentmemory exports are accepted too; their extra lists are mapped onto our
scopes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO

from agentmemory_server import errors
from agentmemory_server.errors import AppError, InvalidInput
from agentmemory_server.kernel import scopes
from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.privacy import strip_private_data
from agentmemory_server.kernel.registry import AGENT_ID, Ctx, integer, obj, params, string, tool
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS, SUMMARIES, is_obs_scope, obs_scope, session_of
from agentmemory_server.memory import transfer_lease, working_transfer
from agentmemory_server.retrieval import search
from agentmemory_server.storage import codec
from agentmemory_server.storage.blobs import is_blob_id
from agentmemory_server.storage.interfaces import UnitOfWork

FORMAT_VERSION = "agentmemory-python/1"
_UPSTREAM_VERSION = re.compile(r"^0\.\d+\.\d+$")
STRATEGIES = ("merge", "replace", "skip")
# Upstream ExportData lists -> (our scope, field holding the key).
UPSTREAM_LISTS = {
    "lessons": (scopes.LESSONS, "id"),
    "insights": (scopes.INSIGHTS, "id"),
    "actions": (scopes.ACTIONS, "id"),
    "actionEdges": (scopes.ACTION_EDGES, "id"),
    "crystals": (scopes.CRYSTALS, "id"),
    "profiles": (scopes.PROFILES, "project"),
    "semanticMemories": (scopes.SEMANTIC, "id"),
    "proceduralMemories": (scopes.PROCEDURAL, "id"),
    "relations": (scopes.RELATIONS, "id"),
    "graphNodes": (scopes.GRAPH_NODES, "id"),
    "graphEdges": (scopes.GRAPH_EDGES, "id"),
}


def _is_core(scope: str) -> bool:
    return scope in (SESSIONS, MEMORIES, SUMMARIES) or is_obs_scope(scope)


def _owned_by(agent: str | None) -> Callable[[Any], bool]:
    """Filter for one agent's records (every record when agent is None). Records without an
    agentId belong to nobody, so an agent-scoped export leaves them out (fail closed)."""

    def keep(value: Any) -> bool:
        return agent is None or (isinstance(value, dict) and value.get("agentId") == agent)

    return keep


class Sink(Protocol):
    """Where an export goes, piece by piece: containers open and close, values go in them."""

    def open(self, bracket: str, key: str | None = None) -> None: ...
    def close(self, bracket: str) -> None: ...
    def value(self, value: Any, key: str | None = None) -> None: ...


class TreeSink:
    """Builds the export as Python objects (GET /export answers it as one JSON body). With
    ``limit_bytes``, a document growing past it stops with 413 ``export_too_large`` (upstream
    0.9.30's ``{oversized, bytes, limitBytes, stoppedAt}``) before it fills the memory."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        self._stack: list[tuple[Any, str | None]] = []
        self.result: Any = None
        self.limit, self.bytes = limit_bytes, 0

    def open(self, bracket: str, key: str | None = None) -> None:
        self._stack.append(([] if bracket == "[" else {}, key))

    def close(self, bracket: str) -> None:
        container, key = self._stack.pop()
        self._put(container, key)

    def value(self, value: Any, key: str | None = None) -> None:
        if self.limit is not None:
            self.bytes += len(json.dumps(value, separators=(",", ":"), default=str)) + len(key or "") + 4
            if self.bytes > self.limit:
                self._too_large(key)
        self._put(value, key)

    def _too_large(self, key: str | None) -> None:
        where = ".".join(k for k in [*(k for _, k in self._stack), key] if k)
        raise AppError(
            f"the export would be larger than {self.limit} bytes (it stopped at {where}); page it with "
            "maxSessions and offset, raise AGENTMEMORY_MAX_EXPORT_BYTES, or stream it with `agentmemory export`",
            code=errors.EXPORT_TOO_LARGE,
            status=413,
            details={
                "oversized": True,
                "bytes": self.bytes,
                "limitBytes": self.limit,
                "stoppedAt": where,
                "setting": "AGENTMEMORY_MAX_EXPORT_BYTES",
            },
        )

    def _put(self, value: Any, key: str | None) -> None:
        if not self._stack:
            self.result = value
        elif key is None:
            self._stack[-1][0].append(value)
        else:
            self._stack[-1][0][key] = value


class JsonTextSink:
    """Writes the export as JSON text as it is produced, so a big store is never in memory at
    once (the admin CLI's export)."""

    def __init__(self, out: TextIO):
        self.out = out
        self._first = [True]

    def _separate(self, key: str | None) -> None:
        if not self._first[-1]:
            self.out.write(",")
        self._first[-1] = False
        if key is not None:
            self.out.write(json.dumps(key) + ":")

    def open(self, bracket: str, key: str | None = None) -> None:
        self._separate(key)
        self.out.write(bracket)
        self._first.append(True)

    def close(self, bracket: str) -> None:
        self._first.pop()
        self.out.write("]" if bracket == "[" else "}")

    def value(self, value: Any, key: str | None = None) -> None:
        self._separate(key)
        self.out.write(codec.dumps(value))


# The header field saying a JSON Lines export ends with its end line, and that line's one key.
END_MARKER, END_KEY = "endMarker", "end"


class JsonLinesSink:
    """Writes the export as JSON Lines: a header line (``version``, ``service``, ``exportedAt``,
    ``endMarker: true``), then one line per record, each a small export document of its own
    (``{"memories": [m]}``, ``{"observations": {"ses_1": [o]}}``, ``{"kv": {scope: {key:
    value}}}``), then the end line ``{"end": {"lines": N}}`` (N record lines). Any record line
    imports on its own, so a bulk load streams in constant memory (``agentmemory import
    FILE.jsonl``); the end line tells a whole file from one cut off at a line's end."""

    def __init__(self, out: TextIO):
        self.out = out
        self._path: list[tuple[str, str | None]] = []  # open containers below the root
        self._header: dict[str, Any] | None = {}
        self._depth = 0
        self.lines = 0

    def open(self, bracket: str, key: str | None = None) -> None:
        self._depth += 1
        if self._depth > 1:
            self._flush_header()
            self._path.append((bracket, key))

    def close(self, bracket: str) -> None:
        self._depth -= 1
        if self._path and self._depth >= 1:
            self._path.pop()
        if self._depth == 0:  # the document is complete: say so, last
            self._flush_header()
            self.out.write(json.dumps({END_KEY: {"lines": self.lines}}) + "\n")

    def value(self, value: Any, key: str | None = None) -> None:
        if not self._path:  # a scalar of the root: header fields; pagination means nothing here
            if self._header is not None and key is not None:
                self._header[key] = value
            return
        bracket, _ = self._path[-1]
        line: Any = [value] if bracket == "[" else {key: value}
        for (_bracket, name), (parent, _) in zip(
            reversed(self._path), reversed([("{", None), *self._path[:-1]]), strict=True
        ):
            line = {name: line} if parent == "{" else [line]
        self.out.write(codec.dumps(line) + "\n")
        self.lines += 1

    def _flush_header(self) -> None:
        if self._header is not None:
            self.out.write(json.dumps({**self._header, END_MARKER: True}) + "\n")
            self._header = None


class _ExportWriter:
    """Writes the export document of ``write_export`` to a sink (one instance per export)."""

    def __init__(
        self, store: UnitOfWork, sink: Sink, keep: Callable[[Any], bool], batch: int, tick: Callable[[int], Any]
    ):
        self.store, self.sink, self.keep, self.batch, self.tick = store, sink, keep, batch, tick
        self.records = 0
        self.image_ids: set[str] = set()

    def rows(self, scope: str) -> Iterator[tuple[str, Any]]:
        """The records of ``scope`` the export keeps, read a batch at a time."""
        for key, value in self.store.records.iter_scope(scope, batch=self.batch):
            self.records += 1
            self.tick(1)
            if self.keep(value):
                if isinstance(value, dict) and value.get("images"):
                    self.image_ids.update(i["id"] for i in value["images"] if isinstance(i, dict) and "id" in i)
                yield key, value

    def images(self) -> None:
        """The images the exported records reference, each once."""
        self.sink.open("{", "images")
        for image_id in sorted(self.image_ids):
            meta = self.store.images.get(image_id) if is_blob_id(image_id) else None
            if meta is None:
                continue
            data = None if meta["evictedAt"] else self.store.images.read(image_id)
            entry: dict[str, Any] = {"mime": meta["mime"], "bytes": meta["bytes"]}
            if data is None:
                entry["evicted"] = True
            else:
                entry["data"] = base64.b64encode(data).decode("ascii")
            self.sink.value(entry, image_id)
        self.sink.close("{")

    def section(self, bracket: str, key: str, scope: str, *, always: bool = True) -> None:
        """One scope as a list (``[``) or an object by key (``{``); opened only once it has a
        record unless ``always``."""
        opened = False
        for record_key, value in self.rows(scope):
            if not opened:
                self.sink.open(bracket, key)
                opened = True
            self.sink.value(value, record_key if bracket == "{" else None)
        if always and not opened:
            self.sink.open(bracket, key)
            opened = True
        if opened:
            self.sink.close(bracket)

    def sessions(self, offset: int, max_sessions: int | None) -> tuple[list[str], int]:
        """The sessions list (the requested page); returns the page's ids and the total."""
        self.sink.open("[", "sessions")
        total, page = 0, list[str]()
        for key, value in self.rows(SESSIONS):
            if total >= offset and (max_sessions is None or len(page) < max_sessions):
                self.sink.value(value)
                page.append(key)
            total += 1
        self.sink.close("[")
        return page, total

    def observations(self, page: list[str], with_orphans: bool) -> None:
        self.sink.open("{", "observations")
        for sid in page:
            self.section("[", sid, obs_scope(sid))
        if with_orphans:  # observations whose session row is gone still export, once
            for scope in self.store.records.scopes():
                if is_obs_scope(scope) and self.store.records.get(SESSIONS, session_of(scope)) is None:
                    self.section("[", session_of(scope), scope, always=False)
        self.sink.close("{")

    def working(self, now: float, agent: str | None, outside: Any | None) -> None:
        """Working memory where it lives: Redis (``outside``, the subsystem) first, then what the
        database holds (the default store; with Redis, what a fallback left that has not moved yet)."""
        self.sink.open("[", working_transfer.SECTION)

        def keep_agent(owner: str) -> bool:
            return agent in (None, owner)

        seen: set[str] = set()
        for entry in outside.export_entries(now, keep_agent) if outside is not None else []:
            seen.add(working_transfer.scope_key((entry["project"], entry["agentId"], entry["sessionId"])))
            self._working_entry(entry)
        for entry in working_transfer.export_entries(self.store, now, keep_agent):
            if working_transfer.scope_key((entry["project"], entry["agentId"], entry["sessionId"])) not in seen:
                self._working_entry(entry)
        self.sink.close("[")

    def _working_entry(self, entry: dict[str, Any]) -> None:
        self.records += 1  # not ticked: the progress bar's total counts kv_store's records
        self.sink.value(entry)

    def other_scopes(self) -> None:
        self.sink.open("{", "kv")
        for scope in self.store.records.scopes():
            if not _is_core(scope):
                self.section("{", scope, scope, always=False)
        self.sink.close("{")


def write_export(
    store: UnitOfWork,
    sink: Sink,
    *,
    exported_at: str,
    now: float,
    agent: str | None = None,
    offset: int = 0,
    max_sessions: int | None = None,
    batch: int = 500,
    tick: Callable[[int], Any] = lambda n: None,
    working: Any | None = None,
    with_working: bool = True,
) -> dict[str, int]:
    """Write the export document to ``sink``, reading ``batch`` records at a time. The one export
    implementation: GET /export builds it with ``TreeSink``, the CLI streams it with
    ``JsonTextSink``. ``offset``/``max_sessions`` page the sessions (and their observations);
    the other sections come with the first page. ``now`` (epoch seconds): working-memory keys
    expired by then are left out. ``tick(n)`` reports records read. ``working``: the
    working-memory subsystem when working memory lives outside the database
    (``working_transfer.outside_database``); ``with_working=False`` leaves that section out
    (``agentmemory migrate`` moves working memory itself, from where it lives to where the target
    keeps it)."""
    writer = _ExportWriter(store, sink, _owned_by(agent), batch, tick)
    sink.open("{")
    for key, value in (("version", FORMAT_VERSION), ("service", "agentmemory"), ("exportedAt", exported_at)):
        sink.value(value, key)
    page, total = writer.sessions(offset, max_sessions)
    writer.observations(page, with_orphans=offset == 0)
    if offset == 0:
        writer.section("[", "memories", MEMORIES)
        writer.section("[", "summaries", SUMMARIES)
        writer.other_scopes()
        if with_working:
            writer.working(now, agent, working)
    writer.images()
    more = max_sessions is not None and offset + len(page) < total
    sink.value({"offset": offset, "limit": max_sessions, "total": total, "hasMore": more}, "pagination")
    sink.close("{")
    return {"records": writer.records, "sessions": total}


@tool(
    "memory_export",
    params(
        maxSessions=integer("Sessions per page (default: all)", minimum=1, maximum=100_000),
        offset=integer("Sessions to skip", minimum=0, maximum=10_000_000, default=0),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/export")],
    core=True,
    answers_with_records=True,
)
def memory_export(ctx: Ctx, args: dict) -> dict:
    """Export sessions, observations, memories, summaries, working memory and every other record as JSON."""
    sink = TreeSink(ctx.rt.settings.max_export_bytes)
    with ctx.rt.db.snapshot_reader() as store:
        write_export(
            store,
            sink,
            exported_at=ctx.rt.clock.iso(),
            now=ctx.rt.clock.now().timestamp(),
            agent=agent_filter(ctx, args.get("agentId")),
            offset=args["offset"],
            max_sessions=args.get("maxSessions"),
            working=working_transfer.outside_database(ctx.rt),
        )
    return sink.result


# -- import -------------------------------------------------------------------------------------


def _listed(export: dict[str, Any], name: str, key_field: str, scope: str) -> Iterator[tuple[str, str, dict]]:
    """(scope, key, item) of one list section of an export, each item keyed by ``key_field``."""
    items = export.get(name) or []
    if not isinstance(items, list):
        raise InvalidInput(f"exportData.{name} must be a list", field=f"exportData.{name}")
    for i, item in enumerate(items):
        key = item.get(key_field) if isinstance(item, dict) else None
        if not isinstance(key, str) or not key:
            raise InvalidInput(
                f"exportData.{name}[{i}].{key_field} must be a non-empty string",
                field=f"exportData.{name}[{i}].{key_field}",
            )
        yield scope, key, item


def _observations(export: dict[str, Any]) -> Iterator[tuple[str, str, dict]]:
    observations = export.get("observations") or {}
    if not isinstance(observations, dict):
        raise InvalidInput(
            "exportData.observations must be an object of sessionId -> list", field="exportData.observations"
        )
    for sid, items in observations.items():
        if not isinstance(items, list):
            raise InvalidInput(
                f"exportData.observations[{sid!r}] must be a list", field=f"exportData.observations.{sid}"
            )
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise InvalidInput(
                    f"exportData.observations[{sid!r}][{i}].id must be a string", field=f"exportData.observations.{sid}"
                )
            yield obs_scope(sid), item["id"], {**item, "sessionId": sid}


def _kv(export: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    kv = export.get("kv") or {}
    if not isinstance(kv, dict):
        raise InvalidInput("exportData.kv must be an object of scope -> {key: value}", field="exportData.kv")
    for scope, entries in kv.items():
        if not isinstance(entries, dict):
            raise InvalidInput(f"exportData.kv[{scope!r}] must be an object", field=f"exportData.kv.{scope}")
        yield from ((scope, key, value) for key, value in entries.items())


def export_records(export: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(scope, key, value) of every record in an export; raises InvalidInput naming the path."""
    yield from _listed(export, "sessions", "id", SESSIONS)
    yield from _observations(export)
    yield from _listed(export, "memories", "id", MEMORIES)
    yield from _listed(export, "summaries", "sessionId", SUMMARIES)
    for name, (scope, key_field) in UPSTREAM_LISTS.items():
        if name in export:
            yield from _listed(export, name, key_field, scope)
    yield from _kv(export)
    yield from working_transfer.entries(export)


def check_version(export: dict[str, Any]) -> None:
    version = export.get("version")
    if version != FORMAT_VERSION and not (isinstance(version, str) and _UPSTREAM_VERSION.match(version)):
        raise InvalidInput(
            f"unsupported export version {version!r}; expected {FORMAT_VERSION!r} "
            "or an upstream agentmemory 0.x.y export",
            field="exportData.version",
        )


def export_images(export: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(id, mime, bytes) of every image an export carries (evicted ones have no bytes and are
    skipped); raises InvalidInput when an image's bytes do not hash to its id."""
    section = export.get("images") or {}
    if not isinstance(section, dict):
        raise InvalidInput("exportData.images must be an object of id -> image", field="exportData.images")
    found = []
    for image_id, entry in section.items():
        if not isinstance(entry, dict) or entry.get("evicted") or "data" not in entry:
            continue
        try:
            data = base64.b64decode(str(entry["data"]), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                f"exportData.images[{image_id!r}].data is not base64", field="exportData.images"
            ) from None
        if not is_blob_id(image_id) or hashlib.sha256(data).hexdigest() != image_id:
            raise InvalidInput(
                f"exportData.images[{image_id!r}]: the bytes do not hash to the id (sha256)", field="exportData.images"
            )
        found.append((image_id, str(entry.get("mime") or "application/octet-stream"), data))
    return found


def import_export(ctx: Ctx, export: dict[str, Any], strategy: str) -> dict[str, Any]:
    """Import one export document in one transaction (validated before anything is written)."""
    check_version(export)
    records = list(export_records(export))  # validate everything before touching the database
    counts = import_records(ctx, records, strategy, pictures=export_images(export))
    ctx.rt.publish("import", {"strategy": strategy, "counts": counts})
    return import_result(strategy, counts)


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
        if wiping:
            _wipe(ctx, tx, epoch, redis_too=outside is None)
        elif outside is None and any(scope == working_transfer.SECTION for scope, _k, _v in records):
            working_transfer.check_still_on_fallback(ctx.rt, tx)
        if pictures:
            for image_id, mime, data in pictures:  # inside the transaction: the sweep waits for it
                tx.images.put(image_id, mime, data, now)
            counts["images"] = {"imported": len(pictures), "skipped": 0}
        _write_records(tx, records, strategy, counts, stripped=stripped, now=now, epoch=epoch, held=held)
        swap.record(tx)
        tx.audit_message = f"import ({strategy}) of {total} record(s)"
        tx.audit_details = {"strategy": strategy, "counts": counts}
    if stage is None and outside is not None and (held or wiping):
        # Written once the records are committed (a merge's entries, scope by scope).
        outside.import_entries(held or [], strategy, wipe=wiping)
    return counts


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
        if pictures:
            for image_id, mime, data in pictures:
                self.tx.images.put(image_id, mime, data, self.now)
            counts["images"] = {"imported": len(pictures), "skipped": 0}
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
            if held is not None:
                held.append(value)
            else:
                working_transfer.write(tx, value, strategy, now=epoch, stamp=now)
            tally["imported"] += 1
            continue
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


@tool(
    "import",
    params(
        exportData=obj("A document produced by GET /export (or upstream agentmemory's export)"),
        strategy=string(
            "merge: imported records win; skip: keep existing; replace: wipe first", enum=STRATEGIES, default="merge"
        ),
    ),
    http=[("POST", "/import")],
    mcp=False,
    answers_with_records=False,
)
def import_tool(ctx: Ctx, args: dict) -> dict:
    """Import an export; re-indexes everything it writes."""
    export = args.get("exportData")
    if export is None and "version" in args:
        export = {k: v for k, v in args.items() if k != "strategy"}  # the export itself as body
    if not isinstance(export, dict):
        raise InvalidInput("missing required field 'exportData'", field="exportData")
    with transfer_lease.hold(ctx.rt, operation=f"an import ({args['strategy']}) over HTTP"):
        return import_export(ctx, export, args["strategy"])
