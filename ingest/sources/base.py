"""What every ingest source shares: the `Source` base, per-item problems, and small helpers.

A source turns an archive on disk (a folder of images, a STAC catalog, a JSONL of precomputed
captions) into `ImageRecord`s. Archives are messy, so iteration never raises for one bad item: it
yields a `SourceProblem` instead and carries on. Only problems with the source as a whole (missing
path, unreadable root file, nothing to ingest) raise a `SourceError` before iteration starts.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

from rsrt.search.errors import RsrtError
from rsrt.search.schema import ImageRecord

# Files a folder source reads; also how the JSONL source recognises an image path in "image".
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
TIFF_EXTENSIONS: frozenset[str] = frozenset({".tif", ".tiff"})
JSONL_EXTENSIONS: frozenset[str] = frozenset({".jsonl", ".ndjson"})
STAC_JSON_EXTENSIONS: frozenset[str] = frozenset({".json", ".geojson"})
STAC_ROOT_NAMES: tuple[str, ...] = ("catalog.json", "collection.json")


class SourceError(RsrtError):
    """The source as a whole cannot be read (the CLI prints the message and stops)."""


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
    """Validate a GeoJSON geometry (WGS84) and bbox; derive the bbox from the geometry if missing.

    Raises ValueError naming what is wrong; shapely is only needed when a geometry is present.
    """
    out_bbox = bbox_2d(bbox) if bbox is not None else None
    if geometry is None:
        return None, out_bbox
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise ValueError("geometry must be a GeoJSON geometry object")
    try:
        from shapely.geometry import shape
    except ImportError as exc:  # pragma: no cover - shapely is in the geo extra
        raise ValueError("geometry needs shapely (pip install 'rsrt-search[geo]')") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            geom = shape(geometry)
    except Exception as exc:  # shapely raises several types for bad GeoJSON
        raise ValueError(f"geometry is not valid GeoJSON ({exc})") from None
    if geom.is_empty:
        raise ValueError("geometry is empty")
    if out_bbox is None:
        out_bbox = bbox_2d(list(geom.bounds))
    return json_safe(geometry), out_bbox
