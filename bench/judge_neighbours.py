"""Session neighbours of the best hits as candidates of the late-interaction judge: tried offline.

    python bench/judge_neighbours.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by the fused score
blended with MaxSim (``retrieval/late_interaction.py``). An answer often sits in the turn after
the one that names the question's topic, and hybrid search may not find it at all. The reranked
path (``rerank: true``) brings the session neighbours of its best hits into the candidates before
the cross-encoder judges them, for +3 points of R@10 there (docs/retrieval.md); on hybrid alone,
before the default path had a judge, the same expansion was noise. This bench asks whether the
MaxSim judge can use such neighbours:

- after the blend, the records up to ``span`` turns before and after each of the ``seeds`` best
  hits (same session) join the hits when they are not among them, with a fused score of
  ``carry`` times their seed's (the best seed's when several), and MaxSim of their own;
- the blend then orders hits and neighbours together.

Every MaxSim here comes from this bench's own encoding (the product's cuts, first 128 dimensions),
so each variant is compared with the plain blend from the same encoding (the control). Seeds,
span, carry and the blend's weight are tuned leave one conversation out; gains are paired against
the control. Prints how many records a question reads beyond today's. Ends with one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from agentmemory_server.retrieval import late_interaction  # noqa: E402
from judge_features import Head, Scorer, finish, minmax, position, recorded_heads, report, rows_of, tuned  # noqa: E402
from judge_query import Encoder, encode_turns  # noqa: E402

MAX_SEEDS, MAX_SPAN = 10, 2


def neighbours_of(dia: str, span: int, known: set[str]) -> list[str]:
    session, turn = position(dia)
    near = [f"D{session}:{turn + d}" for d in range(-span, span + 1) if d]
    return [n for n in near if n in known]


def prepare(head: Head, turns: dict[str, tuple[np.ndarray, np.ndarray]], query: np.ndarray) -> None:
    """MaxSim of every hit and of every neighbour the widest setting could add."""

    def maxsim(dia: str | None) -> float:
        if dia is None or dia not in turns:
            return np.nan
        return float((query @ turns[dia][0].T).max(axis=1).sum())

    head["own"] = np.array([maxsim(d) for d in head["dias"]])
    known = set(turns)
    hits = {d for d in head["dias"] if d}
    order = np.argsort(-blended(head["fused"], head["own"], late_interaction.WEIGHT), kind="stable")
    head["seed order"] = [int(i) for i in order]
    extra = {n for i in order[:MAX_SEEDS] if head["dias"][i] for n in neighbours_of(head["dias"][i], MAX_SPAN, known)}
    head["neighbour sims"] = {n: maxsim(n) for n in extra - hits}


def blended(fused: np.ndarray, late: np.ndarray, w: float) -> np.ndarray:
    return (1 - w) * minmax(fused) + w * minmax(late)


def expanded(head: Head, seeds: int, span: int, carry: float) -> tuple[list[str | None], np.ndarray, np.ndarray]:
    """The hits plus their seeds' neighbours: ids, fused scores, MaxSim."""
    dias, fused, late = list(head["dias"]), list(head["fused"]), list(head["own"])
    added: dict[str, int] = {}
    if carry > 0:
        known = set(head["neighbour sims"])
        for i in head["seed order"][:seeds]:
            if head["dias"][i] is None:
                continue
            for n in neighbours_of(head["dias"][i], span, known):
                score = carry * head["fused"][i]
                if n in added:
                    fused[added[n]] = max(fused[added[n]], score)
                    continue
                added[n] = len(dias)
                dias.append(n)
                fused.append(score)
                late.append(head["neighbour sims"][n])
    return dias, np.array(fused), np.array(late)


READS: dict[str, list[int]] = {}


def with_neighbours(w: float, seeds: int = 0, span: int = 1, carry: float = 0.0) -> Scorer:
    """Scores over the expanded candidates; ``head['dias']`` is swapped for the expanded ids."""

    def scorer(head: Head) -> np.ndarray:
        dias, fused, late = expanded(head, seeds, span, carry)
        READS.setdefault(json.dumps([seeds, span]), []).append(len(dias) - len(head["dias"]))
        head["ranked dias"] = dias
        return blended(fused, late, w)

    return scorer


def rows_over_expanded(heads: list[Head], scorer: Scorer) -> Any:
    """rows_of, reading each head's expanded ids."""
    views = [{**h} for h in heads]
    for view in views:
        scores = scorer(view)
        view["dias"], view["scores"] = view["ranked dias"], scores
    return rows_of(views, lambda v: v["scores"])


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    enc = Encoder()
    turns = encode_turns(data, enc)
    for head in heads:
        query, _ = enc.query(head["question"], 0, False)
        prepare(head, turns[head["conv"]], query)
    print(f"\n{len(heads)} questions encoded ({time.perf_counter() - started:.0f} s so far)\n")
    base = rows_over_expanded(heads, with_neighbours(late_interaction.WEIGHT))
    results = [report("product blend, recorded scores", product_rows, base)]
    results.append(report("control: plain MaxSim, this encoding", base, base))
    weights = [0.35, 0.5, 0.65]

    def family(**config: Any) -> Scorer:
        return with_neighbours(**config)

    def tuned_expanded(grid: dict[str, list[Any]]) -> Any:
        # tuned() calls rows_of(heads, scorer): route it through the expanded ids.
        import judge_features

        plain_rows_of = judge_features.rows_of
        judge_features.rows_of = rows_over_expanded  # type: ignore[assignment]
        try:
            return tuned(heads, family, grid)
        finally:
            judge_features.rows_of = plain_rows_of  # type: ignore[assignment]

    grids: dict[str, dict[str, list[Any]]] = {
        "control, weight tuned": {"w": weights},
        "neighbours, span 1, 10 seeds": {"w": weights, "seeds": [10], "span": [1], "carry": [0.5, 0.7, 0.9, 1.0]},
        "neighbours, span 2, 10 seeds": {"w": weights, "seeds": [10], "span": [2], "carry": [0.5, 0.7, 0.9, 1.0]},
        "neighbours, seeds and span tuned": {
            "w": weights,
            "seeds": [3, 5, 10],
            "span": [1, 2],
            "carry": [0.0, 0.5, 0.7, 0.9, 1.0],
        },
    }
    for name, grid in grids.items():
        rows, chosen = tuned_expanded(grid)
        results.append(report(name, rows, base, chosen))
    for key, counts in sorted(READS.items()):
        seeds, span = json.loads(key)
        if seeds:
            print(f"  {seeds} seeds, span {span}: {np.median(counts):.0f} more records read a question (median)")
    finish("judge_neighbours", opts.out, results)


if __name__ == "__main__":
    main()
