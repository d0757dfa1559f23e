"""Remote assets (#15): rasters over HTTP range reads and S3, JPEGs fetched whole, retries, quarantine.

Real loopback servers only (`asset_servers.RangeServer`, moto's S3 server); real COGs written by
rasterio; the end-to-end test runs the real `rsrt ingest images` against the session node with a
loopback OpenAI-compatible VLM.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asset_servers import RangeServer, S3Server, free_port, write_cog
from conftest import SAMPLE_IMAGES, run_cli
from rsrt.ingest.assets import AssetError, AssetOptions, fetch_bytes, gdal_config, open_raster
from rsrt.ingest.captioners.base import ImageInput, ImageLoadError
from rsrt.ingest.raster import RasterOptions, RasterRead, RasterReadError, render
from rsrt.search.errors import ConfigError
from vlm_server import ChatCompletions

FAST = AssetOptions(timeout=2.0, retries=3, backoff=0.05)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> Path:
    """big.tif: a 4096-px 4-band uint16 COG with overviews; small.tif: 512 px; a JPEG; not-a-raster.tif."""
    root = tmp_path_factory.mktemp("assets")
    write_cog(root / "big.tif", size=4096, seed=1)
    write_cog(root / "small.tif", size=512, seed=2, tile=128)
    shutil.copy(sorted(SAMPLE_IMAGES.glob("*.jpg"))[0], root / "photo.jpg")
    (root / "not-a-raster.tif").write_bytes(b"this is text, not a TIFF\n" * 100)
    return root


def _copy(rasters: Path, name: str, as_name: str) -> str:
    """A fresh file name per test: GDAL caches what it learnt about a URL for the whole process."""
    target = rasters / as_name
    if not target.exists():
        shutil.copy(rasters / name, target)
    return as_name


@pytest.fixture
def http(rasters: Path):
    with RangeServer(rasters) as server:
        yield server


@pytest.fixture(scope="module")
def s3(rasters: Path):
    patch = pytest.MonkeyPatch()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        patch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        patch.delenv(name, raising=False)
    try:
        with S3Server() as server:
            yield server
    finally:
        patch.undo()


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image)


# ---------------------------------------------------------------------------- options


def test_asset_options_are_checked_naming_the_flag():
    with pytest.raises(ConfigError, match="--asset-timeout"):
        AssetOptions(timeout=0)
    with pytest.raises(ConfigError, match="--asset-retries"):
        AssetOptions(retries=-1)
    with pytest.raises(ConfigError, match="--s3-endpoint"):
        AssetOptions(s3_endpoint="127.0.0.1:9000")
    config = gdal_config(AssetOptions(s3_endpoint="http://127.0.0.1:9000", s3_region="eu-west-1", retries=2,
                                      s3_no_sign_request=True))
    assert (config["AWS_S3_ENDPOINT"], config["AWS_HTTPS"], config["AWS_VIRTUAL_HOSTING"]) == \
        ("127.0.0.1:9000", "NO", "FALSE")
    assert (config["AWS_REGION"], config["AWS_NO_SIGN_REQUEST"], config["GDAL_HTTP_MAX_RETRY"]) == \
        ("eu-west-1", "YES", 2)


# ---------------------------------------------------------------------------- range reads


def test_decimated_render_of_a_remote_cog_reads_a_fraction_and_equals_the_local_render(rasters, http):
    read = RasterRead(max_side=256)
    remote = render(http.url("big.tif"), read, FAST)
    local = render(rasters / "big.tif", read)
    assert remote.size == (256, 256)
    assert np.array_equal(_pixels(remote), _pixels(local))
    size = (rasters / "big.tif").stat().st_size
    assert size > 20_000_000
    served = http.served("big.tif")
    assert 0 < served < size / 20, (served, size)  # the coarsest fitting overview, not the scene


def test_a_remote_window_reads_only_its_tiles(rasters, http):
    # near the end of the file: GDAL would ask for several ranges in one GET, which S3 (and this
    # server) answer with the whole object, unless open_raster keeps GDAL to one range per request
    read = RasterRead(window=(1024, 3500, 512, 512), max_side=512)
    remote = render(http.url(_copy(rasters, "big.tif", "big-window.tif")), read, FAST)
    assert np.array_equal(_pixels(remote), _pixels(render(rasters / "big.tif", read)))
    assert http.served("big-window.tif") < (rasters / "big.tif").stat().st_size / 20


def test_render_over_s3_equals_the_local_render(rasters, s3):
    uri = s3.upload("scenes", "tiles/small.tif", rasters / "small.tif")
    options = AssetOptions(timeout=5, retries=1, backoff=0.05, s3_endpoint=s3.endpoint, s3_region="us-east-1")
    read = RasterRead(max_side=200)
    assert np.array_equal(_pixels(render(uri, read, options)), _pixels(render(rasters / "small.tif", read)))
    # a JPEG thumbnail through boto3
    thumb = s3.upload("scenes", "thumbs/photo.jpg", rasters / "photo.jpg")
    assert fetch_bytes(thumb, options) == (rasters / "photo.jpg").read_bytes()


def test_a_missing_s3_key_is_a_permanent_asset_error(rasters, s3):
    s3.upload("scenes", "tiles/small.tif", rasters / "small.tif")
    options = AssetOptions(timeout=5, retries=1, backoff=0.05, s3_endpoint=s3.endpoint, s3_region="us-east-1")
    for call in (lambda: render("s3://scenes/tiles/absent.tif", None, options),
                 lambda: fetch_bytes("s3://scenes/thumbs/absent.jpg", options)):
        with pytest.raises(AssetError) as caught:
            call()
        assert caught.value.status == 404 and not caught.value.transient
        assert "s3://scenes/" in str(caught.value) and "404" in str(caught.value)


# ---------------------------------------------------------------------------- retries


def test_503_twice_then_ok_succeeds(rasters, http):
    name = _copy(rasters, "small.tif", "flaky-503.tif")
    http.fail(name, 503, times=2)
    image = render(http.url(name), RasterRead(max_side=64), FAST)
    assert image.size == (64, 64)
    http.fail("photo.jpg", 503, times=2)
    assert fetch_bytes(http.url("photo.jpg"), FAST) == (rasters / "photo.jpg").read_bytes()
    assert http.count("photo.jpg") == 3


def test_429_with_retry_after_is_honoured(rasters, http):
    http.fail("photo.jpg", 429, times=1, retry_after="1")
    t0 = time.monotonic()
    assert fetch_bytes(http.url("photo.jpg"), FAST) == (rasters / "photo.jpg").read_bytes()
    assert time.monotonic() - t0 >= 0.95  # the server's delay, not our 0.05 s backoff
    assert http.count("photo.jpg") == 2
    name = _copy(rasters, "small.tif", "flaky-429.tif")
    http.fail(name, 429, times=2, retry_after="1")
    assert render(http.url(name), RasterRead(max_side=64), FAST).size == (64, 64)


def test_a_stalled_request_times_out_and_is_retried(rasters, http):
    options = AssetOptions(timeout=1.0, retries=2, backoff=0.05)
    http.stall("photo.jpg", 3.0, times=1)
    assert fetch_bytes(http.url("photo.jpg"), options) == (rasters / "photo.jpg").read_bytes()
    assert http.count("photo.jpg") == 2
    name = _copy(rasters, "small.tif", "stalled.tif")
    http.stall(name, 3.0, times=1)
    assert render(http.url(name), RasterRead(max_side=64), options).size == (64, 64)
    assert http.count(name) >= 2


def test_a_404_is_permanent_names_the_url_and_is_not_retried(rasters, http):
    url = http.url("nowhere/absent.tif")
    with pytest.raises(AssetError) as caught:
        render(url, RasterRead(max_side=64), FAST)
    assert caught.value.status == 404 and not caught.value.transient
    assert str(caught.value) == f"asset {url}: HTTP 404 Not Found"
    assert http.count("nowhere/absent.tif") == 1
    with pytest.raises(ImageLoadError) as loaded:
        ImageInput(image_id="absent", uri=http.url("nowhere/absent.jpg"), assets=FAST).load()
    assert http.url("nowhere/absent.jpg") in str(loaded.value) and "HTTP 404" in str(loaded.value)
    assert not loaded.value.transient and loaded.value.status == 404
    assert http.count("nowhere/absent.jpg") == 1


def test_a_503_that_lasts_is_transient_and_a_healed_server_is_read_again(rasters, http):
    name = _copy(rasters, "small.tif", "down.tif")
    http.fail(name, 503, times=1000)
    options = AssetOptions(timeout=2.0, retries=2, backoff=0.05)
    with pytest.raises(AssetError) as caught:
        render(http.url(name), RasterRead(max_side=64), options)
    assert caught.value.transient and caught.value.status == 503
    assert str(caught.value) == f"asset {http.url(name)}: unreachable after 3 attempts: HTTP 503 Service Unavailable"
    assert http.count(name) == 3
    with pytest.raises(ImageLoadError) as loaded:
        ImageInput(image_id="down", uri=http.url(name), raster=RasterRead(max_side=64), assets=options).load()
    assert loaded.value.transient and loaded.value.status == 503 and http.url(name) in str(loaded.value)
    http.heal(name)  # GDAL remembers the failed open; open_raster must not answer from that memory
    assert render(http.url(name), RasterRead(max_side=64), options).size == (64, 64)


def test_a_refused_connection_is_retried_then_transient():
    port = free_port()
    options = AssetOptions(timeout=1.0, retries=2, backoff=0.2)
    for call in (lambda: fetch_bytes(f"http://127.0.0.1:{port}/x.jpg", options),
                 lambda: render(f"http://127.0.0.1:{port}/x.tif", None, options)):
        t0 = time.monotonic()
        with pytest.raises(AssetError) as caught:
            call()
        assert caught.value.transient and caught.value.status is None
        assert "unreachable after 3 attempts: connection failed" in str(caught.value)
        assert time.monotonic() - t0 >= 0.55  # two waits: 0.2 s, then 0.4 s


def test_bytes_that_are_not_a_raster_are_a_raster_read_error(rasters, http):
    with pytest.raises(RasterReadError, match="cannot read raster"), open_raster(http.url("not-a-raster.tif"), FAST):
        pass
    with pytest.raises(ImageLoadError) as loaded:
        ImageInput(image_id="text", uri=http.url("not-a-raster.tif"), assets=FAST).load()
    assert not loaded.value.transient and "cannot be rendered" in str(loaded.value)


def test_image_input_takes_exactly_one_of_path_data_uri(rasters, http):
    with pytest.raises(ValueError, match="exactly one of path, data or uri"):
        ImageInput(image_id="x", path=rasters / "photo.jpg", uri=http.url("photo.jpg"))
    with pytest.raises(ValueError, match="exactly one"):
        ImageInput(image_id="x")
    loaded = ImageInput.from_source_uri("p", http.url("photo.jpg"), assets=FAST).load()
    assert loaded.image.size == ImageInput(image_id="p", path=rasters / "photo.jpg").load().image.size
    assert loaded.source.read_bytes() == (rasters / "photo.jpg").read_bytes()
    assert http.count("photo.jpg") == 1  # fetched once: the VLM is sent the same bytes, not fetched again


# ---------------------------------------------------------------------------- STAC chipping


def _item(item_id: str, href: str) -> dict[str, Any]:
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [[[14.0, 45.0], [14.1, 45.0], [14.1, 45.1], [14.0, 45.1],
                                                         [14.0, 45.0]]]},
        "bbox": [14.0, 45.0, 14.1, 45.1],
        "properties": {"datetime": "2024-05-01T10:00:00Z"},
        "links": [],
        "assets": {"visual": {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                              "roles": ["data"]}},
    }


def _collection(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}), "utf-8")
    return path


def test_remote_chipping_gives_the_footprints_of_local_chipping(rasters, http, tmp_path):
    from rsrt.ingest.sources.stac import StacSource

    raster = RasterOptions(chip_size=200, max_side=128)
    name = _copy(rasters, "small.tif", "chipped.tif")
    local = list(StacSource(_collection(tmp_path / "local.json", [_item("scene", str(rasters / "small.tif"))]),
                            raster=raster))
    remote = list(StacSource(_collection(tmp_path / "remote.json", [_item("scene", http.url(name))]),
                             raster=raster, assets=FAST))
    assert len(local) == len(remote) == 9  # 512 px in 200-px chips: 3 × 3
    for a, b in zip(local, remote, strict=True):
        assert a.image_id == b.image_id and a.geometry == b.geometry and a.bbox == b.bbox
        assert a.properties["rsrt:raster"] == b.properties["rsrt:raster"]
        assert b.source_uri == http.url(name)
    assert http.served(name) < (rasters / "small.tif").stat().st_size / 4  # the header, not the pixels


def test_an_unreachable_remote_scene_is_a_problem_naming_url_and_status(rasters, http, tmp_path):
    from rsrt.ingest.sources.base import SourceProblem
    from rsrt.ingest.sources.stac import StacSource

    down = _copy(rasters, "small.tif", "chip-down.tif")
    http.fail(down, 503, times=1000)
    items = [_item("gone", http.url("absent.tif")), _item("down", http.url(down)),
             _item("fine", http.url(_copy(rasters, "small.tif", "chip-fine.tif")))]
    out = list(StacSource(_collection(tmp_path / "c.json", items), raster=RasterOptions(chip_size=256),
                          assets=AssetOptions(timeout=2, retries=1, backoff=0.05)))
    problems = [e for e in out if isinstance(e, SourceProblem)]
    assert [(p.item, p.reason) for p in problems] == [
        ("gone", f"asset {http.url('absent.tif')}: HTTP 404 Not Found"),
        ("down", f"asset {http.url(down)}: unreachable after 2 attempts: HTTP 503 Service Unavailable"),
    ]
    assert len(out) - len(problems) == 4  # the fine scene's 2 × 2 chips


# ---------------------------------------------------------------------------- end to end


def _indexed(os_client, index: str) -> set[str]:
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 100, "_source": False})["hits"]["hits"]
    return {hit["_id"] for hit in hits}


@pytest.mark.integration
def test_ingest_goes_on_past_a_404_and_retries_a_503_on_the_next_run(rasters, http, tmp_path, cli_env,
                                                                     os_client, index_name):
    flaky = _copy(rasters, "small.tif", "e2e-flaky.tif")
    scene = _copy(rasters, "small.tif", "e2e-scene.tif")
    items = [_item("scene-ok", http.url(scene)), _item("scene-missing", http.url("e2e-missing.tif")),
             _item("scene-flaky", http.url(flaky)), _item("photo", http.url("photo.jpg"))]
    items[3]["assets"] = {"thumbnail": {"href": http.url("photo.jpg"), "type": "image/jpeg"}}
    collection = _collection(tmp_path / "items.json", items)
    http.fail(flaky, 503, times=10_000)
    state = tmp_path / "state"
    vlm = ChatCompletions()

    def ingest():
        return run_cli(["ingest", "images", str(collection), "--index", index_name, "--state-dir", str(state),
                        "--json", "--captioner", "openai", "--model", "tiny-vl", "--vlm-url", vlm.base_url,
                        "--vlm-concurrency", "1", "--vlm-retries", "0", "--no-cluster-model",
                        "--asset-timeout", "3", "--asset-retries", "1", "--max-consecutive-failures", "1"], cli_env)

    try:
        first = ingest()
        assert first.returncode == 0, (first.stdout, first.stderr)
        assert "Traceback" not in first.stderr
        summary = json.loads(first.stdout)
        assert (summary["ingested"], summary["quarantined"], summary["deferred"]) == (2, 2, 1)
        assert _indexed(os_client, index_name) == {"scene-ok", "photo"}
        lines = [json.loads(x) for x in (state / "quarantine.jsonl").read_text("utf-8").splitlines()]
        by_item = {line["item"]: line for line in lines}
        assert set(by_item) == {"scene-missing", "scene-flaky"}
        missing, down = by_item["scene-missing"], by_item["scene-flaky"]
        assert http.url("e2e-missing.tif") in missing["reason"] and "HTTP 404 Not Found" in missing["reason"]
        assert missing["status"] == 404 and not missing.get("transient")
        assert http.url(flaky) in down["reason"] and "HTTP 503" in down["reason"] and down["transient"]
        assert down["status"] == 503
        assert len(vlm.answered) == 2  # no VLM call for an asset that could not be loaded

        http.heal(flaky)
        missing_requests = http.count("e2e-missing.tif")
        second = ingest()
        assert second.returncode == 0, (second.stdout, second.stderr)
        summary = json.loads(second.stdout)
        assert (summary["ingested"], summary["skipped"], summary["quarantined"]) == (1, 3, 0)
        assert _indexed(os_client, index_name) == {"scene-ok", "photo", "scene-flaky"}
        assert http.count("e2e-missing.tif") == missing_requests  # the 404 is not tried again
    finally:
        vlm.stop()
