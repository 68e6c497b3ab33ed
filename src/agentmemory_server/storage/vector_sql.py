"""SQL the two backends' vector stores share: they differ only in the parameter mark (``mark``:
``?`` for SQLite, ``%s`` for PostgreSQL). ``SharedVectorMethods`` holds the store methods whose
SQL is the same in both; each backend's store adds what its engine does its own way (nearest
neighbours, claiming the backlog, loading vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BACKLOG = "embed_backlog"


def _without_vector(mark: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM search_vectors v WHERE v.doc_rowid = d.id AND v.model = {mark})"


def _without_tokens(mark: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM search_tokens t WHERE t.doc_rowid = d.id AND t.model = {mark})"


def missing_vectors_sql(model: str, tokens_model: str | None, mark: str) -> tuple[str, tuple[str, ...]]:
    """A condition true for a search row ``d`` without a vector of ``model`` or, given
    ``tokens_model``, without token vectors of that model; and its parameters."""
    if tokens_model is None:
        return _without_vector(mark), (model,)
    return f"{_without_vector(mark)} OR {_without_tokens(mark)}", (model, tokens_model)


def missing_rowids_sql(model: str, tokens_model: str | None, mark: str) -> tuple[str, tuple[str, ...]]:
    """A query for the next rowids, in order, of search rows that lack a vector of ``model`` or
    token vectors of ``tokens_model``; and the model parameters. Its parameters are the rowid to
    start after, the model parameters, then how many rows at most."""
    missing, params = missing_vectors_sql(model, tokens_model, mark)
    return f"SELECT d.id FROM search_docs d WHERE d.id > {mark} AND ({missing}) ORDER BY d.id LIMIT {mark}", params


def requeue_statements(
    model: str, tokens_model: str | None, everything: bool, mark: str, rowids: int | None = None
) -> list[tuple[str, tuple[str, ...]]]:
    """The INSERTs a reconcile runs, in order, each with its parameters but ``queued_at`` (first),
    the ``rowids`` it is confined to (when a count is given: then after the model parameters)
    and the row limit (last): rows without a current vector get a full embedding (one already
    queued is made due again); then, given ``tokens_model``, rows whose vector is current but
    that lack token vectors get their token vectors only (``tokens_only``; one already queued
    stays as it is). ``everything`` queues every row for a full embedding. (Always a WHERE: SQLite
    needs one before ON CONFLICT in INSERT ... SELECT.)"""
    full = "UPDATE SET attempts = 0, next_try = 0, last_error = NULL, tokens_only = 0"
    steps: list[tuple[str, tuple[str, ...], int]] = (
        [("TRUE", (), 0)] if everything else [(_without_vector(mark), (model,), 0)]
    )
    if tokens_model is not None and not everything:
        steps.append((f"NOT ({_without_vector(mark)}) AND {_without_tokens(mark)}", (model, tokens_model), 1))
    among = f" AND d.id IN ({', '.join([mark] * rowids)})" if rowids else ""
    return [
        (
            f"INSERT INTO embed_backlog (doc_rowid, queued_at, tokens_only) SELECT d.id, {mark}, {tokens_only} "
            f"FROM search_docs d WHERE {where}{among} ORDER BY d.id LIMIT {mark} "
            f"ON CONFLICT (doc_rowid) DO {'NOTHING' if tokens_only else full}",
            params,
        )
        for where, params, tokens_only in steps
    ]


def put_tokens_sql(mark: str) -> str:
    """Store a record's token vectors (rowid, model, tokens, rowid) if its search row exists."""
    return (
        "INSERT INTO search_tokens (doc_rowid, model, tokens) "
        f"SELECT {mark}, {mark}, {mark} WHERE EXISTS (SELECT 1 FROM search_docs WHERE id = {mark}) "
        "ON CONFLICT (doc_rowid) DO UPDATE SET model = excluded.model, tokens = excluded.tokens"
    )


def tokens_sql(count: int, mark: str) -> str:
    """The token vectors of ``count`` rows (their rowids, then the model)."""
    return (
        f"SELECT doc_rowid, tokens FROM search_tokens WHERE doc_rowid IN ({', '.join([mark] * count)}) "
        f"AND model = {mark}"
    )


def queue_sql(mark: str) -> str:
    """Queue a search row (rowid, queued_at); a row already queued is retried from scratch."""
    return (
        f"INSERT INTO embed_backlog (doc_rowid, queued_at) VALUES ({mark}, {mark}) ON CONFLICT (doc_rowid) "
        "DO UPDATE SET queued_at = excluded.queued_at, attempts = 0, next_try = 0, last_error = NULL, tokens_only = 0"
    )


class SharedVectorMethods:
    """``VectorStore`` methods with the same SQL on both backends, on ``conn`` (a sqlite3 or
    psycopg connection: both ``execute`` and return a cursor) with the backlog's ``bounds``."""

    mark: str  # the backend's parameter mark
    no_limit: int | None  # what LIMIT takes for "no limit": -1 in SQLite, NULL in PostgreSQL
    conn: Any
    bounds: Any

    def _backlog_size(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM embed_backlog").fetchone()[0])

    def backlog_put(self, rowid: int, now: str) -> bool:
        """Queue one search row for (re-)embedding; a queued row is retried from scratch. False:
        the backlog is at its bound and the row was shed (``backlog_requeue_missing`` finds it)."""
        if not self.bounds.admit(BACKLOG, self._backlog_size):
            return False
        self.conn.execute(queue_sql(self.mark), (rowid, now))
        return True

    def backlog_room(self) -> int | None:
        """How many more rows the backlog takes (a fresh count), or None when it is unbounded."""
        return self.bounds.room(BACKLOG, self._backlog_size)

    def backlog_at_least(self, count: int) -> bool:
        """Do ``count`` or more records wait (reads at most that many index entries)?"""
        return self.conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM embed_backlog LIMIT 1 OFFSET {self.mark})", (max(0, count - 1),)
        ).fetchone()[0] in (1, True)

    def backlog_requeue_missing(
        self,
        model: str,
        now: str,
        *,
        everything: bool = False,
        limit: int | None = None,
        tokens_model: str | None = None,
        rowids: Sequence[int] | None = None,
    ) -> int:
        """Queue search rows without a vector of ``model`` (or every row: a deliberate re-embed,
        not held to the backlog's bound), at most ``limit`` (and, for missing rows, as many as the
        bound leaves room for: the rest are found again once the backlog drained); given
        ``rowids``, only those of them. Returns how many."""
        among = tuple(rowids or ())
        if rowids is not None and not among:
            return 0
        room = None if everything else self.bounds.room(BACKLOG, self._backlog_size)
        limit = room if limit is None else limit if room is None else min(limit, room)
        queued = 0
        for sql, params in requeue_statements(model, tokens_model, everything, self.mark, len(among)):
            if limit is not None and queued >= limit:
                break
            bound = self.no_limit if limit is None else limit - queued
            queued += self.conn.execute(sql, (now, *params, *among, bound)).rowcount
        self.bounds.room(BACKLOG, self._backlog_size)  # recount: the upsert does not say what was new
        return queued

    def put_tokens(self, rowid: int, model: str, tokens: bytes) -> bool:
        """A record's token vectors, if its search row still exists; False when it is gone."""
        return self.conn.execute(put_tokens_sql(self.mark), (rowid, model, tokens, rowid)).rowcount > 0

    def tokens(self, rowids: Sequence[int], model: str) -> dict[int, bytes]:
        """The stored token vectors of ``model`` for those of ``rowids`` that have them."""
        if not rowids:
            return {}
        rows = self.conn.execute(tokens_sql(len(rowids), self.mark), (*rowids, model))
        return {int(rowid): bytes(blob) for rowid, blob in rows}

    def counts(self) -> dict[str, int]:
        """Vectors per ``model/dim``."""
        rows = self.conn.execute("SELECT model || '/' || dim, count(*) FROM search_vectors GROUP BY model, dim")
        return {key: int(n) for key, n in rows}

    def missing_rowids(self, model: str, tokens_model: str | None, after: int, limit: int) -> list[int]:
        sql, params = missing_rowids_sql(model, tokens_model, self.mark)
        return [int(row[0]) for row in self.conn.execute(sql, (after, *params, limit))]

    def missing(self, model: str, tokens_model: str | None = None) -> int:
        """Search rows with no vector of ``model`` (or no token vectors of ``tokens_model``) and no
        backlog entry (lost work)."""
        missing, params = missing_vectors_sql(model, tokens_model, self.mark)
        return int(
            self.conn.execute(
                f"SELECT count(*) FROM search_docs d WHERE ({missing}) AND NOT EXISTS "
                "(SELECT 1 FROM embed_backlog b WHERE b.doc_rowid = d.id)",
                params,
            ).fetchone()[0]
        )
