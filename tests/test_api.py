"""The HTTP API as a portal sees it: a real uvicorn server, real HTTP, a real index on a real node.

30 images with known captions, collections, datetimes and footprints are ingested once per module;
every expectation below is computed from that table, so a filter that over- or under-matches fails.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pystac
import pytest

from conftest import build_index, serve_subprocess, serving
from rsrt.search.api import create_app
from rsrt.search.client import connect
from rsrt.search.config import ConnectionSettings
from rsrt.search.index import delete_index
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

ORIGIN = "https://portal.example.org"
THEMES: dict[str, tuple[str, str, str]] = {
    "harbour": ("Ships are moored at a busy harbour scene.",
                "ships (small) along the dock; cranes (large) east; water (large) north",
                "A gray harbour scene with many ships moored along concrete docks and cranes beside the water."),
    "airport": ("Airplanes are parked beside the runway of an airport scene.",
                "airplanes (medium) center; runway (long) south; terminal (large) west",
                "An airport scene: several white airplanes park near a terminal next to a long gray runway."),
    "forest": ("A dense green forest covers the hills in this scene.",
               "trees (dense) everywhere; hills (large) north",
               "A scene of dense dark green forest with tall trees covering rolling hills, no buildings."),
    "farmland": ("Rectangular farmland fields fill the scene.",
                 "fields (rectangular) grid; crops (green, yellow) mixed; farm road (thin) center",
                 "A farmland scene of rectangular crop fields in green and yellow, split by a thin farm road."),
    "desert": ("Sand dunes stretch across a desert scene.",
               "dunes (large) everywhere; sand (yellow) all over",
               "A desert scene of yellow sand dunes with wavy ridges, with no vegetation at all."),
    "stadium": ("A sports stadium with a running track is in the scene.",
                "stadium (oval) center; track (red) ring; parking lots (gray) south",
                "A scene with an oval sports stadium and a red running track surrounded by parking lots."),
}
THEME_NAMES = list(THEMES)
COLLECTIONS = ["sentinel-2", "aerial", "planet"]
START = datetime(2019, 1, 1, 10, 0, tzinfo=UTC)
N = 30
NO_DATE = f"img-{N - 1:02d}"  # the last image has neither datetime nor footprint


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(N):
        theme = THEME_NAMES[i % len(THEME_NAMES)]
        west, south = 10.0 + (i % 10), 40.0 + (i // 10)
        box = [west, south, west + 0.5, south + 0.5]
        rows.append({
            "id": f"img-{i:02d}", "theme": theme, "collection": COLLECTIONS[(i // 6) % 3],
            "datetime": None if i == N - 1 else _iso(START + timedelta(days=53 * i, hours=i)),
            "bbox": None if i == N - 1 else box,
            "platform": "sentinel-2a" if i % 2 else "sentinel-2b",
            "cloud_cover": float(i * 3),
        })
    return rows


ROWS = _rows()
BY_ID = {row["id"]: row for row in ROWS}
ALL_IDS = {row["id"] for row in ROWS}


def _record(row: dict[str, Any]) -> ImageRecord:
    one, feature, caption = THEMES[row["theme"]]
    number = row["id"].split("-")[1]
    geometry = None
    if row["bbox"]:
        w, s, e, n = row["bbox"]
        geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return ImageRecord(
        image_id=row["id"], source_uri=f"https://data.example.org/{row['id']}.tif", collection=row["collection"],
        datetime=row["datetime"], geometry=geometry, bbox=row["bbox"],
        properties={"platform": row["platform"], "cloud_cover": row["cloud_cover"], "gsd": 10},
        variants=[Variant(one_sentence=one, feature=feature, caption=caption),
                  Variant(caption=f"Image number {number}: {caption.lower()}")],
    )


def _intersects(box: list[float] | None, west: float, south: float, east: float, north: float) -> bool:
    return bool(box) and box[0] <= east and box[2] >= west and box[1] <= north and box[3] >= south


def _expected(**conditions: Any) -> set[str]:
    """The ids the table says match: the oracle every filter test compares against."""
    out = set()
    for row in ROWS:
        if "bbox" in conditions and not _intersects(row["bbox"], *conditions["bbox"]):
            continue
        if "start" in conditions and (row["datetime"] is None or row["datetime"] < conditions["start"]):
            continue
        if "end" in conditions and (row["datetime"] is None or row["datetime"] > conditions["end"]):
            continue
        if "collections" in conditions and row["collection"] not in conditions["collections"]:
            continue
        if "platforms" in conditions and row["platform"] not in conditions["platforms"]:
            continue
        out.add(row["id"])
    return out


# ---------------------------------------------------------------------------------------------------
# fixtures: one index and one server per module
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_index(os_client, tmp_path_factory) -> Iterator[str]:
    name = f"rsrt-api-{uuid.uuid4().hex[:10]}"
    try:
        build_index(os_client, name, [_record(row) for row in ROWS], tmp_path_factory.mktemp("api-ledger"))
        yield name
    finally:
        delete_index(os_client, name)


@pytest.fixture(scope="module")
def api(os_client, api_index) -> Iterator[httpx.Client]:
    app = create_app(client=os_client, index=api_index, cors_origins=[ORIGIN], max_limit=100)
    with serving(app) as base, httpx.Client(base_url=base, timeout=120) as client:
        yield client


def _ids(collection: dict[str, Any]) -> list[str]:
    return [feature["id"] for feature in collection["features"]]


def _search(api: httpx.Client, **params: Any) -> dict[str, Any]:
    response = api.get("/search", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    return response.json()


def _post(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _assert_error(response: httpx.Response, field: str | None, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"code", "field", "description"}, body
    assert body["field"] == field, body
    assert body["code"] and body["description"]
    return body


# ---------------------------------------------------------------------------------------------------
# ranking: every mode
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_every_mode_ranks_the_matching_images_first_as_stac_items(api, mode):
    harbours = {row["id"] for row in ROWS if row["theme"] == "harbour"}
    result = _search(api, q="ships moored in a harbour", mode=mode, limit=5)
    assert result["type"] == "FeatureCollection"
    assert set(_ids(result)) == harbours  # 5 harbour images, all of them on top
    assert result["numberReturned"] == 5 and result["context"] == {
        "returned": 5, "limit": 5, "matched": result["numberMatched"]}
    assert result["numberMatched"] >= 5
    assert result["rsrt:query"]["mode"] == mode
    scores = [f["properties"]["rsrt:score"] for f in result["features"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert [f["properties"]["rsrt:rank"] for f in result["features"]] == [1, 2, 3, 4, 5]
    item = result["features"][0]
    row = BY_ID[item["id"]]
    assert item["type"] == "Feature" and item["stac_version"] == "1.1.0"
    pystac.Item.from_dict(item).validate()  # STAC 1.1's schemas, shipped with pystac (offline)
    assert item["collection"] == row["collection"]
    assert item["bbox"] == row["bbox"] and item["geometry"]["type"] == "Polygon"
    props = item["properties"]
    assert props["datetime"] == row["datetime"]
    assert props["platform"] == row["platform"] and props["cloud_cover"] == row["cloud_cover"]
    assert props["rsrt:summary"] == THEMES["harbour"][0]
    assert props["rsrt:variants"][0] == dict(zip(("one_sentence", "feature", "caption"), THEMES["harbour"],
                                                  strict=True))
    assert props["rsrt:variants"][1]["one_sentence"] == "" and "Image number" in props["rsrt:variants"][1]["caption"]
    if mode != "hybrid":  # server-side hybrid carries no inner hits (see the report)
        assert props["rsrt:matched_variant"]["n"] in (0, 1)
    assert item["assets"]["image"]["href"] == f"https://data.example.org/{item['id']}.tif"
    assert item["assets"]["image"]["type"] == "image/tiff"
    assert any(link["rel"] == "self" and link["href"].endswith(f"/items/{item['id']}") for link in item["links"])
    assert "embedding" not in json.dumps(result)


def test_post_matches_get_and_default_mode_is_hybrid(api):
    get = _search(api, q="airplanes on a runway", limit=5)
    post = _post(api, {"q": "airplanes on a runway", "limit": 5})
    assert get["rsrt:query"]["mode"] == post["rsrt:query"]["mode"] == "hybrid"
    assert _ids(get) == _ids(post)
    assert {BY_ID[i]["theme"] for i in _ids(get)} == {"airport"}
    # the free-text extension's list form (STAC Browser sends one element per term): one text
    terms = _post(api, {"q": ["airplanes", "on a runway"], "limit": 5})
    assert terms["rsrt:query"]["q"] == "airplanes on a runway" and _ids(terms) == _ids(get)


def test_rrf_fusion_and_explain(api):
    rrf = _search(api, q="sand dunes in a desert", mode="hybrid", fusion="rrf", limit=5)
    assert {BY_ID[i]["theme"] for i in _ids(rrf)} == {"desert"}
    assert rrf["rsrt:query"]["fusion"] == "rrf"
    explained = _search(api, q="sand dunes in a desert", mode="hybrid", explain="true", limit=3)
    explanation = explained["features"][0]["properties"]["rsrt:explanation"]
    assert set(explanation) >= {"lexical", "dense", "fusion"}
    assert explanation["dense"]["raw"] is not None
    plain = _search(api, q="sand dunes in a desert", mode="lexical", limit=3)
    assert "rsrt:explanation" not in plain["features"][0]["properties"]


# ---------------------------------------------------------------------------------------------------
# filters: browse, ranked, GET and POST, each compared with the table
# ---------------------------------------------------------------------------------------------------

BOX = (10.9, 39.9, 13.1, 40.6)  # row 0, columns 1..3
POLYGON = {"type": "Polygon", "coordinates": [[[14.2, 40.2], [16.2, 40.2], [16.2, 41.2], [14.2, 41.2], [14.2, 40.2]]]}
FILTER_CASES: list[tuple[str, dict[str, Any], dict[str, Any], set[str]]] = [
    ("bbox", {"bbox": ",".join(map(str, BOX))}, {"bbox": list(BOX)}, _expected(bbox=BOX)),
    ("intersects", {"intersects": json.dumps(POLYGON)}, {"intersects": POLYGON},
     _expected(bbox=(14.2, 40.2, 16.2, 41.2))),
    ("point", {"intersects": json.dumps({"type": "Point", "coordinates": [17.25, 41.25]})},
     {"intersects": {"type": "Point", "coordinates": [17.25, 41.25]}}, {"img-17"}),
    ("closed interval", {"datetime": "2020-01-01T00:00:00Z/2020-12-31T23:59:59Z"},
     {"datetime": "2020-01-01T00:00:00Z/2020-12-31T23:59:59Z"},
     _expected(start="2020-01-01T00:00:00Z", end="2020-12-31T23:59:59Z")),
    ("open start", {"datetime": "../2019-12-31T23:59:59Z"}, {"datetime": "/2019-12-31T23:59:59Z"},
     _expected(end="2019-12-31T23:59:59Z")),
    ("open end", {"datetime": "2022-01-01T00:00:00Z/.."}, {"datetime": "2022-01-01T00:00:00Z/"},
     _expected(start="2022-01-01T00:00:00Z")),
    ("instant", {"datetime": ROWS[7]["datetime"]}, {"datetime": ROWS[7]["datetime"]}, {"img-07"}),
    ("collections", {"collections": "aerial,planet"}, {"collections": ["aerial", "planet"]},
     _expected(collections={"aerial", "planet"})),
    ("property", {"properties": json.dumps({"platform": "sentinel-2a"})}, {"properties": {"platform": "sentinel-2a"}},
     _expected(platforms={"sentinel-2a"})),
    # a list is "any of": landsat-8 matches nothing here, so a server ignoring lists would return all 30
    ("property list", {"properties": json.dumps({"platform": ["sentinel-2a", "landsat-8"], "gsd": 10})},
     {"properties": {"platform": ["sentinel-2a", "landsat-8"], "gsd": 10}},
     _expected(platforms={"sentinel-2a"})),
    ("ids", {"ids": "img-03,img-04,nope"}, {"ids": ["img-03", "img-04", "nope"]}, {"img-03", "img-04"}),
    ("combined", {"bbox": "9,39,30,42", "datetime": "2019-06-01T00:00:00Z/2022-06-01T00:00:00Z",
                  "collections": "sentinel-2"},
     {"bbox": [9, 39, 30, 42], "datetime": "2019-06-01T00:00:00Z/2022-06-01T00:00:00Z", "collections": ["sentinel-2"]},
     _expected(bbox=(9, 39, 30, 42), start="2019-06-01T00:00:00Z", end="2022-06-01T00:00:00Z",
               collections={"sentinel-2"})),
]


def test_geo_filtered_hybrid_gets_its_dense_half(api):
    """With a bbox, every hybrid hit still carries a dense contribution, not the lexical one alone.

    (k-NN 2.19 drops parent-level geo_shape clauses inside a nested kNN filter: this is the guard.)
    """
    got = _search(api, q="ships moored in a harbour", mode="hybrid", explain="true", bbox="9,39,30,42", limit=10)
    assert got["features"]
    assert all(f["properties"]["rsrt:explanation"]["dense"]["raw"] is not None for f in got["features"])


def test_the_oracle_is_not_trivial():
    """Each filter case selects a proper, non-empty subset (else the filter tests would prove nothing)."""
    for name, _, _, expected in FILTER_CASES:
        assert 0 < len(expected) < N, name


@pytest.mark.parametrize("name,get_params,post_body,expected", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
@pytest.mark.parametrize("query", [None, "lexical", "dense", "hybrid"])
def test_filters_return_exactly_the_matching_images(api, name, get_params, post_body, expected, query):
    text = {} if query is None else {"q": "a scene", "mode": query}
    got = _search(api, **get_params, **text, limit=100)
    assert set(_ids(got)) == expected
    assert got["numberMatched"] == len(expected) == got["numberReturned"]
    posted = _post(api, {**post_body, **text, "limit": 100})
    assert _ids(posted) == _ids(got)


def test_browse_without_q_is_sorted_by_datetime_desc_then_id(api):
    got = _search(api, limit=100)
    ids = _ids(got)
    dated = sorted((row for row in ROWS if row["datetime"]), key=lambda r: r["datetime"], reverse=True)
    assert ids == [row["id"] for row in dated] + [NO_DATE]
    assert got["numberMatched"] == N and got["rsrt:query"]["mode"] is None
    undated = got["features"][-1]
    assert undated["geometry"] is None and "bbox" not in undated and undated["properties"]["datetime"] is None
    assert "rsrt:score" not in undated["properties"] and undated["properties"]["rsrt:rank"] == N
    # a blank q is a browse too (portals send q= with an empty box)
    assert _ids(_search(api, q="   ", limit=100)) == ids


# ---------------------------------------------------------------------------------------------------
# paging
# ---------------------------------------------------------------------------------------------------


def _page_all(api: httpx.Client, method: str, params: dict[str, Any]) -> tuple[list[str], int]:
    collected: list[str] = []
    pages = 0
    response = api.get("/search", params=params) if method == "GET" else api.post("/search", json=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert body["numberReturned"] == len(body["features"]) <= params["limit"]
        collected += _ids(body)
        nexts = [link for link in body["links"] if link["rel"] == "next"]
        if not nexts:
            assert len(collected) == body["numberMatched"]
            return collected, pages
        assert pages < 50
        link = nexts[0]
        assert link["method"] == method
        if method == "GET":
            assert "token=" in link["href"]
            response = api.get(link["href"])
        else:
            assert link["body"]["token"] and all(link["body"][key] == value for key, value in params.items())
            response = api.post(link["href"], json=link["body"])


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("query", [None, "lexical", "dense", "hybrid"])
def test_paging_with_tokens_has_no_duplicates_no_gaps_and_a_stable_order(api, method, query):
    params: dict[str, Any] = {"limit": 7}
    if query:
        params |= {"q": "a scene with buildings", "mode": query}
    paged, pages = _page_all(api, method, params)
    whole = _ids(_search(api, **{**params, "limit": 100}))
    assert len(paged) == len(set(paged))  # no duplicates
    assert paged == whole  # no gaps, same order as one big page
    assert set(paged) == ALL_IDS and pages == 5  # every image matches "scene"; 30 / 7 → 5 pages


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_later_pages_link_back_to_the_previous_and_the_first_page(api, method):
    params: dict[str, Any] = {"limit": 4, "q": "a scene with buildings", "mode": "hybrid"}

    def follow(link: dict[str, Any]) -> dict[str, Any]:
        assert link["method"] == method
        response = api.get(link["href"]) if method == "GET" else api.post(link["href"], json=link["body"])
        assert response.status_code == 200, response.text
        return response.json()

    def rel(body: dict[str, Any], name: str) -> dict[str, Any] | None:
        return next((link for link in body["links"] if link["rel"] == name), None)

    first = api.get("/search", params=params).json() if method == "GET" else _post(api, params)
    assert rel(first, "prev") is None and rel(first, "first") is None
    second = follow(rel(first, "next"))
    third = follow(rel(second, "next"))
    assert _ids(follow(rel(third, "prev"))) == _ids(second)
    assert _ids(follow(rel(third, "first"))) == _ids(first) == _ids(follow(rel(second, "prev")))


def test_paging_keeps_the_filters(api):
    paged, _ = _page_all(api, "GET", {"limit": 4, "collections": "aerial", "q": "scene", "mode": "lexical"})
    assert set(paged) == _expected(collections={"aerial"}) and len(paged) == len(set(paged))


def _token(result: dict[str, Any]) -> str:
    link = next(link for link in result["links"] if link["rel"] == "next")
    return httpx.URL(link["href"]).params["token"]


def test_tokens_cannot_be_tampered_with_or_replayed_against_another_query(api):
    first = _search(api, q="forest", mode="lexical", limit=3)
    token = _token(first)
    assert _search(api, q="forest", mode="lexical", limit=3, token=token)["features"]
    # a GET token is bound to the query, not the verb: the same query by POST accepts it
    assert _post(api, {"q": "forest", "mode": "lexical", "limit": 3, "token": token})["features"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    _, digest, mac = raw.split(":")
    forged = base64.urlsafe_b64encode(f"0:{digest}:{mac}".encode()).decode().rstrip("=")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (forged, flipped, token + "x", "not-a-token", "", "%%%", "é" * 10, "A" * 5000):
        params = {"q": "forest", "mode": "lexical", "limit": 3, "token": bad}
        response = api.get("/search", params=params)
        if bad == "":
            assert response.status_code == 200  # an empty token is no token
            continue
        _assert_error(response, "token")
    replayed = api.get("/search", params={"q": "desert", "mode": "lexical", "limit": 3, "token": token})
    assert "another query" in _assert_error(replayed, "token")["description"]
    other_filter = api.get("/search", params={"q": "forest", "mode": "lexical", "collections": "aerial",
                                              "token": token})
    _assert_error(other_filter, "token")


# ---------------------------------------------------------------------------------------------------
# items, health, OpenAPI, CORS
# ---------------------------------------------------------------------------------------------------


def test_items_by_id_and_404(api):
    response = api.get("/items/img-05")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/geo+json")
    item = response.json()
    assert item["id"] == "img-05" and item["collection"] == BY_ID["img-05"]["collection"]
    assert len(item["properties"]["rsrt:variants"]) == 2 and "rsrt:score" not in item["properties"]
    assert item["links"][0]["href"].endswith("/items/img-05")
    for missing in ("no-such-image", "a%20b", "..%2F..%2Fetc", "x" * 600, "%F0%9F%9A%A2"):
        body = _assert_error(api.get(f"/items/{missing}"), "id", 404)
        assert body["code"] == "NotFound"


def test_healthz_ok(api):
    response = api.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok" and response.json()["documents"] == N


def test_missing_index_and_unreachable_cluster_are_503_with_a_reason(os_client, opensearch_url):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead_port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    dead = connect(ConnectionSettings.resolve(url=f"http://127.0.0.1:{dead_port}"), max_retries=0)
    cases = [(create_app(client=os_client, index=f"rsrt-missing-{uuid.uuid4().hex[:8]}"), "does not exist"),
             (create_app(client=dead, index="rsrt-images"), "unreachable")]
    for app, reason in cases:
        with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
            health = client.get("/healthz")
            assert health.status_code == 503 and reason in health.json()["reason"]
            for response in (client.get("/search", params={"q": "ships"}), client.get("/search"),
                             client.post("/search", json={"q": "ships", "mode": "lexical"}),
                             client.get("/items/img-01")):
                body = _assert_error(response, None, 503)
                assert body["code"] == "ServiceUnavailable"
            # user errors are still 400 whatever the cluster's state: they are checked first
            _assert_error(client.get("/search", params={"bbox": "1,2,3"}), "bbox")


def test_openapi_and_docs(api):
    spec = api.get("/openapi.json").json()
    assert {"get", "post"} <= set(spec["paths"]["/search"])
    assert "/items/{item_id}" in spec["paths"] and "/healthz" in spec["paths"]
    params = {p["name"]: p for p in spec["paths"]["/search"]["get"]["parameters"]}
    assert {"q", "mode", "bbox", "intersects", "datetime", "collections", "limit", "token", "fusion"} <= set(params)
    # a limit above the maximum is clamped (STAC API), so the schema states no maximum
    assert "maximum" not in params["limit"]["schema"] and params["limit"]["schema"]["minimum"] == 1
    body = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert "maximum" not in body["limit"] and {"q", "intersects", "properties", "token", "filter", "sortby",
                                               "fields"} <= set(body)
    assert "400" in spec["paths"]["/search"]["post"]["responses"]
    assert "422" not in spec["paths"]["/search"]["get"]["responses"]  # bad input is a 400 here
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    landing = api.get("/").json()
    assert {link["rel"] for link in landing["links"]} >= {"search", "service-desc", "service-doc"}


def test_cors_preflight_and_simple_requests(api, os_client, api_index):
    preflight = api.options("/search", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    simple = api.get("/search", params={"limit": 1}, headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    stranger = api.options("/search", headers={"Origin": "https://evil.example",
                                               "Access-Control-Request-Method": "POST"})
    assert stranger.status_code < 500 and "access-control-allow-origin" not in stranger.headers
    with serving(create_app(client=os_client, index=api_index)) as base:  # default: no CORS at all
        response = httpx.get(f"{base}/search", params={"limit": 1}, headers={"Origin": ORIGIN})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


# ---------------------------------------------------------------------------------------------------
# hostile input: never a 5xx, errors name the field
# ---------------------------------------------------------------------------------------------------

OK = None  # marks inputs that must simply work
HOSTILE_GET: list[tuple[str, dict[str, Any], str | None]] = [
    ("unbalanced quote", {"q": '"ships moored'}, OK),
    ("boolean operators", {"q": "ships AND OR NOT harbour"}, OK),
    ("wildcard", {"q": "*"}, OK),
    ("fuzzy", {"q": "harbr~2 ship~"}, OK),
    ("brackets", {"q": "[1 TO 5] {x} (y OR z"}, OK),
    ("backslashes", {"q": "\\\\ back\\slash \\"}, OK),
    ("lucene field syntax", {"q": "variants.caption:ships^100 _exists_:geometry"}, OK),
    ("json injection", {"q": '{"query": {"match_all": {}}}'}, OK),
    ("sql injection", {"q": "'; DROP TABLE images; --"}, OK),
    ("html", {"q": "<script>alert(1)</script>"}, OK),
    ("10000 characters", {"q": "ship " * 2000}, OK),
    ("one 10000-character word", {"q": "a" * 10_000}, OK),
    ("rtl arabic", {"q": "سفن راسية في الميناء"}, OK),
    ("rtl override", {"q": "\u202eruobrah\u202c ships"}, OK),
    ("emoji", {"q": "🚢⚓🛳️ harbour 👩‍👩‍👧"}, OK),
    ("combining marks", {"q": "s\u0301h\u0327i\u0308p"}, OK),
    ("control characters", {"q": "\x00\x01\x07\x1bships"}, OK),
    ("only control characters", {"q": "\x00\x01\x02"}, "q"),
    ("limit=0", {"limit": "0"}, "limit"),
    ("limit=-1", {"limit": "-1"}, "limit"),
    ("limit=100000", {"limit": "100000"}, OK),  # clamped to the maximum (STAC API), not refused
    ("limit=101", {"limit": "101"}, OK),
    ("limit=abc", {"limit": "abc"}, "limit"),
    ("limit=1.5", {"limit": "1.5"}, "limit"),
    ("bbox 3 numbers", {"bbox": "1,2,3"}, "bbox"),
    ("bbox out of range", {"bbox": "200,0,0,0"}, "bbox"),
    ("bbox words", {"bbox": "a,b,c,d"}, "bbox"),
    ("bbox south>north", {"bbox": "0,10,1,5"}, "bbox"),
    ("bbox nan", {"bbox": "nan,0,1,1"}, "bbox"),
    ("bbox inf", {"bbox": "-inf,0,inf,1"}, "bbox"),
    ("datetime yesterday", {"datetime": "yesterday"}, "datetime"),
    ("datetime reversed", {"datetime": "2020-01-01/2019-01-01"}, "datetime"),
    ("datetime both open", {"datetime": "../.."}, "datetime"),
    ("datetime month 13", {"datetime": "2020-13-45T00:00:00Z"}, "datetime"),
    ("datetime two slashes", {"datetime": "2020/2021/2022"}, "datetime"),
    ("intersects not json", {"intersects": "{not json"}, "intersects"),
    ("intersects not geojson", {"intersects": '{"type": "Circle", "radius": 5}'}, "intersects"),
    ("intersects open ring", {"intersects": '{"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}'}, "intersects"),
    ("intersects bow tie", {"intersects": json.dumps(
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]})}, "intersects"),
    ("intersects strings", {"intersects": '{"type": "Point", "coordinates": ["x", "y"]}'}, "intersects"),
    ("intersects off the globe", {"intersects": '{"type": "Point", "coordinates": [500, 500]}'}, "intersects"),
    ("intersects nested deeply", {"intersects": "[" * 3000 + "]" * 3000}, "intersects"),
    ("mode=foo", {"q": "ships", "mode": "foo"}, "mode"),
    ("mode without q", {"mode": "foo"}, "mode"),
    ("fusion=bar", {"q": "ships", "fusion": "bar"}, "fusion"),
    ("explain=maybe", {"q": "ships", "explain": "maybe"}, "explain"),
    ("bad token", {"q": "ships", "token": "garbage!!"}, "token"),
    ("base64 token", {"q": "ships", "token": base64.b64encode(b"9999:x:y").decode()}, "token"),
    ("odd collections", {"collections": "a'b,\"c\",*,\\"}, OK),
    ("properties not json", {"properties": "{platform"}, "properties"),
    ("properties not an object", {"properties": "[1, 2]"}, "properties"),
    ("property name injection", {"properties": '{"a b) OR (x": "y"}'}, "properties"),
    ("property nested value", {"properties": '{"platform": {"$ne": 1}}'}, "properties"),
    ("property type clash", {"properties": '{"cloud_cover": "lots"}'}, "properties"),
    ("property type clash ranked", {"q": "ships", "mode": "lexical", "properties": '{"cloud_cover": "lots"}'},
     "properties"),
]


@pytest.mark.parametrize("case,params,field", HOSTILE_GET, ids=[c[0] for c in HOSTILE_GET])
def test_hostile_get_input_never_gives_a_5xx(api, case, params, field):
    response = api.get("/search", params=params)
    assert response.status_code < 500, (case, response.status_code, response.text)
    if field is OK:
        assert response.status_code == 200, response.text
        assert response.json()["type"] == "FeatureCollection"
    else:
        _assert_error(response, field)


HOSTILE_POST: list[tuple[str, Any, str | None]] = [
    ("not json", b'{"q": ', "body"),
    ("json array", b"[1, 2]", "body"),
    ("json string", b'"ships"', "body"),
    ("nested too deeply", b'{"q": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body"),
    ("lone surrogate", b'{"q": "\\ud800 ships \\udfff"}', OK),
    ("q a number", {"q": 5}, "q"),
    ("q a list of terms", {"q": ["ships", "harbour"]}, OK),  # the free-text extension's form (STAC Browser)
    ("q a list of numbers", {"q": [5, 6]}, "q"),
    ("q a list too long", {"q": ["ship"] * 1001}, "q"),
    ("unknown field", {"q": "ships", "sortby": "-datetime"}, "sortby"),
    ("bbox with a word", {"bbox": [1, 2, "x", 4]}, "bbox"),
    ("bbox 5 numbers", {"bbox": [1, 2, 3, 4, 5]}, "bbox"),
    ("bbox NaN", b'{"bbox": [NaN, 0, 1, 1]}', "bbox"),
    ("intersects a string", {"intersects": "POLYGON((0 0, 1 1))"}, "intersects"),
    ("intersects bad coordinates", {"intersects": {"type": "Polygon", "coordinates": "oops"}}, "intersects"),
    ("intersects as a feature", {"intersects": {"type": "Feature", "properties": {}, "geometry": POLYGON}}, OK),
    ("intersects with junk keys", {"intersects": {**POLYGON, "crs": {"x": 1}, "script": "boom"}}, OK),
    ("datetime a number", {"datetime": 2020}, "datetime"),
    ("collections a string", {"collections": "aerial"}, OK),  # one id (stac-api-validator sends this)
    ("collections a list in a string", {"collections": "aerial,planet"}, OK),  # one (unknown) id: not split
    ("collections numbers", {"collections": [1, 2]}, "collections"),
    ("limit a word", {"limit": "many"}, "limit"),
    ("limit too big", {"limit": 100_000}, OK),  # clamped
    ("limit zero", {"limit": 0}, "limit"),
    ("mode wrong", {"q": "ships", "mode": "semantic"}, "mode"),
    ("explain a word", {"explain": "perhaps"}, "explain"),
    ("token a number", {"q": "ships", "token": 12}, "token"),
    ("properties nested", {"properties": {"platform": {"nested": 1}}}, "properties"),
    ("properties empty list", {"properties": {"platform": []}}, "properties"),
    ("huge q", {"q": "ship\u202e🚢 " * 3000, "mode": "hybrid"}, OK),
]


@pytest.mark.parametrize("case,body,field", HOSTILE_POST, ids=[c[0] for c in HOSTILE_POST])
def test_hostile_post_input_never_gives_a_5xx(api, case, body, field):
    if isinstance(body, bytes):
        response = api.post("/search", content=body, headers={"content-type": "application/json"})
    else:
        response = api.post("/search", json=body)
    assert response.status_code < 500, (case, response.status_code, response.text)
    if field is OK:
        assert response.status_code == 200, response.text
    else:
        _assert_error(response, field)


def test_unknown_routes_and_methods_answer_json(api):
    _assert_error(api.get("/nope"), None, 404)
    _assert_error(api.put("/search", json={}), None, 405)


# ---------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_command() -> list[str]:
    return [str(Path(sys.executable).parent / "rsrt"), "serve"]


def test_serve_command_runs_the_api(cli_env, api_index, tmp_path):
    env = {**cli_env, "RSRT_API_TOKEN_SECRET": "test-secret"}
    args = ["--index", api_index, "--cors-origin", ORIGIN, "--max-limit", "20"]
    with serve_subprocess(args, env, tmp_path / "serve.log") as base:
        found = httpx.get(f"{base}/search", params={"q": "sports stadium", "mode": "dense", "limit": 3}, timeout=60)
        assert found.status_code == 200, found.text
        assert {BY_ID[i]["theme"] for i in _ids(found.json())} == {"stadium"}
        clamped = httpx.get(f"{base}/search", params={"limit": 21}, timeout=30)  # above --max-limit: the maximum
        assert clamped.status_code == 200 and clamped.json()["numberReturned"] == 20, clamped.text
        preflight = httpx.options(f"{base}/search", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert preflight.headers.get("access-control-allow-origin") == ORIGIN


def test_serve_command_refuses_a_bad_origin(cli_env):
    done = subprocess.run([*_serve_command(), "--cors-origin", "portal.example.org/path", "--port",
                           str(_free_port())], env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--cors-origin" in done.stderr
