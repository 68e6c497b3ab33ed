"""Retrieval: what goes into the search index and how a query becomes ranked records
(BM25 here; vectors in ``vectors.py``; both fused here by reciprocal rank).

BM25 runs on the SQLite FTS5 table ``search_fts`` (porter + unicode61). Records are indexed in
the same transaction that stores them, so the index is persistent, incremental and never
rebuilt at start-up. A query is tokenised, stripped of stop and question words, and its terms
are quoted and OR-ed: a bare FTS5 MATCH ANDs the terms and finds almost nothing for a natural
question, and quoting makes any user text (``C++``, ``NEAR``, ``"``, ``*``) safe.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import dates
from db import Store
from errors import AppError

# Field weights for bm25(search_fts, title, body, concepts, files, context). The context (the
# text just before a record in its session) helps a reply be found by its question's words,
# but must never outweigh what the record itself says.
BM25_WEIGHTS = (3.0, 1.0, 2.0, 1.5, 0.4)
CONTEXT_CHARS = 300

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just let me more most my myself no nor not of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
""".split())

WORDS = re.compile(r"\w+", re.UNICODE)

# Called after a record's row is written: hook(store, rowid, doc, text). The embedding backlog
# registers here so every indexed record is also queued for a vector.
INDEX_HOOKS: list[Callable[[Store, int, dict, dict], None]] = []


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


def build_match(query: str) -> str | None:
    """An FTS5 MATCH expression: every term quoted, OR-ed. None when there is nothing to find."""
    terms = query_terms(query)
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


# -- what gets indexed ---------------------------------------------------------------------------


def _join(values: Any) -> str:
    if not values:
        return ""
    if isinstance(values, str):
        return values
    return " ".join(str(v) for v in values if v)


def observation_doc(obs: dict[str, Any]) -> tuple[dict, dict]:
    doc = {
        "doc_id": obs["id"], "kind": "observation", "scope": f"mem:obs:{obs['sessionId']}",
        "key": obs["id"], "session_id": obs.get("sessionId"), "project": obs.get("project"),
        "agent_id": obs.get("agentId"), "type": obs.get("type"), "ts": obs.get("timestamp") or "",
    }
    body = " ".join(p for p in (obs.get("narrative", ""), obs.get("subtitle", ""),
                                _join(obs.get("facts"))) if p)
    text = {"title": distinct_title(obs.get("title", ""), body), "body": body,
            "concepts": _join(obs.get("concepts")), "files": _join(obs.get("files"))}
    return doc, text


def distinct_title(title: str, body: str) -> str:
    """The title, unless it only repeats the start of the body (agent notes and prompts are
    titled by their own first words): counting those words again at title weight would rank
    records by how they begin rather than by what they say."""
    head = (title or "").rstrip("…").strip()
    return "" if head and " ".join(body.split()).startswith(" ".join(head.split())) else title


def memory_doc(mem: dict[str, Any]) -> tuple[dict, dict]:
    doc = {
        "doc_id": mem["id"], "kind": "memory", "scope": "mem:memories", "key": mem["id"],
        "session_id": (mem.get("sessionIds") or [None])[0], "project": mem.get("project"),
        "agent_id": mem.get("agentId"), "type": mem.get("type"),
        "ts": mem.get("updatedAt") or mem.get("createdAt") or "",
        "active": mem.get("isLatest", True),
    }
    text = {"title": mem.get("title", ""), "body": mem.get("content", ""),
            "concepts": _join(mem.get("concepts")), "files": _join(mem.get("files"))}
    return doc, text


DOC_BUILDERS: dict[str, Callable[[dict], tuple[dict, dict]]] = {
    "observation": observation_doc,
    "memory": memory_doc,
}


# Scopes whose records are indexed, besides every ``mem:obs:{session}`` scope.
INDEXED_SCOPES: dict[str, str] = {"mem:memories": "memory"}


def kind_for_scope(scope: str) -> str | None:
    if scope.startswith("mem:obs:"):
        return "observation"
    return INDEXED_SCOPES.get(scope)


def index_record(store: Store, kind: str, record: dict[str, Any]) -> int:
    doc, text = DOC_BUILDERS[kind](record)
    if kind == "observation" and doc.get("session_id") and "context" not in text:
        text["context"] = store.text_before(doc["session_id"], doc["ts"], doc["doc_id"])[:CONTEXT_CHARS]
    rowid = store.index_upsert(doc, text)
    for hook in INDEX_HOOKS:
        hook(store, rowid, doc, text)
    return rowid


def unindex(store: Store, doc_ids: list[str]) -> int:
    return store.index_delete(doc_ids)


# -- querying --------------------------------------------------------------------------------------


def bm25(store: Store, query: str, *, limit: int, filters: dict[str, Any] | None = None) -> list[dict]:
    """Ranked index rows (doc_id, kind, scope, key, session_id, project, ts, rowid, score)."""
    match = build_match(query)
    if match is None:
        return []
    return store.fts_search(match, weights=BM25_WEIGHTS, limit=limit, filters=filters or {})


def hydrate(store: Store, hits: list[dict]) -> list[tuple[dict, dict]]:
    """Pair each hit with its stored record, dropping hits whose record is gone."""
    by_scope: dict[str, list[str]] = {}
    for hit in hits:
        by_scope.setdefault(hit["scope"], []).append(hit["key"])
    records: dict[tuple[str, str], Any] = {}
    for scope, keys in by_scope.items():
        for key, value in store.get_many(scope, keys).items():
            records[(scope, key)] = value
    return [(hit, records[(hit["scope"], hit["key"])]) for hit in hits
            if (hit["scope"], hit["key"]) in records]


# -- hybrid: BM25 + vectors, fused by reciprocal rank --------------------------------------------

RRF_K = 60
# Candidates taken from each ranking before fusion: deep enough that a record ranked modestly by
# both rankers still surfaces, shallow enough to stay cheap at 100k records.
CANDIDATE_DEPTH = 100
SEARCH_MODES = ("auto", "hybrid", "bm25", "vector")
# RRF weights relative to BM25's 1.0. Measured on LoCoMo (bench/locomo.py): the local MiniLM
# ranking is a useful second opinion but weaker than BM25 with session context, so it counts
# less; a ranking restricted to the dates a query names counts as much as BM25.
VECTOR_WEIGHT = 0.5
DATE_WEIGHT = 1.0


def fuse(rankings: list[list[dict]], weights: list[float], k: int = RRF_K) -> list[dict]:
    """Reciprocal rank fusion: score(d) = sum over rankings of weight / (k + rank of d).

    A record missing from a ranking gets nothing from it. Ties keep the order of the first
    ranking that saw them (so BM25 breaks ties between equally fused records)."""
    scores: dict[str, float] = {}
    first: dict[str, dict] = {}
    for hits, weight in zip(rankings, weights):
        for rank, hit in enumerate(hits, 1):
            doc_id = hit["doc_id"]
            scores[doc_id] = scores.get(doc_id, 0.0) + weight / (k + rank)
            first.setdefault(doc_id, hit)
    order = sorted(first, key=lambda d: -scores[d])
    return [{**first[d], "score": scores[d]} for d in order]


def diversify(hits: list[dict], limit: int, per_session: int) -> list[dict]:
    """At most ``per_session`` hits from one session first, then backfill with the rest in
    rank order: one long session cannot crowd out everything else."""
    chosen: list[dict] = []
    overflow: list[dict] = []
    seen: dict[Any, int] = {}
    for hit in hits:
        session = hit.get("session_id")
        if session is not None and seen.get(session, 0) >= per_session:
            overflow.append(hit)
            continue
        seen[session] = seen.get(session, 0) + 1
        chosen.append(hit)
    return (chosen + overflow)[:limit]


def hybrid(store: Store, query: str, *, limit: int, filters: dict[str, Any], vectors: Any = None,
           mode: str = "auto", per_session: int = 5) -> tuple[list[dict], str]:
    """Ranked index rows and the mode that really ran ("hybrid", "bm25" or "vector").

    ``vectors`` is the vector subsystem (or None). Without a provider, with an empty vector
    index or when the query cannot be embedded (provider down), the answer is BM25's and the
    mode says so."""
    depth = max(limit * 2, CANDIDATE_DEPTH)
    lexical = bm25(store, query, limit=depth, filters=filters) if mode != "vector" else []
    dated = [bm25(store, query, limit=depth, filters={**filters, **window})
             for window in dates.windows(query)] if mode != "vector" else []
    rankings, weights = [lexical] + dated, [1.0] + [DATE_WEIGHT] * len(dated)
    used = "bm25"
    if mode != "bm25" and vectors is not None and vectors.ready:
        try:
            dense = vectors.search(store, query, limit=depth, filters=filters)
        except AppError:
            dense = None  # the provider is down: answer with BM25 and say so
        if dense is not None and mode == "vector":
            return dense[:limit], "vector"
        if dense is not None:
            rankings.append(dense)
            weights.append(VECTOR_WEIGHT)
            used = "hybrid"
    if len(rankings) == 1:
        return lexical[:limit], used
    return diversify(fuse(rankings, weights), limit, per_session), used
