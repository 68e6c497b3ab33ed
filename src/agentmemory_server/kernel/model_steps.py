"""Optional model steps in front of the deterministic memory-model functions.

Session summaries, reflection, crystallization and consolidation each have a deterministic
path that always works without a language model. A model-backed step (the Gemini layer) can
register itself for an operation with ``@model_step("summarize", "gemini")``; registered steps
run first, in order, and each may return a result or None to pass. A step that raises is
logged and skipped, so a model outage is never an error for the caller: the deterministic
fallback answers, and the result says which ``method`` produced it (``written_by``: the step's
name, e.g. the provider, and ``model``, the model it asked, when the step names one).

Payloads per operation (all dicts, read-only for the step):

- ``summarize``: ``{session, observations}`` -> a summary dict (title, narrative, keyDecisions,
  filesModified, concepts).
- ``crystallize``: ``{session?, observations?, actions?, edges?}`` -> ``{narrative, keyOutcomes,
  filesAffected, lessons}``.
- ``reflect``: ``{session, observations, slots}`` -> ``{label: new content}`` for slots to replace.
- ``insights``: ``{project, clusters: [{terms, items}]}`` -> a list of ``{title, content,
  confidence}`` (one per cluster, same order; None entries keep the deterministic insight).
- ``consolidate``: ``{project, groups}`` -> a list of memory drafts (content, type, title,
  concepts, files, sourceObservationIds, and optionally ``facts``: texts saved as ``fact``
  memories next to the group's memory).

The Gemini steps live in llm_steps.py (the LLM layer, llm.py).

A step may raise ``Deferred`` instead of returning None: it tells the caller to write nothing
for this operation now, because the work will be done again later (a background job waiting
for the model); the caller must not store its deterministic result in place of the model's.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

OPERATIONS = ("summarize", "crystallize", "reflect", "insights", "consolidate")
Step = Callable[[Any, dict], Any]
MODEL_STEPS: dict[str, list[tuple[str, Step]]] = {op: [] for op in OPERATIONS}
ModelName = Callable[[Any], "str | None"]
# (operation, step name) -> the model the step asks (a model's name, never a key or a URL)
MODEL_NAMES: dict[tuple[str, str], ModelName] = {}
SYNTHETIC = "synthetic"
log = logging.getLogger("agentmemory.model_steps")
# False inside ``deterministic_only()``: the request path of a session end, where a model call
# would make the client wait; the LLM layer redoes that work in the background instead.
_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("model_steps_inline", default=True)


@contextmanager
def deterministic_only() -> Iterator[None]:
    """Within this block every operation takes its deterministic path (no model step runs)."""
    token = _INLINE.set(False)
    try:
        yield
    finally:
        _INLINE.reset(token)


def model_step(operation: str, name: str, model: ModelName | None = None) -> Callable[[Step], Step]:
    """Register ``fn(ctx, payload)`` as a model step for ``operation``; ``model(ctx)`` names the
    model it asks (recorded as ``model`` beside ``method`` by ``written_by``)."""
    if operation not in MODEL_STEPS:
        raise ValueError(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")

    def register(fn: Step) -> Step:
        if any(n == name for n, _ in MODEL_STEPS[operation]):
            raise ValueError(f"duplicate model step {name!r} for {operation!r}")
        MODEL_STEPS[operation].append((name, fn))
        if model is not None:
            MODEL_NAMES[(operation, name)] = model
        return fn

    return register


class Deferred(Exception):
    """Raised by a model step: leave this operation unwritten, it runs again later."""


def run_model_steps(operation: str, ctx: Any, payload: dict) -> tuple[Any, str | None]:
    """(result, step name) of the first step that answers, or (None, None).

    :raise Deferred: a step asked to write nothing now (see the module's docstring)."""
    if not _INLINE.get():
        return None, None
    for name, step in MODEL_STEPS[operation]:
        try:
            result = step(ctx, payload)
        except Deferred:
            raise
        except Exception:  # noqa: BLE001 - a model failure falls back to the deterministic path
            log.exception("model step %s for %s failed; using the next one", name, operation)
            continue
        if result is not None:
            return result, name
    return None, None


def written_by(operation: str, ctx: Any, name: str | None) -> dict[str, str]:
    """``{"method": ..., "model": ...}`` for a record ``run_model_steps`` answered: the step's
    name (``synthetic``: no step answered) and the model that step asked, when it names one."""
    if name is None:
        return {"method": SYNTHETIC}
    namer = MODEL_NAMES.get((operation, name))
    model = namer(ctx) if namer is not None else None
    return {"method": name, **({"model": model} if model else {})}
