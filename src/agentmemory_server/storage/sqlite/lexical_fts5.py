"""Lexical search on SQLite FTS5 (``search_fts``, porter + unicode61): the fallback engine, and
the one that answers while the Tantivy index is being built.

Every term is quoted and the terms are OR-ed: a bare FTS5 MATCH ANDs the terms and finds almost
nothing for a natural question, and quoting makes any text (``C++``, ``NEAR``, ``"``, ``*``) safe.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from agentmemory_server.storage.interfaces import Doc

ROW = "d.doc_id, d.kind, d.scope, d.key, d.session_id, d.project, d.ts"
ROW_COLUMNS = ("doc_id", "kind", "scope", "key", "session_id", "project", "ts")

# FTS5 computes bm25() for every row an OR of terms matches (about 2 microseconds a row), and
# cannot stop early. A query made only of words that tens of thousands of records contain would
# cost 50-100 ms at 100k records. Past this many matching rows, BM25 skips the records that hold
# none of the query's rare terms and not all of its common ones (the idea of Lucene's common-terms
# query: frequent words refine a ranking; alone they select nothing). Every record it does rank
# gets its exact score.
BM25_ROW_BUDGET = 4000


# FTS5 merges its index's segments as rows come in: a level's segments are merged once 4 of them
# exist ("automerge"), and at once at 16 ("crisismerge"). While Tantivy answers the searches, the
# FTS5 index is only kept complete for a switch back and for the window while Tantivy's index is
# rebuilt, and that eager merging cost 45% of observe's CPU at 1M records (1.02 against 0.57 ms in
# process; the merges rewrite ever larger segments). Merging 16 at a time rewrites each entry far
# less often; a query then reads up to 16 segments a level instead of 4, which matters only while
# FTS5 answers, so FTS5's own defaults come back when it is the engine.
LAZY_MERGING = {"automerge": 16, "crisismerge": 64}
EAGER_MERGING = {"automerge": 4, "crisismerge": 16}  # FTS5's defaults


def tune_merging(conn: sqlite3.Connection, *, answering: bool) -> None:
    """Set how eagerly FTS5 merges ``search_fts``: its defaults while it answers searches,
    lazily while it is only kept up to date (nothing is written when already so)."""
    wanted = EAGER_MERGING if answering else LAZY_MERGING
    current = dict(conn.execute("SELECT k, v FROM search_fts_config WHERE k IN ('automerge', 'crisismerge')"))
    for key, value in wanted.items():
        if current.get(key, EAGER_MERGING[key]) != value:
            conn.execute("INSERT INTO search_fts (search_fts, rank) VALUES (?, ?)", (key, value))


def phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def any_of(terms: Sequence[str]) -> str:
    return " OR ".join(phrase(t) for t in terms)


def doc_filters(where: list[str], params: list[Any], filters: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """Add the SQL for the index filters (see ``SearchIndex``) to ``where``/``params``."""

    def one_of(column: str, values: list[Any]) -> None:
        where.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(values)

    def compare(clause: str, value: Any) -> None:
        where.append(clause)
        params.append(value)

    if filters.get("kinds"):
        one_of("d.kind", list(filters["kinds"]))
    if filters.get("types"):
        one_of("d.type", list(filters["types"]))
    if filters.get("project") is not None:
        compare("(d.project = ? OR d.global = 1)", filters["project"])
    if filters.get("agent_id") is not None:
        compare("d.agent_id = ?", filters["agent_id"])
    if filters.get("session_ids") is not None:
        one_of("d.session_id", list(filters["session_ids"]) or [""])
    if filters.get("exclude_session") is not None:
        compare("(d.session_id IS NULL OR d.session_id != ?)", filters["exclude_session"])
    if filters.get("months"):
        one_of("CAST(substr(d.ts, 6, 2) AS INTEGER)", list(filters["months"]))
    if filters.get("since") is not None:
        compare("d.ts >= ?", filters["since"])
    if filters.get("until") is not None:
        compare("d.ts <= ?", filters["until"])
    return where, params


class Fts5Lexical:
    """BM25 on one connection's view of ``search_fts``."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def search(
        self, terms: Sequence[str], weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        if not terms:
            return []
        match = any_of(terms)
        if len(terms) == 1 or self._match_count(match, BM25_ROW_BUDGET + 1) <= BM25_ROW_BUDGET:
            return self.bm25(match, weights, limit, filters)
        return self._bounded(list(terms), weights, limit, filters)

    def search_files(
        self, phrases: Sequence[Sequence[str]], weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc]:
        quoted = [phrase(" ".join(words)) for words in phrases if words]
        if not quoted:
            return []
        return self.bm25(f"files : ({' OR '.join(quoted)})", weights, limit, filters)

    def bm25(self, match: str, weights: Sequence[float], limit: int, filters: Mapping[str, Any]) -> list[Doc]:
        where, params = doc_filters(["search_fts MATCH ?", "d.active = 1"], [match], filters)
        # bm25() sits in the projection, so SQLite computes it only for rows that pass the filters.
        sql = (
            f"SELECT {ROW}, d.id, -bm25(search_fts, {', '.join(str(float(w)) for w in weights)}) AS score "
            "FROM search_fts JOIN search_docs d ON d.id = search_fts.rowid "
            f"WHERE {' AND '.join(where)} ORDER BY score DESC, d.ts DESC LIMIT ?"
        )
        cols = (*ROW_COLUMNS, "rowid", "score")
        return [dict(zip(cols, row, strict=True)) for row in self.conn.execute(sql, (*params, limit))]

    def _match_count(self, match: str, cap: int) -> int:
        """How many rows an FTS5 expression matches, counting no further than ``cap`` (walking a
        posting list is cheap; scoring it is what costs)."""
        return self.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM search_fts WHERE search_fts MATCH ? LIMIT ?)", (match, cap)
        ).fetchone()[0]

    def _bounded(self, terms: list[str], weights: Sequence[float], limit: int, filters: Mapping[str, Any]) -> list[Doc]:
        """BM25 over the records holding a rare term or every common one, when an OR of ``terms``
        matches more rows than the budget. Rare terms are the least frequent ones whose rows fit
        the budget together; the rest are common. Three small queries, each scoring its rows on
        every query term they contain (FTS5 scores the phrases of the branches a row matched):
        rare and common, rare only, all common."""
        rare = self.rarest_terms(terms)
        common = [t for t in terms if t not in rare]
        queries = []
        if rare and common:
            queries.append(f"({any_of(rare)}) AND ({any_of(common)})")
        if rare:
            queries.append(any_of(rare))
        if len(common) > 1 or not rare:
            queries.append(" AND ".join(phrase(t) for t in common))
        best: dict[str, Doc] = {}
        for match in queries:
            for hit in self.bm25(match, weights, limit, filters):
                best.setdefault(hit["doc_id"], hit)  # the first query to see a row scored all its terms
        newest_first = sorted(best.values(), key=lambda h: h["ts"], reverse=True)
        return sorted(newest_first, key=lambda h: -h["score"])[:limit]  # the SQL's order

    def rarest_terms(self, terms: list[str]) -> list[str]:
        """The least frequent terms whose matching rows add up to at most the budget."""
        counts = sorted((self._match_count(phrase(t), BM25_ROW_BUDGET + 1), i, t) for i, t in enumerate(terms))
        chosen, total = [], 0
        for count, _, term in counts:
            if total + count > BM25_ROW_BUDGET:
                break
            chosen.append(term)
            total += count
        return chosen
