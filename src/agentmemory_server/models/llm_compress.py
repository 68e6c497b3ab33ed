"""The model's compression of an observation (``AGENTMEMORY_AUTO_COMPRESS``).

``observe`` stores the synthetic compression at once and, in the same transaction, queues a
``compress`` job (an ``observe`` hook). The worker first drops low-value observations
(triage.py: empty, trivial, repeated, re-read unchanged; counted, no call made), then asks the
model for ``{type, title, facts, narrative, concepts, files, importance}``, validated against a
schema with one repair round; a valid answer replaces those fields (``method``: the provider,
e.g. ``"openai"``), re-indexes the record (which re-queues its embedding) and publishes
``observation_updated``. Anything else (including a used-up token budget) leaves the synthetic
record as it is. ``recompress --with-model`` (operations/recompress_model.py) runs the same
compression again on stored observations.

Apart from llm_steps.py (the session-level steps: summaries, reflection, insights, crystals,
consolidation), which it shares ``model_of``, ``written_by_model`` and ``by_another_model``
with (a summary is a model-written record too).
"""

from __future__ import annotations

from typing import Any

from agentmemory_server.capture.compress import OBSERVATION_TYPES
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.scopes import obs_scope
from agentmemory_server.kernel.util import stringify, truncate
from agentmemory_server.models import llm
from agentmemory_server.models.answer_schemas import object_field, string_list, text_field
from agentmemory_server.models.llm import Task
from agentmemory_server.models.llm_steps import by_another_model, model_of, written_by_model
from agentmemory_server.models.triage import low_value_reason
from agentmemory_server.retrieval import search

RAW_CHARS = 6000  # of a hook payload sent for compression


COMPRESS = Task(
    "compress",
    "You turn one event recorded from an AI coding agent's session into a compact memory record. "
    "type: the kind of event. title: what happened, at most 80 characters. facts: short standalone "
    "facts worth remembering later (may be empty). narrative: one to three sentences. concepts: the key "
    "technical concepts, lower case. files: file paths the event involves. importance: 1 (noise) to 10 "
    "(a decision or failure the next session must know). Never repeat secrets, tokens or passwords.",
    object_field(
        ["type", "title", "facts", "narrative", "concepts", "files", "importance"],
        type={"enum": list(OBSERVATION_TYPES)},
        title=text_field(120),
        facts=string_list(12, 400),
        narrative=text_field(3000),
        concepts=string_list(15, 80),
        files=string_list(30, 512),
        importance={"type": "integer", "minimum": 1, "maximum": 10},
    ),
    feature="compress",
)


def compress_prompt(obs: dict[str, Any]) -> str:
    head = [
        f"hookType: {obs.get('hookType')}",
        f"project: {obs.get('project') or '(none)'}",
        f"time: {obs.get('timestamp')}",
    ]
    if obs.get("toolName"):
        head.append(f"tool: {obs['toolName']}")
    raw = obs.get("raw")
    body = truncate(stringify(raw) if raw not in (None, "", {}) else obs.get("narrative") or "", RAW_CHARS)
    return "\n".join(head) + f"\nevent data (JSON; secrets already redacted):\n{body}"


def apply_compression(ctx: Ctx, session_id: str, obs_id: str, answer: dict[str, Any]) -> dict | None:
    """Replace an observation's synthetic fields with the model's, re-index it (its embedding is
    re-queued by the index hook) and publish the update. None when the record is gone."""
    rt = ctx.rt
    with rt.db.transaction("llm_compress", agent_id=rt.settings.agent_id) as tx:
        obs = tx.records.get(obs_scope(session_id), obs_id)
        if obs is None:
            return None
        # An agent's own concepts (agent_observe notes) stay; the model's are added.
        concepts = list(
            dict.fromkeys(" ".join(str(c).lower().split()) for c in (obs.get("concepts") or []) + answer["concepts"])
        )[:30]
        obs.update(
            type=answer["type"],
            title=truncate(" ".join(answer["title"].split()), 80),
            facts=answer["facts"],
            narrative=answer["narrative"],
            concepts=concepts,
            files=list(dict.fromkeys((obs.get("files") or []) + answer["files"]))[:50],
            importance=answer["importance"],
            confidence=0.8,
            method=llm.service(rt).provider,
            model=model_of(ctx, "compress"),
            compressedAt=rt.clock.iso(),
        )
        tx.records.set(obs_scope(session_id), obs_id, obs, now=obs["compressedAt"])
        search.index_record(tx, "observation", obs)
        tx.audit_message = f"model compression of {obs_id}"
        tx.after_commit(lambda: rt.publish("observation_updated", obs))
    vectors = rt.services.get("vectors")
    if vectors is not None:
        vectors.notify()
    return obs


def queue_compression(ctx: Ctx, tx: Any, obs: dict[str, Any]) -> None:
    svc = llm.service(ctx.rt)
    if svc.uses_model("compress"):
        svc.enqueue(tx, "compress", obs["id"], {"sessionId": obs["sessionId"]})


# What ``compress_with_model`` did besides compressing.
COMPRESSED, GONE, MODEL_WRITTEN = "compressed", "gone", "modelWritten"


def compress_with_model(ctx: Ctx, session_id: str, obs_id: str, other_models: bool = False) -> str:
    """Ask the model for one stored observation's compression and store it (``COMPRESSED``);
    or, without a call, ``GONE`` (deleted), ``MODEL_WRITTEN`` (a model's already; with
    ``other_models``, only the configured model's: ``by_another_model``) or the low-value reason
    it is skipped for (triage.py; counted).

    :raise llm.LLMError: no valid answer (BudgetReached, BreakerOpen: nothing was sent); the
        deterministic record stands."""
    svc, store = llm.service(ctx.rt), ctx.rt.db.reader()
    obs = store.records.get(obs_scope(session_id), obs_id)
    if obs is None:
        return GONE
    if written_by_model(obs) and not (
        other_models and by_another_model(obs, svc.provider, svc.clients.model_for("compress"))
    ):
        return MODEL_WRITTEN
    reason = low_value_reason(store, obs) if ctx.rt.settings.compress_skip_low_value else None
    if reason is not None:
        svc.skip_low_value("compress", reason)
        return reason
    answer = svc.generate_json(COMPRESS, compress_prompt(obs))
    return COMPRESSED if apply_compression(ctx, session_id, obs_id, answer) is not None else GONE


@llm.job_handler("compress")
def _compress_job(ctx: Ctx, obs_id: str, args: dict) -> None:
    if not llm.service(ctx.rt).uses_model("compress"):
        return  # turned off since it was queued: the synthetic record stands
    try:
        compress_with_model(ctx, args["sessionId"], obs_id)
    except llm.BreakerOpen as exc:
        raise llm.Retry(exc.message, exc.retry_at) from None
    except (llm.InvalidOutput, llm.ModelRefused, llm.BudgetReached):
        return  # no better answer for this one today: keep the synthetic compression
    except llm.LLMError as exc:
        raise llm.Retry(exc.message) from None
