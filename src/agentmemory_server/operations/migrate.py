"""Moving a store between backends: ``agentmemory migrate --to postgresql://...`` (or back to a
SQLite file). It holds the lease of both stores (``memory/transfer_lease.py``): no import into
either runs meanwhile, nor another migration.

The records travel as the JSON Lines export (``maintenance.stream_export``) and are written by
the JSON Lines import (``maintenance.import_lines``, strategy merge), so a migration is exactly
an export and an import, with the same validation. The export is spooled to a file in the data
directory first; a state file beside it records how many lines the target already holds, so an
interrupted migration resumes where it stopped (merge makes a repeated batch harmless). The state
names the target by an id the run stores in it (``target_id``): a target deleted by hand and made
again by the next run has none, so that run starts over instead of skipping lines the old target
held. So does a run whose state file counts imported lines but names no target (written before
targets got an id): nothing shows the target there now holds them. Then
the record counts of every scope are compared and a sample of records is read back from both
stores and compared, and so is every scope of working memory. Search rows are rebuilt by the
import; vectors are queued and embedded by the target's background worker.

Working memory is moved after the records, from where the source keeps it (its database's
tables, or Redis with ``WORKING_MEMORY_BACKEND=redis``) to where the target will keep it (its
database, or a Redis: ``--to-redis``), read and written directly: a Redis that does not answer is
an error naming it, checked before anything is written, never a silent fallback to the
database's tables. A target that keeps it in the same Redis keys as the source (one server,
database and prefix) shares it: nothing is copied onto itself. Writing it is a merge, so a run
interrupted there is simply run again.

A run refused before it writes a record (a Redis that does not answer, a source on the Redis
fallback, an import or migration holding either store, ...) leaves no new SQLite target behind:
``removed_unless_written`` takes away the database file and the sidecars that opening it made
(``-wal``, ``-shm``, ``.writer-lock``, ``.startup-check``, ``.tantivy/``, the generated
``secret``, the directories made for it). A target that was there before is left as it was.
That is done by ``migrate`` itself whenever it opens the target (its ``target`` is the target's
Settings, as from the CLI); a target runtime a Python caller opened is the caller's to remove.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentmemory_server.errors import AppError, Conflict, Unavailable
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.memory import transfer_lease, working_transfer
from agentmemory_server.memory.working_transfer import RESERVED_SCOPE
from agentmemory_server.operations import maintenance
from agentmemory_server.operations.maintenance import Progress, no_progress

log = logging.getLogger("agentmemory.migrate")
SAMPLE = 200
SOURCE_HINT = (
    "Start it, or set WORKING_MEMORY_BACKEND=sqlite to migrate without the working memory it holds (then lost to "
    "the target)"
)
TARGET_HINT = "Start it, or name another with --to-redis URL (--to-redis none: the target's database keeps it)"
RERUN = (
    "Every record is in the target; run the same `agentmemory migrate` again once Redis answers: it resumes, and "
    "working memory written again doubles nothing"
)


# Where a target keeps the id its migration state names it by: the store's own state, which never travels.
TARGET_ID_KEY = "_migration_target"


def spool_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "migrate.jsonl", data_dir / "migrate.state.json"


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


class NewTarget:
    """A SQLite target's files as they were before the run; ``written`` is set once the run
    starts writing records into it (from then on it is kept, to resume into)."""

    def __init__(self, database: Path, secret: Path):
        self.database, self.secret = database, secret
        self.existed = database.exists()
        self.written = False
        # The directories above the file that are not there yet: opening the store makes them.
        self.missing_dirs = [d for d in database.parents if not d.exists()]
        self.before = self._made_by_opening()

    def _made_by_opening(self) -> set[Path]:
        """The database file, its sidecars (``<db>-wal``, ``<db>.writer-lock``, ``<db>.tantivy``,
        ...) and the generated secret, those there now."""
        found = {self.secret} if self.secret.exists() else set()
        parent, name = self.database.parent, self.database.name
        if parent.is_dir():
            found |= {
                entry
                for entry in parent.iterdir()
                if entry.name == name or entry.name.startswith((f"{name}.", f"{name}-"))
            }
        return found

    def remove_what_the_run_made(self) -> None:
        """Remove the files and directories that opening the target made (run after it is
        closed). Of a target that was there before, only a secret generated for it: its own
        sidecars may be in use by a server of its own."""
        made = self._made_by_opening() - self.before
        if self.existed:
            made &= {self.secret}
        for path in sorted(made):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for directory in self.missing_dirs:  # deepest first; one holding anything else stays
            with contextlib.suppress(OSError):
                os.rmdir(directory)


@contextlib.contextmanager
def removed_unless_written(target: NewTarget | None) -> Iterator[None]:
    """Around opening, migrating into and closing a target: an error before the run wrote a
    record into it (a refusal) removes the new SQLite target it leaves (``NewTarget``)."""
    try:
        yield
    except BaseException:
        if target is not None and not target.written:
            target.remove_what_the_run_made()
        raise


def migrate(
    source: Any,
    target: Any,
    data_dir: Path,
    *,
    progress: Progress = no_progress,
    batch: int = 5000,
) -> dict[str, Any]:
    """Copy every record of the ``source`` runtime into the ``target`` store, resumably, and
    verify the result. Returns counts, timings and the verification.

    :param target: the target's ``Settings``: opened here as ``source`` was built (role tool:
        a Redis that does not answer is an error, never a fallback), closed at the end, and
        removed again if it is a SQLite file this run created and the run is refused before it
        writes a record. Or a runtime the caller opened (and closes, and removes if it wants).
    :raise Conflict: the verification found a difference (the spool and state are kept), or an
        import or another migration of either store runs (``transfer_lease``; nothing was done).
    """
    if not isinstance(target, Settings):
        return _migrate_leased(source, target, data_dir, progress=progress, batch=batch, new_target=None)
    # Noted before opening it makes the file, its sidecars, its secret and its directories.
    new_target = None if target.database_url else NewTarget(target.database_path, target.secret_path)
    with removed_unless_written(new_target):
        opened = source.built_alike(target, role="tool")
        try:
            return _migrate_leased(source, opened, data_dir, progress=progress, batch=batch, new_target=new_target)
        finally:
            opened.close()


def _migrate_leased(
    source: Any, target: Any, data_dir: Path, *, progress: Progress, batch: int, new_target: NewTarget | None
) -> dict[str, Any]:
    # Checked before the leases: a refused run writes nothing into either store, not even a lease.
    source.services["working_memory"].require_reachable("source", SOURCE_HINT)
    target.services["working_memory"].require_reachable("target", TARGET_HINT)
    running = f"a migration from {source.db.location} to {target.db.location}"
    with transfer_lease.hold(source, target, operation=running):
        return _migrate(source, target, data_dir, progress=progress, batch=batch, new_target=new_target)


def _migrate(
    source: Any, target: Any, data_dir: Path, *, progress: Progress, batch: int, new_target: NewTarget | None
) -> dict[str, Any]:
    spool, state_path = spool_paths(data_dir)
    target_id = stored_target_id(target)
    state = _resumable_state(state_path, source, target, target_id)
    started = time.perf_counter()
    if not state["exported"] or not spool.exists():
        _export_to_spool(source, spool, state, state_path, progress)
    exported = time.perf_counter()
    if new_target is not None:
        new_target.written = True
    state["targetId"] = target_id or store_target_id(target)
    state_path.write_text(json.dumps(state))
    result = _import_spool(target, spool, state, state_path, batch=batch, progress=progress)
    working = move_working(source, target)
    imported = time.perf_counter()
    check = verify(source, target)
    if not check["ok"]:
        raise Conflict(f"migration verification failed: {json.dumps(check)[:500]}")
    spool.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    records = sum(check["counts"].values())
    return {
        "from": source.db.location,
        "to": target.db.location,
        "records": records,
        "import": result,
        "workingMemory": working,
        "exportSeconds": round(exported - started, 2),
        "importSeconds": round(imported - exported, 2),
        "recordsPerSecond": round(records / max(imported - started, 1e-9)),
        "verified": check,
    }


def _import_spool(
    target: Any, spool: Path, state: dict[str, Any], state_path: Path, *, batch: int, progress: Progress
) -> dict[str, Any]:
    """Merge the spool's lines into the target from the line the last run reached, saving the
    line reached after each batch (a stopped run resumes there)."""

    def remember(line: int) -> None:
        state["imported"] = line
        state_path.write_text(json.dumps(state))

    return maintenance.import_lines(
        Ctx(target, source="cli"),
        spool,
        "merge",
        batch=batch,
        progress=progress,
        skip_lines=int(state.get("imported") or 0),
        on_batch=remember,
    )


def _resumable_state(state_path: Path, source: Any, target: Any, target_id: str | None) -> dict[str, Any]:
    """The state file's progress when it is of this source and this very target, else a fresh start."""
    state = read_state(state_path)
    fresh = {"source": source.db.location, "target": target.db.location, "exported": False, "imported": 0}
    if state.get("source") != source.db.location or state.get("target") != target.db.location:
        return fresh
    if not state.get("targetId"):
        if not state.get("imported"):
            return state  # its export, if made, is the source's; it counts no line into any target
        # Written before the target got an id (by an older version): nothing proves the target
        # there now is the one holding the lines it counts (it may have been deleted and made again).
        log.warning(
            "migrate: the state file %s counts %s lines imported but names no target id, so nothing shows that "
            "%s is the target that holds them; starting over and migrating the target whole",
            state_path,
            state["imported"],
            target.db.location,
        )
        return fresh
    if state["targetId"] != target_id:  # another target at that place: this one holds nothing of it
        log.warning(
            "migrate: %s is not the target the state file %s describes (the id stored in it is not the one the "
            "state names); starting over and migrating the target whole",
            target.db.location,
            state_path,
        )
        return fresh
    return state


def _export_to_spool(source: Any, spool: Path, state: dict[str, Any], state_path: Path, progress: Progress) -> None:
    """Export the source into the spool file, which appears only once complete (a partial file
    is never taken for an export), and record it in the state file."""
    partial = spool.with_name(spool.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        state["export"] = maintenance.stream_export(source, out, progress=progress, lines=True, with_working=False)
    partial.replace(spool)
    state.update(exported=True, imported=0)
    state_path.write_text(json.dumps(state))


def stored_target_id(target: Any) -> str | None:
    """The id a migration stored in ``target`` (None: no migration has written into it yet)."""
    row = target.db.reader().working.kv_get(RESERVED_SCOPE, TARGET_ID_KEY, 0.0)
    return None if row is None else str(json.loads(row[0]))


def store_target_id(target: Any) -> str:
    """Give ``target`` an id of its own for the migration state to name it by; returns it."""
    target_id = uuid.uuid4().hex
    with target.db.transaction("migrate_target_id") as tx:
        tx.working.kv_put_many(RESERVED_SCOPE, [(TARGET_ID_KEY, json.dumps(target_id), None)], target.clock.iso())
    return target_id


def verify(source: Any, target: Any, sample: int = SAMPLE) -> dict[str, Any]:
    """Every scope of the source has as many records in the target, and a random sample of
    records reads back equal."""
    src, dst = source.db.reader(), target.db.reader()
    counts = src.records.scope_counts()
    theirs = dst.records.scope_counts()
    differ = {scope: [n, theirs.get(scope, 0)] for scope, n in counts.items() if theirs.get(scope, 0) != n}
    picked: list[tuple[str, str]] = []
    rng = random.Random(20261205)
    for scope in rng.sample(sorted(counts), min(len(counts), 20)):
        keys = [k for k, _v in src.records.iter_scope(scope, batch=1000)]
        picked += [(scope, k) for k in rng.sample(keys, min(len(keys), max(1, sample // 20)))]
    mismatched = [
        f"{scope}/{key}" for scope, key in picked if src.records.get(scope, key) != dst.records.get(scope, key)
    ]
    working = _verify_working(source, target)
    return {
        "ok": not differ and not mismatched and not working["mismatches"],
        "counts": counts,
        "countMismatches": differ,
        "sampled": len(picked),
        "sampleMismatches": mismatched[:20],
        "working": working,
    }


def _tally(entries: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "scopes": len(entries),
        "keys": sum(len(e["keys"]) for e in entries),
        "tasks": sum(1 for e in entries if e["task"] is not None),
        "scratchpadEntries": sum(len(e["scratchpad"]) for e in entries),
        "checkpoints": sum(len(e["checkpoints"]) for e in entries),
    }


def _key(entry: dict[str, Any]) -> str:
    return working_transfer.scope_key((entry["project"], entry["agentId"], entry["sessionId"]))


def _every_entry(service: Any, now: float) -> dict[str, dict[str, Any]]:
    """Every scope of working memory where ``service`` keeps it: Redis's, then the database's
    scopes Redis does not hold (what a fallback left that has not moved yet), as the export."""
    in_redis, in_database = service.held_entries(now)
    found = {_key(e): e for e in in_redis}
    for entry in in_database:
        found.setdefault(_key(entry), entry)
    return found


def move_working(source: Any, target: Any) -> dict[str, Any]:
    """Copy the source's working memory to where the target keeps it; returns what moved.

    :raise Unavailable: Redis failed (the message says how far the copy got)."""
    ours, theirs = source.services["working_memory"], target.services["working_memory"]
    now = source.clock.time()
    moved: dict[str, Any] = {"from": ours.where(), "to": theirs.where()}
    try:
        if ours.shares_keys_with(theirs):
            in_redis, in_database = ours.held_entries(now)
            note = (
                "the target keeps working memory in the same Redis keys as the source: "
                f"its {len(in_redis)} session scope(s) there stay, shared by both stores"
            )
            if in_database:
                note += (
                    f"; {len(in_database)} scope(s) a Redis fallback left in the source's database move to that "
                    "Redis at the source's next sweep"
                )
            return {**moved, "moved": False, **_tally(in_redis), "note": note}
        entries = list(_every_entry(ours, now).values())
        theirs.write_entries(entries, now)
    except Unavailable as exc:
        raise Unavailable(f"{exc.message}. {RERUN}", code=exc.code) from None
    return {**moved, "moved": True, **_tally(entries)}


def _verify_working(source: Any, target: Any) -> dict[str, Any]:
    """Every scope of working memory reads back the same from where the target keeps it (keys,
    task, scratchpad, checkpoints): it lives outside the records, so the record counts miss it."""
    ours, theirs = source.services["working_memory"], target.services["working_memory"]
    now = source.clock.time()
    try:
        if ours.shares_keys_with(theirs):
            return {"scopes": len(ours.held_entries(now)[0]), "mismatches": [], "shared": ours.where()}
        mine, yours = _every_entry(ours, now), _every_entry(theirs, now)
    except AppError as exc:
        return {"scopes": 0, "mismatches": [f"could not read working memory: {exc.message}"]}
    return {"scopes": len(mine), "mismatches": sorted(k for k, e in mine.items() if yours.get(k) != e)[:20]}
