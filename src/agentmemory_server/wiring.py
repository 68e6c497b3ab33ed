"""The one place that assembles the server: which feature modules exist, which subsystems run,
and every hook in its order.

Importing a feature module registers its tools (``@tool``), model steps (``@model_step``) and
job handlers (``@job_handler``), all keyed by name, so their import order does not matter.
Everything whose *order* matters is listed here instead:

- ``FEATURE_MODULES``: every module that registers tools, in the order the tool list (MCP
  ``tools/list``, README's tool table) shows them;
- ``SUBSYSTEMS``: long-lived services built for every runtime in this order (and closed in
  reverse); each may offer ``health()``, ``diagnose()``, ``heal(dry_run)``, ``start()`` (run
  once all are built) and ``close()``;
- ``HOOKS``: the extension points of ``kernel/hooks.py``, each hook in the order it runs.

``build_runtime(settings)`` is how adapters, the CLI and tests get a runtime.
"""

from __future__ import annotations

from types import ModuleType

from agentmemory_server import errors
from agentmemory_server.capture import (
    antigravity,
    client_hooks,
    image_store,
    inbox,
    observe,
    retry,
    sessions,
    spool,
    spool_drain,
)
from agentmemory_server.kernel import privacy, registry
from agentmemory_server.kernel.hooks import Hooks
from agentmemory_server.kernel.runtime import Runtime, SubsystemFactory
from agentmemory_server.kernel.settings import Settings
from agentmemory_server.kernel.util import Clock
from agentmemory_server.memory import (
    actions,
    consolidate,
    crystals,
    lessons,
    memories,
    patterns,
    profiles,
    reflect,
    relations,
    retention,
    slots,
    summaries,
    transfer,
    transfer_lease,
)
from agentmemory_server.models import graph, llm, llm_compress, llm_steps
from agentmemory_server.operations import (
    backups,
    diagnose,
    health,
    maintenance,
    overview,
    recompress,
    resources,
    status,
    tokens,
    workers,
)
from agentmemory_server.retrieval import context, recall, timeline, vectors
from agentmemory_server.working import service as working_service
from agentmemory_server.working import tools as working_tools

FEATURE_MODULES: tuple[ModuleType, ...] = (
    health,
    sessions,
    observe,
    inbox,
    retry,
    image_store,
    client_hooks,
    memories,
    transfer,
    context,
    recall,
    timeline,
    profiles,
    lessons,
    slots,
    actions,
    relations,
    summaries,
    crystals,
    reflect,
    consolidate,
    retention,
    diagnose,
    antigravity,
    working_tools,
    patterns,
    resources,
    llm,
    llm_compress,
    llm_steps,
    graph,
    overview,
    status,
    maintenance,
    recompress,
    tokens,
)
registry.REGISTRY.order_by_module([module.__name__ for module in FEATURE_MODULES])
# Error messages may quote what a client sent: none carries a secret back to it or into a log.
errors.redact_with(privacy.strip_private_data)

SUBSYSTEMS: tuple[tuple[str, SubsystemFactory], ...] = (
    ("images", image_store.ImageStore),
    ("capture_spool", spool.CaptureSpool),
    ("capture", inbox.CaptureInbox),
    ("capture_retry", retry.RetryWorker),
    ("capture_spool_drain", spool_drain.SpoolDrainer),  # where no worker drains: jobs off, or none alive
    ("session_finalizer", sessions.SessionFinalizer),
    ("vectors", vectors.VectorService),
    ("lessons", lessons.LessonService),
    ("slots", slots.SlotService),
    ("relations", relations.RelationChecks),
    ("retention", retention.RetentionService),
    ("database", diagnose.DatabaseChecks),
    ("backups", backups.LocalBackups),
    ("working_memory", working_service.WorkingMemory),
    ("llm", llm.LLMService),
    ("background", workers.BackgroundStatus),
)

HOOKS = Hooks(
    # After a session ends: its summary first (reflection reads it), then slot reflection, the
    # working-memory summary, and last the model work queued for the background.
    session_end=(
        summaries.summarize_on_session_end,
        profiles.forget_profile_on_session_end,
        reflect.reflect_on_session_end,
        working_tools.summarise_on_session_end,
        llm_steps.queue_session_model_work,
        graph.queue_graph_extraction,
    ),
    observe=(llm_compress.queue_compression,),
    remember=(relations.record_supersede_relation,),
    reindex=(maintenance.reembed_vectors,),
    write_lock_holder=(transfer_lease.write_lock_holder,),
    context_blocks=(
        ("memories", memories.memories_block),
        ("relevant", context.relevant_records),
        ("past_sessions", context.past_sessions),
        ("lessons", lessons.lessons_block),
        ("profile", profiles.profile_block),
        ("pinned_slots", slots.pinned_slots_block),
    ),
)


def build_runtime(
    settings: Settings, *, clock: Clock | None = None, hooks: Hooks = HOOKS, role: str = "server"
) -> Runtime:
    """A runtime with every feature of this server (``hooks`` replaces the hook table, for tests;
    ``role``: server, worker or tool, see ``kernel/background.py``)."""
    return Runtime(settings, hooks=hooks, subsystems=SUBSYSTEMS, clock=clock, role=role)
