"""`open_source()`: the source for a path, by kind or detected.

It imports every path-opened source class, which all import `base`; keeping it out of `base`
keeps the dependency one way (base ← sources ← open).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rsrt.search.errors import ConfigError

from ..assets import AssetOptions, is_remote
from .base import (
    IMAGE_EXTENSIONS,
    JSONL_EXTENSIONS,
    STAC_JSON_EXTENSIONS,
    STAC_ROOT_NAMES,
    Source,
    SourceError,
)
from .captions_jsonl import CaptionsJsonlSource
from .folder import FolderSource
from .stac import StacSource

# The kinds `open_source` accepts: "auto" (detect) and the `kind` of each source opened by a path.
# Every source class names its kind; "benchmark" (`CaptionListSource`) is not here because a
# benchmark split is opened by name and split (`CaptionListSource.load`), not by a path.
SOURCE_KINDS: tuple[str, ...] = ("auto", FolderSource.kind, StacSource.kind, CaptionsJsonlSource.kind)
_KIND_ALIASES = {"jsonl": "captions", "images": "folder", "dir": "folder"}


def open_source(path: str | Path, kind: str = "auto", *, assets: AssetOptions | None = None, **opts: Any) -> Source:
    """The source for `path`: `kind` is "auto", "folder", "stac" or "captions" ("jsonl").

    A URL (http(s), s3) is a STAC file: a static catalog published online (a STAC API is
    `StacApiSource`). Auto-detection: a directory holding `catalog.json`/`collection.json` → STAC; any other
    directory → folder of images; `.jsonl`/`.ndjson` → precomputed captions; `.json`/`.geojson`
    whose `type` is Catalog, Collection, FeatureCollection (of STAC items) or Feature → STAC.
    `opts` go to the source's constructor (e.g. `collection=`); `raster=` (how images are rendered
    and chipped) only to the image sources; `assets=` (timeout, retries, S3 endpoint for remote
    assets) only to STAC, whose assets may be URLs (a folder is local, caption files hold no pixels).
    """
    stac_opts = {**opts, "assets": assets}
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")
    if is_remote(str(path)):  # a URL: only a static STAC catalog / collection / item (collection) file
        if kind not in ("auto", "stac"):
            raise SourceError(f"{path}: a {kind} source must be local; only STAC files may be given as URLs")
        return StacSource(str(path), **stac_opts)
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"{p}: no such file or directory")
    if kind == "folder":
        return FolderSource(p, **opts)
    if kind == "stac":
        return StacSource(p, **stac_opts)
    if kind == "captions":
        return CaptionsJsonlSource(p, **_without_raster(opts))

    if p.is_dir():
        for name in STAC_ROOT_NAMES:
            if (p / name).is_file():
                return StacSource(p / name, **stac_opts)
        return FolderSource(p, **opts)
    suffix = p.suffix.lower()
    if suffix in JSONL_EXTENSIONS:
        return CaptionsJsonlSource(p, **_without_raster(opts))
    if suffix in STAC_JSON_EXTENSIONS:
        return StacSource(p, **stac_opts)
    if suffix in IMAGE_EXTENSIONS:
        raise SourceError(
            f"{p}: is a single image; give the directory that holds the images "
            "(or a STAC catalog / item collection, or a .jsonl of captions)"
        )
    raise SourceError(
        f"{p}: cannot tell what this is; expected a directory of images "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}), a STAC catalog.json / collection.json / "
        "item collection (.json, .geojson), or precomputed captions (.jsonl)"
    )


def _without_raster(opts: dict[str, Any]) -> dict[str, Any]:
    """Caption files hold no pixels: raster and asset options do not concern them."""
    return {key: value for key, value in opts.items() if key not in ("raster", "assets")}
