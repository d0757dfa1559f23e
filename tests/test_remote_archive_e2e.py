"""Issue #15's done-when, on real servers only: a STAC API lists COG scenes on HTTP (and S3), rsrt chips them.

* a STAC API: stac-fastapi-opensearch on the test node (`stac_fastapi_server`), three items;
* their assets: 4-band uint16 COGs (blue, green, red, nir) on a loopback HTTP server that honours
  range requests (`asset_servers.RangeServer`), one 4,000 px wide; in the second case one asset is
  on a loopback S3 server (moto in server mode) instead;
* a loopback OpenAI-compatible VLM (`vlm_server`).

`rsrt ingest stac-api URL --collections C --chip-size 512` through the real CLI must index every
chip with the footprint computed here, independently, from the scene's transform; every chip must be
found by a `--bbox` inside it; a rerun must index nothing twice and caption nothing again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asset_servers import RangeServer, S3Server
from conftest import run_cli
from rsrt.ingest.raster import chip_id, chip_windows
from rsrt.search.filters import Filters
from rsrt.search.index import delete_index
from rsrt.search.request import SearchRequest
from rsrt.search.schema import stable_image_id
from rsrt.search.searcher import Searcher
from stac_fastapi_server import stac_fastapi_server
from vlm_server import ChatCompletions

pytestmark = pytest.mark.integration

CHIP = 512
CRS = "EPSG:32633"  # UTM 33N: footprints are not axis-aligned in WGS84, so a wrong transform shows
# scene id → width, height, upper-left corner (UTM metres); 10 m pixels
SCENES: dict[str, tuple[int, int, float, float]] = {
    "wide": (4000, 700, 400_000.0, 5_000_000.0),  # 8 × 2 chips (the last column and row shifted inward)
    "square": (900, 600, 480_000.0, 5_020_000.0),  # 2 × 2
    "small": (512, 512, 520_000.0, 4_980_000.0),  # 1
}
EO_BANDS = [{"name": "B02", "common_name": "blue"}, {"name": "B03", "common_name": "green"},
            {"name": "B04", "common_name": "red"}, {"name": "B08", "common_name": "nir"}]


def _write_cog(path: Path, width: int, height: int, west: float, north: float, seed: int) -> None:
    """A 4-band uint16 COG with overviews; pixels vary, so every chip is a different picture."""
    import rasterio
    from rasterio.shutil import copy as copy_dataset
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    data = np.stack([(800 + 2500 * (0.5 + 0.5 * np.sin(x / (37.0 + 11 * b) + y / 53.0))
                      + rng.integers(0, 200, size=(height, width))).astype(np.uint16) for b in range(4)])
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 4, "dtype": "uint16", "crs": CRS,
               "transform": from_origin(west, north, 10.0, 10.0), "tiled": True, "blockxsize": 256,
               "blockysize": 256, "nodata": 0}
    tmp = path.with_suffix(".gtiff")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(tmp) as src:
        copy_dataset(src, path, driver="COG", compress="DEFLATE", blocksize=256, overview_resampling="average")
    tmp.unlink()


def _footprint(scene: str) -> tuple[dict[str, Any], list[float]]:
    """The scene's WGS84 outline and bbox, for its STAC item."""
    from rasterio.warp import transform_bounds, transform_geom

    width, height, west, north = SCENES[scene]
    east, south = west + 10.0 * width, north - 10.0 * height
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    geometry = transform_geom(CRS, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    return json.loads(json.dumps(geometry)), list(transform_bounds(CRS, "EPSG:4326", west, south, east, north))


def _expected_chips() -> dict[str, list[float]]:
    """Every chip's id and WGS84 bbox, from the scene's geotransform and the chip window."""
    from rasterio.warp import transform_bounds

    chips = {}
    for scene, (width, height, west, north) in SCENES.items():
        for window in chip_windows(width, height, CHIP):
            col, row, w, h = window
            left, top = west + 10.0 * col, north - 10.0 * row
            bounds = transform_bounds(CRS, "EPSG:4326", left, top - 10.0 * h, left + 10.0 * w, top, densify_pts=21)
            chips[stable_image_id(chip_id(scene, window))] = list(bounds)
    return chips


def _item(scene: str, collection: str, href: str) -> dict[str, Any]:
    geometry, bbox = _footprint(scene)
    asset = {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
             "eo:bands": EO_BANDS, "raster:bands": [{"data_type": "uint16", "nodata": 0}] * 4}
    return {"type": "Feature", "stac_version": "1.0.0", "id": scene, "collection": collection,
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
            "geometry": geometry, "bbox": bbox, "properties": {"datetime": "2024-06-01T10:00:00Z"},
            "assets": {"data": asset}, "links": []}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cogs")
    for seed, (scene, (width, height, west, north)) in enumerate(SCENES.items()):
        _write_cog(folder / f"{scene}.tif", width, height, west, north, seed)
    return folder


@pytest.mark.parametrize("s3_scene", [None, "small"], ids=["http", "one-asset-on-s3"])
def test_a_stac_api_of_http_and_s3_cogs_is_chipped_indexed_and_found_by_bbox(
        scenes, s3_scene, opensearch_url, os_client, cli_env, tmp_path, monkeypatch):
    expected = _expected_chips()
    index = f"rsrt-e2e-remote-{'s3' if s3_scene else 'http'}"
    delete_index(os_client, index)
    env = {**cli_env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")  # moto's server and the uploading client, in this process
    state = tmp_path / "state"
    with RangeServer(scenes) as http, S3Server() as s3, stac_fastapi_server(opensearch_url, tmp_path) as api:
        collection = api.new_collection("e2e")
        hrefs = {scene: http.url(f"{scene}.tif") for scene in SCENES}
        extra: list[str] = []
        if s3_scene:
            hrefs[s3_scene] = s3.upload("rsrt-e2e", f"scenes/{s3_scene}.tif", scenes / f"{s3_scene}.tif")
            extra = ["--s3-endpoint", s3.endpoint]
        api.add_items(collection, [_item(scene, collection, hrefs[scene]) for scene in SCENES])
        vlm = ChatCompletions()
        try:
            args = ["ingest", "stac-api", api.url, "--collections", collection, "--chip-size", str(CHIP),
                    "--index", index, "--state-dir", str(state), "--json", "--no-cluster-model",
                    "--captioner", "openai", "--model", "tiny-vl", "--vlm-url", vlm.base_url, *extra]
            first = run_cli(args, env)
            assert first.returncode == 0, (first.stdout, first.stderr)
            summary = json.loads(first.stdout)
            assert (summary["ingested"], summary["quarantined"], summary["failed"]) == (len(expected), 0, 0)
            assert len(vlm.answered) == len(expected) == 21
            served = {scene: http.count(f"{scene}.tif") for scene in SCENES}
            assert all(served[scene] for scene in SCENES if scene != s3_scene)
            if s3_scene:
                assert served[s3_scene] == 0  # it came from S3, not from the HTTP server

            rerun = run_cli(args, env)
            assert rerun.returncode == 0, rerun.stderr
            again = json.loads(rerun.stdout)
            assert (again["ingested"], again["skipped"]) == (0, len(expected))
            assert len(vlm.answered) == len(expected)  # nothing captioned twice
        finally:
            vlm.stop()

    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 100, "_source": ["bbox", "geometry", "properties"]})
    docs = {hit["_id"]: hit["_source"] for hit in hits["hits"]["hits"]}
    assert set(docs) == set(expected)
    for chip, bbox in expected.items():
        assert docs[chip]["bbox"] == pytest.approx(bbox, abs=1e-7), chip
        assert docs[chip]["properties"]["rsrt:scene"] in SCENES
        assert docs[chip]["geometry"]["type"] == "Polygon"

    searcher = Searcher(os_client, index)
    for chip, (west, south, east, north) in expected.items():  # a box in the chip's middle: the chip is found
        dx, dy = (east - west) / 10, (north - south) / 10
        inner = [west + 4 * dx, south + 4 * dy, east - 4 * dx, north - 4 * dy]
        found = searcher.search(SearchRequest("aerial scene with buildings", "hybrid", 50,
                                              filters=Filters.build(bbox=inner)))
        assert chip in {hit.image_id for hit in found.hits}, chip
    chip, (west, south, east, north) = next(iter(expected.items()))
    lon, lat = (west + east) / 2, (south + north) / 2
    centre = f"{lon - 1e-4},{lat - 1e-4},{lon + 1e-4},{lat + 1e-4}"
    result = run_cli(["search", "aerial scene", "--index", index, "--bbox", centre, "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    assert chip in [hit["image_id"] for hit in json.loads(result.stdout)["hits"]]
    delete_index(os_client, index)
