"""How a second-stage judge's scores are blended with the first stage's, and how the blend is
reported.

Both judges (late interaction on the default path, the cross-encoder with ``rerank: true``)
reorder the first stage's best hits by a convex blend of two min-max normalised scores. The blend
lives on [0, 1] for that query only, so it is put back on the first stage's scale before it is
returned as a hit's ``score``: clients sort and threshold by ``score``, and hits past the reordered
head keep their fused scores, which must stay below it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def unit(values: np.ndarray) -> np.ndarray:
    """``values`` min-max normalised to [0, 1]; all ones when they are all equal."""
    span = float(values.max() - values.min()) if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def blend(first_stage: Sequence[float], second: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) x first-stage score + weight x the second judge's, each min-max normalised over
    the candidates (their scales differ: a fused sum against a logit or a MaxSim sum)."""
    return (1 - weight) * unit(np.asarray(first_stage, dtype=np.float32)) + weight * unit(second)


def on_first_stage_scale(mixed: np.ndarray, first_stage: Sequence[float]) -> list[float]:
    """The blend, in [0, 1], mapped onto the first-stage scores' own range: the order is the
    blend's, the best reordered hit gets at most the best fused score, and the last at least the
    lowest one, so scores fall with rank across the reordered head and the unchanged tail."""
    first = np.asarray(first_stage, dtype=np.float64)
    low, high = float(first.min()), float(first.max())
    return [low + float(m) * (high - low) for m in np.clip(mixed, 0.0, 1.0)]
