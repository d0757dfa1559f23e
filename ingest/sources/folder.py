"""A directory of image files (JPEG, PNG, TIFF/GeoTIFF), walked recursively.

Every file is cheaply checked to decode before it is handed to a (slow, expensive) captioner, so
a corrupt or truncated file is reported once, by name, instead of failing a VLM batch later.
GeoTIFFs also give a WGS84 footprint and, when tagged, an acquisition datetime. TIFFs record how
they will be rendered for the VLM (`rsrt:raster`: bands, stretch, size; see `rsrt.ingest.raster`)
and, with `RasterOptions.chip_size`, are cut into chips: one record per window, each with its own
footprint, an id derived from the scene's and the window, and `rsrt:scene` naming its scene (the
scene itself is then not a record). JPEG and PNG files are never chipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from rsrt.search.schema import ImageRecord, stable_image_id

from ..assets import AssetOptions, is_remote, open_raster
from ..raster import (
    RASTER_PROPERTY,
    SCENE_PROPERTY,
    RasterOptions,
    RasterRead,
    RasterReadError,
    check_bands,
    chip_id,
    chip_windows,
    default_bands,
    rasterio_available,
)
from .base import (
    IMAGE_EXTENSIONS,
    TIFF_EXTENSIONS,
    Source,
    SourceError,
    SourceItem,
    SourceProblem,
    json_safe,
    path_to_uri,
    to_iso_utc,
)

_FOOTPRINT_SEGMENTS = 8  # points per raster edge: projected edges are curves in WGS84
_TIFF_DATETIME_FORMAT = "%Y:%m:%d %H:%M:%S"  # TIFF 6.0 DateTime tag (no time zone: taken as UTC)


class _Undecodable(ValueError):
    """The file is not a readable image; the message is the reason shown to the user."""


class FolderSource(Source):
    """Images under `root`, recursively, sorted by relative path; hidden files and dirs skipped.

    `image_id` is the path relative to `root` without its extension (`sub/scene_01`), made safe
    by `stable_image_id`, so re-ingesting the same tree gives the same ids. `source_uri` is the
    absolute `file://` URI of the image (use `uri_to_path()` to open it). Symlinked directories
    are not followed (no cycles); symlinked files are read. `raster` says how TIFFs are rendered
    and whether they are cut into chips.
    """

    kind = "folder"
    needs_captioning = True

    def __init__(self, root: str | Path, *, collection: str | None = None,
                 raster: RasterOptions | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.collection = collection
        self.raster = raster or RasterOptions()
        if self.raster.chip_size is not None and not rasterio_available():
            raise SourceError("--chip-size needs rasterio: pip install 'rsrt-search[geo]'")
        if not self.root.is_dir():
            raise SourceError(f"{self.root}: not a directory (a folder source needs a directory of images)")
        self._walk_problems: list[SourceProblem] = []
        self._files = self._list_files()
        if not self._files:
            raise SourceError(
                f"{self.root}: no images found (looked recursively for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}; hidden files are skipped)"
            )

    def describe(self) -> str:
        return f"folder {self.root} ({len(self._files)} image files)"

    def count_hint(self) -> int | None:
        """Files, or unknown when scenes are chipped (a scene's chips are counted as they are cut)."""
        return None if self.raster.chip_size is not None else len(self._files)

    def __iter__(self) -> Iterator[SourceItem]:
        yield from self._walk_problems
        first_seen: dict[str, str] = {}
        for path in self._files:
            rel = path.relative_to(self.root).as_posix()
            image_id = stable_image_id(rel.rsplit(".", 1)[0])
            if image_id in first_seen:
                yield SourceProblem(rel, f"duplicate image id {image_id}, first from {first_seen[image_id]}", str(path))
                continue
            first_seen[image_id] = rel
            try:
                info = inspect_image(path, self.raster)
            except _Undecodable as exc:
                yield SourceProblem(rel, str(exc), str(path))
                continue
            except Exception as exc:  # decoders fail in odd ways (struct.error, IndexError, ...)
                yield SourceProblem(rel, f"cannot decode image: {type(exc).__name__}: {exc}", str(path))
                continue
            properties: dict[str, Any] = {"file:path": rel, **info.get("properties", {})}
            scene = ImageRecord(
                image_id=image_id,
                source_uri=path_to_uri(path),
                collection=self.collection,
                datetime=info.get("datetime"),
                geometry=info.get("geometry"),
                bbox=info.get("bbox"),
                properties=properties,
            )
            if self.raster.chip_size is not None and RASTER_PROPERTY in properties:
                yield from chip_records(scene, info.get("grid"), self.raster)
            else:
                scene.properties = json_safe(properties)
                yield scene

    def _list_files(self) -> list[Path]:
        """All candidate files, sorted by relative POSIX path (independent of the file system)."""
        found: list[tuple[str, Path]] = []

        def on_error(exc: OSError) -> None:
            name = exc.filename or str(self.root)
            reason = f"cannot list directory: {exc.strerror}"
            self._walk_problems.append(SourceProblem(str(name), reason, str(name)))

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=on_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                path = Path(dirpath) / name
                rel = path.relative_to(self.root).as_posix()
                if not path.is_file():  # never opened: a FIFO would block the decoder (and the run) forever
                    self._walk_problems.append(SourceProblem(rel, _not_a_regular_file(path), str(path)))
                    continue
                found.append((rel, path))
        found.sort(key=lambda pair: pair[0])
        self._walk_problems.sort(key=lambda problem: problem.item)
        return [path for _, path in found]


def _not_a_regular_file(path: Path) -> str:
    """Why a listed name is skipped, without opening it (`is_fifo` and co. only stat)."""
    kinds = (("a FIFO (named pipe)", path.is_fifo), ("a socket", path.is_socket),
             ("a character device", path.is_char_device), ("a block device", path.is_block_device))
    kind = next((label for label, test in kinds if test()), None)
    if kind is None:
        kind = "a broken symbolic link" if path.is_symlink() else "not a regular file"
        return f"{kind}; skipped without opening it"
    return f"not a regular file but {kind}; skipped without opening it"


# ---------------------------------------------------------------------------- per-file inspection


def inspect_image(path: Path | str, raster: RasterOptions | None = None,
                  assets: AssetOptions | None = None) -> dict[str, Any]:
    """Check that `path` decodes and return what it tells about itself.

    Returns a dict with `properties` and, when known, `datetime`, `geometry`, `bbox` (and `grid`,
    the CRS and transform, for chipping). Raises ValueError with a readable reason for corrupt,
    truncated or non-image files, or bands the file does not have. TIFFs go through rasterio (when
    installed) for georeferencing and rendering; everything else through Pillow.

    `path` may be a remote GeoTIFF (`http(s)://`, `s3://`): only its header is read, by range
    requests (`assets`: timeout, retries); AssetError (URI, status) when it cannot be fetched.
    """
    if is_remote(str(path)):  # the caller knows it is a raster (suffix or media type): GDAL reads its header
        return _inspect_with_rasterio(str(path), raster or RasterOptions(), assets)
    path = Path(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        if not rasterio_available():  # the geo extra is not installed: validate with Pillow, no footprint
            return _inspect_with_pillow(path)
        return _inspect_with_rasterio(path, raster or RasterOptions())
    return _inspect_with_pillow(path)


def _inspect_with_pillow(path: Path) -> dict[str, Any]:
    """`verify()` catches broken structure; a (draft-scaled) `load()` catches truncated data."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            fmt, (width, height), bands = img.format, img.size, len(img.getbands())
            exif_datetime = img.getexif().get(306) if fmt == "TIFF" else None
            img.verify()
        with Image.open(path) as img:
            if fmt == "JPEG":  # decode at 1/8 scale: same stream read, a fraction of the work
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            img.load()
    except UnidentifiedImageError:
        raise _Undecodable("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as exc:
        raise _Undecodable(f"image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports broken data with these
        raise _Undecodable(f"cannot decode image: {exc}") from None
    info: dict[str, Any] = {
        "properties": {"width": width, "height": height, "bands": bands, "format": fmt},
    }
    when = _tiff_datetime(exif_datetime)
    if when:
        info["datetime"] = when
    return info


def _inspect_with_rasterio(path: Path | str, raster: RasterOptions,
                           assets: AssetOptions | None = None) -> dict[str, Any]:
    """Open with GDAL, read the first and last block (truncation shows at the end of the file).

    A remote raster (a URI) is checked by its header alone: its pixels are fetched when rendered,
    and reading two full-resolution blocks of every scene is what range reads are meant to avoid.
    """
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    remote = is_remote(str(path))
    try:
        with open_raster(path, assets) as ds:
            width, height, count = ds.width, ds.height, ds.count
            block_h, block_w = ds.block_shapes[0] if ds.block_shapes else (height, width)
            last = (((height - 1) // block_h) * block_h, ((width - 1) // block_w) * block_w)
            for row, col in (() if remote else ((0, 0), last)):
                window = Window(col, row, min(block_w, width - col), min(block_h, height - row))
                ds.read(window=window)
            tags = ds.tags()
            crs, transform = ds.crs, ds.transform
            gcps, gcp_crs = ds.gcps
            dtype = ds.dtypes[0] if ds.dtypes else None
            bands = raster.bands or default_bands(ds)
            check_bands(bands, count)
            if crs is None and gcps and gcp_crs is not None:  # georeferenced by tie points only
                from rasterio.transform import from_gcps

                crs, transform = gcp_crs, from_gcps(gcps)
            elif transform.is_identity:  # GDAL's stand-in for "no georeferencing"
                crs = None
    except RasterReadError as exc:
        raise _Undecodable(str(exc)) from None
    except (RasterioError, OSError, ValueError) as exc:
        raise _Undecodable(f"cannot read raster: {exc}") from None

    properties: dict[str, Any] = {
        "width": width,
        "height": height,
        "bands": count,
        "format": "TIFF",
        "dtype": dtype,
        RASTER_PROPERTY: RasterRead.from_options(raster, bands=bands).to_property(),
    }
    info: dict[str, Any] = {"properties": properties}
    when = _tiff_datetime(tags.get("TIFFTAG_DATETIME"))
    if when:
        info["datetime"] = when
    if crs is not None:
        try:
            geometry, bbox, native_bounds = _footprint(crs, transform, width, height)
        except Exception as exc:  # a CRS PROJ cannot transform: keep the image, without geometry
            properties["georeference_error"] = str(exc)[:500]
        else:
            info["geometry"], info["bbox"] = geometry, bbox
            info["grid"] = (crs, transform)
            epsg = crs.to_epsg()
            properties["proj:epsg"] = epsg
            if epsg is None:
                properties["proj:wkt2"] = crs.to_wkt()
            properties["proj:shape"] = [height, width]
            properties["proj:transform"] = [float(v) for v in list(transform)[:6]]
            properties["proj:bbox"] = native_bounds
    return info


def chip_records(scene: ImageRecord, grid: tuple[Any, Any] | None, raster: RasterOptions) -> Iterator[ImageRecord]:
    """The chips of a scene record, row by row (see `chip_windows` for the edges).

    Each chip keeps the scene's source, collection, datetime and properties, and gets its own id
    (`chip_id`), `rsrt:scene`, its window inside `rsrt:raster` (so only that window is read), its
    pixel size and, when the scene is georeferenced (`grid` = CRS, transform), its exact footprint
    from the window's transform.
    """
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    assert raster.chip_size is not None
    props = scene.properties
    height, width = props["height"], props["width"]
    read = props[RASTER_PROPERTY]
    for window in chip_windows(width, height, raster.chip_size, raster.chip_overlap):
        col, row, chip_w, chip_h = window
        properties = {key: value for key, value in props.items() if not key.startswith("proj:")}
        properties.update({
            "width": chip_w,
            "height": chip_h,
            SCENE_PROPERTY: scene.image_id,
            RASTER_PROPERTY: {**read, "window": {"col_off": col, "row_off": row, "width": chip_w, "height": chip_h}},
        })
        geometry = bbox = None
        if grid is not None:
            crs, transform = grid
            chip_transform = window_transform(Window(col, row, chip_w, chip_h), transform)
            try:
                geometry, bbox, native_bounds = _footprint(crs, chip_transform, chip_w, chip_h)
            except Exception as exc:  # as for scenes: keep the chip, without geometry, and say why
                properties["georeference_error"] = str(exc)[:500]
            else:
                for key in ("proj:epsg", "proj:wkt2"):
                    if key in props:
                        properties[key] = props[key]
                properties["proj:shape"] = [chip_h, chip_w]
                properties["proj:transform"] = [float(v) for v in list(chip_transform)[:6]]
                properties["proj:bbox"] = native_bounds
        yield ImageRecord(
            image_id=stable_image_id(chip_id(scene.image_id, window)),
            source_uri=scene.source_uri,
            collection=scene.collection,
            datetime=scene.datetime,
            geometry=geometry,
            bbox=bbox,
            properties=json_safe(properties),
        )


def _footprint(crs: Any, transform: Any, width: int, height: int) -> tuple[dict[str, Any], list[float], list[float]]:
    """The raster outline in WGS84: a densified, counter-clockwise polygon and its [w, s, e, n] bbox.

    Edges are densified because a straight UTM edge is a curve in lon/lat; the bbox comes from
    `transform_bounds` (densified too, and it reports antimeridian crossings as west > east).
    """
    from rasterio.warp import transform_bounds, transform_geom
    from shapely.geometry import MultiPolygon, Polygon, mapping, shape
    from shapely.geometry.polygon import orient

    n = _FOOTPRINT_SEGMENTS
    pixel_ring: list[tuple[float, float]] = []
    for (c0, r0), (c1, r1) in (
        ((0, 0), (0, height)),
        ((0, height), (width, height)),
        ((width, height), (width, 0)),
        ((width, 0), (0, 0)),
    ):
        pixel_ring += [(c0 + (c1 - c0) * i / n, r0 + (r1 - r0) * i / n) for i in range(n)]
    pixel_ring.append(pixel_ring[0])
    a, b, c, d, e, f = (float(v) for v in list(transform)[:6])  # spelled out: works on every affine
    ring = [(a * col + b * row + c, d * col + e * row + f) for col, row in pixel_ring]
    xs, ys = [x for x, _ in ring], [y for _, y in ring]
    native_bounds = [min(xs), min(ys), max(xs), max(ys)]

    native = {"type": "Polygon", "coordinates": [[list(pt) for pt in ring]]}
    geom = shape(transform_geom(crs, "EPSG:4326", native))
    if isinstance(geom, Polygon):
        geom = orient(geom, sign=1.0)
    elif isinstance(geom, MultiPolygon):  # cut at the antimeridian
        geom = MultiPolygon([orient(part, sign=1.0) for part in geom.geoms])
    bbox = list(transform_bounds(crs, "EPSG:4326", *native_bounds, densify_pts=21))
    return json_safe(mapping(geom)), [float(v) for v in bbox], native_bounds


def _tiff_datetime(value: Any) -> str | None:
    """TIFF's "YYYY:MM:DD HH:MM:SS" as ISO 8601 UTC; None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        return to_iso_utc(datetime.strptime(value.strip().rstrip("\x00"), _TIFF_DATETIME_FORMAT))
    except ValueError:
        return None
