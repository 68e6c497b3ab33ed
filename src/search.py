"""Where search lives: ``agentmemory_server.retrieval``.

``retrieval/search.py`` decides what is indexed and fuses BM25 with vectors; ``retrieval/vectors.py``
is the vector index, ``retrieval/embeddings.py`` the embedders, ``retrieval/recall.py`` the search
tools and ``retrieval/context.py`` the context block. This module only re-exports the entry points.
"""

from agentmemory_server.retrieval.search import hybrid, index_record, query_terms

__all__ = ["hybrid", "index_record", "query_terms"]
