"""Where the observation pipeline lives: ``agentmemory_server.capture``.

``capture/observe.py`` is observe (privacy stripping, event-id dedup, compression, storage,
indexing, broadcast) and ``capture/sessions.py`` the session lifecycle; the memory model is in
``agentmemory_server/memory/``. This module only re-exports the main entry points.
"""

from agentmemory_server.capture.observe import agent_observe, derive_event_id, store_observation

__all__ = ["agent_observe", "derive_event_id", "store_observation"]
