"""Search tools: keyword recall over observations and memories (POST /search)."""

from __future__ import annotations

import json
from typing import Any

import search
from functions import agent_filter
from registry import AGENT_ID, PROJECT, SESSION_ID, Ctx, integer, params, string, tool
from util import estimate_tokens

FORMATS = ("full", "compact", "narrative")


def memory_as_observation(mem: dict[str, Any]) -> dict[str, Any]:
    """Upstream clients read search hits as observations; a memory is shown as one."""
    return {"id": mem["id"], "sessionId": (mem.get("sessionIds") or ["memory"])[0],
            "timestamp": mem.get("updatedAt"), "type": "decision", "title": mem.get("title", ""),
            "narrative": mem.get("content", ""), "concepts": mem.get("concepts", []),
            "files": mem.get("files", []), "importance": mem.get("strength", 7),
            "project": mem.get("project")}


def as_observation(hit: dict, record: dict) -> dict:
    return memory_as_observation(record) if hit["kind"] == "memory" else record


def search_filters(ctx: Ctx, args: dict[str, Any], kinds: list[str]) -> dict[str, Any]:
    filters: dict[str, Any] = {"kinds": kinds, "project": args.get("project"),
                               "agent_id": agent_filter(ctx, args.get("agentId"))}
    if args.get("cwd"):
        filters["session_ids"] = ctx.rt.db.reader().session_ids_with("cwd", args["cwd"])
    if args.get("sessionId"):
        filters["session_ids"] = [args["sessionId"]]
    return filters


def format_results(pairs: list[tuple[dict, dict]], fmt: str) -> list[dict[str, Any]]:
    results = []
    for hit, record in pairs:
        obs = as_observation(hit, record)
        score = round(hit.get("score", 0.0), 4)
        if fmt == "compact":
            results.append({"obsId": obs["id"], "sessionId": obs.get("sessionId"), "kind": hit["kind"],
                            "title": obs.get("title", ""), "type": obs.get("type"), "score": score,
                            "timestamp": obs.get("timestamp")})
        else:
            entry = {"kind": hit["kind"], "observation": obs, "score": score,
                     "sessionId": obs.get("sessionId")}
            if hit["kind"] == "memory":
                entry["memory"] = record
            results.append(entry)
    return results


def apply_budget(results: list[dict], budget: int | None) -> tuple[list[dict], int, bool]:
    """Keep results in rank order while their cumulative token estimate fits the budget."""
    used, kept = 0, []
    for item in results:
        cost = estimate_tokens(json.dumps(item, ensure_ascii=False))
        if budget is not None and used + cost > budget:
            return kept, used, True
        kept.append(item)
        used += cost
    return kept, used, False


@tool("memory_recall", params(
    ["query"],
    query=string("What to look for", max_length=4000),
    limit=integer("Maximum results", minimum=1, maximum=100, default=20),
    format=string("full records, compact rows or a narrative text", enum=FORMATS, default="full"),
    token_budget=integer("Stop adding results past this many tokens", minimum=1, maximum=1_000_000),
    project=PROJECT, cwd=string("Only sessions started in this directory", max_length=4096),
    sessionId=SESSION_ID, agentId=AGENT_ID,
), http=[("POST", "/search")], core=True)
def memory_recall(ctx: Ctx, args: dict) -> dict:
    """Keyword (BM25) search over observations and memories."""
    store = ctx.rt.db.reader()
    hits = search.bm25(store, args["query"], limit=args["limit"],
                       filters=search_filters(ctx, args, ["observation", "memory"]))
    fmt = args["format"]
    results, used, truncated = apply_budget(format_results(search.hydrate(store, hits), fmt),
                                            args.get("token_budget"))
    body: dict[str, Any] = {"format": fmt, "mode": "bm25", "query": args["query"], "results": results,
                            "count": len(results), "tokens_used": used,
                            "tokens_budget": args.get("token_budget"), "truncated": truncated}
    if fmt == "narrative":
        body["text"] = "\n\n".join(
            f"{i}. {r['observation'].get('title', '')}\n{r['observation'].get('narrative', '')}"
            for i, r in enumerate(results, 1)) or "No results."
    return body
