"""rsrt's backend for stac-fastapi: the core client (landing page, collections, items, search) and the
filter extension's queryables, over one `Searcher` (every read goes through it).

stac-fastapi owns the routes and the request models; these methods parse with `params`, read through
the `Searcher` and serialise with `items`. They answer `Response`s themselves (rsrt's GeoJSON response,
rsrt's error shape for absent resources) rather than stac-fastapi's TypedDicts: items carry rsrt's
properties, which stac-fastapi's response models would drop.
"""

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import attr
from fastapi import Request
from fastapi.responses import JSONResponse
from stac_fastapi.types.core import BaseCoreClient
from stac_fastapi.types.requests import get_base_url

from .. import request as search_request
from ..cql2 import queryables
from ..searcher import Searcher, SearchHit
from .errors import error_response
from .items import GEOJSON, GeoJSONResponse, select_fields, to_collection, to_item
from .params import (
    ParsedSearch,
    SearchParams,
    SearchPolicy,
    _clean_json,
    _json_param,
    _text,
    parse_search,
)
from .tokens import TokenCodec

QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"  # the Filter extension's relation type


class Service:
    """The searcher (built once, lazily: building may connect) and what the routes share."""

    def __init__(self, factory: Callable[[], Searcher], policy: SearchPolicy, codec: TokenCodec) -> None:
        self._factory = factory
        self._searcher: Searcher | None = None
        self._lock = threading.Lock()
        self.policy = policy
        self.codec = codec

    @property
    def searcher(self) -> Searcher:
        with self._lock:
            if self._searcher is None:
                self._searcher = self._factory()
            return self._searcher

    def parse(self, params: SearchParams) -> ParsedSearch:
        return parse_search(params, self.policy, self.codec.decode)

    def run(self, parsed: ParsedSearch) -> tuple[list[SearchHit], int, dict[str, Any]]:
        """(hits of one page, pageable total, extra facts) for one search."""
        window = self.policy.window_for(parsed.mode)
        size = min(parsed.limit, window - parsed.offset)
        searcher = self.searcher
        sort = {"sort": parsed.sort} if parsed.sort else {}  # only when asked: the Searcher's default order
        if parsed.mode is None or parsed.text is None:
            page = searcher.browse(parsed.filters, size, parsed.offset, **sort)
            return page.hits, min(page.total, window), {"took_ms": page.took_ms}
        request = search_request.SearchRequest(parsed.text, parsed.mode, size, parsed.offset, parsed.filters,
                                               parsed.fusion, candidates=window, explain=parsed.explain,
                                               fusion_site=self.policy.fusion_site, embed=self.policy.embed, **sort)
        results = searcher.search(request)
        extra = {"took_ms": results.took_ms, "hybrid_backend": results.fusion_site}
        return results.hits, min(results.total, window), extra


class Links:
    """Every URL an answer links to, under the API root (the request's base URL: the public one once
    the hardening middleware has set it, never a raw Host header of its own)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.root = get_base_url(request)

    def collection(self, collection_id: str) -> str:
        return f"{self.root}collections/{quote(collection_id, safe='')}"

    def items(self, collection_id: str) -> str:
        return f"{self.collection(collection_id)}/items"

    def item(self, item_id: str, collection_id: str | None) -> str:
        """An item's canonical URL: under its collection (OGC API Features), else rsrt's /items."""
        if collection_id:
            return f"{self.items(collection_id)}/{quote(item_id, safe='')}"
        return f"{self.root}items/{quote(item_id, safe='')}"


def _collection_of(hit: SearchHit) -> str | None:
    value = hit.source.get("collection")
    return str(value) if value else None


@attr.s
class RsrtCoreClient(BaseCoreClient):
    """The STAC API core over an rsrt index."""

    service: Service = attr.ib(kw_only=True)

    # discovery ---------------------------------------------------------------------------------------
    def landing_page(self, **kwargs: Any) -> dict[str, Any]:
        page = dict(super().landing_page(**kwargs))
        request: Request = kwargs["request"]
        links = [link for link in page["links"] if link.get("rel") not in ("queryables", QUERYABLES_REL)]
        links.append({"rel": QUERYABLES_REL, "type": "application/schema+json", "title": "Queryables",
                      "href": f"{get_base_url(request)}queryables"})
        page["links"] = links
        page["stac_extensions"] = []
        return page

    # collections -------------------------------------------------------------------------------------
    def _bucket(self, collection_id: str) -> dict[str, Any] | None:
        buckets = self.service.searcher.collections(_text(collection_id, "collectionId"))
        return buckets[0] if buckets else None

    def _collection(self, bucket: dict[str, Any], links: Links) -> dict[str, Any]:
        collection_id = str(bucket["key"])
        return to_collection(bucket, links.collection(collection_id), links.root, links.items(collection_id))

    def all_collections(self, **kwargs: Any) -> JSONResponse:
        """Every collection in the index, with its spatial and temporal extent (for portals' pickers)."""
        links = Links(kwargs["request"])
        found = [self._collection(bucket, links) for bucket in self.service.searcher.collections()]
        return JSONResponse({"collections": found, "links": [
            {"rel": "self", "href": f"{links.root}collections", "type": "application/json"},
            {"rel": "root", "href": links.root, "type": "application/json"},
            {"rel": "parent", "href": links.root, "type": "application/json"}],
            "numberMatched": len(found), "numberReturned": len(found)})

    def get_collection(self, collection_id: str, **kwargs: Any) -> JSONResponse:
        bucket = self._bucket(collection_id)
        if bucket is None:
            return _no_collection(collection_id)
        return JSONResponse(self._collection(bucket, Links(kwargs["request"])))

    # items -------------------------------------------------------------------------------------------
    def get_item(self, item_id: str, collection_id: str | None = None, **kwargs: Any) -> JSONResponse:
        """One item (in `collection_id` when given: another collection's item is a 404)."""
        collection = _text(collection_id, "collectionId") if collection_id is not None else None
        hit = self.service.searcher.get_item(_text(item_id, "id"), collection)
        if hit is None:
            where = f" in collection {collection_id!r}" if collection_id is not None else ""
            return error_response(404, "NotFound", f"no item with id {item_id!r}{where}", "id")
        links = Links(kwargs["request"])
        item = to_item(hit.source, hit.image_id, links.item(hit.image_id, _collection_of(hit)), links.root,
                       collection_href=links.collection)
        return GeoJSONResponse(item)

    def item_collection(self, collection_id: str, **kwargs: Any) -> JSONResponse:
        """OGC API Features items of one collection, with rsrt's `q`, filter and sort as in /search."""
        request: Request = kwargs.pop("request")
        params = _get_params(kwargs, collections=[collection_id])
        parsed = self.service.parse(params)  # user errors first, whatever the cluster's state
        if self._bucket(collection_id) is None:
            return _no_collection(collection_id)
        links = Links(request)
        collection_link = links.collection(collection_id)
        return self._answer(request, parsed, _get_page_link(request), [
            {"rel": "collection", "href": collection_link, "type": "application/json"},
            {"rel": "parent", "href": collection_link, "type": "application/json"}])

    # search ------------------------------------------------------------------------------------------
    def get_search(self, **kwargs: Any) -> JSONResponse:
        """Search by text with STAC filters; without `q`, items filtered only, newest first."""
        request: Request = kwargs.pop("request")
        return self._answer(request, self.service.parse(_get_params(kwargs)), _get_page_link(request))

    def post_search(self, search_request: Any, **kwargs: Any) -> JSONResponse:
        """The same search with a JSON body (GeoJSON `intersects` and CQL2 JSON fit better here)."""
        request: Request = kwargs["request"]
        values = dict(search_request)
        sortby = values.get("sortby")
        fields = values.get("fields")
        params = SearchParams(
            q=values.get("q"), mode=values.get("mode"), bbox=values.get("bbox"), intersects=values.get("intersects"),
            datetime=values.get("datetime"), collections=_lenient_list(values.get("collections")),
            ids=_lenient_list(values.get("ids")),
            properties=values.get("properties"), limit=values.get("limit") or 10, token=values.get("token"),
            fusion=values.get("fusion"), explain=bool(values.get("explain")), filter=values.get("filter_expr"),
            filter_lang=values.get("filter_lang"),
            sortby=[{"field": key.field, "direction": key.direction.value} for key in sortby] if sortby else None,
            fields={"include": sorted(fields.include or ()), "exclude": sorted(fields.exclude or ())}
            if fields is not None and (fields.include or fields.exclude) else None)
        parsed = self.service.parse(params)
        sent = _clean_json(search_request.model_dump(mode="json", exclude_unset=True, by_alias=True))

        def page_link(rel: str, new_token: str) -> dict[str, Any]:
            return {"rel": rel, "href": str(request.url), "type": GEOJSON, "method": "POST",
                    "body": {**sent, "token": new_token}, "merge": False}

        return self._answer(request, parsed, page_link)

    def _answer(self, request: Request, parsed: ParsedSearch, page_link: Callable[[str, str], dict[str, Any]],
                extra_links: list[dict[str, Any]] | None = None) -> JSONResponse:
        hits, matched, extra = self.service.run(parsed)
        links = Links(request)
        ranked = parsed.mode is not None
        features = []
        for hit in hits:
            item = to_item(hit.source, hit.image_id, links.item(hit.image_id, _collection_of(hit)), links.root,
                           hit if ranked else None, hit.rank, parsed.explain, links.collection)
            features.append(select_fields(item, parsed.fields.include, parsed.fields.exclude))
        page_links: list[dict[str, Any]] = [{"rel": "self", "href": str(request.url), "type": GEOJSON},
                                            {"rel": "root", "href": links.root, "type": "application/json"},
                                            *(extra_links or [])]
        end = parsed.offset + len(features)
        if features and end < matched:
            page_links.append(page_link("next", self.service.codec.encode(end, parsed.digest)))
        if parsed.offset > 0:  # portals' "previous" and "first" buttons (STAC Browser)
            previous = max(0, parsed.offset - parsed.limit)
            page_links.append(page_link("prev", self.service.codec.encode(previous, parsed.digest)))
            page_links.append(page_link("first", self.service.codec.encode(0, parsed.digest)))
        return GeoJSONResponse({
            "type": "FeatureCollection",
            "features": features,
            "links": page_links,
            "numberMatched": matched,
            "numberReturned": len(features),
            "context": {"returned": len(features), "limit": parsed.limit, "matched": matched},
            "rsrt:query": {"q": parsed.text, "mode": parsed.mode, "offset": parsed.offset,
                           "fusion": parsed.fusion_name if parsed.mode == "hybrid" else None, **extra},
        })


def _lenient_list(value: Any) -> Any:
    """POST `collections`/`ids` are arrays; a lone string is taken as one id (stac-api-validator 0.6.8
    sends `"collections": "<id>"`), never split on commas as GET's text is."""
    return [value] if isinstance(value, str) else value


def _no_collection(collection_id: str) -> JSONResponse:
    return error_response(404, "NotFound", f"no collection with id {collection_id!r}", "collectionId")


def _get_page_link(request: Request) -> Callable[[str, str], dict[str, Any]]:
    def page_link(rel: str, new_token: str) -> dict[str, Any]:
        return {"rel": rel, "href": str(request.url.include_query_params(token=new_token)), "type": GEOJSON,
                "method": "GET"}

    return page_link


def _get_params(values: dict[str, Any], collections: list[str] | None = None) -> SearchParams:
    """A GET request's values (strings; JSON where they carry JSON) as one `SearchParams`."""
    lang = values.get("filter_lang")
    expression = values.get("filter_expr")
    if lang is None and isinstance(expression, str) and expression.lstrip().startswith("{"):
        lang = "cql2-json"  # CQL2 text never starts with '{': JSON sent without its filter-lang
    if lang == "cql2-json" and expression is not None:
        expression = _json_param(expression, "filter")
    return SearchParams(
        q=values.get("q"), mode=values.get("mode"), bbox=values.get("bbox"),
        intersects=_json_param(values.get("intersects"), "intersects"), datetime=values.get("datetime"),
        collections=collections if collections is not None else values.get("collections"), ids=values.get("ids"),
        properties=_json_param(values.get("properties"), "properties"), limit=values.get("limit") or 10,
        token=values.get("token"), fusion=values.get("fusion"), explain=bool(values.get("explain")),
        filter=expression, filter_lang=lang, sortby=values.get("sortby"), fields=values.get("fields"))


@attr.s
class Queryables:
    """The filter extension's `/queryables` (and per collection): the index's item properties, typed."""

    service: Service = attr.ib(kw_only=True)

    def get_queryables(self, collection_id: str | None = None, **kwargs: Any) -> JSONResponse:
        request: Request = kwargs["request"]
        searcher = self.service.searcher
        if collection_id is not None and not searcher.collections(_text(collection_id, "collectionId")):
            return _no_collection(collection_id)
        url = str(request.url.remove_query_params(list(request.query_params)))
        return JSONResponse(queryables(searcher.property_types(["*"]), url),
                            media_type="application/schema+json")
