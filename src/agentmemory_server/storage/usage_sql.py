"""Model calls per day, provider, model and feature (``llm_usage``), written once for both
backends: one row per combination, updated in place, so a call costs one upsert and everything
the budget check or a report needs is a range read on the primary key (a day has a few rows, not
one per call). The SQL differs only in the parameter mark (``mark``) and in the name of the
two-argument maximum (``larger``: SQLite's ``max``, PostgreSQL's ``greatest``)."""

from __future__ import annotations

from typing import Any

from agentmemory_server.storage.interfaces import ModelCall

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
_KEY = ("day", "provider", "model", "feature")
_ALL = (*_KEY, *(name for name, _ in _COLUMNS))


class SharedModelUsage:
    """``ModelUsage`` on a connection whose ``execute`` returns a cursor (sqlite3, psycopg)."""

    mark: str  # the backend's parameter mark
    larger: str  # the backend's two-argument maximum

    def __init__(self, unit: Any):
        self.conn = unit.conn

    def add(self, call: ModelCall) -> None:
        updates = ", ".join(
            f"{c} = {self.larger}(llm_usage.{c}, excluded.{c})"
            if c == "latency_ms_max"
            else f"{c} = llm_usage.{c} + excluded.{c}"
            for c, _ in _COLUMNS
        )
        marks = ", ".join([self.mark] * len(_ALL))
        self.conn.execute(
            f"INSERT INTO llm_usage ({', '.join(_ALL)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {updates}",
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
        m = self.mark
        cursor = self.conn.execute(
            f"SELECT {', '.join(_ALL)} FROM llm_usage WHERE day BETWEEN {m} AND {m} "
            "ORDER BY day, feature, provider, model",
            (first_day, last_day),
        )
        keys = (*_KEY, *(key for _, key in _COLUMNS))
        # Counts as int and latencies as float on both backends (PostgreSQL's bigint sums and
        # SQLite's integers alike).
        return [
            {
                k: (float(v) if k.startswith("latency") else int(v) if i >= len(_KEY) else v)
                for i, (k, v) in enumerate(zip(keys, row, strict=True))
            }
            for row in cursor
        ]

    def prune(self, before_day: str) -> int:
        return self.conn.execute(f"DELETE FROM llm_usage WHERE day < {self.mark}", (before_day,)).rowcount
