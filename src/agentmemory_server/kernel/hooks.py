"""The extension points features plug into, and the order they run in.

Features never append themselves to each other's lists at import time: ``wiring.py`` builds one
``Hooks`` value naming every hook in its order, and the runtime carries it. A feature that offers
an extension point runs ``ctx.rt.hooks.<point>`` in sequence.

- ``session_end(ctx, session)``: after a session is marked completed (summary, then the project's
  cached profile dropped, reflection, working-memory summary, then background model work). They run inside
  ``model_steps.deterministic_only()``, so a session end never waits for a model.
- ``observe(ctx, tx, observation)``: inside ``store_observation``'s transaction for each new
  observation (the LLM layer queues its background compression here, so a crash cannot lose it).
- ``remember(ctx, tx, memory, superseded)``: inside remember's transaction (the ``supersedes``
  relation).
- ``reindex(rt, progress)``: after ``reindex`` rebuilt the lexical index (vector re-embedding);
  returns a summary dict or None.
- ``write_lock_holder(rt)``: what holds the store's write lock, when a feature knows (the import
  lease of memory/transfer_lease.py): a dict (``operation``, ``since``, ``host``, ``pid``) or None.
  A write refused with 503 ``database_busy`` names it (``registry.call``); it must answer without
  waiting for the write lock.
- ``context_blocks``: ``(name, provider)`` pairs; each provider turns a ``BlockRequest`` into
  context ``Block``s (pinned slots, profile, lessons, past sessions). Packing sorts blocks by
  recency, so this order only breaks ties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentmemory_server.kernel.registry import Ctx

PINNED = "9999-12-31T23:59:59.999Z"  # a block recency that sorts before every real timestamp


@dataclass
class Block:
    """One piece of the context block: text with the recency it is sorted by."""

    kind: str
    text: str
    recency: str
    source_ids: list[str] = field(default_factory=list)


@dataclass
class BlockRequest:
    """What a context provider knows about the context being built."""

    ctx: Ctx
    session_id: str | None
    project: str | None
    agent_id: str | None


SessionEndHook = Callable[["Ctx", dict[str, Any]], None]
ObserveHook = Callable[["Ctx", Any, dict[str, Any]], None]
RememberHook = Callable[["Ctx", Any, dict[str, Any], "dict[str, Any] | None"], None]
ReindexHook = Callable[[Any, Any], "dict[str, Any] | None"]
BlockProvider = Callable[[BlockRequest], list[Block]]
WriteLockHolder = Callable[[Any], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Hooks:
    session_end: tuple[SessionEndHook, ...] = ()
    observe: tuple[ObserveHook, ...] = ()
    remember: tuple[RememberHook, ...] = ()
    reindex: tuple[ReindexHook, ...] = ()
    context_blocks: tuple[tuple[str, BlockProvider], ...] = ()
    write_lock_holder: tuple[WriteLockHolder, ...] = ()
