"""Compress a store's observations again with today's capture code (``agentmemory recompress``).

After an upgrade improves how hook payloads are read (titles, files, which events count as
work), the records stored before keep what the older code made of them until this runs. It reads
each session's observations, makes of each stored payload what a capture makes today
(capture/recompress.py) and, unless it is a dry run, rewrites the records that differ and indexes
them again, with the records whose search context held their text. A model's compression and
records without a payload are left as they are.

One session at a time, in short transactions: safe beside a running server, and an interrupted
run can simply be run again (a record already rewritten no longer differs). Each record is read
again inside its transaction, so one deleted or compressed by a model meanwhile is not
overwritten. The search index queues a new vector for every record it indexes; the vector worker
embeds them in the background.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from agentmemory_server import errors
from agentmemory_server.capture.recompress import left_as_is, recompressed
from agentmemory_server.errors import Forbidden
from agentmemory_server.kernel.access import isolated
from agentmemory_server.kernel.registry import Ctx, boolean, integer, params, tool
from agentmemory_server.kernel.scopes import OBSERVATIONS_PREFIX, PROFILES, session_of
from agentmemory_server.memory import summaries
from agentmemory_server.operations.maintenance import Progress, chunked, no_progress
from agentmemory_server.retrieval import search

EXAMPLES = 10  # titles a run shows before and after (of records whose title changes)
FAILED_IDS = 20  # ids of records the capture code could not read, named in the result

log = logging.getLogger("agentmemory.recompress")


def recompress(
    rt: Any, *, dry_run: bool = False, batch: int = 500, progress: Progress = no_progress, examples: int = EXAMPLES
) -> dict[str, Any]:
    """Compress every stored observation again; rewrite (unless ``dry_run``) those that change.
    Returns the counts, the sessions touched and a few titles that change, before and after."""
    counts = rt.db.reader().records.scope_counts(OBSERVATIONS_PREFIX)
    tally: Counter[str] = Counter()
    failed: list[str] = []
    shown: list[dict[str, Any]] = []
    projects: set[str] = set()
    bar = progress("recompress", sum(counts.values()))
    try:
        for scope in sorted(counts):
            records = [value for _key, value in rt.db.reader().records.iter_scope(scope, batch=batch)]
            changes = _changes(records, tally, failed)
            bar.update(len(records))
            if changes:
                tally["sessions"] += 1
                projects.update(str(obs["project"]) for obs in changes.values() if obs.get("project"))
                shown += [_example(obs, changes[obs["id"]]) for obs in records if _retitled(obs, changes)]
                del shown[examples:]
                if not dry_run:
                    tally["rewritten"] += _rewrite_session(rt, scope, records, set(changes), batch, failed)
            # every session, changed now or not: a run interrupted before its summaries were made
            # leaves records that no longer change, and summaries an older release wrote. A dry
            # run reads the records as the run would leave them; a run, as it left them.
            if dry_run:
                now = [changes.get(obs["id"], obs) for obs in records]
            elif changes:
                now = [value for _key, value in rt.db.reader().records.iter_scope(scope, batch=batch)]
            else:
                now = records
            tally["summaries"] += _summary_remade(rt, scope, now, dry_run)
    finally:
        bar.close()
    if not dry_run and (tally["rewritten"] or tally["summaries"]):
        _after_rewrites(rt, projects, tally)
    return _result(tally, shown, failed, dry_run)


def _attempt(obs: dict[str, Any], failed: list[str]) -> dict[str, Any] | None:
    """``recompressed(obs)``; a record the capture code cannot read is named and left as it is,
    and the run goes on (new code meets old data here first)."""
    try:
        return recompressed(obs)
    except Exception:  # noqa: BLE001 - one record must not stop a store's run; it is reported
        log.exception("recompress: observation %s could not be compressed again; left as it is", obs.get("id"))
        if str(obs.get("id")) not in failed:
            failed.append(str(obs.get("id")))
        return None


def _changes(records: list[dict[str, Any]], tally: Counter[str], failed: list[str]) -> dict[str, dict[str, Any]]:
    """id -> the record as today's capture makes it, for the records that differ."""
    changes: dict[str, dict[str, Any]] = {}
    for obs in records:
        tally["examined"] += 1
        if reason := left_as_is(obs):
            tally[reason] += 1
        elif (updated := _attempt(obs, failed)) is not None:
            changes[obs["id"]] = updated
            tally["changed"] += 1
    return changes


def _retitled(obs: dict[str, Any], changes: dict[str, dict[str, Any]]) -> bool:
    return obs["id"] in changes and changes[obs["id"]].get("title") != obs.get("title")


def _example(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": before["id"],
        "sessionId": before.get("sessionId"),
        "before": before.get("title"),
        "after": after.get("title"),
    }


def _in_time_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A session's records oldest first; the id breaks ties so two runs see one order."""
    return sorted(records, key=lambda obs: (str(obs.get("timestamp") or ""), str(obs["id"])))


def _summary_remade(rt: Any, scope: str, records: list[dict[str, Any]], dry_run: bool) -> bool:
    """Make the session's model-less summary again from its records (as they are, or would be
    after a dry run's changes); True when it changes."""
    ordered = _in_time_order(records)
    remade = summaries.remade_without_a_model(rt.db.reader(), session_of(scope), ordered)
    if remade is not None and not dry_run:
        summaries.save_remade(rt, remade)
    return remade is not None


def _to_reindex(records: list[dict[str, Any]], changed: set[str]) -> list[dict[str, Any]]:
    """The changed records in time order, each followed by the records whose search context
    holds its text (the next ``search.CONTEXT_RECORDS`` of its session)."""
    ordered = _in_time_order(records)
    keep: set[int] = set()
    for position, obs in enumerate(ordered):
        if obs["id"] in changed:
            keep.update(range(position, min(position + 1 + search.CONTEXT_RECORDS, len(ordered))))
    return [ordered[position] for position in sorted(keep)]


def _rewrite_session(
    rt: Any, scope: str, records: list[dict[str, Any]], changed: set[str], batch: int, failed: list[str]
) -> int:
    """Rewrite the changed records of one session and index them and their followers again, in
    time order (each record's context is read from the index as it stands); returns how many
    were rewritten."""
    rewritten = 0
    now = rt.clock.iso()
    for chunk in chunked(_to_reindex(records, changed), batch):
        with rt.db.transaction("recompress", agent_id=rt.settings.agent_id) as tx:
            written = 0
            for stale in chunk:
                current = tx.records.get(scope, stale["id"])  # deleted or model-compressed meanwhile?
                if current is None:
                    continue
                updated = _attempt(current, failed) if stale["id"] in changed else None
                if updated is not None:
                    tx.records.set(scope, current["id"], updated, now=now)
                    written += 1
                search.index_record(tx, "observation", updated or current)
            tx.audit_message = f"recompress: {written} observation(s) of session {session_of(scope)} rewritten"
        rewritten += written
    return rewritten


def _after_rewrites(rt: Any, projects: set[str], tally: Counter[str]) -> None:
    """Hand the search engine the new text, drop the cached profiles the old text made, wake
    the vector worker and tell live viewers."""
    rt.db.flush()
    with rt.db.transaction("recompress", agent_id=rt.settings.agent_id) as tx:
        dropped = sum(tx.records.delete(PROFILES, project) for project in sorted(projects))
        tx.audit_message = f"recompress: {dropped} cached profile(s) dropped"
    vectors = rt.services.get("vectors")
    if vectors is not None:
        vectors.notify()
    rt.publish(
        "recompress", {"rewritten": tally["rewritten"], "sessions": tally["sessions"], "summaries": tally["summaries"]}
    )


def _result(tally: Counter[str], shown: list[dict[str, Any]], failed: list[str], dry_run: bool) -> dict[str, Any]:
    return {
        "dryRun": dry_run,
        "examined": tally["examined"],
        "changed": tally["changed"],
        "rewritten": tally["rewritten"],
        "sessions": tally["sessions"],
        "summaries": tally["summaries"],
        "leftAsIs": {
            "modelCompressed": tally["modelCompressed"],
            "noPayload": tally["noPayload"],
            "failed": len(failed),
        },
        "failedIds": failed[:FAILED_IDS],
        "examples": shown,
    }


@tool(
    "recompress",
    params(
        dryRun=boolean("Only count and show what would change; write nothing", default=False),
        examples=integer("Titles to show before and after", minimum=0, maximum=100, default=EXAMPLES),
    ),
    http=[("POST", "/recompress")],
    mcp=False,
    answers_with_records=True,
    right="admin",
)
def recompress_tool(ctx: Ctx, args: dict) -> dict[str, Any]:
    """Compress every stored observation again with the server's current capture code (titles,
    narratives, files), rewriting and re-indexing those that change; a model's compression and
    records without a stored payload are left as they are. ``dryRun`` only reports. For big
    stores prefer ``agentmemory recompress``, which shows progress; ``agentmemory recompress
    --with-model`` asks the model for what was stored without one (not offered here: a request
    would wait for every model call)."""
    if isolated(ctx):
        raise Forbidden(
            "recompress touches every agent's records; not available in isolated agent scope",
            code=errors.AGENT_SCOPE_VIOLATION,
        )
    return recompress(ctx.rt, dry_run=args.get("dryRun", False), examples=args.get("examples", EXAMPLES))
