"""Real EO rasters (multi-band uint16/float GeoTIFFs, COGs with overviews) → VLM pictures, and chips.

Every raster here is a real file written with rasterio in tmp_path; the integration test ingests a
chipped 4-band uint16 scene through the loopback VLM into the real node and finds chips by bbox.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image, UnidentifiedImageError
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import transform as warp_points
from shapely.geometry import Point, shape

from rsrt.ingest.captioners import ImageInput, ImageLoadError
from rsrt.ingest.raster import (
    RASTER_PROPERTY,
    SCENE_PROPERTY,
    RasterOptions,
    RasterRead,
    Stretch,
    bands_by_common_name,
    chip_windows,
    read_bands,
    render,
    stretch_to_uint8,
)
from rsrt.ingest.sources import FolderSource, SourceProblem, StacSource
from rsrt.search.errors import ConfigError
from rsrt.search.schema import ImageRecord

# A UTM 33N scene, 10 m pixels, top-left at (500 000 E, 5 000 000 N).
UTM_EPSG, LEFT, TOP, PIXEL = 32633, 500_000.0, 5_000_000.0, 10.0


def write_raster(path: Path, data: np.ndarray, *, nodata: float | None = None, overviews: bool = False,
                 colorinterp: tuple[ColorInterp, ...] | None = None, descriptions: tuple[str, ...] | None = None,
                 crs: str | None = f"EPSG:{UTM_EPSG}") -> Path:
    """A tiled GeoTIFF of `data` (bands, rows, cols), optionally with internal overviews."""
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype.name,
               "tiled": True, "blockxsize": 256, "blockysize": 256, "nodata": nodata}
    if crs:
        profile.update(crs=crs, transform=Affine(PIXEL, 0.0, LEFT, 0.0, -PIXEL, TOP))
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if colorinterp:
            ds.colorinterp = colorinterp
        if descriptions:
            for i, text in enumerate(descriptions, start=1):
                ds.set_band_description(i, text)
        if overviews:
            ds.build_overviews([2, 4, 8], Resampling.average)
    return path


def uint16_scene(width: int = 1100, height: int = 1000, bands: int = 4, seed: int = 0) -> np.ndarray:
    """Reflectance-like uint16 values (≈ 200–4000), each band with its own level."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(500, 3000, bands).reshape(-1, 1, 1)
    return (levels + rng.normal(0, 300, (bands, height, width))).clip(1, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------- the reported bug


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_multiband_uint16_geotiff_loads_as_an_rgb_picture(tmp_path: Path, bands: int) -> None:
    """The user's report: 3/4/13-band uint16 GeoTIFFs were 'not a readable image' for the captioner."""
    path = write_raster(tmp_path / "scene.tif", uint16_scene(300, 200, bands))
    with pytest.raises(UnidentifiedImageError):  # what the loader used before: Pillow cannot read them
        Image.open(path).load()
    loaded = ImageInput.from_path(path).load()
    assert loaded.image.mode == "RGB" and loaded.image.size == (300, 200)
    pixels = np.asarray(loaded.image)
    assert pixels.min() == 0 and pixels.max() == 255  # stretched (2–98 %), not clipped or black
    assert 100 < pixels.mean() < 160


def test_float_raster_with_nan_and_single_band_is_grey(tmp_path: Path) -> None:
    data = np.linspace(-1.0, 1.0, 100 * 80, dtype=np.float32).reshape(1, 80, 100)
    data[0, :10, :10] = np.nan
    image = np.asarray(render(write_raster(tmp_path / "ndvi.tif", data)))
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()  # grey
    assert (image[:10, :10] == 0).all()  # NaN: black
    assert image[40, 99, 0] > image[40, 0, 0]  # the ramp survives


# ---------------------------------------------------------------------------- stretch


def test_stretch_parsing_and_errors() -> None:
    assert Stretch.parse("p2,98") == Stretch("percentile", 2, 98)
    assert Stretch.parse("0,3000") == Stretch("fixed", 0, 3000)
    assert Stretch.parse("none").kind == "none" and Stretch.parse("AUTO").kind == "auto"
    assert str(Stretch.parse("p1,99.5")) == "p1,99.5" and str(Stretch.parse("0,0.3")) == "0,0.3"
    assert Stretch().resolved("uint8").kind == "none"
    assert Stretch().resolved("uint16") == Stretch("percentile", 2, 98)
    for bad in ("bright", "3000,0", "p2", "p-1,50", "1,2,3"):
        with pytest.raises(ConfigError, match="stretch"):
            Stretch.parse(bad)


def test_percentile_stretch_ignores_nodata_and_paints_it_black() -> None:
    values = np.tile(np.arange(100, dtype=np.float32), (1, 10, 1))  # 0..99 along each row
    nodata = np.zeros_like(values, dtype=bool)
    nodata[:, :, :50] = True  # half the pixels are nodata: the stretch must come from 50..99 only
    out = stretch_to_uint8(np.ma.masked_array(values, mask=nodata), Stretch("percentile", 0, 100))
    assert (out[:, :, :50] == 0).all()
    assert out[0, 0, 50] == 0 and out[0, 0, 99] == 255
    assert out[0, 0, 75] == round((75 - 50) * 255 / 49)


def test_fixed_stretch_clips_and_none_keeps_uint8() -> None:
    values = np.ma.masked_array(np.array([[[0, 1500, 3000, 6000]]], dtype=np.float32))
    assert stretch_to_uint8(values, Stretch("fixed", 0, 3000)).tolist() == [[[0, 128, 255, 255]]]
    assert stretch_to_uint8(np.ma.masked_array(np.array([[[7, 200]]], dtype=np.float32)),
                            Stretch("none")).tolist() == [[[7, 200]]]


def test_nodata_pixels_are_black_and_excluded(tmp_path: Path) -> None:
    data = uint16_scene(200, 100, 3)
    data[:, :, :20] = 65535  # nodata: were it counted, every real pixel would be stretched near black
    image = np.asarray(render(write_raster(tmp_path / "nd.tif", data, nodata=65535)))
    assert (image[:, :20] == 0).all()
    assert image[:, 20:].mean() > 60


def test_alpha_band_is_not_a_colour_and_transparent_pixels_are_black(tmp_path: Path) -> None:
    data = np.full((4, 50, 60), 200, dtype=np.uint8)
    data[3] = 255
    data[3, :, :30] = 0  # left half transparent
    path = write_raster(tmp_path / "rgba.tif", data, colorinterp=(
        ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha))
    image = np.asarray(render(path))
    assert (image[:, :30] == 0).all() and (image[:, 30:] == 200).all()  # uint8: shown as it is


def test_raster_bands_scale_offset_put_a_fixed_stretch_in_physical_units(tmp_path: Path) -> None:
    data = np.full((3, 20, 20), 2000, dtype=np.uint16)  # DN 2000 * 0.0001 - 0.1 = reflectance 0.1
    path = write_raster(tmp_path / "l2a.tif", data)
    read = RasterRead(bands=(1, 2, 3), stretch=Stretch("fixed", 0.0, 0.2), scale=(0.0001,) * 3, offset=(-0.1,) * 3)
    assert (np.abs(np.asarray(render(path, read)).astype(int) - 128) <= 1).all()  # 0.1 of 0–0.2: mid-grey
    assert (np.asarray(render(path, RasterRead(bands=(1, 2, 3), stretch=Stretch("fixed", 0.0, 0.2)))) == 255).all()


# ---------------------------------------------------------------------------- bands


def test_bands_by_number_description_and_colour_interpretation(tmp_path: Path) -> None:
    data = np.stack([np.full((10, 10), v, dtype=np.uint8) for v in (10, 20, 30, 40)])
    plain = write_raster(tmp_path / "plain.tif", data)
    assert np.asarray(render(plain))[0, 0].tolist() == [10, 20, 30]  # no metadata: the first three
    assert np.asarray(render(plain, RasterRead(bands=(4, 3, 2))))[0, 0].tolist() == [40, 30, 20]
    assert np.asarray(render(plain, RasterRead(bands=(2,))))[0, 0].tolist() == [20, 20, 20]
    named = write_raster(tmp_path / "named.tif", data, descriptions=("blue", "green", "red", "nir"))
    assert np.asarray(render(named))[0, 0].tolist() == [30, 20, 10]
    with pytest.raises(ValueError, match="band 5 requested but the raster has 4 bands"):
        render(plain, RasterRead(bands=(5, 3, 2)))


def test_band_options_are_validated() -> None:
    assert RasterOptions.from_flags(bands="4,3,2").bands == (4, 3, 2)
    for flags, message in (({"bands": "4,3"}, "one band"), ({"bands": "0,1,2"}, "from 1"),
                           ({"bands": "red"}, "band numbers"), ({"chip_size": 512, "chip_overlap": 512}, "overlap"),
                           ({"chip_overlap": 10}, "needs --chip-size"), ({"max_side": 4}, "max-image-side")):
        with pytest.raises(ConfigError, match=message):
            RasterOptions.from_flags(**flags)


def test_stac_common_names_pick_red_green_blue() -> None:
    names = [{"name": n, "common_name": c} for n, c in
             (("B01", "coastal"), ("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir"))]
    assert bands_by_common_name(names) == (4, 3, 2)
    assert bands_by_common_name([{"name": "B1", "eo:common_name": "red"}]) is None  # STAC 1.1 spelling, incomplete
    assert bands_by_common_name(None) is None


# ---------------------------------------------------------------------------- decimated reads


def test_decimated_read_comes_from_the_overview_not_full_resolution(tmp_path: Path) -> None:
    """Full-resolution pixels are rewritten after the overviews were built: a read that shows the
    old value was served by an overview, so the full-resolution pixels were never read."""
    path = write_raster(tmp_path / "cog.tif", np.full((3, 2048, 2048), 1000, dtype=np.uint16), overviews=True)
    with rasterio.open(path, "r+") as ds:
        ds.write(np.full((3, 2048, 2048), 5000, dtype=np.uint16))  # GDAL leaves the overviews as they were
    with rasterio.open(path) as ds:
        assert ds.read(1, window=((0, 1), (0, 1)))[0, 0] == 5000
        decimated = read_bands(ds, RasterRead(bands=(1, 2, 3), max_side=256))
        assert decimated.shape == (3, 256, 256)
        assert (decimated == 1000).all()
        chip = read_bands(ds, RasterRead(bands=(1, 2, 3), window=(1024, 0, 1024, 1024), max_side=256))
        assert chip.shape == (3, 256, 256) and (chip == 1000).all()
        native = read_bands(ds, RasterRead(bands=(1,), window=(0, 0, 512, 512), max_side=1024))
        assert native.shape == (1, 512, 512) and (native == 5000).all()  # smaller than max_side: never enlarged


def test_picture_size_is_bounded_and_keeps_the_aspect(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "wide.tif", uint16_scene(1200, 300, 4))
    assert render(path, RasterRead(max_side=400)).size == (400, 100)
    bad = RasterRead(window=(1000, 0, 512, 300))
    with pytest.raises(ValueError, match="outside the 1200x300 raster"):
        render(path, bad)
    with pytest.raises(ImageLoadError, match=r"'w'.*outside"):
        ImageInput(image_id="w", path=path, raster=bad).load()


# ---------------------------------------------------------------------------- chips


def test_chip_windows_shift_edge_chips_inward() -> None:
    assert chip_windows(1100, 1000, 512) == [(0, 0, 512, 512), (512, 0, 512, 512), (588, 0, 512, 512),
                                             (0, 488, 512, 512), (512, 488, 512, 512), (588, 488, 512, 512)]
    assert chip_windows(1024, 512, 512) == [(0, 0, 512, 512), (512, 0, 512, 512)]
    assert chip_windows(1000, 512, 512, overlap=256) == [(0, 0, 512, 512), (256, 0, 512, 512), (488, 0, 512, 512)]
    assert chip_windows(300, 200, 512) == [(0, 0, 300, 200)]  # smaller than a chip: the whole raster


def _records(source) -> list[ImageRecord]:
    items = list(source)
    problems = [i for i in items if isinstance(i, SourceProblem)]
    assert not problems, problems
    return items


def test_chips_have_stable_ids_exact_footprints_and_point_at_their_scene(tmp_path: Path) -> None:
    write_raster(tmp_path / "archive" / "T33_scene.tif", uint16_scene(1100, 1000, 4))
    options = RasterOptions(chip_size=512, bands=(3, 2, 1))
    chips = _records(FolderSource(tmp_path / "archive", raster=options))
    again = _records(FolderSource(tmp_path / "archive", raster=options))
    assert [c.image_id for c in chips] == [c.image_id for c in again]
    assert [c.image_id for c in chips] == [
        "T33_scene_x0_y0_512x512", "T33_scene_x512_y0_512x512", "T33_scene_x588_y0_512x512",
        "T33_scene_x0_y488_512x512", "T33_scene_x512_y488_512x512", "T33_scene_x588_y488_512x512"]
    for chip in chips:
        read = chip.properties[RASTER_PROPERTY]
        col, row = read["window"]["col_off"], read["window"]["row_off"]
        assert chip.properties[SCENE_PROPERTY] == "T33_scene" and read["bands"] == [3, 2, 1]
        assert chip.properties["proj:transform"] == [PIXEL, 0.0, LEFT + col * PIXEL, 0.0, -PIXEL, TOP - row * PIXEL]
        # Its corners, projected independently, are the footprint's corners (and inside its bbox).
        xs = [LEFT + (col + dc) * PIXEL for dc in (0, 512, 512, 0)]
        ys = [TOP - (row + dr) * PIXEL for dr in (0, 0, 512, 512)]
        lons, lats = warp_points(f"EPSG:{UTM_EPSG}", "EPSG:4326", xs, ys)
        footprint = shape(chip.geometry)
        ring = footprint.exterior.coords
        for lon, lat in zip(lons, lats, strict=True):
            assert min(abs(lon - x) + abs(lat - y) for x, y in ring) < 1e-9
            west, south, east, north = chip.bbox
            assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9
        centre = warp_points(f"EPSG:{UTM_EPSG}", "EPSG:4326", [LEFT + (col + 256) * PIXEL],
                             [TOP - (row + 256) * PIXEL])
        assert footprint.contains(Point(centre[0][0], centre[1][0]))
    # The loader reads exactly the chip's window: the picture equals a direct read of those pixels.
    last = chips[-1]
    picture = np.asarray(ImageInput(image_id=last.image_id, path=tmp_path / "archive" / "T33_scene.tif",
                                    raster=RasterRead.from_properties(last.properties)).load().image)
    with rasterio.open(tmp_path / "archive" / "T33_scene.tif") as ds:
        direct = ds.read(3, window=((488, 1000), (588, 1100))).astype(np.float32)
    low, high = np.percentile(direct, (2, 98))
    expected = np.clip((direct - low) * 255.0 / (high - low), 0, 255).round()
    assert picture.shape == (512, 512, 3) and np.abs(picture[..., 0] - expected).max() <= 1


def test_requested_band_missing_is_one_problem_naming_the_file(tmp_path: Path) -> None:
    write_raster(tmp_path / "a" / "four.tif", uint16_scene(64, 64, 4))
    items = list(FolderSource(tmp_path / "a", raster=RasterOptions(bands=(8, 4, 3))))
    assert len(items) == 1 and isinstance(items[0], SourceProblem)
    assert items[0].item == "four.tif" and "band 8 requested but the raster has 4 bands" in items[0].reason


def test_stac_asset_eo_bands_and_raster_bands_drive_the_rendering_and_chips(tmp_path: Path) -> None:
    tif = write_raster(tmp_path / "cat" / "s2.tif", uint16_scene(600, 520, 4))
    eo = [{"name": n, "common_name": c} for n, c in (("B02", "blue"), ("B03", "green"), ("B04", "red"),
                                                     ("B08", "nir"))]
    stats = [{"nodata": 0, "scale": 0.0001, "offset": -0.1}] * 4
    ring = [[15, 45], [15.1, 45], [15.1, 45.1], [15, 45.1], [15, 45]]
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2_tile",
            "properties": {"datetime": "2024-05-01T10:00:00Z"}, "geometry": {"type": "Polygon", "coordinates": [ring]},
            "bbox": [15, 45, 15.1, 45.1], "links": [],
            "assets": {"analytic": {"href": tif.name, "type": "image/tiff; application=geotiff",
                                    "eo:bands": eo, "raster:bands": stats}}}
    (tmp_path / "cat" / "item.json").write_text(json.dumps(item))
    [record] = _records(StacSource(tmp_path / "cat" / "item.json"))
    read = record.properties[RASTER_PROPERTY]
    assert read["bands"] == [3, 2, 1] and read["scale"] == [0.0001] * 3 and read["nodata"] == 0
    assert RasterRead.from_properties(record.properties).offset == (-0.1,) * 3
    chips = _records(StacSource(tmp_path / "cat" / "item.json", raster=RasterOptions(chip_size=512)))
    assert [c.image_id for c in chips] == ["S2_tile_x0_y0_512x512", "S2_tile_x88_y0_512x512",
                                           "S2_tile_x0_y8_512x512", "S2_tile_x88_y8_512x512"]
    assert all(c.properties[RASTER_PROPERTY]["bands"] == [3, 2, 1] and c.properties[SCENE_PROPERTY] == "S2_tile"
               and c.datetime == "2024-05-01T10:00:00Z" for c in chips)
    assert chips[0].properties["proj:transform"][2] == LEFT and chips[0].bbox != record.bbox


# ---------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_chipped_uint16_scene_is_captioned_indexed_and_found_by_bbox(os_client, index_name, cli_env,
                                                                     tmp_path: Path) -> None:
    from test_captioners_openai import API_KEY, FakeVLM

    from conftest import run_cli

    write_raster(tmp_path / "archive" / "scene4.tif", uint16_scene(1100, 1000, 4), nodata=0, overviews=True)
    vlm = FakeVLM().start()
    try:
        env = {**cli_env, "RSRT_VLM_API_KEY": API_KEY}
        result = run_cli(["ingest", "images", str(tmp_path / "archive"), "--index", index_name, "--captioner",
                          "openai", "--vlm-url", vlm.base_url, "--model", vlm.model, "--chip-size", "512",
                          "--bands", "3,2,1", "--max-image-side", "256", "--state-dir", str(tmp_path / "state"),
                          "--json"], env)
        assert result.returncode == 0, result.stderr
        assert not vlm.problems, vlm.problems
        sizes = {tuple(r["size"]) for r in vlm.requests}
    finally:
        vlm.stop()
    summary = json.loads(result.stdout)
    assert summary["ingested"] == 6 and summary["quarantined"] == 0, summary
    assert sizes == {(256, 256)}  # each chip's window, decimated to --max-image-side
    os_client.indices.refresh(index=index_name)
    hits = os_client.search(index=index_name, body={"size": 20, "_source": {"excludes": ["variants.embedding"]}})
    docs = {h["_id"]: h["_source"] for h in hits["hits"]["hits"]}
    expected = {r.image_id: r for r in _records(FolderSource(tmp_path / "archive",
                                                             raster=RasterOptions(chip_size=512)))}
    assert set(docs) == set(expected)
    for chip_id, doc in docs.items():
        assert doc["bbox"] == pytest.approx(expected[chip_id].bbox) and doc["geometry"]["type"] == "Polygon"
        assert doc["properties"][SCENE_PROPERTY] == "scene4" and doc["variant_count"] == 5
    # A small box around the centre of the bottom-right chip only (x 1000..1100, y 950..1000 px).
    lons, lats = warp_points(f"EPSG:{UTM_EPSG}", "EPSG:4326", [LEFT + 1050 * PIXEL], [TOP - 990 * PIXEL])
    box = f"{lons[0] - 0.0001},{lats[0] - 0.0001},{lons[0] + 0.0001},{lats[0] + 0.0001}"
    found = run_cli(["search", "a scene", "--index", index_name, "--bbox", box, "--k", "10", "--json"], cli_env)
    assert found.returncode == 0, found.stderr
    assert [h["image_id"] for h in json.loads(found.stdout)["hits"]] == ["scene4_x588_y488_512x512"]
    everywhere = run_cli(["search", "a scene", "--index", index_name, "--bbox", "14,44,16,46", "--k", "10",
                          "--json"], cli_env)
    assert {h["image_id"] for h in json.loads(everywhere.stdout)["hits"]} == set(expected)


def test_bad_raster_flags_are_one_line_errors(tmp_path: Path) -> None:
    import os

    from conftest import run_cli

    write_raster(tmp_path / "a" / "x.tif", uint16_scene(32, 32, 4))
    result = run_cli(["ingest", "images", str(tmp_path / "a"), "--index", "x", "--stretch", "bright",
                      "--dry-run"], dict(os.environ))
    assert result.returncode != 0
    assert "--stretch 'bright'" in result.stderr and "Traceback" not in result.stderr


def test_the_raster_benchmark_runs_and_reports_its_figures(tmp_path: Path) -> None:
    """Not a timing test: the benchmark's figures are produced and consistent (it must not rot)."""
    from rsrt.search.benchmarking.raster import RasterBenchPlan, format_raster_benchmark, run_raster_benchmark

    result = run_raster_benchmark(RasterBenchPlan(size=600, chip_size=256, max_side=128, repeats=1,
                                                  full_read=False), tmp_path)
    assert result["chips"]["count"] == 9 and result["chips"]["chips_per_second_median"] > 0
    assert result["chips"]["peak_rss_mb"] >= result["baseline_rss_mb"] > 0
    assert "9 chips of 256 px" in format_raster_benchmark(result)
    assert not list(tmp_path.iterdir())  # the temporary scenes are gone


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the file is a plain TIFF
def test_a_paletted_band_keeps_its_colours(tmp_path: Path) -> None:
    data = np.zeros((1, 20, 20), dtype=np.uint8)
    data[0, :, 10:] = 1
    path = write_raster(tmp_path / "classes.tif", data, crs=None)
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 255, 255), 1: (0, 128, 0, 255)})
    image = np.asarray(render(path))
    assert image[0, 0].tolist() == [0, 0, 255] and image[0, 19].tolist() == [0, 128, 0]


@pytest.mark.integration
def test_other_bands_are_another_picture_not_a_cached_caption(index_name, cli_env, tmp_path: Path) -> None:
    """The caption cache is keyed by the render too: a rerun with other --bands captions again."""
    from test_captioners_openai import API_KEY, FakeVLM

    from conftest import run_cli

    write_raster(tmp_path / "archive" / "scene4.tif", uint16_scene(300, 200, 4), nodata=0)
    vlm = FakeVLM().start()
    try:
        env = {**cli_env, "RSRT_VLM_API_KEY": API_KEY}

        def ingest(index: str, bands: str) -> int:
            before = len(vlm.requests)
            result = run_cli(["ingest", "images", str(tmp_path / "archive"), "--index", index, "--captioner",
                              "openai", "--vlm-url", vlm.base_url, "--model", vlm.model, "--bands", bands,
                              "--state-dir", str(tmp_path / "state"), "--json"], env)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["ingested"] == 1
            return len(vlm.requests) - before

        assert ingest(index_name, "3,2,1") >= 1
        assert ingest(f"{index_name}-other-bands", "1,2,3") >= 1  # before: 0, the first render's captions
        assert ingest(f"{index_name}-same-bands", "3,2,1") == 0  # the same render: the cache answers
    finally:
        vlm.stop()
