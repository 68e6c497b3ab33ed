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
