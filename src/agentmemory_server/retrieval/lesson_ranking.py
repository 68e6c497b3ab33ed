"""How lessons are ranked for a query: relevance x confidence x recency.

Shared by the lesson tools (memory/lessons.py) and smart-search, which attaches the lessons
that match its query.
"""

from __future__ import annotations

from typing import Any

from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.util import parse_time
from agentmemory_server.retrieval import search

DAY = 86_400.0


_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def _stem(term: str) -> str:
    for suffix in _SUFFIXES:
        if term.endswith(suffix) and len(term) - len(suffix) >= 3:
            return term[: -len(suffix)]
    return term


def coverage(terms: list[str], lesson: dict[str, Any]) -> float:
    """Share of the query terms found in the lesson (content, context, tags; crude stemming)."""
    if not terms:
        return 0.0
    text = " ".join([lesson.get("content", ""), lesson.get("context", ""), *(lesson.get("tags") or [])]).lower()
    return sum(1 for t in terms if _stem(t) in text) / len(terms)


def rank_lessons(ctx: Ctx, args: dict) -> list[dict[str, Any]]:
    """Lessons matching a query: relevance x confidence x recency, highest first.

    Relevance is mostly the share of query terms a lesson contains (upstream's rule) and partly
    its BM25 score relative to the best hit: with a handful of lessons BM25's idf collapses
    for any term most of them share, so it alone cannot rank them. Recency is
    1 / (1 + 0.01 x days since the last reinforcement)."""
    store = ctx.rt.db.reader()
    limit = args["limit"]
    filters = {"kinds": ["lesson"], "project": args.get("project"), "agent_id": agent_filter(ctx, args.get("agentId"))}
    hits = search.bm25(store, args["query"], limit=max(limit * 5, 50), filters=filters)
    best = max((h["score"] for h in hits), default=0.0) or 1.0
    now_ts = ctx.rt.clock.time()
    wanted_tags = set(args.get("tags") or [])
    terms = search.query_terms(args["query"])
    ranked = []
    for hit, lesson in search.hydrate(store, hits):
        confidence = float(lesson.get("confidence", 0))
        if lesson.get("deleted") or confidence < args["minConfidence"]:
            continue
        if args.get("source") and lesson.get("source") != args["source"]:
            continue
        if wanted_tags and not wanted_tags & set(lesson.get("tags") or []):
            continue
        touched = parse_time(lesson.get("lastReinforcedAt") or lesson.get("createdAt") or "")
        days = max(0.0, (now_ts - touched.timestamp()) / DAY) if touched else 0.0
        relevance = 0.8 * coverage(terms, lesson) + 0.2 * (hit["score"] / best)
        score = confidence * relevance * (1.0 / (1.0 + 0.01 * days))
        ranked.append({**lesson, "score": round(score, 3)})
    ranked.sort(key=lambda lesson: (-lesson["score"], lesson["id"]))
    return ranked[:limit]
