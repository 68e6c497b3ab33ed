"""What the LLM layer does with the model: summaries, reflection, insights, crystals and
consolidation, each in front of its deterministic path (an observation's compression is
llm_compress.py's; the JSON Schema fragments of the answers are answer_schemas.py's).

- **Model steps** (``model_steps.py``): ``summarize``, ``crystallize``, ``reflect``,
  ``insights`` and ``consolidate`` are registered once per provider (``@provider_step``); the
  step of the configured provider asks the model when the feature's flag is on, so the result's
  ``method`` names the provider. No provider, an open breaker, a reached budget or a
  failed/invalid answer returns None and the deterministic result is used, with
  ``method: "synthetic"``.
- **Session end.** The request path stays deterministic (``model_steps.deterministic_only``);
  this module queues the model upgrades (summary, slot reflection) and the session-end
  consolidation (``CONSOLIDATION_ENABLED``, once per project per cooldown) as background jobs.

Prompts carry only stored records (already privacy-stripped) in bounded size; answers are
stripped again by ``llm.generate_json`` before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentmemory_server.errors import AppError
from agentmemory_server.kernel import registry
from agentmemory_server.kernel.model_steps import SYNTHETIC, Deferred, Step, model_step
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.scopes import CONSOLIDATION_RUNS, SESSIONS, SUMMARIES
from agentmemory_server.kernel.util import truncate
from agentmemory_server.memory import consolidate, reflect, summaries
from agentmemory_server.memory.memories import MEMORY_TYPES
from agentmemory_server.memory.slots import DEFAULT_SIZE as SLOT_SIZE
from agentmemory_server.models import llm
from agentmemory_server.models.answer_schemas import object_field, string_list, text_field
from agentmemory_server.models.llm import Task

LINE_CHARS = 300  # per observation in a session prompt
HEADER_ROOM = 2000  # prompt characters kept for headers next to the observation lines


# -- prompts ------------------------------------------------------------------------------------------------


def obs_line(obs: dict[str, Any]) -> str:
    when = (obs.get("timestamp") or "")[:16].replace("T", " ")
    files = obs.get("files") or []
    tail = f" (files: {', '.join(files[:5])})" if files else ""
    return truncate(
        f"- {when} [{obs.get('type') or 'other'}] {summaries.describe(obs, LINE_CHARS)}{tail}", LINE_CHARS + 100
    )


def observation_block(observations: list[dict], budget: int) -> str:
    """One line per observation in time order; when they do not all fit in ``budget``
    characters, the most important (then the latest) are kept."""
    lines = [obs_line(o) for o in observations]
    if sum(len(line) + 1 for line in lines) <= budget:
        return "\n".join(lines)
    order = sorted(range(len(lines)), key=lambda i: (-int(observations[i].get("importance") or 0), -i))
    chosen, used = set(), 0
    for i in order:
        if used + len(lines[i]) + 1 <= budget:
            chosen.add(i)
            used += len(lines[i]) + 1
    shown = "\n".join(lines[i] for i in sorted(chosen))
    return f"({len(chosen)} of {len(lines)} observations shown: the most important)\n{shown}"


def provider_step(operation: str, feature: str) -> Callable[[Step], Step]:
    """Register ``fn`` as the model step of ``operation`` once per provider; each copy answers
    only while its provider is the configured one, so ``method`` names the provider that wrote
    and ``model`` the model ``feature`` uses (``model_steps.written_by``)."""

    def register(fn: Step) -> Step:
        for name in llm.PROVIDERS:
            model_step(operation, name, model=lambda ctx: model_of(ctx, feature))(_only_for(name, fn))
        return fn

    return register


def model_of(ctx: Ctx, feature: str) -> str | None:
    """The name of the model ``feature`` asks now (recorded as ``model`` beside ``method``)."""
    return llm.service(ctx.rt).clients.model_for(feature)


def written_by_model(obs: dict[str, Any]) -> bool:
    """Did a model write this observation's compression? The capture's deterministic compression
    carries no ``method`` and no ``compressedAt``; a model's carries both (``method``: the provider,
    ``model``: the model's name, recorded since models are)."""
    return bool(obs.get("compressedAt")) or obs.get("method") in llm.PROVIDERS


def by_another_model(record: dict[str, Any], provider: str | None, model: str | None) -> bool:
    """Was this model-written record (an observation's compression, a summary) written by a
    provider or model other than ``provider``/``model`` (the ones configured now)? A record
    from before models were recorded (a ``method`` but no ``model``) counts as another model's
    only when its provider differs: which of the provider's models wrote it is not known."""
    if record.get("method") != provider:
        return True
    recorded = record.get("model")
    return recorded is not None and recorded != model


def _only_for(provider: str, fn: Step) -> Step:
    def step(ctx: Ctx, payload: dict) -> Any:
        return fn(ctx, payload) if llm.service(ctx.rt).provider == provider else None

    return step


def _model(ctx: Ctx, feature: str) -> llm.LLMService | None:
    """The LLM service when ``feature`` would use the model now (checked before building a
    prompt, so no work is wasted without a key), and None while the provider is down: an
    explicit call then takes the deterministic path at once instead of waiting on it."""
    svc = llm.service(ctx.rt)
    return svc if svc.uses_model(feature) and not svc.provider_down() else None


def _budget(ctx: Ctx) -> int:
    return max(1000, ctx.rt.settings.llm_max_prompt_chars - HEADER_ROOM)


def session_header(session: dict[str, Any]) -> str:
    parts = [f"Session {session.get('id')}", f"project: {session.get('project') or '(none)'}"]
    for field in ("title", "firstPrompt", "startedAt", "endedAt"):
        if session.get(field):
            parts.append(f"{field}: {truncate(str(session[field]), 200)}")
    return "\n".join(parts)


def session_prompt(ctx: Ctx, session: dict[str, Any], observations: list[dict], ask: str) -> str:
    return (
        f"{session_header(session)}\n\nObservations, oldest first:\n"
        f"{observation_block(observations, _budget(ctx))}\n\n{ask}"
    )


# -- summaries and crystals ---------------------------------------------------------------------------------

SUMMARY = Task(
    "summarize",
    "You summarise one working session of an AI coding agent for the agent's next session: what was "
    "asked, what was done and changed, what failed and what is still open. title: at most 80 characters. "
    "narrative: a short paragraph. keyDecisions: decisions taken. filesModified: files changed. "
    "concepts: key technical concepts, lower case.",
    object_field(
        ["title", "narrative"],
        title=text_field(120),
        narrative=text_field(4000),
        keyDecisions=string_list(15, 300),
        filesModified=string_list(50, 512),
        concepts=string_list(15, 80),
    ),
    feature="summaries",
)


@provider_step("summarize", "summaries")
def summarize_step(ctx: Ctx, payload: dict) -> dict | None:
    svc = _model(ctx, "summaries")
    if svc is None:
        return None
    answer = svc.answer(SUMMARY, summary_prompt(ctx, payload["session"], payload["observations"]))
    if answer is not None:
        answer["title"] = truncate(" ".join(answer["title"].split()), 80)
    return answer


def summarize_with_model(ctx: Ctx, session_id: str, other_models: bool = False) -> dict[str, Any] | None:
    """Replace a session's deterministic summary (``method: synthetic``; with ``other_models``
    also one another provider or model wrote: ``by_another_model``) by the model's, made from
    its observations as they are now; its ``createdAt`` stays (the context block orders past
    sessions by it). None, without a call, when there is no such summary (none, the configured
    model's, or the session or its observations are gone).

    :raise llm.LLMError: no valid answer; the deterministic summary stands."""
    rt = ctx.rt
    svc, store = llm.service(rt), rt.db.reader()
    model = svc.clients.model_for("summaries")

    def replaceable(record: dict[str, Any] | None) -> bool:
        if not record:
            return False
        if record.get("method") == SYNTHETIC:
            return True
        return other_models and by_another_model(record, svc.provider, model)

    old, session = store.records.get(SUMMARIES, session_id), store.records.get(SESSIONS, session_id)
    if not replaceable(old) or not session:
        return None
    observations = summaries.session_observations(ctx, store, session_id)
    if not observations:
        return None
    answer = svc.generate_json(SUMMARY, summary_prompt(ctx, session, observations))
    answer["title"] = truncate(" ".join(answer["title"].split()), 80)
    fallback = summaries.synthetic_summary(session, observations)
    with rt.db.transaction("summarize", agent_id=rt.settings.agent_id) as tx:
        current = tx.records.get(SUMMARIES, session_id)
        if not replaceable(current):
            return None  # deleted, or the configured model wrote it meanwhile
        summary = _merged_summary(current, fallback, answer, len(observations), svc.provider, model)
        tx.records.set(SUMMARIES, session_id, summary, now=rt.clock.iso())
        was = "the deterministic one" if current.get("method") == SYNTHETIC else "another model's"
        tx.audit_message = f"model summary of session {session_id} replaced {was}"
        tx.after_commit(lambda: rt.publish("summary", summary))
    return summary


def _merged_summary(
    current: dict[str, Any],
    fallback: dict[str, Any],
    answer: dict[str, Any],
    observation_count: int,
    provider: str | None,
    model: str | None,
) -> dict[str, Any]:
    """The stored summary with the deterministic fields made again and the model's non-empty
    answers over them, marked as the model's."""
    return {
        **current,
        **fallback,
        **{k: v for k, v in answer.items() if k in fallback and v},
        "observationCount": observation_count,
        "method": provider,
        **({"model": model} if model else {}),
    }


def summary_prompt(ctx: Ctx, session: dict[str, Any], observations: list[dict]) -> str:
    return session_prompt(ctx, session, observations, "Summarise this session.")


CRYSTAL = Task(
    "crystallize",
    "You distil finished work of an AI coding agent into a digest: narrative (what was achieved), "
    "keyOutcomes (concrete results), filesAffected, and lessons (reusable rules learned, each one "
    "sentence that stands on its own; empty when nothing was learned).",
    object_field(
        ["narrative", "keyOutcomes", "filesAffected", "lessons"],
        narrative=text_field(4000),
        keyOutcomes=string_list(20, 300),
        filesAffected=string_list(50, 512),
        lessons=string_list(10, 300, 6),
    ),
    feature="crystallize",
)


def actions_prompt(actions: list[dict]) -> str:
    lines = [
        truncate(
            f"- {a.get('title')} ({a.get('status')})"
            + (f": {a['description']}" if a.get("description") else "")
            + (f" | result: {a['result']}" if a.get("result") else ""),
            600,
        )
        for a in actions
    ]
    return "Finished actions, oldest first:\n" + "\n".join(lines) + "\n\nDistil them."


@provider_step("crystallize", "crystallize")
def crystallize_step(ctx: Ctx, payload: dict) -> dict | None:
    svc = _model(ctx, "crystallize")
    if svc is None:
        return None
    if payload.get("session") is not None:
        prompt = session_prompt(ctx, payload["session"], payload["observations"], "Distil this session.")
    else:
        prompt = truncate(actions_prompt(payload.get("actions") or []), _budget(ctx))
    return svc.answer(CRYSTAL, prompt)


# -- reflection and insights ----------------------------------------------------------------------------------

REFLECT_RULES = (
    "pending_items: open TODOs and unfinished work, one '- ' line each, dropping items "
    "the session finished. session_patterns: recurring errors, habits and tool usage. "
    "project_context: durable facts about the project (layout, key files, conventions)."
)


@provider_step("reflect", "reflect")
def reflect_step(ctx: Ctx, payload: dict) -> dict | None:
    svc = _model(ctx, "reflect")
    if svc is None:
        return None
    current = {label: content or "" for label, content in payload["slots"].items()}
    task = Task(
        "reflect",
        "You maintain an AI coding agent's memory slots from what happened in a session. "
        f"{REFLECT_RULES} Return the complete new content of each slot that should change (keep what "
        "is still true), and leave out slots that need no change.",
        object_field(
            ["slots"],
            slots={
                "type": "object",
                "additionalProperties": False,
                "properties": {label: text_field(SLOT_SIZE) for label in current},
            },
        ),
        feature="reflect",
    )
    slots_text = "\n\n".join(f"[{label}]\n{truncate(text, SLOT_SIZE) or '(empty)'}" for label, text in current.items())
    prompt = session_prompt(
        ctx, payload["session"], payload["observations"], f"Current slots:\n{slots_text}\n\nUpdate the slots."
    )
    answer = svc.answer(task, prompt)
    updates = {k: v for k, v in (answer or {}).get("slots", {}).items() if k in current and v.strip()}
    return updates or None


@provider_step("insights", "reflect")
def insights_step(ctx: Ctx, payload: dict) -> list | None:
    clusters, svc = payload["clusters"], _model(ctx, "reflect")
    if not clusters or svc is None:
        return None
    item = object_field(
        ["title", "content", "confidence"],
        title=text_field(120),
        content=text_field(1000),
        confidence={"type": "number", "minimum": 0, "maximum": 1},
    )
    task = Task(
        "insights",
        "You find the insight behind each cluster of related notes from an AI coding "
        "agent's memory: one title, a content of one to three sentences that generalises the notes, "
        "and a confidence between 0 and 1. One insight per cluster, in the given order.",
        object_field(
            ["insights"],
            insights={"type": "array", "items": item, "minItems": len(clusters), "maxItems": len(clusters)},
        ),
        feature="reflect",
    )
    per_cluster = max(400, _budget(ctx) // len(clusters))
    blocks = [
        truncate(
            f"Cluster {n} (terms: {', '.join(c['terms'][:8])}):\n"
            + "\n".join(f"- [{i['kind']}] {i['text']}" for i in c["items"][:12]),
            per_cluster,
        )
        for n, c in enumerate(clusters, 1)
    ]
    answer = svc.answer(task, "\n\n".join(blocks))
    return None if answer is None else answer["insights"]


# -- consolidation -----------------------------------------------------------------------------------------------

GROUP_SAMPLE = 8  # most important observations of a group shown to the model (U§4.8)


@provider_step("consolidate", "consolidation")
def consolidate_step(ctx: Ctx, payload: dict) -> list | None:
    groups, svc = payload["groups"], _model(ctx, "consolidation")
    if not groups or svc is None:
        return None
    task, prompt = _consolidate_task(len(groups)), _group_blocks(ctx, groups)
    watched = llm.passing_failure_count()
    answer = svc.answer(task, prompt)
    if answer is None:
        if watched is not None and (llm.passing_failure_count() or 0) > watched:
            # A job waits for the model: write nothing now, so its next try pays only for these groups.
            raise Deferred(f"consolidation of {payload.get('project') or '(no project)'} waits for the model")
        return None
    return [_memory_draft(group, item) for (_key, group), item in zip(groups, answer["memories"], strict=True)]


def _consolidate_task(group_count: int) -> Task:
    """Exactly one memory per group, in the groups' order (the answer is zipped with them)."""
    memory = object_field(
        ["title", "content", "type", "concepts", "facts"],
        title=text_field(120),
        content=text_field(4000),
        type={"enum": list(MEMORY_TYPES)},
        concepts=string_list(10, 80),
        facts=string_list(5, 300, 6),
    )
    return Task(
        "consolidate",
        "You turn groups of related observations from an AI coding agent's sessions "
        "into long-term memories: for each group one memory (title, content that generalises the "
        "group, type, concepts) and up to five standalone facts worth keeping. One memory per group, "
        "in the given order.",
        object_field(
            ["memories"], memories={"type": "array", "items": memory, "minItems": group_count, "maxItems": group_count}
        ),
        feature="consolidation",
    )


def _group_blocks(ctx: Ctx, groups: list) -> str:
    """Each group's most important observations, the prompt budget shared between the groups."""
    per_group = max(400, _budget(ctx) // len(groups))
    blocks = []
    for n, (key, group) in enumerate(groups, 1):
        top = sorted(group, key=lambda o: -int(o.get("importance") or 0))[:GROUP_SAMPLE]
        blocks.append(
            truncate(
                f"Group {n} (shared {key}; {len(group)} observations):\n" + "\n".join(obs_line(o) for o in top),
                per_group,
            )
        )
    return "\n\n".join(blocks)


def _memory_draft(group: list[dict], item: dict) -> dict[str, Any]:
    return {
        "title": truncate(" ".join(item["title"].split()), 80),
        "content": item["content"],
        "type": item["type"],
        "concepts": item["concepts"],
        "facts": item["facts"],
        "files": list(dict.fromkeys(f for o in group for f in o.get("files") or []))[:10],
        "sourceObservationIds": sorted(o["id"] for o in group),
    }


# -- session end: the background jobs ------------------------------------------------------------------------------


def queue_session_model_work(ctx: Ctx, session: dict[str, Any]) -> None:
    """Queue the model upgrades of what the session end just wrote deterministically, and the
    session-end consolidation (at most once per project per cooldown)."""
    if not session.get("observationCount"):
        return
    rt, svc, sid = ctx.rt, llm.service(ctx.rt), session["id"]
    with rt.db.transaction("llm_queue") as tx:
        if svc.uses_model("summaries"):
            svc.enqueue(tx, "summarize", sid)
        if svc.uses_model("reflect") and rt.settings.reflect_on_session_end:
            svc.enqueue(tx, "reflect", sid)
        if svc.consolidation_on():
            project = session.get("project") or ""
            svc.enqueue(
                tx,
                "consolidate",
                project,
                {"project": session.get("project")},
                not_before=consolidation_due(ctx, tx, project),
            )


def consolidation_due(ctx: Ctx, tx: Any, project: str) -> float:
    """When the next session-end consolidation of ``project`` may start (epoch s; 0: now). The
    cooldown counts from the last start, kept in the database: the request process that queues
    the job and the worker process that runs it share no memory, and a restart forgets nothing."""
    last = tx.records.get(CONSOLIDATION_RUNS, _run_key(project))
    if last is None:
        return 0.0
    return float(last["startedAt"]) + ctx.rt.settings.consolidation_cooldown_ms / 1000


def _run_key(project: str) -> str:
    return f"project:{project}"


@llm.job_handler("summarize")
def _summarize_job(ctx: Ctx, session_id: str, args: dict) -> None:
    if llm.service(ctx.rt).uses_model("summaries"):
        with llm.passing_failures() as failures:
            try:
                summaries.summarize(ctx, session_id)
            except AppError:  # the session or its observations are gone
                return
        llm.retry_for(failures)  # the deterministic summary stands until the model answers


@llm.job_handler("reflect")
def _reflect_job(ctx: Ctx, session_id: str, args: dict) -> None:
    if llm.service(ctx.rt).uses_model("reflect"):
        with llm.passing_failures() as failures:
            try:
                reflect.reflect_session(ctx, session_id)
            except AppError:
                return
        llm.retry_for(failures)


@llm.job_handler("consolidate")
def _consolidate_job(ctx: Ctx, project: str, args: dict) -> None:
    rt = ctx.rt
    # Recorded before the run: a session that ends meanwhile queues the next one a cooldown later.
    with rt.db.transaction("consolidation_started") as tx:
        started = {"project": args.get("project"), "startedAt": rt.clock.time(), "startedAtIso": rt.clock.iso()}
        tx.records.set(CONSOLIDATION_RUNS, _run_key(project), started, now=started["startedAtIso"])
    scope = {"project": args["project"]} if args.get("project") else {}  # none: every project
    # Groups the model failed on stay unwritten and the job runs again; the groups it wrote are
    # skipped then (their observations are unchanged), so they are not paid for twice.
    with llm.passing_failures() as failures:
        registry.run(consolidate.memory_consolidate, ctx, scope)
    llm.retry_for(failures)
