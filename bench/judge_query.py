"""Reading the query and the records as the late-interaction model was trained to: tried offline.

    python bench/judge_query.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by the fused score
blended with MaxSim over answerai-colbert-small-v1's token states (``retrieval/late_interaction.py``).
The product encodes a query as its own tokens only, and a record with every token it has. ColBERT
models are trained otherwise, and this bench asks whether doing as they were trained judges the
same 50 hits better:

- **query augmentation**: a ColBERT query is padded to its full length (32) with [MASK] tokens,
  which attend to the query's words (the words do not attend to them). Their output states act as
  a learned, soft expansion of the query: each is matched against the record like a word is.
  Tried at several lengths, with the masks attended to or not, and with their matches weighted.
- **no punctuation in the record**: ColBERT leaves punctuation tokens out of a document's vectors
  at training; the product keeps them, so a comma in a record can be a query token's best match.

Every MaxSim here comes from this bench's own encoding (the product's cuts, first 128 dimensions),
so each variant is compared with the plain MaxSim from the same encoding (the control), and with
the product's recorded blend. The blend's weight and each variant's constant are tuned leave one
conversation out; gains are paired against the control. Ends with one JSON line.
"""

from __future__ import annotations

import json
import string
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
from judge_features import Head, RawStates, Scorer, compare_variants, minmax, recorded_heads, unit  # noqa: E402

DIMS = late_interaction.DIMS
MASK = 103  # [MASK] in the BERT vocabulary the model reads


class Encoder:
    """The product's encoder, with the query padded by [MASK] tokens when asked."""

    def __init__(self) -> None:
        self.states = RawStates()
        self.encoder = self.states.encoder
        vocab = self.encoder._tokenizer.get_vocab()
        self.punctuation = {i for tok, i in vocab.items() if tok and all(c in string.punctuation for c in tok)}

    def ids(self, text: str, *, query: bool) -> list[int]:
        marker, length = (
            (late_interaction.QUERY_MARKER, late_interaction.QUERY_TOKENS)
            if query
            else (late_interaction.DOC_MARKER, late_interaction.DOC_TOKENS)
        )
        return self.encoder._ids([text], marker, length)[0]

    def run(self, ids: list[int], attended: int) -> np.ndarray:
        """Unit token states (first DIMS) of ``ids``: its first ``attended`` tokens are attended to."""
        row = np.array([ids], dtype=np.int64)
        mask = np.zeros_like(row)
        mask[0, :attended] = 1
        feed = {"input_ids": row, "attention_mask": mask, "token_type_ids": np.zeros_like(row)}
        return unit(self.encoder._session.run(None, feed)[0][0][:, :DIMS].astype(np.float64))

    def query(self, text: str, length: int, attend_masks: bool) -> tuple[np.ndarray, int]:
        """Token states of the query padded to ``length`` with masks, and how many are its own."""
        ids = self.ids(text, query=True)
        own = len(ids)
        padded = ids + [MASK] * max(0, length - own)
        return self.run(padded, len(padded) if attend_masks else own), own


def encode_turns(data: Path, enc: Encoder) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """conversation -> dia_id -> (unit token states, which tokens are punctuation)."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for sample in json.loads(data.read_text()):
        turns = out[sample["sample_id"]] = {}
        for _, _, session in locomo.sessions_of(sample["conversation"]):
            for turn in session:
                ids = enc.ids(locomo.turn_text(turn), query=False)
                turns[turn["dia_id"]] = (enc.run(ids, len(ids)), np.array([i in enc.punctuation for i in ids]))
    return out


def maxsims(head: Head, turns: dict[str, tuple[np.ndarray, np.ndarray]], query: np.ndarray, own: int) -> dict:
    """Per hit: the words' summed best matches and the masks', with and without punctuation."""
    out: dict[str, list[float]] = {"words": [], "masks": [], "words nopunct": [], "masks nopunct": []}
    for dia in head["dias"]:
        if dia is None or dia not in turns:
            for values in out.values():
                values.append(np.nan)
            continue
        states, punct = turns[dia]
        best = (query @ states.T).max(axis=1)
        kept = states[~punct] if (~punct).any() else states
        best_kept = (query @ kept.T).max(axis=1)
        out["words"].append(float(best[:own].sum()))
        out["masks"].append(float(best[own:].sum()))
        out["words nopunct"].append(float(best_kept[:own].sum()))
        out["masks nopunct"].append(float(best_kept[own:].sum()))
    return {k: np.array(v) for k, v in out.items()}


def blend_variant(w: float, query: str = "plain", m: float = 1.0, punct: bool = True) -> Scorer:
    """(1 - w) x fused + w x MaxSim (words + m x masks), both min-max normalised over the hits."""

    def scorer(head: Head) -> np.ndarray:
        sims = head["sims"][query]
        suffix = "" if punct else " nopunct"
        late = sims["words" + suffix] + m * sims["masks" + suffix]
        return (1 - w) * minmax(head["fused"]) + w * minmax(late)

    return scorer


QUERIES = {  # name -> (padded length, masks attended)
    "plain": (0, False),
    "masks 16": (16, False),
    "masks 24": (24, False),
    "masks 32": (32, False),
    "masks 48": (48, False),
    "masks 32 attended": (32, True),
}


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    enc = Encoder()
    turns = encode_turns(data, enc)
    for head in heads:
        head["sims"] = {}
        for name, (length, attended) in QUERIES.items():
            query, own = enc.query(head["question"], length, attended)
            head["sims"][name] = maxsims(head, turns[head["conv"]], query, own)
    print(f"\n{len(heads)} questions encoded ({time.perf_counter() - started:.0f} s so far)\n")
    weights = [0.35, 0.5, 0.65]
    grids: dict[str, dict[str, list[Any]]] = {
        "control, weight tuned": {"w": weights},
        "masks to 32": {"w": weights, "query": ["masks 32"]},
        "masks to 32, attended": {"w": weights, "query": ["masks 32 attended"]},
        "masks, length tuned": {"w": weights, "query": ["masks 16", "masks 24", "masks 32", "masks 48"]},
        "masks to 32, their weight tuned": {"w": weights, "query": ["masks 32"], "m": [0.25, 0.5, 1.0]},
        "no punctuation in records": {"w": weights, "punct": [False]},
        "masks to 32, no punctuation": {"w": weights, "query": ["masks 32"], "punct": [False]},
    }
    compare_variants("judge_query", opts.out, heads, product_rows, blend_variant, grids)


if __name__ == "__main__":
    main()
