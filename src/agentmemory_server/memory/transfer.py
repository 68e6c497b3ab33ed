"""Export and import of everything the server holds.

The export keeps upstream's top-level shape for the core records (``sessions``,
``observations`` by session, ``memories``, ``summaries``) and carries every other scope
verbatim under ``kv``, so nothing is lost and export -> import into an empty DB -> export gives
the same document (apart from ``exportedAt``). Working memory (its own tables) travels in
``working``, one entry per scope (``working_transfer``). The images the exported records reference travel
in ``images`` (id -> mime, bytes, base64 data; an image the quota evicted is listed without data).
Imports of upstream agentmemory exports are accepted too; their extra lists are mapped onto our
scopes.

This module holds the document: its format, writing it (``write_export``, to one of the sinks in
``transfer_sinks.py``), reading and validating it (``export_records``, ``export_images``), and
the two tools. Writing an import's records into the store (the strategies, the replace stream)
is ``transfer_import.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel import scopes
from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.registry import AGENT_ID, Ctx, integer, obj, params, string, tool
from agentmemory_server.kernel.scopes import MEMORIES, SESSIONS, SUMMARIES, is_obs_scope, obs_scope, session_of
from agentmemory_server.memory import transfer_lease, working_transfer
from agentmemory_server.memory.transfer_import import import_records, import_result
from agentmemory_server.memory.transfer_sinks import Sink, TreeSink
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
    right="admin",
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
    right="admin",
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
