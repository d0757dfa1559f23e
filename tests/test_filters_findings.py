"""Issue #16's filter findings, checked with what stac-api-validator 0.6.8 itself sends (its own lists,
read from its installed source): bbox with intersects, RFC 3339 datetimes, GeometryCollections, and
what a global `intersects` returns on items without a geometry."""

from __future__ import annotations

import ast
import importlib.util
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from shapely.geometry import shape
from stac_api_validator import geometries

from rsrt.search.errors import QueryError
from rsrt.search.filters import Filters, parse_datetime_interval


def _validator_list(name: str) -> list[str]:
    """A list literal from stac-api-validator's validations.py, read without importing it (it pulls in
    the whole stac-check stack for two lists of strings)."""
    spec = importlib.util.find_spec("stac_api_validator")
    assert spec and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations)), "validations.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"stac-api-validator has no {name} list any more")


INVALID_DATETIMES = _validator_list("invalid_datetimes")
VALID_DATETIMES = _validator_list("valid_datetimes")


def test_bbox_with_intersects_is_refused_naming_both():
    """STAC API item search: "bbox and intersects are mutually exclusive" (the validator expects a 400)."""
    with pytest.raises(QueryError) as caught:
        Filters.build(bbox="0,0,1,1", intersects=geometries.polygon)
    assert caught.value.field == "bbox" and "intersects" in caught.value.detail
    assert Filters.build(bbox="0,0,1,1").bbox and Filters.build(intersects=geometries.polygon).intersects


@pytest.mark.parametrize("value", INVALID_DATETIMES)
def test_every_datetime_the_validator_calls_invalid_is_refused(value):
    """Six of these passed before: a bare date, +0100, no offset, '50.Z', '50,Z', '50,52Z'."""
    with pytest.raises(QueryError) as caught:
        Filters.build(datetime=value)
    assert caught.value.field == "datetime" and "\n" not in str(caught.value)


@pytest.mark.parametrize("value", VALID_DATETIMES)
def test_every_datetime_the_validator_calls_valid_is_accepted(value):
    assert Filters.build(datetime=value).datetime == value


@pytest.mark.parametrize("value,start,end", [
    ("1996-12-19T16:39:57-08:00", datetime(1996, 12, 20, 0, 39, 57, tzinfo=UTC), "same"),
    ("1985-04-12t23:20:50.000z", datetime(1985, 4, 12, 23, 20, 50, tzinfo=UTC), "same"),
    ("2020-07-23T00:00:00.012345678Z", datetime(2020, 7, 23, 0, 0, 0, 12345, tzinfo=UTC), "same"),
    ("1990-12-31T23:59:60Z", datetime(1990, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "same"),  # a leap second
    ("/1985-04-12T23:20:50.52Z", None, datetime(1985, 4, 12, 23, 20, 50, 520000, tzinfo=UTC)),
])
def test_rfc3339_instants_mean_what_they_say(value, start, end):
    assert parse_datetime_interval(value) == (start, start if end == "same" else end)


@pytest.mark.parametrize("value,expected", [
    ("2017-01-01/..", "2017-01-01T00:00:00Z/.."),
    ("2017-01-01", "2017-01-01T00:00:00Z/2017-01-01T23:59:59.999999Z"),
    ("../2017-01-31", "../2017-01-31T23:59:59.999999Z"),
    ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z"), ("2020-01-01/2019", "2020-01-01T00:00:00Z/2019"),
])
def test_the_command_line_completes_bare_dates(value, expected):
    """`rsrt search --datetime 2017-01-01/..` keeps working: the CLI completes dates, the API does not."""
    from rsrt.search.filters import complete_dates

    assert complete_dates(value) == expected


@pytest.mark.parametrize("geometry", [geometries.geometry_collection,
                                      {"type": "GeometryCollection", "bbox": [0, 0, 1, 1], "geometries": [
                                          {"type": "Point", "coordinates": [0.5, 0.5], "crs": "x"}]}])
def test_a_geometry_collection_is_accepted_bare(geometry):
    """STAC API item search: all GeoJSON geometry types; only type and members reach the cluster."""
    built = Filters.build(intersects=geometry).intersects
    assert built["type"] == "GeometryCollection" and set(built) == {"type", "geometries"}
    assert all(set(member) == {"type", "coordinates"} for member in built["geometries"])


@pytest.mark.parametrize("geometry,message", [
    ({"type": "GeometryCollection", "geometries": []}, "non-empty"),
    ({"type": "GeometryCollection", "geometries": [{"type": "GeometryCollection", "geometries": [
        {"type": "Point", "coordinates": [0, 0]}]}]}, "inside another"),
    ({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [500, 0]}]}, "WGS84"),
])
def test_a_broken_geometry_collection_is_refused_naming_intersects(geometry, message):
    with pytest.raises(QueryError, match=message) as caught:
        Filters.build(intersects=geometry)
    assert caught.value.field == "intersects"


@pytest.fixture(scope="module")
def indexed(os_client):
    from test_cql2 import build_filter_index

    from rsrt.search.index import delete_index

    name = f"rsrt-findings-{uuid.uuid4().hex[:8]}"
    data = build_filter_index(os_client, name)
    yield name, data
    delete_index(os_client, name)


@pytest.mark.integration
def test_a_geometry_collection_finds_what_any_member_intersects(os_client, indexed):
    from rsrt.search.searcher import Searcher

    name, data = indexed
    collection = {"type": "GeometryCollection", "geometries": [
        {"type": "Point", "coordinates": [-5.5, 41.5]},
        {"type": "LineString", "coordinates": [[-9.5, 38.2], [-7.5, 38.2]]}]}
    found = {h.image_id for h in Searcher(os_client, name).browse(Filters.build(intersects=collection), 100).hits}
    expected = {row["id"] for row in data if row["geometry"] and shape(row["geometry"]).intersects(shape(collection))}
    assert found == expected and len(expected) >= 3


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["browse", "dense", "hybrid"])
def test_a_global_intersects_returns_every_item_with_a_geometry_and_none_without(os_client, indexed, mode):
    """Decided: an item without a geometry has no place, so no spatial filter matches it.

    STAC API item search defines intersects on the item's geometry; stac-api-validator sends the
    geometry it is given (`--geometry`) and then checks `shape(item["geometry"]).intersects(...)` for
    every returned item, which fails on a null geometry. So an index whose items have no geometry
    answers a global polygon with nothing, correctly: the validator must be pointed at a collection
    whose items have footprints (the finding is about the test data, not the filter).
    """
    from rsrt.search.request import SearchRequest
    from rsrt.search.searcher import Searcher

    name, data = indexed
    world = {"type": "Polygon", "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]]}
    searcher, filters = Searcher(os_client, name), Filters.build(intersects=world)
    if mode == "browse":
        hits = searcher.browse(filters, 100).hits
    else:
        hits = searcher.search(SearchRequest("scene", mode, 100, filters=filters, vector=data[0]["vector"])).hits
    assert {h.image_id for h in hits} == {row["id"] for row in data if row["geometry"]}
    assert any(row["geometry"] is None for row in data)
