"""Lexical signals beside the late-interaction judge, offline: query-term coverage, proximity and
the kind of answer asked for.

    python bench/judge_lexical.py [DATA] [--out FILE]

The default path re-scores hybrid search's best ``late_interaction.DEPTH`` hits by the fused score
blended with MaxSim (``retrieval/late_interaction.py``). The fused score holds BM25, which counts
each query term on its own and saturates; neither it nor MaxSim asks whether a record holds *all*
of the question's terms, or holds them close together. Both are classic learning-to-rank signals,
and both cost nothing but the hits' text, which a search reads anyway. This bench adds each to the
product's blend at a weight taken from the fused score's share:

- **coverage**: the share of the question's terms (``search.query_terms``: no stop words) that
  the record holds, a term matching a record word exactly or, in the "prefix" variant, by its
  first five letters (a stand-in for stemming: "painting" and "painted");
- **coverage with the session's neighbours**: the same over the record and the turns next to it
  (the eighth round's session window, read as words instead of token vectors);
- **proximity**: for a record holding two or more of the terms, 1 / (1 + the fewest words
  between two different ones);
- **the kind of answer asked for**: a question asking for a quantity ("how long", "how many",
  "how much", "how old", "how often") or a time ("when", "what year", "what month", ...) is
  answered by a record that holds one: a number (in digits or words), a time word (a weekday, a
  month, "yesterday", "ago", a season ...) or a year. Such records gain ``w2`` on top of the
  blend; the other questions' order is left as it is. English question words only.

Scores come from the product's recorded blend, so the gain is paired against the product itself.
The feature's weight and the blend's are tuned leave one conversation out. Ends with one JSON line.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.retrieval import search  # noqa: E402
from judge_features import blend, finish, position, recorded_heads, report, rows_of, tuned  # noqa: E402
from locomo_eval import paired  # noqa: E402

PREFIX = 5
_NUMBER = (
    r"\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|hundred|thousand"
    r"|few|several|couple)\b"
)
_UNIT = r"\b(second|minute|hour|day|week|weekend|month|year|decade)s?\b"
_TIME_WORD = (
    r"\b(yesterday|today|tonight|tomorrow|ago|last|next|since|monday|tuesday|wednesday|thursday|friday|saturday"
    r"|sunday|january|february|march|april|may|june|july|august|september|october|november|december|morning"
    r"|evening|summer|winter|spring|fall|autumn)\b"
)


def asked_kind(question: str) -> str | None:
    q = question.lower()
    if re.search(r"\bhow (long|many|much|old|often)\b", q):
        return "quantity"
    if re.search(r"\b(when|what year|what month|what date|what time)\b", q):
        return "time"
    return None


def holds_kind(kind: str | None, text: str) -> bool:
    t = text.lower()
    if kind == "quantity":
        return bool(re.search(_NUMBER, t))
    if kind == "time":
        return bool(
            re.search(_TIME_WORD, t) or re.search(_NUMBER + r"\s+" + _UNIT, t) or re.search(r"\b(19|20)\d\d\b", t)
        )
    return False


def words_of(text: str) -> list[str]:
    return [w.lower() for w in search.WORDS.findall(text)]


def stem(word: str, prefix: bool) -> str:
    return word[:PREFIX] if prefix else word


def turn_texts(data: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for sample in json.loads(data.read_text()):
        turns = out[sample["sample_id"]] = {}
        for _, _, session in locomo.sessions_of(sample["conversation"]):
            for turn in session:
                turns[turn["dia_id"]] = locomo.turn_text(turn)
    return out


def coverage(terms: list[str], words: list[str], prefix: bool) -> float:
    if not terms:
        return 0.0
    have = {stem(w, prefix) for w in words}
    return sum(stem(t, prefix) in have for t in terms) / len(terms)


def proximity(terms: list[str], words: list[str]) -> float:
    where = [(i, t) for i, w in enumerate(words) for t in terms if stem(w, True) == stem(t, True)]
    best = min((abs(i - j) for i, a in where for j, b in where if a != b), default=None)
    return 0.0 if best is None else 1.0 / (1 + best)


def neighbourhood(dia: str, turns: dict[str, list[str]], span: int) -> list[str]:
    session, turn = position(dia)
    out: list[str] = []
    for d in range(-span, span + 1):
        out += turns.get(f"D{session}:{turn + d}", [])
    return out


def features(head: dict[str, Any], texts: dict[str, str]) -> None:
    turns = {dia: words_of(text) for dia, text in texts.items()}
    kind = asked_kind(head["question"])
    head["answer kind"] = np.array([float(bool(d) and holds_kind(kind, texts.get(d, ""))) for d in head["dias"]])
    terms = search.query_terms(head["question"])
    values: dict[str, list[float]] = {"exact": [], "prefix": [], "window 1": [], "window 2": [], "proximity": []}
    for dia in head["dias"]:
        if dia is None or dia not in turns:
            for v in values.values():
                v.append(np.nan)
            continue
        words = turns[dia]
        values["exact"].append(coverage(terms, words, False))
        values["prefix"].append(coverage(terms, words, True))
        values["window 1"].append(coverage(terms, neighbourhood(dia, turns, 1), True))
        values["window 2"].append(coverage(terms, neighbourhood(dia, turns, 2), True))
        values["proximity"].append(proximity(terms, words))
    for name, v in values.items():
        head[name] = np.array(v)


def main() -> None:
    opts, data, started, heads, product_rows = recorded_heads(__doc__)
    texts = turn_texts(data)
    for head in heads:
        features(head, texts[head["conv"]])
    print(f"\n{len(heads)} questions ({time.perf_counter() - started:.0f} s so far)\n")
    base = rows_of(heads, blend())
    results = [report("product blend, from recorded scores", base, product_rows)]
    grid = {"w": [0.35, 0.5, 0.65], "w2": [0.0, 0.05, 0.1, 0.2, 0.3]}
    rows, chosen = tuned(heads, lambda w, w2: blend(None, w, 0.0), {"w": grid["w"], "w2": [0.0]})
    results.append(report("product, weight tuned", rows, base, chosen))
    for name in ("exact", "prefix", "window 1", "window 2", "proximity"):
        rows, chosen = tuned(heads, lambda w, w2, name=name: blend(name, w, w2), grid)
        results.append(report(f"+ {name}", rows, base, chosen))
    on_top = lambda w, w2: lambda head: blend(None, w)(head) + w2 * head["answer kind"]  # noqa: E731
    print(f"{sum(asked_kind(h['question']) is not None for h in heads)} questions ask for a quantity or a time")
    rows, chosen = tuned(heads, on_top, grid)
    results.append(report("+ the kind of answer asked for", rows, base, chosen))
    for metric in ("R@10", "NDCG@10"):
        gain = paired(rows, base, metric, (2,))  # temporal questions, where most answers are times
        low, high = gain["lo"] * 100, gain["hi"] * 100
        print(f"{'':<34} temporal {metric} {gain['delta'] * 100:+.1f} [{low:+.1f}, {high:+.1f}]")
    finish("judge_lexical", opts.out, results)


if __name__ == "__main__":
    main()
