"""A disk cache of embeddings for benchmarks: repeated runs over the same corpus embed nothing.

Wraps a runtime's embedder (``CachedEmbedder(inner, directory)``); vectors are keyed by the
model id, whether the text is a query, and the sha256 of the text, and kept in one SQLite file
per model under ``directory`` (by default ``$TMPDIR/agentmemory-bench-cache``). Only benchmarks
use it: the product embeds every record exactly once anyway. Never commit the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def default_dir() -> Path:
    return Path(os.environ.get("AGENTMEMORY_BENCH_CACHE") or Path(tempfile.gettempdir()) / "agentmemory-bench-cache")


class CachedEmbedder:
    """Same interface as the product's embedders (``model_id``, ``dim``, ``embed``)."""

    def __init__(self, inner: Any, directory: Path | None = None):
        self.inner = inner
        self.model_id, self.dim = inner.model_id, inner.dim
        directory = directory or default_dir()
        directory.mkdir(parents=True, exist_ok=True)
        # The token limit changes the vectors but not the model id: a file per limit.
        tokens = getattr(inner, "max_tokens", None)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_id + (f"-t{tokens}" if tokens else ""))
        self._db = sqlite3.connect(directory / f"{name}-{self.dim}.sqlite3", check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, v BLOB)")
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _key(self, text: str, query: bool) -> str:
        return ("q:" if query else "d:") + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        keys = [self._key(t, query) for t in texts]
        with self._lock:
            found = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, v FROM vec WHERE key IN ({marks})", chunk).fetchall())
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if missing:
            fresh = self.inner.embed([texts[i] for i in missing], query=query)
            with self._lock:
                self._db.executemany(
                    "INSERT OR REPLACE INTO vec VALUES (?, ?)",
                    [(keys[i], np.asarray(v, dtype="<f4").tobytes()) for i, v in zip(missing, fresh, strict=True)],
                )
                self._db.commit()
            out[missing] = fresh
        for i, key in enumerate(keys):
            if key in found:
                out[i] = np.frombuffer(found[key], dtype="<f4")
        return out

    def __getattr__(self, name: str) -> Any:  # anything else the service asks of its embedder
        return getattr(self.inner, name)


class CachedCrossEncoder:
    """A cross-encoder's (query, text) scores cached on disk the same way: a grid over how the
    scores are used (depth, weight) scores each pair once."""

    def __init__(self, inner: Any, directory: Path | None = None):
        self.inner = inner
        directory = directory or default_dir()
        directory.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", inner.model_id)
        self._db = sqlite3.connect(directory / f"{name}-pairs.sqlite3", check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS score (key TEXT PRIMARY KEY, v REAL)")
        self._lock = threading.Lock()

    def score(self, query: str, texts: Sequence[str], workers: int = 1) -> np.ndarray:
        from agentmemory_server.retrieval import rerank

        # A pair cut to another length is another input; "1" = one pair per model call (scores
        # from padded batches, the earlier way, are not reused).
        cut = f"{rerank.MAX_PAIR_TOKENS}:1\x00"
        keys = [hashlib.sha256(f"{cut}{query}\x00{t}".encode("utf-8", "replace")).hexdigest() for t in texts]
        with self._lock:
            marks = ",".join("?" * len(keys))
            found = dict(self._db.execute(f"SELECT key, v FROM score WHERE key IN ({marks})", keys).fetchall())
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            fresh = self.inner.score(query, [texts[i] for i in missing], workers=workers)
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO score VALUES (?, ?)",
                                     [(keys[i], float(v)) for i, v in zip(missing, fresh, strict=True)])
                self._db.commit()
            found.update({keys[i]: float(v) for i, v in zip(missing, fresh, strict=True)})
        return np.array([found[k] for k in keys], dtype=np.float32)
