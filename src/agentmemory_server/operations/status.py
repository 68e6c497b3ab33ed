"""Upstream 0.9.30's one-call views: ``GET /status`` ("what is wrong and how to fix it", JSON or
HTML), ``GET /viewer/snapshot`` (everything the viewer shows), ``GET /counts`` and
``GET /observations/locate`` (where an observation is, for deep links).

The status report turns the health of every part into a short list of alerts, each with the fix,
so a user who sees no memories learns why (refused tokens, dead letters, unknown hook types,
an embedding backlog, an open model breaker, images evicted by the quota, ...).
"""

from __future__ import annotations

import html
from typing import Any

from agentmemory_server import errors
from agentmemory_server.errors import NotFound, unrecovered
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.access import agent_filter, in_token_projects, token_principal
from agentmemory_server.kernel.registry import AGENT_ID, Ctx, Reply, integer, params, string, tool
from agentmemory_server.kernel.scopes import obs_scope
from agentmemory_server.operations import health, overview
from agentmemory_server.storage.interfaces import Where

NONCE_MARK = "__CSP_NONCE__"  # the HTTP adapter puts a fresh nonce here


def _alert(level: str, what: str, fix: str) -> dict[str, str]:
    return {"level": level, "message": what, "fix": fix}


def _capture_alerts(capture: dict[str, Any]) -> list[dict[str, str]]:
    alerts = []
    if capture.get("pending"):
        alerts.append(
            _alert(
                "warn",
                f"{capture['pending']} hook event(s) could not be stored yet and wait for a retry",
                "see GET /agentmemory/capture for the error; POST /agentmemory/capture/drain retries now",
            )
        )
    if capture.get("dead"):
        alerts.append(
            _alert(
                "warn",
                f"{capture['dead']} hook event(s) are dead letters (not stored)",
                "see GET /agentmemory/capture?status=dead; fix the cause, then POST /agentmemory/capture/retry "
                '{"all": true}',
            )
        )
    if capture.get("unknownHookTypes"):
        alerts.append(
            _alert(
                "info",
                f"{capture['unknownHookTypes']} event(s) had a hookType this server does not know (stored as 'other')",
                "GET /agentmemory/capture lists the names; update the hook scripts or the client",
            )
        )
    return alerts


# What stores the events waiting in the capture spool, by who drains it (health ``drainedBy``).
SPOOL_DRAINS = {
    "worker": "bring the database back; they are stored within a retry interval, or POST /agentmemory/capture/drain",
    "requests": "bring the database back; with background jobs off (AGENTMEMORY_BACKGROUND_JOBS=false), or no "
    "background worker alive on this node, this server stores them once one of its writes commits again "
    "(within a retry interval), or POST /agentmemory/capture/drain",
}


def _spool_alerts(spool: dict[str, Any]) -> list[dict[str, str]]:
    if not spool.get("events"):
        return []
    what = f"{spool['events']} hook event(s) wait on this node's disk (capture spool) for the database to take them"
    return [_alert("warn", what, SPOOL_DRAINS.get(spool.get("drainedBy") or "worker", SPOOL_DRAINS["worker"]))]


def _llm_alerts(llm: dict[str, Any]) -> list[dict[str, str]]:
    """A configured provider that cannot be used, and a used-up token budget: neither degrades
    the server (the deterministic paths answer), but both explain why nothing is model-written."""
    alerts = []
    if llm.get("problem"):
        alerts.append(
            _alert(
                "warn",
                f"{llm['problem']}: every LLM feature runs deterministically",
                "set the key, or AGENTMEMORY_LLM_PROVIDER=none if no model is wanted; then restart",
            )
        )
    if budget_alert := _llm_budget_alert(llm.get("budget") or {}):
        alerts.append(budget_alert)
    jobs = llm.get("jobs") or {}
    if jobs.get("why"):
        alerts.append(
            _alert(
                "warn",
                jobs["why"],
                "nothing is lost: they run by themselves once the model answers (each waits up to "
                f"{jobs.get('maxAgeHours'):g} h, AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS); check the provider's key, "
                "base URL and quota (GET /agentmemory/health llm.lastError)",
            )
        )
    return alerts


def _llm_budget_alert(budget: dict[str, Any]) -> dict[str, str] | None:
    """A token budget set to 0, or the daily budget or a feature's cap used up; else None."""
    capped = sorted(name for name, cap in (budget.get("features") or {}).items() if cap.get("reached"))
    if budget.get("zero"):  # a deployment that set 0 for "no limit", as it once meant, learns here
        return _alert("warn", budget["zero"], "set AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET=unlimited and restart")
    if not (budget.get("reached") or capped):
        return None
    what = (
        f"the daily model token budget ({budget['daily']:,}) is used up"
        if budget.get("reached")
        else f"the daily token cap of {', '.join(capped)} is used up"
    )
    return _alert(
        "info",
        f"{what}: those model features run deterministically until {budget.get('resetsAt')}",
        "raise AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET (or the feature's cap) and restart, or wait",
    )


# Where the details of a part that is not healthy are: /health shows them to the admin secret; a
# principal's token sees there only each part's status (health.principal_health).
DETAILS_ADMIN = "see GET /agentmemory/health"
DETAILS_PRINCIPAL = (
    "ask the server's operator: GET /agentmemory/health with the admin secret shows the details "
    "(a principal's token sees only each part's status)"
)


def alerts_of(sections: dict[str, Any], *, for_principal: bool = False) -> list[dict[str, str]]:
    """What is wrong, each with its fix, from the health sections (``for_principal``: those a
    principal's token is shown, whose fix cannot be read in /health by that token)."""
    return [
        *_auth_alerts(sections.get("auth") or {}),
        *_rate_limit_alerts(sections.get("rateLimit") or {}),
        *_capture_alerts(sections.get("capture") or {}),
        *_llm_alerts(sections.get("llm") or {}),
        *_spool_alerts(sections.get("capture_spool") or {}),
        *_image_alerts(sections.get("images") or {}),
        *_vector_alerts(sections.get("vectors") or {}),
        *_periodic_alerts(sections.get("background") or {}),
        *_unhealthy_alerts(sections, DETAILS_PRINCIPAL if for_principal else DETAILS_ADMIN),
    ]


def _auth_alerts(auth: dict[str, Any]) -> list[dict[str, str]]:
    denied = auth.get("denied", 0)
    if not denied:
        return []
    last = auth.get("lastDenied")  # left out for a principal's token
    latest = f" (latest: {last.get('reason')} {last.get('path')})" if last else ""
    return [
        _alert(
            "warn",
            f"{denied} request(s) refused without a valid token since start{latest}; hook scripts exit 0 on "
            "a 401, so their events were lost",
            "give clients AGENTMEMORY_SECRET (or let them read the server's secret file)",
        )
    ]


def _rate_limit_alerts(rate_limit: dict[str, Any]) -> list[dict[str, str]]:
    limited = rate_limit.get("limited", 0)
    if not limited:
        return []
    last = rate_limit.get("lastLimited") or {}
    return [
        _alert(
            "warn",
            f"{limited} write(s) refused by the rate limit since start (latest: {last.get('what')}); "
            "hook scripts before 0.9.30 drop an event answered 429",
            "raise AGENTMEMORY_RATE_LIMIT / AGENTMEMORY_RATE_BURST, or find the client that floods "
            "(GET /agentmemory/health rateLimit.limitedByClient)",
        )
    ]


def _image_alerts(images: dict[str, Any]) -> list[dict[str, str]]:
    if not images.get("evicted"):
        return []
    return [
        _alert(
            "info",
            f"{images['evicted']} image(s) were evicted by the image store quota",
            "raise AGENTMEMORY_IMAGE_STORE_MAX_BYTES to keep more images",
        )
    ]


def _vector_alerts(vectors: dict[str, Any]) -> list[dict[str, str]]:
    if not vectors.get("backlog"):
        return []
    return [
        _alert(
            "info",
            f"{vectors['backlog']} record(s) wait for an embedding; search uses BM25 for them meanwhile",
            "nothing to do: the embedding worker drains it in the background",
        )
    ]


def _unhealthy_alerts(sections: dict[str, Any], details: str) -> list[dict[str, str]]:
    """Every part whose status is not healthy, pointing at where its details can be read."""
    alerts = []
    for name, section in sections.items():
        if isinstance(section, dict) and section.get("status") in ("degraded", "critical", "error"):
            detail = unrecovered(section) or section.get("error") or section.get("status")
            alerts.append(_alert("error", f"{name} is {section['status']}: {detail}", details))
    return alerts


def _periodic_alerts(background: dict[str, Any]) -> list[dict[str, str]]:
    """A shared periodic job whose last run failed (its error not recovered from by a later run).
    An error recorded before the schedule kept times has no ``lastErrorAt``: whether it stands is
    unknown until the job's next run, which says so either way."""
    alerts = []
    for job in background.get("periodic") or []:
        if job.get("lastErrorAt") and unrecovered(job):
            alerts.append(
                _alert(
                    "warn",
                    f"periodic job {job['name']} failed at {job['lastErrorAt']}: {job['lastError']}",
                    f"the log of the worker that ran it ({job.get('holder')}) says more; the job runs again "
                    "at its next period and the alert goes once a run succeeds",
                )
            )
    return alerts


def status_report(ctx: Ctx) -> dict[str, Any]:
    rt = ctx.rt
    report = registry.run(health.health, ctx, {})
    if token_principal(ctx) is not None:
        return principal_report(ctx, report)
    sections = rt.health_sections()
    vectors = sections.get("vectors") or {}
    return {
        **_report_head(ctx, report, sections, alerts_of(sections)),
        "index": {
            "bm25Documents": sum(rt.db.reader().index.kind_counts().values()),
            "vectorDocuments": vectors.get("vectors"),
            "pendingVectorBackfill": vectors.get("backlog", 0),
        },
        "counts": report["counts"],
        "db": report["db"],
        "auth": sections.get("auth"),
        "capture": sections.get("capture"),
        "images": sections.get("images"),
        "generatedAt": rt.clock.iso(),
    }


def principal_report(ctx: Ctx, report: dict[str, Any]) -> dict[str, Any]:
    """The status report for a principal's token: its own counts and the parts that are not
    healthy, nothing of the whole store (indexes, database, refused requests, capture inbox,
    images, model usage: the admin secret's, as in ``health.principal_health``)."""
    sections = ctx.rt.health_sections(for_principal=True)
    alerts = alerts_of(health.section_states(sections), for_principal=True)
    return {
        **_report_head(ctx, report, sections, alerts),
        "shownTo": report["shownTo"],
        "counts": report.get("counts", {}),
        "generatedAt": ctx.rt.clock.iso(),
    }


def _report_head(
    ctx: Ctx, report: dict[str, Any], sections: dict[str, Any], alerts: list[dict[str, Any]]
) -> dict[str, Any]:
    """What every reader of the status report is shown: the service, its state and its providers."""
    rt = ctx.rt
    return {
        "service": "agentmemory",
        "version": rt.version,
        "status": report["status"],
        "uptimeSeconds": report["uptimeSeconds"],
        "ports": {"rest": rt.settings.port, "streams": rt.settings.port, "viewer": rt.settings.port},
        "alerts": alerts,
        "provider": (sections.get("llm") or {}).get("provider") or "noop",
        "embeddingProvider": (sections.get("vectors") or {}).get("provider") or "none",
    }


def render_html(report: dict[str, Any]) -> str:
    """The report as a small page (every value escaped; styles carry the response's nonce)."""
    esc = html.escape
    rows = (
        "".join(
            f"<li class='{esc(a['level'])}'><b>{esc(a['message'])}</b><br>fix: {esc(a['fix'])}</li>"
            for a in report["alerts"]
        )
        or "<li class='ok'>Nothing is wrong.</li>"
    )
    counts = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in report["counts"].items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>agentmemory status</title>"
        f"<style nonce='{NONCE_MARK}'>body{{font:14px system-ui;margin:2em;max-width:60em}}"
        ".warn{color:#a60}.error{color:#b00}.ok{color:#070}.info{color:#356}li{margin:.5em 0}</style></head><body>"
        f"<h1>agentmemory {esc(report['version'])}: {esc(report['status'])}</h1>"
        f"<p>up {esc(str(report['uptimeSeconds']))} s, generated {esc(report['generatedAt'])}</p>"
        f"<h2>What needs attention</h2><ul>{rows}</ul><h2>Records</h2><table>{counts}</table></body></html>"
    )


@tool(
    "status",
    params(format=string("json or html", enum=["json", "html"])),
    http=[("GET", "/status")],
    mcp=False,
    content=("text/html",),
)
def status(ctx: Ctx, args: dict) -> Reply:
    """What is wrong and how to fix it: alerts with fixes, index, capture and auth state; HTML when
    the client prefers it (a browser, or ?format=html)."""
    agent_filter(ctx)  # isolated scope without an agent id fails closed, as every read
    report = status_report(ctx)
    return Reply(report, 200, content=(render_html(report), "text/html"))


@tool("counts", params(agentId=AGENT_ID), http=[("GET", "/counts")], mcp=False)
def counts(ctx: Ctx, args: dict) -> dict:
    """Live record counts by kind (only the caller's in isolated agent scope)."""
    return {"counts": health.record_counts(ctx)}


@tool("viewer_snapshot", params(agentId=AGENT_ID), http=[("GET", "/viewer/snapshot")], mcp=False)
def viewer_snapshot(ctx: Ctx, args: dict) -> dict:
    """Everything the viewer's dashboard shows, in one call: status report, health, counts,
    ingest rates, indexes, capture inbox and refused requests."""
    report = status_report(ctx)
    view = registry.run(overview.viewer_overview, ctx, {})
    shown = {
        "version": report["version"],
        "service": "agentmemory",
        "ports": report["ports"],
        "provider": report["provider"],
        "embeddingProvider": report["embeddingProvider"],
        "status": report["status"],
        "counts": view["counts"],
        "ingest": view["ingest"],
        "features": view["features"],
        "report": {"alerts": report["alerts"]},
        "generatedAt": report["generatedAt"],
    }
    if "shownTo" in report:  # a principal's token: nothing of the whole store (principal_report)
        return {**shown, "shownTo": report["shownTo"]}
    return {
        **shown,
        "health": {k: report[k] for k in ("db", "auth", "capture", "images")},
        "live": view["live"],
        "indexes": report["index"],
    }


@tool(
    "observation_locate",
    params(
        ["observationId"],
        observationId=string("Observation id", max_length=128),
        pageSize=integer("Page size the viewer uses for a session's observations", minimum=1, maximum=1000, default=50),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/observations/locate")],
    mcp=False,
)
def observation_locate(ctx: Ctx, args: dict) -> dict:
    """Where an observation is: its session, position in the session (time order) and the page
    offset a viewer opens to show it (deep links)."""
    store = ctx.rt.db.reader()
    agent = agent_filter(ctx, args.get("agentId"))
    hits = store.index.lookup([args["observationId"]], {"kinds": ["observation"], "agent_id": agent})
    record = store.records.get(hits[0]["scope"], hits[0]["key"]) if hits else None
    if record is None or not in_token_projects(ctx, record):
        raise NotFound(f"observation {args['observationId']!r} not found", code=errors.NOT_FOUND)
    scope = obs_scope(record["sessionId"])
    before = store.records.count_where(scope, [Where("timestamp", "<", record["timestamp"])])
    position = before + sum(
        1
        for other in store.records.query(
            scope, [Where("timestamp", "=", record["timestamp"])], order_by=[("timestamp", False)]
        )
        if other["id"] < record["id"]
    )
    return {
        "found": True,
        "observationId": record["id"],
        "sessionId": record["sessionId"],
        "project": record.get("project"),
        "timestamp": record["timestamp"],
        "position": position,
        "offset": position - position % args["pageSize"],
        "pageSize": args["pageSize"],
    }
