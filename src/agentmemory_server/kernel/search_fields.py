"""The searchable text of a record and how much each part weighs in BM25.

Every searchable record (retrieval/search.py builds them) has these text columns. The weights
multiply a term's frequency in its column, as SQLite FTS5's ``bm25()`` weights do; the Tantivy
engine applies them when it indexes a record (by repeating a column's tokens), so changing them
means re-indexing (``agentmemory reindex``).

``context`` is the text just before a record in its session: it helps a reply be found by its
question's words, but must never outweigh what the record itself says.
"""

from __future__ import annotations

TEXT_WEIGHTS: dict[str, float] = {"title": 3.0, "body": 1.0, "concepts": 2.0, "files": 1.5, "context": 0.4}
