"""Retrieval: what goes into the search index and how a query becomes ranked records
(BM25 here; vectors in ``vectors.py``; both fused here on normalised scores, or by reciprocal
rank when ``SEARCH_FUSION=rrf``).

BM25 runs on the storage's lexical index (``SearchIndex.lexical``). Records are indexed in the
same transaction that stores them, so the index is persistent, incremental and never rebuilt at
start-up. A query is tokenised and stripped of stop and question words here; the index ORs the
terms (the stop words are stopwords.py's).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from agentmemory_server.errors import AppError
from agentmemory_server.kernel.access import visible_to
from agentmemory_server.kernel.registry import Ctx
from agentmemory_server.kernel.scopes import LESSONS, MEMORIES, is_obs_scope, obs_scope
from agentmemory_server.kernel.search_fields import TEXT_WEIGHTS
from agentmemory_server.retrieval import dates
from agentmemory_server.retrieval.stopwords import STOPWORDS
from agentmemory_server.storage.interfaces import UnitOfWork

# Field weights of BM25, in the index's column order (kernel/search_fields.py says why).
BM25_WEIGHTS = tuple(TEXT_WEIGHTS.values())
# The context is the bodies of the records just before, nearest first, each clipped. Two, not
# one: a reply often comes two records after the words that name its topic (a statement, a
# question about it, then the answer; a prompt, a tool call, then its result). Measured on
# LoCoMo (bench/locomo.py): +2.7 points BM25 Recall@10 over one record.
CONTEXT_RECORDS = 2
CONTEXT_RECORD_CHARS = 200

WORDS = re.compile(r"\w+", re.UNICODE)

# A query longer than this many distinct terms keeps its first ones: bounds the cost of pasted
# logs used as queries (each OR-ed term is one posting-list scan).
MAX_QUERY_TERMS = 48


def query_terms(query: str) -> list[str]:
    """Lower-cased distinct word tokens without stop words (all tokens if every one is a stop
    word, so "who is he" still searches something)."""
    words = [w.lower() for w in WORDS.findall(query or "")]
    words = [w for w in words if w.strip("_")]
    kept = [w for w in words if w not in STOPWORDS]
    return list(dict.fromkeys(kept or words))[:MAX_QUERY_TERMS]


# -- what gets indexed ---------------------------------------------------------------------------


def _join(values: Any) -> str:
    if not values:
        return ""
    if isinstance(values, str):
        return values
    return " ".join(str(v) for v in values if v)


# Hooks that mark a session's course (it started, a turn or the session ended, the context was
# compacted) rather than work done in it. Summaries and patterns do not count them, and their
# search rows get no session context: a session end does not answer a query about the lint
# failure before it.
LIFECYCLE_HOOKS = frozenset({"session_start", "session_end", "stop", "pre_compact", "post_compact"})


def observation_doc(obs: dict[str, Any]) -> tuple[dict, dict]:
    doc = {
        "doc_id": obs["id"],
        "kind": "observation",
        "scope": obs_scope(obs["sessionId"]),
        "key": obs["id"],
        "session_id": obs.get("sessionId"),
        "project": obs.get("project"),
        "agent_id": obs.get("agentId"),
        "type": obs.get("type"),
        "ts": obs.get("timestamp") or "",
    }
    body = " ".join(p for p in (obs.get("narrative", ""), obs.get("subtitle", ""), _join(obs.get("facts"))) if p)
    text = {
        "title": distinct_title(obs.get("title", ""), body),
        "body": body,
        "concepts": _join(obs.get("concepts")),
        "files": _join(obs.get("files")),
    }
    if obs.get("hookType") in LIFECYCLE_HOOKS:
        text["context"] = ""  # its own words only (see LIFECYCLE_HOOKS)
    return doc, text


def distinct_title(title: str, body: str) -> str:
    """The title, unless it only repeats the start of the body (agent notes and prompts are
    titled by their own first words): counting those words again at title weight would rank
    records by how they begin rather than by what they say."""
    head = (title or "").rstrip("…").strip()
    return "" if head and " ".join(body.split()).startswith(" ".join(head.split())) else title


def memory_doc(mem: dict[str, Any]) -> tuple[dict, dict]:
    doc = {
        "doc_id": mem["id"],
        "kind": "memory",
        "scope": MEMORIES,
        "key": mem["id"],
        "session_id": (mem.get("sessionIds") or [None])[0],
        "project": mem.get("project"),
        "agent_id": mem.get("agentId"),
        "type": mem.get("type"),
        "ts": mem.get("updatedAt") or mem.get("createdAt") or "",
        "active": mem.get("isLatest", True),
    }
    text = {
        "title": mem.get("title", ""),
        "body": mem.get("content", ""),
        "concepts": _join(mem.get("concepts")),
        "files": _join(mem.get("files")),
    }
    return doc, text


def lesson_doc(lesson: dict[str, Any]) -> tuple[dict, dict]:
    doc = {
        "doc_id": lesson["id"],
        "kind": "lesson",
        "scope": LESSONS,
        "key": lesson["id"],
        "session_id": None,
        "project": lesson.get("project"),
        "agent_id": lesson.get("agentId"),
        "type": lesson.get("source"),
        "ts": lesson.get("updatedAt") or lesson.get("createdAt") or "",
        "active": not lesson.get("deleted"),
    }
    text = {
        "title": lesson.get("content", ""),
        "body": lesson.get("context", ""),
        "concepts": " ".join(lesson.get("tags") or []),
        "files": "",
    }
    return doc, text


# Every searchable kind of record: how its search document is built. A new kind becomes
# searchable by adding its builder here and its scope to INDEXED_SCOPES.
DOC_BUILDERS: dict[str, Callable[[dict], tuple[dict, dict]]] = {
    "observation": observation_doc,
    "memory": memory_doc,
    "lesson": lesson_doc,
}

# Scopes whose records are indexed, besides every observation scope.
INDEXED_SCOPES: dict[str, str] = {MEMORIES: "memory", LESSONS: "lesson"}


def kind_for_scope(scope: str) -> str | None:
    if is_obs_scope(scope):
        return "observation"
    return INDEXED_SCOPES.get(scope)


def _search_row(kind: str, record: dict[str, Any]) -> tuple[dict, dict]:
    doc, text = DOC_BUILDERS[kind](record)
    # Memories and lessons saved without a project are global: every project's searches see them.
    doc["global"] = doc.get("project") is None and kind != "observation"
    return doc, text


def _needs_context(kind: str, doc: dict, text: dict) -> bool:
    return kind == "observation" and bool(doc.get("session_id")) and "context" not in text


def _context(bodies: list[str]) -> str:
    """The text of the records just before one in its session (nearest first)."""
    return " | ".join(body[:CONTEXT_RECORD_CHARS] for body in bodies if body)


def _image_ids(record: dict[str, Any]) -> list[str]:
    return [i["id"] for i in record.get("images") or [] if isinstance(i, dict) and "id" in i]


def index_record(store: UnitOfWork, kind: str, record: dict[str, Any]) -> int:
    doc, text = _search_row(kind, record)
    if _needs_context(kind, doc, text):
        before = store.index.text_before(doc["session_id"], doc["ts"], doc["doc_id"], CONTEXT_RECORDS)
        text["context"] = _context(before)
    rowid = store.index.upsert(doc, text)
    # The images a record references are held through its search row (released with it).
    store.images.link(rowid, _image_ids(record))
    return rowid


class _BatchIndexer:
    """``index_record`` over many records in order with the same rows, in a few statements:
    an observation's context comes from the records before it in the batch when its session
    has no search row yet and the batch holds that session's records in time order (a fresh
    import, a migration); anything else (a session already indexed, a record out of order or
    repeated) first writes what is pending and asks the index, as ``index_record`` does."""

    def __init__(self, store: UnitOfWork, sessions: set[str]):
        self.store = store
        self.indexed = store.index.sessions_indexed(sessions)  # their context needs the index
        self.trail: dict[str, list[str]] = {}  # session -> bodies pending, in order (the last few)
        self.newest: dict[str, str] = {}  # session -> the latest ts pending
        self.pending: list[tuple[dict, dict, list[str]]] = []
        self.doc_ids: set[str] = set()

    def add(self, kind: str, record: dict[str, Any]) -> None:
        doc, text = _search_row(kind, record)
        sid = str(doc.get("session_id") or "")
        ts = str(doc.get("ts") or "")
        if doc["doc_id"] in self.doc_ids or (sid and self.newest.get(sid, "") > ts):
            self.flush()
        if _needs_context(kind, doc, text):
            if sid in self.indexed:
                self.flush()
                before = self.store.index.text_before(sid, doc["ts"], doc["doc_id"], CONTEXT_RECORDS)
            else:
                before = list(reversed(self.trail.get(sid, [])))
            text["context"] = _context(before)
        self.pending.append((doc, text, _image_ids(record)))
        self.doc_ids.add(doc["doc_id"])
        if sid:
            self.trail[sid] = [*self.trail.get(sid, []), text.get("body", "")][-CONTEXT_RECORDS:]
            self.newest[sid] = ts

    def flush(self) -> None:
        rowids = self.store.index.upsert_many([(doc, text) for doc, text, _images in self.pending])
        self.store.images.link_many(
            [(rowid, images) for rowid, (_d, _t, images) in zip(rowids, self.pending, strict=True)]
        )
        self.indexed.update(self.trail)  # their rows are in the index now
        self.pending, self.trail, self.newest, self.doc_ids = [], {}, {}, set()


def index_records(store: UnitOfWork, records: list[tuple[str, dict[str, Any]]]) -> None:
    """``index_record`` of each (kind, record) in order, batched (a bulk import)."""
    sessions = {str(r["sessionId"]) for kind, r in records if kind == "observation" and r.get("sessionId")}
    batch = _BatchIndexer(store, sessions)
    for kind, record in records:
        batch.add(kind, record)
    batch.flush()


def unindex(store: UnitOfWork, doc_ids: list[str]) -> int:
    return store.index.delete(doc_ids)


def delete_indexed(ctx: Ctx, tx: UnitOfWork, scope: str, keys: list[str]) -> tuple[list[str], list[str]]:
    """Delete the records of ``scope`` the caller may see, with their search rows; returns
    (deleted, not found) keys."""
    deleted, missing = [], []
    for key in dict.fromkeys(keys):
        value = tx.records.get(scope, key)
        if value is None or not visible_to(ctx, value):
            missing.append(key)
            continue
        tx.records.delete(scope, key)
        deleted.append(key)
    unindex(tx, deleted)
    return deleted, missing


# -- querying --------------------------------------------------------------------------------------


def bm25(store: UnitOfWork, query: str, *, limit: int, filters: dict[str, Any] | None = None) -> list[dict]:
    """Ranked index rows (doc_id, kind, scope, key, session_id, project, ts, rowid, score)."""
    return store.index.lexical(query_terms(query), weights=BM25_WEIGHTS, limit=limit, filters=filters or {})


def hydrate(store: UnitOfWork, hits: list[dict]) -> list[tuple[dict, dict]]:
    """Pair each hit with its stored record, dropping hits whose record is gone."""
    by_scope: dict[str, list[str]] = {}
    for hit in hits:
        by_scope.setdefault(hit["scope"], []).append(hit["key"])
    records: dict[tuple[str, str], Any] = {}
    for scope, keys in by_scope.items():
        for key, value in store.records.get_many(scope, keys).items():
            records[(scope, key)] = value
    return [(hit, records[(hit["scope"], hit["key"])]) for hit in hits if (hit["scope"], hit["key"]) in records]


# -- hybrid: BM25 + vectors, fused ------------------------------------------------------------------

RRF_K = 60
# Candidates taken from each ranking before fusion: deep enough that a record ranked modestly by
# both rankers still surfaces, shallow enough to stay cheap at 100k records.
CANDIDATE_DEPTH = 100
SEARCH_MODES = ("auto", "hybrid", "bm25", "vector")
FUSIONS = ("score", "rrf")
# Fusion weights relative to BM25's 1.0. Measured on LoCoMo (bench/locomo.py): the local
# bge-small ranking is a useful second opinion but weaker than BM25 with session context, so it
# counts less (0.7 chosen leave-one-conversation-out over 0.5/0.7/1.0 on every fold with the
# reranker, and on two of five without, where 1.0 won the others by a hair; MiniLM-L6 wanted 0.5);
# a ranking restricted to the dates a query names counts as much as BM25.
VECTOR_WEIGHT = 0.7
DATE_WEIGHT = 1.0
# Session-neighbour expansion (``hybrid(neighbour_weight=...)``, used when a reranker follows):
# the records up to ``NEIGHBOUR_SPAN`` before and after each of the top ``NEIGHBOUR_SEEDS``
# fused hits (same session) join the candidates at that weight x the hit's score, unless they
# already score higher: the answer is often a turn next to the one that names its topic.
NEIGHBOUR_SEEDS = 10
NEIGHBOUR_SPAN = 2


class Ranking:
    """One ranker's hits (best first) with its fusion weight. ``floor`` is the score a record
    left out of the list would have at most: the last hit's when the list was cut at the
    candidate depth, 0 for a lexical list that holds every match (the rest matched nothing)."""

    def __init__(self, hits: list[dict], weight: float, floor: float | None = None):
        self.hits, self.weight = hits, weight
        self.floor = floor if floor is not None else min((h["score"] for h in hits), default=0.0)

    @classmethod
    def lexical(cls, hits: list[dict], weight: float, depth: int) -> Ranking:
        return cls(hits, weight, None if len(hits) >= depth else 0.0)


def fuse_scores(rankings: list[Ranking]) -> list[dict]:
    """Score fusion: each ranking's scores mapped to [0, 1] (its best hit 1, its floor 0), then
    summed with the rankings' weights.

    Unlike rank fusion this keeps how far apart the hits are: a record BM25 finds far ahead of
    the rest stays ahead, and a record both rankers place near their best beats one that a
    single ranker likes. Ties keep the order of the first ranking that saw them."""
    scores: dict[str, float] = {}
    first: dict[str, dict] = {}
    for ranking in rankings:
        if not ranking.hits:
            continue
        top = ranking.hits[0]["score"]
        span = top - ranking.floor
        for hit in ranking.hits:
            value = (hit["score"] - ranking.floor) / span if span > 0 else 1.0
            scores[hit["doc_id"]] = scores.get(hit["doc_id"], 0.0) + ranking.weight * max(value, 0.0)
            first.setdefault(hit["doc_id"], hit)
    order = sorted(first, key=lambda d: -scores[d])
    return [{**first[d], "score": scores[d]} for d in order]


def fuse(rankings: list[list[dict]], weights: list[float], k: int = RRF_K) -> list[dict]:
    """Reciprocal rank fusion: score(d) = sum over rankings of weight / (k + rank of d).

    A record missing from a ranking gets nothing from it. Ties keep the order of the first
    ranking that saw them (so BM25 breaks ties between equally fused records)."""
    scores: dict[str, float] = {}
    first: dict[str, dict] = {}
    for hits, weight in zip(rankings, weights, strict=True):
        for rank, hit in enumerate(hits, 1):
            doc_id = hit["doc_id"]
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (k + rank)
            first.setdefault(doc_id, hit)
    order = sorted(first, key=lambda d: -scores[d])
    return [{**first[d], "score": scores[d]} for d in order]


# The per-session cap is never below this share of the limit, so a search inside one long
# session still gets its best hits in order.
MIN_SESSION_SHARE = 0.5


def diversify(hits: list[dict], limit: int, per_session: int) -> list[dict]:
    """At most ``per_session`` hits from one session first, then backfill with the rest in
    rank order: one long session cannot crowd out everything else. The cap is never below
    ``MIN_SESSION_SHARE`` of the limit."""
    cap = max(per_session, math.ceil(limit * MIN_SESSION_SHARE))
    chosen: list[dict] = []
    overflow: list[dict] = []
    seen: dict[Any, int] = {}
    for hit in hits:
        session = hit.get("session_id")
        if session is not None and seen.get(session, 0) >= cap:
            overflow.append(hit)
            continue
        seen[session] = seen.get(session, 0) + 1
        chosen.append(hit)
    return (chosen + overflow)[:limit]


def lexical_rankings(store: UnitOfWork, query: str, filters: dict[str, Any], depth: int) -> list[Ranking]:
    """BM25 over everything, plus one BM25 ranking per date window the query names."""
    rankings = [Ranking.lexical(bm25(store, query, limit=depth, filters=filters), 1.0, depth)]
    for window in dates.windows(query):
        hits = bm25(store, query, limit=depth, filters={**filters, **window})
        rankings.append(Ranking.lexical(hits, DATE_WEIGHT, depth))
    return rankings


def hybrid(
    store: UnitOfWork,
    query: str,
    *,
    limit: int,
    filters: dict[str, Any],
    vectors: Any = None,
    mode: str = "auto",
    per_session: int = 5,
    fusion: str = "score",
    neighbour_weight: float = 0.0,
    vector: Callable[[], Any] | None = None,
) -> tuple[list[dict], str]:
    """Ranked index rows and the mode that really ran ("hybrid", "bm25" or "vector").

    ``neighbour_weight`` > 0 adds the top hits' session neighbours (``with_neighbours``).
    ``vector`` gives the query's vector when the caller started it (``vectors.query_vector``).
    ``vectors`` is the vector subsystem (or None). Without a provider, with an empty vector
    index or when the query cannot be embedded (provider down), the answer is BM25's and the
    mode says so (also when "vector" was asked for)."""
    depth = max(limit * 2, CANDIDATE_DEPTH)
    dense = None
    rankings = None
    if mode != "bm25" and vectors is not None and vectors.ready:
        vector = vector or vectors.query_vector(query)  # a new query is embedded while BM25 runs
        if mode != "vector":
            rankings = lexical_rankings(store, query, filters, depth)
        try:
            dense = vectors.search(store, query, limit=depth, filters=filters, vector=vector)
        except AppError:
            dense = None  # the provider is down: answer with BM25 and say so
        if dense is not None and mode == "vector":
            return dense[:limit], "vector"
    if rankings is None:
        rankings = lexical_rankings(store, query, filters, depth)
    if dense is not None:
        rankings.append(Ranking(dense, VECTOR_WEIGHT))
    expand = (lambda hits: with_neighbours(store, hits, filters, neighbour_weight)) if neighbour_weight > 0 else None
    return combine(rankings, limit, per_session, fusion, expand), "bm25" if dense is None else "hybrid"


def combine(
    rankings: list[Ranking],
    limit: int,
    per_session: int,
    fusion: str,
    expand: Callable[[list[dict]], list[dict]] | None = None,
) -> list[dict]:
    """One ranking as it is; several fused ("score" or "rrf") and diversified across sessions.
    ``expand`` may add candidates to the fused list before it is cut."""
    if len(rankings) == 1 and expand is None:
        return rankings[0].hits[:limit]
    if len(rankings) == 1:
        merged = rankings[0].hits
    elif fusion == "rrf":
        merged = fuse([r.hits for r in rankings], [r.weight for r in rankings])
    else:
        merged = fuse_scores(rankings)
    if expand is not None:
        merged = expand(merged)
    return diversify(merged, limit, per_session) if len(rankings) > 1 else merged[:limit]


def rowids_of(store: UnitOfWork, hits: list[dict]) -> list[int | None]:
    """Each hit's search rowid (looked up for hits a ranker returned without one; None when its
    row is gone)."""
    missing = [h["doc_id"] for h in hits if h.get("rowid") is None]
    found = {d["doc_id"]: d["rowid"] for d in store.index.lookup(missing, {})} if missing else {}
    return [h.get("rowid") or found.get(h["doc_id"]) for h in hits]


def with_neighbours(store: UnitOfWork, hits: list[dict], filters: dict[str, Any], weight: float) -> list[dict]:
    """``hits`` plus the session neighbours of the top ones at ``weight`` x their score, best first."""
    scores = {h["doc_id"]: h["score"] for h in hits}
    rows = {h["doc_id"]: h for h in hits}
    seeds = [h for h in hits[:NEIGHBOUR_SEEDS] if h.get("session_id")]
    for seed, rowid in zip(seeds, rowids_of(store, seeds), strict=True):
        if rowid is None:
            continue
        session = {**filters, "session_ids": [seed["session_id"]]}
        near = store.index.around(seed["ts"], rowid=rowid, before=NEIGHBOUR_SPAN, after=NEIGHBOUR_SPAN, filters=session)
        for row in near:
            value = weight * seed["score"]
            if value > scores.get(row["doc_id"], 0.0):
                scores[row["doc_id"]] = value
                rows.setdefault(row["doc_id"], row)
    order = sorted(rows, key=lambda d: -scores[d])
    return [{**rows[d], "score": scores[d]} for d in order]
