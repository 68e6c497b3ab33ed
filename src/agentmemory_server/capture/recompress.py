"""A stored observation compressed again by today's capture code.

What an observation says (type, title, narrative, files, importance) is derived from its hook
payload once, when it is captured (``compress.synthetic_compression``), and the payload is kept
beside it as ``raw`` (already stripped of secrets and cut to size). When that derivation
improves, the records stored before keep what the older code made of them: a Claude Code Grep
titled "1 matches", a session start titled as if the agent had said "SessionStart". ``recompressed``
makes of a stored record what a capture of the same payload makes today; ``agentmemory
recompress`` (operations/recompress.py) applies it to a whole store.
"""

from __future__ import annotations

from typing import Any

from agentmemory_server.capture import filters
from agentmemory_server.capture.client_hooks import note_moved_from_message
from agentmemory_server.capture.compress import synthetic_compression

# The fields a capture derives from the payload; every other field (ids, times, session,
# project, images, the payload itself) is the event's and stays as it is.
DERIVED = (
    "type",
    "title",
    "subtitle",
    "facts",
    "narrative",
    "concepts",
    "files",
    "importance",
    "confidence",
    "toolName",
    "contentHash",
)

# Why a stored observation is left as it is.
MODEL_COMPRESSED = "modelCompressed"  # a model's compression is better than ours: kept
NO_PAYLOAD = "noPayload"  # imported or written without one: nothing to derive from


def left_as_is(obs: dict[str, Any]) -> str | None:
    """Why ``obs`` cannot be compressed again (MODEL_COMPRESSED, NO_PAYLOAD), or None."""
    if obs.get("compressedAt"):
        return MODEL_COMPRESSED
    if "raw" not in obs or not isinstance(obs.get("hookType"), str):
        return NO_PAYLOAD
    return None


def captured_hook_type(obs: dict[str, Any]) -> str:
    """The hook type the capture compressed it as: the client's own name when the server did
    not know it (stored as ``other``), as ``observe.prepare`` does."""
    original = obs.get("originalHookType")
    if isinstance(original, str) and original:
        return filters.normalise_hook_type(original)
    return str(obs["hookType"])


def recompressed(obs: dict[str, Any]) -> dict[str, Any] | None:
    """``obs`` as a capture of its payload would store it today, or None when that is what it
    already is, or it cannot be made again (``left_as_is``)."""
    if left_as_is(obs):
        return None
    payload = note_moved_from_message(obs["raw"])
    fresh = synthetic_compression(captured_hook_type(obs), payload)
    updated = {key: value for key, value in obs.items() if key not in DERIVED}
    updated.update(fresh, raw=payload)
    return None if updated == obs else updated
