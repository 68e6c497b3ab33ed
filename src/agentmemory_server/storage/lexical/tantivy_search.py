"""Lexical search on Tantivy: how a query is answered, from the last commit and the records not
committed yet (``tantivy_tail.PendingIndex``), merged into one ranking.

A mixin of ``tantivy_index.TantivyLexical``, apart from it so that module keeps to the engine's
state: opening the index, applying the outbox, committing, rebuilding and verifying. The
attributes below are the engine's, set in ``TantivyLexical.__init__``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tantivy

from agentmemory_server.similarity import band_keys
from agentmemory_server.storage.interfaces import Doc
from agentmemory_server.storage.lexical.feed import LexicalFeed
from agentmemory_server.storage.lexical.tantivy_schema import with_filters
from agentmemory_server.storage.lexical.tantivy_tail import (
    COLUMNS,
    FILES,
    NEAR_DUP,
    SIGNED_KINDS,
    WEIGHTED,
    PendingIndex,
    Statistics,
)

# More pending records than this and searches are answered by FTS5 until the applier catches up
# (a crash with a long outbox, a bulk import): scoring them in Python would cost more than that.
PENDING_LIMIT = 2000

AVG_LEN_SAMPLE = 1000
AVG_LEN_SECONDS = 600.0

ROW_COLUMNS = ("rowid", "doc_id", "kind", "scope", "key", "session_id", "project", "ts")


class TantivySearching:
    """The part of ``TantivyLexical`` that answers queries."""

    schema: tantivy.Schema
    repeats: dict[str, int]
    pending: PendingIndex
    _pending_lock: threading.Lock
    _avg: tuple[float, dict[str, float]] | None
    view: Callable[[], tuple[tantivy.Searcher, int | None]]  # the current searcher and its commit's sequence
    analyze: Callable[[str], list[str]]

    def search(
        self, feed: LexicalFeed, terms: Sequence[str], weights: Sequence[float], limit: int, filters: Mapping[str, Any]
    ) -> list[Doc] | None:
        # ``weights`` were applied when the records were indexed (column_repeats).
        tokens = list(dict.fromkeys(tok for term in terms for tok in self.analyze(term)))
        clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, WEIGHTED, tok)) for tok in tokens]
        return self._run_query(feed, clauses, tokens, {WEIGHTED: 1.0}, limit, filters, files=None)

    def search_files(
        self,
        feed: LexicalFeed,
        phrases: Sequence[Sequence[str]],
        weights: Sequence[float],
        limit: int,
        filters: Mapping[str, Any],
    ) -> list[Doc] | None:
        token_phrases = [toks for words in phrases if (toks := [t for w in words for t in self.analyze(w)])]
        boost = dict(zip(COLUMNS, weights, strict=True))[FILES]
        clauses = []
        for toks in token_phrases:
            query = (
                tantivy.Query.term_query(self.schema, FILES, toks[0])
                if len(toks) == 1
                else tantivy.Query.phrase_query(self.schema, FILES, list[str | tuple[int, str]](toks))
            )
            clauses.append((tantivy.Occur.Should, tantivy.Query.boost_query(query, boost)))
        tokens = list(dict.fromkeys(t for toks in token_phrases for t in toks))
        return self._run_query(feed, clauses, tokens, {FILES: boost}, limit, filters, files=token_phrases)

    def near_duplicates(self, feed: LexicalFeed, text: str, limit: int, filters: Mapping[str, Any]) -> list[Doc] | None:
        """Records of the signed kinds that share MinHash band keys with ``text``: the ``limit``
        committed ones sharing the most (BM25 over the keys: every signed record holds the same
        number, so the score grows with the keys shared, rarer keys counting more), and every
        pending one sharing any. ``score`` ranks within each group only. A near-duplicate at
        the threshold shares a key with probability 0.9999 (similarity.py); the caller checks
        each candidate exactly. None while the index cannot answer (see ``search``)."""
        searcher, committed = self.view()
        if committed is None:
            return None
        keys = list(dict.fromkeys(band_keys(text)))
        with self._pending_lock:
            if not self.pending.sync(feed, committed, PENDING_LIMIT):
                return None
            hidden = self.pending.hidden
            tail = self.pending.sharing_keys(keys, filters)
        clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, NEAR_DUP, key)) for key in keys]
        # Only signed records hold band keys: a kinds filter naming just those would add nothing.
        engine_filters = {k: v for k, v in filters.items() if k != "kinds" or not set(v or ()) <= SIGNED_KINDS}
        query = with_filters(self.schema, tantivy.Query.boolean_query(clauses), engine_filters)
        scored = self._top(searcher, query, hidden, limit, few=True)
        scored += [(float(shared), doc.rowid) for shared, doc in tail]
        return self._docs(feed, scored)

    def _run_query(
        self,
        feed: LexicalFeed,
        clauses: list,
        tokens: list[str],
        boosts: Mapping[str, float],
        limit: int,
        filters: Mapping[str, Any],
        files: list[list[str]] | None,
    ) -> list[Doc] | None:
        # During a rebuild the last commit keeps answering (a repair), or there is none (FTS5 answers).
        searcher, committed = self.view()
        if committed is None:
            return None
        if not clauses:
            return []
        with self._pending_lock:
            if not self.pending.sync(feed, committed, PENDING_LIMIT):
                return None
            hidden = self.pending.hidden
            stats = Statistics(max(0, searcher.num_docs - 1), searcher.doc_freq, self._avg_len(feed), self.pending)
            tail = self.pending.score(tokens, boosts, stats, filters)
            if files is not None:
                matching = {d.rowid for d in self.pending.files_matching(files, filters)}
                tail = [(s, d) for s, d in tail if d.rowid in matching]
        # Filters are Must clauses scoring 0, so scores equal the unfiltered query's. (Ranking
        # the unfiltered query, which block-max WAND prunes, for more hits and filtering them
        # was measured slower at 100k records with common-word queries: bench/scale.py corpus.)
        query = with_filters(self.schema, tantivy.Query.boolean_query(clauses), filters)
        scored = self._top(searcher, query, hidden, limit)
        scored += [(score, doc.rowid) for score, doc in tail]
        scored.sort(key=lambda pair: -pair[0])
        return self._docs(feed, scored[:limit])

    def _top(
        self, searcher: tantivy.Searcher, query: tantivy.Query, hidden: set[int], limit: int, *, few: bool = False
    ) -> list[tuple[float, int]]:
        """(score, rowid) of the best ``limit`` committed records, without the ``hidden`` ones
        (committed copies that pending records replace, excluded inside the engine). A query
        that matches ``few`` records drops them afterwards instead, from a few more hits: the
        exclusion costs about 0.14 ms per search, five times what such a query costs (a hidden
        record among the best then leaves one place empty, as a deleted record would)."""
        fetch = limit
        if hidden and few:
            fetch += min(len(hidden), limit)
        elif hidden:
            stale = tantivy.Query.term_set_query(self.schema, "rowid", sorted(hidden))
            query = tantivy.Query.boolean_query([(tantivy.Occur.Must, query), (tantivy.Occur.MustNot, stale)])
        found = searcher.search(query, fetch, count=False)
        rowids = searcher.fast_field_values("rowid", [address for _score, address in found.hits])
        return [
            (float(score), rowid)
            for (score, _a), rowid in zip(found.hits, rowids, strict=True)
            if isinstance(rowid, int) and rowid not in hidden
        ][:limit]

    def _docs(self, feed: LexicalFeed, scored: list[tuple[float, int]]) -> list[Doc]:
        if not scored:
            return []
        scores = {rowid: score for score, rowid in scored}
        rows = feed.results(list(scores))
        docs = [{**dict(zip(ROW_COLUMNS, row, strict=True)), "score": scores[row[0]]} for row in rows]
        docs.sort(key=lambda d: d["ts"] or "", reverse=True)  # ties: newest first, as FTS5 orders them
        docs.sort(key=lambda d: -d["score"])
        return docs

    def _avg_len(self, feed: LexicalFeed) -> dict[str, float]:
        """Average field lengths in tokens, from a sample of stored records (refreshed now and then)."""
        now = time.monotonic()
        if self._avg is not None and now - self._avg[0] < AVG_LEN_SECONDS:
            return self._avg[1]
        rows = feed.text_sample(AVG_LEN_SAMPLE)
        sums = {WEIGHTED: 0, FILES: 0}
        for row in rows:
            for column, text in zip(COLUMNS, row, strict=True):
                n = len(self.analyze(text or ""))
                sums[WEIGHTED] += n * self.repeats[column]
                if column == FILES:
                    sums[FILES] += n
        averages = {name: (total / len(rows) if rows else 1.0) for name, total in sums.items()}
        self._avg = (now, averages)
        return averages
