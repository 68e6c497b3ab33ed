"""Moving a store between backends: ``agentmemory migrate --to postgresql://...`` (or back to a
SQLite file).

The records travel as the JSON Lines export (``maintenance.stream_export``) and are written by
the JSON Lines import (``maintenance.import_lines``, strategy merge), so a migration is exactly
an export and an import, with the same validation. The export is spooled to a file in the data
directory first; a state file beside it records how many lines the target already holds, so an
interrupted migration resumes where it stopped (merge makes a repeated batch harmless). Then
the record counts of every scope are compared and a sample of records is read back from both
stores and compared, and so is every scope of working memory. Search rows are rebuilt by the
import; vectors are queued and embedded by the target's background worker.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from agentmemory_server.errors import Conflict
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.memory import working_transfer
from agentmemory_server.operations import maintenance
from agentmemory_server.operations.maintenance import Progress, no_progress

SAMPLE = 200


def spool_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "migrate.jsonl", data_dir / "migrate.state.json"


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def migrate(
    source: Any, target: Any, data_dir: Path, *, progress: Progress = no_progress, batch: int = 5000
) -> dict[str, Any]:
    """Copy every record of the ``source`` runtime into the ``target`` runtime, resumably, and
    verify the result. Returns counts, timings and the verification.

    :raise Conflict: the verification found a difference (the spool and state are kept).
    """
    spool, state_path = spool_paths(data_dir)
    state = read_state(state_path)
    if state.get("source") != source.db.location or state.get("target") != target.db.location:
        state = {"source": source.db.location, "target": target.db.location, "exported": False, "imported": 0}
    started = time.perf_counter()
    if not state["exported"] or not spool.exists():
        partial = spool.with_name(spool.name + ".partial")
        with open(partial, "w", encoding="utf-8") as out:
            state["export"] = maintenance.stream_export(source, out, progress=progress, lines=True)
        partial.replace(spool)
        state.update(exported=True, imported=0)
        state_path.write_text(json.dumps(state))
    exported = time.perf_counter()

    def remember(line: int) -> None:
        state["imported"] = line
        state_path.write_text(json.dumps(state))

    result = maintenance.import_lines(
        Ctx(target, source="cli"),
        spool,
        "merge",
        batch=batch,
        progress=progress,
        skip_lines=int(state.get("imported") or 0),
        on_batch=remember,
    )
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
        "exportSeconds": round(exported - started, 2),
        "importSeconds": round(imported - exported, 2),
        "recordsPerSecond": round(records / max(imported - started, 1e-9)),
        "verified": check,
    }


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
    working = _verify_working(src, dst, source.clock.now().timestamp())
    return {
        "ok": not differ and not mismatched and not working["mismatches"],
        "counts": counts,
        "countMismatches": differ,
        "sampled": len(picked),
        "sampleMismatches": mismatched[:20],
        "working": working,
    }


def _verify_working(src: Any, dst: Any, now: float) -> dict[str, Any]:
    """Every scope of working memory reads back the same from the target (keys, task,
    scratchpad, checkpoints): it lives outside the records, so the record counts miss it."""

    def every(store: Any) -> dict[str, dict[str, Any]]:
        return {
            working_transfer.scope_key((e["project"], e["agentId"], e["sessionId"])): e
            for e in working_transfer.export_entries(store, now, lambda _agent: True)
        }

    ours, theirs = every(src), every(dst)
    return {"scopes": len(ours), "mismatches": sorted(k for k, e in ours.items() if theirs.get(k) != e)[:20]}
