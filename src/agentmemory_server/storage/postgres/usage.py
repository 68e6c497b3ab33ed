"""Model calls per day, provider, model and feature on PostgreSQL (``llm_usage``): one row per
combination, updated in place, as on SQLite (``storage/sqlite/usage.py``)."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.interfaces import ModelCall
from agentmemory_server.storage.postgres.common import Unit

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
_SUMMED = ("calls", "failed", "prompt_tokens", "completion_tokens", "latency_ms_total", "skipped_budget",
           "skipped_low_value")  # fmt: skip


class PgModelUsage:
    def __init__(self, unit: Unit):
        self.conn = unit.conn

    def add(self, call: ModelCall) -> None:
        sums = ", ".join(f"{c} = llm_usage.{c} + excluded.{c}" for c in _SUMMED)
        self.conn.execute(
            "INSERT INTO llm_usage (day, provider, model, feature, calls, failed, prompt_tokens, "
            "completion_tokens, latency_ms_total, latency_ms_max, skipped_budget, skipped_low_value) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (day, provider, model, feature) DO UPDATE SET {sums}, "
            "latency_ms_max = greatest(llm_usage.latency_ms_max, excluded.latency_ms_max)",
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
            f"SELECT day, provider, model, feature, {columns} FROM llm_usage WHERE day BETWEEN %s AND %s "
            "ORDER BY day, feature, provider, model",
            (first_day, last_day),
        )
        keys = ("day", "provider", "model", "feature", *(key for _, key in _COLUMNS))
        return [
            {
                k: (float(v) if k.startswith("latency") else int(v) if i >= 4 else v)
                for i, (k, v) in enumerate(zip(keys, row, strict=True))
            }
            for row in cursor
        ]

    def prune(self, before_day: str) -> int:
        return self.conn.execute("DELETE FROM llm_usage WHERE day < %s", (before_day,)).rowcount
