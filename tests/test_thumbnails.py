"""Thumbnails at ingest: made from the picture the VLM is shown, stored in the document, read alone.

Real files (the RSICD sample, COGs written by `write_cog`), the loopback VLM (`vlm_server.py`), the
real `rsrt` CLI and the real test node; remote assets from a loopback HTTP range server.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from typing import Any

import pytest
from PIL import Image

import stac_fastapi_server
from asset_servers import RangeServer, free_port, write_cog
from conftest import SAMPLE_IMAGES, run_cli
from rsrt.ingest.raster import RasterRead, render
from rsrt.ingest.thumbnails import ThumbnailOptions, make_thumbnail
from stac_fastapi_server import stac_item
from vlm_server import ChatCompletions

pytestmark = pytest.mark.integration
stac_api = stac_fastapi_server.stac_api  # the fixture: one stac-fastapi-opensearch for the session

SAMPLES = sorted(SAMPLE_IMAGES.glob("*.jpg"))
FOOTPRINT = {"type": "Polygon", "coordinates": [[[14.0, 45.0], [14.1, 45.0], [14.1, 45.1], [14.0, 45.1], [14.0, 45.0]]]}


@pytest.fixture
def vlm():
    server = ChatCompletions()
    try:
        yield server
    finally:
        server.stop()


def _vlm_args(vlm: ChatCompletions) -> list[str]:
    return ["--captioner", "openai", "--model", "tiny-vl", "--vlm-url", vlm.base_url, "--vlm-retries", "0",
            "--no-cluster-model"]


def _docs(os_client, index: str) -> dict[str, dict[str, Any]]:
    """Every document's whole _source (thumbnail included: read the way no search body does)."""
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 200, "_source": {"excludes": ["variants.embedding"]}})
    return {h["_id"]: h["_source"] for h in hits["hits"]["hits"]}


def _jpeg(doc: dict[str, Any]) -> bytes:
    data = base64.b64decode(doc["thumbnail"], validate=True)
    assert doc["thumbnail_bytes"] == len(data)
    return data


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return image.size


def _summary(result) -> dict[str, Any]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_every_image_and_chip_gets_a_thumbnail_of_the_picture_the_vlm_saw(os_client, index_name, cli_env,
                                                                         tmp_path, vlm):
    folder = tmp_path / "archive"
    folder.mkdir()
    for sample in SAMPLES:
        shutil.copy(sample, folder / sample.name)
    scene = write_cog(folder / "scene.tif", size=1024, seed=3)
    result = run_cli(["ingest", "images", str(folder), "--index", index_name, "--chip-size", "512",
                      "--state-dir", str(tmp_path / "state"), "--json", *_vlm_args(vlm)], cli_env)
    summary = _summary(result)
    assert (summary["ingested"], summary["quarantined"], summary["thumbnails"]) == (12, 0, 12), summary
    assert "warnings" not in summary
    assert len(vlm.answered) == 12  # each picture captioned once
    docs = _docs(os_client, index_name)
    assert len(docs) == 12
    for sample in SAMPLES:
        doc = docs[sample.stem]
        with Image.open(sample) as original:
            width, height = original.size
            expected = make_thumbnail(original.convert("RGB"), ThumbnailOptions())
        assert _size(_jpeg(doc)) == (min(256, width), min(256, height))  # never enlarged
        assert _jpeg(doc) == expected  # the decoded JPEG the VLM got, scaled down
    chips = {image_id: doc for image_id, doc in docs.items() if image_id.startswith("scene_")}
    assert len(chips) == 4
    for doc in chips.values():
        # the chip as the caption stage rendered it for the VLM (its window, stretch, 512 px), scaled down
        picture = render(scene, RasterRead.from_properties(doc["properties"]))
        assert picture.size == (512, 512)
        assert _jpeg(doc) == make_thumbnail(picture, ThumbnailOptions())
        assert _size(_jpeg(doc)) == (256, 256)


def test_a_remote_asset_is_fetched_once_for_the_vlm_and_the_thumbnail(os_client, index_name, cli_env, tmp_path,
                                                                      vlm):
    root = tmp_path / "served"
    root.mkdir()
    shutil.copy(SAMPLES[0], root / "photo.jpg")
    write_cog(root / "scene.tif", size=2048, seed=4)

    def item(item_id: str, href: str, media_type: str) -> dict[str, Any]:
        return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": FOOTPRINT,
                "bbox": [14.0, 45.0, 14.1, 45.1], "properties": {"datetime": "2024-05-01T10:00:00Z"}, "links": [],
                "assets": {"visual": {"href": href, "type": media_type, "roles": ["data"]}}}

    counts = {}
    with RangeServer(root) as http:
        collection = tmp_path / "items.json"
        collection.write_text(json.dumps({"type": "FeatureCollection", "features": [
            item("photo", http.url("photo.jpg"), "image/jpeg"),
            item("scene", http.url("scene.tif"), "image/tiff; application=geotiff; profile=cloud-optimized")]}))
        for size, index in (("256", index_name), ("0", f"{index_name}-none")):
            http.reset_counters()
            result = run_cli(["ingest", "images", str(collection), "--index", index, "--thumbnail-size", size,
                              "--state-dir", str(tmp_path / f"state-{size}"), "--json", *_vlm_args(vlm)], cli_env)
            summary = _summary(result)
            assert (summary["ingested"], summary["thumbnails"]) == (2, 2 if size == "256" else 0), summary
            counts[size] = (http.count("photo.jpg"), http.count("scene.tif"), http.served("scene.tif"))
    assert counts["256"][0] == 1  # the JPEG: one GET, its bytes went to the VLM and into the thumbnail
    assert counts["256"] == counts["0"]  # thumbnails cost no request and no byte more than captioning
    docs = _docs(os_client, index_name)
    assert _size(_jpeg(docs["photo"])) == (256, 256)
    assert _size(_jpeg(docs["scene"])) == (256, 256)
    assert all("thumbnail" not in doc for doc in _docs(os_client, f"{index_name}-none").values())


def test_stac_api_items_get_the_thumbnail_of_their_captioned_asset(stac_api, os_client, index_name, cli_env,
                                                                   tmp_path, vlm):
    pictures = []
    for i, sample in enumerate(SAMPLES[:3]):
        pictures.append(tmp_path / f"pic{i}.jpg")
        shutil.copy(sample, pictures[-1])
    collection = stac_api.new_collection("thumbs")
    stac_api.add_items(collection, [
        stac_item(f"pic{i}", collection, bbox=[float(i), 10.0, i + 0.5, 10.5], datetime="2021-05-15T10:00:00Z",
                  assets={"visual": {"href": path.as_uri(), "type": "image/jpeg", "roles": ["visual"]}})
        for i, path in enumerate(pictures)])
    summary = _summary(run_cli(["ingest", "stac-api", stac_api.url, "--collections", collection, "--index",
                                index_name, "--state-dir", str(tmp_path / "state"), "--json", *_vlm_args(vlm)],
                               cli_env))
    assert (summary["ingested"], summary["thumbnails"]) == (3, 3), summary
    docs = _docs(os_client, index_name)
    for i, path in enumerate(pictures):
        with Image.open(path) as original:
            assert _jpeg(docs[f"pic{i}"]) == make_thumbnail(original.convert("RGB"), ThumbnailOptions())


def test_a_cached_caption_still_gets_its_thumbnail_without_a_vlm_call(os_client, index_name, cli_env, tmp_path,
                                                                     vlm):
    folder = tmp_path / "archive"
    folder.mkdir()
    for sample in SAMPLES[:4]:
        shutil.copy(sample, folder / sample.name)
    write_cog(folder / "scene.tif", size=1024, seed=5)
    args = ["ingest", "images", str(folder), "--index", index_name, "--state-dir", str(tmp_path / "state"),
            "--json", *_vlm_args(vlm)]
    first = _summary(run_cli([*args, "--thumbnail-size", "0"], cli_env))
    assert (first["ingested"], first["thumbnails"]) == (5, 0)
    assert all("thumbnail" not in doc for doc in _docs(os_client, index_name).values())
    answered = len(vlm.answered)

    (folder / SAMPLES[3].name).unlink()  # gone from the archive: not in the next runs
    again = _summary(run_cli(args, cli_env))  # resumed: everything is in the index already
    assert (again["ingested"], again["skipped"], again["thumbnails"]) == (0, 4, 0)

    redo = _summary(run_cli([*args, "--overwrite"], cli_env))
    assert len(vlm.answered) == answered  # every caption came from the cache
    assert (redo["ingested"], redo["thumbnails"], redo["quarantined"]) == (4, 4, 0), redo
    docs = _docs(os_client, index_name)
    assert all(_size(_jpeg(docs[sample.stem])) for sample in SAMPLES[:3])
    assert _size(_jpeg(docs["scene"])) == (256, 256)  # read for the thumbnail alone, at its size
    assert "thumbnail" not in docs[SAMPLES[3].stem]  # indexed before, left as it was


def test_precomputed_captions_get_thumbnails_from_local_images_only_and_never_lose_an_item(
        os_client, index_name, cli_env, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLES[0], images / "present.jpg")
    (images / "broken.jpg").write_bytes(SAMPLES[1].read_bytes()[:2000])  # truncated
    remote = f"http://127.0.0.1:{free_port()}/remote.jpg"  # nothing listens: a fetch would be a warning
    lines = [{"image": "present.jpg", "captions": ["a runway with planes"]},
             {"image": "absent.jpg", "captions": ["a field without its picture"]},
             {"image": "broken.jpg", "captions": ["a truncated picture"]},
             {"image": remote, "image_id": "remote", "captions": ["a remote picture"]}]
    captions = images / "captions.jsonl"
    captions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_cli(["ingest", "captions", str(captions), "--index", index_name, "--state-dir",
                      str(tmp_path / "state"), "--json", "--no-cluster-model"], cli_env)
    summary = _summary(result)
    assert (summary["ingested"], summary["quarantined"], summary["thumbnails"]) == (4, 0, 1), summary
    assert len(summary["warnings"]) == 1 and summary["warning_count"] == 1
    assert "broken" in summary["warnings"][0] and "indexed without one" in summary["warnings"][0]
    assert "\n" not in summary["warnings"][0]
    docs = _docs(os_client, index_name)
    assert _size(_jpeg(docs["present"])) == (256, 256)
    assert [name for name, doc in docs.items() if "thumbnail" in doc] == ["present"]

    human = run_cli(["ingest", "captions", str(captions), "--index", index_name, "--state-dir",
                     str(tmp_path / "state2"), "--overwrite", "--no-cluster-model"], cli_env)
    assert human.returncode == 0, human.stderr
    assert human.stdout.count("warning: thumbnail of 'broken'") == 1  # one line in the printed report


def test_an_index_made_before_thumbnails_gets_the_fields_instead_of_refusing_every_document(
        os_client, index_name, cli_env, tmp_path):
    from rsrt.search.encoder import get_encoder
    from rsrt.search.index import CONTRACT_VERSION, render_template

    # The index as rsrt made it before this change: the same template, without the thumbnail fields.
    template = render_template(get_encoder().info()["dimension"], index_name)
    body = template["template"]
    for name in ("thumbnail", "thumbnail_bytes"):
        del body["mappings"]["properties"][name]
    body["mappings"]["_meta"] = {"rsrt_contract": CONTRACT_VERSION, "encoder": get_encoder().info(),
                                 "alias": index_name, "created": "2026-01-01T00:00:00+00:00"}
    body["aliases"] = {index_name: {"is_write_index": True}}
    os_client.indices.create(index=f"{index_name}-v1", body=body)

    shutil.copy(SAMPLES[0], tmp_path / "present.jpg")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": "present.jpg", "captions": ["a runway with planes"]}) + "\n")
    summary = _summary(run_cli(["ingest", "captions", str(captions), "--index", index_name, "--state-dir",
                                str(tmp_path / "state"), "--json", "--no-cluster-model"], cli_env))
    assert (summary["ingested"], summary["failed"], summary["thumbnails"]) == (1, 0, 1), summary
    mapping = os_client.indices.get_mapping(index=index_name)[f"{index_name}-v1"]["mappings"]["properties"]
    assert mapping["thumbnail"] == {"type": "binary"} and mapping["thumbnail_bytes"] == {"type": "integer"}
    assert _size(_jpeg(_docs(os_client, index_name)["present"])) == (256, 256)


def test_searches_leave_the_thumbnail_out_and_the_searcher_reads_it_alone(os_client, index_name, tmp_path):
    from conftest import build_index
    from rsrt.search.errors import IndexNotFound
    from rsrt.search.filters import Filters
    from rsrt.search.request import Mode, SearchRequest
    from rsrt.search.schema import ImageRecord, Variant
    from rsrt.search.searcher import Searcher

    with Image.open(SAMPLES[0]) as image:
        jpeg = make_thumbnail(image.convert("RGB"), ThumbnailOptions(size=64))
    records = [ImageRecord("with", variants=[Variant(caption="an airport with a runway")], thumbnail=jpeg),
               ImageRecord("without", variants=[Variant(caption="an airport with planes")])]
    build_index(os_client, index_name, records, tmp_path / "ledger")
    searcher = Searcher(os_client, index_name)
    for mode in ("dense", "lexical", "hybrid"):
        hits = searcher.search(SearchRequest("airport", Mode(mode), 10)).hits
        assert {h.image_id for h in hits} == {"with", "without"}
        assert all("thumbnail" not in h.source for h in hits)
        assert {h.image_id: h.source.get("thumbnail_bytes") for h in hits} == {"with": len(jpeg), "without": None}
    browsed = searcher.browse(Filters(), 10).hits
    assert [h.source.get("thumbnail") for h in browsed] == [None, None]
    item = searcher.get_item("with")
    assert item is not None and "thumbnail" not in item.source and item.source["thumbnail_bytes"] == len(jpeg)
    assert searcher.thumbnail("with") == jpeg
    assert searcher.thumbnail("without") is None
    assert searcher.thumbnail("absent") is None
    with pytest.raises(IndexNotFound):  # through the error boundary, like every read
        Searcher(os_client, f"{index_name}-missing").thumbnail("with")


def test_thumbnail_size_is_checked_naming_the_flag(cli_env, tmp_path):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": "x.jpg", "captions": ["a field"]}) + "\n")
    result = run_cli(["ingest", "captions", str(captions), "--index", "rsrt-never-made", "--thumbnail-size", "5",
                      "--dry-run"], cli_env)
    assert result.returncode == 2
    assert "--thumbnail-size 5" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_thumbnail_keeps_the_aspect_and_is_never_enlarged():
    with Image.open(SAMPLES[0]) as image:
        picture = image.convert("RGB").crop((0, 0, 384, 192))
    assert _size(make_thumbnail(picture, ThumbnailOptions(size=256))) == (256, 128)
    assert _size(make_thumbnail(picture, ThumbnailOptions(size=1024))) == (384, 192)
    assert _size(make_thumbnail(picture.convert("L"), ThumbnailOptions(size=100))) == (100, 50)
