"""The hook types the server stores (an event of any other type is stored as ``other``, with the
name its client sent). Capture classifies events by them, and what counts as a project's words
leaves them out: they head the titles of events that carry no tool ("stop: Fixed the test")."""

from __future__ import annotations

# Events of other coding agents that upstream has no type for (capture/clients maps them):
# failures outside a tool call, and what the agent said or thought.
CLIENT_HOOK_TYPES = frozenset(
    {"error_occurred", "stop_failure", "session_error", "assistant_response", "agent_thought"}
)
# Upstream's hook types (U§3, plus 0.9.30's permission_request and post_compact), ours for an
# agent's own note, and the client events above.
KNOWN_HOOK_TYPES = CLIENT_HOOK_TYPES | frozenset(
    {
        "session_start",
        "prompt_submit",
        "pre_tool_use",
        "post_tool_use",
        "post_tool_failure",
        "pre_compact",
        "post_compact",
        "subagent_start",
        "subagent_stop",
        "notification",
        "task_completed",
        "permission_request",
        "stop",
        "session_end",
        "observation",
        "other",
    }
)
