"""Which side of a hit the session window needs: the turns before it, after it, or both.

    python bench/judge_window.py [DATA] [--out FILE]

The eighth round (``bench/judge_features.py``) found one generic signal the late-interaction
judge lacks: the **session window**, each query token's best match over a hit *and* the turns up
to ``span`` before and after it in its session, added to the blend. Both its gains cleared their
intervals at span 5, but it reads the token vectors of about four times as many records as the
50 hits. If the turns on one side carry the gain, a record could keep its own window when it is
encoded (the turns before a record are known then; the turns after it are not), and a search
would read nothing more. This bench scores the window over the turns before each hit only,
after it only, and both, at spans 1, 2, 3 and 5, with the span and both weights tuned leave one
conversation out, paired against the product's blend; and prints how many records each reads
per question (median).

Every MaxSim here comes from this bench's own encoding (the product's cuts, first 128
dimensions) of each turn alone. Ends with one JSON line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from agentmemory_server.retrieval import late_interaction  # noqa: E402
from judge_features import (  # noqa: E402
    READS,
    RawStates,
    blend,
    encode_turns,
    finish,
    recorded_heads,
    report,
    rows_of,
    tuned,
    unit,
    window,
)

SIDES = {"before": (-1, 0), "after": (0, 1), "both": (-1, 1)}
SPANS = (1, 2, 3, 5)


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    states = RawStates()
    turns = encode_turns(data, states)
    for head in heads:
        query = unit(states.encode(head["question"], query=True)[:, : late_interaction.DIMS])
        for side in SIDES:
            for span in SPANS:
                head[f"{side} {span}"] = window(head, turns[head["conv"]], query, span, sides=SIDES[side])
    print(f"\n{len(heads)} questions, their windows ({time.perf_counter() - started:.0f} s so far)\n")
    base = rows_of(heads, blend())
    results = [report("product blend, recorded scores", base, product_rows)]
    weights = {"w": [0.35, 0.5, 0.65], "w2": [0.0, 0.1, 0.2, 0.3, 0.4]}
    for side in SIDES:
        for span in (1, 5):
            rows, chosen = tuned(heads, lambda w, w2, f=f"{side} {span}": blend(f, w, w2), weights)
            results.append(report(f"+ window {side}, span {span}", rows, base, chosen))
        rows, chosen = tuned(
            heads, lambda w, w2, span, s=side: blend(f"{s} {span}", w, w2), {**weights, "span": list(SPANS)}
        )
        results.append(report(f"+ window {side}, span tuned", rows, base, chosen))
    names = {sides: side for side, sides in SIDES.items()}
    reads = {f"{names[sides]} {span}": int(np.median(counts)) for (span, _, sides), counts in READS.items()}
    print("records whose token vectors a question's window reads (median; today's re-scoring reads the 50 hits):")
    print("  " + ", ".join(f"{name}: {n}" for name, n in reads.items()))
    finish("judge_window", opts.out, results, records_read=reads)


if __name__ == "__main__":
    main()
