"""FolderSource over real image files written in tmp_path (and the RSICD sample, read in place)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.warp import transform as warp_points
from shapely.geometry import Point, shape

from rsrt.ingest.sources import (
    FolderSource,
    SourceError,
    SourceProblem,
    open_source,
    uri_to_path,
)
from rsrt.search.schema import ImageRecord, stable_image_id

RSICD_SAMPLE = Path("/work/shared/images/rsicd-sample")

# A 100 x 50 pixel, 100 m GeoTIFF in UTM 33N whose top edge is centred on the zone's central
# meridian (15°E): easting 495 000–505 000, northing 4 995 000–5 000 000.
UTM_EPSG = 32633
UTM_LEFT, UTM_TOP, UTM_PIXEL, UTM_W, UTM_H = 495_000.0, 5_000_000.0, 100.0, 100, 50


def _rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def write_jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _rgb(seed=seed).save(path, format="JPEG", quality=90)
    return path


def write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _rgb(seed=seed).save(path, format="PNG")
    return path


def write_utm_geotiff(path: Path, datetime_tag: str | None = "2021:06:01 10:20:30") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(1).integers(0, 255, (3, UTM_H, UTM_W), dtype=np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=UTM_W,
        height=UTM_H,
        count=3,
        dtype="uint8",
        crs=f"EPSG:{UTM_EPSG}",
        transform=Affine(UTM_PIXEL, 0.0, UTM_LEFT, 0.0, -UTM_PIXEL, UTM_TOP),
    ) as ds:
        ds.write(data)
        if datetime_tag:
            ds.update_tags(TIFFTAG_DATETIME=datetime_tag)
    return path


def write_plain_tiff(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _rgb(seed=3).save(path, format="TIFF")
    return path


def only(items: list, kind: type) -> list:
    return [item for item in items if isinstance(item, kind)]


def test_walks_recursively_sorted_skipping_hidden_and_other_files(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "b.jpg")
    write_png(tmp_path / "a.PNG")  # upper-case extension
    write_jpeg(tmp_path / "sub" / "deep" / "c.jpeg")
    write_plain_tiff(tmp_path / "sub" / "d.TIF")
    write_jpeg(tmp_path / ".hidden.jpg")
    write_jpeg(tmp_path / ".cache" / "e.jpg")  # hidden directory
    (tmp_path / "notes.txt").write_text("not an image")

    source = FolderSource(tmp_path, collection="demo")
    items = list(source)

    assert only(items, SourceProblem) == []
    records = only(items, ImageRecord)
    assert [r.properties["file:path"] for r in records] == ["a.PNG", "b.jpg", "sub/d.TIF", "sub/deep/c.jpeg"]
    assert [r.image_id for r in records] == [
        "a",
        "b",
        stable_image_id("sub/d"),
        stable_image_id("sub/deep/c"),
    ]
    assert all(r.collection == "demo" for r in records)
    assert all(r.variants == [] for r in records)
    assert source.needs_captioning is True
    assert source.count_hint() == 4
    # source_uri is an absolute file:// URI that leads back to the file
    for record in records:
        assert record.source_uri.startswith("file:///")
        assert uri_to_path(record.source_uri) == (tmp_path / record.properties["file:path"]).resolve()
    png = records[0]
    assert png.properties["format"] == "PNG"
    assert (png.properties["width"], png.properties["height"], png.properties["bands"]) == (64, 48, 3)
    assert png.geometry is None and png.bbox is None and png.datetime is None
    # deterministic: same items, same order, on a second pass
    assert list(source) == items


def test_geotiff_footprint_is_wgs84_and_densified(tmp_path: Path) -> None:
    write_utm_geotiff(tmp_path / "scene.tif")
    (record,) = list(FolderSource(tmp_path))
    assert isinstance(record, ImageRecord)
    west, south, east, north = record.bbox

    bottom = UTM_TOP - UTM_H * UTM_PIXEL
    right = UTM_LEFT + UTM_W * UTM_PIXEL
    xs = [UTM_LEFT, right, UTM_LEFT, 500_000.0]
    ys = [UTM_TOP, UTM_TOP, bottom, UTM_TOP]
    lons, lats = warp_points(f"EPSG:{UTM_EPSG}", "EPSG:4326", xs, ys)
    top_left, top_right, bottom_left, top_centre = zip(lons, lats, strict=True)

    # The top edge is centred on the central meridian, so the footprint is symmetric about 15°E.
    assert top_centre[0] == pytest.approx(15.0, abs=1e-9)
    assert west + east == pytest.approx(30.0, abs=1e-9)
    # Meridians converge northwards: the widest extent is at the top corners ...
    assert west == pytest.approx(top_left[0], abs=1e-6)
    assert east == pytest.approx(top_right[0], abs=1e-6)
    assert south == pytest.approx(bottom_left[1], abs=1e-6)
    # ... and a straight UTM edge bulges north in lat/lon: the top is highest at its centre,
    # about 1.8e-5° above the corners, which an undensified (corners-only) bbox would miss.
    assert north == pytest.approx(top_centre[1], abs=1e-6)
    assert north - top_left[1] > 1e-5
    # Reference values (PROJ, UTM 33N → WGS84), a regression guard.
    expected = [14.9363905107, 45.1084508984, 15.0636094893, 45.1534771834]
    assert record.bbox == pytest.approx(expected, abs=1e-6)

    geom = shape(record.geometry)
    assert record.geometry["type"] == "Polygon"
    assert geom.is_valid and geom.exterior.is_ccw
    assert len(record.geometry["coordinates"][0]) > 5  # densified edges, not just 4 corners
    assert list(geom.bounds) == pytest.approx(record.bbox, abs=1e-9)
    assert geom.contains(Point(15.0, (south + north) / 2))
    json.dumps(record.geometry)  # plain JSON (lists, floats)

    assert record.datetime == "2021-06-01T10:20:30Z"
    props = record.properties
    assert props["proj:epsg"] == UTM_EPSG
    assert props["proj:shape"] == [UTM_H, UTM_W]
    assert props["proj:transform"] == [UTM_PIXEL, 0.0, UTM_LEFT, 0.0, -UTM_PIXEL, UTM_TOP]
    assert props["proj:bbox"] == [UTM_LEFT, bottom, right, UTM_TOP]
    assert (props["width"], props["height"], props["bands"], props["dtype"]) == (UTM_W, UTM_H, 3, "uint8")
    assert record.centroid() == pytest.approx({"lat": (south + north) / 2, "lon": 15.0})


def test_geotiff_datetime_tag_absent_or_malformed_gives_none(tmp_path: Path) -> None:
    write_utm_geotiff(tmp_path / "none.tif", datetime_tag=None)
    write_utm_geotiff(tmp_path / "bad.tif", datetime_tag="last tuesday")
    records = only(list(FolderSource(tmp_path)), ImageRecord)
    assert [(r.image_id, r.datetime) for r in records] == [("bad", None), ("none", None)]
    assert all(r.bbox is not None for r in records)


def test_tiff_without_georeference_has_no_geometry(tmp_path: Path) -> None:
    write_plain_tiff(tmp_path / "plain.tif")
    (record,) = list(FolderSource(tmp_path))
    assert isinstance(record, ImageRecord)
    assert record.geometry is None and record.bbox is None
    assert "proj:epsg" not in record.properties
    assert record.properties["width"] == 64 and record.properties["height"] == 48


def test_truncated_jpeg_is_a_problem_and_the_run_goes_on(tmp_path: Path) -> None:
    good = write_jpeg(tmp_path / "good.jpg")
    data = write_jpeg(tmp_path / "cut.jpg", seed=2).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    write_jpeg(tmp_path / "zz_after.jpg")

    items = list(FolderSource(tmp_path))
    problems = only(items, SourceProblem)
    assert [p.item for p in problems] == ["cut.jpg"]
    assert problems[0].path == str((tmp_path / "cut.jpg").resolve())
    assert "truncated" in problems[0].reason
    assert "cut.jpg" in str(problems[0])
    assert [r.image_id for r in only(items, ImageRecord)] == ["good", "zz_after"]
    assert good.exists()


def test_non_image_with_jpg_extension_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "fake.jpg").write_bytes(b"<html>definitely not a jpeg</html>")
    write_png(tmp_path / "real.png")
    items = list(FolderSource(tmp_path))
    (problem,) = only(items, SourceProblem)
    assert problem.item == "fake.jpg"
    assert "not a readable image" in problem.reason
    assert [r.image_id for r in only(items, ImageRecord)] == ["real"]


def test_corrupt_png_and_truncated_geotiff_are_problems(tmp_path: Path) -> None:
    png = bytearray(write_png(tmp_path / "broken.png").read_bytes())
    middle = len(png) // 2
    png[middle : middle + 16] = bytes(16)  # zeroed IDAT bytes: CRC and zlib both fail
    (tmp_path / "broken.png").write_bytes(bytes(png))
    tif = write_utm_geotiff(tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(tif[: len(tif) // 2])
    write_jpeg(tmp_path / "ok.jpg")

    items = list(FolderSource(tmp_path))
    problems = {p.item: p.reason for p in only(items, SourceProblem)}
    assert set(problems) == {"broken.png", "cut.tif"}
    assert problems["cut.tif"].startswith("cannot read raster")
    assert [r.image_id for r in only(items, ImageRecord)] == ["ok"]


def test_same_id_from_two_extensions_is_reported_not_overwritten(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "scene.jpg")
    write_png(tmp_path / "scene.png")
    items = list(FolderSource(tmp_path))
    (record,) = only(items, ImageRecord)
    (problem,) = only(items, SourceProblem)
    assert record.properties["file:path"] == "scene.jpg"
    assert problem.item == "scene.png"
    assert problem.reason == "duplicate image id scene, first from scene.jpg"


@pytest.mark.parametrize("setup", ["empty", "only_other_files", "only_hidden_images"])
def test_folder_without_images_is_a_clear_error(tmp_path: Path, setup: str) -> None:
    if setup == "only_other_files":
        (tmp_path / "readme.md").write_text("hi")
        (tmp_path / "sub").mkdir()
    elif setup == "only_hidden_images":
        write_jpeg(tmp_path / ".thumb.jpg")
    with pytest.raises(SourceError) as err:
        FolderSource(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "no images found" in str(err.value)
    with pytest.raises(SourceError, match="no images found"):
        open_source(tmp_path)


def test_not_a_directory_is_an_error(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "one.jpg")
    with pytest.raises(SourceError, match="not a directory"):
        FolderSource(path)


def test_rsicd_sample_gives_eight_records() -> None:
    source = open_source(RSICD_SAMPLE)
    assert isinstance(source, FolderSource)
    items = list(source)
    assert only(items, SourceProblem) == []
    records = only(items, ImageRecord)
    assert len(records) == 8
    assert source.count_hint() == 8
    expected = sorted(p.stem for p in RSICD_SAMPLE.glob("*.jpg"))
    assert [r.image_id for r in records] == expected
    for record in records:
        path = uri_to_path(record.source_uri)
        assert path is not None and path.is_file()
        assert record.properties["format"] == "JPEG"
        assert record.properties["width"] > 0 and record.properties["height"] > 0
