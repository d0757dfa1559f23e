"""Place, time, collection and property filters, validated once and rendered as pre-filters.

The same filter clauses go inside every sub-query (the kNN `filter`, the BM25 bool filter), so a
filtered kNN search still returns k hits whenever k images match (efficient filtering, not post-filtering).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import fields
from .errors import QueryError
from .geometry import check_geometry


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


def parse_geometry(value: Any) -> dict[str, Any]:
    """A GeoJSON geometry, checked for shape and validity (`rsrt.search.geometry`) before it reaches the cluster."""
    try:
        check_geometry(value)
    except ValueError as exc:
        raise QueryError("intersects", str(exc)) from None
    return value


# Mapped types of item properties a filter value is converted for (see `Filters.typed`).
NUMERIC_TYPES = frozenset({"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float",
                           "unsigned_long"})
WHOLE_NUMBER_TYPES = frozenset({"long", "integer", "short", "byte", "unsigned_long"})
_SLASHED_DATE = re.compile(r"^\d{4}/\d{2}/\d{2}( \d{2}:\d{2}:\d{2})?( [+-]?\w+)?$")  # dynamic date formats


def property_value(key: str, value: Any, kind: str) -> Any:
    """A filter value as the property's mapped type wants it; QueryError naming the property otherwise.

    The cluster refuses a wrong value only in some query paths and matches nothing in others (a
    kNN filter), so a value that cannot match the type is refused here, in every mode alike.
    """
    if kind in NUMERIC_TYPES:
        number: float | int | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            text = value.strip()
            try:  # whole numbers as int first: a float has no room for every long
                number = int(text) if text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise QueryError("properties", f"{key!r} holds numbers; {value!r} is not a number")
        if kind in WHOLE_NUMBER_TYPES:
            if number != int(number):
                raise QueryError("properties", f"{key!r} holds whole numbers; {value!r} is not one")
            return int(number)
        return float(number)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise QueryError("properties", f"{key!r} holds true/false; {value!r} is neither")
    if kind == "date":
        text = str(value).strip()
        if not (text.isdigit() or _SLASHED_DATE.match(text) or _is_iso(text)):
            raise QueryError("properties", f"{key!r} holds dates; {value!r} is not an ISO 8601 date or date-time")
        return text
    return value


def _is_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        return False
    return True


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

    def typed(self, types: dict[str, str]) -> Filters:
        """These filters with each property value converted for its mapped type (`types`: name → type).

        `--property cloud_cover=10` arrives as text; a numeric, boolean or date property gets a value
        of its own type, or a QueryError naming the property. Unmapped properties are left as given.
        """
        if not self.properties:
            return self
        typed: dict[str, Any] = {}
        for key, value in self.properties.items():
            kind = types.get(key, "")
            items = [property_value(key, item, kind) for item in (value if isinstance(value, list) else [value])]
            typed[key] = items if isinstance(value, list) else items[0]
        return replace(self, properties=typed)

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
            # One `term` per value: k-NN 2.19 matches nothing for a `terms` clause on a numeric field
            # inside a nested kNN filter (a `term` works, on every field type).
            terms = [{"term": {fields.property_field(key): item}}
                     for item in (value if isinstance(value, list) else [value])]
            out.append(terms[0] if len(terms) == 1 else {"bool": {"should": terms, "minimum_should_match": 1}})
        if self.ids:
            out.append({"ids": {"values": self.ids}})
        return out

    def as_filter(self, geo_field: str = fields.GEOMETRY) -> dict[str, Any] | None:
        clauses = self.clauses(geo_field)
        if not clauses:
            return None
        return {"bool": {"filter": clauses}}
