"""Indexed documents as STAC Items, collection buckets as STAC Collections, and the GeoJSON response."""

import json
import math
import mimetypes
from collections.abc import Callable
from datetime import UTC as _UTC
from datetime import datetime as _DateTime
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi.responses import JSONResponse

from .. import fields
from ..searcher import SearchHit

STAC_VERSION = "1.1.0"
GEOJSON = "application/geo+json"
WORLD_BBOX = [-180.0, -90.0, 180.0, 90.0]
# An image whose acquisition time is unknown. STAC 1.1 allows `datetime: null` only with a
# start_datetime/end_datetime range, and has no "unknown": the range an unknown time lies in is all of
# time, so undated items span the whole RFC 3339 range (any narrower bound would be a claim the index
# cannot back: it records no capture or ingest time) and say so with `rsrt:undated`. Datetime filters
# still match dated images only (what the index knows), never these.
UNDATED_START = "0001-01-01T00:00:00Z"
UNDATED_END = "9999-12-31T23:59:59Z"


class GeoJSONResponse(JSONResponse):
    """application/geo+json; falls back to ASCII escapes rather than fail on text UTF-8 cannot carry."""

    media_type = GEOJSON

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")



def _coordinates_bounds(coords: Any, box: list[float]) -> None:
    if isinstance(coords, list | tuple) and len(coords) >= 2 and all(isinstance(c, int | float) for c in coords[:2]):
        x, y = float(coords[0]), float(coords[1])
        box[0], box[1], box[2], box[3] = min(box[0], x), min(box[1], y), max(box[2], x), max(box[3], y)
    elif isinstance(coords, list | tuple):
        for part in coords:
            _coordinates_bounds(part, box)


def geometry_bbox(geometry: dict[str, Any] | None) -> list[float] | None:
    """STAC wants a bbox whenever there is a geometry; documents may hold only the geometry."""
    if not geometry:
        return None
    box = [math.inf, math.inf, -math.inf, -math.inf]
    _coordinates_bounds(geometry.get("coordinates"), box)
    return box if all(math.isfinite(v) for v in box) else None


def to_item(source: dict[str, Any], image_id: str, item_href: str, root_href: str, hit: SearchHit | None = None,
            rank: int | None = None, explain: bool = False,
            collection_href: Callable[[str], str] | None = None) -> dict[str, Any]:
    """An indexed document as a STAC Item; the captions ride along as `rsrt:` properties.

    `collection_href` maps a collection id to its URL: STAC browsers walk `parent`/`collection` links.
    """
    own = source.get(fields.PROPERTIES) or {}
    properties: dict[str, Any] = dict(own) if isinstance(own, dict) else {}
    when = source.get(fields.DATETIME) or properties.get("datetime")
    properties["datetime"] = when
    if when is None and not (properties.get("start_datetime") and properties.get("end_datetime")):
        properties["start_datetime"], properties["end_datetime"] = UNDATED_START, UNDATED_END
        properties["rsrt:undated"] = True
    if hit is not None:
        properties["rsrt:score"] = hit.score
        properties["rsrt:rank"] = hit.rank
        matched = hit.matched_variant
        properties["rsrt:matched_variant"] = (
            {"n": matched.get(fields.VARIANT_POSITION), **fields.variant_texts(matched)} if matched else None)
        if explain:
            properties["rsrt:explanation"] = hit.explanation
    elif rank is not None:
        properties["rsrt:rank"] = rank
    properties["rsrt:summary"] = source.get(fields.SUMMARY)
    properties["rsrt:variants"] = [fields.variant_texts(v) for v in source.get(fields.VARIANTS) or []]
    if source.get(fields.CAPTIONER):
        properties["rsrt:captioner"] = source[fields.CAPTIONER]
    geometry = source.get(fields.GEOMETRY) or None
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": image_id,
        "geometry": geometry,
    }
    bbox = source.get(fields.BBOX) or geometry_bbox(geometry)
    if bbox:
        item["bbox"] = bbox
    if source.get(fields.COLLECTION):
        item["collection"] = source[fields.COLLECTION]
    item["properties"] = properties
    item["links"] = [{"rel": "self", "href": item_href, "type": GEOJSON},
                     {"rel": "root", "href": root_href, "type": "application/json"}]
    if collection_href is not None and source.get(fields.COLLECTION):
        href = collection_href(str(source[fields.COLLECTION]))
        item["links"] += [{"rel": "parent", "href": href, "type": "application/json"},
                          {"rel": "collection", "href": href, "type": "application/json"}]
    item["assets"] = item_assets(source, image_id, root_href)
    return item


def _is_local(uri: str) -> bool:
    """A path on the server's disk (or file://), which a browser cannot load: served by /assets instead."""
    scheme = urlsplit(uri).scheme.lower()
    return scheme in ("", "file") or (len(scheme) == 1 and uri[1:3] in (":\\", ":/"))  # C:\ on Windows


def item_assets(source: dict[str, Any], image_id: str, root_href: str) -> dict[str, Any]:
    """`image` (a local source file through the API's /assets route; a remote URL as it is) and
    `thumbnail` (the API's /thumbnails route, when the document has one)."""
    assets: dict[str, Any] = {}
    base = root_href if root_href.endswith("/") else root_href + "/"
    quoted = quote(image_id, safe="")
    uri = source.get(fields.SOURCE_URI)
    if isinstance(uri, str) and uri:
        href = f"{base}assets/{quoted}/image" if _is_local(uri) else uri
        asset: dict[str, Any] = {"href": href, "roles": ["data"], "title": "source image"}
        media_type = mimetypes.guess_type(urlsplit(uri).path if not _is_local(uri) else uri)[0]
        if media_type:
            asset["type"] = media_type
        assets["image"] = asset
    if fields.has_thumbnail(source):
        assets["thumbnail"] = {"href": f"{base}thumbnails/{quoted}", "type": "image/jpeg", "roles": ["thumbnail"],
                               "title": "thumbnail"}
    return assets


def select_fields(item: dict[str, Any], include: tuple[str, ...], exclude: tuple[str, ...]) -> dict[str, Any]:
    """The fields extension on one item: `include` keeps only those dotted paths (plus what makes it an
    item: type, stac_version, id, links), `exclude` then drops paths (never those four)."""
    required = ("type", "stac_version", "id", "links")
    if include:
        kept: dict[str, Any] = {key: item[key] for key in required if key in item}
        for path in include:
            _copy_path(item, kept, path.split("."))
        item = kept
    for path in exclude:
        if path not in required:
            _drop_path(item, path.split("."))
    return item


def _copy_path(source: dict[str, Any], target: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in source:
        return
    if not rest or not isinstance(source[head], dict):
        target[head] = source[head]
        return
    branch = target.setdefault(head, {})
    if isinstance(branch, dict):
        _copy_path(source[head], branch, rest)


def _drop_path(item: dict[str, Any], parts: list[str]) -> None:
    node: Any = item
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)


# ---------------------------------------------------------------------------------------------------
# collections
# ---------------------------------------------------------------------------------------------------


def _iso_millis(value: Any) -> str | None:
    """A date aggregation's epoch-millis value as RFC 3339 (None when the collection has no dates)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return _DateTime.fromtimestamp(value / 1000, tz=_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_collection(bucket: dict[str, Any], href: str, root_href: str, items_href: str) -> dict[str, Any]:
    """A terms bucket as a STAC Collection; a collection with no footprints gets the whole world."""
    bounds = (bucket.get("where") or {}).get("bounds")
    bbox = list(WORLD_BBOX)
    if bounds:
        top_left, bottom_right = bounds["top_left"], bounds["bottom_right"]
        bbox = [top_left["lon"], bottom_right["lat"], bottom_right["lon"], top_left["lat"]]
    collection_id = str(bucket["key"])
    return {
        "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [], "id": collection_id,
        "title": collection_id, "description": f"{bucket['doc_count']} captioned images of {collection_id!r}",
        "license": "other", "keywords": ["remote sensing", "captions"],
        "extent": {"spatial": {"bbox": [bbox]},
                   "temporal": {"interval": [[_iso_millis((bucket.get("first") or {}).get("value")),
                                              _iso_millis((bucket.get("last") or {}).get("value"))]]}},
        "summaries": {}, "rsrt:items": int(bucket["doc_count"]),
        "links": [{"rel": "self", "href": href, "type": "application/json"},
                  {"rel": "root", "href": root_href, "type": "application/json"},
                  {"rel": "parent", "href": root_href, "type": "application/json"},
                  {"rel": "items", "href": items_href, "type": GEOJSON}],
    }


