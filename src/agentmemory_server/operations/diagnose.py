"""Diagnostics and healing over every subsystem.

Each check is ``{name, category, status: pass|warn|fail, message, fix, fixable}``. This module
owns the storage-level checks (database integrity, search index against records, session
counts, WAL and disk space, configuration) as the ``database`` subsystem; every other subsystem
(lessons, slots, vectors, working memory, ...) contributes its own through ``diagnose()`` and
repairs through ``heal(dry_run)``. ``memory_diagnose`` collects them all; ``/diagnostics/heal``
runs every repair (or reports what it would do).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple

from agentmemory_server.kernel.access import token_principal
from agentmemory_server.kernel.auth import is_loopback
from agentmemory_server.kernel.registry import Ctx, array, boolean, params, string, tool
from agentmemory_server.kernel.scopes import OBSERVATIONS_PREFIX, SESSIONS, session_of
from agentmemory_server.retrieval import search
from agentmemory_server.storage.interfaces import UnitOfWork
from agentmemory_server.threads import lower_thread_priority

log = logging.getLogger("agentmemory.diagnose")
SAMPLE = 1000
WAL_WARN_BYTES = 256 * 1024 * 1024
PERIODIC_CHECK_SECONDS = 600.0


def check(
    name: str, category: str, ok: bool, message: str, *, fix: str = "", fixable: bool = False, severity: str = "fail"
) -> dict[str, Any]:
    return {
        "name": name,
        "category": category,
        "status": "pass" if ok else severity,
        "message": message,
        "fix": "" if ok else fix,
        "fixable": fixable and not ok,
    }


def _sample(items: list, n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")


def stored_observation_counts(store: UnitOfWork) -> dict[str, int]:
    """Observations actually stored per session id."""
    return {session_of(scope): n for scope, n in store.records.scope_counts(OBSERVATIONS_PREFIX).items()}


class Finding(NamedTuple):
    """A check over one list ``DatabaseChecks._found`` collects: it passes when the list is empty.
    ``wrong`` is formatted with ``n`` (how many) and ``sample`` (the first few)."""

    name: str
    category: str
    key: str
    wrong: str
    right: str
    fix: str
    severity: str = "fail"

    def check(self, found: list) -> dict[str, Any]:
        message = self.wrong.format(n=len(found), sample=_sample(found)) if found else self.right
        return check(self.name, self.category, not found, message, fix=self.fix, fixable=True, severity=self.severity)


# Every one is repaired by heal.
FINDINGS = (
    Finding(
        "search_rows_missing",
        "search",
        "unindexed",
        wrong="{n} record(s) have no search row: {sample}",
        right="every indexed record has a search row",
        fix="heal re-indexes them",
    ),
    Finding(
        "search_rows_orphaned",
        "search",
        "orphans",
        wrong="{n} search row(s) point at deleted records: {sample}",
        right="every search row has its record",
        fix="heal removes them",
        severity="warn",
    ),
    Finding(
        "search_text_missing",
        "search",
        "no_text",
        wrong="{n} search row(s) have no full-text entry",
        right="every search row has its full-text entry",
        fix="heal re-indexes them",
    ),
    Finding(
        "search_text_orphaned",
        "search",
        "stray_text",
        wrong="{n} full-text entries have no search row",
        right="no stray full-text entries",
        fix="heal removes them",
        severity="warn",
    ),
    Finding(
        "session_counts",
        "sessions",
        "drift",
        wrong="{n} session(s) report a wrong observationCount: {sample}",
        right="session observation counts match",
        fix="heal recounts them",
        severity="warn",
    ),
)


class DatabaseChecks:
    """Storage-level checks and repairs; /health's ``database`` section (free disk space against
    AGENTMEMORY_DISK_WARN_MB / AGENTMEMORY_DISK_RESERVE_MB, integrity) and the periodic integrity
    check (AGENTMEMORY_INTEGRITY_CHECK_INTERVAL), which stops writes when it finds damage."""

    def __init__(self, rt: Any):
        self.rt = rt
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        interval = rt.settings.integrity_check_interval
        # Every process keeps its own timer, on a thread of its own, rather than a job of the
        # background worker (rt.every): a server started without a worker is checked too. Their
        # turns are shared through the storage (Database.periodic_integrity_check), so the file
        # is read once an interval, and damage one process finds stops the writes of all.
        if interval > 0 and (rt.role == "server" or rt.runs_background):
            self._thread = threading.Thread(
                target=self._check_every, args=(interval,), name="agentmemory-integrity", daemon=True
            )
            self._thread.start()

    def _check_every(self, interval: float) -> None:
        lower_thread_priority(10)
        # A start-up check cut short by its budget (a big file) is finished here at once, while
        # requests are already served, rather than an interval later.
        unfinished = (self.rt.db.last_check or {}).get("result") == "unfinished"
        while not self._stop.wait(0 if unfinished else interval):
            if self.rt.db.damage is not None:
                return  # found: nothing more to learn until a restore and a restart
            try:
                # An unfinished start-up check is not skipped for a pass before the start.
                self.periodic_check(passed_within=0 if unfinished else 0.9 * interval)
            except Exception:  # noqa: BLE001 - a closed database at shutdown, a read error: try again later
                log.exception("periodic integrity check failed")
            unfinished = False

    def periodic_check(self, passed_within: float = 0.0) -> None:
        # Generous budget: it runs on a thread and a connection of its own.
        self.rt.db.periodic_integrity_check(PERIODIC_CHECK_SECONDS, passed_within)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def health(self) -> dict[str, Any]:
        storage = self.rt.db.storage_health()
        states = [part.get("status") for part in storage.values()]
        status = "critical" if "critical" in states else "degraded" if "degraded" in states else "healthy"
        return {"status": status, **storage}

    def _found(self) -> dict[str, list]:
        store = self.rt.db.reader()
        stored = stored_observation_counts(store)
        drift = [
            s["id"]
            for _k, s in store.records.list(SESSIONS)
            if int(s.get("observationCount") or 0) != stored.get(s["id"], 0)
        ]
        return {
            "unindexed": store.index.unindexed(search.INDEXED_SCOPES, OBSERVATIONS_PREFIX, limit=SAMPLE),
            "orphans": store.index.orphans(limit=SAMPLE),
            "no_text": store.index.rows_without_text(limit=SAMPLE),
            "stray_text": store.index.text_without_rows(limit=SAMPLE),
            "drift": drift,
        }

    def diagnose(self) -> list[dict[str, Any]]:
        integrity = self._integrity()
        if self.rt.db.damage is not None:  # the other checks read the damaged file: they would only add noise
            return [integrity, *self._disk()]
        found = self._found()
        found["unindexed"] = [f"{s}/{k}" for s, k, _v in found["unindexed"]]
        checks = [integrity, *(finding.check(found[finding.key]) for finding in FINDINGS)]
        return checks + [self._lexical()] + self._disk() + self._config()

    def _lexical(self) -> dict[str, Any]:
        """The lexical engine against the search rows (the engine checks itself when idle)."""
        state = self.rt.db.health()["lexical"]
        verified, building = state.get("verified"), state.get("rebuild")
        if building:
            message = f"the {state['engine']} index is being rebuilt: {building['done']} of {building['total']} records"
        elif state.get("state") not in (None, "ready"):
            message = f"the {state['engine']} index is {state['state']}"
        elif verified and not verified["ok"]:
            message = f"the index held {verified['documents']} documents for {verified['records']} records"
        else:
            message = f"the {state['engine']} index is ready" + (
                f" ({verified['documents']} documents, checked {verified['at']})" if verified else ""
            )
        healthy = not building and state.get("state") in (None, "ready") and (not verified or verified["ok"])
        return check(
            "lexical_index",
            "search",
            healthy,
            message,
            fix="heal asks the engine to compare itself with the records now and rebuild if they differ",
            fixable=not building,
            severity="warn",
        )

    def _integrity(self) -> dict[str, Any]:
        db = self.rt.db
        problems = db.run_integrity_check(PERIODIC_CHECK_SECONDS, "diagnose")
        if db.damage is not None:
            message, ok = "; ".join(db.damage["problems"][:5]), False
        elif problems is None:
            message, ok = f"quick_check did not finish within {PERIODIC_CHECK_SECONDS:g}s", False
        else:
            message, ok = "SQLite quick_check: ok", True
        fix = db.damage["fix"] if db.damage else "run diagnose again when the server is less busy"
        return check("db_integrity", "database", ok, message, fix=fix)

    def _disk(self) -> list[dict[str, Any]]:
        sizes = self.rt.db.file_sizes()
        disk_health = self.rt.db.storage_health()["disk"]
        disk = check(
            "disk_space",
            "disk",
            disk_health["status"] == "healthy",
            f"{disk_health['message']} next to the database",
            fix="free disk space or move AGENTMEMORY_DATA_DIR (AGENTMEMORY_DISK_WARN_MB / _RESERVE_MB set the limits)",
            severity="fail" if disk_health["status"] == "critical" else "warn",
        )
        wal = check(
            "wal_size",
            "disk",
            sizes["wal"] < WAL_WARN_BYTES,
            f"WAL is {sizes['wal'] // 1024} KB",
            fix="heal checkpoints the WAL into the database",
            fixable=True,
            severity="warn",
        )
        return [disk, wal]

    def _config(self) -> list[dict[str, Any]]:
        s = self.rt.settings
        exposed = not is_loopback(s.host) and not s.secret
        isolated_without_id = s.agent_scope == "isolated" and not s.agent_id
        scope = f"agent scope {s.agent_scope}" + (f" as {s.agent_id}" if s.agent_id else "")
        return [
            check(
                "bind_without_secret",
                "config",
                not exposed,
                f"bound to {s.host} with auth off (AGENTMEMORY_ALLOW_OPEN_BIND): anyone on the network can read "
                "and write"
                if exposed
                else f"bound to {s.host}" + (" with a token" if s.secret else ""),
                fix="turn auth on (unset AGENTMEMORY_AUTH, or set AGENTMEMORY_SECRET) or bind HOST=127.0.0.1",
                severity="warn",
            ),
            check(
                "agent_scope",
                "config",
                not isolated_without_id,
                "AGENTMEMORY_AGENT_SCOPE=isolated without AGENT_ID: every read fails closed"
                if isolated_without_id
                else scope,
                fix="set AGENT_ID",
            ),
        ]

    def heal(self, dry_run: bool) -> list[dict[str, Any]]:
        if self.rt.db.damage is not None:
            return []  # nothing is written into a damaged file; restoring it is the fix
        found = self._found()
        wal_big = self.rt.db.file_sizes()["wal"] >= WAL_WARN_BYTES
        plan = {
            "search_rows_missing": len(found["unindexed"]) + len(found["no_text"]),
            "search_rows_orphaned": len(found["orphans"]),
            "search_text_orphaned": len(found["stray_text"]),
            "session_counts": len(found["drift"]),
        }
        if not dry_run and any(plan.values()):
            self._repair(found)
        if not dry_run and wal_big:
            self.rt.db.checkpoint()
        if not dry_run:
            self.rt.db.verify_index()  # cheap: the engine compares counts on its next idle moment
        details = [
            {
                "name": name,
                "category": "sessions" if name == "session_counts" else "search",
                "wouldFix": n,
                "fixed": 0 if dry_run else n,
            }
            for name, n in plan.items()
            if n
        ]
        if wal_big:
            details.append({"name": "wal_size", "category": "disk", "wouldFix": 1, "fixed": 0 if dry_run else 1})
        return details

    def _repair(self, found: dict[str, list]) -> None:
        now = self.rt.clock.iso()
        with self.rt.db.transaction("heal_index", agent_id=self.rt.settings.agent_id) as tx:
            for scope, key, value in found["unindexed"]:
                if (kind := search.kind_for_scope(scope)) is None:
                    continue
                search.index_record(tx, kind, value)
                tx.record_change(f"search_docs/{key}")
            for scope, key in found["no_text"]:
                value = tx.records.get(scope, key)
                if value is not None and (kind := search.kind_for_scope(scope)):
                    search.index_record(tx, kind, value)
                    tx.record_change(f"search_fts/{key}")
            if found["orphans"]:
                search.unindex(tx, found["orphans"])
                tx.record_change(f"search_docs/{len(found['orphans'])} orphan(s)")
            tx.index.delete_text_rows(found["stray_text"])
            counts = stored_observation_counts(tx)
            for sid in found["drift"]:
                session = tx.records.get(SESSIONS, sid)
                if session is not None:
                    session["observationCount"] = counts.get(sid, 0)
                    tx.records.set(SESSIONS, sid, session, now=now)


# -- collecting from every subsystem ------------------------------------------------------------------------


def run_checks(rt: Any, categories: list[str] | None) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for name, service in rt.services.items():
        diagnose = getattr(service, "diagnose", None)
        if not callable(diagnose):
            continue
        try:
            checks += diagnose()
        except Exception as exc:  # noqa: BLE001 - one broken subsystem must not hide the others
            checks.append(
                check(
                    f"{name}_diagnose",
                    name,
                    False,
                    f"diagnose() raised: {str(exc)[:300]}",
                    fix=f"see the server log for the {name} subsystem",
                )
            )
    wanted = set(categories or [])
    return [c for c in checks if not wanted or c.get("category") in wanted]


_STATE_FIELDS = ("name", "category", "status", "fixable")


@tool(
    "memory_diagnose",
    params(
        categories=array(
            string(max_length=64),
            "Only these categories (database, search, sessions, disk, config, "
            "lessons, slots, and those of other subsystems)",
            max_items=50,
        ),
    ),
    http=[("POST", "/diagnostics")],
    core=True,
    right="read",
)
def memory_diagnose(ctx: Ctx, args: dict) -> dict:
    """Health checks over every subsystem: database integrity, search index against records,
    disk, configuration, lessons, slots, vectors, working memory; each with a fix hint."""
    checks = run_checks(ctx.rt, args.get("categories"))
    if token_principal(ctx) is not None:
        # The checks read the whole store: their messages name other principals' and projects'
        # records (a sample of ids, slot scopes with project names, counts). A principal's token
        # is shown each check's state, as /health shows it each part's (docs/deploy.md).
        checks = [{k: c[k] for k in _STATE_FIELDS if k in c} for c in checks]
    summary = {status: sum(1 for c in checks if c["status"] == status) for status in ("pass", "warn", "fail")}
    summary["fixable"] = sum(1 for c in checks if c.get("fixable"))
    overall = "fail" if summary["fail"] else "warn" if summary["warn"] else "pass"
    return {"success": True, "status": overall, "checks": checks, "summary": summary}


@tool(
    "diagnostics_heal",
    params(
        dryRun=boolean("Report what would be fixed without changing anything", default=False),
        categories=array(string(max_length=64), "Only subsystems with checks in these categories", max_items=50),
    ),
    http=[("POST", "/diagnostics/heal")],
    mcp=False,
    answers_with_records=False,
    right="admin",
)
def diagnostics_heal(ctx: Ctx, args: dict) -> dict:
    """Fix what diagnostics marked fixable (re-index, remove orphans, recount, checkpoint, ...)."""
    wanted = set(args.get("categories") or [])
    details: list[dict[str, Any]] = []
    for service in ctx.rt.services.values():
        heal, diagnose = getattr(service, "heal", None), getattr(service, "diagnose", None)
        if not callable(heal):
            continue
        if wanted and callable(diagnose) and not wanted & {c.get("category") for c in diagnose()}:
            continue  # a subsystem heals all of its own checks, so skip those outside the request
        details += heal(args["dryRun"])
    remaining = [c for c in run_checks(ctx.rt, list(wanted) or None) if c["status"] != "pass" and not c["fixable"]]
    return {
        "success": True,
        "dryRun": args["dryRun"],
        "fixed": sum(d.get("fixed", 0) for d in details),
        "wouldFix": sum(d.get("wouldFix", 0) for d in details),
        "skipped": len(remaining),
        "details": details,
        "unfixable": [c["name"] for c in remaining],
    }
