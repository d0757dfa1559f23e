"""Thumbnails at ingest: a small JPEG per image or chip, stored in its document (`fields.THUMBNAIL`).

A portal shows a picture per hit; the archive's own files are often multi-band GeoTIFFs a browser
cannot show, or remote. So the ingest keeps one small JPEG (longest side `--thumbnail-size`, 256 px
by default, quality 80) made from **the same picture the caption stage renders for the VLM**
(`ImageInput.load`: a JPEG/PNG decoded, a raster or chip read decimated and stretched by
`rsrt.ingest.raster.render`, a remote asset from the bytes already fetched), so the image is read once.

`ThumbnailingInput` is an `ImageInput` whose `load` hands the loaded picture to a callback as well:
the captioner loads the images exactly as before, and `Thumbnails` keeps what the callback made until
the pipeline puts it on the record.

Records the VLM does not see still get one when the run can read their image:

* a **cached caption** (`ledger.py`'s caption cache, e.g. a resumed or `--overwrite` run): the image is
  read once for the thumbnail alone (a raster at the thumbnail's size, through its overviews), remote
  assets too — the VLM call is what the cache saves, and that read is the one the run would have made;
* **precomputed captions** (`ingest captions` with image paths, benchmarks): only a local file that
  exists; a missing file or a remote URI gives no thumbnail and no warning (caption files often travel
  without their images, and fetching an archive just for thumbnails is not what such a run is for).

A thumbnail that cannot be made never costs the item: it is indexed without one, with one warning line
in the run's report (`IngestStats.warn`).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from rsrt.search.errors import ConfigError, RsrtError

from .assets import AssetOptions, is_remote
from .captioners.base import ImageInput, ImageLoadError, LoadedImage
from .raster import RasterRead, is_raster_path

if TYPE_CHECKING:
    from PIL import Image

    from rsrt.search.schema import ImageRecord

DEFAULT_THUMBNAIL_SIZE = 256  # longest side in pixels; 0 turns thumbnails off
THUMBNAIL_QUALITY = 80  # JPEG quality: ~8–20 KB at 256 px for aerial scenes (docs/architecture.md)
MAX_THUMBNAIL_SIZE = 2048  # a "thumbnail" larger than this is the image itself: refused as a flag value
MIN_THUMBNAIL_SIZE = 16

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThumbnailOptions:
    """`--thumbnail-size N` (0: none) and the JPEG quality."""

    size: int = DEFAULT_THUMBNAIL_SIZE
    quality: int = THUMBNAIL_QUALITY

    def __post_init__(self) -> None:
        if self.size != 0 and not MIN_THUMBNAIL_SIZE <= self.size <= MAX_THUMBNAIL_SIZE:
            raise ConfigError(f"--thumbnail-size {self.size}: give 0 (no thumbnails) or {MIN_THUMBNAIL_SIZE}–"
                              f"{MAX_THUMBNAIL_SIZE} pixels (the longest side)")
        if not 1 <= self.quality <= 95:
            raise ConfigError(f"thumbnail quality {self.quality}: must be 1–95")

    @property
    def enabled(self) -> bool:
        return self.size > 0


def make_thumbnail(image: Image.Image, options: ThumbnailOptions) -> bytes:
    """`image` as a JPEG whose longest side is at most `options.size` (aspect kept, never enlarged)."""
    from PIL import Image as PILImage

    picture = image if image.mode == "RGB" else image.convert("RGB")
    width, height = picture.size
    scale = min(1.0, options.size / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != picture.size:
        picture = picture.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=options.quality, optimize=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class ThumbnailingInput(ImageInput):
    """An `ImageInput` that also hands the picture it loads to `on_load` (the captioner's read, reused)."""

    on_load: Callable[[str, LoadedImage], None] | None = field(default=None, compare=False, repr=False)

    def load(self) -> LoadedImage:
        loaded = super().load()
        if self.on_load is not None:
            self.on_load(self.image_id, loaded)
        return loaded


class Thumbnails:
    """The thumbnails of one run: made from the captioner's pictures, or read for records it does not see.

    `warn` gets one line per thumbnail that could not be made (the item is indexed without one).
    Thread-safe: the callback runs wherever the captioner loads its images.
    """

    def __init__(self, options: ThumbnailOptions, assets: AssetOptions | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.assets = assets
        self._warn = warn or (lambda line: log.warning("%s", line))
        self._made: dict[str, bytes | None] = {}  # image id -> JPEG (None: its load was seen, the encode failed)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    # -- from the captioner's pictures -------------------------------------------------------------
    def watch(self, inputs: Sequence[ImageInput]) -> list[ImageInput]:
        """The captioner's inputs, each handing its loaded picture to this collector."""
        if not self.enabled:
            return list(inputs)
        return [ThumbnailingInput(**{f.name: getattr(item, f.name) for f in fields(ImageInput)},
                                  on_load=self._loaded) for item in inputs]

    def _loaded(self, image_id: str, loaded: LoadedImage) -> None:
        try:
            jpeg: bytes | None = make_thumbnail(loaded.image, self.options)
        except (OSError, ValueError) as exc:
            jpeg = None
            self._warn(f"thumbnail of {image_id!r}: cannot be encoded ({exc}); indexed without one")
        with self._lock:
            self._made[image_id] = jpeg

    def take(self, record: ImageRecord) -> None:
        """Put the thumbnail made while captioning on `record`; a record whose picture the captioner never
        loaded through `ImageInput.load` (a backend of its own) gets one read of its image instead."""
        with self._lock:
            seen = record.image_id in self._made
            jpeg = self._made.pop(record.image_id, None)
        record.thumbnail = jpeg if seen else self.read(record, local_only=False)

    def forget(self, image_ids: Sequence[str]) -> None:
        """Drop what was made for images that were not captioned (failed, or left for the next run)."""
        with self._lock:
            for image_id in image_ids:
                self._made.pop(image_id, None)

    # -- for records the VLM does not see ----------------------------------------------------------
    def read(self, record: ImageRecord, *, local_only: bool) -> bytes | None:
        """A thumbnail read from the record's image alone (a cached or precomputed caption).

        `local_only`: a remote URI or a local file that does not exist gives None without a warning
        (precomputed captions need no image); any other failure is one warning and None.
        """
        if not self.enabled or not record.source_uri:
            return None
        from .sources.base import uri_to_path

        remote = is_remote(record.source_uri)
        local = None if remote else uri_to_path(record.source_uri)
        if local_only and (remote or local is None or not local.is_file()):
            return None
        if not remote and local is None:
            return None  # a URI scheme rsrt does not read (e.g. gs://): nothing to make it from
        raster = RasterRead.from_properties(record.properties)
        where = record.source_uri if remote else str(local)
        if raster is not None or is_raster_path(where):  # read at the thumbnail's size: the coarsest overview
            raster = replace(raster or RasterRead(), max_side=max(self.options.size, MIN_THUMBNAIL_SIZE))
        try:
            loaded = ImageInput.from_source_uri(record.image_id, record.source_uri, raster, self.assets).load()
            return make_thumbnail(loaded.image, self.options)
        except (ImageLoadError, RsrtError, OSError, ValueError) as exc:
            self._warn(f"thumbnail of {record.image_id!r}: {exc}; indexed without one")
            return None


__all__ = [
    "DEFAULT_THUMBNAIL_SIZE",
    "THUMBNAIL_QUALITY",
    "ThumbnailOptions",
    "ThumbnailingInput",
    "Thumbnails",
    "make_thumbnail",
]
