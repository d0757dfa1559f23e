"""The sentence encoder: resolved offline by name, weights verified, recorded with the index.

Where a name's files come from (a local directory, a packaged model — `all-MiniLM-L6-v2`, the default — or
the hub) is `models.py`. Backends (torch, torch-int8, onnx, onnx-int8; an argument, default torch — the CLI
reads RSRT_ENCODER_BACKEND as the default of --encoder-backend) trade a little accuracy for CPU speed; the
ONNX machinery lives in `encoder_onnx.py`, imported only when asked for.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, RsrtError
from .models import PACKAGED, canonical_name, model_cache_dir, packaged_model_path, resolve_model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .encoder_onnx import OnnxEncoder

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# How vectors are computed: sentence-transformers on torch (fp32, or Linear layers dynamically quantised to
# int8), or the transformer exported to ONNX and run by onnxruntime (fp32, or int8 weights); all but torch: CPU.
BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")
# Texts per forward pass. On a CPU a small batch wastes less padding: on 58-word VLM variants MiniLM ran
# 66.0 texts/s at 32 against 57.5 at 128 (torch), 117.3 against 92.9 (onnx-int8); docs/performance/e2e-torch.
DEFAULT_BATCH_SIZE = 32
DEFAULT_BACKEND = "torch"

# Re-exported: callers import the packaged models and the resolver from here too.
__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "DEFAULT_BATCH_SIZE", "DEFAULT_ENCODER", "PACKAGED", "Encoder", "canonical_name",
    "check_backend", "get_encoder", "packaged_model_path", "resolve_model",
]


def check_backend(backend: str, source: str = "encoder backend") -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"{source} {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    return backend


def _feed_forward(name: str) -> bool:
    """BERT/MPNet naming: `layer.N.intermediate.dense` and `layer.N.output.dense` (not `attention.output`)."""
    return ".intermediate." in name or (name.endswith(".output.dense") and ".attention." not in name)


def _quantise_torch(model: SentenceTransformer) -> SentenceTransformer:
    """Dynamic int8 Linear layers (weights per output channel) in attention; the feed-forward layers stay float.

    Why not all of them: torch's x86 kernels quantise activations to 7 bits per tensor (AVX2 without VNNI
    saturates at 8), and the feed-forward activations have outliers. Quantising every Linear is ~1.4x faster but
    drops the cosine to the torch backend to ~0.92 on very short texts and ~0.96 on some captions; this keeps
    it ≥ 0.97 for a smaller gain. The onnx-int8 backend quantises everything at better accuracy.
    """
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not _feed_forward(name)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, once per load
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


class Encoder:
    """Texts → L2-normalised float32 vectors; thread-safe, loaded lazily once.

    `backend` picks the runtime (see BACKENDS); every backend of one model yields near-identical vectors,
    so an index records the backend for information only and compares encoders by name.
    """

    def __init__(self, name: str = DEFAULT_ENCODER, device: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 backend: str = DEFAULT_BACKEND, threads: int | None = None) -> None:
        self.name, self._location = resolve_model(name)
        self.backend = check_backend(backend)
        if self.backend != "torch" and device not in (None, "cpu"):
            raise ConfigError(f"encoder backend {self.backend} runs on the CPU only, not on {device!r}")
        self.device = device
        self.batch_size = batch_size
        self.threads = threads  # onnx backends: intra-op threads, default every core this process may use
        self._model: SentenceTransformer | None = None
        self._onnx: OnnxEncoder | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model (torch backends; the int8 one has quantised Linear layers)."""
        if self.backend.startswith("onnx"):
            raise ConfigError(f"encoder backend {self.backend} has no SentenceTransformer; use encode()")
        with self._lock:
            if self._model is None:
                self._model = self._load_torch()
            return self._model

    def _load_torch(self) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bars in CLI output

        local = Path(self._location).is_dir()
        device = "cpu" if self.backend == "torch-int8" else self.device
        model = SentenceTransformer(self._location, device=device, local_files_only=local)
        if self.backend == "torch-int8":
            model = _quantise_torch(model)
        return model

    @property
    def onnx_encoder(self) -> OnnxEncoder:
        with self._lock:
            if self._onnx is None:
                from .encoder_onnx import OnnxEncoder

                spec = PACKAGED.get(self.name)
                self._onnx = OnnxEncoder(self.name, self._location, model_cache_dir(),
                                         quantized=self.backend == "onnx-int8",
                                         weights_sha256=spec.weights_sha256 if spec else None,
                                         threads=self.threads)
            return self._onnx

    @property
    def dimension(self) -> int:
        if self._model is None and self._onnx is None and self.name in PACKAGED:
            return PACKAGED[self.name].dimension
        if self.backend.startswith("onnx"):
            return self.onnx_encoder.dimension
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise RsrtError(f"encoder {self.name} does not report its embedding dimension")
        return int(dim)

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.backend.startswith("onnx"):
            return self.onnx_encoder.encode(list(texts), batch_size or self.batch_size)
        vectors = self.model.encode(texts, batch_size=batch_size or self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def info(self) -> dict[str, object]:
        """What gets recorded in the index's _meta; only `name` decides compatibility (see create_index)."""
        return {"name": self.name, "dimension": self.dimension, "normalized": True, "backend": self.backend}


_shared: dict[tuple[str, str], Encoder] = {}
_shared_lock = threading.Lock()


def get_encoder(name: str = DEFAULT_ENCODER, backend: str = DEFAULT_BACKEND) -> Encoder:
    """One encoder per (name, backend) per process (loading costs seconds and hundreds of MB)."""
    key = (canonical_name(name), check_backend(backend))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Encoder(key[0], backend=key[1])
        return _shared[key]
