"""Place, time, collection and property filters, validated once and rendered as pre-filters.

The same filter clauses go inside every sub-query (the kNN `filter`, the BM25 bool filter), so a
filtered kNN search still returns k hits whenever k images match (efficient filtering, not post-filtering).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from . import fields
from .errors import QueryError
from .geometry import bare_geometry, check_geometry

# RFC 3339 section 5.6 `date-time`, the only instant STAC API item search accepts: a full date, a
# time with seconds, optional fraction after a '.', and an offset (Z or ±hh:mm). Python's
# fromisoformat alone also takes dates without a time, "+0100", no offset, "50.Z" and "50,52Z".
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def parse_instant(value: str, field_name: str) -> datetime:
    """A strict RFC 3339 date-time, in UTC (a leap second :60 is taken as the last instant of :59)."""
    text = value.strip()
    found = _RFC3339.fullmatch(text)
    moment = None
    if found:
        year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
        fraction, offset = found.group(7) or "", found.group(8).upper()
        microsecond = int((fraction[1:] + "000000")[:6]) if fraction else 0
        if second == 60:  # RFC 3339 allows a leap second; Python's datetime has no room for it
            second, microsecond = 59, 999_999
        try:
            zone = UTC if offset == "Z" else timezone(
                (1 if offset[0] == "+" else -1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
            moment = datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone)
        except ValueError:  # month 13, day 32, hour 25, offset +24:00 ...
            moment = None
    if moment is None:
        raise QueryError(field_name, f"{value!r} is not an RFC 3339 date-time such as 2020-01-31T00:00:00Z")
    return moment.astimezone(UTC)


def complete_dates(value: str | None) -> str | None:
    """A datetime filter with bare dates (`2020-01-01`, `2020-01-01/..`) completed to RFC 3339: a date
    that starts an interval is its first instant, one that ends it its last, a lone date the whole day.

    For command lines, where typing a full date-time is a chore; the STAC API takes RFC 3339 only.
    """
    if not value or not isinstance(value, str):
        return value
    parts = value.split("/")
    if len(parts) > 2 or not any(_BARE_DATE.fullmatch(part.strip()) for part in parts):
        return value
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    start, end = (part.strip() for part in parts)
    start = f"{start}T00:00:00Z" if _BARE_DATE.fullmatch(start) else start
    end = f"{end}T23:59:59.999999Z" if _BARE_DATE.fullmatch(end) else end
    return f"{start}/{end}"


_BARE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_datetime_interval(value: str) -> tuple[datetime | None, datetime | None]:
    """STAC-style: an instant, or `start/end` with `..` or an empty side for an open end."""
    if not isinstance(value, str) or not value.strip():
        raise QueryError("datetime", "give an instant or an interval start/end")
    if "/" not in value:
        moment = parse_instant(value, "datetime")
        return moment, moment
    if value.count("/") != 1:
        raise QueryError("datetime", f"{value!r} has more than one '/'")
    start_text, end_text = (part.strip() for part in value.split("/"))
    start = None if start_text in {"", ".."} else parse_instant(start_text, "datetime")
    end = None if end_text in {"", ".."} else parse_instant(end_text, "datetime")
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
    return bare_geometry(value)


# Mapped types of item properties a filter value is converted for (see `Filters.typed`).
NUMERIC_TYPES = frozenset({"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float",
                           "unsigned_long"})
WHOLE_NUMBER_TYPES = frozenset({"long", "integer", "short", "byte", "unsigned_long"})
_SLASHED_DATE = re.compile(r"^\d{4}/\d{2}/\d{2}( \d{2}:\d{2}:\d{2})?( [+-]?\w+)?$")  # dynamic date formats


def property_value(key: str, value: Any, kind: str, field_name: str = "properties") -> Any:
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
            raise QueryError(field_name, f"{key!r} holds numbers; {value!r} is not a number")
        if kind in WHOLE_NUMBER_TYPES:
            if number != int(number):
                raise QueryError(field_name, f"{key!r} holds whole numbers; {value!r} is not one")
            return int(number)
        return float(number)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise QueryError(field_name, f"{key!r} holds true/false; {value!r} is neither")
    if kind == "date":
        text = str(value).strip()
        if not (text.isdigit() or _SLASHED_DATE.match(text) or _is_iso(text)):
            raise QueryError(field_name, f"{key!r} holds dates; {value!r} is not an ISO 8601 date or date-time")
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
    cql2: dict[str, Any] | None = None  # a CQL2 JSON filter (`rsrt.search.cql2.parse_filter`)
    # cql2 rendered for the index's mapped types (`typed`): None until then
    cql2_clause: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, bbox: Any = None, intersects: Any = None, datetime: str | None = None,
              collections: Any = None, properties: dict[str, Any] | None = None,
              ids: list[str] | None = None, cql2: dict[str, Any] | None = None) -> Filters:
        """Validate user input; raises QueryError naming the field.

        `cql2` is CQL2 JSON as `rsrt.search.cql2.parse_filter` returns it; its property names are
        checked against the index's mapping later, in `typed`.
        """
        if bbox not in (None, "", []) and intersects not in (None, "", {}):
            raise QueryError("bbox", "give bbox or intersects, not both (STAC API item search: they exclude "
                                     "each other)")
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
            cql2=cql2 or None,
        )
        if built.datetime:
            parse_datetime_interval(built.datetime)
        return built

    def typed(self, types: dict[str, str]) -> Filters:
        """These filters with each property value converted for its mapped type (`types`: name → type).

        `--property cloud_cover=10` arrives as text; a numeric, boolean or date property gets a value
        of its own type, or a QueryError naming the property. Unmapped properties are left as given.
        The CQL2 filter is rendered here too (`cql2.to_clause`): an unknown property in it is a
        QueryError naming `filter`, never a clause that silently matches nothing.
        """
        if not self.properties and not self.cql2:
            return self
        typed: dict[str, Any] = {}
        for key, value in self.properties.items():
            kind = types.get(key, "")
            items = [property_value(key, item, kind) for item in (value if isinstance(value, list) else [value])]
            typed[key] = items if isinstance(value, list) else items[0]
        clause = None
        if self.cql2:
            from .cql2 import to_clause

            clause = to_clause(self.cql2, types)
        return replace(self, properties=typed, cql2_clause=clause)

    def property_names(self) -> list[str]:
        """The item properties these filters name (the `Searcher` reads their mapped types)."""
        names = list(self.properties)
        if self.cql2:
            from .cql2 import property_names

            names += [name for name in property_names(self.cql2) if name not in names]
        return names

    def is_empty(self) -> bool:
        return not (self.bbox or self.intersects or self.datetime or self.collections or self.properties or self.ids
                    or self.cql2)

    @property
    def has_place(self) -> bool:
        return bool(self.bbox or self.intersects)

    @property
    def exact_only(self) -> bool:
        """Whether a clause here cannot sit in a nested kNN filter, so dense search scores exactly over
        the filtered images instead (`queries.exact_dense_query`). k-NN 2.19 matches nothing, or
        everything, for parent-level geo_shape, must_not, exists and wildcard clauses there (measured:
        tests/test_cql2.py); term, range and their and/or work."""
        if self.has_place:
            return True
        if self.cql2:
            from .cql2 import knn_prefilter_safe

            return not knn_prefilter_safe(self.cql2)
        return False

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
        if self.cql2:
            if self.cql2_clause is None:
                raise RuntimeError("a CQL2 filter is rendered for the index's mapping first (Filters.typed)")
            out.append(self.cql2_clause)
        return out

    def as_filter(self, geo_field: str = fields.GEOMETRY) -> dict[str, Any] | None:
        clauses = self.clauses(geo_field)
        if not clauses:
            return None
        return {"bool": {"filter": clauses}}
