"""A blend weight that follows how sure each question's rankings are, tried offline and cross-validated.

    python bench/judge_adaptive.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by
``(1 - w) x fused + w x MaxSim`` (both min-max scaled over the hits), with one ``w`` for every
question. The judge benches found the order of those hits short of what they hold, and no other
signal, model or way of summing MaxSim that helps. This bench asks whether the *weight* should
differ by question: whether MaxSim should count more when the first stage is unsure of its order,
or when the two rankings disagree. That is query performance prediction, read from the hits'
scores alone, at no cost at query time:

- **first-stage peak**: how far the fused scores of the best ten stand above the other forty,
  over their range (a flat head: the first stage cannot tell its hits apart);
- **MaxSim peak**: the same over the MaxSim scores;
- **agreement**: the rank correlation of the fused and MaxSim scores over the hits;
- **question length**: its words (a long question gives MaxSim more tokens to match).

Each predictor becomes a percentile over all questions (no labels read), and the weight is
``clip(w0 + k x (percentile - 0.5), 0, 1)``; ``w0`` and ``k`` are tuned leave one conversation
out (k = 0 is the product's fixed weight), and gains are paired against the product's recorded
blend. Ends with one JSON line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from judge_features import Head, Scorer, finish, minmax, recorded_heads, report, tuned  # noqa: E402

W0 = [0.35, 0.5, 0.65]
SLOPE = [-0.6, -0.3, 0.0, 0.3, 0.6]


def peak(values: np.ndarray, head: int = 10) -> float:
    """How far the best ``head`` of these scores stand above the rest, over their range."""
    ordered = np.sort(np.nan_to_num(values, nan=float(np.nanmin(values)) if not np.isnan(values).all() else 0.0))
    ordered = ordered[::-1]
    span = ordered[0] - ordered[-1]
    if span <= 0 or len(ordered) <= head:
        return 0.0
    return float((ordered[:head].mean() - ordered[head:].mean()) / span)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score arrays over the same hits."""
    if len(a) < 3:
        return 0.0
    ra = np.argsort(np.argsort(-np.nan_to_num(a, nan=-1e9)))
    rb = np.argsort(np.argsort(-np.nan_to_num(b, nan=-1e9)))
    return float(np.corrcoef(ra, rb)[0, 1])


PREDICTORS: dict[str, Any] = {
    "first-stage peak": lambda h: peak(h["fused"]),
    "MaxSim peak": lambda h: peak(h["late"]),
    "agreement": lambda h: agreement(h["fused"], h["late"]),
    "question length": lambda h: float(len(re.findall(r"\w+", h["question"]))),
}


def percentiles(heads: list[Head], name: str) -> None:
    """Each head's predictor as its percentile over all questions (ties share their mean rank)."""
    raw = np.array([PREDICTORS[name](h) for h in heads])
    order = raw.argsort(kind="stable")
    ranks = np.empty(len(raw))
    ranks[order] = np.arange(len(raw))
    for value in np.unique(raw):
        ranks[raw == value] = ranks[raw == value].mean()
    for head, rank in zip(heads, ranks / max(len(raw) - 1, 1), strict=True):
        head[name] = float(rank)


def adaptive(name: str):
    def family(w0: float, k: float) -> Scorer:
        def scorer(head: Head) -> np.ndarray:
            w = min(1.0, max(0.0, w0 + k * (head[name] - 0.5)))
            return (1 - w) * minmax(head["fused"]) + w * minmax(head["late"])

        return scorer

    return family


def main() -> None:
    opts, _data, _started, heads, product_rows = recorded_heads(__doc__)
    for name in PREDICTORS:
        percentiles(heads, name)
    results = [report("the product (recorded scores)", product_rows, product_rows)]
    fixed, chosen = tuned(heads, adaptive("agreement"), {"w0": W0 + [0.2, 0.8], "k": [0.0]})
    results.append(report("fixed weight, tuned", fixed, product_rows, chosen))
    for name in PREDICTORS:
        rows, chosen = tuned(heads, adaptive(name), {"w0": W0, "k": SLOPE})
        results.append(report(f"weight by {name}", rows, product_rows, chosen))
    finish("judge_adaptive", opts.out, results)


if __name__ == "__main__":
    main()
