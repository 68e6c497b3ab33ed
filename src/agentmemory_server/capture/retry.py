"""Retrying the capture inbox: the background worker and ``POST /capture/retry`` / ``/capture/drain``.

An attempt stores the kept observation exactly as ``/observe`` would have (dedup by event id
included, so an event the client also resent is stored once). A pending entry that fails again
waits twice as long; after ``AGENTMEMORY_CAPTURE_MAX_ATTEMPTS`` it becomes a dead letter.
``/capture/retry`` tries dead letters (all, or one by ``eventId``) and a filtered event by its
``eventId`` (stored despite the filter) at once; ``/capture/drain`` runs every pending entry now
instead of waiting for its turn, and first this node's capture spool (capture/spool.py: events
the database could not take even into the inbox). Upstream drains its hooks' local spool there.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from typing import Any

from agentmemory_server import errors
from agentmemory_server.capture.images import FoundImage
from agentmemory_server.capture.inbox import entry_visible, inbox_service
from agentmemory_server.capture.observe import Prepared, store_observation
from agentmemory_server.capture.sessions import session_end
from agentmemory_server.capture.spool import DatabaseStillDown, UnreadableRecord, spool_service
from agentmemory_server.errors import AppError, InvalidInput, NotFound
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.registry import Ctx, boolean, params, string, tool
from agentmemory_server.kernel.util import truncate

log = logging.getLogger("agentmemory.capture")
BATCH = 100


class RetryWorker:
    """Subsystem ``capture_retry``: runs due retries every retry interval, and drains this node's
    capture spool as often (every node drains its own folder, so that job is not claimed through
    the database)."""

    def __init__(self, rt: Any):
        self.rt = rt
        self.last_run: dict[str, Any] | None = None
        every = rt.settings.capture_retry_interval_ms / 1000
        rt.every(every, "capture_retry", self.run)
        rt.every(every, "capture_spool", self.drain_spool, per_node=True)

    def run(self) -> dict[str, int]:
        ctx = Ctx(self.rt, source="capture_retry")
        due = self.rt.db.reader().inbox.due(self.rt.clock.time(), BATCH)
        outcome = attempt_all(ctx, due, force=False)
        self.last_run = {"at": self.rt.clock.iso(), **outcome}
        return outcome

    def drain_spool(self) -> dict[str, int]:
        return drain_spool(Ctx(self.rt, source="capture_spool"))


def drain_spool(ctx: Ctx, stop: threading.Event | None = None) -> dict[str, int]:
    """Store the events of this node's capture spool, oldest first, while the database takes them
    (and until ``stop`` is set: what is left waits for the next drain)."""

    def apply(record: dict[str, Any]) -> str:
        if stop is not None and stop.is_set():
            raise DatabaseStillDown("the process is stopping")
        work = _spooled_work(ctx, record)  # before anything is tried: a file that is no event is set aside
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - the database still cannot take it: the file waits
            raise DatabaseStillDown(str(getattr(exc, "message", exc))) from exc

    return spool_service(ctx).drain(apply)


def _spooled_work(ctx: Ctx, record: dict[str, Any]) -> Callable[[], str]:
    """What storing a spooled record takes.

    :raise UnreadableRecord: its fields are not those of a spooled event or session end.
    """
    if record["kind"] == "sessionEnd":
        if not isinstance(record.get("sessionId"), str):
            raise UnreadableRecord("a session end without its session id")
        return lambda: _end_spooled_session(ctx, record)
    try:
        entry = record["entry"]
        prepared, agent = _prepared(entry), (entry.get("body") or {}).get("agentId")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # base64 errors are ValueErrors
        raise UnreadableRecord(f"not a spooled event ({type(exc).__name__}: {exc})") from exc
    return lambda: _store_spooled(ctx, prepared, agent)


def _store_spooled(ctx: Ctx, prepared: Prepared, agent: str | None) -> str:
    """``recovered``; ``dead`` when refused for good (kept as a dead letter); ``retrying`` when
    storing failed but the inbox took it (its retries go on from there).

    :raise Exception: the database could take neither (the file waits for the next drain).
    """
    inbox = inbox_service(ctx)
    try:
        store_observation(ctx, prepared.obs, agent, prepared=prepared)
    except AppError as exc:
        if exc.status >= 500:
            inbox.put_pending(ctx, prepared, agent, exc)
            return "retrying"
        inbox.keep_dead(ctx, prepared, agent, exc.message)
        return "dead"
    except Exception as exc:  # noqa: BLE001 - a bug in storing: the inbox retries it
        inbox.put_pending(ctx, prepared, agent, exc)
        return "retrying"
    return "recovered"


def _end_spooled_session(ctx: Ctx, record: dict[str, Any]) -> str:
    """A turn end or session end whose event was spooled, run now that the event is stored."""
    try:
        registry.run(session_end, ctx, {"sessionId": record["sessionId"], "final": bool(record.get("final"))})
    except AppError as exc:
        if exc.status >= 500:
            raise
        log.warning("spooled end of session %s refused: %s", record["sessionId"], exc.message)
        return "dead"
    return "recovered"


def _prepared(entry: dict[str, Any]) -> Prepared:
    body = entry.get("body") or {}
    found = [
        FoundImage(i["id"], i["mime"], base64.b64decode(i["data"]), i.get("path", "")) for i in body.get("images") or []
    ]
    return Prepared(dict(body["obs"]), found)


def attempt(ctx: Ctx, entry: dict[str, Any], *, force: bool) -> str:
    """One try at storing a kept event: ``recovered``, ``waiting`` (will retry) or ``dead``."""
    rt, service = ctx.rt, inbox_service(ctx)
    attempts = 1 if force else int(entry.get("attempts") or 0) + 1
    prepared = _prepared(entry)
    try:
        store_observation(ctx, prepared.obs, (entry.get("body") or {}).get("agentId"), prepared=prepared)
    except Exception as exc:  # noqa: BLE001 - a failed retry is recorded, never raised
        error = truncate(f"{type(exc).__name__}: {getattr(exc, 'message', exc)}", 500)
        permanent = isinstance(exc, errors.AppError) and exc.status < 500
        dead = permanent or attempts >= service.max_attempts
        changes = {"attempts": attempts, "lastError": error, "status": "dead" if dead else "pending"}
        if not dead:
            changes["nextTry"] = rt.clock.time() + service.backoff(attempts)
        with rt.db.transaction("capture_retry") as tx:
            tx.inbox.update(entry["eventId"], changes, rt.clock.iso())
            if dead:
                tx.inbox.trim("dead", service.dead_max)
        service.since_start["deadLettered" if dead else "retried"] += 1
        log.warning("capture retry of %s failed (attempt %d): %s", entry["eventId"], attempts, error)
        return "dead" if dead else "waiting"
    with rt.db.transaction("capture_recovered") as tx:
        tx.inbox.delete(entry["eventId"])
    service.since_start["recovered"] += 1
    return "recovered"


def attempt_all(ctx: Ctx, entries: list[dict[str, Any]], *, force: bool) -> dict[str, int]:
    counts = {"matched": len(entries), "recovered": 0, "dead": 0, "waiting": 0}
    for entry in entries:
        # The periodic run stops once another worker took it up: its entries were read before,
        # and trying one again would spend an attempt the other run already spent.
        ctx.rt.jobs.checkpoint()
        counts[attempt(ctx, entry, force=force)] += 1
    return counts


@tool(
    "capture_retry",
    params(
        eventId=string("The event to retry (a dead letter, a filtered or a pending event)", max_length=128),
        all=boolean("Retry every dead letter"),
        agentId=string("Agent whose entries to retry", max_length=128),
    ),
    http=[("POST", "/capture/retry")],
    mcp=False,
)
def capture_retry(ctx: Ctx, args: dict) -> dict:
    """Try kept events again now: one by eventId (a filtered event is then stored despite the
    filter), or every dead letter with all=true."""
    agent = agent_filter(ctx, args.get("agentId"))
    store = ctx.rt.db.reader()
    if args.get("eventId"):
        entry = store.inbox.get(args["eventId"])
        if not entry_visible(ctx, entry, args.get("agentId")):
            raise NotFound(f"no event {args['eventId']!r} in the capture inbox", code=errors.CAPTURE_EVENT_NOT_FOUND)
        entries = [entry]
    elif args.get("all"):
        ids = store.inbox.event_ids("dead", agent_id=agent, limit=10_000)
        entries = [e for e in (store.inbox.get(i) for i in ids) if entry_visible(ctx, e)]
    else:
        raise InvalidInput("give 'eventId', or 'all': true to retry every dead letter", field="eventId")
    return {"success": True, **attempt_all(ctx, entries, force=True)}


@tool(
    "capture_drain",
    params(agentId=string("Agent whose entries to run", max_length=128)),
    http=[("POST", "/capture/drain")],
    mcp=False,
)
def capture_drain(ctx: Ctx, args: dict) -> dict:
    """Run every pending capture-inbox entry now instead of at its next retry time, after storing
    what waits in this node's capture spool (an admin's drain only: the spool is not kept by agent)."""
    agent = agent_filter(ctx, args.get("agentId"))
    store = ctx.rt.db.reader()
    spooled = drain_spool(ctx) if agent is None else None  # the spool's files are not sorted by agent
    entries, _ = store.inbox.page(status="pending", limit=10_000, offset=0, agent_id=agent)
    entries = [e for e in entries if entry_visible(ctx, e)]
    outcome = attempt_all(ctx, entries, force=False)
    results = [{"source": "server-inbox", **outcome}]
    if spooled is not None:
        results.insert(0, {"source": "server-spool", **spooled})
    return {"success": True, **outcome, "results": results}
