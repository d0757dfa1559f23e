"""A raster file (GeoTIFF/COG of any band count and dtype) → an 8-bit RGB PIL image of bounded size.

Earth-observation scenes are 4–13 bands of uint16 or float, thousands of pixels wide; a VLM wants
one small 8-bit RGB picture. This module is that one step, in three parts:

* **which bands**: `--bands 4,3,2` (1-based, like GDAL), else the STAC `eo:bands` common names
  red/green/blue (the source resolves them), else the file's band descriptions or colour
  interpretation (red/green/blue), else the first three bands; one band is shown as grey (a
  paletted band through its colour table). Alpha bands are never picked as colours.
* **how values become 0–255** (`Stretch`): per-band percentiles (`p2,98`, the default for
  anything that is not uint8), a fixed range for every band (`0,3000`), or `none` (values are
  taken as 0–255, the default for uint8). When the STAC item gives `raster:bands` scale/offset,
  values are converted to physical units first, so a fixed range is in those units (e.g.
  `0,0.3` reflectance); percentiles are unchanged by such a linear map.
* **how much is read**: a decimated read (`out_shape`) so the longest side is at most `max_side`;
  GDAL then reads the coarsest overview that is still fine enough, so a 10,980-px COG is never
  read at full resolution for a 1,024-px picture. A window (a chip of a scene) is read alone.

Pixels that are nodata (the file's, or the item's `raster:bands` nodata), NaN, or transparent by
the alpha band or mask are left out of the percentiles and shown black.

What was done for an image is recorded on its record as the `rsrt:raster` property (`RasterRead`),
which the caption stage turns back into the same read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rsrt.search.errors import ConfigError

from .assets import AssetOptions, is_remote, open_raster

DEFAULT_MAX_SIDE = 1024  # longest side of the picture handed to the VLM
DEFAULT_PERCENTILES = (2.0, 98.0)
_PERCENTILE_SAMPLE = 65_536  # valid pixels per band the percentiles are taken from (a regular sample)
RASTER_PROPERTY = "rsrt:raster"  # the record property holding a `RasterRead`
SCENE_PROPERTY = "rsrt:scene"  # on a chip: the id of the scene it was cut from
COMMON_RGB = ("red", "green", "blue")

Window = tuple[int, int, int, int]  # col_off, row_off, width, height (pixels of the full-resolution raster)


class RasterReadError(ValueError):
    """A raster that cannot be rendered as asked (bands out of range, unreadable); the message says why."""


# ---------------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class Stretch:
    """How band values become 0–255.

    `kind` is "auto" (none for uint8, percentiles 2–98 otherwise), "percentile" (`low`, `high`
    are percentiles of each band's valid pixels), "fixed" (`low`, `high` are values, the same
    for every band) or "none" (values clipped to 0–255).
    """

    kind: str = "auto"
    low: float = DEFAULT_PERCENTILES[0]
    high: float = DEFAULT_PERCENTILES[1]

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "percentile", "fixed", "none"):
            raise ConfigError(f"stretch kind must be auto, percentile, fixed or none, not {self.kind!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ConfigError(f"stretch {self}: the low end must be below the high end")
        if self.kind == "percentile" and not (0.0 <= self.low < self.high <= 100.0):
            raise ConfigError(f"stretch {self}: percentiles must be within 0–100")

    @classmethod
    def parse(cls, text: str) -> Stretch:
        """`auto`, `none`, `p2,98` (percentiles) or `0,3000` (a fixed range); ConfigError otherwise."""
        value = text.strip().lower()
        if value in ("auto", "none"):
            return cls(value)
        kind = "fixed"
        if value.startswith("p"):
            kind, value = "percentile", value[1:]
        parts = value.split(",")
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            raise ConfigError(
                f"--stretch {text!r}: expected auto, none, pLOW,HIGH (percentiles, e.g. p2,98) "
                "or MIN,MAX (a fixed range, e.g. 0,3000)"
            ) from None
        return cls(kind, low, high)

    def resolved(self, dtype: str) -> Stretch:
        """`auto` made concrete for a dtype: uint8 is shown as it is, everything else stretched."""
        if self.kind != "auto":
            return self
        return Stretch("none") if dtype == "uint8" else Stretch("percentile", *DEFAULT_PERCENTILES)

    def __str__(self) -> str:
        if self.kind in ("auto", "none"):
            return self.kind
        prefix = "p" if self.kind == "percentile" else ""
        return f"{prefix}{self.low:g},{self.high:g}"


@dataclass(frozen=True)
class RasterOptions:
    """What the user asked for every raster of a run (`rsrt ingest images --bands … --chip-size …`)."""

    bands: tuple[int, ...] | None = None  # 1-based; one (grey) or three (R, G, B)
    stretch: Stretch = field(default_factory=Stretch)
    max_side: int = DEFAULT_MAX_SIDE
    chip_size: int | None = None  # cut scenes into chips of this many pixels (square)
    chip_overlap: int = 0  # pixels shared by neighbouring chips

    def __post_init__(self) -> None:
        if self.bands is not None:
            if len(self.bands) not in (1, 3):
                raise ConfigError(f"--bands {_join(self.bands)}: give one band (grey) or three (red,green,blue)")
            if any(b < 1 for b in self.bands):
                raise ConfigError(f"--bands {_join(self.bands)}: bands are numbered from 1, like GDAL")
        if self.max_side < 16:
            raise ConfigError(f"--max-image-side {self.max_side}: must be at least 16 pixels")
        if self.chip_size is not None and self.chip_size < 16:
            raise ConfigError(f"--chip-size {self.chip_size}: must be at least 16 pixels")
        if self.chip_overlap < 0 or (self.chip_size is not None and self.chip_overlap >= self.chip_size):
            raise ConfigError(f"--chip-overlap {self.chip_overlap}: must be at least 0 and less than --chip-size")
        if self.chip_size is None and self.chip_overlap:
            raise ConfigError("--chip-overlap needs --chip-size")

    @classmethod
    def from_flags(cls, *, bands: str | None = None, stretch: str = "auto", max_side: int = DEFAULT_MAX_SIDE,
                   chip_size: int | None = None, chip_overlap: int = 0) -> RasterOptions:
        """The command-line spelling (`--bands 4,3,2 --stretch p2,98`) as options; ConfigError naming the flag."""
        parsed: tuple[int, ...] | None = None
        if bands is not None:
            try:
                parsed = tuple(int(b) for b in bands.split(","))
            except ValueError:
                raise ConfigError(f"--bands {bands!r}: expected band numbers, e.g. 4,3,2 (1-based)") from None
        return cls(bands=parsed, stretch=Stretch.parse(stretch), max_side=max_side, chip_size=chip_size,
                   chip_overlap=chip_overlap)


@dataclass(frozen=True)
class RasterRead:
    """How one image is rendered: which bands, which window, which stretch, how large.

    `bands` None means "decide when reading" (colour interpretation, else the first three).
    `scale`/`offset`/`nodata` come from STAC `raster:bands`, one per selected band.
    """

    bands: tuple[int, ...] | None = None
    window: Window | None = None
    stretch: Stretch = field(default_factory=Stretch)
    max_side: int = DEFAULT_MAX_SIDE
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    nodata: float | None = None

    @classmethod
    def from_options(cls, options: RasterOptions, **overrides: Any) -> RasterRead:
        """The run's options for one image; `overrides` (bands resolved per file, scale, …) win."""
        return cls(**{"bands": options.bands, "stretch": options.stretch, "max_side": options.max_side, **overrides})

    def to_property(self) -> dict[str, Any]:
        """The JSON form stored as the `rsrt:raster` property (only what is set)."""
        out: dict[str, Any] = {"stretch": str(self.stretch), "max_side": self.max_side}
        if self.bands is not None:
            out["bands"] = list(self.bands)
        if self.window is not None:
            col, row, width, height = self.window
            out["window"] = {"col_off": col, "row_off": row, "width": width, "height": height}
        if self.scale is not None:
            out["scale"] = list(self.scale)
        if self.offset is not None:
            out["offset"] = list(self.offset)
        if self.nodata is not None and math.isfinite(self.nodata):
            out["nodata"] = self.nodata
        return out

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any] | None) -> RasterRead | None:
        """The read recorded on a record (`rsrt:raster`); None when the record has none."""
        value = (properties or {}).get(RASTER_PROPERTY)
        if not isinstance(value, Mapping):
            return None
        window = value.get("window")
        return cls(
            bands=tuple(int(b) for b in value["bands"]) if value.get("bands") else None,
            window=(int(window["col_off"]), int(window["row_off"]), int(window["width"]), int(window["height"]))
            if isinstance(window, Mapping) else None,
            stretch=Stretch.parse(str(value.get("stretch", "auto"))),
            max_side=int(value.get("max_side", DEFAULT_MAX_SIDE)),
            scale=tuple(float(v) for v in value["scale"]) if value.get("scale") else None,
            offset=tuple(float(v) for v in value["offset"]) if value.get("offset") else None,
            nodata=float(value["nodata"]) if value.get("nodata") is not None else None,
        )


# ---------------------------------------------------------------------------- bands


def default_bands(dataset: Any) -> tuple[int, ...]:
    """Bands to show when none are asked for: R, G, B by band description or colour interpretation,
    else the first three non-alpha bands, else the first band (grey)."""
    from rasterio.enums import ColorInterp

    names = {str(d).strip().lower(): i for i, d in enumerate(dataset.descriptions, start=1) if d}
    if all(name in names for name in COMMON_RGB):  # descriptions are written on purpose: they come first
        return tuple(names[name] for name in COMMON_RGB)
    interp = list(dataset.colorinterp)
    colour = [i for i, ci in enumerate(interp, start=1) if ci != ColorInterp.alpha] or [1]
    by_interp = {ci: i for i, ci in enumerate(interp, start=1)}
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(ci in by_interp for ci in wanted):
        return tuple(by_interp[ci] for ci in wanted)
    return tuple(colour[:3]) if len(colour) >= 3 else (colour[0],)


def bands_by_common_name(bands: Sequence[Any] | None) -> tuple[int, ...] | None:
    """1-based red, green, blue positions in a STAC `eo:bands` (or `bands`) list; None when not all named."""
    if not bands:
        return None
    found: dict[str, int] = {}
    for position, band in enumerate(bands, start=1):
        if isinstance(band, Mapping):
            name = band.get("common_name", band.get("eo:common_name"))
            if isinstance(name, str) and name.lower() in COMMON_RGB and name.lower() not in found:
                found[name.lower()] = position
    if all(name in found for name in COMMON_RGB):
        return tuple(found[name] for name in COMMON_RGB)
    return None


def check_bands(bands: Sequence[int], count: int) -> None:
    """RasterReadError naming the band when a requested band is not in the file."""
    missing = [b for b in bands if not 1 <= b <= count]
    if missing:
        raise RasterReadError(f"band {_join(missing)} requested but the raster has {count} band"
                              f"{'s' if count != 1 else ''}")


# ---------------------------------------------------------------------------- chips


def chip_windows(width: int, height: int, size: int, overlap: int = 0) -> list[Window]:
    """Square windows of `size` px covering a `width` × `height` raster, row by row.

    Neighbours share `overlap` px. Edge chips are shifted inward so that every chip is full size
    and lies inside the raster (the last row/column overlaps its neighbour more than `overlap`);
    a raster narrower than `size` gives chips as wide as the raster. Nothing is padded.
    """

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        step = size - overlap
        out = list(range(0, length - size + 1, step))
        if out[-1] + size < length:
            out.append(length - size)
        return out

    chip_w, chip_h = min(size, width), min(size, height)
    return [(col, row, chip_w, chip_h) for row in starts(height) for col in starts(width)]


def chip_id(scene_id: str, window: Window) -> str:
    """`<scene>_x<col>_y<row>_<w>x<h>`: stable across runs, distinct when chip size or overlap change."""
    col, row, width, height = window
    return f"{scene_id}_x{col}_y{row}_{width}x{height}"


# ---------------------------------------------------------------------------- reading


def out_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(height, width) of the picture: the longest side at most `max_side`, aspect kept, never enlarged."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_bands(dataset: Any, read: RasterRead) -> np.ma.MaskedArray:
    """The selected bands of `read.window`, decimated to at most `read.max_side`, as masked float32.

    Masked: the dataset's nodata/alpha/mask, `read.nodata`, and NaN. Values are in physical
    units when `read.scale`/`read.offset` are set.
    """
    from rasterio.enums import Resampling
    from rasterio.windows import Window as RioWindow

    bands = read.bands or default_bands(dataset)
    check_bands(bands, dataset.count)
    col, row, width, height = read.window or (0, 0, dataset.width, dataset.height)
    if col < 0 or row < 0 or width < 1 or height < 1 or col + width > dataset.width or row + height > dataset.height:
        raise RasterReadError(f"window {col},{row},{width},{height} is outside the "
                              f"{dataset.width}x{dataset.height} raster")
    shape = (len(bands), *out_shape(width, height, read.max_side))
    raw = dataset.read(list(bands), window=RioWindow(col, row, width, height), out_shape=shape, masked=True,
                       resampling=Resampling.average)
    data = np.ma.masked_array(raw.data.astype(np.float32, copy=False), mask=np.ma.getmaskarray(raw))
    if read.nodata is not None:
        data[data.data == np.float32(read.nodata)] = np.ma.masked
    data[~np.isfinite(data.data)] = np.ma.masked
    if read.scale is not None or read.offset is not None:
        scale = np.asarray(read.scale or (1.0,) * len(bands), dtype=np.float32).reshape(-1, 1, 1)
        offset = np.asarray(read.offset or (0.0,) * len(bands), dtype=np.float32).reshape(-1, 1, 1)
        if scale.shape[0] != len(bands) or offset.shape[0] != len(bands):
            raise RasterReadError(f"raster:bands gives {scale.shape[0]} scales for {len(bands)} bands")
        data = data * scale + offset
    return data


def stretch_to_uint8(data: np.ma.MaskedArray, stretch: Stretch) -> np.ndarray:
    """(bands, h, w) masked values → uint8, band by band; masked pixels (in any band) become 0."""
    if stretch.kind == "auto":
        raise ValueError("resolve an auto stretch for the dataset's dtype first (Stretch.resolved)")
    out = np.zeros(data.shape, dtype=np.uint8)
    mask = np.ma.getmaskarray(data)
    any_masked = bool(mask.any())
    values = np.where(mask, 0.0, data.data) if any_masked else data.data  # NaN/nodata out of the arithmetic
    scratch = np.empty(data.shape[1:], dtype=np.float32)
    for i in range(data.shape[0]):
        band = values[i]
        if stretch.kind == "none":
            low, high = 0.0, 255.0
        elif stretch.kind == "fixed":
            low, high = stretch.low, stretch.high
        else:
            valid = band[~mask[i]] if any_masked else band.ravel()
            if valid.size == 0:
                continue
            if valid.size > _PERCENTILE_SAMPLE:  # percentiles of a regular sample: same stretch, a fraction of the work
                valid = valid[:: valid.size // _PERCENTILE_SAMPLE]
            low, high = (float(v) for v in np.percentile(valid, (stretch.low, stretch.high)))
        span = high - low
        if span <= 0:  # a constant band: mid-grey where valid, rather than an arbitrary end
            out[i] = 128
            continue
        np.subtract(band, np.float32(low), out=scratch)
        np.multiply(scratch, np.float32(255.0 / span), out=scratch)
        np.clip(scratch, 0.0, 255.0, out=scratch)
        np.add(scratch, np.float32(0.5), out=scratch)  # round half up, then truncate
        out[i] = scratch.astype(np.uint8)
    if any_masked:
        out[:, mask.any(axis=0)] = 0
    return out


def render(path: str | Path, read: RasterRead | None = None, assets: AssetOptions | None = None) -> Any:
    """The picture for the VLM: an RGB `PIL.Image` whose longest side is at most `read.max_side`.

    `path` is a local file or an `http(s)://` / `s3://` URI, read by range requests
    (`rsrt.ingest.assets.open_raster`, with `assets`' timeout and retries). Raises RasterReadError
    with the reason (bands out of range, window outside, unreadable), AssetError when a remote
    asset cannot be fetched (its URI, status, and whether a later run may succeed).
    """
    from PIL import Image
    from rasterio.errors import RasterioError

    read = read or RasterRead()
    try:
        with open_raster(path, assets) as dataset:
            bands = read.bands or default_bands(dataset)
            data = read_bands(dataset, replace(read, bands=bands))
            dtype = dataset.dtypes[bands[0] - 1]
            colormap = _colormap(dataset, bands)
    except (RasterioError, OSError) as exc:
        raise RasterReadError(f"cannot read raster: {exc}") from None
    pixels = stretch_to_uint8(data, read.stretch.resolved(dtype))
    if colormap is not None:  # a paletted band: its colours, not its indices as grey
        rgb = colormap[data.data[0].clip(0, 255).astype(np.uint8)]
        rgb[np.ma.getmaskarray(data)[0]] = 0
        return Image.fromarray(rgb)
    if pixels.shape[0] == 1:
        return Image.fromarray(pixels[0]).convert("RGB")  # grey
    return Image.fromarray(np.ascontiguousarray(np.moveaxis(pixels, 0, -1)))


def is_raster_path(path: str | Path) -> bool:
    """Files (or URLs, query string aside) this module renders (TIFF/GeoTIFF/COG); JPEG and PNG keep Pillow's path."""
    text = str(path).split("?", 1)[0] if is_remote(str(path)) else str(path)
    return Path(text).suffix.lower() in (".tif", ".tiff")


def rasterio_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def _colormap(dataset: Any, bands: Sequence[int]) -> np.ndarray | None:
    """A 256 × 3 lookup table when one uint8 band with a colour table is shown."""
    from rasterio.enums import ColorInterp

    if len(bands) != 1 or dataset.dtypes[bands[0] - 1] != "uint8":
        return None
    if dataset.colorinterp[bands[0] - 1] != ColorInterp.palette:
        return None
    try:
        table = dataset.colormap(bands[0])
    except ValueError:
        return None
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, colour in table.items():
        if 0 <= index < 256:
            lut[index] = colour[:3]
    return lut


def _join(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def iter_windows(options: RasterOptions, width: int, height: int) -> Iterator[Window | None]:
    """The windows a scene is read as: its chips, or the whole scene (None) when not chipping."""
    if options.chip_size is None:
        yield None
        return
    yield from chip_windows(width, height, options.chip_size, options.chip_overlap)


__all__ = [
    "DEFAULT_MAX_SIDE",
    "RASTER_PROPERTY",
    "SCENE_PROPERTY",
    "RasterOptions",
    "RasterRead",
    "RasterReadError",
    "Stretch",
    "bands_by_common_name",
    "check_bands",
    "chip_id",
    "chip_windows",
    "default_bands",
    "is_raster_path",
    "out_shape",
    "read_bands",
    "render",
    "stretch_to_uint8",
]
