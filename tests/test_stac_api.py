"""The search API as a STAC API, seen through pystac-client: a real client nobody here wrote.

40 images with known captions, collections, datetimes and footprints, and 6 undated ones without a
footprint, are ingested once per module into a real index on the real node; `rsrt`'s app runs under a
real uvicorn on loopback. Every expectation is computed from that table, so a collection extent, a
filter or a paging link that is off fails; pystac-client hydrates every item of every page (an undated
item is valid STAC 1.1, or it would raise).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from pystac_client import Client
from pystac_client.warnings import PystacClientWarning

from conftest import build_index, serving
from rsrt.search.api import CONFORMANCE, create_app
from rsrt.search.index import delete_index
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

THEMES: dict[str, tuple[str, str, str]] = {
    "harbour": ("Ships are moored at a busy harbour.",
                "ships (small) along the dock; cranes (large) east; water (large) north",
                "A gray harbour with many ships moored along concrete docks and cranes beside the water."),
    "forest": ("A dense green forest covers the hills.",
               "trees (dense) everywhere; hills (large) north",
               "Dense dark green forest with tall trees covering rolling hills, no buildings."),
    "airport": ("Airplanes are parked beside the runway of an airport.",
                "airplanes (medium) center; runway (long) south; terminal (large) west",
                "Several white airplanes park near a terminal next to a long gray runway."),
    "desert": ("Sand dunes stretch across a desert.",
               "dunes (large) everywhere; sand (yellow) all over",
               "Yellow sand dunes with wavy ridges and no vegetation at all."),
}
THEME_NAMES = list(THEMES)
COLLECTIONS = ["sentinel-2", "aerial"]
START = datetime(2020, 1, 1, 12, 0, tzinfo=UTC)
N = 40
UNDATED = 6  # rows N..N+5: no datetime, no footprint (captions only)
QUERY = "ships moored in a harbour"
PLACE = [9.9, 39.9, 14.1, 41.5]  # every row but those with i % 5 == 3
YEAR = "2020-01-01T00:00:00Z/2020-12-31T23:59:59Z"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(N):
        if i % 5 == 3:  # elsewhere: outside PLACE
            west, south = -70.0 + i * 0.1, -20.0
        else:
            west, south = 10.0 + (i % 8) * 0.5, 40.0 + (i // 8) * 0.25
        rows.append({"id": f"stac-{i:02d}", "theme": THEME_NAMES[i % 4], "collection": COLLECTIONS[(i // 4) % 2],
                     "datetime": _iso(START + timedelta(days=15 * i)), "bbox": [west, south, west + 0.4, south + 0.4]})
    for i in range(N, N + UNDATED):
        rows.append({"id": f"stac-{i:02d}", "theme": THEME_NAMES[i % 4], "collection": COLLECTIONS[(i // 4) % 2],
                     "datetime": None, "bbox": None})
    return rows


ROWS = _rows()
BY_ID = {row["id"]: row for row in ROWS}


def _record(row: dict[str, Any]) -> ImageRecord:
    one, feature, caption = THEMES[row["theme"]]
    geometry = None
    if row["bbox"]:
        w, s, e, n = row["bbox"]
        geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return ImageRecord(
        image_id=row["id"], source_uri=f"https://data.example.org/{row['id']}.tif", collection=row["collection"],
        datetime=row["datetime"], bbox=row["bbox"], geometry=geometry,
        variants=[Variant(one_sentence=one, feature=feature, caption=caption)])


def _in_place_and_year(row: dict[str, Any]) -> bool:
    if row["bbox"] is None or row["datetime"] is None:
        return False
    w, s, e, n = row["bbox"]
    inside = w <= PLACE[2] and e >= PLACE[0] and s <= PLACE[3] and n >= PLACE[1]
    return inside and "2020-01-01T00:00:00Z" <= row["datetime"] <= "2020-12-31T23:59:59Z"


EXPECTED = {row["id"] for row in ROWS if _in_place_and_year(row)}
EXPECTED_HARBOURS = {i for i in EXPECTED if BY_ID[i]["theme"] == "harbour"}


@pytest.fixture(scope="module")
def stac_url(os_client, tmp_path_factory) -> Iterator[str]:
    name = f"rsrt-stac-{uuid.uuid4().hex[:10]}"
    try:
        build_index(os_client, name, [_record(row) for row in ROWS], tmp_path_factory.mktemp("stac-ledger"))
        with serving(create_app(client=os_client, index=name, max_limit=50)) as base:
            yield base
    finally:
        delete_index(os_client, name)


def _open(url: str, q: str | None = None) -> Client:
    """Open the catalog; with `q`, every /search request carries the text query.

    pystac-client 0.9's `Client.search` has no `q` keyword (only its collection search has), so the text
    rides on its public `request_modifier` hook: into the JSON body for POST, the query string for GET.
    """

    def add_text(request: requests.Request) -> None:
        if q is None or not urlsplit(request.url).path.endswith("/search"):
            return
        if request.method == "POST":
            request.json = {**(request.json or {}), "q": q}
        else:
            request.params = {**(request.params or {}), "q": q}

    with warnings.catch_warnings():
        # pystac-client warns when an API lacks a class it needs (then silently falls back): make that fail
        warnings.simplefilter("error", PystacClientWarning)
        return Client.open(url, request_modifier=add_text)


@pytest.fixture
def catalog(stac_url: str) -> Client:
    return _open(stac_url)


@pytest.fixture
def text_catalog(stac_url: str) -> Client:
    return _open(stac_url, QUERY)


def test_the_oracle_is_not_trivial():
    """Place and time each exclude images, and the answer spans several pages of 4."""
    in_year = {row["id"] for row in ROWS if row["datetime"] and row["datetime"] < "2021"}
    in_place = {row["id"] for row in ROWS if row["bbox"] and row["bbox"][0] > 0}
    assert in_year - in_place and in_place - in_year  # place and time each exclude something
    assert 12 < len(EXPECTED) < N and 3 <= len(EXPECTED_HARBOURS) < len(EXPECTED)


def test_catalog_conformance_and_collections(catalog, stac_url):
    """A portal lists the collections with extents computed from the images each holds."""
    for cls in ("CORE", "ITEM_SEARCH", "COLLECTIONS", "FEATURES"):
        assert catalog.conforms_to(cls), cls
    assert set(httpx.get(f"{stac_url}/conformance").json()["conformsTo"]) == set(CONFORMANCE)
    found = {collection.id: collection for collection in catalog.get_collections()}
    assert set(found) == set(COLLECTIONS)
    for name, collection in found.items():
        rows = [row for row in ROWS if row["collection"] == name and row["bbox"]]  # dated rows have footprints
        bbox = collection.extent.spatial.bboxes[0]
        expected_bbox = [min(r["bbox"][0] for r in rows), min(r["bbox"][1] for r in rows),
                         max(r["bbox"][2] for r in rows), max(r["bbox"][3] for r in rows)]
        assert bbox == pytest.approx(expected_bbox, abs=1e-5), name
        start, end = collection.extent.temporal.intervals[0]
        assert _iso(start) == min(r["datetime"] for r in rows) and _iso(end) == max(r["datetime"] for r in rows)
        assert collection.extra_fields["rsrt:items"] == sum(row["collection"] == name for row in ROWS)
    one = catalog.get_collection("aerial")
    assert one is not None and one.id == "aerial"
    missing = httpx.get(f"{stac_url}/collections/no-such-collection")
    assert missing.status_code == 404 and missing.json()["field"] == "collectionId"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_text_place_and_time_search_pages_through_every_match(text_catalog, method):
    """q + bbox + datetime: exactly the matching images, harbours first, over several pages, no repeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PystacClientWarning)
        search = text_catalog.search(bbox=PLACE, datetime="2020", limit=4, method=method)
    assert search.matched() == len(EXPECTED)
    pages = list(search.pages())
    assert len(pages) == -(-len(EXPECTED) // 4)
    assert all(len(page.items) == 4 for page in pages[:-1])
    ids = [item.id for page in pages for item in page.items]
    assert len(ids) == len(set(ids)) and set(ids) == EXPECTED
    assert set(ids[:len(EXPECTED_HARBOURS)]) == EXPECTED_HARBOURS  # the text query ranks, not just filters
    scores = [item.properties["rsrt:score"] for page in pages for item in page.items]
    assert scores == sorted(scores, reverse=True)
    ranks = [item.properties["rsrt:rank"] for page in pages for item in page.items]
    assert ranks == list(range(1, len(EXPECTED) + 1))


def test_items_carry_captions_and_footprints_for_a_map(text_catalog, stac_url):
    """A STAC browser draws `geometry` and shows the captions; parent/collection links resolve."""
    item = next(text_catalog.search(bbox=PLACE, datetime=YEAR, max_items=1, method="GET").items())
    row = BY_ID[item.id]
    w, s, e, n = row["bbox"]
    assert item.geometry == {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    assert item.bbox == pytest.approx(row["bbox"])
    assert item.collection_id == row["collection"]
    assert item.properties["rsrt:summary"] == THEMES[row["theme"]][0]
    assert item.properties["rsrt:variants"][0]["caption"] == THEMES[row["theme"]][2]
    assert item.datetime is not None and _iso(item.datetime) == row["datetime"]
    links = {link.rel: link.href for link in item.links}
    assert links["collection"] == links["parent"] == f"{stac_url}/collections/{row['collection']}"
    assert httpx.get(links["collection"]).json()["id"] == row["collection"]
    assert httpx.get(links["self"]).json()["id"] == item.id


def test_collection_items_page_and_filter(catalog, stac_url):
    """/collections/{id}/items pages through one collection only; another collection's item is a 404."""
    aerial = catalog.get_collection("aerial")
    ids = [item.id for item in aerial.get_items()]
    expected = {row["id"] for row in ROWS if row["collection"] == "aerial"}
    assert len(ids) == len(set(ids)) and set(ids) == expected
    page = httpx.get(f"{stac_url}/collections/aerial/items", params={"limit": 3, "q": QUERY}).json()
    assert page["numberMatched"] == len(expected) and page["numberReturned"] == 3
    assert {link["rel"] for link in page["links"]} >= {"self", "root", "next", "collection"}
    assert all(BY_ID[f["id"]]["collection"] == "aerial" for f in page["features"])
    first = page["features"][0]["id"]
    assert httpx.get(f"{stac_url}/collections/aerial/items/{first}").json()["id"] == first
    other = next(row["id"] for row in ROWS if row["collection"] == "sentinel-2")
    assert httpx.get(f"{stac_url}/collections/aerial/items/{other}").status_code == 404
    assert httpx.get(f"{stac_url}/collections/nowhere/items").status_code == 404
    bad = httpx.get(f"{stac_url}/collections/aerial/items", params={"bbox": "1,2,3"})
    assert bad.status_code == 400 and bad.json()["field"] == "bbox"


def _walk(search: Any) -> list[Any]:
    """Every item of every page, as pystac Items: hydrating one that is not valid STAC raises here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PystacClientWarning)
        pages = list(search.pages())
    items = [item for page in pages for item in page.items]
    assert len(items) == len({item.id for item in items}) == search.matched()
    return items


UNDATED_IDS = {row["id"] for row in ROWS if row["datetime"] is None}
LOCATED_IDS = {row["id"] for row in ROWS if row["bbox"] and row["bbox"][0] > 0}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_pystac_client_pages_through_free_text_bbox_datetime_and_cql2_with_undated_items(stac_url, method):
    """An index that holds undated images: a text query reaches them (each hydrates as a pystac Item with
    datetime None and a start/end range); bbox, datetime and CQL2 searches page through exactly the
    table's answer."""
    with_text = _walk(_open(stac_url, QUERY).search(limit=7, method=method))
    assert {item.id for item in with_text} == set(BY_ID)
    undated = [item for item in with_text if item.id in UNDATED_IDS]
    assert len(undated) == UNDATED and all(item.datetime is None for item in undated)
    assert all(item.common_metadata.start_datetime and item.common_metadata.end_datetime for item in undated)
    catalog = _open(stac_url)
    assert {item.id for item in _walk(catalog.search(bbox=[0, -90, 180, 90], limit=7, method=method))} == LOCATED_IDS
    in_year = {row["id"] for row in ROWS if row["datetime"] and row["datetime"].startswith("2020")}
    assert {item.id for item in _walk(catalog.search(datetime="2020", limit=7, method=method))} == in_year
    aerial = {row["id"] for row in ROWS if row["collection"] == "aerial"}
    cql2_json = {"op": "=", "args": [{"property": "collection"}, "aerial"]}
    found = _walk(catalog.search(filter=cql2_json, filter_lang="cql2-json", limit=7, method=method))
    assert {item.id for item in found} == aerial and aerial & UNDATED_IDS
    if method == "GET":
        text = _walk(catalog.search(filter="collection = 'aerial'", filter_lang="cql2-text", limit=7, method="GET"))
        assert {item.id for item in text} == aerial
