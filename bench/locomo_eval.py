"""Statistics for bench/locomo.py: bootstrap intervals and leave-one-conversation-out tuning.

A result row is one question: ``{"conv": sample_id, "cat": category, "m": {metric: value}}``.
Figures are macro-averages over questions. The 95% interval is a percentile bootstrap over
questions (2,000 resamples, fixed seed, so reruns print the same interval). A paired interval of
the difference between two runs resamples the same questions in both, which is what decides
whether a change helped.

Cross-validation: every configuration of the tuned parameters is scored on every question once;
then, for each conversation, the configuration with the best mean on the *other* conversations
is chosen and its rows for the held-out conversation are kept. The pooled held-out rows are the
cross-validated figure: no number in it was seen while choosing the configuration that made it.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

Rows = list[dict[str, Any]]
HEADLINE = (1, 2, 3, 4)
RESAMPLES = 2000


def values(rows: Rows, metric: str, cats: tuple[int, ...] = HEADLINE) -> np.ndarray:
    return np.array([r["m"][metric] for r in rows if r["cat"] in cats], dtype=float)


def interval(samples: np.ndarray, seed: int = 16) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    if len(samples) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(samples), size=(RESAMPLES, len(samples)))
    means = samples[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summary(rows: Rows, metric: str, cats: tuple[int, ...] = HEADLINE) -> dict[str, float]:
    v = values(rows, metric, cats)
    lo, hi = interval(v)
    return {"mean": round(float(v.mean()), 4) if len(v) else float("nan"), "lo": round(lo, 4), "hi": round(hi, 4),
            "n": int(len(v))}


def paired(new: Rows, old: Rows, metric: str, cats: tuple[int, ...] = HEADLINE) -> dict[str, float]:
    """Mean difference new - old over the questions both runs answered, with a paired interval."""
    key = lambda r: (r["conv"], r["q"])  # noqa: E731
    before = {key(r): r for r in old if r["cat"] in cats}
    pairs = [(r["m"][metric], before[key(r)]["m"][metric]) for r in new if r["cat"] in cats and key(r) in before]
    diff = np.array([a - b for a, b in pairs], dtype=float)
    lo, hi = interval(diff)
    return {"delta": round(float(diff.mean()), 4), "lo": round(lo, 4), "hi": round(hi, 4), "n": int(len(diff)),
            "significant": bool(lo > 0 or hi < 0)}


def objective(rows: Rows, metrics: tuple[str, ...]) -> float:
    """What tuning maximises: the sum of the headline means of ``metrics``."""
    picked = [r for r in rows if r["cat"] in HEADLINE]
    return sum(statistics.fmean(r["m"][m] for r in picked) for m in metrics) if picked else 0.0


def cross_validate(by_config: dict[str, Rows], metrics: tuple[str, ...]) -> tuple[Rows, dict[str, str]]:
    """Leave one conversation out: (pooled held-out rows, conversation -> configuration chosen)."""
    convs = sorted({r["conv"] for rows in by_config.values() for r in rows})
    pooled: Rows = []
    chosen: dict[str, str] = {}
    for held in convs:
        best = max(
            sorted(by_config),
            key=lambda c: objective([r for r in by_config[c] if r["conv"] != held], metrics),
        )
        chosen[held] = best
        pooled += [r for r in by_config[best] if r["conv"] == held]
    return pooled, chosen


def best_in_sample(by_config: dict[str, Rows], metrics: tuple[str, ...]) -> str:
    """The configuration that scores best on all conversations (what tuning on the test set gives)."""
    return max(sorted(by_config), key=lambda c: objective(by_config[c], metrics))
