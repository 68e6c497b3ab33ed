"""The settings of capture: what a hook endpoint hands back to the agent and how big a raw
payload may be (``HOOK_SETTINGS``), and which tools are captured, how long outputs are kept,
retries, the capture inbox and spool, session finalising and the image store
(``CAPTURE_SETTINGS``). Both are part of ``settings.SETTINGS``, each where its block always sat
(the order of README's table is unchanged); kept in their own module so the main table stays
readable.
"""

from __future__ import annotations

from agentmemory_server.kernel.setting_types import (
    Setting,
    _choice,
    _non_negative_int,
    _optional_str,
    _positive_int,
)

# Capture straight from coding agents (capture/client_hooks.py, `agentmemory connect`).
HOOK_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "hook_context",
        ("AGENTMEMORY_HOOK_CONTEXT",),
        "all",
        _choice("all", "session", "off"),
        "What `POST /agentmemory/hooks/<client>` hands back to the agent: `all` = the context block at "
        "session start and the memories relevant to each prompt, `session` = only at session start, "
        "`off` = nothing (capture only).",
    ),
    Setting(
        "hook_prompt_budget",
        ("AGENTMEMORY_HOOK_PROMPT_BUDGET",),
        400,
        _positive_int,
        "Token budget of the memories a prompt hook gets back (tokens ~ chars / 3).",
    ),
    Setting(
        "hook_max_body_bytes",
        ("AGENTMEMORY_HOOK_MAX_BODY_BYTES",),
        16_777_216,
        _positive_int,
        "Largest accepted raw hook payload (hooks post whole tool outputs; they are clipped to "
        "AGENTMEMORY_CAPTURE_OUTPUT_MAX before storing).",
    ),
)

# Capture (capture/observe.py, capture/inbox.py, capture/images.py, capture/sessions.py).
CAPTURE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "capture_allow",
        ("AGENTMEMORY_CAPTURE_ALLOW",),
        "",
        str,
        "Only tools matching these names are captured (comma or space separated, `*` globs; "
        "`mcp__server__tool` also matches by its last part). Set, it replaces every deny rule.",
    ),
    Setting(
        "capture_deny",
        ("AGENTMEMORY_CAPTURE_DENY",),
        "",
        str,
        "Tools never captured, besides the built-in `memory_*`, `toolsearch`, `listmcpresources`, "
        "`fetchmcpresource`. A refused event is kept in the capture inbox as `filtered` (GET /capture).",
    ),
    Setting(
        "capture_output_max",
        ("AGENTMEMORY_CAPTURE_OUTPUT_MAX",),
        8000,
        _positive_int,
        "A tool's output (tool_output / tool_response / tool_result) is cut to this many characters "
        "with a `[...truncated]` marker, as upstream's hooks do; so is each long string of a raw hook "
        "payload (`/hooks/<client>`: tool output, file contents).",
    ),
    Setting(
        "capture_max_attempts",
        ("AGENTMEMORY_CAPTURE_MAX_ATTEMPTS",),
        5,
        _positive_int,
        "Attempts to store a hook event whose processing failed before it becomes a dead letter.",
    ),
    Setting(
        "capture_retry_interval_ms",
        ("AGENTMEMORY_CAPTURE_RETRY_INTERVAL_MS",),
        10_000,
        _positive_int,
        "First retry delay of a failed hook event (doubles per attempt, at most 15 minutes).",
    ),
    Setting(
        "capture_inbox_max",
        ("AGENTMEMORY_CAPTURE_INBOX_MAX",),
        10_000,
        _positive_int,
        "Hook events waiting for a retry; when full, a failing event gets 503 (hooks keep it and resend).",
    ),
    Setting(
        "capture_spool_max",
        ("AGENTMEMORY_CAPTURE_SPOOL_MAX",),
        10_000,
        _non_negative_int,
        "Hook events kept on this node's disk (`<data dir>/server-spool/`) while the database cannot take "
        "them, not even into the capture inbox (PostgreSQL down, SQLite locked); stored once it can. "
        "0 turns the spool off (such events get 503).",
    ),
    Setting(
        "capture_dead_max",
        ("AGENTMEMORY_CAPTURE_DEAD_MAX",),
        1000,
        _positive_int,
        "Dead letters and filtered events kept each (the oldest go first).",
    ),
    Setting(
        "finalize_idle_ms",
        ("AGENTMEMORY_FINALIZE_IDLE_MS",),
        120_000,
        _positive_int,
        "A session whose turn ended (`/session/end` with `final:false`, upstream's Stop hook) is "
        "completed once it has been idle this long; a new observation reopens a completed session.",
    ),
    Setting(
        "image_store_max_bytes",
        ("AGENTMEMORY_IMAGE_STORE_MAX_BYTES",),
        524_288_000,
        _positive_int,
        "Quota of the image store (`images/` beside a SQLite database; the `images` table on PostgreSQL). "
        "Above it the oldest images are evicted (their records keep the reference and say so); "
        "unreferenced images go after 30 s.",
    ),
    Setting(
        "import_root",
        ("AGENTMEMORY_IMPORT_ROOT",),
        None,
        _optional_str,
        "The only directory (besides the data directory) from which the server reads a file a client "
        "names, such as an `image_path` in a hook payload. Unset: only the data directory.",
    ),
)
