"""The settings of working memory (working/): its store (SQLite or Redis) and Redis's URL and
key prefix, the default TTL, the per-scope caps on keys, scratchpad entries and checkpoints, and
saving it as a memory at session end. Part of ``settings.SETTINGS`` (this block sits where it
always did in README's table); kept in its own module so the main table stays readable.
"""

from __future__ import annotations

from agentmemory_server.kernel.setting_types import (
    Setting,
    _bool,
    _choice,
    _non_negative_int,
    _positive_int,
    redis_url,
)

WORKING_MEMORY_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "working_memory_backend",
        ("WORKING_MEMORY_BACKEND",),
        "sqlite",
        _choice("sqlite", "redis"),
        "Working-memory store: `sqlite` (the database file) or `redis` (REDIS_URL). An unreachable "
        "Redis moves every process sharing the database to SQLite until healed (POST /diagnostics/heal), "
        "reported in stats, /health and diagnose.",
    ),
    Setting(
        "redis_url",
        ("REDIS_URL",),
        "redis://127.0.0.1:6379/0",
        redis_url,
        "Redis for WORKING_MEMORY_BACKEND=redis and AGENTMEMORY_RATE_LIMIT_STORE=redis (connect timeout 0.5 s, "
        "no retries).",
        secret=True,
    ),
    Setting(
        "working_memory_redis_prefix",
        ("WORKING_MEMORY_REDIS_PREFIX",),
        "agentmemory:wm",
        str,
        "Prefix of every Redis key the working memory writes.",
    ),
    Setting(
        "working_memory_default_ttl_seconds",
        ("WORKING_MEMORY_DEFAULT_TTL_SECONDS",),
        86400,
        _non_negative_int,
        "TTL of a working-memory key set without ttlSeconds; 0 = keys never expire.",
    ),
    Setting(
        "working_memory_max_keys",
        ("WORKING_MEMORY_MAX_KEYS_PER_SESSION",),
        1000,
        _positive_int,
        "Live keys per working-memory scope; a new key beyond it is a 409, nothing is evicted.",
    ),
    Setting(
        "working_memory_max_items_per_session",
        ("WORKING_MEMORY_MAX_ITEMS_PER_SESSION",),
        100,
        _positive_int,
        "Scratchpad entries kept per scope; the oldest are dropped (and counted).",
    ),
    Setting(
        "working_memory_max_checkpoints",
        ("WORKING_MEMORY_MAX_CHECKPOINTS_PER_SESSION",),
        20,
        _positive_int,
        "Checkpoints kept per scope; creating one more prunes the oldest (listed "
        "in the reply). Checkpoints never count against keys and never expire.",
    ),
    Setting(
        "working_memory_summarize_on_end",
        ("WORKING_MEMORY_SUMMARIZE_ON_END",),
        False,
        _bool,
        "On session end, save what its working memory holds as a long-term memory.",
    ),
)
