"""SQL the two backends' vector stores share: they differ only in the parameter mark (``mark``:
``?`` for SQLite, ``%s`` for PostgreSQL)."""

from __future__ import annotations


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
