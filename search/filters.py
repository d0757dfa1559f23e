"""Place, time, collection and property filters, validated once and rendered as pre-filters.

The same filter clauses go inside every sub-query (the kNN `filter`, the BM25 bool filter), so a
filtered kNN search still returns k hits whenever k images match (efficient filtering, not post-filtering).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import fields
from .errors import QueryError


def _parse_instant(value: str, field_name: str) -> datetime:
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise QueryError(field_name, f"{value!r} is not an RFC 3339 date-time such as 2020-01-31T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_datetime_interval(value: str) -> tuple[datetime | None, datetime | None]:
    """STAC-style: an instant, or `start/end` with `..` or an empty side for an open end."""
    if not isinstance(value, str) or not value.strip():
        raise QueryError("datetime", "give an instant or an interval start/end")
    if "/" not in value:
        moment = _parse_instant(value, "datetime")
        return moment, moment
    if value.count("/") != 1:
        raise QueryError("datetime", f"{value!r} has more than one '/'")
    start_text, end_text = (part.strip() for part in value.split("/"))
    start = None if start_text in {"", ".."} else _parse_instant(start_text, "datetime")
    end = None if end_text in {"", ".."} else _parse_instant(end_text, "datetime")
    if start is None and end is None:
        raise QueryError("datetime", "an interval needs at least one closed end")
    if start and end and start > end:
        raise QueryError("datetime", f"start {start_text} is after end {end_text}")
    return start, end


def parse_bbox(value: Any) -> tuple[float, float, float, float]:
    """[west, south, east, north] (or the 6-number 3D form); a comma string is accepted too."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise QueryError("bbox", "give four numbers west,south,east,north")
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise QueryError("bbox", f"{value!r} holds something that is not a number") from None
    if len(numbers) == 6:
        numbers = [numbers[0], numbers[1], numbers[3], numbers[4]]
    if len(numbers) != 4:
        raise QueryError("bbox", f"needs 4 numbers (west,south,east,north), got {len(numbers)}")
    if not all(math.isfinite(n) for n in numbers):
        raise QueryError("bbox", "numbers must be finite")
    west, south, east, north = numbers
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise QueryError("bbox", "longitudes must lie in [-180, 180]")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise QueryError("bbox", "latitudes must lie in [-90, 90]")
    if south > north:
        raise QueryError("bbox", f"south {south} is north of north {north}")
    return west, south, east, north


_GEOJSON_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"}


def parse_geometry(value: Any) -> dict[str, Any]:
    """A GeoJSON geometry, checked for shape and validity before it reaches the cluster."""
    if not isinstance(value, dict) or value.get("type") not in _GEOJSON_TYPES:
        raise QueryError("intersects", f"must be a GeoJSON geometry of type {', '.join(sorted(_GEOJSON_TYPES))}")
    try:
        from shapely.geometry import shape

        geometry = shape(value)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise QueryError("intersects", f"malformed coordinates ({exc})") from None
    if geometry.is_empty:
        raise QueryError("intersects", "the geometry is empty")
    if not geometry.is_valid:
        from shapely.validation import explain_validity

        raise QueryError("intersects", f"invalid geometry: {explain_validity(geometry)}")
    west, south, east, north = geometry.bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise QueryError("intersects", "coordinates must be WGS84 longitude/latitude")
    return value


@dataclass
class Filters:
    """Everything a query can be restricted by; all optional."""

    bbox: tuple[float, float, float, float] | None = None
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    collections: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, bbox: Any = None, intersects: Any = None, datetime: str | None = None,
              collections: Any = None, properties: dict[str, Any] | None = None,
              ids: list[str] | None = None) -> Filters:
        """Validate user input; raises QueryError naming the field."""
        if isinstance(collections, str):
            collections = [c for c in collections.split(",") if c.strip()]
        collections = [str(c).strip() for c in (collections or []) if str(c).strip()]
        for key in properties or {}:
            if not key or not all(part.replace("_", "").replace("-", "").replace(":", "").isalnum()
                                  for part in key.split(".")):
                raise QueryError("properties", f"property name {key!r} may hold letters, digits, '_', '-', ':', '.'")
        built = cls(
            bbox=parse_bbox(bbox) if bbox not in (None, "", []) else None,
            intersects=parse_geometry(intersects) if intersects not in (None, "", {}) else None,
            datetime=datetime or None,
            collections=collections,
            properties=dict(properties or {}),
            ids=list(ids or []),
        )
        if built.datetime:
            parse_datetime_interval(built.datetime)
        return built

    def is_empty(self) -> bool:
        return not (self.bbox or self.intersects or self.datetime or self.collections or self.properties or self.ids)

    @property
    def has_place(self) -> bool:
        return bool(self.bbox or self.intersects)

    def clauses(self, geo_field: str = fields.GEOMETRY) -> list[dict[str, Any]]:
        """Filter clauses on root-level fields (place clauses on `geo_field`)."""
        out: list[dict[str, Any]] = []
        if self.bbox:
            west, south, east, north = self.bbox
            if west <= east:
                envelopes = [[[west, north], [east, south]]]
            else:  # crosses the antimeridian: two boxes
                envelopes = [[[west, north], [180.0, south]], [[-180.0, north], [east, south]]]
            shapes = [{"geo_shape": {geo_field: {"shape": {"type": "envelope", "coordinates": env},
                                                  "relation": "intersects"}}} for env in envelopes]
            out.append(shapes[0] if len(shapes) == 1 else {"bool": {"should": shapes, "minimum_should_match": 1}})
        if self.intersects:
            out.append({"geo_shape": {geo_field: {"shape": self.intersects, "relation": "intersects"}}})
        if self.datetime:
            start, end = parse_datetime_interval(self.datetime)
            bounds: dict[str, str] = {}
            if start:
                bounds["gte"] = start.isoformat().replace("+00:00", "Z")
            if end:
                bounds["lte"] = end.isoformat().replace("+00:00", "Z")
            out.append({"range": {fields.DATETIME: bounds}})
        if self.collections:
            out.append({"terms": {fields.COLLECTION: self.collections}})
        for key, value in self.properties.items():
            values = value if isinstance(value, list) else [value]
            out.append({"terms": {fields.property_field(key): values}})
        if self.ids:
            out.append({"ids": {"values": self.ids}})
        return out

    def as_filter(self, geo_field: str = fields.GEOMETRY) -> dict[str, Any] | None:
        clauses = self.clauses(geo_field)
        if not clauses:
            return None
        return {"bool": {"filter": clauses}}
