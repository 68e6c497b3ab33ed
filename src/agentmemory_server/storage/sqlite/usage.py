"""Model calls per day, provider, model and feature on SQLite (``llm_usage``).

One row per combination, updated in place: a call costs one upsert, and everything the budget
check or a report needs is a range read on the primary key (a day has a few rows, not one per
call).
"""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.interfaces import ModelCall
from agentmemory_server.storage.sqlite.common import Unit

_COLUMNS = (
    ("calls", "calls"),
    ("failed", "failed"),
    ("prompt_tokens", "promptTokens"),
    ("completion_tokens", "completionTokens"),
    ("latency_ms_total", "latencyMsTotal"),
    ("latency_ms_max", "latencyMsMax"),
    ("skipped_budget", "skippedBudget"),
    ("skipped_low_value", "skippedLowValue"),
)


class SqliteModelUsage:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def add(self, call: ModelCall) -> None:
        self.conn.execute(
            "INSERT INTO llm_usage (day, provider, model, feature, calls, failed, prompt_tokens, "
            "completion_tokens, latency_ms_total, latency_ms_max, skipped_budget, skipped_low_value) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (day, provider, model, feature) DO UPDATE SET "
            "calls = calls + excluded.calls, failed = failed + excluded.failed, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "latency_ms_total = latency_ms_total + excluded.latency_ms_total, "
            "latency_ms_max = max(latency_ms_max, excluded.latency_ms_max), "
            "skipped_budget = skipped_budget + excluded.skipped_budget, "
            "skipped_low_value = skipped_low_value + excluded.skipped_low_value",
            (
                call.day,
                call.provider,
                call.model,
                call.feature,
                call.calls,
                call.failed,
                call.prompt_tokens,
                call.completion_tokens,
                call.latency_ms,
                call.latency_ms,
                call.skipped_budget,
                call.skipped_low_value,
            ),
        )

    def rows(self, first_day: str, last_day: str) -> list[dict[str, Any]]:
        columns = ", ".join(name for name, _ in _COLUMNS)
        cursor = self.conn.execute(
            f"SELECT day, provider, model, feature, {columns} FROM llm_usage WHERE day BETWEEN ? AND ? "
            "ORDER BY day, feature, provider, model",
            (first_day, last_day),
        )
        keys = ("day", "provider", "model", "feature", *(key for _, key in _COLUMNS))
        return [dict(zip(keys, row, strict=True)) for row in cursor]

    def prune(self, before_day: str) -> int:
        return self.conn.execute("DELETE FROM llm_usage WHERE day < ?", (before_day,)).rowcount
