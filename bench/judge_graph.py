"""How alike the hits are to each other, as evidence for the late-interaction judge: tried offline.

    python bench/judge_graph.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by (1 - w) x
fused score + w x MaxSim (``retrieval/late_interaction.py``), each hit judged on its own. The
records that answer one question tend to resemble each other (the cluster hypothesis of
retrieval); a question whose evidence is spread over several turns, as multi-hop questions'
is, has several hits on one theme. This bench asks whether the judge gains from letting each
hit borrow from the hits most like it, at a cost of a 50 x 50 similarity over vectors a search
already holds:

- **smoothing over the nearest hits**: score' = (1 - a) x score + a x the similarity-weighted
  mean score of the hit's ``k`` most similar other hits (negative similarities count as 0);
- **likeness to the best hits**: score' = score + a x the min-max normalised mean similarity
  of the hit to the blend's ``m`` best hits (other than itself): feedback in record space.

Similarity between two hits is the cosine of their dense vectors (bge-small-en-v1.5, the
product's embedder and its 64-token cut, each turn alone) or of the mean of their ColBERT
token vectors (the product's cuts, first 128 dimensions). Scores are the product's blend from
the recorded fused scores and MaxSim, so the control is the product itself, which this bench
reproduces first. Every constant, and the blend's weight, is tuned leave one conversation
out; gains are paired against the product. Ends with one JSON line.
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

import locomo  # noqa: E402
from agentmemory_server.retrieval import late_interaction  # noqa: E402
from agentmemory_server.retrieval.local_models import LocalEmbedder  # noqa: E402
from judge_features import Head, RawStates, Scorer, blend, finish, minmax, recorded_heads, report, rows_of, tuned, unit  # noqa: E402

Vectors = dict[str, dict[str, np.ndarray]]  # conversation -> dia_id -> one unit vector


def turn_texts(data: Path) -> dict[str, dict[str, str]]:
    return {
        sample["sample_id"]: {
            turn["dia_id"]: locomo.turn_text(turn)
            for _, _, session in locomo.sessions_of(sample["conversation"])
            for turn in session
        }
        for sample in json.loads(data.read_text())
    }


def dense_vectors(texts: dict[str, dict[str, str]]) -> Vectors:
    model = LocalEmbedder("bge-small")
    out: Vectors = {}
    for conv, turns in texts.items():
        ids = list(turns)
        vectors = unit(np.asarray(model.embed([turns[i] for i in ids]), dtype=np.float64))
        out[conv] = dict(zip(ids, vectors, strict=True))
    return out


def colbert_means(texts: dict[str, dict[str, str]]) -> Vectors:
    states = RawStates()
    return {
        conv: {
            dia: unit(unit(states.encode(text, query=False)[:, : late_interaction.DIMS]).mean(axis=0, keepdims=True))[0]
            for dia, text in turns.items()
        }
        for conv, turns in texts.items()
    }


def similarities(head: Head, vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Cosine between every two hits; 0 on the diagonal and for a hit with no vector."""
    dim = next(iter(vectors.values())).shape[0]
    rows = np.array([vectors[d] if d in vectors else np.zeros(dim) for d in head["dias"]])
    sims = rows @ rows.T
    np.fill_diagonal(sims, 0.0)
    return sims.clip(0.0)


def smoothed(w: float, a: float, k: int, space: str) -> Scorer:
    def scorer(head: Head) -> np.ndarray:
        score = blend(w=w)(head)
        sims = head[space].copy()
        if k < len(sims):
            cut = np.partition(sims, -k, axis=1)[:, -k][:, None]
            sims = np.where(sims >= cut, sims, 0.0)
        weight = sims.sum(axis=1)
        neighbours = np.divide(sims @ score, weight, out=np.zeros_like(score), where=weight > 0)
        return (1 - a) * score + a * neighbours

    return scorer


def like_the_best(w: float, a: float, m: int, space: str) -> Scorer:
    def scorer(head: Head) -> np.ndarray:
        score = blend(w=w)(head)
        best = np.argsort(-score, kind="stable")[:m]
        sims = head[space][:, best]
        others = (sims > 0).sum(axis=1).clip(1)  # a best hit is not compared with itself
        return score + a * minmax(sims.sum(axis=1) / others)

    return scorer


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    texts = turn_texts(data)
    spaces = {"dense": dense_vectors(texts), "colbert mean": colbert_means(texts)}
    for head in heads:
        for space, vectors in spaces.items():
            head[space] = similarities(head, vectors[head["conv"]])
    print(f"\n{len(heads)} questions, their hits' similarities ({time.perf_counter() - started:.0f} s so far)\n")
    base = rows_of(heads, blend())
    results = [report("product blend, recorded scores", base, product_rows)]
    weights = [0.35, 0.5, 0.65]
    results.append(
        report("control: the blend, weight tuned", *tuned(heads, lambda w: blend(w=w), {"w": weights})[:1], base)
    )
    grids: dict[str, tuple[Any, dict[str, list[Any]]]] = {}
    for space in spaces:
        grids[f"smoothing, {space}"] = (
            smoothed,
            {"w": weights, "a": [0.0, 0.1, 0.2, 0.3, 0.5], "k": [3, 5, 10], "space": [space]},
        )
        grids[f"like the best, {space}"] = (
            like_the_best,
            {"w": weights, "a": [0.0, 0.05, 0.1, 0.2, 0.3], "m": [1, 3, 5], "space": [space]},
        )
    for name, (family, grid) in grids.items():
        rows, chosen = tuned(heads, family, grid)
        results.append(report(name, rows, base, chosen))
    finish("judge_graph", opts.out, results)


if __name__ == "__main__":
    main()
