"""SQL the two backends' vector stores share: they differ only in the parameter mark."""

from __future__ import annotations


def missing_vectors_sql(model: str, tokens_model: str | None, mark: str) -> tuple[str, tuple[str, ...]]:
    """A condition true for a search row ``d`` without a vector of ``model`` or, given
    ``tokens_model``, without token vectors of that model; and its parameters."""
    clause = f"NOT EXISTS (SELECT 1 FROM search_vectors v WHERE v.doc_rowid = d.id AND v.model = {mark})"
    if tokens_model is None:
        return clause, (model,)
    tokens = f"NOT EXISTS (SELECT 1 FROM search_tokens t WHERE t.doc_rowid = d.id AND t.model = {mark})"
    return f"{clause} OR {tokens}", (model, tokens_model)


def requeue_steps(
    model: str, tokens_model: str | None, everything: bool, mark: str
) -> list[tuple[str, tuple[str, ...], int]]:
    """What a reconcile queues, in order, as (condition on search row ``d`` or "" for every row,
    its parameters, the ``tokens_only`` value): rows without a current vector (a full embedding;
    one already queued is made due again), then, given ``tokens_model``, rows whose vector is
    current but that lack token vectors (their token vectors only; one already queued stays as
    it is)."""
    if everything:
        return [("", (), 0)]
    steps = [missing_vectors_sql(model, None, mark) + (0,)]
    if tokens_model is not None:
        tokens = f"NOT EXISTS (SELECT 1 FROM search_tokens t WHERE t.doc_rowid = d.id AND t.model = {mark})"
        steps.append((f"NOT ({steps[0][0]}) AND {tokens}", (model, tokens_model), 1))
    return steps
