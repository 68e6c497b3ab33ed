"""The capture inbox: hook events that did not become an observation, kept so none is lost silently.

Upstream 0.9.30 stores every event in an inbox before processing it. Here an event is processed
in one transaction with its observation, so the inbox holds only the events that did not make it:

- ``pending``: storing failed (a bug, a full disk, a locked database): retried in the background
  every ``AGENTMEMORY_CAPTURE_RETRY_INTERVAL_MS``, doubling, up to
  ``AGENTMEMORY_CAPTURE_MAX_ATTEMPTS``; then ``dead``. The client got 202 (accepted, retrying).
  When the database cannot take the entry either (it does not answer, or refuses writes), the
  event waits in this node's capture spool on disk instead (capture/spool.py; 202 ``spooled``).
- ``dead``: out of attempts, or refused for good (the session already holds
  MAX_OBS_PER_SESSION observations; the client got the 409). ``POST /capture/retry`` tries again.
- ``filtered``: a capture filter refused its tool (``AGENTMEMORY_CAPTURE_ALLOW``/``DENY``); the
  client got 202. ``POST /capture/retry`` with its ``eventId`` stores it anyway.

Entries hold the prepared observation (privacy-stripped, fields cut), never the raw payload.
Dead and filtered entries are capped at ``AGENTMEMORY_CAPTURE_DEAD_MAX`` each (oldest go first);
pending ones at ``AGENTMEMORY_CAPTURE_INBOX_MAX`` (beyond it a failing event gets 503, which
upstream's hooks answer by keeping the event in their own spool). The counters of what the
pipeline changed (unknown hook types, cut fields, images, filtered tools) live here too.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentmemory_server import errors
from agentmemory_server.capture.filters import ToolFilter
from agentmemory_server.capture.spool import SpoolRefused, spool_service
from agentmemory_server.errors import AppError, Unavailable
from agentmemory_server.kernel.access import agent_filter, stamp_agent, token_limits_projects, visible_to
from agentmemory_server.kernel.registry import AGENT_ID, Ctx, Reply, integer, params, string, tool
from agentmemory_server.kernel.util import iso, truncate

log = logging.getLogger("agentmemory.capture")
STATUSES = ("pending", "dead", "filtered")
MAX_BACKOFF_SECONDS = 15 * 60
# How long a process sends events straight to the spool after its write found the lock taken or
# the store not answering, unless one of its writes commits sooner (background threads commit
# every few seconds) or one of its events, sent to try the store, is stored (a probe, below).
BUSY_MEMORY_SECONDS = 30.0
# Meanwhile one event at a time tries the store (the others go to the spool): the first a second
# after the failure, each next one twice as long after the last one failed, up to
# PROBE_MAX_SECONDS. A store back after a short restart takes events again within a second or
# two, not 30; one that stays down is asked about once every PROBE_MAX_SECONDS by one event.
PROBE_FIRST_SECONDS = 1.0
PROBE_MAX_SECONDS = 16.0


@dataclass
class _Outage:
    """What this process knows of a store that did not take its last write."""

    noted: float  # monotonic: the last time a write of this process found it so
    error: AppError  # what that write heard (the spooled events' reason)
    wait: float  # seconds from a failed probe to the next one (doubling, up to PROBE_MAX_SECONDS)
    next_probe: float  # rt.clock time from which the next event may try the store
    prober: int | None = None  # the thread whose event tries the store now, if any


class CaptureInbox:
    """Subsystem ``capture``: the tool filter, the inbox bookkeeping and its counters."""

    def __init__(self, rt: Any):
        self.rt = rt
        settings = rt.settings
        self.tool_filter = ToolFilter.from_settings(settings.capture_allow, settings.capture_deny)
        self.max_attempts = settings.capture_max_attempts
        self.interval = settings.capture_retry_interval_ms / 1000
        self.inbox_max = settings.capture_inbox_max
        self.dead_max = settings.capture_dead_max
        self.since_start: Counter = Counter()
        # The store did not take a write of this process (its write lock stayed taken past the
        # wait, or it did not answer): events spool straight away, but for the probes.
        self._outage: _Outage | None = None
        self._outage_lock = threading.Lock()  # request threads share it

    def note_busy(self, exc: Exception) -> bool:
        """Remember a write refused because the store could not take it (``waits_for_the_store``:
        its write lock stayed taken, ``database_busy``, or it does not answer, a PostgreSQL
        restart or outage); whether ``exc`` was one. A probe that failed so sets the next one
        back by the probes' (growing) wait."""
        if errors.waits_for_the_store(exc):
            self._note_outage(exc)
            return True
        return False

    def _note_outage(self, exc: AppError) -> None:
        with self._outage_lock:
            outage, now = self._outage, self.rt.clock.time()
            if outage is None:
                self._outage = _Outage(time.monotonic(), exc, PROBE_FIRST_SECONDS, now + PROBE_FIRST_SECONDS)
                return
            outage.noted, outage.error = time.monotonic(), exc
            if outage.prober == threading.get_ident():
                outage.prober, outage.next_probe = None, now + outage.wait

    def recently_busy(self) -> AppError | None:
        """The busy or outage error of the last BUSY_MEMORY_SECONDS, if no write of this process
        has committed since: another wait for the same lock would most likely end the same way,
        after the client has given up, and a store that did not answer is most likely still
        restarting. Its events wait in the spool meanwhile (drained within the retry interval
        once the database takes them). None also for the one event whose turn it is to try the
        store (``probe_over`` ends its turn): it finds out whether the store answers again."""
        with self._outage_lock:
            outage = self._outage
            if outage is None:
                return None
            if time.monotonic() - outage.noted > BUSY_MEMORY_SECONDS or self.rt.db.last_write > outage.noted:
                self._outage = None
                return None
            now = self.rt.clock.time()
            if outage.prober is not None or now < outage.next_probe:
                return outage.error
            outage.prober, outage.wait = threading.get_ident(), min(outage.wait * 2, PROBE_MAX_SECONDS)
            outage.next_probe = now + outage.wait  # until it fails (``note_busy``) or is over
        self.since_start["storeProbes"] += 1
        return None

    def store_answered(self, tried_at: float) -> None:
        """An event that began trying the store at ``tried_at`` (monotonic) was stored, or found
        stored (a duplicate, which commits nothing): the store takes writes again, and the
        events after it try it directly (the spool drains after a commit, or at the worker's next
        retry interval)."""
        with self._outage_lock:
            if self._outage is not None and self._outage.noted < tried_at:
                self._outage = None

    def probe_over(self) -> None:
        """The event of this thread tried the store (if it was its turn): the next event may try
        it once the wait is over, whatever this one met (a refusal that was not the store's)."""
        with self._outage_lock:
            if self._outage is not None and self._outage.prober == threading.get_ident():
                self._outage.prober = None

    def spool_while_busy(self, ctx: Ctx, prepared: Any, agent_given: str | None, busy: AppError) -> Reply | None:
        """Keep an event in the spool without waiting for the lock again; None when the spool
        cannot take it (then the caller tries the database after all)."""
        entry = self.pending_entry(ctx, prepared, agent_given, busy)
        try:
            return spool_service(ctx).keep_observation(entry, busy, durability(ctx, self.rt.clock.iso()))
        except SpoolRefused:
            return None

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones."""
        return min(self.interval * 2 ** max(0, attempts - 1), MAX_BACKOFF_SECONDS)

    # -- keeping events ------------------------------------------------------------------------

    def _entry(self, ctx: Ctx, obs: dict[str, Any], agent_given: str | None, status: str, reason: str) -> dict:
        raw = obs.get("raw") if isinstance(obs.get("raw"), dict) else {}
        return {
            "eventId": obs["eventId"],
            "status": status,
            "reason": truncate(reason, 500),
            "sessionId": obs["sessionId"],
            "hookType": obs.get("originalHookType") or obs.get("hookType"),
            "toolName": obs.get("toolName") or (raw or {}).get("tool_name"),
            "agentId": stamp_agent(ctx, agent_given),
            "body": {"obs": obs, "agentId": agent_given},
        }

    def keep_filtered(self, ctx: Ctx, obs: dict[str, Any], agent_given: str | None, reason: str) -> Reply:
        """Keep an event a capture filter refused; its images are not stored."""
        obs = {k: v for k, v in obs.items() if k not in ("images", "imageRef", "modality")}
        entry = self._entry(ctx, obs, agent_given, "filtered", f"tool {obs.get('toolName')!r} refused: {reason}")
        now = self.rt.clock.iso()
        with self.rt.db.transaction("capture_filtered", agent_id=entry["agentId"]) as tx:
            tx.inbox.put(entry, now)
            tx.inbox.bump("filtered_tool", str(entry["toolName"])[:64], now)
            tx.inbox.trim("filtered", self.dead_max)
        self.since_start["filtered"] += 1
        return Reply(
            {
                "success": True,
                "stored": False,
                "filtered": True,
                "reason": entry["reason"],
                "eventId": obs["eventId"],
                "sessionId": obs["sessionId"],
                "hint": "GET /agentmemory/capture lists it; POST /agentmemory/capture/retry {eventId} stores it anyway",
                **durability(ctx, now),
            },
            202,
        )

    def keep_dead(self, ctx: Ctx, prepared: Any, agent_given: str | None, reason: str) -> None:
        """Keep an event refused for good (the client hears the refusal itself)."""
        entry = self._entry(ctx, prepared.obs, agent_given, "dead", reason)
        entry["body"]["images"] = _encoded(prepared.images)
        with self.rt.db.transaction("capture_dead_letter", agent_id=entry["agentId"]) as tx:
            tx.inbox.put(entry, self.rt.clock.iso())
            tx.inbox.trim("dead", self.dead_max)
        self.since_start["deadLettered"] += 1

    def keep_for_retry(self, ctx: Ctx, prepared: Any, agent_given: str | None, exc: Exception) -> Reply:
        """Keep an event whose storing failed, for the background retry. When the database cannot
        take it either, it waits in this node's capture spool; 503 when neither can keep it."""
        if self.note_busy(exc):
            # The inbox is in the same database, behind the same lock (or as unreachable):
            # another try would end the same way, after the agent's hook gave up. The spool
            # keeps it at once.
            return self._spool(ctx, prepared, agent_given, exc, exc)
        try:
            entry = self.put_pending(ctx, prepared, agent_given, exc)
        except Unavailable as refused:
            if refused.code == errors.CAPTURE_INBOX_FULL:
                self.since_start["rejected"] += 1
                raise
            return self._spool(ctx, prepared, agent_given, exc, refused)
        except Exception as second:  # noqa: BLE001 - the database refuses writes: the spool may keep it
            return self._spool(ctx, prepared, agent_given, exc, second)
        self.since_start["retrying"] += 1
        return Reply(
            {
                "success": True,
                "accepted": True,
                "retrying": True,
                "stored": False,
                "eventId": entry["eventId"],
                "sessionId": entry["sessionId"],
                "error": entry["reason"],
                **durability(ctx, self.rt.clock.iso()),
            },
            202,
        )

    def put_pending(self, ctx: Ctx, prepared: Any, agent_given: str | None, exc: Exception) -> dict[str, Any]:
        """The inbox entry of a failed event, written as ``pending`` (first retry after one backoff).

        :raise Unavailable: the inbox is full (``capture_inbox_full``), or the database failed.
        """
        entry = self.pending_entry(ctx, prepared, agent_given, exc)
        with self.rt.db.transaction("capture_retry_later", agent_id=entry["agentId"]) as tx:
            if tx.inbox.summary()["byStatus"].get("pending", 0) >= self.inbox_max:
                raise Unavailable(
                    f"storing the event failed and the capture inbox is full (AGENTMEMORY_CAPTURE_INBOX_MAX="
                    f"{self.inbox_max}); resend it later",
                    code=errors.CAPTURE_INBOX_FULL,
                )
            tx.inbox.put(entry, self.rt.clock.iso())
        return entry

    def pending_entry(self, ctx: Ctx, prepared: Any, agent_given: str | None, exc: Exception) -> dict[str, Any]:
        entry = self._entry(ctx, prepared.obs, agent_given, "pending", f"{type(exc).__name__}: {_message(exc)}")
        entry.update(attempts=1, nextTry=self.rt.clock.time() + self.backoff(1), lastError=entry["reason"])
        entry["body"]["images"] = _encoded(prepared.images)
        return entry

    def _spool(self, ctx: Ctx, prepared: Any, agent_given: str | None, exc: Exception, second: Exception) -> Reply:
        entry = self.pending_entry(ctx, prepared, agent_given, exc)
        try:
            return spool_service(ctx).keep_observation(entry, second, durability(ctx, self.rt.clock.iso()))
        except SpoolRefused as third:
            self.since_start["rejected"] += 1
            log.error(
                "could not keep event %s in the capture inbox (%s): %s", entry["eventId"], _message(second), third
            )
            if isinstance(exc, AppError) and exc.status >= 500:
                raise exc from second  # what went wrong first names the cause (a full disk, a database gone)
            raise Unavailable(
                "the server could not store the event; resend it later", code=errors.UNAVAILABLE
            ) from second

    # -- reports -----------------------------------------------------------------------------------

    def status(self, agent: str | None = None) -> dict[str, Any]:
        store = self.rt.db.reader()
        summary = store.inbox.summary(agent)
        counts = {status: summary["byStatus"].get(status, 0) for status in STATUSES}
        return {
            "inbox": {
                **counts,
                "oldestPendingAt": summary["oldestPendingAt"],
                "nextAttemptAt": _iso(summary["nextTry"]),
                "lastError": summary["lastError"],
            },
            "policy": {
                "maxAttempts": self.max_attempts,
                "retryIntervalMs": int(self.interval * 1000),
                "inboxMax": self.inbox_max,
                "deadMax": self.dead_max,
            },
            "filters": {**self.tool_filter.describe(), "outputMax": self.rt.settings.capture_output_max},
            "counts": store.inbox.counters() if agent is None else {},
            "sinceStart": dict(self.since_start),
        }

    def health(self) -> dict[str, Any]:
        status = self.status()
        inbox = status["inbox"]
        return {
            "status": "degraded" if inbox["pending"] >= self.inbox_max else "ok",
            "pending": inbox["pending"],
            "dead": inbox["dead"],
            "filtered": inbox["filtered"],
            "unknownHookTypes": sum(status["counts"].get("unknown_hook", {}).values()),
            "truncatedFields": sum(status["counts"].get("truncated", {}).values()),
        }


def durability(ctx: Ctx, now: str) -> dict[str, Any]:
    """What upstream 0.9.30 clients read from a 2xx: the server's boot id (a new one after a
    restart) and how long to keep the event locally (0: a commit is on disk)."""
    return {"bootId": ctx.rt.hub.epoch, "acceptedAt": now, "durableAfterMs": 0}


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc)


def _encoded(images: list[Any]) -> list[dict[str, Any]]:
    """Images of a kept event, as base64 (only events that failed carry them)."""
    return [{"id": i.id, "mime": i.mime, "path": i.path, "data": base64.b64encode(i.data).decode()} for i in images]


def _iso(epoch: float | None) -> str | None:
    return iso(datetime.fromtimestamp(epoch, UTC)) if epoch else None


def inbox_service(ctx: Ctx) -> CaptureInbox:
    service: CaptureInbox = ctx.rt.services["capture"]
    return service


# Entries a token limited to some projects has listed (filtered here: the inbox keeps no
# project column); the inbox holds at most AGENTMEMORY_INBOX_MAX + the dead letters.
PROJECT_SCAN_LIMIT = 20_000


def entry_visible(ctx: Ctx, entry: dict[str, Any] | None, requested_agent: str | None = None) -> bool:
    """Whether the caller may see or retry an inbox entry: its agent, and the project of the
    event it holds (kernel/access.visible_to)."""
    if entry is None:
        return False
    obs = (entry.get("body") or {}).get("obs") or {}
    return visible_to(ctx, {"agentId": entry.get("agentId"), "project": obs.get("project")}, requested_agent)


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    """An inbox entry as listed: a preview instead of the whole stored observation."""
    obs = (entry.get("body") or {}).get("obs") or {}
    preview = f"{entry.get('toolName') or entry.get('hookType')}: {obs.get('title') or ''}"
    return {
        **{k: v for k, v in entry.items() if k not in ("body", "nextTry")},
        "nextAttemptAt": _iso(entry.get("nextTry")) if entry.get("status") == "pending" else None,
        "preview": truncate(preview, 160),
        "images": len((entry.get("body") or {}).get("images") or []),
    }


@tool(
    "capture_status",
    params(
        status=string("Only entries with this status", enum=STATUSES),
        limit=integer("Entries listed", minimum=1, maximum=500, default=50),
        offset=integer("Entries to skip", minimum=0, maximum=10_000_000, default=0),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/capture")],
    mcp=False,
)
def capture_status(ctx: Ctx, args: dict) -> dict:
    """The capture inbox: events waiting for a retry, dead letters and filtered events (newest
    first), the filters and counts of what capture changed (unknown hook types, cut fields)."""
    agent = agent_filter(ctx, args.get("agentId"))
    service = inbox_service(ctx)
    inbox = ctx.rt.db.reader().inbox
    if token_limits_projects(ctx):
        every, _ = inbox.page(status=args.get("status"), limit=PROJECT_SCAN_LIMIT, offset=0, agent_id=agent)
        mine = [e for e in every if entry_visible(ctx, e)]
        items, total = mine[args["offset"] : args["offset"] + args["limit"]], len(mine)
    else:
        items, total = inbox.page(status=args.get("status"), limit=args["limit"], offset=args["offset"], agent_id=agent)
    return {
        **service.status(agent),
        "items": [_public(e) for e in items],
        "total": total,
        "offset": args["offset"],
        "limit": args["limit"],
        "hasMore": args["offset"] + len(items) < total,
        # Upstream's hooks keep a spool on the client machine; this server keeps one per node.
        "spool": spool_service(ctx).status(),
    }
