"""The settings of the LLM layer (models/): provider, models, token budgets, transport and the
features' flags. Part of ``settings.SETTINGS`` (this block sits where it always did in README's
table); kept in its own module so the main table stays readable.
"""

from __future__ import annotations

from agentmemory_server.kernel.setting_types import (
    Setting,
    _bool,
    _choice,
    _non_negative_float,
    _non_negative_int,
    _optional_int,
    _optional_str,
    _positive_float,
    _positive_int,
    _token_budget,
    _tri_state,
)

# The LLM features: each may have its own model and daily token cap (models/llm.py FEATURES).
LLM_FEATURES = ("compress", "summaries", "reflect", "crystallize", "consolidation", "graph")

LLM_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "llm_provider",
        ("AGENTMEMORY_LLM_PROVIDER",),
        "auto",
        _choice("auto", "gemini", "openai", "anthropic", "none"),
        "Model provider of every LLM feature: gemini, openai (any Chat Completions server: OpenAI, Ollama, "
        "llama.cpp, vLLM, LM Studio, OpenRouter), anthropic, or none (deterministic only). `auto` = gemini "
        "when a Gemini key is set, else none.",
    ),
    Setting(
        "llm_model",
        ("AGENTMEMORY_LLM_MODEL",),
        None,
        _optional_str,
        "Model of every LLM feature (unset: GEMINI_MODEL for gemini, gpt-4o-mini for openai, "
        "claude-haiku-4-5 for anthropic).",
    ),
    *(
        Setting(
            f"llm_model_{feature}",
            (f"AGENTMEMORY_LLM_MODEL_{feature.upper()}",),
            None,
            _optional_str,
            f"Model for {feature} only (overrides AGENTMEMORY_LLM_MODEL).",
        )
        for feature in LLM_FEATURES
    ),
    Setting(
        "llm_daily_token_budget",
        ("AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET",),
        2_000_000,
        _token_budget,
        "Prompt + completion tokens all LLM features may use per UTC day; once reached, no model call is "
        "made until midnight UTC and the deterministic paths answer (shown in /health). `unlimited` = no "
        "limit; 0 = no tokens at all, as for a feature's cap (before 2026-12, 0 meant no limit: /status warns).",
    ),
    *(
        Setting(
            f"llm_daily_token_budget_{feature}",
            (f"AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET_{feature.upper()}",),
            None,
            _token_budget,
            f"Daily token cap of {feature} alone, within the overall budget (unset or `unlimited` = no separate "
            f"cap; 0 = no tokens: {feature} runs deterministically).",
        )
        for feature in LLM_FEATURES
    ),
    Setting(
        "compress_skip_low_value",
        ("AGENTMEMORY_COMPRESS_SKIP_LOW_VALUE",),
        True,
        _bool,
        "Model compression skips low-value observations before any call: repeats of an earlier event of the "
        "session, re-reads of a file not written since, trivial commands (ls, pwd, ...) and to-do list "
        "updates. They keep the synthetic compression; the skips are counted.",
    ),
    Setting(
        "gemini_model",
        ("GEMINI_MODEL",),
        "gemini-2.5-flash",
        str,
        "Gemini model when the provider is gemini and AGENTMEMORY_LLM_MODEL is unset.",
    ),
    Setting(
        "openai_base_url",
        ("OPENAI_BASE_URL",),
        "https://api.openai.com/v1",
        str,
        "Base URL of an OpenAI-compatible API, up to and including `/v1` (Ollama: "
        "`http://localhost:11434/v1`, llama.cpp: `http://localhost:8080/v1`, LM Studio: `http://localhost:1234/v1`).",
    ),
    Setting(
        "openai_api_key",
        ("OPENAI_API_KEY",),
        None,
        _optional_str,
        "Bearer key of the OpenAI-compatible API (local servers need none).",
        secret=True,
    ),
    Setting(
        "openai_response_format",
        ("OPENAI_RESPONSE_FORMAT",),
        "json_schema",
        _choice("json_schema", "json_object", "off"),
        "How openai asks for JSON: `json_schema` (the answer's schema, non-strict), `json_object`, or `off` "
        "for servers that reject response_format. Answers are validated either way.",
    ),
    Setting(
        "openai_token_limit_param",
        ("OPENAI_TOKEN_LIMIT_PARAM",),
        "max_tokens",
        _choice("max_tokens", "max_completion_tokens"),
        "Request field carrying the output limit: `max_tokens` (local servers, most models) or "
        "`max_completion_tokens` (OpenAI's reasoning models accept only this one).",
    ),
    Setting(
        "openai_embed_model",
        ("OPENAI_EMBED_MODEL",),
        "text-embedding-3-small",
        str,
        "Embedding model with EMBEDDING_PROVIDER=openai (e.g. nomic-embed-text on Ollama).",
    ),
    Setting(
        "openai_embed_dimensions",
        ("OPENAI_EMBED_DIMENSIONS",),
        None,
        _optional_int,
        "Vector size with EMBEDDING_PROVIDER=openai; when set it is also sent as `dimensions`. Unset: 1536 "
        "(text-embedding-3-small), nothing sent.",
    ),
    Setting(
        "anthropic_base_url",
        ("ANTHROPIC_BASE_URL",),
        "https://api.anthropic.com",
        str,
        "Base URL of the Anthropic Messages API (requests go to `<base>/v1/messages`).",
    ),
    Setting(
        "anthropic_api_key",
        ("ANTHROPIC_API_KEY",),
        None,
        _optional_str,
        "Anthropic API key (x-api-key header).",
        secret=True,
    ),
    Setting(
        "llm_timeout_seconds",
        ("AGENTMEMORY_LLM_TIMEOUT_SECONDS", "GEMINI_TIMEOUT_SECONDS"),
        30.0,
        _positive_float,
        "Timeout of one model request attempt (any provider).",
    ),
    Setting(
        "llm_max_attempts",
        ("AGENTMEMORY_LLM_MAX_ATTEMPTS", "GEMINI_MAX_ATTEMPTS"),
        3,
        _positive_int,
        "Attempts per model call; 408, 429, 5xx and 529 are retried with exponential backoff (Retry-After "
        "honoured), except a 429 saying the quota or credit is exhausted.",
    ),
    Setting(
        "llm_retry_backoff_seconds",
        ("AGENTMEMORY_LLM_RETRY_BACKOFF_SECONDS", "GEMINI_RETRY_BACKOFF_SECONDS"),
        1.0,
        _non_negative_float,
        "Delay before the first retry of a model call (doubles each time, at most 30 s).",
    ),
    Setting(
        "llm_max_output_tokens",
        ("AGENTMEMORY_LLM_MAX_OUTPUT_TOKENS", "GEMINI_MAX_OUTPUT_TOKENS"),
        8192,
        _positive_int,
        "Output limit of every model request.",
    ),
    Setting(
        "gemini_thinking_budget",
        ("GEMINI_THINKING_BUDGET",),
        None,
        _optional_int,
        "thinkingConfig.thinkingBudget sent to Gemini models that think (unset: the model's default).",
    ),
    Setting(
        "llm_breaker_failures",
        ("LLM_BREAKER_FAILURES",),
        3,
        _positive_int,
        "Circuit breaker: failed model calls within the window that open it.",
    ),
    Setting(
        "llm_breaker_window_seconds",
        ("LLM_BREAKER_WINDOW_SECONDS",),
        60.0,
        _positive_float,
        "Circuit breaker: the window in which failures are counted.",
    ),
    Setting(
        "llm_breaker_cooldown_seconds",
        ("LLM_BREAKER_COOLDOWN_SECONDS",),
        30.0,
        _non_negative_float,
        "Circuit breaker: seconds open before one trial call is let through (half-open).",
    ),
    Setting(
        "llm_max_prompt_chars",
        ("AGENTMEMORY_LLM_MAX_PROMPT_CHARS",),
        24_000,
        _positive_int,
        "Upper bound on the data sent in one prompt (observations are picked and clipped to fit).",
    ),
    Setting(
        "llm_workers",
        ("AGENTMEMORY_LLM_WORKERS",),
        2,
        _positive_int,
        "Threads running background model jobs (each waits on one model call at a time).",
    ),
    Setting(
        "llm_job_attempts",
        ("AGENTMEMORY_LLM_JOB_ATTEMPTS",),
        5,
        _positive_int,
        "Tries of a background LLM job whose handler fails with an error (a bug, bad data). Waiting for an "
        "unreachable model (breaker open, HTTP errors, timeouts) uses up none: see "
        "AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS.",
    ),
    Setting(
        "llm_job_max_age_hours",
        ("AGENTMEMORY_LLM_JOB_MAX_AGE_HOURS",),
        24.0,
        _positive_float,
        "How long a background LLM job keeps waiting for an unreachable model provider (retried with a "
        "backoff growing to 10 minutes) before it is given up and the deterministic result stands.",
    ),
    Setting(
        "auto_compress",
        ("AGENTMEMORY_AUTO_COMPRESS",),
        False,
        _bool,
        "With a model provider: observations are stored with the synthetic compression at once and "
        "upgraded by the model in the background (type, title, facts, narrative, concepts, files, importance).",
    ),
    Setting(
        "llm_summaries",
        ("AGENTMEMORY_LLM_SUMMARIES",),
        True,
        _bool,
        "With a model provider: session summaries (session end, POST /summarize) are written by the model.",
    ),
    Setting(
        "llm_reflect",
        ("AGENTMEMORY_LLM_REFLECT",),
        True,
        _bool,
        "With a model provider: slot reflection and project insights are written by the model.",
    ),
    Setting(
        "llm_crystallize",
        ("AGENTMEMORY_LLM_CRYSTALLIZE",),
        True,
        _bool,
        "With a model provider: crystals (narrative, outcomes, lessons) are written by the model.",
    ),
    Setting(
        "consolidation_enabled",
        ("CONSOLIDATION_ENABLED",),
        "auto",
        _tri_state,
        "Consolidate observations into memories and facts after session ends (with the model when a "
        "provider is configured, else deterministically); `auto` = on when a model provider is configured.",
    ),
    Setting(
        "consolidation_cooldown_ms",
        ("AGENTMEMORY_CONSOLIDATION_COOLDOWN_MS",),
        300_000,
        _non_negative_int,
        "At most one session-end consolidation per project within this time.",
    ),
    Setting(
        "graph_extraction_enabled",
        ("GRAPH_EXTRACTION_ENABLED",),
        False,
        _bool,
        "After session ends, extract entities and relations into the knowledge graph (GET /graph): "
        "by the model with a key, else a file/concept co-occurrence graph.",
    ),
)
