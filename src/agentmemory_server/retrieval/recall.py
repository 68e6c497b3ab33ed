"""Search tools: recall (POST /search) and smart search (POST /smart-search).

Both rank observations and memories with ``search.hybrid`` (BM25 + vectors fused, or
BM25 alone when no vectors are available) and say which mode ran. Every filter (project, agent,
cwd, session) is applied inside both rankers, so no hit from outside the caller's scope can
appear, whatever the mode.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from agentmemory_server.errors import InvalidInput, Unavailable
from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter
from agentmemory_server.kernel.registry import (
    AGENT_ID,
    PROJECT,
    SESSION_ID,
    Ctx,
    anything,
    array,
    boolean,
    integer,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.util import estimate_tokens, truncate
from agentmemory_server.retrieval import late_interaction, lesson_ranking, rerank, search, vectors

log = logging.getLogger("agentmemory.recall")
FORMATS = ("full", "compact", "narrative")
RESULT_KINDS = ["observation", "memory"]  # lessons are attached separately by smart-search
MODE = string(
    "auto: hybrid when vectors are available, else bm25; or force bm25 / hybrid / vector",
    enum=search.SEARCH_MODES,
    default="auto",
)
RERANK = boolean("Rerank the top candidates with a cross-encoder (default: AGENTMEMORY_SEARCH_RERANK)")


def memory_as_observation(mem: dict[str, Any]) -> dict[str, Any]:
    """Upstream clients read search hits as observations; a memory is shown as one, of its own
    type (fact, pattern, bug, ...), so that a line built from it names what it is."""
    return {
        "id": mem["id"],
        "sessionId": (mem.get("sessionIds") or ["memory"])[0],
        "timestamp": mem.get("updatedAt"),
        "type": mem.get("type") or "fact",
        "title": mem.get("title", ""),
        "narrative": mem.get("content", ""),
        "concepts": mem.get("concepts", []),
        "files": mem.get("files", []),
        "importance": mem.get("strength", 7),
        "project": mem.get("project"),
    }


def as_observation(hit: dict, record: dict) -> dict:
    """Any indexed record in the observation shape clients read (memories, lessons, ...)."""
    if hit["kind"] == "observation":
        return record
    if hit["kind"] == "memory":
        return memory_as_observation(record)
    text = record.get("content") or record.get("narrative") or record.get("title") or ""
    return {
        "id": record.get("id", hit["key"]),
        "sessionId": hit.get("session_id") or hit["kind"],
        "timestamp": record.get("updatedAt") or record.get("createdAt") or hit.get("ts"),
        "type": hit["kind"],
        "title": record.get("title") or truncate(" ".join(text.split()), 80),
        "narrative": text,
        "concepts": record.get("concepts") or record.get("tags") or [],
        "files": record.get("files") or [],
        "project": record.get("project"),
    }


class Ranked(NamedTuple):
    pairs: list  # hits paired with their records, best first
    mode: str  # the mode that ran
    reranked: bool  # a cross-encoder reordered them
    late: bool  # late interaction re-scored them


def ranked(
    ctx: Ctx, query: str, *, limit: int, filters: dict[str, Any], mode: str, rerank_top: bool | None = None
) -> Ranked:
    """A query's hits within ``filters``, ranked, and which stages ranked them."""
    with vectors.service(ctx.rt).searching():
        return _ranked(ctx, query, limit=limit, filters=filters, mode=mode, rerank_top=rerank_top)


def _ranked(ctx: Ctx, query: str, *, limit: int, filters: dict[str, Any], mode: str, rerank_top: bool | None) -> Ranked:
    store = ctx.rt.db.reader()
    wanted = ctx.rt.settings.search_rerank if rerank_top is None else rerank_top
    service = vectors.service(ctx.rt)
    # Without the cross-encoder, late interaction re-scores the best hits (with it, it did not
    # add to what the cross-encoder finds: docs/retrieval.md). An explicit "bm25" or "vector"
    # mode asks for that ranker's order alone.
    # A new query's vector first, then its token vectors, on one thread beside BM25: the first
    # stage needs the vector before its graph walk, the tokens are read only after it.
    vector = service.query_vector(query) if mode != "bm25" and service.ready else None
    tokens = service.late_query(query) if not wanted and mode in ("auto", "hybrid") else None
    depth = max(limit, rerank.RERANK_DEPTH) if wanted else max(limit, late_interaction.DEPTH) if tokens else limit
    hits, used = search.hybrid(
        store,
        query,
        limit=depth,
        filters=filters,
        vectors=service,
        mode=mode,
        per_session=ctx.rt.settings.search_max_per_session,
        fusion=ctx.rt.settings.search_fusion,
        neighbour_weight=rerank.NEIGHBOUR_WEIGHT if wanted and rerank.available() else 0.0,
        vector=vector,
    )
    late = False
    if tokens is not None:
        hits, late = rescored(store, service, tokens, hits)
        hits = hits[:limit]
    pairs = search.hydrate(store, hits)
    if not wanted or len(pairs) < 2:
        return Ranked(pairs[:limit], used, False, late)
    try:
        more = second_round(ctx, store, query, filters, mode)
        workers = rerank.PAIR_THREADS if service.quiet() else 1
        pairs = rerank.rerank_pairs(rerank.shared(), query, pairs, record_text, more, workers=workers)
    except Unavailable as exc:  # no reranker installed: the first stage's order stands
        log.warning("reranking skipped: %s", exc.message)
        return Ranked(pairs[:limit], used, False, False)
    return Ranked(pairs[:limit], used, True, False)


def rescored(
    store: Any, service: vectors.VectorService, tokens: Callable[[], Any], hits: list[dict]
) -> tuple[list[dict], bool]:
    """The best ``late_interaction.DEPTH`` hits reordered by their fused score blended with
    MaxSim (late interaction) with the query's ``tokens`` (when they come), the rest after them
    unchanged; and whether that ran."""
    head, tail = hits[: late_interaction.DEPTH], hits[late_interaction.DEPTH :]
    query_tokens = tokens() if len(head) > 1 else None  # one hit or none: nothing to reorder or wait for
    if query_tokens is None:
        return hits, False
    return late_interaction.rescore(head, service.late_scores(store, query_tokens, head)) + tail, True


def second_round(ctx: Ctx, store: Any, query: str, filters: dict[str, Any], mode: str) -> rerank.MoreFrom:
    """How the reranker's second round finds records from its seeds: the query joined to a seed's
    text, searched like the first stage (without neighbours), records not yet candidates kept."""

    def more(seeds: rerank.Pairs, seen: set[str]) -> rerank.Pairs:
        found: list[dict] = []
        for hit, record in seeds:
            hits, _ = search.hybrid(
                store,
                f"{query} {record_text(hit, record)}",
                limit=rerank.SECOND_ROUND_DEPTH + len(seen),
                filters=filters,
                vectors=vectors.service(ctx.rt),
                mode=mode,
                per_session=ctx.rt.settings.search_max_per_session,
                fusion=ctx.rt.settings.search_fusion,
            )
            new = [h for h in hits if h["doc_id"] not in seen][: rerank.SECOND_ROUND_DEPTH]
            seen = seen | {h["doc_id"] for h in new}
            found += new
        return search.hydrate(store, found)

    return more


def record_text(hit: dict, record: dict) -> str:
    """What the cross-encoder reads of a record: its title (unless the body starts with it) and body."""
    obs = as_observation(hit, record)
    body = " ".join(str(obs.get(k) or "") for k in ("narrative", "subtitle")).strip()
    title = search.distinct_title(str(obs.get("title") or ""), body)
    return f"{title}. {body}" if title else body


def search_filters(ctx: Ctx, args: dict[str, Any], kinds: list[str]) -> dict[str, Any]:
    filters: dict[str, Any] = {
        "kinds": kinds,
        "project": args.get("project"),
        "agent_id": agent_filter(ctx, args.get("agentId")),
    }
    if args.get("cwd"):
        filters["session_ids"] = listings.session_ids_with(ctx.rt.db.reader(), cwd=args["cwd"])
    if args.get("sessionId"):
        filters["session_ids"] = [args["sessionId"]]
    return filters


def listed(obs: dict[str, Any]) -> dict[str, Any]:
    """An observation as a list of results shows it: without the hook payload it was made from
    (``raw``: a tool's whole input and output, often kilobytes, that the title and narrative
    already sum up; upstream's search results carry none either). Expanding a hit by id
    (smart-search ``expandIds``) or listing a session's observations shows all of it."""
    return {key: value for key, value in obs.items() if key != "raw"} if "raw" in obs else obs


def format_results(pairs: list[tuple[dict, dict]], fmt: str) -> list[dict[str, Any]]:
    results = []
    for hit, record in pairs:
        obs = listed(as_observation(hit, record))
        score = round(hit.get("score", 0.0), 4)
        if fmt == "compact":
            results.append(
                {
                    "obsId": obs["id"],
                    "sessionId": obs.get("sessionId"),
                    "kind": hit["kind"],
                    "title": obs.get("title", ""),
                    "type": obs.get("type"),
                    "score": score,
                    "timestamp": obs.get("timestamp"),
                }
            )
        else:
            entry = {"kind": hit["kind"], "observation": obs, "score": score, "sessionId": obs.get("sessionId")}
            if hit["kind"] == "memory":
                entry["memory"] = record
            results.append(entry)
    return results


def apply_budget(results: list[dict], budget: int | None) -> tuple[list[dict], int, bool]:
    """Keep results in rank order while their cumulative token estimate fits the budget."""
    used, kept = 0, list[dict[str, Any]]()
    for item in results:
        cost = estimate_tokens(json.dumps(item, ensure_ascii=False))
        if budget is not None and used + cost > budget:
            return kept, used, True
        kept.append(item)
        used += cost
    return kept, used, False


@tool(
    "memory_recall",
    params(
        ["query"],
        query=string("What to look for", max_length=4000),
        limit=integer("Maximum results", minimum=1, maximum=100, default=20),
        format=string("full records, compact rows or a narrative text", enum=FORMATS, default="full"),
        token_budget=integer("Stop adding results past this many tokens", minimum=1, maximum=1_000_000),
        project=PROJECT,
        cwd=string("Only sessions started in this directory", max_length=4096),
        sessionId=SESSION_ID,
        agentId=AGENT_ID,
        mode=MODE,
        rerank=RERANK,
    ),
    http=[("POST", "/search")],
    core=True,
    right="read",
)
def memory_recall(ctx: Ctx, args: dict) -> dict:
    """Search observations and memories (hybrid BM25 + vectors when available; says which mode ran)."""
    found = ranked(
        ctx,
        args["query"],
        limit=args["limit"],
        mode=args["mode"],
        filters=search_filters(ctx, args, RESULT_KINDS),
        rerank_top=args.get("rerank"),
    )
    fmt = args["format"]
    results, used, truncated = apply_budget(format_results(found.pairs, fmt), args.get("token_budget"))
    body: dict[str, Any] = {
        "format": fmt,
        "mode": found.mode,
        "reranked": found.reranked,
        "lateInteraction": found.late,
        "query": args["query"],
        "results": results,
        "count": len(results),
        "tokens_used": used,
        "tokens_budget": args.get("token_budget"),
        "truncated": truncated,
    }
    if fmt == "narrative":
        body["text"] = (
            "\n\n".join(
                f"{i}. {r['observation'].get('title', '')}\n{r['observation'].get('narrative', '')}"
                for i, r in enumerate(results, 1)
            )
            or "No results."
        )
    return body


# -- smart search: compact hybrid results, expansion by id, lessons ----------------------------------

MAX_EXPAND = 20
LESSON_CHARS = 240


def compact_row(hit: dict, record: dict) -> dict[str, Any]:
    obs = as_observation(hit, record)
    return {
        "obsId": obs["id"],
        "sessionId": obs.get("sessionId"),
        "kind": hit["kind"],
        "title": obs.get("title", ""),
        "type": obs.get("type"),
        "score": round(hit.get("score", 0.0), 6),
        "timestamp": obs.get("timestamp"),
        "project": hit.get("project"),
    }


def _expand_ids(raw: list[Any]) -> list[str]:
    ids = []
    for item in raw:
        if isinstance(item, dict):
            item = item.get("obsId") or item.get("id") or item.get("memoryId")
        if isinstance(item, (str, int)) and str(item).strip():
            ids.append(str(item).strip())
    return list(dict.fromkeys(ids))


def expand(ctx: Ctx, args: dict[str, Any]) -> dict[str, Any]:
    """Full records for ids from an earlier compact answer (observations, memories, lessons),
    within the same project and agent scope as a search."""
    ids = _expand_ids(args["expandIds"])
    truncated = len(ids) > MAX_EXPAND
    ids = ids[:MAX_EXPAND]
    store = ctx.rt.db.reader()
    filters = search_filters(ctx, args, [])
    docs = {d["doc_id"]: d for d in store.index.lookup(ids, filters)}
    pairs = search.hydrate(store, [docs[i] for i in ids if i in docs])
    results = []
    for hit, record in pairs:
        entry: dict[str, Any] = {
            "obsId": hit["doc_id"],
            "sessionId": hit.get("session_id"),
            "kind": hit["kind"],
            "observation": as_observation(hit, record),
        }
        if hit["kind"] != "observation":
            entry["memory" if hit["kind"] == "memory" else "record"] = record
        results.append(entry)
    found = {r["obsId"] for r in results}
    return {
        "mode": "expanded",
        "results": results,
        "truncated": truncated,
        "notFound": [i for i in ids if i not in found],
    }


# The lessons tools' default floor (memory_lesson_recall's minConfidence).
LESSON_MIN_CONFIDENCE = 0.1


def lesson_row(lesson: dict[str, Any]) -> dict[str, Any]:
    return {
        "lessonId": lesson.get("id") or lesson.get("lessonId"),
        "content": truncate(str(lesson.get("content") or ""), LESSON_CHARS),
        "confidence": lesson.get("confidence"),
        "score": lesson.get("score"),
        "createdAt": lesson.get("createdAt"),
        "project": lesson.get("project"),
        "tags": lesson.get("tags") or [],
    }


def attach_lessons(ctx: Ctx, query: str, project: str | None, limit: int) -> list[dict[str, Any]]:
    """Lessons matching the query. Search must still answer when lesson ranking fails, so
    errors only get logged."""
    args: dict[str, Any] = {
        "query": query,
        "limit": min(limit, 10),
        "minConfidence": LESSON_MIN_CONFIDENCE,
        "project": project,
    }
    try:
        return [lesson_row(lesson) for lesson in lesson_ranking.rank_lessons(ctx, args)]
    except Exception:  # noqa: BLE001 - a lessons failure must not fail the search
        log.exception("lesson recall failed during smart-search")
        return []


@tool(
    "memory_smart_search",
    params(
        query=string("What to look for (or give expandIds)", max_length=4000),
        expandIds=array(
            anything("an id, or {obsId, sessionId}"), "Ids from a compact answer to return in full", max_items=100
        ),
        limit=integer("Maximum results", minimum=1, maximum=100, default=10),
        project=PROJECT,
        cwd=string("Only sessions started in this directory", max_length=4096),
        sessionId=SESSION_ID,
        agentId=AGENT_ID,
        includeLessons=boolean("Attach matching lessons", default=True),
        mode=MODE,
        rerank=RERANK,
        source=string("Who is asking; accepted from upstream clients, not used", max_length=64),
    ),
    http=[("POST", "/smart-search")],
    core=True,
    right="read",
)
def memory_smart_search(ctx: Ctx, args: dict) -> dict:
    """Hybrid search (BM25 + vectors, fused) returning compact rows; expandIds returns full records."""
    if args.get("expandIds"):
        return expand(ctx, args)
    query = (args.get("query") or "").strip()
    if not query:
        raise InvalidInput("give 'query' or 'expandIds'", field="query")
    found = ranked(
        ctx,
        query,
        limit=args["limit"],
        mode=args["mode"],
        filters=search_filters(ctx, args, RESULT_KINDS),
        rerank_top=args.get("rerank"),
    )
    body: dict[str, Any] = {
        "format": "compact",
        "mode": found.mode,
        "reranked": found.reranked,
        "lateInteraction": found.late,
        "query": query,
        "results": [compact_row(hit, record) for hit, record in found.pairs],
    }
    body["lessons"] = attach_lessons(ctx, query, args.get("project"), args["limit"]) if args["includeLessons"] else []
    return body
