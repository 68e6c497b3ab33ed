"""The context block handed to the next session, packed under a token budget (U§4.6).

Blocks come from the providers in ``rt.hooks.context_blocks`` (wiring.py lists them): pinned
slots, the records the session's first prompt finds (ranked as smart-search ranks them), the
project profile, lessons and past sessions each contribute blocks with a recency. Blocks are sorted by
recency (pinned first) and added greedily: a block that does not fit is skipped, not a stop, so
a big old block never hides a small recent one. Tokens are estimated as ceil(chars / 3).
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from agentmemory_server.kernel import listings
from agentmemory_server.kernel.access import agent_filter, visible_to
from agentmemory_server.kernel.hooks import Block, BlockRequest
from agentmemory_server.kernel.registry import AGENT_ID, PROJECT, SESSION_ID, Ctx, integer, params, tool
from agentmemory_server.kernel.scopes import SESSIONS, SUMMARIES
from agentmemory_server.kernel.util import estimate_tokens, truncate
from agentmemory_server.kernel.wording import one_line, paths_seen_from
from agentmemory_server.retrieval import recall


def pack(blocks: list[Block], budget: int, project: str | None) -> dict[str, Any]:
    opening = f"<agentmemory-context project={quoteattr(project or '')}>"
    closing = "</agentmemory-context>"
    remaining = budget - estimate_tokens(opening + "\n\n" + closing)
    chosen: list[Block] = []
    for block in sorted(blocks, key=lambda b: b.recency, reverse=True):
        cost = estimate_tokens(block.text + "\n\n")
        if cost <= remaining:
            chosen.append(block)
            remaining -= cost
    if not chosen:
        return {"context": "", "blocks": 0, "tokens": 0, "budget": budget, "kinds": [], "skipped": len(blocks)}
    text = opening + "\n" + "\n\n".join(b.text for b in chosen) + "\n" + closing
    return {
        "context": text,
        "blocks": len(chosen),
        "tokens": estimate_tokens(text),
        "budget": budget,
        "kinds": [b.kind for b in chosen],
        "skipped": len(blocks) - len(chosen),
    }


def compile_context(
    ctx: Ctx, *, session_id: str | None, project: str | None, budget: int, agent_id: str | None = None
) -> dict[str, Any]:
    request = BlockRequest(ctx, session_id, project, agent_filter(ctx, agent_id))
    blocks: list[Block] = []
    for _name, provider in ctx.rt.hooks.context_blocks:
        blocks.extend(provider(request))
    return pack(blocks, budget, project)


@tool(
    "context",
    params(
        ["sessionId"],
        sessionId=SESSION_ID,
        project=PROJECT,
        budget=integer("Token budget (default TOKEN_BUDGET)", minimum=1, maximum=100_000),
        agentId=AGENT_ID,
    ),
    http=[("POST", "/context")],
    mcp=False,
    right="read",
)
def context_tool(ctx: Ctx, args: dict) -> dict:
    """Compile the context block for a session: pinned slots, observations relevant to its first
    prompt, saved memories, profile, lessons, past sessions."""
    project = args.get("project")
    if project is None:
        session = ctx.rt.db.reader().records.get(SESSIONS, args["sessionId"])
        # Another agent's session (isolated scope) must not even lend its project name.
        project = session.get("project") if visible_to(ctx, session, args.get("agentId")) else None
    return compile_context(
        ctx,
        session_id=args["sessionId"],
        project=project,
        budget=args.get("budget") or ctx.rt.settings.token_budget,
        agent_id=args.get("agentId"),
    )


# -- the past-sessions provider ------------------------------------------------------------------

PAST_SESSIONS = 10
SCAN_SESSIONS = 3 * PAST_SESSIONS
OBS_PER_SESSION = 5


def _summary_block(summary: dict[str, Any], cwd: str | None = None) -> str:
    """A past session's summary; its files named from the session's working directory."""
    lines = [f"## {escape(summary.get('title') or 'Session summary')}"]
    if summary.get("narrative"):
        lines.append(escape(summary["narrative"]))
    if summary.get("keyDecisions"):
        lines.append("Decisions: " + "; ".join(escape(d) for d in summary["keyDecisions"]))
    if summary.get("filesModified"):
        lines.append("Files: " + ", ".join(escape(paths_seen_from(cwd, f)) for f in summary["filesModified"]))
    return "\n".join(lines)


def past_sessions(req: BlockRequest) -> list[Block]:
    if not req.project:
        return []
    store = req.ctx.rt.db.reader()
    # Sessions that left nothing (a start and a /clear) are passed over, so a burst of them does
    # not push the last real work out of the window.
    sessions, _ = listings.sessions_page(
        store, project=req.project, agent_id=req.agent_id, status=None, limit=SCAN_SESSIONS + 1, offset=0
    )
    sessions = [s for s in sessions if s["id"] != req.session_id][:SCAN_SESSIONS]
    summaries = store.records.get_many(SUMMARIES, [s["id"] for s in sessions])
    blocks: list[Block] = []
    for session in sessions:
        if len(blocks) >= PAST_SESSIONS:
            break
        summary = summaries.get(session["id"])
        if summary:
            text = _summary_block(summary, session.get("cwd"))
            if any(block.text == text for block in blocks):
                continue  # a session that went exactly as a later one (a nightly run) is told once
            blocks.append(Block("summary", text, summary.get("createdAt") or session["startedAt"], [session["id"]]))
            continue
        top = listings.top_observations(store, session["id"], min_importance=5, limit=OBS_PER_SESSION)
        top = [o for o in top if o.get("title") and (req.agent_id is None or o.get("agentId") == req.agent_id)]
        if not top:
            continue
        lines = [f"## Session {escape(session['id'][:8])} ({session['startedAt']})"]
        for o in top:
            line = paths_seen_from(session.get("cwd"), one_line(o["title"], truncate(o.get("narrative") or "", 200)))
            lines.append(f"- [{o.get('type', 'other')}] {escape(line)}")
        blocks.append(Block("observations", "\n".join(lines), session["startedAt"], [o["id"] for o in top]))
    return blocks


# -- the relevant-records provider -------------------------------------------------------------------

# How many records the session's first prompt brings in, and how much of each is shown. Ten, as
# a search's first page; a record's first 240 characters say what it is about.
RELEVANT_RECORDS = 10
RELEVANT_CHARS = 240
# Relevant records come right after pinned slots, best first, ahead of every dated block: what
# the session asked about matters more than what happened last. Recency strings between the
# latest possible timestamp and PINNED keep that order inside ``pack``.
_RELEVANT_RECENCY = "9999-12-31T23:59:59.{:03d}Z"


def relevant_records(req: BlockRequest) -> list[Block]:
    """The records the session's first prompt finds, ranked as smart-search ranks them (hybrid,
    reranked when AGENTMEMORY_SEARCH_RERANK is on), the session's own records left out. Each
    record is its own block, so the budget keeps as many of the best as fit. Observations only:
    saved memories have their own block (memory/memories.py), and showing one twice wastes budget."""
    if not req.project or not req.session_id:
        return []
    session = req.ctx.rt.db.reader().records.get(SESSIONS, req.session_id) or {}
    prompt = str(session.get("firstPrompt") or "").strip()
    if not prompt:
        return []
    filters = {"kinds": ["observation"], "project": req.project, "agent_id": req.agent_id}
    pairs = recall.ranked(req.ctx, prompt, limit=RELEVANT_RECORDS + 5, filters=filters, mode="auto").pairs
    pairs = [(hit, record) for hit, record in pairs if hit.get("session_id") != req.session_id][:RELEVANT_RECORDS]
    if not pairs:
        return []
    blocks = [Block("relevant", "## Relevant to this session's first prompt", _RELEVANT_RECENCY.format(998), [])]
    said: set[str] = set()
    for rank, (hit, record) in enumerate(pairs):
        obs = recall.as_observation(hit, record)
        body = paths_seen_from(obs.get("cwd"), " ".join(str(obs.get("narrative") or obs.get("title") or "").split()))
        day = str(obs.get("timestamp") or "")[:10]
        text = escape(truncate(body, RELEVANT_CHARS))
        if text in said:  # the same failure in three sessions: once, on the best-ranked day
            continue
        said.add(text)
        line = f"- ({escape(day)}) {text}" if day else f"- {text}"
        blocks.append(Block("relevant", line, _RELEVANT_RECENCY.format(997 - rank), [hit["doc_id"]]))
    return blocks
