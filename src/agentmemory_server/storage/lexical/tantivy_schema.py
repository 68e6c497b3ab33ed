"""The shape of the Tantivy index and the pure functions over it: its fields and analyzer, the
metadata document, how a search row becomes a document and how the index filters (see
``SearchIndex``) become query clauses.

Nothing here holds state; the engine (tantivy_index.py: its searcher, the pending tail, the
applier and its writer) calls these with its schema and column repeats. Kept apart so the engine
module reads as what the engine does, and so the layout of the index is in one place: a change
here changes the schema, and an index of another schema is rebuilt (tantivy_index ``_open``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import tantivy

from agentmemory_server.similarity import band_keys
from agentmemory_server.storage.lexical.tantivy_tail import COLUMNS, FILES, NEAR_DUP, SIGNED_KINDS, WEIGHTED

ANALYZER = "agentmemory_en"
META_ROWID = 0  # the document that carries the applied outbox sequence


def build_schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("rowid", indexed=True, fast=True)
    builder.add_unsigned_field("meta_seq", fast=True)
    builder.add_text_field(WEIGHTED, tokenizer_name=ANALYZER, index_option="freq")
    builder.add_text_field(FILES, tokenizer_name=ANALYZER, index_option="position")
    builder.add_unsigned_field(NEAR_DUP, indexed=True)
    for name in ("kind", "type", "project", "agent_id", "session_id"):
        builder.add_text_field(name, tokenizer_name="raw", index_option="basic")
    builder.add_unsigned_field("global", indexed=True)
    builder.add_unsigned_field("month", indexed=True)
    builder.add_integer_field("ts_ms", indexed=True, fast=True)
    return builder.build()


def build_analyzer() -> tantivy.TextAnalyzer:
    """Words (Unicode letters and digits), lower-cased, accents folded, English-stemmed: the
    same treatment FTS5's porter/unicode61/remove_diacritics tokenizer gives."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def ts_millis(ts: str | None) -> int:
    try:
        return int(datetime.fromisoformat((ts or "").replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def rowid_query(schema: tantivy.Schema, rowid: int) -> tantivy.Query:
    # A term query, not delete_documents_by_term: the latter takes a Python int as an i64
    # term and silently matches nothing in a u64 field.
    return tantivy.Query.term_query(schema, "rowid", rowid)


def document(row: Sequence[Any], repeats: Mapping[str, int]) -> tantivy.Document:
    """The index document of a search row (rowid, kind, type, project, agent_id, session_id, ts,
    active, global, then the text ``COLUMNS``): each column's text repeated ``repeats[column]``
    times in the weighted field, the memory's band keys, and the filter fields."""
    rowid, kind, type_, project, agent_id, session_id, ts, _active, is_global = row[:9]
    doc = tantivy.Document()
    doc.add_unsigned("rowid", int(rowid))
    texts = dict(zip(COLUMNS, row[9:], strict=True))
    weighted = " ".join(" ".join([texts[c]] * repeats[c]) for c in COLUMNS if texts[c])
    if weighted:
        doc.add_text(WEIGHTED, weighted)
    if texts[FILES]:
        doc.add_text(FILES, texts[FILES])
    if kind in SIGNED_KINDS:
        for key in band_keys(texts["body"] or ""):
            doc.add_unsigned(NEAR_DUP, key)
    for name, value in (
        ("kind", kind),
        ("type", type_),
        ("project", project),
        ("agent_id", agent_id),
        ("session_id", session_id),
    ):
        if value is not None:
            doc.add_text(name, str(value))
    doc.add_unsigned("global", 1 if is_global else 0)
    month = (ts or "")[5:7]
    if month.isdigit():
        doc.add_unsigned("month", int(month))
    doc.add_integer("ts_ms", ts_millis(ts))
    return doc


def with_filters(schema: tantivy.Schema, text: tantivy.Query, filters: Mapping[str, Any]) -> tantivy.Query:
    """The text query restricted by the index filters (see ``SearchIndex``); filters score 0."""
    must: list[tantivy.Query] = []
    must_not: list[tantivy.Query] = []
    for key, name in (("kinds", "kind"), ("types", "type"), ("session_ids", "session_id"), ("months", "month")):
        if filters.get(key) is not None and (key == "session_ids" or filters.get(key)):
            values = [int(v) for v in filters[key]] if name == "month" else [str(v) for v in filters[key]]
            must.append(one_of(schema, name, values or [""]))
    if filters.get("project") is not None:
        must.append(
            tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Should, tantivy.Query.term_query(schema, "project", filters["project"])),
                    (tantivy.Occur.Should, tantivy.Query.term_query(schema, "global", 1)),
                ]
            )
        )
    if filters.get("agent_id") is not None:
        must.append(tantivy.Query.term_query(schema, "agent_id", filters["agent_id"]))
    if filters.get("exclude_session") is not None:
        must_not.append(tantivy.Query.term_query(schema, "session_id", filters["exclude_session"]))
    if filters.get("since") is not None or filters.get("until") is not None:
        low = ts_millis(filters["since"]) if filters.get("since") else None
        high = ts_millis(filters["until"]) if filters.get("until") else None
        must.append(tantivy.Query.range_query(schema, "ts_ms", tantivy.FieldType.Integer, low, high))
    if not must and not must_not:
        return text
    clauses = [(tantivy.Occur.Must, text)]
    clauses += [(tantivy.Occur.Must, tantivy.Query.const_score_query(q, 0.0)) for q in must]
    clauses += [(tantivy.Occur.MustNot, q) for q in must_not]
    return tantivy.Query.boolean_query(clauses)


def one_of(schema: tantivy.Schema, name: str, values: list[Any]) -> tantivy.Query:
    # One value is a term query: a term-set query costs about 0.1 ms more per search, whatever
    # it matches (measured at 20k records, a fifth of a remember's near-duplicate lookup).
    if len(values) == 1:
        return tantivy.Query.term_query(schema, name, values[0])
    return tantivy.Query.term_set_query(schema, name, values)
