"""Contextual indexing, measured without changing the product (issue 16, fifth round).

Index-time variants of what a record carries of its session neighbours, each behind a constant
of this module that ``bench/locomo.py --index-grid contextual.NAME=...`` sets before a
conversation is loaded (a fresh database per value, so the index really holds the variant):

- ``FORWARD_RECORDS``: the lexical context field also holds the records just *after* a record
  (the product's holds the ones before). When a record is indexed, the one(s) before it in its
  session are indexed again with the new record's body appended to their context, so the
  statement that names a topic can be found through the reply that follows it.
- ``VECTOR_BLEND``: after the backlog is embedded, each record's vector becomes
  normalize(v_i + a * v_(i-1)) with v_(i-1) the previous record's own vector in its session
  (``VECTOR_SPAN`` records back, weights a, a^2, ...), and with ``VECTOR_AFTER`` = b the records
  after it as well (b, b^2, ...): no extra embedding, one pass over vectors that exist already.
- ``CONTEXT_RANKING``: the context column searched on its own, as a separate BM25 ranking fused
  at this weight (a query-time constant, so it is tuned with ``--grid``; only the FTS5 engine
  weighs columns at query time, so run it with ``--engine fts5``). With
  ``search_fields.context=0`` the main ranking ignores the context: context then counts only
  through its own field and boost, not through extra term frequency in the record's document.
- ``EMBED_CONTEXT_FIRST``: the text embedded is "context | record" instead of the product's
  "record | context" (the embedder reads the first 64 tokens, so the order decides how much
  of each it sees); ``EMBED_CONTEXT_CHARS`` caps the context part (the product's 200).

The patches wrap module attributes the product calls through (``search.index_record``,
``vectors_backlog.embedding_text``); at the default values they do exactly what the product does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentmemory_server.retrieval import search, vectors_backlog
from agentmemory_server.retrieval.embeddings import from_blob, to_blob

FORWARD_RECORDS = 0
FORWARD_CHARS = 200
VECTOR_BLEND = 0.0
VECTOR_SPAN = 1
VECTOR_AFTER = 0.0
EMBED_CONTEXT_FIRST = False
CONTEXT_RANKING = 0.0
EMBED_CONTEXT_CHARS = vectors_backlog.CONTEXT_EMBED_CHARS

_index_record = search.index_record
_embedding_text = vectors_backlog.embedding_text
_lexical_rankings = search.lexical_rankings
CONTEXT_ONLY = (0.0, 0.0, 0.0, 0.0, 1.0)  # title, body, concepts, files, context


def lexical_rankings(store: Any, query: str, filters: dict[str, Any], depth: int) -> list[Any]:
    rankings = _lexical_rankings(store, query, filters, depth)
    if CONTEXT_RANKING > 0:
        hits = store.index.lexical(search.query_terms(query), weights=CONTEXT_ONLY, limit=depth, filters=filters)
        hits = [h for h in hits if h["score"] > 0]  # rows that matched outside the context only
        rankings.append(search.Ranking(hits, CONTEXT_RANKING, 0.0))
    return rankings


def index_record(store: Any, kind: str, record: dict[str, Any]) -> int:
    """The product's ``index_record``, then (``FORWARD_RECORDS`` > 0) the records before this
    one in its session indexed again with this one's body in their context."""
    rowid = _index_record(store, kind, record)
    if FORWARD_RECORDS <= 0 or kind != "observation" or not record.get("sessionId"):
        return rowid
    doc, text = search._search_row(kind, record)
    session = {"session_ids": [doc["session_id"]]}
    earlier = store.index.around(doc["ts"], rowid=rowid, before=FORWARD_RECORDS, after=0, filters=session)
    earlier = [row for row in earlier if row["doc_id"] != doc["doc_id"]]
    for row in earlier:
        _reindex_with_after(store, row, session)
    return rowid


def _reindex_with_after(store: Any, row: dict[str, Any], session: dict[str, Any]) -> None:
    value = store.records.get(row["scope"], row["key"])
    if value is None:
        return
    doc, text = search._search_row("observation", value)
    before = store.index.text_before(doc["session_id"], doc["ts"], doc["doc_id"], search.CONTEXT_RECORDS)
    after_rows = store.index.around(doc["ts"], rowid=row["rowid"], before=0, after=FORWARD_RECORDS, filters=session)
    after_rows = [r for r in after_rows if r["doc_id"] != doc["doc_id"]]
    after = [_body(store, r) for r in after_rows]
    text["context"] = search._context(before + [b for b in after if b])
    store.index.upsert(doc, text)


def _body(store: Any, row: dict[str, Any]) -> str:
    value = store.records.get(row["scope"], row["key"])
    if value is None:
        return ""
    return search._search_row("observation", value)[1].get("body", "")[:FORWARD_CHARS]


def embedding_text(title: str, body: str, concepts: str = "", context: str = "") -> str:
    if not EMBED_CONTEXT_FIRST and EMBED_CONTEXT_CHARS == vectors_backlog.CONTEXT_EMBED_CHARS:
        return _embedding_text(title, body, concepts, context)
    own = _embedding_text(title, body, concepts, "")
    context = context[:EMBED_CONTEXT_CHARS]
    if not context:
        return own
    return f"{context} | {own}" if EMBED_CONTEXT_FIRST else f"{own} | {context}"


def blend_vectors(rt: Any, service: Any) -> int:
    """Each observation's vector mixed with its session predecessors' (``VECTOR_BLEND``);
    returns how many vectors were rewritten."""
    if (VECTOR_BLEND <= 0 and VECTOR_AFTER <= 0) or service.embedder is None:
        return 0
    model, dim = service.embedder.model_id, service.embedder.dim
    store = rt.db.reader()
    raw = {rowid: from_blob(blob, dim).astype(np.float32) for rowid, blob, *_ in store.vectors.load(model, dim)}
    docs = store.index.by_rowid(list(raw), {})
    by_session: dict[str, list[dict]] = {}
    for doc in docs:
        if doc.get("session_id") and doc.get("kind") == "observation":
            by_session.setdefault(doc["session_id"], []).append(doc)
    stamp, changed = rt.clock.iso(), 0
    with rt.db.transaction("bench_blend") as tx:
        for rows in by_session.values():
            rows.sort(key=lambda d: (d["ts"], d["rowid"]))
            for i, doc in enumerate(rows):
                mixed = raw[doc["rowid"]].copy()
                for step in range(1, VECTOR_SPAN + 1):
                    if i - step >= 0:
                        mixed += (VECTOR_BLEND**step) * raw[rows[i - step]["rowid"]]
                    if VECTOR_AFTER > 0 and i + step < len(rows):
                        mixed += (VECTOR_AFTER**step) * raw[rows[i + step]["rowid"]]
                mixed /= max(float(np.linalg.norm(mixed)), 1e-12)
                changed += tx.vectors.put(doc["rowid"], model, to_blob(mixed), dim, stamp)
    service.catch_up()
    return changed


def install() -> None:
    search.index_record = index_record  # type: ignore[assignment]
    vectors_backlog.embedding_text = embedding_text  # type: ignore[assignment]
    search.lexical_rankings = lexical_rankings  # type: ignore[assignment]
