"""How much of a question's evidence the first stage hands the reranker: recall of the candidate
list at several depths, per LoCoMo category, through the product's own ranking.

    python bench/candidate_recall.py [--setting NAME=VALUE ...]

Loads each conversation as bench/locomo.py does and ranks every question (categories 1-4) with
``search.hybrid`` to depth 200, as the reranked path does (``nb``: with the session neighbours of
the top hits, at ``rerank.NEIGHBOUR_WEIGHT``) and without (``plain``), and BM25 and vectors alone.
A reranker can put in its top 10 only what its candidates hold, so recall at the rerank depth is
its ceiling. Embeddings come from bench/embed_cache.py's cache. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.kernel.registry import Ctx  # noqa: E402
from agentmemory_server.kernel.settings import SETTINGS  # noqa: E402
from agentmemory_server.retrieval import recall, rerank, search, vectors  # noqa: E402
from embed_cache import default_dir  # noqa: E402

DEPTHS = (10, 20, 40, 60, 100, 200)
GROUPS = (((1, 2, 3, 4), "overall 1-4"), ((1,), "multi-hop"), ((2,), "temporal"), ((3,), "open-domain"),
          ((4,), "single-hop"))


def recall_at(hits: list[dict], mapping: dict[str, str], evidence: list[str], depths: tuple[int, ...]) -> dict:
    ranked = list(dict.fromkeys(mapping[h["doc_id"]] for h in hits if h["doc_id"] in mapping))
    return {d: len(set(evidence) & set(ranked[:d])) / len(evidence) for d in depths}


def question_row(rt: Any, store: Any, project: str, question: str, evidence: list[str], mapping: dict) -> dict:
    filters = {"kinds": recall.RESULT_KINDS, "project": project, "agent_id": None}
    row: dict[str, float] = {}
    for tag, weight in (("plain", 0.0), ("nb", rerank.NEIGHBOUR_WEIGHT)):
        hits, _ = search.hybrid(store, question, limit=200, filters=filters, vectors=vectors.service(rt),
                                per_session=rt.settings.search_max_per_session, neighbour_weight=weight)
        row |= {f"{tag}@{d}": v for d, v in recall_at(hits, mapping, evidence, DEPTHS).items()}
    for mode in ("bm25", "vector"):
        hits, _ = search.hybrid(store, question, limit=200, filters=filters, vectors=vectors.service(rt), mode=mode)
        row |= {f"{mode}@{d}": v for d, v in recall_at(hits, mapping, evidence, (40, 100, 200)).items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    opts = parser.parse_args()
    for item in opts.setting:
        name, _, value = item.partition("=")
        locomo.OVERRIDES[name] = next(s for s in SETTINGS if s.name == name).type(value)
    rows: list[dict[str, Any]] = []
    for sample in json.loads(locomo.default_data().read_text()):
        with tempfile.TemporaryDirectory() as tmp:
            rt = locomo.runtime_for(tmp, "local", "tantivy", default_dir())
            try:
                mapping = locomo.ingest(Ctx(rt, source="bench"), sample)
                rt.db.flush()
                vectors.service(rt).drain()
                known, store = set(mapping.values()), rt.db.reader()
                for qa in sample["qa"]:
                    evidence = locomo.repair_evidence(qa.get("evidence") or [], known)
                    if evidence and qa["category"] in (1, 2, 3, 4):
                        row = question_row(rt, store, sample["sample_id"], qa["question"], evidence, mapping)
                        rows.append({"cat": qa["category"], **row})
            finally:
                rt.close()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC, commit {locomo.commit()}, settings {opts.setting or 'defaults'}")
    keys = [k for k in rows[0] if k != "cat"]
    table = {}
    for cats, name in GROUPS:
        picked = [r for r in rows if r["cat"] in cats]
        table[name] = {k: round(statistics.fmean(r[k] for r in picked), 3) for k in keys}
        print(f"{name:<12} n={len(picked):<4} " + " ".join(f"{k} {v:.3f}" for k, v in table[name].items()))
    print(json.dumps({"benchmark": "candidate_recall", "commit": locomo.commit(), "settings": opts.setting,
                      "recall": table}))


if __name__ == "__main__":
    main()
