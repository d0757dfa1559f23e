"""GeoJSON checks shared by the query side (`--intersects`) and the write side (a record's footprint).

A geometry the cluster cannot index is refused whole by OpenSearch (a dead letter, re-sent on every
run) and one it indexes wrongly matches the wrong places, so both sides check the same things
before anything is sent: the structure and coordinates by hand (no dependency needed), then, when
shapely is installed (the `geo` extra), topological validity (self-intersections). Errors are
`ValueError`s whose message says what is wrong; callers add which item or parameter it was.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                            "GeometryCollection"})
# A bbox may sit this far inside its geometry's bounds and still be taken to contain it: rounding
# of published bboxes (6 decimals) and of reprojected footprints is far below it; ~110 m at the equator.
BBOX_TOLERANCE_DEGREES = 1e-3

Position = list[float]


def _malformed(where: str, what: str) -> ValueError:
    return ValueError(f"geometry is not valid GeoJSON ({where}: {what})"[:200])


def _position(value: Any, where: str) -> Position:
    if not isinstance(value, list | tuple) or len(value) not in (2, 3):
        raise _malformed(where, f"a position must be [longitude, latitude], got {value!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise _malformed(where, f"coordinates must be numbers, got {value!r}")
    lon, lat = float(value[0]), float(value[1])
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise ValueError(f"{where}: coordinates must be finite, got {value!r}"[:200])
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ValueError(f"{where}: [{lon}, {lat}] is not WGS84 longitude/latitude")
    return [lon, lat]


def _positions(value: Any, where: str, minimum: int) -> list[Position]:
    if not isinstance(value, list | tuple):
        raise _malformed(where, "expected a list of positions")
    points = [_position(p, where) for p in value]
    if len(points) < minimum:
        raise ValueError(f"{where}: needs at least {minimum} positions, has {len(points)}")
    return points


def _ring(value: Any, where: str) -> list[Position]:
    ring = _positions(value, where, 4)
    if ring[0] != ring[-1]:
        raise ValueError(f"{where} is not closed: it starts at {ring[0]} and ends at {ring[-1]}")
    return ring


def _polygon(value: Any, where: str) -> list[Position]:
    if not isinstance(value, list | tuple) or not value:
        raise _malformed(where, "expected a list of rings")
    return [p for n, ring in enumerate(value) for p in _ring(ring, f"{where} ring {n}")]


def _parts(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list | tuple) or not value:
        raise _malformed(where, "expected a non-empty list")
    return list(value)


def geometry_positions(geometry: Any) -> list[Position]:
    """Every position of a GeoJSON geometry, after checking its structure; ValueError says what is wrong.

    Checked by hand: the type, positions of two or three finite numbers within WGS84 ranges, at least
    two positions per line, rings of at least four positions that end where they start. A
    GeometryCollection (STAC API item search accepts every GeoJSON geometry) holds at least one
    member and no collection within it (RFC 7946 section 3.1.8 advises against nesting them).
    """
    if isinstance(geometry, dict) and geometry.get("type") == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, list | tuple) or not members:
            raise _malformed("GeometryCollection", "`geometries` must be a non-empty list of geometries")
        if any(isinstance(m, dict) and m.get("type") == "GeometryCollection" for m in members):
            raise _malformed("GeometryCollection", "a GeometryCollection inside another is not supported")
        return [p for member in members for p in geometry_positions(member)]
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRY_TYPES:
        kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
        raise ValueError(f"geometry must be a GeoJSON geometry ({', '.join(sorted(GEOMETRY_TYPES))}), "
                         f"not {kind!r}"[:200])
    kind, coordinates = geometry["type"], geometry.get("coordinates")
    if kind == "Point":
        return [_position(coordinates, "Point")]
    if kind == "MultiPoint":
        return _positions(coordinates, "MultiPoint", 1)
    if kind == "LineString":
        return _positions(coordinates, "LineString", 2)
    if kind == "MultiLineString":
        return [p for n, line in enumerate(_parts(coordinates, kind))
                for p in _positions(line, f"MultiLineString line {n}", 2)]
    if kind == "Polygon":
        return _polygon(coordinates, "Polygon")
    return [p for n, polygon in enumerate(_parts(coordinates, kind))
            for p in _polygon(polygon, f"MultiPolygon polygon {n}")]


def check_geometry(geometry: Any) -> list[Position]:
    """`geometry_positions`, then (with shapely) topological validity: a self-intersecting polygon fails.

    Returns the positions, so callers can compute bounds or test containment without shapely.
    """
    positions = geometry_positions(geometry)
    try:
        from shapely.geometry import shape
        from shapely.validation import explain_validity
    except ImportError:  # pragma: no cover - shapely is in the geo extra; the hand checks still ran
        return positions
    try:
        with warnings.catch_warnings():  # shapely warns on some invalid input; the check below says why
            warnings.simplefilter("ignore")
            geom = shape(geometry)
    except Exception as exc:  # shapely raises several types for coordinates it cannot use
        raise ValueError(f"geometry is not valid GeoJSON ({exc})") from None
    if geom.is_empty:
        raise ValueError("geometry is empty")
    if not geom.is_valid:
        raise ValueError(f"geometry is invalid: {explain_validity(geom)}")
    return positions


def bounds(positions: list[Position]) -> list[float]:
    """[west, south, east, north] of positions (a plain min/max: west ≤ east always)."""
    lons, lats = [p[0] for p in positions], [p[1] for p in positions]
    return [min(lons), min(lats), max(lons), max(lats)]


def bbox_contains(bbox: list[float], positions: list[Position],
                  tolerance: float = BBOX_TOLERANCE_DEGREES) -> bool:
    """Whether every position lies in [west, south, east, north] (west > east: across the antimeridian)."""
    west, south, east, north = bbox
    for lon, lat in positions:
        if not south - tolerance <= lat <= north + tolerance:
            return False
        inside = (west - tolerance <= lon <= east + tolerance if west <= east
                  else lon >= west - tolerance or lon <= east + tolerance)
        if not inside:
            return False
    return True


def _box(west: float, south: float, east: float, north: float) -> list[list[Position]]:
    return [[[west, south], [east, south], [east, north], [west, north], [west, south]]]  # counter-clockwise


def bbox_geometry(bbox: list[float]) -> dict[str, Any]:
    """The footprint a bbox stands for, as GeoJSON the cluster indexes.

    A box across the antimeridian (west > east) is two boxes, one each side; a box of no width or
    height is a line or a point (a zero-area polygon is not a valid shape).
    """
    west, south, east, north = (float(v) for v in bbox)
    if west > east:
        return {"type": "MultiPolygon", "coordinates": [_box(west, south, 180.0, north),
                                                        _box(-180.0, south, east, north)]}
    if west == east and south == north:
        return {"type": "Point", "coordinates": [west, south]}
    if west == east or south == north:
        return {"type": "LineString", "coordinates": [[west, south], [east, north]]}
    return {"type": "Polygon", "coordinates": _box(west, south, east, north)}



def bare_geometry(geometry: dict[str, Any]) -> dict[str, Any]:
    """A checked geometry with only what the cluster reads (`type` and `coordinates`, or a collection's
    `geometries`, each bare too): foreign members such as `bbox` or `crs` never reach a query."""
    if geometry.get("type") == "GeometryCollection":
        return {"type": "GeometryCollection", "geometries": [bare_geometry(m) for m in geometry["geometries"]]}
    return {"type": geometry["type"], "coordinates": geometry["coordinates"]}
