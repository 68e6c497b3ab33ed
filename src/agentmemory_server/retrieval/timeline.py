"""Reading memory by time and by file: the timeline around an anchor, past observations about
files (POST /file-context) and the PreToolUse enrichment (POST /enrich)."""

from __future__ import annotations

import posixpath
from typing import Any

from agentmemory_server.errors import InvalidInput
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, SESSION_ID, Ctx, array, integer, params, string, tool
from agentmemory_server.kernel.util import estimate_tokens, iso, parse_time, truncate
from agentmemory_server.kernel.wording import restates
from agentmemory_server.retrieval import search
from agentmemory_server.retrieval.recall import listed, ranked, search_filters

MAX_ROWID = 2**62


# -- timeline ----------------------------------------------------------------------------------------


def _anchor(ctx: Ctx, args: dict[str, Any], filters: dict[str, Any]) -> tuple[str, int] | None:
    """(ts, rowid) of the anchor: a timestamp as given, or the best match for a keyword."""
    when = parse_time(args["anchor"])
    if when is not None:
        return iso(when), MAX_ROWID
    pairs = ranked(ctx, args["anchor"], limit=1, filters=filters, mode="auto", rerank_top=False).pairs
    if not pairs:
        return None
    hit = pairs[0][0]
    return hit["ts"], hit["rowid"]


@tool(
    "memory_timeline",
    params(
        ["anchor"],
        anchor=string(
            "An ISO date/time, or words describing the moment (its best match is the anchor)", max_length=500
        ),
        project=PROJECT,
        agentId=AGENT_ID,
        sessionId=SESSION_ID,
        before=integer("Observations before the anchor", minimum=0, maximum=100, default=5),
        after=integer("Observations after the anchor", minimum=0, maximum=100, default=5),
    ),
    http=[("POST", "/timeline")],
    right="read",
)
def memory_timeline(ctx: Ctx, args: dict) -> dict:
    """Observations around an anchor (a time, or the best match for some words), in time order."""
    filters = search_filters(ctx, args, ["observation"])
    anchor = _anchor(ctx, args, filters)
    if anchor is None:
        return {"entries": [], "anchorIndex": None, "reason": "no_match"}
    store = ctx.rt.db.reader()
    docs = store.index.around(anchor[0], rowid=anchor[1], before=args["before"], after=args["after"], filters=filters)
    if not docs:
        return {"entries": [], "anchorIndex": None, "reason": "no_observations"}
    at_or_before = [i for i, d in enumerate(docs) if (d["ts"], d["rowid"]) <= anchor]
    anchor_index = at_or_before[-1] if at_or_before else 0
    position = {d["doc_id"]: i for i, d in enumerate(docs)}
    entries = [
        {
            "observation": listed(record),
            "sessionId": hit["session_id"],
            "relativePosition": position[hit["doc_id"]] - anchor_index,
        }
        for hit, record in search.hydrate(store, docs)
    ]
    return {"entries": entries, "anchorIndex": anchor_index, "anchor": {"ts": anchor[0]}}


# -- past observations about files ---------------------------------------------------------------------


def file_phrases(files: list[str]) -> list[list[str]]:
    """Each path and its base name as a phrase of word tokens (a path stored absolute still
    matches a relative one through its base name): what the tokenizer made of stored paths."""
    phrases: list[tuple[str, ...]] = []
    for path in files:
        for candidate in (path, posixpath.basename(path.rstrip("/"))):
            words = tuple(w for w in search.WORDS.findall(candidate.lower()) if w.strip("_"))
            if words:
                phrases.append(words[:32])
    return [list(p) for p in list(dict.fromkeys(phrases))[:40]]


def file_hits(ctx: Ctx, args: dict[str, Any], *, limit: int, types: list[str] | None = None) -> list:
    phrases = file_phrases(args.get("files") or [])
    if not phrases:
        return []
    filters = search_filters(ctx, {k: v for k, v in args.items() if k != "sessionId"}, ["observation"])
    if args.get("sessionId"):
        filters["exclude_session"] = args["sessionId"]
    if types:
        filters["types"] = types
    store = ctx.rt.db.reader()
    hits = store.index.lexical_files(phrases, weights=search.BM25_WEIGHTS, limit=limit, filters=filters)
    return search.hydrate(store, hits)


def observation_line(obs: dict[str, Any], width: int = 160) -> str:
    when = (obs.get("timestamp") or "")[:10]
    title, narrative = str(obs.get("title", "")), " ".join((obs.get("narrative") or "").split())
    says_more = narrative and narrative not in title and not restates(title, narrative)
    tail = f": {truncate(narrative, width)}" if says_more else ""
    return (
        f"- [{obs.get('type', 'other')}] {obs.get('title', '')} ({when}, session {str(obs.get('sessionId'))[:8]}){tail}"
    )


# A file is often read several times in a session with the same content, and each read is its own
# observation with the same line. The hits are read this many times deeper than the lines wanted,
# so that repeats give way to other lines instead of filling the agent's context with copies.
REPEAT_HEADROOM = 4


def file_lines(ctx: Ctx, args: dict[str, Any], limit: int, types: list[str] | None = None) -> list[str]:
    """Up to ``limit`` distinct observation lines about ``args``'s files, best first."""
    found = file_hits(ctx, args, limit=limit * REPEAT_HEADROOM, types=types)
    return list(dict.fromkeys(observation_line(record) for _hit, record in found))[:limit]


def fit(sections: list[tuple[str, list[str]]], budget: int) -> tuple[str, bool]:
    """Markdown sections packed line by line under a token budget; True when lines were cut."""
    out: list[str] = []
    truncated = False
    for heading, lines in sections:
        if not lines:
            continue
        block = [heading]
        for line in lines:
            if estimate_tokens("\n".join(out + block + [line])) > budget:
                truncated = True
                break
            block.append(line)
        if len(block) > 1:
            out.extend(block + [""])
    return "\n".join(out).strip(), truncated


FILES_ARG = array(string(max_length=1024), "File paths", max_items=50)


@tool(
    "file_context",
    params(
        ["files"],
        files=FILES_ARG,
        sessionId=string("Current session (excluded)", max_length=256),
        project=PROJECT,
        agentId=AGENT_ID,
        limit=integer("Maximum observations", minimum=1, maximum=50, default=10),
        budget=integer("Token budget of the text", minimum=1, maximum=20_000, default=600),
    ),
    http=[("POST", "/file-context")],
    mcp=False,
    right="read",
)
def file_context(ctx: Ctx, args: dict) -> dict:
    """Past observations about some files (other sessions), as a short text."""
    lines = file_lines(ctx, args, args["limit"])
    names = ", ".join(posixpath.basename(f) for f in args["files"][:5])
    text, truncated = fit([(f"## Past observations about {names}", lines)], args["budget"])
    return {"context": text, "count": len(lines), "truncated": truncated}


@tool(
    "enrich",
    params(
        files=FILES_ARG,
        terms=array(string(max_length=500), "Search terms (e.g. a grep pattern)", max_items=20),
        sessionId=string("Current session (excluded)", max_length=256),
        toolName=string("Tool about to run; accepted from upstream clients, not used", max_length=200),
        project=PROJECT,
        agentId=AGENT_ID,
        budget=integer("Token budget of the text", minimum=1, maximum=20_000, default=800),
    ),
    http=[("POST", "/enrich")],
    mcp=False,
)
def enrich(ctx: Ctx, args: dict) -> dict:
    """Context for a tool call about to run (the PreToolUse hook): file history, memories, past errors."""
    files, terms = args.get("files") or [], args.get("terms") or []
    if not files and not terms:
        raise InvalidInput("give 'files' or 'terms'", field="files")
    history = file_lines(ctx, args, 5)
    errors = file_lines(ctx, args, 3, types=["error"])
    query = " ".join(terms + [posixpath.basename(f) for f in files])
    memories = []
    if search.query_terms(query):
        filters = search_filters(ctx, {k: v for k, v in args.items() if k != "sessionId"}, ["memory"])
        pairs = ranked(ctx, query, limit=5, filters=filters, mode="auto", rerank_top=False).pairs
        for _hit, record in pairs:
            memories.append(
                f"- {record.get('title', '')}: {truncate(' '.join(record.get('content', '').split()), 200)}"
            )
    text, truncated = fit(
        [("## Past work on these files", history), ("## Related memories", memories), ("## Past errors", errors)],
        args["budget"],
    )
    return {"context": text, "truncated": truncated}
