"""STAC on disk (or behind URLs): a Catalog/Collection tree, an ItemCollection, or a single Item.

Each STAC Item becomes one record: its id, collection, datetime, geometry, bbox and properties are
kept; the image to caption is one of its assets. The tree is walked link by link (not with
`get_items()`) so that one broken item or child file becomes a problem, not the end of the run,
and so that memory does not grow with the catalog.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rsrt.search.schema import ImageRecord, stable_image_id

from ..assets import AssetError, AssetOptions, fetch_bytes, is_remote
from ..raster import RASTER_PROPERTY, RasterOptions, RasterRead, bands_by_common_name, is_raster_path
from .base import (
    IMAGE_EXTENSIONS,
    STAC_ROOT_NAMES,
    Source,
    SourceError,
    SourceItem,
    SourceProblem,
    SourceUnreachable,
    geometry_and_bbox,
    json_safe,
    path_to_uri,
    to_iso_utc,
    uri_to_path,
)

# Asset preference: a true-colour rendering first, a thumbnail next, then any image asset.
PREFERRED_ASSETS: tuple[str, ...] = ("visual", "thumbnail")
_CATALOG_TYPES = ("Catalog", "Collection")


class _ItemUnusable(ValueError):
    """An item that cannot become a record; the message is the reason."""


def _pystac() -> Any:
    try:
        import pystac
    except ImportError as exc:  # pragma: no cover - pystac is in the geo extra
        raise SourceError("reading STAC needs pystac: pip install 'rsrt-search[geo]'") from exc
    return pystac


class StacSource(Source):
    """Items of a STAC catalog.json / collection.json (walked recursively), item collection or item.

    `collection`, when given, is put on every record; otherwise an item's own `collection` is
    used, else the id of the STAC Collection it was found under. Relative hrefs are resolved
    against the file they appear in (not its `self` link, which may point at a published copy).
    Local assets must exist; remote ones (http, s3) are recorded as they are and read when
    captioned (`assets`: timeout, retries, S3 endpoint; `rsrt.ingest.assets`).

    A GeoTIFF asset is rendered with the bands `raster.bands`, else those whose `eo:bands` common
    names are red, green, blue, and the asset's `raster:bands` scale/offset/nodata; with
    `raster.chip_size`, a GeoTIFF asset, local or remote (its header read by range requests), is
    cut into chips like a folder's scenes.
    """

    kind = "stac"
    needs_captioning = True

    def __init__(
        self,
        path: str | Path,
        *,
        collection: str | None = None,
        asset_keys: tuple[str, ...] = PREFERRED_ASSETS,
        raster: RasterOptions | None = None,
        assets: AssetOptions | None = None,
    ) -> None:
        pystac = _pystac()
        self.raster = raster or RasterOptions()
        self.assets = assets or AssetOptions()
        p: str | Path
        if is_remote(str(path)):  # a static catalog published over http(s) or on S3
            p = str(path)
            self._root = _read_remote_root(p, self.assets)
        else:
            p = Path(path).expanduser().resolve()
            if p.is_dir():
                roots = [p / name for name in STAC_ROOT_NAMES if (p / name).is_file()]
                if not roots:
                    raise SourceError(f"{p}: no {' or '.join(STAC_ROOT_NAMES)} in this directory")
                p = roots[0]
            if not p.is_file():
                raise SourceError(f"{p}: no such file")
            self._root = _read_json_file(p)
        self.path = p
        self.collection = collection
        self.asset_keys = tuple(asset_keys)
        stac_type = self._root.get("type") if isinstance(self._root, dict) else None
        if stac_type == "Catalog" and _is_stac_api(self._root):
            raise SourceError(f"{p}: is a STAC API landing page (it conforms to item search): ingest it with "
                              f"`rsrt ingest stac-api {p} --collections …`")
        try:
            if stac_type in _CATALOG_TYPES:
                cls = pystac.Collection if stac_type == "Collection" else pystac.Catalog
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cls.from_dict(self._root, href=str(p), preserve_dict=True)
                links = [lk for lk in self._root.get("links", []) if lk.get("rel") in ("item", "child")]
                if not links:
                    raise SourceError(f"{p}: STAC {stac_type.lower()} has no item or child links")
                self._form = "catalog"
            elif stac_type == "FeatureCollection":
                features = self._root.get("features")
                if not isinstance(features, list):
                    raise SourceError(f"{p}: FeatureCollection without a 'features' list")
                if not features:
                    raise SourceError(f"{p}: item collection has no items")
                if not any(isinstance(f, dict) and "stac_version" in f for f in features):
                    raise SourceError(f"{p}: a GeoJSON FeatureCollection whose features are not STAC items")
                self._form = "items"
            elif stac_type == "Feature" and "stac_version" in self._root:
                self._form = "item"
            else:
                raise SourceError(
                    f"{p}: not STAC (type {stac_type!r}); expected a Catalog, Collection, "
                    "FeatureCollection of STAC items, or a STAC Item"
                )
        except SourceError:
            raise
        except Exception as exc:  # pystac raises STACTypeError, KeyError, ValueError, ...
            raise SourceError(f"{p}: not a valid STAC {stac_type}: {_short(exc)}") from None

    def describe(self) -> str:
        what = {"catalog": f"STAC {self._root.get('type', '').lower()}", "items": "STAC item collection"}
        return f"{what.get(self._form, 'STAC item')} {self.path}"

    def count_hint(self) -> int | None:
        if self.raster.chip_size is not None:  # chips are counted as the scenes are cut
            return None
        if self._form == "items":
            return len(self._root["features"])
        return 1 if self._form == "item" else None

    def __iter__(self) -> Iterator[SourceItem]:
        seen: dict[str, str] = {}
        if self._form == "catalog":
            inner = self._walk(str(self.path), self._root, None, {str(self.path)})
        elif self._form == "items":
            inner = (
                self._item(feature, str(self.path), None, f"features[{i}]")
                for i, feature in enumerate(self._root["features"])
            )
        else:
            inner = iter([self._item(self._root, str(self.path), None, "item")])
        for entry in (e for group in inner for e in (group if isinstance(group, list) else [group])):
            if isinstance(entry, ImageRecord):
                where = entry.properties.get("stac:href", "")
                if entry.image_id in seen:
                    reason = f"duplicate image id {entry.image_id}, first in {seen[entry.image_id]}"
                    yield SourceProblem(entry.image_id, reason, where)
                    continue
                seen[entry.image_id] = where
            yield entry

    # -------------------------------------------------------------------- walking

    def _walk(
        self, href: str, data: dict[str, Any], parent_collection: str | None, visited: set[str]
    ) -> Iterator[SourceItem | list[ImageRecord]]:
        """Items of this catalog in link order, then each child's, depth first."""
        pystac = _pystac()
        collection_id = data.get("id") if data.get("type") == "Collection" else parent_collection
        links = [lk for lk in data.get("links", []) if isinstance(lk, dict) and isinstance(lk.get("href"), str)]
        for link in (lk for lk in links if lk.get("rel") == "item"):
            item_href = pystac.utils.make_absolute_href(link["href"], href)
            try:
                item_data = _read_json_href(item_href, self.assets)
            except Exception as exc:
                yield SourceProblem(link["href"], f"cannot read item: {_short(exc)}", item_href)
                continue
            yield self._item(item_data, item_href, collection_id, link["href"])
        for link in (lk for lk in links if lk.get("rel") == "child"):
            child_href = pystac.utils.make_absolute_href(link["href"], href)
            if child_href in visited:
                continue
            visited.add(child_href)
            try:
                child = _read_json_href(child_href, self.assets)
                if not isinstance(child, dict) or child.get("type") not in _CATALOG_TYPES:
                    raise ValueError(
                        f"type {child.get('type') if isinstance(child, dict) else None!r} is not Catalog or Collection"
                    )
            except Exception as exc:
                yield SourceProblem(link["href"], f"cannot read child catalog: {_short(exc)}", child_href)
                continue
            yield from self._walk(child_href, child, collection_id, visited)

    def _item(self, data: Any, href: str, collection_fallback: str | None, label: str
              ) -> SourceItem | list[ImageRecord]:
        """One STAC item dict (read from `href`) as a record (or its chips), or a problem naming the item."""
        item_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
        name = item_id or label
        try:
            record = item_to_record(
                data,
                base_href=href,
                collection=self.collection,
                collection_fallback=collection_fallback,
                asset_keys=self.asset_keys,
                raster=self.raster,
            )
            if self.raster.chip_size is not None and RASTER_PROPERTY in record.properties:
                return list(_chips(record, self.raster, getattr(self, "assets", None)))
            return record
        except (ValueError, AssetError) as exc:  # AssetError names the URL and the HTTP status
            return SourceProblem(name, str(exc), href)
        except Exception as exc:  # anything else is still one item's problem, not the run's
            return SourceProblem(name, f"cannot use item: {_short(exc)}", href)


def item_to_record(
    data: dict[str, Any],
    *,
    base_href: str,
    collection: str | None = None,
    collection_fallback: str | None = None,
    asset_keys: tuple[str, ...] = PREFERRED_ASSETS,
    raster: RasterOptions | None = None,
) -> ImageRecord:
    """A STAC item dict → `ImageRecord`; raises ValueError, with the reason, when it can't.

    A GeoTIFF asset also gets `rsrt:raster`: how it is rendered for the VLM (`_raster_read`).
    """
    pystac = _pystac()
    if not isinstance(data, dict) or data.get("type") != "Feature":
        raise _ItemUnusable("not a STAC item (type is not Feature)")
    if not isinstance(data.get("id"), str) or not data["id"].strip():
        raise _ItemUnusable("not a valid STAC item: missing 'id'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            item = pystac.Item.from_dict(data, preserve_dict=True, migrate=True)
    except Exception as exc:  # pystac raises STACTypeError, KeyError, TypeError, ...
        raise _ItemUnusable(f"not a valid STAC item: {_short(exc)}") from None

    key, asset = _pick_asset(item, asset_keys)
    asset_href = pystac.utils.make_absolute_href(asset.href, base_href)
    local = uri_to_path(asset_href)
    if local is not None:
        if not local.is_file():
            raise _ItemUnusable(f"asset {key!r} not found: {local}")
        source_uri = path_to_uri(local)
    else:
        source_uri = asset_href

    when = item.datetime or item.common_metadata.start_datetime
    try:
        geometry, bbox = geometry_and_bbox(item.geometry, item.bbox)
    except ValueError as exc:
        raise _ItemUnusable(str(exc)) from None

    properties = {k: v for k, v in item.properties.items() if k != "datetime"}
    properties["stac:asset"] = key
    properties["stac:href"] = base_href
    if is_raster_path(asset.href.split("?", 1)[0]) or "tiff" in (asset.media_type or "").lower():
        properties[RASTER_PROPERTY] = _raster_read(item, asset, raster or RasterOptions()).to_property()
    try:
        properties = json_safe(properties)
    except ValueError as exc:  # NaN/Infinity in properties: OpenSearch would reject the document
        raise _ItemUnusable(f"properties are not plain JSON: {exc}") from None
    return ImageRecord(
        image_id=stable_image_id(item.id),
        source_uri=source_uri,
        collection=collection or item.collection_id or collection_fallback,
        datetime=to_iso_utc(when) if when else None,
        geometry=geometry,
        bbox=bbox,
        properties=properties,
    )


def _raster_read(item: Any, asset: Any, raster: RasterOptions) -> RasterRead:
    """Bands: `--bands`, else the asset's (or item's) `eo:bands` red/green/blue; scale, offset and
    nodata of those bands from the asset's `raster:bands`."""
    fields = asset.extra_fields
    eo_bands = fields.get("eo:bands") or fields.get("bands") or item.properties.get("eo:bands")
    bands = raster.bands or bands_by_common_name(eo_bands if isinstance(eo_bands, list) else None)
    stats = fields.get("raster:bands") or [
        b for b in (fields.get("bands") or []) if isinstance(b, dict) and any(k.startswith("raster:") for k in b)
    ]
    scale = offset = nodata = None
    if isinstance(stats, list) and stats and all(isinstance(b, dict) for b in stats):
        def value(band: dict[str, Any], name: str) -> Any:
            return band.get(name, band.get(f"raster:{name}"))

        chosen = [stats[b - 1] for b in bands if b <= len(stats)] if bands else []
        linear = any(value(b, "scale") is not None or value(b, "offset") is not None for b in chosen)
        if bands and len(chosen) == len(bands) and linear:
            scale = tuple(float(value(b, "scale") if value(b, "scale") is not None else 1.0) for b in chosen)
            offset = tuple(float(value(b, "offset") if value(b, "offset") is not None else 0.0) for b in chosen)
        nodatas = {value(b, "nodata") for b in (chosen or stats)}
        if len(nodatas) == 1 and isinstance(next(iter(nodatas)), int | float):
            nodata = float(next(iter(nodatas)))
    return RasterRead.from_options(raster, bands=bands, scale=scale, offset=offset, nodata=nodata)


def _chips(scene: ImageRecord, raster: RasterOptions, assets: AssetOptions | None = None) -> list[ImageRecord]:
    """A GeoTIFF asset's chips (the grid comes from the file: a remote one's header, by range requests).

    Raises AssetError (URI, status) when a remote asset cannot be fetched, ValueError when it is
    not a readable raster.
    """
    from .folder import chip_records, inspect_image

    local = uri_to_path(scene.source_uri)
    if local is None and not is_remote(scene.source_uri):
        return [scene]
    info = inspect_image(local if local is not None else scene.source_uri, raster, assets)
    props = dict(scene.properties)
    props.update({k: v for k, v in info["properties"].items() if k in ("width", "height", "bands", "dtype")})
    props[RASTER_PROPERTY] = {**info["properties"][RASTER_PROPERTY], **scene.properties[RASTER_PROPERTY]}
    scene.properties = props
    return list(chip_records(scene, info.get("grid"), raster))


def _pick_asset(item: Any, asset_keys: tuple[str, ...]) -> tuple[str, Any]:
    """`visual`, else `thumbnail` (by key, then by role), else the first image asset."""
    assets = item.assets
    for key in asset_keys:
        if key in assets:
            return key, assets[key]
    for key in asset_keys:
        for name, asset in assets.items():
            if key in (asset.roles or []):
                return name, asset
    for name, asset in assets.items():
        if (asset.media_type or "").lower().startswith("image/"):
            return name, asset
    for name, asset in assets.items():  # untyped assets: trust the file extension
        if not asset.media_type and Path(asset.href.split("?", 1)[0]).suffix.lower() in IMAGE_EXTENSIONS:
            return name, asset
    names = ", ".join(sorted(assets)) or "none"
    wanted = "/".join(asset_keys)
    raise _ItemUnusable(f"no usable image asset (no {wanted} or image/* asset; assets: {names})")


def _read_json_file(path: Path) -> Any:
    """The root file: any failure is the user's to fix, so it raises `SourceError` naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise SourceError(f"{path}: invalid JSON at {where}: {exc.msg}") from None


def _read_remote_root(uri: str, assets: AssetOptions) -> Any:
    """A remote root file (http(s), s3): unreachable or not JSON is the user's to fix, a `SourceError`."""
    try:
        raw = fetch_bytes(uri, assets)
    except AssetError as exc:
        raise (SourceUnreachable if exc.transient else SourceError)(str(exc)) from None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{uri}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{uri}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _is_stac_api(root: dict[str, Any]) -> bool:
    """A landing page that offers item search: its items are listed by searching, not by `item` links."""
    conforms = root.get("conformsTo") or []
    return isinstance(conforms, list) and any(isinstance(c, str) and "item-search" in c for c in conforms)


def _read_json_href(href: str, assets: AssetOptions | None = None) -> Any:
    """A linked file: local paths read directly, http(s) and s3 through `fetch_bytes` (retries, S3 endpoint)."""
    local = uri_to_path(href)
    if local is not None:
        return json.loads(local.read_bytes().decode("utf-8-sig"))
    if is_remote(href):
        return json.loads(fetch_bytes(href, assets).decode("utf-8-sig"))
    return json.loads(_pystac().StacIO.default().read_text(href))


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        text = f"file not found: {exc.filename}"
    elif isinstance(exc, KeyError):
        text = f"missing {exc}"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    return text[:300]
