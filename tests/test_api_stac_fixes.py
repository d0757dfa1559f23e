"""Issue #16's findings on the STAC API itself, each as a portal or a client meets it.

A real index on the real node (dated and undated images, local and remote sources, one with a
thumbnail), rsrt's app under a real uvicorn, real HTTP; pystac and pystac-client are the clients and
validators nobody here wrote (pystac ships the STAC 1.1 JSON schemas: validation runs offline).
"""

from __future__ import annotations

import base64
import socket
import uuid
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pystac
import pytest
from pystac_client import Client
from pystac_client.warnings import PystacClientWarning

from conftest import build_index, serving
from rsrt.search.api import create_app
from rsrt.search.client import connect
from rsrt.search.config import ConnectionSettings
from rsrt.search.index import delete_index
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

MAX_LIMIT = 5
N = 12
UNDATED = {f"fix-{i:02d}" for i in range(N) if i % 3 == 2}  # no datetime, no footprint
LOCAL = "fix-01"  # its source is a file on the server's disk
SLASHED = "dir/sub/fix-04.jpg"  # folder sources make ids with '/'
THUMBNAIL = b"\xff\xd8\xff\xe0 a tiny jpeg"  # the bytes themselves are H2's to check; the asset link is ours


def _id(i: int) -> str:
    return SLASHED if i == 4 else f"fix-{i:02d}"


def _record(i: int) -> ImageRecord:
    image_id = _id(i)
    undated = image_id in UNDATED
    w, s = 10.0 + i, 40.0
    source = "/srv/archive/images/fix-01.jpg" if image_id == LOCAL else f"https://data.example.org/{i}.tif"
    return ImageRecord(
        image_id=image_id, source_uri=source, collection="aerial" if i % 2 else "sentinel-2",
        datetime=None if undated else f"2021-0{1 + i % 9}-15T10:00:00Z",
        bbox=None if undated else [w, s, w + 0.5, s + 0.5],
        geometry=None if undated else {"type": "Polygon", "coordinates": [
            [[w, s], [w + 0.5, s], [w + 0.5, s + 0.5], [w, s + 0.5], [w, s]]]},
        variants=[Variant(one_sentence="Ships are moored in a harbour.", caption=f"A harbour, picture {i}.")])


@pytest.fixture(scope="module")
def fix_index(os_client, tmp_path_factory) -> Iterator[str]:
    name = f"rsrt-fix-{uuid.uuid4().hex[:10]}"
    try:
        build_index(os_client, name, [_record(i) for i in range(N)], tmp_path_factory.mktemp("fix-ledger"))
        hits = os_client.search(index=name, body={"query": {"term": {"image_id": "fix-00"}}})["hits"]["hits"]
        os_client.update(index=hits[0]["_index"], id=hits[0]["_id"], refresh=True, body={"doc": {
            "thumbnail": base64.b64encode(THUMBNAIL).decode("ascii"), "thumbnail_bytes": len(THUMBNAIL)}})
        yield name
    finally:
        delete_index(os_client, name)


@pytest.fixture(scope="module")
def base(os_client, fix_index) -> Iterator[str]:
    with serving(create_app(client=os_client, index=fix_index, max_limit=MAX_LIMIT)) as url:
        yield url


def _all_items(base: str) -> list[dict[str, Any]]:
    """Every item of the index, page by page through the `next` links."""
    items: list[dict[str, Any]] = []
    url: str | None = f"{base}/search?limit={MAX_LIMIT}"
    while url:
        page = httpx.get(url, timeout=60)
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["features"]
        url = next((link["href"] for link in body["links"] if link["rel"] == "next"), None)
    return items


def test_data_link_is_collections_and_every_collection_and_item_resolves_under_it(base):
    """The `data` link is /collections (no trailing slash): joined with '/' + id it reaches each
    collection and its items (a trailing slash made STAC Browser ask for …/collections//aerial)."""
    landing = httpx.get(f"{base}/").json()
    data = next(link["href"] for link in landing["links"] if link["rel"] == "data")
    assert data == f"{base}/collections"
    listed = httpx.get(data).json()["collections"]
    assert {c["id"] for c in listed} == {"aerial", "sentinel-2"}
    for collection in listed:
        one = httpx.get(f"{data}/{collection['id']}")
        assert one.status_code == 200 and one.json()["id"] == collection["id"]
        items = httpx.get(next(link["href"] for link in one.json()["links"] if link["rel"] == "items"))
        assert items.status_code == 200 and items.json()["features"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", PystacClientWarning)
        catalog = Client.open(base)
    assert {c.id for c in catalog.get_collections()} == {"aerial", "sentinel-2"}  # pystac-client walks them
    walked = {item.id for c in catalog.get_collections() for item in c.get_items()}
    assert walked == {_id(i) for i in range(N)}


def test_service_desc_is_served_as_the_media_type_it_announces(base):
    landing = httpx.get(f"{base}/").json()
    link = next(link for link in landing["links"] if link["rel"] == "service-desc")
    assert link["type"] == "application/vnd.oai.openapi+json;version=3.0"
    answer = httpx.get(link["href"])
    assert answer.status_code == 200 and answer.headers["content-type"] == link["type"]
    assert answer.json()["openapi"].startswith("3.")


@pytest.mark.parametrize("how", ["GET /search", "POST /search", "GET items"])
def test_a_limit_above_the_maximum_is_clamped_not_refused(base, how):
    """STAC API: a server may cap `limit`; a larger one is answered with at most the cap (not a 400)."""
    if how == "GET /search":
        answer = httpx.get(f"{base}/search", params={"limit": 1000})
    elif how == "POST /search":
        answer = httpx.post(f"{base}/search", json={"limit": 1000})
    else:
        answer = httpx.get(f"{base}/collections/aerial/items", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["numberReturned"] == len(body["features"]) == MAX_LIMIT and body["context"]["limit"] == MAX_LIMIT
    assert any(link["rel"] == "next" for link in body["links"])
    assert httpx.get(f"{base}/search", params={"limit": 0}).status_code == 400  # below 1 is still wrong


def test_every_item_and_collection_is_valid_stac_1_1_dated_or_not(base):
    """Items are STAC 1.1 and validate against its schemas; an undated image is valid too (datetime null
    with a start/end range), and pystac-client hydrates every page of them."""
    items = _all_items(base)
    assert {item["id"] for item in items} == {_id(i) for i in range(N)}
    for item in items:
        assert item["stac_version"] == "1.1.0"
        pystac.Item.from_dict(item).validate()
        properties = item["properties"]
        if item["id"] in UNDATED:
            assert properties["datetime"] is None
            assert properties["start_datetime"] == "0001-01-01T00:00:00Z"
            assert properties["end_datetime"] == "9999-12-31T23:59:59Z" and properties["rsrt:undated"] is True
        else:
            assert properties["datetime"] and "start_datetime" not in properties
    for collection in httpx.get(f"{base}/collections").json()["collections"]:
        pystac.Collection.from_dict(collection).validate()
    catalog = Client.open(base)
    hydrated = list(catalog.search(limit=MAX_LIMIT, method="GET").items())
    assert {item.id for item in hydrated} == {_id(i) for i in range(N)}
    assert {item.id for item in hydrated if item.datetime is None} == UNDATED


def test_items_link_browser_loadable_assets_and_thumbnails(base):
    """A local source file is linked through the API (/assets/{id}/image), a remote one as it is; a
    document with a thumbnail gets a `thumbnail` asset under /thumbnails/{id}; ids are URL-quoted."""
    by_id = {item["id"]: item for item in _all_items(base)}
    local = by_id[LOCAL]["assets"]
    assert local["image"]["href"] == f"{base}/assets/{LOCAL}/image" and local["image"]["type"] == "image/jpeg"
    assert "thumbnail" not in local
    remote = by_id["fix-02"]["assets"]
    assert remote["image"]["href"] == "https://data.example.org/2.tif" and "thumbnail" not in remote
    assert by_id["fix-00"]["assets"]["thumbnail"] == {"href": f"{base}/thumbnails/fix-00", "type": "image/jpeg",
                                                      "roles": ["thumbnail"], "title": "thumbnail"}
    slashed = by_id[SLASHED]
    assert slashed["assets"]["image"]["href"] == "https://data.example.org/4.tif"
    self_link = next(link["href"] for link in slashed["links"] if link["rel"] == "self")
    assert self_link == f"{base}/collections/sentinel-2/items/{quote(SLASHED, safe='')}"
    assert httpx.get(self_link).json()["id"] == SLASHED  # an id with '/' resolves under its collection too


def test_a_deleted_index_under_a_running_server_is_a_503_on_q(os_client, tmp_path):
    """The index goes away while the server runs (it has already searched it): the portal is told the
    service is unavailable (503), not that its query is wrong (400)."""
    name = f"rsrt-gone-{uuid.uuid4().hex[:10]}"
    try:
        build_index(os_client, name, [_record(i) for i in range(3)], tmp_path / "ledger")
        with serving(create_app(client=os_client, index=name)) as url, httpx.Client(base_url=url, timeout=60) as api:
            for mode in ("dense", "lexical", "hybrid"):
                assert api.get("/search", params={"q": "ships", "mode": mode}).status_code == 200
            delete_index(os_client, name)
            for mode in ("dense", "lexical", "hybrid"):
                for answer in (api.get("/search", params={"q": "ships", "mode": mode}),
                               api.post("/search", json={"q": "ships", "mode": mode})):
                    assert answer.status_code == 503, (mode, answer.text)
                    assert answer.json()["code"] == "ServiceUnavailable" and answer.json()["field"] is None
            assert api.get("/search").status_code == 503
            assert api.get("/healthz").status_code == 503
    finally:
        delete_index(os_client, name)


def test_a_503_never_names_the_cluster_address(opensearch_url):
    """A server-side failure's answer names no internal host or port (only the server log may)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = connect(ConnectionSettings.resolve(url=f"http://127.0.0.1:{dead_port}"), max_retries=0)
    with serving(create_app(client=dead, index="rsrt-images")) as url, httpx.Client(base_url=url, timeout=60) as api:
        answers = [api.get("/search", params={"q": "ships"}), api.get("/search"), api.get("/collections"),
                   api.post("/search", json={"q": "ships", "mode": "lexical"}), api.get("/items/x"),
                   api.get("/collections/aerial"), api.get("/collections/aerial/items"), api.get("/queryables"),
                   api.get("/healthz")]
        for answer in answers:
            assert answer.status_code == 503, (answer.request.url, answer.text)
            assert str(dead_port) not in answer.text and "127.0.0.1" not in answer.text, answer.text


def test_landing_page_links_the_queryables_by_the_filter_extensions_relation(base):
    landing = httpx.get(f"{base}/").json()
    link = next(link for link in landing["links"] if link["rel"] == "http://www.opengis.net/def/rel/ogc/1.0/queryables")
    schema = httpx.get(link["href"])
    assert schema.status_code == 200 and schema.headers["content-type"].startswith("application/schema+json")
    assert schema.json()["$id"] == link["href"] and {"id", "collection", "datetime"} <= set(schema.json()["properties"])
    per_collection = httpx.get(f"{base}/collections/aerial/queryables")
    assert per_collection.status_code == 200 and per_collection.json()["$id"] == f"{base}/collections/aerial/queryables"
    assert httpx.get(f"{base}/collections/nowhere/queryables").status_code == 404


def test_fields_extension_includes_and_excludes_by_get_and_post(base):
    get = httpx.get(f"{base}/search", params={"fields": "properties.datetime,-links", "limit": 3}).json()
    post = httpx.post(f"{base}/search", json={"fields": {"include": ["properties.datetime"], "exclude": ["links"]},
                                              "limit": 3}).json()
    for body in (get, post):
        for item in body["features"]:
            assert set(item) == {"type", "stac_version", "id", "links", "properties"}, item  # links: required, kept
            assert set(item["properties"]) == {"datetime"}, item
    dropped = httpx.get(f"{base}/search", params={"fields": "-assets,-properties.rsrt:variants", "limit": 2}).json()
    assert all("assets" not in item and "rsrt:variants" not in item["properties"] and "geometry" in item
               for item in dropped["features"])


def test_a_lone_collection_string_in_a_post_body_is_one_collection(base):
    """STAC API says an array; stac-api-validator 0.6.8 sends a string: taken as one id, never split."""
    lone = httpx.post(f"{base}/search", json={"collections": "aerial", "limit": MAX_LIMIT}).json()
    listed = httpx.post(f"{base}/search", json={"collections": ["aerial"], "limit": MAX_LIMIT}).json()
    assert [f["id"] for f in lone["features"]] == [f["id"] for f in listed["features"]]
    assert lone["features"] and {f["collection"] for f in lone["features"]} == {"aerial"}
    assert httpx.post(f"{base}/search", json={"collections": "aerial,sentinel-2"}).json()["features"] == []


def _all_ids(base: str, method: str, query: dict[str, Any]) -> list[str]:
    """The ids of every page of one search, in order, following `next` links by GET or POST."""
    ids: list[str] = []
    if method == "GET":
        answer = httpx.get(f"{base}/search", params={**query, "limit": MAX_LIMIT})
    else:
        answer = httpx.post(f"{base}/search", json={**query, "limit": MAX_LIMIT})
    while True:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        ids += [f["id"] for f in body["features"]]
        link = next((link for link in body["links"] if link["rel"] == "next"), None)
        if link is None:
            return ids
        answer = httpx.get(link["href"]) if method == "GET" else httpx.post(link["href"], json=link["body"])


AERIAL = {_id(i) for i in range(N) if i % 2}
DATED = {_id(i) for i in range(N)} - UNDATED


@pytest.mark.parametrize("method,query", [
    ("GET", {"filter": "collection = 'aerial'"}),
    ("GET", {"filter": "collection = 'aerial'", "filter-lang": "cql2-text"}),
    ("GET", {"filter": '{"op": "=", "args": [{"property": "collection"}, "aerial"]}', "filter-lang": "cql2-json"}),
    ("GET", {"filter": '{"op": "=", "args": [{"property": "collection"}, "aerial"]}'}),
    ("POST", {"filter": {"op": "=", "args": [{"property": "collection"}, "aerial"]}}),
    ("POST", {"filter": {"op": "=", "args": [{"property": "collection"}, "aerial"]}, "filter-lang": "cql2-json"}),
    ("POST", {"filter": "collection = 'aerial'", "filter-lang": "cql2-text"}),
], ids=["get-text-default", "get-text", "get-json", "get-json-unnamed", "post-json-default", "post-json", "post-text"])
def test_cql2_filters_by_get_and_post_page_through_exactly_the_matches(base, method, query):
    ids = _all_ids(base, method, query)
    assert len(ids) == len(set(ids)) and set(ids) == AERIAL
    with_text = _all_ids(base, method, {**query, "q": "ships in a harbour", "mode": "lexical"})
    assert set(with_text) == AERIAL


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_sortby_orders_every_page(base, method):
    query: dict[str, Any] = ({"sortby": "+datetime", "ids": ",".join(sorted(DATED))} if method == "GET" else
                             {"sortby": [{"field": "properties.datetime", "direction": "asc"}], "ids": sorted(DATED)})
    ids = _all_ids(base, method, query)
    expected = sorted(DATED, key=lambda image_id: _record(next(i for i in range(N) if _id(i) == image_id)).datetime)
    assert [_record_datetime(image_id) for image_id in ids] == [_record_datetime(image_id) for image_id in expected]
    assert set(ids) == DATED


def _record_datetime(image_id: str) -> str:
    return str(_record(next(i for i in range(N) if _id(i) == image_id)).datetime)


@pytest.mark.parametrize("method,query,field", [
    ("GET", {"filter": "collection = = 'x'"}, "filter"),
    ("GET", {"filter": "{not json", "filter-lang": "cql2-json"}, "filter"),
    ("GET", {"filter": "collection = 'x'", "filter-lang": "cql3"}, "filter-lang"),
    ("POST", {"filter": {"op": "nope", "args": []}}, "filter"),
    ("POST", {"filter": 5}, "filter"),
    ("GET", {"sortby": "+no_such_field"}, "sortby"),
    ("POST", {"sortby": [{"field": "datetime", "direction": "sideways"}]}, "sortby"),
])
def test_bad_filters_and_sorts_are_400s_naming_the_parameter(base, method, query, field):
    answer = httpx.get(f"{base}/search", params=query) if method == "GET" else httpx.post(f"{base}/search", json=query)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field and set(answer.json()) == {"code", "field", "description"}


def test_a_server_side_failure_never_names_an_internal_address(os_client):
    """OpenSearch's own reasons can name transport addresses (here: a remote cluster whose seed is down,
    "Connection refused: /127.0.0.1:<port>"): the API's 5xx answers and /healthz name none of them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    remote = f"gone{uuid.uuid4().hex[:6]}"
    os_client.cluster.put_settings(body={"transient": {f"cluster.remote.{remote}.seeds": [f"127.0.0.1:{dead_port}"],
                                                        f"cluster.remote.{remote}.skip_unavailable": False}})
    try:
        app = create_app(client=os_client, index=f"{remote}:rsrt-images")
        with serving(app) as url, httpx.Client(base_url=url, timeout=60) as api:
            answers = [api.get("/search"), api.get("/search", params={"q": "ships", "mode": "lexical"}),
                       api.post("/search", json={"q": "ships", "mode": "lexical"}), api.get("/collections"),
                       api.get("/healthz")]
            for answer in answers:
                assert answer.status_code >= 500, answer.text
                assert str(dead_port) not in answer.text and "127.0.0.1" not in answer.text, answer.text
    finally:
        os_client.cluster.put_settings(body={"transient": {f"cluster.remote.{remote}.seeds": None,
                                                            f"cluster.remote.{remote}.skip_unavailable": None}})


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_q_is_one_sentence_commas_and_all(base, method):
    """stac-fastapi's free-text extension splits `q` on commas into keywords; rsrt's `q` is a sentence."""
    sentence = "ships, moored in a harbour, at dawn"
    query = {"q": sentence, "mode": "lexical", "limit": 2}
    answer = httpx.get(f"{base}/search", params=query) if method == "GET" else httpx.post(f"{base}/search", json=query)
    assert answer.status_code == 200, answer.text
    assert answer.json()["rsrt:query"]["q"] == sentence and answer.json()["features"]
