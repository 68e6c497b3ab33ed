"""Token accounting and the daily budget of the LLM layer.

Every model call is added to the ``usage`` storage area (provider, model, feature, prompt and
completion tokens, latency, failed or not), and so is every call *not* made: stopped by the
budget, or skipped as low-value input. The area keeps one row per UTC day, provider, model and
feature, updated in place: one upsert per call (a call takes a second or more; the write takes
microseconds), bounded growth (a few rows a day, kept ``RETENTION_DAYS``) and a budget check
that reads a handful of rows. Per-call rows would give latency percentiles but grow with every
call and turn the budget check into a scan; the day's mean and maximum latency are enough to
spot a slow model.

Budget: ``AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET`` (prompt + completion tokens of every feature)
and ``AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET_<FEATURE>`` (one feature's share) are token counts where
0 means no tokens and ``unlimited`` (None; a cap also when unset) means no limit. They are
checked before each call against the current UTC day's rows, read from the database so every
process (server, CLI) sees one account. A reached budget stops the call before anything is sent
and the feature takes its deterministic path; the day rolls over at midnight UTC on the
runtime clock (tests move it). The calls in flight when the line is crossed are not cut short:
each passed its check before the others were counted, so the budget may be overshot by the
tokens of every call running at that moment (one per job worker, plus explicit calls).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from agentmemory_server.kernel.runtime import Runtime
from agentmemory_server.storage.interfaces import ModelCall

log = logging.getLogger("agentmemory.llm")
# A daily budget of 0 meant "no limit" until 2026-12 while a feature's cap of 0 meant "no tokens";
# both mean no tokens now, and a deployment still set to 0 is told so (log, /status, diagnose).
ZERO_BUDGET = (
    "AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET=0 means no model tokens at all, so every model feature runs "
    "deterministically (until 2026-12, 0 meant no limit); set it to `unlimited` for no limit"
)
HISTORY_DAYS = 7
RETENTION_DAYS = 400
_SUMS = ("calls", "failed", "promptTokens", "completionTokens", "skippedBudget", "skippedLowValue")


def utc_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d")


def day_before(day: str, days: int) -> str:
    return (datetime.strptime(day, "%Y-%m-%d") - timedelta(days=days)).strftime("%Y-%m-%d")


def next_midnight(epoch: float) -> str:
    start = datetime.fromtimestamp(epoch, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (start + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _summed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(_SUMS, 0)
    latency, slowest = 0.0, 0.0
    for row in rows:
        for key in _SUMS:
            out[key] += row[key]
        latency += row["latencyMsTotal"]
        slowest = max(slowest, row["latencyMsMax"])
    out["totalTokens"] = out["promptTokens"] + out["completionTokens"]
    out["avgLatencyMs"] = round(latency / out["calls"], 1) if out["calls"] else None
    out["maxLatencyMs"] = round(slowest, 1) if out["calls"] else None
    return out


class Accounting:
    def __init__(self, rt: Runtime):
        self.rt, self.settings = rt, rt.settings

    def today(self) -> str:
        return utc_day(self.rt.clock.time())

    # ---- writing
    def add(self, call: ModelCall) -> None:
        """Add to the day's account. Never raises: accounting must not break a model call."""
        try:
            with self.rt.db.transaction("llm_usage") as tx:
                tx.usage.add(call)
        except Exception:  # noqa: BLE001 - a closed or locked database loses one row, not the call
            log.exception("could not record model usage for %s", call.feature)

    def call(self, provider: str, model: str, feature: str, **counts: Any) -> None:
        self.add(ModelCall(self.today(), provider, model, feature, calls=1, **counts))

    def skipped(self, provider: str, model: str, feature: str, *, budget: int = 0, low_value: int = 0) -> None:
        self.add(ModelCall(self.today(), provider, model, feature, skipped_budget=budget, skipped_low_value=low_value))

    def prune(self) -> int:
        with self.rt.db.transaction("llm_usage_prune") as tx:
            return tx.usage.prune(day_before(self.today(), RETENTION_DAYS))

    # ---- reading
    def rows(self, first_day: str, last_day: str) -> list[dict[str, Any]]:
        return self.rt.db.reader().usage.rows(first_day, last_day)

    def tokens_today(self) -> dict[str, int]:
        used: dict[str, int] = defaultdict(int)
        today = self.today()
        for row in self.rows(today, today):
            used[row["feature"]] += row["promptTokens"] + row["completionTokens"]
        return dict(used)

    def cap(self, feature: str) -> int | None:
        return getattr(self.settings, f"llm_daily_token_budget_{feature}", None)

    def blocked(self, feature: str) -> str | None:
        """Why ``feature`` may not call the model now (a budget is used up, or 0), or None."""
        daily, cap = self.settings.llm_daily_token_budget, self.cap(feature)
        if daily is None and cap is None:
            return None
        used = self.tokens_today()
        resets = next_midnight(self.rt.clock.time())
        if daily == 0:
            return ZERO_BUDGET
        if daily is not None and sum(used.values()) >= daily:
            return f"the daily token budget ({daily:,}) is used up until {resets}"
        if cap == 0:
            return f"AGENTMEMORY_LLM_DAILY_TOKEN_BUDGET_{feature.upper()}=0: {feature} may use no model tokens"
        if cap is not None and used.get(feature, 0) >= cap:
            return f"the daily {feature} token cap ({cap:,}) is used up until {resets}"
        return None

    def budget(self, features: tuple[str, ...]) -> dict[str, Any]:
        """The day's budget: ``daily`` None is no limit, 0 no tokens (``zero`` says what that
        means now), and each feature's cap."""
        daily, used = self.settings.llm_daily_token_budget, self.tokens_today()
        total = sum(used.values())
        caps = {}
        for feature in features:
            cap = self.cap(feature)
            if cap is not None:
                spent = used.get(feature, 0)
                caps[feature] = {"cap": cap, "used": spent, "left": max(0, cap - spent), "reached": spent >= cap}
        return {
            "daily": daily,
            "used": total,
            "left": max(0, daily - total) if daily is not None else None,
            "reached": daily is not None and total >= daily,
            "resetsAt": next_midnight(self.rt.clock.time()),
            "features": caps,
            "zero": ZERO_BUDGET if daily == 0 else None,
        }

    def report(self, features: tuple[str, ...], days: int = HISTORY_DAYS) -> dict[str, Any]:
        """Today per feature, the last ``days`` days (oldest first, empty days included), and
        the budget."""
        today = self.today()
        first = day_before(today, days - 1)
        rows = self.rows(first, today)
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_day[row["day"]].append(row)
        today_rows = by_day.get(today, [])
        by_feature: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in today_rows:
            by_feature[row["feature"]].append(row)
        history = []
        for n in range(days - 1, -1, -1):
            day = day_before(today, n)
            per_feature: dict[str, int] = defaultdict(int)
            for row in by_day.get(day, []):
                per_feature[row["feature"]] += row["promptTokens"] + row["completionTokens"]
            history.append({"day": day, **_summed(by_day.get(day, [])), "byFeature": dict(per_feature)})
        return {
            "day": today,
            "today": _summed(today_rows),
            "byFeature": {f: _summed(r) for f, r in sorted(by_feature.items())},
            "byDay": history,
            "budget": self.budget(features),
        }
