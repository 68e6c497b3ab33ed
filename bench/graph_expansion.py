"""Query expansion through the knowledge graph, measured on LoCoMo: tried, not in the product.

    python bench/graph_expansion.py [locomo.py's arguments] --grid graph.TERMS=0,2,4,8

Issue 16 asks for multi-hop evidence to be reached through the knowledge graph too. The product
builds a graph per session when it ends (``models/graph.py``): without a model, the
deterministic one links the files and concepts that occur in the same observation, concepts
being an observation's own and the session's recurring words. ``bench/locomo.py`` loads turns
only and ends no session, so its runs never had a graph. This bench runs bench/locomo.py with
two changes:

- after a conversation is loaded, every session's graph is extracted as at session end, the
  deterministic way (``graph.extract_session(..., use_model=False)``);
- a question is expanded before it is asked: its words that name a concept of the project's
  graph lead to their neighbours, ranked by the summed weight of the edges that reach them, and
  the ``TERMS`` best names not already in the question are appended to it (0: the product).

``RANK=association`` ranks a neighbour by its edges' weight divided by its own mentions instead
(how much of its use is beside the question's concepts), so that the session's commonest words,
which neighbour everything, do not come first. ``TERMS``, ``MIN_WEIGHT`` (the lightest edge
followed) and ``RANK`` are tuned leave one conversation out with ``--grid graph.TERMS=...``,
and ``--compare`` pairs the result with an earlier ``--out`` of the product. Every other
argument is bench/locomo.py's.
"""

from __future__ import annotations

import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import locomo  # noqa: E402
from agentmemory_server.models import graph  # noqa: E402

# The constants the grids set, as ``graph.NAME``.
constants = types.SimpleNamespace(TERMS=0, MIN_WEIGHT=1, RANK="weight")
_WORD = re.compile(r"[a-z][a-z0-9_\-]{3,}")  # the graph's own notion of a word
EXTRACTED: Counter[str] = Counter()


def ingest_with_graph(ctx: Any, sample: dict[str, Any]) -> dict[str, str]:
    mapping = PLAIN_INGEST(ctx, sample)
    project = sample["sample_id"]
    for number, _, _ in locomo.sessions_of(sample["conversation"]):
        found = graph.extract_session(ctx, f"{project}-session-{number}", use_model=False)
        EXTRACTED["sessions"] += 1
        EXTRACTED["nodes"] += found["nodes"]
        EXTRACTED["edges"] += found["edges"]
    return mapping


def related_terms(ctx: Any, project: str, question: str) -> list[str]:
    """The graph's best neighbours of the question's concepts, heaviest first."""
    nodes, edges = graph._visible(ctx, ctx.rt.db.reader(), {"project": project})
    words = set(_WORD.findall(question.lower()))
    named = {i for i, n in nodes.items() if n["type"] == "concept" and n["name"] in words}
    weight: Counter[str] = Counter()
    for edge in edges:
        if graph._number(edge.get("weight")) < constants.MIN_WEIGHT:
            continue
        for here, there in (("sourceNodeId", "targetNodeId"), ("targetNodeId", "sourceNodeId")):
            if edge.get(here) in named and edge.get(there) not in named and edge.get(there) in nodes:
                weight[edge[there]] += graph._number(edge.get("weight")) / (
                    graph._number(nodes[edge[there]].get("mentions")) or 1 if constants.RANK == "association" else 1
                )
    names = [nodes[i]["name"] for i, _ in sorted(weight.items(), key=lambda item: (-item[1], item[0]))]
    return [n for n in names if n not in words][: constants.TERMS]


def ask_expanded(ctx: Any, project: str, question: str, mode: str) -> tuple[list[dict], str]:
    extra = related_terms(ctx, project, question) if constants.TERMS else []
    EXTRACTED["questions expanded"] += bool(extra)
    return PLAIN_ASK(ctx, project, " ".join([question, *extra]), mode)


PLAIN_INGEST, PLAIN_ASK = locomo.ingest, locomo.ask


def main() -> None:
    locomo.BENCH_MODULES["graph"] = constants
    locomo.ingest, locomo.ask = ingest_with_graph, ask_expanded
    try:
        locomo.main()
    finally:
        locomo.ingest, locomo.ask = PLAIN_INGEST, PLAIN_ASK
        print(f"graph: {dict(EXTRACTED)}")


if __name__ == "__main__":
    main()
