"""The HTTP API for geospatial portals: STAC-API-like item search over an rsrt index.

Portals speak STAC: `GET|POST /search` with `bbox`, `intersects`, `datetime`, `collections`, `limit`
and an opaque paging `token`, answered by a GeoJSON FeatureCollection of STAC Items. rsrt adds `q`
(the caption text query), `mode`, `fusion` and `explain`; each Item carries the image's caption
variants and its score. Routes parse (`params`), read through one `Searcher` and serialise (`items`);
errors have one shape and one table (`errors`).

(No `from __future__ import annotations`: FastAPI must resolve the request models and the per-app
`limit` bound defined inside `create_app`.)
"""

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from opensearchpy import OpenSearch
from pydantic import Field

from rsrt import __version__

from .. import request as search_request
from ..errors import ConfigError, RsrtError
from ..index import DEFAULT_ALIAS
from ..request import DEFAULT_CANDIDATES, DEFAULT_MODE, MAX_K, EmbedSite, FusionSite, LexicalScope, Mode
from ..searcher import Searcher, SearchHit
from .embeddings import install_embeddings_route
from .errors import ErrorBody, error_response, install_error_handlers
from .items import GEOJSON, STAC_VERSION, GeoJSONResponse, to_collection, to_item
from .params import (
    FusionName,
    ModeName,
    ParsedSearch,
    SearchBody,
    SearchParams,
    SearchPolicy,
    _clean_json,
    _json_param,
    _text,
    parse_search,
)
from .tokens import TokenCodec

log = logging.getLogger("rsrt.api")
# Query parameters that /search and /collections/{id}/items share
ModeParam = Annotated[ModeName | None, Query(description="dense, lexical or hybrid")]
BboxParam = Annotated[str | None, Query(description="west,south,east,north (WGS84)")]
DatetimeParam = Annotated[str | None, Query(description="instant, or start/end with '..' open ends")]
TokenParam = Annotated[str | None, Query(description="paging token from a `next` link")]
FusionParam = Annotated[FusionName | None, Query(description="hybrid fusion: minmax or rrf")]

CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    # `q` runs a T2T mode (semantic, ranked), a superset of the extension's keyword matching
    "https://api.stacspec.org/v1.0.0-rc.1/item-search#free-text",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


class _Service:
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
        if parsed.mode is None or parsed.text is None:
            page = searcher.browse(parsed.filters, size, parsed.offset)
            return page.hits, min(page.total, window), {"took_ms": page.took_ms}
        request = search_request.SearchRequest(parsed.text, parsed.mode, size, parsed.offset, parsed.filters,
                                               parsed.fusion, candidates=window, explain=parsed.explain,
                                               fusion_site=self.policy.fusion_site, embed=self.policy.embed)
        results = searcher.search(request)
        extra = {"took_ms": results.took_ms, "hybrid_backend": results.fusion_site}
        return results.hits, min(results.total, window), extra


@dataclass(frozen=True)
class ApiConfig:
    """How `rsrt serve` serves one index; `rsrt serve`'s flags set every field.

    `candidates` is the kNN/hybrid candidate list (raised to `max_limit`): dense and hybrid results page
    through it with a stable order. `token_secret` signs paging tokens; give the same one to every
    worker (and across restarts) so tokens stay valid; by default it is random per process.
    `warm_up` loads the encoder at startup so the first query is not seconds slower.
    """

    index: str = DEFAULT_ALIAS
    cors_origins: tuple[str, ...] = ()
    max_limit: int = 100
    default_mode: str = DEFAULT_MODE
    candidates: int = DEFAULT_CANDIDATES
    token_secret: bytes | str | None = field(default=None, repr=False)
    warm_up: bool = False
    lexical_scope: str = LexicalScope.VARIANT
    fusion_site: str = FusionSite.AUTO
    embed: str = EmbedSite.CLIENT  # a long-running server encodes faster itself than a neural query round trip
    encoder_backend: str = "torch"

    def __post_init__(self) -> None:
        if not 1 <= self.max_limit <= MAX_K:  # the Searcher refuses pages larger than MAX_K
            raise ConfigError(f"max_limit must be between 1 and {MAX_K}")
        if self.default_mode not in {m.value for m in Mode}:
            raise ConfigError(f"default mode {self.default_mode!r} is not one of {', '.join(m.value for m in Mode)}")


def create_app(searcher_factory: Callable[[], Searcher] | None = None, *, client: OpenSearch | None = None,
               config: ApiConfig | None = None, **settings: Any) -> FastAPI:
    """The search API over one index: give a `searcher_factory`, or a `client` (and `config`, or its
    fields as keywords: `create_app(client=c, index="rsrt-images", max_limit=50)`)."""
    config = config or ApiConfig(**{**settings, "cors_origins": tuple(settings.get("cors_origins") or ())})
    if searcher_factory is None:
        if client is None:
            raise ConfigError("create_app needs a searcher_factory, or a client and an index")
        searcher_factory = lambda: Searcher(client, config.index, lexical_scope=config.lexical_scope,  # noqa: E731
                                            encoder_backend=config.encoder_backend)
    max_limit = config.max_limit
    service = _Service(searcher_factory, SearchPolicy(config.default_mode, max_limit,
                                                      max(config.candidates, max_limit), config.fusion_site,
                                                      config.embed),
                       TokenCodec(config.token_secret))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if config.warm_up:
            try:
                searcher = service.searcher
                if searcher.encoder_info:
                    searcher.encoder.encode(["warm up"])
            except RsrtError as exc:
                log.warning("warm-up skipped (%s); the encoder loads on the first query", exc)
        yield

    app = FastAPI(
        title="rsrt search API",
        version=__version__,
        description="Text-to-text retrieval over remote sensing image captions, as STAC-API-like item search.",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["Retry-After"], max_age=600)

    error_responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "a parameter is invalid; `field` names it"},
        503: {"model": ErrorBody, "description": "OpenSearch or the index is unavailable"},
    }
    search_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {GEOJSON: {}}, "description": "a FeatureCollection of STAC Items"}, **error_responses}

    def collection_url(request: Request) -> Callable[[str], str]:
        def href(collection_id: str) -> str:
            return str(request.url_for("get_collection", collection_id=quote(collection_id, safe="")))

        return href

    def answer(request: Request, parsed: ParsedSearch, next_link: Callable[[str], dict[str, Any]],
               item_url: Callable[[str], str] | None = None,
               extra_links: list[dict[str, Any]] | None = None) -> JSONResponse:
        hits, matched, extra = service.run(parsed)
        root = str(request.url_for("landing"))
        item_url = item_url or (lambda image_id: str(request.url_for("get_item", item_id=image_id)))
        ranked = parsed.mode is not None
        features = [to_item(hit.source, hit.image_id, item_url(hit.image_id), root, hit if ranked else None,
                            hit.rank, parsed.explain, collection_url(request)) for hit in hits]
        links: list[dict[str, Any]] = [{"rel": "self", "href": str(request.url), "type": GEOJSON},
                                       {"rel": "root", "href": root, "type": "application/json"},
                                       *(extra_links or [])]
        end = parsed.offset + len(features)
        if features and end < matched:
            links.append(next_link(service.codec.encode(end, parsed.digest)))
        body = {
            "type": "FeatureCollection",
            "features": features,
            "links": links,
            "numberMatched": matched,
            "numberReturned": len(features),
            "context": {"returned": len(features), "limit": parsed.limit, "matched": matched},
            "rsrt:query": {"q": parsed.text, "mode": parsed.mode, "offset": parsed.offset,
                           "fusion": parsed.fusion_name if parsed.mode == "hybrid" else None, **extra},
        }
        return GeoJSONResponse(body)

    LimitParam = Annotated[int, Query(ge=1, le=max_limit, description="items per page")]

    @app.get("/", name="landing", tags=["discovery"])
    def landing(request: Request) -> dict[str, Any]:
        """STAC landing page: clients such as pystac-client start here."""
        search = str(request.url_for("search_get"))
        return {
            "type": "Catalog", "stac_version": STAC_VERSION, "id": "rsrt", "title": "rsrt search",
            "description": "Text-to-text retrieval over remote sensing image captions.",
            "conformsTo": CONFORMANCE,
            "links": [
                {"rel": "self", "href": str(request.url), "type": "application/json"},
                {"rel": "root", "href": str(request.url), "type": "application/json"},
                {"rel": "search", "href": search, "type": GEOJSON, "method": "GET"},
                {"rel": "search", "href": search, "type": GEOJSON, "method": "POST"},
                {"rel": "conformance", "href": str(request.url_for("conformance"))},
                # the trailing slash: pystac-client joins collection ids onto this href with urljoin
                {"rel": "data", "href": str(request.url_for("collections_slash")), "type": "application/json"},
                {"rel": "service-desc", "href": str(request.url_for("openapi")),
                 "type": "application/vnd.oai.openapi+json;version=3.0"},
                {"rel": "service-doc", "href": str(request.url_for("swagger_ui_html")), "type": "text/html"},
            ],
        }

    @app.get("/conformance", name="conformance", tags=["discovery"])
    def conformance() -> dict[str, list[str]]:
        return {"conformsTo": CONFORMANCE}

    @app.get("/search", name="search_get", tags=["search"], responses=search_responses)
    def search_get(
        request: Request,
        q: Annotated[str | None, Query(description="text query; omit for a filtered browse")] = None,
        mode: ModeParam = None,
        bbox: BboxParam = None,
        intersects: Annotated[str | None, Query(description="a GeoJSON geometry, as JSON")] = None,
        datetime: DatetimeParam = None,
        collections: Annotated[str | None, Query(description="comma-separated collection ids")] = None,
        ids: Annotated[str | None, Query(description="comma-separated item ids")] = None,
        properties: Annotated[str | None, Query(description='JSON object {"name": value or [values]}')] = None,
        limit: LimitParam = 10,
        token: TokenParam = None,
        fusion: FusionParam = None,
        explain: Annotated[bool, Query(description="per item: lexical and dense contributions")] = False,
    ) -> JSONResponse:
        """Search by text with STAC filters; without `q`, items filtered only, newest first."""
        parsed = service.parse(SearchParams(q=q, mode=mode, bbox=bbox, intersects=_json_param(intersects, "intersects"),
                                            datetime=datetime, collections=collections, ids=ids,
                                            properties=_json_param(properties, "properties"), limit=limit,
                                            token=token, fusion=fusion, explain=explain))

        def next_link(new_token: str) -> dict[str, Any]:
            return {"rel": "next", "href": str(request.url.include_query_params(token=new_token)),
                    "type": GEOJSON, "method": "GET"}

        return answer(request, parsed, next_link)

    class SearchRequest(SearchBody):
        limit: int = Field(10, ge=1, le=max_limit, description="items per page")

    @app.post("/search", name="search_post", tags=["search"], responses=search_responses)
    def search_post(request: Request, body: SearchRequest) -> JSONResponse:
        """The same search with a JSON body (GeoJSON `intersects` fits better here)."""
        parsed = service.parse(SearchParams(**body.model_dump()))
        sent = _clean_json(body.model_dump(exclude_none=True))

        def next_link(new_token: str) -> dict[str, Any]:
            return {"rel": "next", "href": str(request.url), "type": GEOJSON, "method": "POST",
                    "body": {**sent, "token": new_token}, "merge": False}

        return answer(request, parsed, next_link)

    @app.get("/collections", name="collections", tags=["collections"], responses=error_responses)
    def collections(request: Request) -> JSONResponse:
        """Every collection in the index, with its spatial and temporal extent (for portals' pickers)."""
        root = str(request.url_for("landing"))
        found = []
        for bucket in service.searcher.collections():
            quoted = quote(str(bucket["key"]), safe="")
            found.append(to_collection(bucket, str(request.url_for("get_collection", collection_id=quoted)), root,
                                       str(request.url_for("collection_items", collection_id=quoted))))
        return JSONResponse({"collections": found, "links": [
            {"rel": "self", "href": str(request.url), "type": "application/json"},
            {"rel": "root", "href": root, "type": "application/json"},
            {"rel": "parent", "href": root, "type": "application/json"}],
            "numberMatched": len(found), "numberReturned": len(found)})

    app.add_api_route("/collections/", collections, name="collections_slash", include_in_schema=False)

    def one_collection(collection_id: str) -> dict[str, Any] | None:
        buckets = service.searcher.collections(_text(collection_id, "collectionId"))
        return buckets[0] if buckets else None

    def no_collection(collection_id: str) -> JSONResponse:
        return error_response(404, "NotFound", f"no collection with id {collection_id!r}", "collectionId")

    not_found = {404: {"model": ErrorBody, "description": "no such collection or item"}}

    @app.get("/collections/{collection_id}", name="get_collection", tags=["collections"],
             responses={**not_found, **error_responses})
    def get_collection(request: Request, collection_id: str) -> JSONResponse:
        """One collection: its extent from the images it holds, and an `items` link."""
        bucket = one_collection(collection_id)
        if bucket is None:
            return no_collection(collection_id)
        quoted = quote(collection_id, safe="")
        return JSONResponse(to_collection(bucket, str(request.url), str(request.url_for("landing")),
                                          str(request.url_for("collection_items", collection_id=quoted))))

    @app.get("/collections/{collection_id}/items", name="collection_items", tags=["collections"],
             responses={**search_responses, **not_found})
    def collection_items(
        request: Request,
        collection_id: str,
        q: Annotated[str | None, Query(description="text query; omit for the newest items first")] = None,
        mode: ModeParam = None,
        bbox: BboxParam = None,
        datetime: DatetimeParam = None,
        limit: LimitParam = 10,
        token: TokenParam = None,
        fusion: FusionParam = None,
    ) -> JSONResponse:
        """OGC API Features items of one collection, with rsrt's `q` as in /search."""
        parsed = service.parse(SearchParams(q=q, mode=mode, bbox=bbox, datetime=datetime,
                                            collections=[collection_id], limit=limit, token=token, fusion=fusion))
        if one_collection(collection_id) is None:
            return no_collection(collection_id)
        quoted = quote(collection_id, safe="")

        def next_link(new_token: str) -> dict[str, Any]:
            return {"rel": "next", "href": str(request.url.include_query_params(token=new_token)),
                    "type": GEOJSON, "method": "GET"}

        def item_url(image_id: str) -> str:
            return str(request.url_for("collection_item", collection_id=quoted, item_id=image_id))

        collection_link = str(request.url_for("get_collection", collection_id=quoted))
        return answer(request, parsed, next_link, item_url,
                      [{"rel": "collection", "href": collection_link, "type": "application/json"},
                       {"rel": "parent", "href": collection_link, "type": "application/json"}])

    def fetch_item(request: Request, item_id: str, collection_id: str | None) -> JSONResponse:
        collection = _text(collection_id, "collectionId") if collection_id is not None else None
        hit = service.searcher.get_item(_text(item_id, "id"), collection)
        if hit is None:
            where = f" in collection {collection_id!r}" if collection_id is not None else ""
            return error_response(404, "NotFound", f"no item with id {item_id!r}{where}", "id")
        item = to_item(hit.source, hit.image_id, str(request.url), str(request.url_for("landing")),
                       collection_href=collection_url(request))
        return GeoJSONResponse(item)

    @app.get("/collections/{collection_id}/items/{item_id:path}", name="collection_item", tags=["collections"],
             responses={200: {"content": {GEOJSON: {}}, "description": "a STAC Item"}, **not_found,
                        **error_responses})
    def collection_item(request: Request, collection_id: str, item_id: str) -> JSONResponse:
        """One item of one collection (OGC API Features); 404 when it belongs to another collection."""
        return fetch_item(request, item_id, collection_id)

    @app.get("/items/{item_id:path}", name="get_item", tags=["items"],
             responses={200: {"content": {GEOJSON: {}}, "description": "a STAC Item"},
                        404: {"model": ErrorBody, "description": "no such item"}, **error_responses})
    def get_item(request: Request, item_id: str) -> JSONResponse:
        """One item by id, with all its caption variants."""
        return fetch_item(request, item_id, None)

    @app.get("/healthz", name="healthz", tags=["operations"],
             responses={503: {"description": "the cluster or the index is unavailable"}})
    def healthz() -> JSONResponse:
        """200 when the cluster answers and the index exists; else 503 with the reason (for probes)."""
        searcher = service.searcher
        try:
            status = searcher.status()
        except RsrtError as exc:
            return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
        if status.cluster == "red":
            return JSONResponse({"status": "unavailable", "reason": "the OpenSearch cluster is red",
                                 "cluster": status.cluster, "index": searcher.index}, status_code=503)
        if not status.exists:
            return JSONResponse({"status": "unavailable", "cluster": status.cluster, "index": searcher.index,
                                 "reason": f"index {searcher.index!r} does not exist"}, status_code=503)
        return JSONResponse({"status": "ok", "cluster": status.cluster, "index": searcher.index,
                             "documents": status.documents})

    install_embeddings_route(app, lambda: service.searcher)  # OpenAI-compatible, for ml-commons connectors

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI documents 422 for every route; this API answers bad input with 400 (ErrorBody)."""
        schema = default_openapi()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
