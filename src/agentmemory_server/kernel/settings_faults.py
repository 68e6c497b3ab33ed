"""The settings for faults, floods and slow clients: disk space and durability, integrity checks,
local snapshots, the connection worker, write rate limits and the bounds of the durable queues.
Part of ``settings.SETTINGS`` (kept in its own module so the main table stays readable).
"""

from __future__ import annotations

from agentmemory_server.kernel.setting_types import (
    Setting,
    _choice,
    _non_negative_float,
    _non_negative_int,
    _optional_str,
    _positive_float,
    _positive_int,
)

FAULT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "disk_warn_mb",
        ("AGENTMEMORY_DISK_WARN_MB",),
        512,
        _non_negative_int,
        "/health (status degraded) and the viewer warn while less than this many MB are free next to the database.",
    ),
    Setting(
        "disk_reserve_mb",
        ("AGENTMEMORY_DISK_RESERVE_MB",),
        16,
        _non_negative_int,
        "Writes are refused with 507 `disk_full` while less than this many MB are free (room kept for the "
        "WAL checkpoint); they resume by themselves once space is freed. 0 = only when SQLite finds the disk full.",
    ),
    Setting(
        "wal_checkpoint_seconds",
        ("AGENTMEMORY_WAL_CHECKPOINT_SECONDS",),
        1.0,
        _non_negative_float,
        "SQLite: a server and its background worker move committed pages from the WAL into the database file "
        "on a thread this often "
        "(0 = inside the commit that fills the WAL, SQLite's default, which puts the copy and its sync on a request).",
    ),
    Setting(
        "durability",
        ("AGENTMEMORY_DURABILITY",),
        "process",
        _choice("process", "disk"),
        "`process`: an acknowledged write survives the server being killed (SQLite synchronous=NORMAL). "
        "`disk`: it also survives the OS crashing, power loss or the filesystem failing (synchronous=FULL: "
        "one fsync per write, a few ms each).",
    ),
    Setting(
        "lock_wait_seconds",
        ("AGENTMEMORY_LOCK_WAIT_SECONDS",),
        5.0,
        _positive_float,
        "How long a request waits for the database's write lock (held by another writer: a replace import for "
        "as long as it runs, a `sqlite3` shell in a transaction) before it answers 503 `database_busy` with "
        "`Retry-After`; a hook event waits in the capture spool instead. SQLite and PostgreSQL alike. Keep it "
        "under your agents' hook timeouts (10-15 s). The background worker and admin commands wait 30 s.",
    ),
    Setting(
        "startup_check_seconds",
        ("AGENTMEMORY_STARTUP_CHECK_SECONDS",),
        1.0,
        _non_negative_float,
        "Time budget of the integrity check (PRAGMA quick_check) when the database opens; 0 = none. A damaged "
        "file is served read-only (writes answer 503 `database_damaged`). A check the budget cuts short (about "
        "1 GB a second) is finished in the background right after start-up.",
    ),
    Setting(
        "integrity_check_interval",
        ("AGENTMEMORY_INTEGRITY_CHECK_INTERVAL",),
        3600.0,
        _non_negative_float,
        "Seconds between background integrity checks (0 = none), each run by one of the processes "
        "using the database; damage found stops writes in all of them.",
    ),
    Setting(
        "local_backup_dir",
        ("AGENTMEMORY_LOCAL_BACKUP_DIR",),
        None,
        _optional_str,
        "Where `agentmemory backup --local` and the periodic local snapshots go, with the images they know "
        "(in its `images/`). Default: `backups/` beside the database.",
    ),
    Setting(
        "local_backup_interval",
        ("AGENTMEMORY_LOCAL_BACKUP_INTERVAL",),
        0.0,
        _non_negative_float,
        "Seconds between local snapshots taken by the server (0 = none; `agentmemory backup --local` any time).",
    ),
    Setting(
        "local_backup_keep",
        ("AGENTMEMORY_LOCAL_BACKUP_KEEP",),
        3,
        _positive_int,
        "Local snapshots kept (the oldest go once a newer one passed its integrity check, and with them the "
        "images no kept snapshot knows).",
    ),
    Setting(
        "max_connections",
        ("AGENTMEMORY_MAX_CONNECTIONS",),
        1000,
        _positive_int,
        "Open client connections per server process; one more is answered 503 `too_many_connections` with "
        "Retry-After and closed. Waiting connections hold no thread.",
    ),
    Setting(
        "request_timeout",
        ("AGENTMEMORY_REQUEST_TIMEOUT",),
        10.0,
        _positive_float,
        "Seconds a client has to send a request's head and body (a request over the preread limit: to send each "
        "part of it); slower clients get 408 and are closed.",
    ),
    Setting(
        "keepalive_seconds",
        ("AGENTMEMORY_KEEPALIVE",),
        5,
        _positive_int,
        "Seconds an idle keep-alive connection stays open between requests.",
    ),
    Setting(
        "rate_limit",
        ("AGENTMEMORY_RATE_LIMIT",),
        100.0,
        _non_negative_float,
        "Writes (POST/PUT/PATCH/DELETE, WebSocket calls) per second per token (per client IP with auth off), "
        "as a token bucket counted where AGENTMEMORY_RATE_LIMIT_STORE says; over it: 429 `rate_limited` with "
        "Retry-After. 0 = no limit. A coding agent's hooks send a few per second.",
    ),
    Setting(
        "rate_burst",
        ("AGENTMEMORY_RATE_BURST",),
        500,
        _positive_int,
        "Token-bucket size: writes a client may send at once before AGENTMEMORY_RATE_LIMIT applies.",
    ),
    Setting(
        "rate_limit_store",
        ("AGENTMEMORY_RATE_LIMIT_STORE",),
        "auto",
        _choice("auto", "process", "node", "redis"),
        "Where rate-limit buckets are counted: `process` (each worker process alone), `node` (a file shared "
        "by the worker processes of a node), `redis` (REDIS_URL: one limit across every node; while Redis is "
        "down each node counts alone, noted in /health). `auto`: `redis` when WORKING_MEMORY_BACKEND=redis, "
        "else `node` with more than one worker process (AGENTMEMORY_WORKERS), else `process`.",
    ),
    Setting(
        "rate_limit_redis_prefix",
        ("AGENTMEMORY_RATE_LIMIT_REDIS_PREFIX",),
        "agentmemory:rl",
        str,
        "Prefix of the Redis keys of the rate limits (nodes sharing it share the limits).",
    ),
    Setting(
        "embed_backlog_max",
        ("AGENTMEMORY_EMBED_BACKLOG_MAX",),
        100_000,
        _positive_int,
        "Records waiting for a vector at most; beyond it new records stay BM25-only until the backlog "
        "drains, then the background worker queues them again (counted as shed in /health).",
    ),
    Setting(
        "llm_jobs_max",
        ("AGENTMEMORY_LLM_JOBS_MAX",),
        10_000,
        _positive_int,
        "Background model jobs queued at most; beyond it new work keeps its deterministic result (shed, counted "
        "in /health).",
    ),
)
