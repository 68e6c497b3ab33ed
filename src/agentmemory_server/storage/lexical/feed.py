"""What a lexical engine kept outside the database needs from a backend: its change feed.

Every change to a search row appends the row's id to an outbox in the same transaction (id -1
marks a wipe of every row). An engine applies the outbox in sequence order, remembers inside its
own commit how far it got, and reads the rows it indexes through the same feed. A feed is bound
to one connection (a reader, or the caller's transaction, which then sees its own writes).

Row shapes (tuples, in this column order):

- ``Document``: rowid, kind, type, project, agent_id, session_id, ts, active, global, then the
  five text columns (title, body, concepts, files, context);
- ``Result``: rowid, doc_id, kind, scope, key, session_id, project, ts;
- ``Pending``: rowid, doc_id, kind, scope, key, session_id, project, agent_id, type, ts, active,
  global, then the five text columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Row = Sequence[Any]


class LexicalFeed(Protocol):
    def has_docs(self) -> bool:
        """Whether any search row exists."""
        ...

    def newest_seq(self) -> int:
        """The highest outbox sequence (0 when the outbox is empty)."""
        ...

    def entries_pending(self, committed_seq: int, seen_seq: int, limit: int) -> list[tuple[int, int]] | None:
        """(seq, rowid) outbox entries after ``seen_seq``, in order; None when more than
        ``limit`` entries follow ``committed_seq`` (a search's catch-up: one statement)."""
        ...

    def entries_after(self, seq: int, limit: int | None = None) -> list[tuple[int, int]]:
        """(seq, rowid) outbox entries after ``seq``, in order."""
        ...

    def documents(self, rowids: Sequence[int]) -> list[Row]:
        """``Document`` rows of these ids (active or not; missing ids are left out)."""
        ...

    def documents_after(self, after_rowid: int, limit: int) -> list[Row]:
        """Active ``Document`` rows after ``after_rowid`` in id order (a rebuild)."""
        ...

    def active_count(self) -> int: ...

    def results(self, rowids: Sequence[int]) -> list[Row]:
        """``Result`` rows of the active rows among ``rowids``."""
        ...

    def pending(self, rowids: Sequence[int]) -> list[Row]:
        """``Pending`` rows of these ids."""
        ...

    def text_sample(self, size: int) -> list[Row]:
        """The five text columns of about ``size`` rows from a random place (average lengths)."""
        ...

    def pruned_through(self) -> int:
        """The highest sequence already deleted from the outbox (0: none)."""
        ...

    def applied(self, node: str, seq: int, now: float, *, keep_seconds: float) -> None:
        """Record that ``node``'s committed index holds the outbox through ``seq``, and delete
        the entries every live node holds that are older than ``keep_seconds`` (searchers of the
        same node that have not reloaded yet still read them). Needs a writable unit."""
        ...
