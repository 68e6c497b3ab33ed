"""The model's versions of what was stored deterministically (``agentmemory recompress --with-model``).

An observation captured while no model was configured (or while the model was down, its budget
used up, or ``AGENTMEMORY_AUTO_COMPRESS`` off) keeps the capture's deterministic compression,
and a session summary written then keeps ``method: synthetic``. Configuring a model later
upgrades only what is captured from then on; this run asks the model for the records stored
before: each selected observation's compression (``llm_compress.compress_with_model``, when
``AGENTMEMORY_AUTO_COMPRESS`` is on) and each selected session's summary
(``llm_steps.summarize_with_model``, when ``AGENTMEMORY_LLM_SUMMARIES`` is on), a session's
observations before its summary, so the summary reads the model's compressions.

- **Selected**: only records the deterministic path wrote (an observation without ``method`` and
  ``compressedAt``, a summary with ``method: synthetic``); with ``other_models``
  (``--other-models``) also those another provider or model wrote: a model-written record
  keeps ``method`` (the provider) and ``model`` (the model's name), and one from before models
  were recorded (no ``model``) counts as another model's only when its provider differs
  (``llm_steps.by_another_model``). ``project``, ``since`` (an observation's time, a
  summary's ``createdAt``) and ``limit`` (records) narrow them.
- **Dry run**: counts them and estimates the tokens (the prompts as they would be sent, about
  four characters a token, plus a typical answer) against what the day's budget has left.
- **Resumable**: each record is written in its own transaction as soon as its answer is
  valid, and a record the configured model wrote is never selected again, so a run that was
  interrupted or stopped is simply run again and pays only for what is left.
- **Stops cleanly** when the day's token budget (or the feature's cap) is used up, or the
  provider is down (the breaker of this process, or of the server's background worker, is
  open): nothing sent, nothing lost, the deterministic text stays until a model's replaces it
  (SPEC §14). A record the model answers invalidly or refuses keeps its deterministic text.
- **Not on a request path**: the CLI's own process makes the calls; the server's requests and
  its background jobs are not involved.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel.model_steps import SYNTHETIC
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.scopes import OBSERVATIONS_PREFIX, PROFILES, SESSIONS, SUMMARIES, obs_scope, session_of
from agentmemory_server.kernel.util import parse_time
from agentmemory_server.memory import summaries
from agentmemory_server.models import llm, llm_compress, llm_steps
from agentmemory_server.operations.maintenance import Progress, no_progress

log = logging.getLogger("agentmemory.recompress")

CHARS_PER_TOKEN = 4  # of our prompts, as the providers count them (docs/models.md, "Measured")
# A typical answer's tokens (docs/models.md, "Measured": a compression call ~650 tokens in all)
ANSWER_TOKENS = {"compress": 150, "summaries": 300}
FLAGS = {"compress": "AGENTMEMORY_AUTO_COMPRESS", "summaries": "AGENTMEMORY_LLM_SUMMARIES"}
OBSERVATION, SUMMARY = "observation", "summary"


@dataclass(frozen=True)
class Item:
    kind: str  # OBSERVATION or SUMMARY
    session_id: str
    record_id: str
    project: str | None
    by_model: bool = False  # another provider's or model's, not the deterministic path's


def recompress_with_model(
    rt: Any,
    *,
    project: str | None = None,
    since: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    other_models: bool = False,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Ask the model for the compressions and summaries the deterministic path wrote (see the
    module's docstring); returns the counts, the estimate, the budget and why it stopped.

    :raise InvalidInput: no model provider is configured, ``since`` is not a date, or no feature
        this run redoes is on."""
    svc = llm.service(rt)
    if not svc.has_model:
        why = svc.clients.choice.problem or "AGENTMEMORY_LLM_PROVIDER is none (or auto without a Gemini key)"
        raise InvalidInput(f"recompress --with-model needs a model provider: {why}")
    after = _parsed_since(since)
    features = _features_to_redo(svc)
    ctx = Ctx(rt, source="cli")
    items = _selected(rt, features, project, after, limit, other_models)
    estimate = _estimate(ctx, items)
    budget = svc.accounting.budget(tuple(llm.FEATURES))
    result: dict[str, Any] = {
        "dryRun": dry_run,
        "otherModels": other_models,
        "provider": svc.provider,
        "models": {feature: svc.clients.model_for(feature) for feature in features},
        "featuresOff": {feature: f"{FLAGS[feature]} is off" for feature in FLAGS if feature not in features},
        "selected": _counts(items),
        "selectedFromOtherModels": _counts([i for i in items if i.by_model]),
        "estimate": estimate,
        "budget": {key: budget[key] for key in ("daily", "used", "left", "resetsAt")},
        "fitsInBudget": _fits(svc, budget, estimate),
    }
    if dry_run:
        return result
    return {**result, **_run(ctx, items, progress, other_models)}


def _parsed_since(since: str | None) -> datetime | None:
    if since is None:
        return None
    after = parse_time(since)
    if after is None:
        raise InvalidInput(f"--since: {since!r} is not a date or an ISO-8601 time (e.g. 2026-11-01)")
    return after


def _features_to_redo(svc: llm.LLMService) -> list[str]:
    """The features this run redoes: those of the two that are on and use the model."""
    features = [feature for feature in ("compress", "summaries") if svc.uses_model(feature)]
    if not features:
        raise InvalidInput(
            "recompress --with-model redoes compressions (AGENTMEMORY_AUTO_COMPRESS) and session summaries "
            "(AGENTMEMORY_LLM_SUMMARIES): both are off"
        )
    return features


def _counts(items: list[Item]) -> dict[str, int]:
    return {
        "observations": sum(i.kind == OBSERVATION for i in items),
        "summaries": sum(i.kind == SUMMARY for i in items),
    }


def _selected(
    rt: Any, features: list[str], project: str | None, after: Any, limit: int | None, other_models: bool
) -> list[Item]:
    """The records to redo, session by session (oldest session id first), a session's
    observations in time order and then its summary."""
    reader, svc = rt.db.reader(), llm.service(rt)
    models = {feature: svc.clients.model_for(feature) for feature in features}

    def other(record: dict[str, Any], feature: str) -> bool:
        return other_models and llm_steps.by_another_model(record, svc.provider, models[feature])

    chosen: list[Item] = []
    for scope in sorted(reader.records.scope_counts(OBSERVATIONS_PREFIX)):
        session_id = session_of(scope)
        if "compress" in features:
            records = [value for _key, value in reader.records.iter_scope(scope)]
            records.sort(key=lambda obs: (str(obs.get("timestamp") or ""), str(obs["id"])))
            for obs in records:
                by_model = llm_steps.written_by_model(obs)
                if (not by_model or other(obs, "compress")) and _matches(obs, "timestamp", project, after):
                    chosen.append(Item(OBSERVATION, session_id, str(obs["id"]), obs.get("project"), by_model))
        if "summaries" in features:
            summary = reader.records.get(SUMMARIES, session_id)
            by_model = bool(summary) and summary.get("method") != SYNTHETIC
            if (
                summary
                and (not by_model or other(summary, "summaries"))
                and _matches(summary, "createdAt", project, after)
            ):
                chosen.append(Item(SUMMARY, session_id, session_id, summary.get("project"), by_model))
        if limit is not None and len(chosen) >= limit:
            return chosen[:limit]
    return chosen


def _matches(record: dict[str, Any], time_field: str, project: str | None, after: Any) -> bool:
    if project is not None and record.get("project") != project:
        return False
    if after is not None:
        when = parse_time(str(record.get(time_field) or ""))
        return when is not None and when >= after
    return True


def _estimate(ctx: Ctx, items: list[Item]) -> dict[str, Any]:
    """Calls and tokens the items would cost: the prompts as they would be sent now (system
    text included), ``CHARS_PER_TOKEN``, plus a typical answer. A repair round (an invalid first
    answer) would cost a second call."""
    svc, reader = llm.service(ctx.rt), ctx.rt.db.reader()
    systems = {
        "compress": len(svc.system_text(llm_compress.COMPRESS)),
        "summaries": len(svc.system_text(llm_steps.SUMMARY)),
    }
    per: dict[str, Counter[str]] = {"compress": Counter(), "summaries": Counter()}
    for item in items:
        if item.kind == OBSERVATION:
            feature = "compress"
            obs = reader.records.get(obs_scope(item.session_id), item.record_id) or {}
            chars = len(llm_compress.compress_prompt(obs))
        else:
            feature = "summaries"
            session = reader.records.get(SESSIONS, item.session_id) or {"id": item.session_id}
            observations = summaries.session_observations(ctx, reader, item.session_id)
            chars = len(llm_steps.summary_prompt(ctx, session, observations))
        chars = min(chars, ctx.rt.settings.llm_max_prompt_chars) + systems[feature]
        per[feature]["calls"] += 1
        per[feature]["tokens"] += -(-chars // CHARS_PER_TOKEN) + ANSWER_TOKENS[feature]
    by_feature = {feature: dict(counts) for feature, counts in per.items() if counts}
    return {
        "calls": sum(c["calls"] for c in per.values()),
        "tokens": sum(c["tokens"] for c in per.values()),
        "byFeature": by_feature,
    }


def _fits(svc: llm.LLMService, budget: dict[str, Any], estimate: dict[str, Any]) -> bool:
    """Would the estimate fit in what today's budget (and each feature's cap) has left?"""
    if budget["left"] is not None and estimate["tokens"] > budget["left"]:
        return False
    for feature, counts in estimate["byFeature"].items():
        cap = budget["features"].get(feature)
        if cap is not None and counts["tokens"] > cap["left"]:
            return False
    return True


def _run(ctx: Ctx, items: list[Item], progress: Progress, other_models: bool) -> dict[str, Any]:
    """Redo the items one by one until done, the budget is used up or the provider is down."""
    svc = llm.service(ctx.rt)
    tally: Counter[str] = Counter()
    stopped: dict[str, str] | None = None
    projects: set[str] = set()
    done = 0
    bar = progress("recompress --with-model", len(items))
    try:
        for item in items:
            if svc.provider_down():  # the server's worker found it down: send nothing
                stopped = {"reason": "providerDown", "message": "the model provider is down (its breaker is open)"}
                break
            if (stopped := _redo_counted(ctx, item, other_models, tally, projects)) is not None:
                break
            done += 1
            bar.update(1)
    finally:
        bar.close()
        if projects:  # an interrupted run too: what it wrote is kept, and its projects' profiles are stale
            _drop_profiles(ctx.rt, projects)
    return {
        "redone": {"observations": tally["observations"], "summaries": tally["summaries"]},
        "skipped": {key: tally[key] for key in ("lowValue", "noAnswer", "failed", "alreadyDone")},
        "remaining": len(items) - done,
        "stopped": stopped,
    }


def _redo_counted(
    ctx: Ctx, item: Item, other_models: bool, tally: Counter[str], projects: set[str]
) -> dict[str, str] | None:
    """Redo one item and count what came of it; returns why the run stops, if it must."""
    try:
        outcome = _redo(ctx, item, other_models)
    except llm.BudgetReached as exc:
        return {"reason": "budget", "message": exc.message}
    except llm.BreakerOpen as exc:
        return {"reason": "providerDown", "message": f"{exc.message}: the provider failed repeatedly"}
    except (llm.InvalidOutput, llm.ModelRefused) as exc:
        log.warning("recompress: the model gave no usable answer for %s %s: %s", item.kind, item.record_id, exc.message)
        tally["noAnswer"] += 1
    except llm.LLMError as exc:  # after its retries; the breaker stops the run if it goes on
        log.warning("recompress: the model call for %s %s failed: %s", item.kind, item.record_id, exc.message)
        tally["failed"] += 1
    else:
        _count_outcome(tally, projects, item, outcome)
    return None


def _count_outcome(tally: Counter[str], projects: set[str], item: Item, outcome: str | None) -> None:
    """Count what redoing ``item`` did, and note the project the model wrote into (its profile is dropped)."""
    if outcome in (llm_compress.COMPRESSED, SUMMARY):
        tally["observations" if item.kind == OBSERVATION else "summaries"] += 1
        if item.project:
            projects.add(item.project)
    elif outcome in (llm_compress.GONE, llm_compress.MODEL_WRITTEN, None):
        tally["alreadyDone"] += 1
    else:
        tally["lowValue"] += 1


def _redo(ctx: Ctx, item: Item, other_models: bool) -> str | None:
    if item.kind == OBSERVATION:
        return llm_compress.compress_with_model(ctx, item.session_id, item.record_id, other_models)
    redone = llm_steps.summarize_with_model(ctx, item.session_id, other_models)
    return SUMMARY if redone is not None else None


def _drop_profiles(rt: Any, projects: set[str]) -> None:
    """The cached profiles of the projects whose records changed were made from the old text."""
    rt.db.flush()
    with rt.db.transaction("recompress", agent_id=rt.settings.agent_id) as tx:
        dropped = sum(tx.records.delete(PROFILES, project) for project in sorted(projects))
        tx.audit_message = f"recompress --with-model: {dropped} cached profile(s) dropped"
