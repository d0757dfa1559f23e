"""`sortby`: parsing, browsing sorted in the cluster, and text searches sorted within their candidates,
each order checked against a Python oracle over the indexed rows (absent values last, ties by id)."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any

import pytest
from test_cql2 import build_filter_index

from rsrt.search.errors import QueryError
from rsrt.search.filters import Filters
from rsrt.search.index import delete_index
from rsrt.search.request import SearchRequest
from rsrt.search.searcher import Searcher
from rsrt.search.sorting import SortKey, parse_sortby, sort_clauses

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def indexed(os_client):
    name = f"rsrt-sort-{uuid.uuid4().hex[:8]}"
    data = build_filter_index(os_client, name)
    yield name, data
    delete_index(os_client, name)


def _field(row: dict[str, Any], name: str) -> Any:
    value = row[name] if name in ("id", "collection", "datetime") else row["properties"].get(name)
    if isinstance(value, str) and value[:4].isdigit() and "T" in value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def oracle_order(rows: list[dict[str, Any]], keys: tuple[SortKey, ...]) -> list[str]:
    """Rows in key order, absent values last whichever the direction, then by id."""
    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for key in keys:
            x, y = _field(a, key.field), _field(b, key.field)
            if x == y:
                continue
            if x is None or y is None:
                return 1 if x is None else -1
            return (1 if x > y else -1) * (-1 if key.descending else 1)
        return (a["id"] > b["id"]) - (a["id"] < b["id"])
    return [row["id"] for row in sorted(rows, key=functools.cmp_to_key(compare))]


@pytest.mark.parametrize("value,expected", [
    ("+datetime,-id", (SortKey("datetime"), SortKey("id", True))),
    (" datetime,-properties.cloud_cover", (SortKey("datetime"), SortKey("cloud_cover", True))),  # '+' decoded to ' '
    ([{"field": "properties.eo:cloud_cover", "direction": "desc"}, {"field": "collection"}],
     (SortKey("eo:cloud_cover", True), SortKey("collection"))),
    ("", ()), (None, ()), ([], ()),
])
def test_sortby_get_and_post_forms(value, expected):
    assert parse_sortby(value) == expected
    assert [key.as_stac() for key in expected] == [
        {"field": k.field if k.field in ("id", "collection", "datetime") else f"properties.{k.field}",
         "direction": "desc" if k.descending else "asc"} for k in expected]


@pytest.mark.parametrize("value,message", [
    ("geometry", "cannot be sorted by"), ("datetime,,id", "empty field"), ("id,-id", "more than once"),
    ([{"field": "id", "direction": "up"}], "not asc or desc"), ([{"direction": "asc"}], "field"),
    ("cloud cover", "may hold letters"), (42, "give fields"), (",".join(f"p{i}" for i in range(9)), "at most 8"),
])
def test_bad_sortby_is_a_query_error_naming_sortby(value, message):
    with pytest.raises(QueryError, match=message) as caught:
        parse_sortby(value)
    assert caught.value.field == "sortby"


def test_an_unknown_or_unsortable_property_is_refused_naming_sortby():
    with pytest.raises(QueryError, match="'nope' is not in this index") as caught:
        sort_clauses(parse_sortby("nope"), {})
    assert caught.value.field == "sortby"
    with pytest.raises(QueryError, match="holds text values, which cannot be sorted by"):
        sort_clauses(parse_sortby("title"), {"title": "text"})


SORTS = ["-datetime", "cloud_cover", "-cloud_cover", "platform,-datetime", "collection,-cloud_cover,id",
         "-flag,datetime", "-taken", "-id"]


@pytest.mark.parametrize("sortby", SORTS)
def test_browse_sorts_every_match_in_the_oracles_order_and_pages_are_stable(os_client, indexed, sortby):
    name, data = indexed
    keys = parse_sortby(sortby)
    searcher = Searcher(os_client, name)
    pages = [searcher.browse(Filters(), 7, offset, sort=keys) for offset in range(0, len(data), 7)]
    ids = [hit.image_id for page in pages for hit in page.hits]
    assert ids == oracle_order(data, keys), sortby


def test_browse_sorts_a_filtered_set(os_client, indexed):
    name, data = indexed
    keys = parse_sortby("-cloud_cover")
    page = Searcher(os_client, name).browse(Filters.build(collections="aerial"), 100, sort=keys)
    assert [h.image_id for h in page.hits] == oracle_order([r for r in data if r["collection"] == "aerial"], keys)


def test_an_unknown_property_in_a_browse_sort_is_refused(os_client, indexed):
    with pytest.raises(QueryError, match="'nope' is not in this index") as caught:
        Searcher(os_client, indexed[0]).browse(Filters(), 10, sort=parse_sortby("-nope"))
    assert caught.value.field == "sortby"


@pytest.mark.parametrize("mode,site", [("dense", "auto"), ("lexical", "auto"), ("hybrid", "client"),
                                       ("hybrid", "server")])
@pytest.mark.parametrize("sortby", ["cloud_cover", "-datetime,id", "platform,-cloud_cover"])
def test_a_text_search_sorts_its_ranked_candidates(os_client, indexed, mode, site, sortby):
    """The first `candidates` ranked images, in sort order, paged within that window."""
    name, data = indexed
    searcher = Searcher(os_client, name)
    vector = data[3]["vector"]
    ranked = searcher.search(SearchRequest("scene", mode, 20, vector=vector, fusion_site=site, candidates=20))
    window = {hit.image_id for hit in ranked.hits}
    assert len(window) == 20
    keys = parse_sortby(sortby)
    expected = oracle_order([row for row in data if row["id"] in window], keys)
    pages = [searcher.search(SearchRequest("scene", mode, 6, offset, vector=vector, fusion_site=site, candidates=20,
                                           sort=keys)) for offset in (0, 6, 12, 18)]
    assert [hit.image_id for page in pages for hit in page.hits] == expected
    assert [hit.rank for page in pages for hit in page.hits] == list(range(1, 21))
    assert all(page.total == 20 for page in pages)


def test_a_sorted_text_search_refuses_a_window_it_cannot_hold(os_client, indexed):
    searcher = Searcher(os_client, indexed[0])
    with pytest.raises(QueryError, match="first 1000 candidates") as caught:
        searcher.search(SearchRequest("scene", "lexical", 10, candidates=5000, sort=parse_sortby("id")))
    assert caught.value.field == "sortby"
    with pytest.raises(QueryError, match="'nope' is not in this index"):
        searcher.search(SearchRequest("scene", "lexical", 10, sort=parse_sortby("nope")))
