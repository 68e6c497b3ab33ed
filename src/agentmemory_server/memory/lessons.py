"""Lessons: short rules learned from experience, with confidence that grows and decays (U§4.5).

A lesson's id is a fingerprint of its normalised content (``lsn_`` + 16 hex of SHA-256), so
saving the same lesson again strengthens it (``+0.1 x (1 - confidence)``) instead of adding a
copy. A daily sweep lowers the confidence of lessons nobody reinforced (``decayRate`` per week)
and soft-deletes those that fall to 0.1 without ever having been reinforced. Lessons are indexed
for BM25 as kind ``lesson``; recall ranks them by relevance x confidence x recency.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from agentmemory_server import errors
from agentmemory_server.errors import InvalidInput, NotFound
from agentmemory_server.kernel.access import agent_filter, isolated, stamp_agent, visible_to
from agentmemory_server.kernel.hooks import Block, BlockRequest
from agentmemory_server.kernel.privacy import strip_private_data, strip_text
from agentmemory_server.kernel.registry import (
    AGENT_ID,
    PROJECT,
    Ctx,
    Reply,
    anything,
    array,
    boolean,
    integer,
    number,
    params,
    string,
    tool,
)
from agentmemory_server.kernel.scopes import LESSONS
from agentmemory_server.kernel.util import fingerprint_id, parse_time, truncate
from agentmemory_server.retrieval import lesson_ranking, search
from agentmemory_server.storage.interfaces import equal

DEFAULT_CONFIDENCE = 0.5
DECAY_RATE = 0.05
DECAY_FLOOR = 0.05
SOFT_DELETE_AT = 0.1
SOURCES = ("manual", "crystal", "consolidation")
CONTEXT_LESSONS = 10
CONTEXT_CANDIDATES = 500
DAY = 86_400.0


# -- the rules ----------------------------------------------------------------------------------------


def lesson_id(ctx: Ctx, content: str) -> str:
    """Fingerprint id. In isolated agent scope the agent is part of it, so two agents saving the
    same words keep two lessons and neither learns the other exists."""
    if isolated(ctx):
        return fingerprint_id("lsn", f"{agent_filter(ctx)}\x00{content}")
    return fingerprint_id("lsn", content)


def reinforce(lesson: dict[str, Any], now: str) -> None:
    confidence = float(lesson.get("confidence", DEFAULT_CONFIDENCE))
    lesson["confidence"] = round(min(1.0, confidence + 0.1 * (1.0 - confidence)), 4)
    lesson["reinforcements"] = int(lesson.get("reinforcements", 0)) + 1
    lesson["lastReinforcedAt"] = lesson["updatedAt"] = now


def decay(lesson: dict[str, Any], now_ts: float, now: str) -> bool:
    """Apply decay for every full week since the last decay/reinforcement; True if changed."""
    baseline = lesson.get("lastDecayedAt") or lesson.get("lastReinforcedAt") or lesson.get("createdAt")
    start = parse_time(baseline or "")
    if start is None:
        return False
    weeks = (now_ts - start.timestamp()) / (7 * DAY)
    if weeks < 1:
        return False
    rate = float(lesson.get("decayRate", DECAY_RATE))
    lesson["confidence"] = round(max(DECAY_FLOOR, float(lesson.get("confidence", 0)) - rate * weeks), 3)
    lesson["lastDecayedAt"] = lesson["updatedAt"] = now
    if lesson["confidence"] <= SOFT_DELETE_AT and int(lesson.get("reinforcements", 0)) == 0:
        lesson["deleted"] = True
    return True


def save_lesson(
    ctx: Ctx,
    *,
    content: str,
    context_text: str = "",
    confidence: float | None = None,
    project: str | None = None,
    tags: list[str] | None = None,
    source: str = "manual",
    source_ids: list[str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Create a lesson, or strengthen the existing one with the same content.

    :return: ("created" | "strengthened", lesson).
    :raise InvalidInput: blank content.
    """
    rt = ctx.rt
    content = strip_text(content).strip()
    if not content:
        raise InvalidInput("'content' must not be blank", field="content")
    agent = stamp_agent(ctx, None)
    lid, now = lesson_id(ctx, content), rt.clock.iso()
    context_text = strip_text(context_text or "").strip()
    tags = [t for t in strip_private_data(tags or []) if isinstance(t, str) and t.strip()]
    with rt.db.transaction("lesson_save", agent_id=agent) as tx:
        lesson = tx.records.get(LESSONS, lid)
        if lesson is not None and not lesson.get("deleted"):
            action = "strengthened"
            _strengthen(lesson, now, context_text=context_text, tags=tags, source_ids=source_ids or [])
        else:
            action = "created"
            lesson = _new_lesson(lid, now, content, context_text, confidence, source, source_ids or [], tags)
            lesson.update(_owner_fields(project, agent))
        tx.records.set(LESSONS, lid, lesson, now=now)
        search.index_record(tx, "lesson", lesson)
        tx.audit_message = f"lesson {action}: {lid}"
        tx.after_commit(lambda: rt.publish("lesson", lesson))
    return action, lesson


def _new_lesson(
    lid: str,
    now: str,
    content: str,
    context_text: str,
    confidence: float | None,
    source: str,
    source_ids: list[str],
    tags: list[str],
) -> dict[str, Any]:
    """A lesson as first saved (its owner's fields follow): not yet reinforced, at the default
    confidence unless one is given."""
    return {
        "id": lid,
        "content": content,
        "context": context_text,
        "confidence": DEFAULT_CONFIDENCE if confidence is None else confidence,
        "reinforcements": 0,
        "source": source,
        "sourceIds": list(source_ids),
        "tags": tags,
        "createdAt": now,
        "updatedAt": now,
        "decayRate": DECAY_RATE,
    }


def _strengthen(lesson: dict[str, Any], now: str, *, context_text: str, tags: list[str], source_ids: list[str]) -> None:
    """The same lesson learned again: more confidence, and what the new saving adds to it."""
    reinforce(lesson, now)
    if context_text and not lesson.get("context"):
        lesson["context"] = context_text
    lesson["tags"] = list(dict.fromkeys((lesson.get("tags") or []) + tags))
    lesson["sourceIds"] = list(dict.fromkeys((lesson.get("sourceIds") or []) + source_ids))


def _owner_fields(project: str | None, agent: str | None) -> dict[str, str]:
    """A new lesson's project and agent, each only when it has one."""
    fields = {"project": (project or "").strip() or None, "agentId": agent}
    return {key: value for key, value in fields.items() if value}


def _live_lesson(ctx: Ctx, tx, lesson_id_: str) -> dict[str, Any]:
    lesson = tx.records.get(LESSONS, lesson_id_)
    if lesson is None or lesson.get("deleted") or not visible_to(ctx, lesson):
        raise NotFound(f"lesson {lesson_id_!r} not found", code=errors.LESSON_NOT_FOUND)
    return lesson


def visible_lessons(ctx: Ctx, store, requested_agent: str | None = None) -> list[dict[str, Any]]:
    agent = agent_filter(ctx, requested_agent)
    return [v for _k, v in store.records.list(LESSONS) if agent is None or v.get("agentId") == agent]


def sweep_decay(ctx: Ctx, *, dry_run: bool = False) -> dict[str, Any]:
    """Decay every live lesson of this agent scope; soft-delete the ones that faded out."""
    rt = ctx.rt
    now_ts, now = rt.clock.time(), rt.clock.iso()
    changed: list[dict[str, Any]] = []
    with rt.db.transaction("lesson_decay", agent_id=rt.settings.agent_id) as tx:
        # The daily run: only while this worker still holds its claim. The decay is computed from
        # each lesson's lastDecayedAt, so a second sweep finds nothing due anyway; the fence keeps
        # a worker that lost its claim from writing (and auditing) a sweep over the other's.
        rt.jobs.fence(tx)
        for lesson in visible_lessons(ctx, tx):
            if lesson.get("deleted") or not decay(lesson, now_ts, now):
                continue
            changed.append(lesson)
            if not dry_run:
                tx.records.set(LESSONS, lesson["id"], lesson, now=now)
                search.index_record(tx, "lesson", lesson)
                tx.after_commit(lambda x=lesson: rt.publish("lesson", x))
        tx.audit_details = {"decayed": [x["id"] for x in changed][:100]}
    deleted = [x["id"] for x in changed if x.get("deleted")]
    return {
        "success": True,
        "dryRun": dry_run,
        "decayed": len(changed),
        "softDeleted": len(deleted),
        "lessons": [{"id": x["id"], "confidence": x["confidence"], "deleted": bool(x.get("deleted"))} for x in changed],
    }


# -- tools ---------------------------------------------------------------------------------------------

_TAGS = array(string(max_length=200), "Tags (array or comma-separated)", max_items=50)
_CONFIDENCE = anything("Starting confidence 0-1 (anything else, as upstream: 0.5)")


def starting_confidence(value: Any) -> float | None:
    """upstream's rule (U§4.5): a number within [0, 1] is kept, anything else means the default."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


@tool(
    "memory_lesson_save",
    params(
        ["content"],
        content=string("The lesson, one rule in plain words", max_length=10_000),
        context=string("When or why it applies", min_length=0, max_length=10_000),
        confidence=_CONFIDENCE,
        project=string("Project name (trimmed; blank means none)", max_length=512, min_length=None),
        tags=_TAGS,
        source=string("Where it came from", enum=SOURCES, default="manual"),
        sourceIds=array(string(max_length=256), "Records it was learned from", max_items=200),
    ),
    http=[("POST", "/lessons", 201)],
    core=True,
)
def memory_lesson_save(ctx: Ctx, args: dict) -> Reply:
    """Save a lesson; saving the same lesson again strengthens it (201 created, 200 strengthened)."""
    action, lesson = save_lesson(
        ctx,
        content=args["content"],
        context_text=args.get("context", ""),
        confidence=starting_confidence(args.get("confidence")),
        project=(args.get("project") or "").strip() or None,
        tags=args.get("tags"),
        source=args["source"],
        source_ids=args.get("sourceIds"),
    )
    return Reply({"success": True, "action": action, "lesson": lesson}, 201 if action == "created" else 200)


@tool(
    "memory_lessons",
    params(
        project=PROJECT,
        source=string("Only this source", enum=SOURCES),
        minConfidence=number("Lowest confidence", minimum=0, maximum=1, default=0),
        includeDeleted=boolean("Include soft-deleted lessons", default=False),
        limit=integer("Maximum lessons", minimum=1, maximum=1000, default=50),
        agentId=AGENT_ID,
    ),
    http=[("GET", "/lessons")],
)
def memory_lessons(ctx: Ctx, args: dict) -> dict:
    """List lessons, most confident first (filters: project, source, minConfidence)."""
    lessons = [
        x
        for x in visible_lessons(ctx, ctx.rt.db.reader(), args.get("agentId"))
        if (args["includeDeleted"] or not x.get("deleted"))
        and float(x.get("confidence", 0)) >= args["minConfidence"]
        and (args.get("project") is None or x.get("project") == args["project"])
        and (args.get("source") is None or x.get("source") == args["source"])
    ]
    lessons.sort(key=lambda x: (-float(x.get("confidence", 0)), x["id"]))
    return {"success": True, "lessons": lessons[: args["limit"]], "total": len(lessons)}


_RECALL = {
    "query": string("What the lessons should be about", max_length=4000),
    "project": PROJECT,
    "minConfidence": number("Lowest confidence", minimum=0, maximum=1, default=0.1),
    "limit": integer("Maximum lessons", minimum=1, maximum=100, default=10),
    "agentId": AGENT_ID,
}


@tool("memory_lesson_recall", params(["query"], **_RECALL), http=[("POST", "/lessons/recall")], right="read")
def memory_lesson_recall(ctx: Ctx, args: dict) -> dict:
    """Lessons relevant to a query, ranked by relevance x confidence x recency (each with a score)."""
    return {"success": True, "lessons": lesson_ranking.rank_lessons(ctx, args)}


@tool(
    "memory_lesson_search",
    params(
        ["query"],
        **_RECALL,
        source=string("Only this source", enum=SOURCES),
        tags=_TAGS,
    ),
    http=[("POST", "/lessons/search")],
    right="read",
)
def memory_lesson_search(ctx: Ctx, args: dict) -> dict:
    """Search lessons by text, optionally only one source or tags; ranked like memory_lesson_recall."""
    return {"success": True, "lessons": lesson_ranking.rank_lessons(ctx, args)}


_LESSON_ID = params(["lessonId"], lessonId=string("Lesson id", max_length=128))


@tool("lesson_strengthen", _LESSON_ID, http=[("POST", "/lessons/strengthen")], mcp=False)
def lesson_strengthen(ctx: Ctx, args: dict) -> dict:
    """Reinforce a lesson by id (confidence += 0.1 x (1 - confidence))."""
    rt, now = ctx.rt, ctx.rt.clock.iso()
    with rt.db.transaction("lesson_strengthen", agent_id=rt.settings.agent_id) as tx:
        lesson = _live_lesson(ctx, tx, args["lessonId"])
        reinforce(lesson, now)
        tx.records.set(LESSONS, lesson["id"], lesson, now=now)
        search.index_record(tx, "lesson", lesson)
    rt.publish("lesson", lesson)
    return {"success": True, "lesson": lesson}


@tool("lesson_delete", _LESSON_ID, http=[("POST", "/lessons/delete")], mcp=False)
def lesson_delete(ctx: Ctx, args: dict) -> dict:
    """Soft-delete a lesson (404 when it is missing or already deleted)."""
    rt, now = ctx.rt, ctx.rt.clock.iso()
    with rt.db.transaction("lesson_delete", agent_id=rt.settings.agent_id) as tx:
        lesson = _live_lesson(ctx, tx, args["lessonId"])
        lesson.update(deleted=True, updatedAt=now)
        tx.records.set(LESSONS, lesson["id"], lesson, now=now)
        search.index_record(tx, "lesson", lesson)
    rt.publish("lesson", lesson)
    return {"success": True, "lesson": lesson}


@tool(
    "lesson_decay",
    params(dryRun=boolean("Report without changing anything", default=False)),
    http=[("POST", "/lessons/decay")],
    mcp=False,
    answers_with_records=False,
    right="admin",
)
def lesson_decay(ctx: Ctx, args: dict) -> dict:
    """Run the lesson decay sweep now (it also runs daily)."""
    return sweep_decay(ctx, dry_run=args["dryRun"])


# -- context block ----------------------------------------------------------------------------------


def _context_candidates(req: BlockRequest) -> list[dict[str, Any]]:
    """The most confident lessons overall and the project's own, read through the confidence
    index: a bounded set however many lessons there are (a global lesson can be missed only
    when more than CONTEXT_CANDIDATES lessons of other projects are more confident)."""
    store = req.ctx.rt.db.reader()
    by_confidence = [("confidence", True)]
    agent = equal(agentId=req.agent_id)
    found = store.records.query(LESSONS, agent, order_by=by_confidence, limit=CONTEXT_CANDIDATES)
    if req.project:
        own = equal(agentId=req.agent_id, project=req.project)
        found += store.records.query(LESSONS, own, order_by=by_confidence, limit=CONTEXT_LESSONS * 5)
    unique = {x["id"]: x for x in found if isinstance(x, dict) and "id" in x}
    return [x for x in unique.values() if not x.get("deleted") and x.get("project") in (None, req.project)]


def lessons_block(req: BlockRequest) -> list[Block]:
    """Top lessons for the project: global ones and the project's own (ranked x1.5)."""
    lessons = _context_candidates(req)
    if not lessons:
        return []

    def rank(lesson: dict) -> float:
        boost = 1.5 if req.project and lesson.get("project") == req.project else 1.0
        return float(lesson.get("confidence", 0)) * boost

    top = sorted(lessons, key=lambda x: (-rank(x), x["id"]))[:CONTEXT_LESSONS]
    lines = ["## Lessons Learned"]
    for x in top:
        tail = f" — {escape(truncate(x['context'], 200))}" if x.get("context") else ""
        lines.append(f"- ({float(x.get('confidence', 0)):.2f}) {escape(truncate(x['content'], 300))}{tail}")
    recency = max(x.get("lastReinforcedAt") or x.get("updatedAt") or "" for x in top)
    return [Block("lessons", "\n".join(lines), recency, [x["id"] for x in top])]


# -- subsystem: the decay timer and sanity checks -------------------------------------------------------


class LessonService:
    def __init__(self, rt: Any):
        self.rt = rt
        if rt.settings.lesson_decay_enabled:
            rt.every(DAY, "lesson_decay", self.run_decay)

    def run_decay(self) -> dict[str, Any]:
        return sweep_decay(Ctx(self.rt, source="job"))

    def _out_of_range(self) -> list[dict[str, Any]]:
        return [
            v
            for _k, v in self.rt.db.reader().records.list(LESSONS)
            if not 0.0 <= float(v.get("confidence", 0) or 0) <= 1.0
        ]

    def diagnose(self) -> list[dict[str, Any]]:
        bad = self._out_of_range()
        ok = not bad
        return [
            {
                "name": "lesson_confidence",
                "category": "lessons",
                "status": "pass" if ok else "fail",
                "message": "every lesson confidence is within 0-1"
                if ok
                else f"{len(bad)} lesson(s) have a confidence outside 0-1: {', '.join(b['id'] for b in bad[:5])}",
                "fix": "" if ok else "heal clamps the confidences into 0-1",
                "fixable": not ok,
            }
        ]

    def heal(self, dry_run: bool) -> list[dict[str, Any]]:
        bad = self._out_of_range()
        if bad and not dry_run:
            now = self.rt.clock.iso()
            with self.rt.db.transaction("heal_lessons", agent_id=self.rt.settings.agent_id) as tx:
                for lesson in bad:
                    lesson["confidence"] = min(1.0, max(0.0, float(lesson.get("confidence") or 0)))
                    tx.records.set(LESSONS, lesson["id"], lesson, now=now)
                    search.index_record(tx, "lesson", lesson)
                    tx.after_commit(lambda x=lesson: self.rt.publish("lesson", x))
        return (
            [
                {
                    "name": "lesson_confidence",
                    "category": "lessons",
                    "fixed": 0 if dry_run else len(bad),
                    "wouldFix": len(bad),
                }
            ]
            if bad
            else []
        )
