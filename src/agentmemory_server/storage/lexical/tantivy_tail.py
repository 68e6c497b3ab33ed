"""The records Tantivy has not committed yet, searchable at once.

A Tantivy commit costs tens of milliseconds (it syncs files to disk), so the index commits about
once a second; until then a new record lives only in the database and its outbox. Each
process keeps those pending records in a small in-memory inverted index (this module) and
scores them with the BM25 formula Tantivy uses, taking document frequencies from the committed
index, so a record is found by the next search after its write is acknowledged. Pending records
also hide their committed, older versions (an edit, a deletion, a deactivation).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentmemory_server.similarity import KEYS_VERSION, band_keys
from agentmemory_server.storage.lexical.feed import LexicalFeed

# The text columns of a search row, in storage order.
COLUMNS = ("title", "body", "concepts", "files", "context")
# Index fields: every column in one weighted field (FTS5's bm25 semantics: one idf and one
# document length over all columns), and the file paths alone, with positions, for path phrases.
WEIGHTED, FILES = "text", "files"
# The MinHash band keys of the body (similarity.band_keys) of these kinds of record: remember
# finds a memory's near-duplicates by the keys they share instead of a long BM25 query.
NEAR_DUP = f"near_dup_v{KEYS_VERSION}"  # new keys, new field: an index with other keys is rebuilt
SIGNED_KINDS = frozenset({"memory"})


def column_repeats(weights: Mapping[str, float]) -> dict[str, int]:
    """How many times each column's tokens go into the weighted field: its weight relative to
    the lightest column, rounded up (FTS5 multiplies term frequencies the same way). Measured on
    LoCoMo (bench/locomo.py, BM25 only): within a point of FTS5's R@10 and NDCG@10."""
    positive = [w for w in weights.values() if w > 0] or [1.0]
    base = min(positive)
    return {c: math.ceil(weights.get(c, 1.0) / base - 1e-9) if weights.get(c, 1.0) > 0 else 0 for c in COLUMNS}


# Tantivy's BM25 constants.
K1, B = 1.2, 0.75


@dataclass
class PendingDoc:
    rowid: int
    meta: dict[str, Any]
    terms: dict[str, Counter[Any]] = field(default_factory=dict)  # field -> token (or band key) counts
    tokens: dict[str, list[str]] = field(default_factory=dict)  # field -> tokens (files only, for phrases)
    lengths: dict[str, int] = field(default_factory=dict)  # field -> token count

    def length(self, name: str) -> int:
        return self.lengths.get(name, 0)


def passes(meta: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """The index filters (see ``SearchIndex``) evaluated on one record's metadata."""
    get = filters.get
    if get("kinds") and meta["kind"] not in filters["kinds"]:
        return False
    if get("types") and meta["type"] not in filters["types"]:
        return False
    if get("project") is not None and meta["project"] != filters["project"] and not meta["global"]:
        return False
    if get("agent_id") is not None and meta["agent_id"] != filters["agent_id"]:
        return False
    if get("session_ids") is not None and meta["session_id"] not in filters["session_ids"]:
        return False
    if get("exclude_session") is not None and meta["session_id"] == filters["exclude_session"]:
        return False
    if get("months") and _month(meta["ts"]) not in filters["months"]:
        return False
    if get("since") is not None and (meta["ts"] or "") < filters["since"]:
        return False
    return not (get("until") is not None and (meta["ts"] or "") > filters["until"])


def _month(ts: str | None) -> int | None:
    try:
        return int((ts or "")[5:7])
    except ValueError:
        return None


class Statistics:
    """What BM25 needs from the whole corpus: document count, per-field document frequencies
    (the committed index's plus the pending records') and average field lengths."""

    def __init__(
        self,
        num_docs: int,
        doc_freq: Callable[[str, str], int],
        avg_len: Mapping[str, float],
        pending: PendingIndex,
    ):
        self.num_docs = num_docs + pending.live_count
        self._doc_freq = doc_freq
        self._pending = pending
        self.avg_len = avg_len
        self._idf: dict[tuple[str, str], float] = {}

    def idf(self, name: str, token: str) -> float:
        key = (name, token)
        if key not in self._idf:
            df = self._doc_freq(name, token) + len(self._pending.postings.get(key, ()))
            self._idf[key] = math.log(1.0 + (self.num_docs - df + 0.5) / (df + 0.5))
        return self._idf[key]


class PendingIndex:
    """Pending records by rowid, refreshed from ``lexical_outbox`` on every search, with an
    inverted index (field, token) -> rowids so a search scores only the records holding one of
    its tokens, and document frequencies come without a pass over the records."""

    def __init__(self, analyze: Callable[[str], list[str]], repeats: Mapping[str, int]):
        self.analyze = analyze
        self.repeats = repeats
        self.docs: dict[int, PendingDoc | None] = {}  # None: deleted or inactive, hides the committed copy
        # (field, token) -> {rowid: tf}; the tokens of NEAR_DUP are band keys (integers)
        self.postings: dict[tuple[str, str | int], dict[int, int]] = {}
        self.live_count = 0
        self._loaded: dict[int, int] = {}  # rowid -> outbox seq it was loaded at
        self.seen_seq = 0

    def sync(self, feed: LexicalFeed, committed_seq: int, limit: int) -> bool:
        """Catch up with the outbox after ``committed_seq``; False when more than ``limit``
        records are pending (the caller answers from another engine meanwhile)."""
        for rowid in [r for r, seq in self._loaded.items() if seq <= committed_seq]:
            self._loaded.pop(rowid)
            self._put(rowid, None, keep=False)
        self.seen_seq = max(self.seen_seq, committed_seq)
        entries = feed.entries_pending(committed_seq, self.seen_seq, limit)
        if entries is None:
            return False
        changed: dict[int, int] = {}
        for seq, rowid in entries:
            changed[rowid] = seq
            self.seen_seq = max(self.seen_seq, seq)
        if changed:
            self._load(feed, changed)
        return True

    def _put(self, rowid: int, doc: PendingDoc | None, *, keep: bool = True) -> None:
        """Replace what is held for ``rowid`` (``keep``: remember it even as None, to hide the
        committed copy), keeping the postings and the live count in step."""
        # Every write passes here in every process (twice: loaded, then dropped once committed),
        # so the loops stay plain: no empty dict made per token just to be thrown away.
        postings = self.postings
        old = self.docs.pop(rowid, None)
        if old is not None:
            self.live_count -= 1
            for name, counts in old.terms.items():
                for token in counts:
                    key = (name, token)
                    rowids = postings.get(key)
                    if rowids is not None:
                        rowids.pop(rowid, None)
                        if not rowids:
                            del postings[key]
        if not keep:
            return
        self.docs[rowid] = doc
        if doc is not None:
            self.live_count += 1
            for name, counts in doc.terms.items():
                for token, tf in counts.items():
                    key = (name, token)
                    rowids = postings.get(key)
                    if rowids is None:
                        postings[key] = {rowid: tf}
                    else:
                        rowids[rowid] = tf

    def _load(self, feed: LexicalFeed, changed: dict[int, int]) -> None:
        rowids = [r for r in changed if r >= 0]
        found: dict[int, PendingDoc] = {}
        for start in range(0, len(rowids), 500):
            for row in feed.pending(rowids[start : start + 500]):
                found[row[0]] = self._pending_doc(row)
        for rowid, seq in changed.items():
            if rowid < 0:
                continue  # a wipe marker: the applier clears the index; nothing to score here
            doc = found.get(rowid)
            self._put(rowid, doc if doc is not None and doc.meta["active"] else None)
            self._loaded[rowid] = seq

    def _pending_doc(self, row: Sequence[Any]) -> PendingDoc:
        keys = (
            "rowid",
            "doc_id",
            "kind",
            "scope",
            "key",
            "session_id",
            "project",
            "agent_id",
            "type",
            "ts",
            "active",
            "global",
        )
        meta = dict(zip(keys, row[:12], strict=True))
        doc = PendingDoc(int(row[0]), meta)
        weighted: Counter[str] = Counter()
        for column, text in zip(COLUMNS, row[12:], strict=True):
            if not text:
                continue
            tokens = self.analyze(text)
            for _ in range(self.repeats[column]):  # a column weighted n counts its tokens n times
                weighted.update(tokens)
            if column == FILES:
                doc.terms[FILES] = Counter(tokens)
                doc.tokens[FILES] = tokens
        doc.terms[WEIGHTED] = weighted
        doc.lengths = {name: sum(counts.values()) for name, counts in doc.terms.items()}
        if meta["kind"] in SIGNED_KINDS:
            doc.terms[NEAR_DUP] = Counter(band_keys(row[12 + COLUMNS.index("body")] or ""))
        return doc

    @property
    def hidden(self) -> set[int]:
        """Rowids whose committed copy (if any) is out of date."""
        return set(self.docs)

    def _holding(self, tokens: Sequence[str], names: Sequence[str]) -> list[PendingDoc]:
        """The live pending records holding any of ``tokens`` in any of the fields ``names``."""
        rowids: set[int] = set()
        for name in names:
            for token in tokens:
                rowids.update(self.postings.get((name, token), ()))
        return [doc for rowid in rowids if (doc := self.docs.get(rowid)) is not None]

    def score(
        self, tokens: Sequence[str], weights: Mapping[str, float], stats: Statistics, filters: Mapping[str, Any]
    ) -> list[tuple[float, PendingDoc]]:
        """BM25 (Tantivy's formula: per field, boosted, summed) of each pending record.

        Walks the postings of the query's tokens rather than every token of every candidate: a
        long query (remember's supersede check reads a whole memory) against a busy second's
        worth of records is thousands of (record, token) pairs, most of which do not match."""
        totals: dict[int, float] = {}
        times = Counter(tokens)  # a repeated query token counts again, as in Tantivy's query
        for name, boost in weights.items():
            avg_len = max(stats.avg_len.get(name, 1.0), 1.0)
            norms: dict[int, float] = {}  # BM25's length normalisation, once per record and field
            for token, repeats in times.items():
                postings = self.postings.get((name, token))
                if not postings:
                    continue
                weight = boost * stats.idf(name, token) * (K1 + 1) * repeats
                for rowid, tf in postings.items():
                    norm = norms.get(rowid)
                    if norm is None:
                        doc = self.docs.get(rowid)
                        length = doc.lengths.get(name, 0) if doc is not None else 0
                        norm = norms[rowid] = K1 * (1 - B + B * length / avg_len)
                    totals[rowid] = totals.get(rowid, 0.0) + weight * tf / (tf + norm)
        hits = []
        for rowid, total in totals.items():
            doc = self.docs[rowid]
            if total > 0 and doc is not None and passes(doc.meta, filters):
                hits.append((total, doc))
        return hits

    def sharing_keys(self, keys: Sequence[int], filters: Mapping[str, Any]) -> list[tuple[int, PendingDoc]]:
        """(keys shared, record) of each live pending record holding one of the band ``keys``."""
        shared: Counter[int] = Counter()
        for key in set(keys):
            shared.update(self.postings.get((NEAR_DUP, key), ()))
        return [(n, doc) for rowid, n in shared.items() if (doc := self.docs.get(rowid)) and passes(doc.meta, filters)]

    def files_matching(self, phrases: Sequence[Sequence[str]], filters: Mapping[str, Any]) -> list[PendingDoc]:
        """Pending records whose files field holds one of the token phrases."""
        found = []
        for doc in self._holding([p[0] for p in phrases if p], [FILES]):
            tokens = doc.tokens.get(FILES, [])
            if passes(doc.meta, filters) and any(_contains(tokens, list(p)) for p in phrases if p):
                found.append(doc)
        return found


def _contains(tokens: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(tokens[i : i + n] == phrase for i in range(len(tokens) - n + 1))
