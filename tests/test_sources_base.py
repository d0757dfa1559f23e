"""The shared surface: open_source() detection and errors, SourceProblem, and the small helpers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rsrt.ingest.sources as sources
from rsrt.ingest.sources import (
    CaptionsJsonlSource,
    FolderSource,
    Source,
    SourceError,
    SourceProblem,
    StacSource,
    open_source,
    path_to_uri,
    uri_to_path,
)
from rsrt.ingest.sources.base import bbox_2d, geometry_and_bbox, parse_iso_datetime, to_iso_utc
from rsrt.search.errors import ConfigError, RsrtError
from rsrt.search.schema import ImageRecord


def write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


def test_public_surface_is_exported() -> None:
    for name in sources.__all__:
        assert hasattr(sources, name), name
    assert issubclass(SourceError, RsrtError)
    for cls in (FolderSource, StacSource, CaptionsJsonlSource):
        assert issubclass(cls, Source)
    assert (FolderSource.needs_captioning, StacSource.needs_captioning) == (True, True)
    assert CaptionsJsonlSource.needs_captioning is False
    with pytest.raises(TypeError):
        Source()  # type: ignore[abstract]


def test_every_source_names_its_kind() -> None:
    from rsrt.ingest.sources.caption_lists import CaptionListSource

    # open_source takes "auto" and the kinds opened by a path; a benchmark split is opened by name
    assert set(sources.SOURCE_KINDS) == {"auto", FolderSource.kind, StacSource.kind, CaptionsJsonlSource.kind}
    assert CaptionListSource.kind == "benchmark" and "benchmark" not in sources.SOURCE_KINDS


def test_open_source_detects_each_kind(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "imgs" / "a.jpg")
    captions = tmp_path / "caps.jsonl"
    captions.write_text(json.dumps({"image": "a.jpg", "variants": []}) + "\n")
    stac = tmp_path / "items.json"
    stac.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "stac_version": "1.0.0", "id": "x"}],
            }
        )
    )
    assert isinstance(open_source(tmp_path / "imgs"), FolderSource)
    assert isinstance(open_source(captions), CaptionsJsonlSource)
    assert isinstance(open_source(stac), StacSource)
    # explicit kinds, with aliases
    assert isinstance(open_source(captions, kind="jsonl"), CaptionsJsonlSource)
    assert isinstance(open_source(tmp_path / "imgs", kind="folder", collection="c"), FolderSource)
    assert "folder" in open_source(tmp_path / "imgs").describe()


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\xef\xbb\xbf\n"])
def test_empty_captions_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "caps.jsonl"
    path.write_bytes(content)
    with pytest.raises(SourceError, match="empty") as err:
        open_source(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "no such file or directory"),
        ("notes.txt", "cannot tell what this is"),
        ("single.jpg", "is a single image"),
    ],
)
def test_open_source_errors_name_the_path(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    if name == "notes.txt":
        path.write_text("hello")
    elif name == "single.jpg":
        write_jpeg(path)
    with pytest.raises(SourceError) as err:
        open_source(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_open_source_unknown_kind_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown source kind 'zip'"):
        open_source(tmp_path, kind="zip")


def test_source_problem_formats_location() -> None:
    p = SourceProblem("img_1", "expected 5 variants, found 4", "/x/caps.jsonl", (3, 8))
    assert p.line == 3
    assert p.location == "/x/caps.jsonl:3,8"
    assert str(p) == "/x/caps.jsonl:3,8: img_1: expected 5 variants, found 4"
    assert p.to_dict() == {
        "item": "img_1",
        "reason": "expected 5 variants, found 4",
        "path": "/x/caps.jsonl",
        "lines": [3, 8],
    }
    bare = SourceProblem("a.jpg", "truncated")
    assert bare.line is None and str(bare) == "a.jpg: truncated"


def test_records_helper_separates_problems(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    problems: list[SourceProblem] = []
    records = list(FolderSource(tmp_path).records(problems))
    assert [r.image_id for r in records] == ["good"]
    assert all(isinstance(r, ImageRecord) for r in records)
    assert [p.item for p in problems] == ["bad.jpg"]


def test_uri_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "with space" / "a#b.jpg"
    uri = path_to_uri(path)
    assert uri.startswith("file:///") and " " not in uri
    assert uri_to_path(uri) == path.resolve()
    assert uri_to_path("/plain/path.jpg") == Path("/plain/path.jpg")
    assert uri_to_path("https://example.org/a.jpg") is None
    assert uri_to_path("s3://bucket/a.jpg") is None


def test_datetime_helpers() -> None:
    assert to_iso_utc(datetime(2020, 1, 2, 3, 4, 5)) == "2020-01-02T03:04:05Z"
    plus2 = timezone(timedelta(hours=2))
    assert to_iso_utc(datetime(2020, 1, 2, 3, 4, 5, 500, tzinfo=plus2)) == "2020-01-02T01:04:05.000500Z"
    assert parse_iso_datetime("2020-01-02") == "2020-01-02T00:00:00Z"
    assert parse_iso_datetime("2020-01-02T03:04:05z") == "2020-01-02T03:04:05Z"
    with pytest.raises(ValueError, match="not ISO 8601"):
        parse_iso_datetime("02/01/2020")


def test_geometry_helpers() -> None:
    assert bbox_2d([1, 2, 0, 3, 4, 100]) == [1.0, 2.0, 3.0, 4.0]
    assert bbox_2d([170, -10, -170, 10]) == [170.0, -10.0, -170.0, 10.0]  # antimeridian: west > east
    for bad in ([1, 2, 3], [0, 50, 1, 40], [0, 0, 200, 1], "0,0,1,1", [0, 0, True, 1]):
        with pytest.raises(ValueError):
            bbox_2d(bad)
    line = {"type": "LineString", "coordinates": [[0, 0], [2, 1]]}
    assert geometry_and_bbox(line, None) == (line, [0.0, 0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="not valid GeoJSON"):
        geometry_and_bbox({"type": "Polygon", "coordinates": "x"}, None)
