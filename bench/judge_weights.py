"""How the judge sums its token matches: variants of MaxSim itself, tried offline and cross-validated.

    python bench/judge_weights.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by the fused score
blended with MaxSim: for each query token its best cosine over the record's tokens, summed with
equal weight. bench/judge_features.py and bench/judge_models.py found the order of those 50 hits,
not the candidates, to be what falls short, and no second model a better judge. This bench asks
whether the same token matches, summed differently, judge better, at no cost at query time:

- **query-token weights from document frequency**: each query token's best match weighted by
  1 + a x its IDF (scaled to 0-1) over the records of the store, so a match of a rare token counts
  more than one of a token most records hold (the question's shape words are kept, at weight 1).
  The IDF is over the conversation's records (a project's own store) or over every conversation.
- **a record-length prior**: each match less b x log(record tokens): a long record has more
  tokens to find a match among, by chance.
- **matches above a floor**: only the part of each best match above t counts.
- **the second-best match**: each query token's best and second-best match, (best + g x
  second) / (1 + g): a token matched twice in a record counts more.

Every MaxSim here comes from this bench's own encoding of each turn (``locomo.turn_text``, the
product's cuts and its first 128 dimensions), so the variants are compared with the same MaxSim
summed plainly from that encoding (the control, tuned the same way), and with the product's
recorded blend. Constants and the blend's weight are tuned leave one conversation out; gains are
paired. Ends with one JSON line.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.retrieval import late_interaction  # noqa: E402
from judge_features import Head, RawStates, Scorer, compare_variants, minmax, recorded_heads, unit  # noqa: E402

DIMS = late_interaction.DIMS
Turn = tuple[list[int], np.ndarray]  # token ids, unit token vectors


def encode(data: Path, states: RawStates) -> dict[str, dict[str, Turn]]:
    """conversation -> dia_id -> (token ids, unit token vectors) as the worker cuts them."""
    out: dict[str, dict[str, Turn]] = {}
    for sample in json.loads(data.read_text()):
        turns = out[sample["sample_id"]] = {}
        for _, _, session in locomo.sessions_of(sample["conversation"]):
            for turn in session:
                text = locomo.turn_text(turn)
                ids = states.encoder._ids([text], late_interaction.DOC_MARKER, late_interaction.DOC_TOKENS)[0]
                turns[turn["dia_id"]] = (ids, unit(states.encode(text, query=False)[:, :DIMS]))
    return out


def idf_table(turns: list[list[int]]) -> dict[int, float]:
    """Each token id's IDF over these records, log((N + 1) / (df + 0.5)), scaled to 0-1."""
    df = Counter(t for ids in turns for t in set(ids))
    top = math.log((len(turns) + 1) / 0.5)
    return {t: math.log((len(turns) + 1) / (n + 0.5)) / top for t, n in df.items()}


def query_idf(ids: list[int], table: dict[int, float]) -> np.ndarray:
    return np.array([table.get(t, 1.0) for t in ids])


def matches(head: Head, turns: dict[str, Turn], query: np.ndarray) -> None:
    """Per hit: each query token's best and second-best cosine, and the record's length."""
    best, second, length = [], [], []
    for dia in head["dias"]:
        if dia is None or dia not in turns:
            best.append(None)
            second.append(None)
            length.append(0)
            continue
        sims = query @ turns[dia][1].T
        top2 = -np.sort(-sims, axis=1)[:, :2]
        best.append(top2[:, 0])
        second.append(top2[:, 1] if top2.shape[1] > 1 else top2[:, 0])
        length.append(len(turns[dia][0]))
    head["best"], head["second"], head["length"] = best, second, np.array(length)


def judged(
    head: Head, *, a: float = 0.0, scope: str = "conv", b: float = 0.0, t: float = -1.0, g: float = 0.0
) -> np.ndarray:
    weights = 1.0 + a * head[f"idf {scope}"]
    out = []
    for best, second, n in zip(head["best"], head["second"], head["length"], strict=True):
        if best is None:
            out.append(np.nan)
            continue
        per_token = (best + g * second) / (1 + g)
        per_token = np.maximum(per_token - t, 0.0) if t >= 0 else per_token
        out.append(float((weights * (per_token - b * math.log(n))).sum()))
    return np.array(out)


def blend_judge(w: float, **variant: Any) -> Scorer:
    """(1 - w) x fused + w x the variant's MaxSim, both min-max normalised over the hits."""

    def scorer(head: Head) -> np.ndarray:
        key = json.dumps(variant, sort_keys=True)
        cache = head.setdefault("judged", {})
        if key not in cache:
            cache[key] = minmax(judged(head, **variant))
        return (1 - w) * minmax(head["fused"]) + w * cache[key]

    return scorer


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    states = RawStates()
    turns = encode(data, states)
    tables = {conv: idf_table([ids for ids, _ in conv_turns.values()]) for conv, conv_turns in turns.items()}
    tables["all"] = idf_table([ids for conv_turns in turns.values() for ids, _ in conv_turns.values()])
    for head in heads:
        ids = states.encoder._ids([head["question"]], late_interaction.QUERY_MARKER, late_interaction.QUERY_TOKENS)[0]
        query = unit(states.encode(head["question"], query=True)[:, :DIMS])
        head["idf conv"], head["idf all"] = query_idf(ids, tables[head["conv"]]), query_idf(ids, tables["all"])
        matches(head, turns[head["conv"]], query)
    cosines = np.concatenate([b for h in heads for b in h["best"] if b is not None])
    print(
        f"\n{len(heads)} questions, {sum(len(t) for t in turns.values())} turns encoded "
        f"({time.perf_counter() - started:.0f} s so far); a query token's best cosine over a hit, "
        f"quartiles {np.percentile(cosines, [25, 50, 75]).round(3).tolist()}\n"
    )
    weights = [0.35, 0.5, 0.65]
    grids: dict[str, dict[str, list[Any]]] = {
        "control, weight tuned": {"w": weights},
        "IDF weights, conversation": {"w": weights, "a": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]},
        "IDF weights, every conversation": {"w": weights, "a": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0], "scope": ["all"]},
        "record-length prior": {"w": weights, "b": [0.0, 0.01, 0.02, 0.04, 0.08]},
        "matches above a floor": {"w": weights, "t": [-1.0, 0.2, 0.3, 0.4, 0.5, 0.6]},
        "second-best match": {"w": weights, "g": [0.0, 0.25, 0.5, 1.0]},
    }
    compare_variants("judge_weights", opts.out, heads, product_rows, blend_judge, grids)


if __name__ == "__main__":
    main()
