"""Static STAC catalogs published online: `rsrt ingest images https://…/catalog.json` or `s3://…/catalog.json`.

Archives publish their catalog as files next to the COGs (a self-contained static catalog on a web
server or in a bucket). The catalog tree — root, child collection, items — and the assets it links
with relative hrefs are read from a loopback HTTP server or a loopback S3 server (moto), through the
real CLI, into the test node.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from asset_servers import RangeServer, S3Server, free_port, write_cog
from conftest import SAMPLE_IMAGES, run_cli
from rsrt.ingest.sources import SourceError, StacSource
from vlm_server import ChatCompletions

pytestmark = pytest.mark.integration

SCENES = ("alpha", "beta")


def _write_catalog(root: Path) -> None:
    """catalog.json → coastal/collection.json → coastal/<id>/<id>.json; assets by relative href."""
    (root / "coastal").mkdir(parents=True)
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "archive", "description": "a published archive",
               "links": [{"rel": "child", "href": "./coastal/collection.json"}]}
    collection = {"type": "Collection", "stac_version": "1.0.0", "id": "coastal", "description": "coast",
                  "license": "proprietary",
                  "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                             "temporal": {"interval": [["2020-01-01T00:00:00Z", None]]}},
                  "links": [{"rel": "item", "href": f"./{name}/{name}.json"} for name in (*SCENES, "photo")]}
    for n, name in enumerate(SCENES):
        folder = root / "coastal" / name
        folder.mkdir()
        write_cog(folder / f"{name}.tif", size=512, seed=n)
        _write_item(folder / f"{name}.json", name, f"./{name}.tif", "image/tiff; application=geotiff", 10 + n)
    (root / "coastal" / "photo").mkdir()
    shutil.copy(sorted(SAMPLE_IMAGES.glob("*.jpg"))[0], root / "coastal" / "photo" / "photo.jpg")
    _write_item(root / "coastal" / "photo" / "photo.json", "photo", "./photo.jpg", "image/jpeg", 12)
    (root / "catalog.json").write_text(json.dumps(catalog))
    (root / "coastal" / "collection.json").write_text(json.dumps(collection))


def _write_item(path: Path, item_id: str, href: str, media_type: str, lon: float) -> None:
    ring = [[lon, 40], [lon + 0.1, 40], [lon + 0.1, 40.1], [lon, 40.1], [lon, 40]]
    item = {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": "coastal",
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [lon, 40, lon + 0.1, 40.1],
            "properties": {"datetime": "2023-05-01T10:00:00Z"},
            "assets": {"visual": {"href": href, "type": media_type, "roles": ["visual"]}}, "links": []}
    path.write_text(json.dumps(item))


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("published")
    _write_catalog(root)
    return root


def _ingest(where: str, index: str, state: Path, vlm: ChatCompletions, env: dict[str, str], *extra: str):
    return run_cli(["ingest", "images", where, "--index", index, "--state-dir", str(state), "--json",
                    "--no-cluster-model", "--captioner", "openai", "--model", "tiny-vl", "--vlm-url", vlm.base_url,
                    *extra], env)


def _documents(os_client, index: str) -> dict[str, dict]:
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 50, "_source": ["source_uri", "collection", "properties"]})
    return {hit["_id"]: hit["_source"] for hit in hits["hits"]["hits"]}


def test_a_catalog_on_a_web_server_is_walked_and_its_relative_assets_read_from_there(
        published, tmp_path, cli_env, os_client, index_name):
    vlm = ChatCompletions()
    try:
        with RangeServer(published) as http:
            result = _ingest(http.url("catalog.json"), index_name, tmp_path / "state", vlm, cli_env)
            assert result.returncode == 0, (result.stdout, result.stderr)
            assert json.loads(result.stdout)["ingested"] == 3
            assert all(http.count(f"coastal/{name}/{name}.tif") for name in SCENES)  # pixels came over HTTP
            docs = _documents(os_client, index_name)
            assert set(docs) == {*SCENES, "photo"}
            assert docs["alpha"]["source_uri"] == http.url("coastal/alpha/alpha.tif")
            assert docs["photo"]["source_uri"] == http.url("coastal/photo/photo.jpg")
            assert docs["beta"]["properties"]["stac:href"] == http.url("coastal/beta/beta.json")
            assert {doc["collection"] for doc in docs.values()} == {"coastal"}
            again = _ingest(http.url("catalog.json"), index_name, tmp_path / "state", vlm, cli_env)
            assert json.loads(again.stdout)["skipped"] == 3
    finally:
        vlm.stop()
    assert len(vlm.answered) == 3


def test_a_catalog_in_a_bucket_is_read_through_the_s3_endpoint(published, tmp_path, cli_env, os_client, index_name,
                                                               monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    env = {**cli_env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    vlm = ChatCompletions()
    try:
        with S3Server() as s3:
            for path in sorted(p for p in published.rglob("*") if p.is_file()):
                s3.upload("archive", f"stac/{path.relative_to(published).as_posix()}", path)
            result = _ingest("s3://archive/stac/catalog.json", index_name, tmp_path / "state", vlm, env,
                             "--s3-endpoint", s3.endpoint)
            assert result.returncode == 0, (result.stdout, result.stderr)
            assert json.loads(result.stdout)["ingested"] == 3
    finally:
        vlm.stop()
    docs = _documents(os_client, index_name)
    assert docs["alpha"]["source_uri"] == "s3://archive/stac/coastal/alpha/alpha.tif"


def test_a_stac_api_landing_page_or_an_unreachable_catalog_is_one_line(tmp_path, cli_env):
    (tmp_path / "landing.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "api", "description": "a STAC API",
        "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
        "links": [{"rel": "search", "href": "./search"}, {"rel": "data", "href": "./collections"}]}))
    with RangeServer(tmp_path) as http:
        landing = run_cli(["ingest", "images", http.url("landing.json"), "--index", "rsrt-never-created"], cli_env)
        missing = run_cli(["ingest", "images", http.url("nope/catalog.json"), "--index", "rsrt-never-created"],
                          cli_env)
    closed = f"http://127.0.0.1:{free_port()}/catalog.json"
    refused = run_cli(["ingest", "images", closed, "--index", "rsrt-never-created", "--asset-retries", "0"], cli_env)
    # bad input exits 2; a server that stays unreachable is worth running again later: 1
    for result, says, code in ((landing, "rsrt ingest stac-api", 2), (missing, "HTTP 404", 2), (refused, closed, 1)):
        assert result.returncode == code, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert says in result.stderr


def test_open_source_reads_a_remote_root_and_refuses_remote_folders(published):
    from rsrt.ingest.sources import open_source

    with RangeServer(published) as http:
        source = open_source(http.url("coastal/collection.json"))
        assert isinstance(source, StacSource)
        assert sorted(record.image_id for record in source.records()) == sorted([*SCENES, "photo"])
        with pytest.raises(SourceError, match="must be local"):
            open_source(http.url("coastal/"), kind="folder")
