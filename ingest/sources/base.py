"""What every ingest source shares: the `Source` base, per-item problems, and small helpers.

A source turns an archive on disk (a folder of images, a STAC catalog, a JSONL of precomputed
captions) into `ImageRecord`s. Archives are messy, so iteration never raises for one bad item: it
yields a `SourceProblem` instead and carries on. Only problems with the source as a whole (missing
path, unreadable root file, nothing to ingest) raise a `SourceError` before iteration starts.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from rsrt.search.errors import RsrtError
from rsrt.search.geometry import bbox_contains, bbox_geometry, bounds, check_geometry
from rsrt.search.schema import ImageRecord

# Files a folder source reads; also how the JSONL source recognises an image path in "image".
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
TIFF_EXTENSIONS: frozenset[str] = frozenset({".tif", ".tiff"})
JSONL_EXTENSIONS: frozenset[str] = frozenset({".jsonl", ".ndjson"})
STAC_JSON_EXTENSIONS: frozenset[str] = frozenset({".json", ".geojson"})
STAC_ROOT_NAMES: tuple[str, ...] = ("catalog.json", "collection.json")


class SourceError(RsrtError):
    """The source as a whole cannot be read (the CLI prints the message and stops): bad input, exit 2."""

    exit_code = 2


class SourceUnreachable(SourceError):
    """A remote source stayed unreachable through its retries (5xx, 429, time-outs): run again later, exit 1."""

    exit_code = 1


@dataclass(frozen=True)
class SourceProblem:
    """One item that could not be turned into a record; the run goes on without it.

    `item` names what was skipped (an image path, a STAC id, an image id of a caption file),
    `reason` says why in words the user can act on, and `path`/`lines` point at where to look.
    """

    item: str
    reason: str
    path: str | None = None
    lines: tuple[int, ...] = ()  # 1-based line numbers, for line-oriented files

    @property
    def line(self) -> int | None:
        """The first line involved, when the source is line-oriented."""
        return self.lines[0] if self.lines else None

    @property
    def location(self) -> str:
        """`file`, `file:3` or `file:3,8` — what an editor or grep wants."""
        where = self.path or ""
        if self.lines:
            where = f"{where}:{','.join(str(n) for n in self.lines)}"
        return where

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for ingest reports."""
        return {"item": self.item, "reason": self.reason, "path": self.path, "lines": list(self.lines)}

    def __str__(self) -> str:
        prefix = f"{self.location}: " if self.location else ""
        return f"{prefix}{self.item}: {self.reason}"


# What iterating a source yields: a record ready for captioning/encoding, or a problem to report.
SourceItem = ImageRecord | SourceProblem


class Source(ABC):
    """An archive that yields one `SourceItem` per image, in a deterministic order.

    Implementations declare `kind` and `needs_captioning` and implement `describe()` and
    `__iter__()`. Constructing a source validates the source as a whole (raising `SourceError`);
    iterating it never raises for a single bad item.
    """

    kind: ClassVar[str] = ""
    # True when records come without variants and a captioner must fill them (images);
    # False when the source already carries the caption variants (caption files).
    needs_captioning: ClassVar[bool] = True

    @abstractmethod
    def describe(self) -> str:
        """One line for logs and the CLI: what is read and from where."""

    @abstractmethod
    def __iter__(self) -> Iterator[SourceItem]:
        """Records and problems, in a stable order (same input, same order, same ids)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every source's `__iter__` is wrapped once so each record it yields passes `checked_item`:
        the checks that protect the index hold for every kind of source, present and future."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__iter__")
        if own is None or getattr(own, "_checks_records", False):
            return

        @functools.wraps(own)
        def checked(self: Source) -> Iterator[SourceItem]:
            for item in own(self):
                yield checked_item(item)

        checked._checks_records = True  # type: ignore[attr-defined]
        cls.__iter__ = checked  # type: ignore[method-assign]

    def count_hint(self) -> int | None:
        """How many items iteration will probably yield, for a progress bar; None when unknown."""
        return None

    def records(self, problems: list[SourceProblem] | None = None) -> Iterator[ImageRecord]:
        """Only the records; problems are appended to `problems` when given, else dropped."""
        for item in self:
            if isinstance(item, SourceProblem):
                if problems is not None:
                    problems.append(item)
            else:
                yield item

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# ---------------------------------------------------------------------------- small shared helpers


def path_to_uri(path: str | Path) -> str:
    """Local files are recorded as absolute `file://` URIs so that `source_uri` is always a URI."""
    return Path(path).expanduser().resolve().as_uri()


def uri_to_path(uri: str) -> Path | None:
    """The local path behind a `file://` URI or a plain path; None for remote URIs (http, s3, ...)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):  # C:\ paths
        return Path(uri)
    return None


def to_iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a `Z`; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_iso_datetime(text: str) -> str:
    """Normalise an ISO 8601 string (date or date-time, `Z` or offset) to `to_iso_utc` form.

    Raises ValueError with the offending text, so callers can turn it into a problem.
    """
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"datetime {text!r} is not ISO 8601") from None
    return to_iso_utc(parsed)


def json_safe(value: Any) -> Any:
    """A deep copy that `json.dumps` accepts (datetimes become ISO strings, others `str()`).

    Properties are indexed as-is, so anything exotic a library handed us must become plain JSON.
    """
    return json.loads(json.dumps(value, default=_json_default, allow_nan=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_iso_utc(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def bbox_2d(bbox: Any) -> list[float]:
    """[w, s, e, n] from a 2D or 3D GeoJSON bbox; ValueError when it is not one."""
    if not isinstance(bbox, list | tuple) or len(bbox) not in (4, 6):
        raise ValueError(f"bbox must be 4 or 6 numbers, got {bbox!r}"[:200])
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        raise ValueError(f"bbox must be numbers, got {bbox!r}"[:200])
    if len(bbox) == 6:
        bbox = [bbox[0], bbox[1], bbox[3], bbox[4]]
    west, south, east, north = (float(v) for v in bbox)
    if not (-90.0 <= south <= north <= 90.0) or not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0):
        raise ValueError(f"bbox {[west, south, east, north]} is not WGS84 [west, south, east, north]")
    return [west, south, east, north]


def geometry_and_bbox(geometry: Any, bbox: Any) -> tuple[dict[str, Any] | None, list[float] | None]:
    """Validate a GeoJSON geometry (WGS84) and bbox; each stands in for the other when it is missing.

    A bbox alone becomes its polygon (two across the antimeridian), so the record still matches
    place filters, which query the geometry. A geometry is checked before it can reach the cluster
    (unclosed rings, too few positions, coordinates out of range, self-intersections: OpenSearch
    would refuse the whole document on every run), and a bbox given beside it must contain it.
    Raises ValueError naming what is wrong; the sources turn it into a `SourceProblem` for the item.
    """
    out_bbox = bbox_2d(bbox) if bbox is not None else None
    if geometry is None:
        return (bbox_geometry(out_bbox) if out_bbox is not None else None), out_bbox
    positions = check_geometry(geometry)
    if out_bbox is None:
        out_bbox = bbox_2d(bounds(positions))
    elif not bbox_contains(out_bbox, positions):
        west, south, east, north = bounds(positions)
        raise ValueError(f"bbox {out_bbox} does not contain the geometry (its bounds are "
                         f"{[west, south, east, north]})")
    return json_safe(geometry), out_bbox


# ---------------------------------------------------------------------------- what properties may map

# Every property path becomes a field of the index mapping, which holds 1,000 fields in all (rsrt's own
# take about 35): one image must not be able to use them up and have every later image refused.
MAX_PROPERTY_FIELDS = 200
# OpenSearch refuses a document whose objects nest deeper than 20 (index.mapping.depth.limit).
MAX_PROPERTY_DEPTH = 8
MAX_PROPERTY_KEY_CHARS = 256


def property_fields(properties: dict[str, Any]) -> tuple[set[str], int]:
    """(the field paths `properties` would add to the mapping, their deepest nesting).

    A dotted key is a path of objects to OpenSearch, like a nested object; lists add their items'
    fields once; nulls map nothing. ValueError for keys OpenSearch refuses (empty, blank, stray dots).
    """
    paths: set[str] = set()
    deepest = 0

    def walk(value: Any, prefix: tuple[str, ...]) -> None:
        nonlocal deepest
        if isinstance(value, dict):
            for key, inner in value.items():
                parts = key.rstrip(".").split(".") if isinstance(key, str) else [""]
                if any(not part.strip() for part in parts):  # what OpenSearch refuses to map
                    raise ValueError(f"property name {key!r} under {'.'.join(prefix) or 'properties'} cannot be a "
                                     "field name (empty, blank, or an empty part between dots)"[:200])
                if len(key) > MAX_PROPERTY_KEY_CHARS:
                    raise ValueError(f"property name {key[:40]!r}... is {len(key)} characters "
                                     f"(at most {MAX_PROPERTY_KEY_CHARS})")
                walk(inner, (*prefix, *parts))
        elif isinstance(value, list):
            for inner in value:
                walk(inner, prefix)
        elif value is not None:
            paths.add(".".join(prefix))
            deepest = max(deepest, len(prefix))

    walk(properties, ())
    return paths, deepest


def check_properties(properties: dict[str, Any]) -> None:
    """ValueError when `properties` would harm the index mapping (too many fields, too deep, bad names)."""
    paths, deepest = property_fields(properties)
    if len(paths) > MAX_PROPERTY_FIELDS:
        raise ValueError(f"properties hold {len(paths):,} fields, more than the {MAX_PROPERTY_FIELDS} one image may "
                         "add to the index mapping (1,000 fields in all): flatten or drop some "
                         "(an object keyed by ids or dates, say)")
    if deepest > MAX_PROPERTY_DEPTH:
        raise ValueError(f"properties nest {deepest} levels deep; at most {MAX_PROPERTY_DEPTH}")


def checked_item(item: SourceItem) -> SourceItem:
    """A record a source made, or the problem that keeps it out of the index (its properties)."""
    if isinstance(item, SourceProblem):
        return item
    try:
        check_properties(item.properties or {})
    except ValueError as exc:
        return SourceProblem(item.image_id, str(exc), item.source_uri or None)
    return item
