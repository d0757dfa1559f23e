"""StacSource over real STAC files: a self-contained catalog saved by pystac, and item collections."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
from PIL import Image

from rsrt.ingest.sources import SourceError, SourceProblem, StacSource, open_source, uri_to_path
from rsrt.search.schema import ImageRecord

BBOX = [12.0, 41.0, 12.5, 41.5]
GEOMETRY = {
    "type": "Polygon",
    "coordinates": [[[12.0, 41.0], [12.5, 41.0], [12.5, 41.5], [12.0, 41.5], [12.0, 41.0]]],
}


def write_image(path: Path, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(data).save(path, format=fmt)
    return path


def make_item(item_id: str, assets: dict[str, pystac.Asset], **props: object) -> pystac.Item:
    when = None if "start_datetime" in props else datetime(2020, 5, 1, 10, 30, tzinfo=UTC)
    item = pystac.Item(id=item_id, geometry=GEOMETRY, bbox=BBOX, datetime=when, properties=dict(props))
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


@pytest.fixture()
def catalog_dir(tmp_path: Path) -> Path:
    """A self-contained catalog: root → collection "coll-a" (4 items) and sub-catalog (2 items)."""
    images = tmp_path / "images"
    visual = write_image(images / "visual.jpg")
    thumb = write_image(images / "thumb.png", "PNG")
    data_tif = write_image(images / "data.tif", "TIFF")

    root = pystac.Catalog(id="root", description="test archive")
    coll = pystac.Collection(
        id="coll-a",
        description="collection a",
        extent=pystac.Extent(
            pystac.SpatialExtent([BBOX]), pystac.TemporalExtent([[datetime(2020, 1, 1, tzinfo=UTC), None]])
        ),
    )
    coll.add_item(
        make_item(
            "with-visual",
            {
                "thumbnail": pystac.Asset(str(thumb), media_type=pystac.MediaType.PNG, roles=["thumbnail"]),
                "visual": pystac.Asset(str(visual), media_type=pystac.MediaType.JPEG, roles=["visual"]),
            },
            platform="sentinel-2a",
            **{"eo:cloud_cover": 12.5},
        )
    )
    coll.add_item(
        make_item(
            "thumb-only",
            {
                "metadata": pystac.Asset(str(images / "meta.xml"), media_type=pystac.MediaType.XML),
                "thumbnail": pystac.Asset(str(thumb), media_type=pystac.MediaType.PNG),
            },
        )
    )
    coll.add_item(
        make_item(
            "tiff-data",
            {
                "metadata": pystac.Asset(str(images / "meta.xml"), media_type=pystac.MediaType.XML),
                "data": pystac.Asset(str(data_tif), media_type=pystac.MediaType.GEOTIFF),
            },
            start_datetime="2019-07-01T00:00:00Z",
            end_datetime="2019-07-31T23:59:59Z",
        )
    )
    coll.add_item(make_item("no-image", {"metadata": pystac.Asset(str(images / "meta.xml"), media_type="text/xml")}))
    sub = pystac.Catalog(id="sub", description="a sub-catalog")
    sub.add_item(make_item("missing-file", {"visual": pystac.Asset(str(images / "gone.jpg"))}))
    sub.add_item(
        make_item("remote", {"visual": pystac.Asset("https://example.org/scenes/remote.jpg")}),
    )
    root.add_child(coll)
    root.add_child(sub)
    out = tmp_path / "stac"
    root.normalize_hrefs(str(out))
    root.make_all_asset_hrefs_relative()
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return out


def records_and_problems(source: StacSource) -> tuple[dict[str, ImageRecord], dict[str, SourceProblem]]:
    items = list(source)
    records = {i.image_id: i for i in items if isinstance(i, ImageRecord)}
    problems = {i.item: i for i in items if isinstance(i, SourceProblem)}
    assert len(records) + len(problems) == len(items)
    return records, problems


def test_catalog_walks_all_items_and_picks_assets(catalog_dir: Path) -> None:
    item_json = json.loads((catalog_dir / "coll-a" / "with-visual" / "with-visual.json").read_text())
    assert not item_json["assets"]["visual"]["href"].startswith("/")  # really relative on disk

    source = open_source(catalog_dir)  # a directory with catalog.json is STAC, not a folder of images
    assert isinstance(source, StacSource)
    assert source.needs_captioning is True
    assert source.count_hint() is None
    records, problems = records_and_problems(source)

    assert list(records) == ["with-visual", "thumb-only", "tiff-data", "remote"]
    images = (catalog_dir.parent / "images").resolve()
    visual = records["with-visual"]
    assert uri_to_path(visual.source_uri) == images / "visual.jpg"
    assert visual.source_uri.startswith("file:///")
    assert visual.properties["stac:asset"] == "visual"
    assert uri_to_path(records["thumb-only"].source_uri) == images / "thumb.png"
    assert records["thumb-only"].properties["stac:asset"] == "thumbnail"
    assert records["tiff-data"].properties["stac:asset"] == "data"
    assert records["remote"].source_uri == "https://example.org/scenes/remote.jpg"

    assert visual.collection == "coll-a"
    assert records["remote"].collection is None  # under a plain Catalog, no collection
    assert visual.datetime == "2020-05-01T10:30:00Z"
    assert records["tiff-data"].datetime == "2019-07-01T00:00:00Z"  # from start_datetime
    assert visual.geometry == GEOMETRY
    assert visual.bbox == BBOX
    assert visual.properties["platform"] == "sentinel-2a"
    assert visual.properties["eo:cloud_cover"] == 12.5
    assert "datetime" not in visual.properties
    json.dumps([r.properties for r in records.values()])

    assert set(problems) == {"no-image", "missing-file"}
    assert "no usable image asset" in problems["no-image"].reason
    assert "metadata" in problems["no-image"].reason
    assert problems["no-image"].path.endswith("no-image.json")
    assert "not found" in problems["missing-file"].reason
    assert "gone.jpg" in problems["missing-file"].reason


def test_collection_option_overrides_and_catalog_json_path_works(catalog_dir: Path) -> None:
    source = open_source(catalog_dir / "catalog.json", collection="mine")
    records, _ = records_and_problems(source)
    assert {r.collection for r in records.values()} == {"mine"}
    # a child collection file is itself a valid root
    coll_source = StacSource(catalog_dir / "coll-a" / "collection.json")
    coll_records, coll_problems = records_and_problems(coll_source)
    assert list(coll_records) == ["with-visual", "thumb-only", "tiff-data"]
    assert list(coll_problems) == ["no-image"]


def test_broken_item_and_child_files_are_problems(catalog_dir: Path) -> None:
    (catalog_dir / "coll-a" / "thumb-only" / "thumb-only.json").write_text("{ not json")
    (catalog_dir / "sub" / "catalog.json").unlink()
    records, problems = records_and_problems(StacSource(catalog_dir))
    assert list(records) == ["with-visual", "tiff-data"]
    broken = problems["./thumb-only/thumb-only.json"]
    assert "invalid JSON" in broken.reason
    assert broken.path.endswith("thumb-only.json")
    missing_child = problems["./sub/catalog.json"]
    assert "cannot read child catalog" in missing_child.reason


def test_duplicate_item_ids_are_reported(tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.jpg")
    features = [
        make_item("same", {"visual": pystac.Asset("a.jpg")}).to_dict(include_self_link=False),
        make_item("same", {"visual": pystac.Asset("a.jpg")}).to_dict(include_self_link=False),
    ]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    records, problems = records_and_problems(StacSource(path))
    assert uri_to_path(records["same"].source_uri) == img.resolve()
    assert "duplicate image id same" in problems["same"].reason


def test_item_collection_resolves_hrefs_against_its_file(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "one.jpg")
    write_image(tmp_path / "imgs" / "two.png", "PNG")
    one = make_item("one", {"visual": pystac.Asset("../imgs/one.jpg", media_type=pystac.MediaType.JPEG)})
    two = make_item("two", {"overview": pystac.Asset("../imgs/two.png", media_type=pystac.MediaType.PNG)})
    collection = pystac.ItemCollection([one, two])
    d = collection.to_dict()
    bad = dict(d["features"][0])
    del bad["id"]
    d["features"].append(bad)
    d["features"].append({"type": "Feature", "stac_version": "1.0.0", "id": "nogeom-bad", "links": []})
    path = tmp_path / "search" / "results.geojson"
    path.parent.mkdir()
    path.write_text(json.dumps(d))

    source = open_source(path)
    assert isinstance(source, StacSource)
    assert source.count_hint() == 4
    items = list(source)
    records = [i for i in items if isinstance(i, ImageRecord)]
    problems = [i for i in items if isinstance(i, SourceProblem)]
    assert [r.image_id for r in records] == ["one", "two"]
    assert uri_to_path(records[0].source_uri) == (tmp_path / "imgs" / "one.jpg").resolve()
    assert records[1].properties["stac:asset"] == "overview"
    assert [p.item for p in problems] == ["features[2]", "nogeom-bad"]
    assert [p.reason for p in problems] == [
        "not a valid STAC item: missing 'id'",
        "not a valid STAC item: missing 'properties'",
    ]
    assert all(p.path == str(path.resolve()) for p in problems)


def test_single_item_file(tmp_path: Path) -> None:
    write_image(tmp_path / "x.jpg")
    item = make_item("solo", {"visual": pystac.Asset("x.jpg")})
    (tmp_path / "solo.json").write_text(json.dumps(item.to_dict(include_self_link=False)))
    source = StacSource(tmp_path / "solo.json")
    assert source.count_hint() == 1
    (record,) = list(source)
    assert isinstance(record, ImageRecord) and record.image_id == "solo"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{ nope", "invalid JSON at line 1"),
        ('{"type": "Thing"}', "not STAC"),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature", "id": "x"}]}', "not STAC items"),
        ('{"type": "FeatureCollection", "features": []}', "has no items"),
        ('{"type": "Catalog", "stac_version": "1.0.0", "description": "no id", "links": []}', "not a valid"),
        (
            '{"type": "Catalog", "id": "c", "stac_version": "1.0.0", "description": "d", "links": []}',
            "no item or child links",
        ),
        ("[1, 2]", "not STAC"),
    ],
)
def test_invalid_root_files_raise_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(content)
    with pytest.raises(SourceError) as err:
        open_source(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)
