"""HTTP API for geospatial portals: STAC-API-like item search over an rsrt index.

Portals speak STAC: `GET|POST /search` with `bbox`, `intersects`, `datetime`, `collections`, `limit`
and an opaque paging `token`, answered by a GeoJSON FeatureCollection of STAC Items. rsrt adds `q`
(the caption text query), `mode`, `fusion` and `explain`; each Item carries the image's caption
variants and its score. Everything a user sends is validated here or by `Filters`, so bad input is a
4xx naming the field, never a 5xx; an unreachable cluster is a 503 that says so.

(No `from __future__ import annotations`: FastAPI must resolve the request models and the per-app
`limit` bound defined inside `create_app`.)
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import mimetypes
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC as _UTC
from datetime import datetime as _DateTime
from typing import Annotated, Any, Literal
from urllib.parse import quote

import opensearchpy
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from opensearchpy import OpenSearch
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rsrt import __version__

from .errors import ClusterError, ConfigError, RsrtError
from .filters import Filters, QueryError
from .fusion import FusionSpec
from .index import DEFAULT_ALIAS
from .searcher import MAX_K, MODES, SOURCE_EXCLUDES, Searcher, SearchHit, clean_query_text

log = logging.getLogger("rsrt.api")

STAC_VERSION = "1.0.0"
GEOJSON = "application/geo+json"
MAX_RESULT_WINDOW = 10_000  # OpenSearch's index.max_result_window: from + size never goes past it
MAX_LIST_VALUES = 1000  # collections, ids, values of one property: keeps terms queries small
MAX_TOKEN_CHARS = 200
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
MAX_COLLECTIONS = 1000  # one terms aggregation lists them all; more than this is not an rsrt archive
WORLD_BBOX = [-180.0, -90.0, 180.0, 90.0]
_SURROGATES = re.compile(r"[\ud800-\udfff]")
Mode = Literal["dense", "lexical", "hybrid"]
Fusion = Literal["minmax", "rrf"]
Scalar = str | int | float | bool


# ---------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error answer: a machine code, the offending field (null when none) and a sentence."""

    code: str
    field: str | None = None
    description: str


def _error(status: int, code: str, description: str, field: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "field": field, "description": description}, status_code=status,
                        headers=headers)


def _field_from_reason(reason: str) -> str:
    """OpenSearch names the document field it choked on; map it back to the API parameter."""
    if "properties." in reason:
        return "properties"
    if "geo_shape" in reason or "geometry" in reason or "shape" in reason:
        return "intersects"
    if "datetime" in reason or "date" in reason:
        return "datetime"
    return "q"


def _opensearch_reason(exc: opensearchpy.TransportError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error", {})
    if isinstance(error, dict):
        root = (error.get("root_cause") or [{}])[0]
        caused = (error.get("caused_by") or {}).get("reason")
        return str(caused or root.get("reason") or error.get("reason") or exc.error)[:300]
    return str(exc.error)[:300]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a 422 list; portals get one 400 naming the first bad field.
        errors = list(exc.errors())
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ())]
        where = loc[0] if loc else "body"
        rest = loc[1:]
        if where == "body" and (not rest or rest[0].isdigit() or first.get("type") == "json_invalid"):
            field = "body"
        else:
            field = rest[0] if rest else where
        path = ".".join(rest) or field
        return _error(400, "InvalidParameterValue", f"{path}: {first.get('msg', 'invalid value')}", field)

    @app.exception_handler(QueryError)
    async def query_error(_: Request, exc: QueryError) -> JSONResponse:
        field = exc.field
        if field == "q" and exc.detail.startswith("OpenSearch refused"):
            field = _field_from_reason(exc.detail)  # the Searcher attributes every refusal to q
        return _error(400, "InvalidParameterValue", exc.detail, field)

    @app.exception_handler(ClusterError)
    async def cluster_error(_: Request, exc: ClusterError) -> JSONResponse:
        return _error(503, "ServiceUnavailable", str(exc), headers={"Retry-After": "10"})

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, exc: ConfigError) -> JSONResponse:
        # In a request, a ConfigError is the server's setup (index missing, encoder mismatch), not the
        # user's input (that is a QueryError): telling the portal "your query is wrong" would mislead.
        return _error(503, "ServiceUnavailable", f"the search index is not usable: {exc}")

    @app.exception_handler(RsrtError)
    async def rsrt_error(_: Request, exc: RsrtError) -> JSONResponse:
        return _error(503, "ServiceUnavailable", str(exc))

    @app.exception_handler(opensearchpy.TransportError)
    async def opensearch_error(_: Request, exc: opensearchpy.TransportError) -> JSONResponse:
        if isinstance(exc, opensearchpy.ConnectionError | opensearchpy.ConnectionTimeout):
            return _error(503, "ServiceUnavailable",
                          f"OpenSearch is unreachable ({type(exc).__name__}); try again shortly",
                          headers={"Retry-After": "10"})
        if isinstance(exc, opensearchpy.RequestError):  # HTTP 400: the cluster refused what the user sent
            reason = _opensearch_reason(exc)
            return _error(400, "InvalidParameterValue", f"OpenSearch refused the query: {reason}",
                          _field_from_reason(reason))
        if isinstance(exc, opensearchpy.NotFoundError):
            return _error(503, "ServiceUnavailable", "the search index does not exist (yet); ingest something")
        return _error(503, "ServiceUnavailable",
                      f"OpenSearch answered HTTP {exc.status_code}: {_opensearch_reason(exc)}",
                      headers={"Retry-After": "10"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}
        code = codes.get(exc.status_code, "InvalidRequest" if exc.status_code < 500 else "ServerError")
        # FastAPI's only own 400 is "There was an error parsing the body" (e.g. JSON nested too deeply).
        field = "body" if exc.status_code == 400 else None
        return _error(exc.status_code, code, str(exc.detail), field, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the search API")
        return _error(500, "InternalServerError", f"unexpected {type(exc).__name__}; see the server log")


# ---------------------------------------------------------------------------------------------------
# paging tokens
# ---------------------------------------------------------------------------------------------------


class TokenCodec:
    """Opaque paging tokens: offset + query digest, HMAC-signed so they cannot be forged or replayed.

    Offsets are not secret, but a token edited by hand or replayed against another query would page
    through a different result list: both are refused with a 400 naming `token`.
    """

    def __init__(self, secret: bytes | str | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).hexdigest()[:24]

    def encode(self, offset: int, digest: str) -> str:
        payload = f"{offset}:{digest}"
        raw = f"{payload}:{self._mac(payload)}".encode("ascii")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def decode(self, token: str, digest: str) -> int:
        damaged = QueryError("token", "the token is damaged or was not issued by this server; "
                                      "start again without a token")
        if len(token) > MAX_TOKEN_CHARS:
            raise damaged
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
            offset_text, token_digest, mac = raw.decode("ascii").split(":")
        except (ValueError, binascii.Error):  # UnicodeError is a ValueError
            raise damaged from None
        if not hmac.compare_digest(mac, self._mac(f"{offset_text}:{token_digest}")):
            raise damaged
        if not hmac.compare_digest(token_digest, digest):
            raise QueryError("token", "the token belongs to another query; start again without a token")
        return int(offset_text)


def query_digest(canonical: dict[str, Any]) -> str:
    """What a token is bound to: the normalised query, not its spelling (GET and POST agree)."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------------------------------


def _text(value: Any, field: str) -> str:
    """Strings from JSON may hold lone surrogates, which cannot be sent on as UTF-8: replace them."""
    if not isinstance(value, str):
        raise QueryError(field, "must be text")
    return _SURROGATES.sub("\ufffd", value)


def _clean_json(value: Any) -> Any:
    """A request body echoed back (the POST `next` link) must be encodable as UTF-8 too."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    if isinstance(value, dict):
        return {_clean_json(key): _clean_json(item) for key, item in value.items()}
    return value


class GeoJSONResponse(JSONResponse):
    """application/geo+json; falls back to ASCII escapes rather than fail on text UTF-8 cannot carry."""

    media_type = GEOJSON

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _json_param(value: str | None, field: str) -> Any:
    """GET carries GeoJSON and property filters as JSON strings."""
    if value is None or not value.strip():
        return None
    try:
        return json.loads(value)
    except RecursionError:
        raise QueryError(field, "the JSON is nested too deeply") from None
    except ValueError as exc:
        raise QueryError(field, f"is not valid JSON ({exc})") from None


def _geometry(value: Any) -> dict[str, Any] | None:
    """Only `type` and `coordinates` reach the cluster (a Feature is unwrapped to its geometry)."""
    if value is None:
        return None
    if isinstance(value, dict) and value.get("type") == "Feature":
        value = value.get("geometry")
    if isinstance(value, dict) and "type" in value and "coordinates" in value:
        value = {"type": value["type"], "coordinates": value["coordinates"]}
    return value  # Filters.build checks the rest and names `intersects`


def _scalar(value: Any, field: str) -> Scalar:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QueryError(field, "numbers must be finite")
        return value
    if isinstance(value, str):
        return _text(value, field)
    raise QueryError(field, f"values must be text, numbers or booleans, not {type(value).__name__}")


_NUMERIC_TYPES = {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float",
                  "unsigned_long"}


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _properties(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise QueryError("properties", 'must be an object such as {"platform": "sentinel-2a"}')
    out: dict[str, Any] = {}
    for key, raw in value.items():
        if isinstance(raw, list):
            if not raw or len(raw) > MAX_LIST_VALUES:
                raise QueryError("properties", f"{key!r} needs 1 to {MAX_LIST_VALUES} values")
            out[_text(key, "properties")] = [_scalar(v, "properties") for v in raw]
        else:
            out[_text(key, "properties")] = _scalar(raw, "properties")
    return out


def _string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise QueryError(field, "must be a list of strings")
    out = [_text(item, field).strip() for item in items]
    out = [item for item in out if item]
    if len(out) > MAX_LIST_VALUES:
        raise QueryError(field, f"at most {MAX_LIST_VALUES} values")
    return out


@dataclass
class ParsedSearch:
    """One validated search, whichever verb it came by."""

    text: str | None
    mode: str | None  # None: a filtered browse (no q)
    filters: Filters
    limit: int
    offset: int
    fusion: FusionSpec
    fusion_name: str | None
    explain: bool
    digest: str


class SearchBody(BaseModel):
    """POST /search: the STAC item-search body plus rsrt's q, mode, fusion, explain and properties."""

    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(None, description="text query over the caption variants; omit for a filtered browse")
    mode: Mode | None = Field(None, description="dense, lexical or hybrid (default: the server's)")
    bbox: list[float] | None = Field(None, description="[west, south, east, north] in WGS84")
    intersects: dict[str, Any] | None = Field(None, description="a GeoJSON geometry")
    datetime: str | None = Field(None, description="an RFC 3339 instant, or start/end with '..' for open ends")
    collections: list[str] | None = None
    ids: list[str] | None = None
    properties: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="item property terms: {name: value or [values]}")
    limit: int = Field(10, ge=1, description="items per page")
    token: str | None = Field(None, description="the paging token from a `next` link")
    fusion: Fusion | None = Field(None, description="hybrid fusion: minmax (default) or rrf")
    explain: bool = Field(False, description="per item: lexical and dense contributions")


# ---------------------------------------------------------------------------------------------------
# items
# ---------------------------------------------------------------------------------------------------


def _coordinates_bounds(coords: Any, box: list[float]) -> None:
    if isinstance(coords, list | tuple) and len(coords) >= 2 and all(isinstance(c, int | float) for c in coords[:2]):
        x, y = float(coords[0]), float(coords[1])
        box[0], box[1], box[2], box[3] = min(box[0], x), min(box[1], y), max(box[2], x), max(box[3], y)
    elif isinstance(coords, list | tuple):
        for part in coords:
            _coordinates_bounds(part, box)


def geometry_bbox(geometry: dict[str, Any] | None) -> list[float] | None:
    """STAC wants a bbox whenever there is a geometry; documents may hold only the geometry."""
    if not geometry:
        return None
    box = [math.inf, math.inf, -math.inf, -math.inf]
    _coordinates_bounds(geometry.get("coordinates"), box)
    return box if all(math.isfinite(v) for v in box) else None


def _variant(entry: dict[str, Any]) -> dict[str, Any]:
    return {"one_sentence": entry.get("one_sentence", ""), "feature": entry.get("feature", ""),
            "caption": entry.get("caption", "")}


def to_item(source: dict[str, Any], image_id: str, item_href: str, root_href: str, hit: SearchHit | None = None,
            rank: int | None = None, explain: bool = False,
            collection_href: Callable[[str], str] | None = None) -> dict[str, Any]:
    """An indexed document as a STAC Item; the captions ride along as `rsrt:` properties.

    `collection_href` maps a collection id to its URL: STAC browsers walk `parent`/`collection` links.
    """
    own = source.get("properties") or {}
    properties: dict[str, Any] = dict(own) if isinstance(own, dict) else {}
    properties["datetime"] = source.get("datetime") or properties.get("datetime")
    if hit is not None:
        properties["rsrt:score"] = hit.score
        properties["rsrt:rank"] = hit.rank
        matched = hit.matched_variant
        properties["rsrt:matched_variant"] = (
            {"n": matched.get("n"), **_variant(matched)} if matched else None)
        if explain:
            properties["rsrt:explanation"] = hit.explanation
    elif rank is not None:
        properties["rsrt:rank"] = rank
    properties["rsrt:summary"] = source.get("summary")
    properties["rsrt:variants"] = [_variant(v) for v in source.get("variants") or []]
    if source.get("captioner"):
        properties["rsrt:captioner"] = source["captioner"]
    geometry = source.get("geometry") or None
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": image_id,
        "geometry": geometry,
    }
    bbox = source.get("bbox") or geometry_bbox(geometry)
    if bbox:
        item["bbox"] = bbox
    if source.get("collection"):
        item["collection"] = source["collection"]
    item["properties"] = properties
    item["links"] = [{"rel": "self", "href": item_href, "type": GEOJSON},
                     {"rel": "root", "href": root_href, "type": "application/json"}]
    if collection_href is not None and source.get("collection"):
        href = collection_href(str(source["collection"]))
        item["links"] += [{"rel": "parent", "href": href, "type": "application/json"},
                          {"rel": "collection", "href": href, "type": "application/json"}]
    assets: dict[str, Any] = {}
    uri = source.get("source_uri")
    if uri:
        asset: dict[str, Any] = {"href": uri, "roles": ["data"], "title": "source image"}
        media_type = mimetypes.guess_type(uri.split("?")[0])[0]
        if media_type:
            asset["type"] = media_type
        assets["image"] = asset
    item["assets"] = assets
    return item


# ---------------------------------------------------------------------------------------------------
# collections
# ---------------------------------------------------------------------------------------------------


def _iso_millis(value: Any) -> str | None:
    """A date aggregation's epoch-millis value as RFC 3339 (None when the collection has no dates)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return _DateTime.fromtimestamp(value / 1000, tz=_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def collection_aggregation(geo_field: str = "geometry") -> dict[str, Any]:
    """One terms bucket per collection with its time span and footprint bounds: the Collection extents."""
    return {"collections": {
        "terms": {"field": "collection", "size": MAX_COLLECTIONS, "order": {"_key": "asc"}},
        "aggs": {"first": {"min": {"field": "datetime"}}, "last": {"max": {"field": "datetime"}},
                 "where": {"geo_bounds": {"field": geo_field}}},
    }}


def to_collection(bucket: dict[str, Any], href: str, root_href: str, items_href: str) -> dict[str, Any]:
    """A terms bucket as a STAC Collection; a collection with no footprints gets the whole world."""
    bounds = (bucket.get("where") or {}).get("bounds")
    bbox = list(WORLD_BBOX)
    if bounds:
        top_left, bottom_right = bounds["top_left"], bounds["bottom_right"]
        bbox = [top_left["lon"], bottom_right["lat"], bottom_right["lon"], top_left["lat"]]
    collection_id = str(bucket["key"])
    return {
        "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [], "id": collection_id,
        "title": collection_id, "description": f"{bucket['doc_count']} captioned images of {collection_id!r}",
        "license": "other", "keywords": ["remote sensing", "captions"],
        "extent": {"spatial": {"bbox": [bbox]},
                   "temporal": {"interval": [[_iso_millis((bucket.get("first") or {}).get("value")),
                                              _iso_millis((bucket.get("last") or {}).get("value"))]]}},
        "summaries": {}, "rsrt:items": int(bucket["doc_count"]),
        "links": [{"rel": "self", "href": href, "type": "application/json"},
                  {"rel": "root", "href": root_href, "type": "application/json"},
                  {"rel": "parent", "href": root_href, "type": "application/json"},
                  {"rel": "items", "href": items_href, "type": GEOJSON}],
    }


# ---------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------


class _Service:
    """The searcher (built once, lazily: building may connect) and what the routes share."""

    def __init__(self, factory: Callable[[], Searcher], max_limit: int, default_mode: str, window: int,
                 codec: TokenCodec) -> None:
        self._factory = factory
        self._searcher: Searcher | None = None
        self._lock = threading.Lock()
        self.max_limit = max_limit
        self.default_mode = default_mode
        self.window = window
        self.codec = codec

    @property
    def searcher(self) -> Searcher:
        with self._lock:
            if self._searcher is None:
                self._searcher = self._factory()
            return self._searcher

    # parsing --------------------------------------------------------------------------------------
    def parse(self, q: str | None, mode: str | None, bbox: Any, intersects: Any, datetime: str | None,
              collections: Any, ids: Any, properties: Any, limit: int, token: str | None, fusion: str | None,
              explain: bool) -> ParsedSearch:
        text = None
        if q is not None and _text(q, "q").strip():
            text = clean_query_text(_text(q, "q"))
        chosen = (mode or self.default_mode) if text is not None else None
        if chosen is not None and chosen not in MODES:
            raise QueryError("mode", f"{chosen!r} is not one of {', '.join(MODES)}")
        if not 1 <= limit <= self.max_limit:
            raise QueryError("limit", f"must be between 1 and {self.max_limit}")
        when = _text(datetime, "datetime") if datetime is not None else None
        filters = Filters.build(bbox=bbox, intersects=_geometry(intersects), datetime=when,
                                collections=_string_list(collections, "collections"),
                                properties=_properties(properties), ids=_string_list(ids, "ids"))
        spec = FusionSpec("rrf") if fusion == "rrf" else FusionSpec()
        canonical = {"q": text, "mode": chosen, "bbox": filters.bbox, "intersects": filters.intersects,
                     "datetime": filters.datetime, "collections": filters.collections, "ids": filters.ids,
                     "properties": filters.properties, "fusion": fusion if chosen == "hybrid" else None}
        digest = query_digest(canonical)
        offset = self.codec.decode(_text(token, "token"), digest) if token else 0
        if offset >= self.window_for(chosen):
            raise QueryError("token", "the token points past the last page")
        return ParsedSearch(text, chosen, filters, limit, offset, spec, fusion, explain, digest)

    def window_for(self, mode: str | None) -> int:
        """How deep a result list can be paged, with the same order on every page.

        kNN and hybrid rank a fixed candidate list (k = the window); past it the order would shift.
        """
        return self.window if mode in ("dense", "hybrid") else MAX_RESULT_WINDOW

    def check_property_types(self, filters: Filters) -> None:
        """A text value against a numeric property makes OpenSearch fail the whole query with a reason
        that names no field; check the mapping first so the 400 says `properties` and which one."""
        if not filters.properties:
            return
        searcher = self.searcher
        names = [f"properties.{key}" for key in filters.properties]
        found = searcher.client.indices.get_field_mapping(index=searcher.index, fields=",".join(names))
        types: dict[str, str] = {}
        for index_mapping in found.values():
            for full_name, entry in (index_mapping.get("mappings") or {}).items():
                for spec in (entry.get("mapping") or {}).values():
                    types[full_name.removeprefix("properties.")] = str(spec.get("type", ""))
        for key, value in filters.properties.items():
            kind = types.get(key, "")
            for item in value if isinstance(value, list) else [value]:
                if kind in _NUMERIC_TYPES and not _is_number(item):
                    raise QueryError("properties", f"{key!r} holds numbers; {item!r} is not a number")
                if kind == "boolean" and not (isinstance(item, bool) or item in ("true", "false")):
                    raise QueryError("properties", f"{key!r} holds true/false; {item!r} is neither")

    def collection_buckets(self, only: str | None = None) -> list[dict[str, Any]]:
        """Terms buckets per collection (just `only`'s when given), with extents; [] when it has no items."""
        searcher = self.searcher
        query: dict[str, Any] = {"term": {"collection": only}} if only is not None else {"match_all": {}}
        response = searcher.client.search(index=searcher.index, body={
            "size": 0, "query": query, "aggs": collection_aggregation()})
        return list(response["aggregations"]["collections"]["buckets"])

    # running --------------------------------------------------------------------------------------
    def run(self, parsed: ParsedSearch) -> tuple[list[tuple[dict[str, Any], str, SearchHit | None, int]],
                                                int, dict[str, Any]]:
        """(hits as (source, id, hit, rank), pageable total, extra facts) for one page."""
        window = self.window_for(parsed.mode)
        size = min(parsed.limit, window - parsed.offset)
        self.check_property_types(parsed.filters)
        searcher = self.searcher
        if parsed.mode is None or parsed.text is None:
            body: dict[str, Any] = {
                "size": size, "from": parsed.offset, "track_total_hits": True,
                "_source": {"excludes": SOURCE_EXCLUDES},
                "query": parsed.filters.as_filter() or {"match_all": {}},
                "sort": [{"datetime": {"order": "desc", "missing": "_last", "unmapped_type": "date"}},
                         {"image_id": {"order": "asc", "unmapped_type": "keyword"}}],
            }
            response = searcher.client.search(index=searcher.index, body=body)
            total_raw = response["hits"]["total"]
            total = int(total_raw["value"] if isinstance(total_raw, dict) else total_raw)
            rows = [(raw.get("_source", {}), raw["_id"], None, parsed.offset + i + 1)
                    for i, raw in enumerate(response["hits"]["hits"])]
            return rows, min(total, window), {"took_ms": float(response.get("took", 0))}
        results = searcher.search(parsed.text, parsed.mode, size, parsed.filters, parsed.offset, parsed.fusion,
                                  candidates=window, explain=parsed.explain)
        rows = [(hit.source, hit.image_id, hit, hit.rank) for hit in results.hits]
        extra = {"took_ms": results.took_ms, "hybrid_backend": results.hybrid_backend}
        return rows, min(results.total, window), extra


def create_app(
    searcher_factory: Callable[[], Searcher] | None = None,
    *,
    client: OpenSearch | None = None,
    index: str = DEFAULT_ALIAS,
    cors_origins: list[str] | None = None,
    max_limit: int = 100,
    default_mode: str = "hybrid",
    candidates: int = 100,
    token_secret: bytes | str | None = None,
    warm_up: bool = False,
) -> FastAPI:
    """The search API over one index: give a `searcher_factory`, or a `client` and `index`.

    `candidates` is the kNN/hybrid candidate list (raised to `max_limit`): dense and hybrid results page
    through it with a stable order. `token_secret` signs paging tokens; give the same one to every
    worker (and across restarts) so tokens stay valid; by default it is random per process.
    `warm_up` loads the encoder at startup so the first query is not seconds slower.
    """
    if searcher_factory is None:
        if client is None:
            raise ConfigError("create_app needs a searcher_factory, or a client and an index")
        searcher_factory = lambda: Searcher(client, index)  # noqa: E731
    if not 1 <= max_limit <= MAX_K:  # the Searcher refuses pages larger than MAX_K
        raise ConfigError(f"max_limit must be between 1 and {MAX_K}")
    if default_mode not in MODES:
        raise ConfigError(f"default mode {default_mode!r} is not one of {', '.join(MODES)}")
    service = _Service(searcher_factory, max_limit, default_mode, max(candidates, max_limit),
                       TokenCodec(token_secret))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            try:
                searcher = service.searcher
                if searcher.encoder_info:
                    searcher.encoder.encode(["warm up"])
            except (RsrtError, opensearchpy.OpenSearchException) as exc:
                log.warning("warm-up skipped (%s); the encoder loads on the first query", exc)
        yield

    app = FastAPI(
        title="rsrt search API",
        version=__version__,
        description="Text-to-text retrieval over remote sensing image captions, as STAC-API-like item search.",
        lifespan=lifespan,
    )
    app.state.service = service
    _install_error_handlers(app)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
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
        rows, matched, extra = service.run(parsed)
        root = str(request.url_for("landing"))
        item_url = item_url or (lambda image_id: str(request.url_for("get_item", item_id=image_id)))
        features = [to_item(source, image_id, item_url(image_id), root, hit, rank, parsed.explain,
                            collection_url(request)) for source, image_id, hit, rank in rows]
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
        mode: Annotated[Mode | None, Query(description="dense, lexical or hybrid")] = None,
        bbox: Annotated[str | None, Query(description="west,south,east,north (WGS84)")] = None,
        intersects: Annotated[str | None, Query(description="a GeoJSON geometry, as JSON")] = None,
        datetime: Annotated[str | None, Query(description="instant, or start/end with '..' open ends")] = None,
        collections: Annotated[str | None, Query(description="comma-separated collection ids")] = None,
        ids: Annotated[str | None, Query(description="comma-separated item ids")] = None,
        properties: Annotated[str | None, Query(description='JSON object {"name": value or [values]}')] = None,
        limit: Annotated[int, Query(ge=1, le=max_limit, description="items per page")] = 10,
        token: Annotated[str | None, Query(description="paging token from a `next` link")] = None,
        fusion: Annotated[Fusion | None, Query(description="hybrid fusion: minmax or rrf")] = None,
        explain: Annotated[bool, Query(description="per item: lexical and dense contributions")] = False,
    ) -> JSONResponse:
        """Search by text with STAC filters; without `q`, items filtered only, newest first."""
        parsed = service.parse(q, mode, bbox, _json_param(intersects, "intersects"), datetime, collections, ids,
                               _json_param(properties, "properties"), limit, token, fusion, explain)

        def next_link(new_token: str) -> dict[str, Any]:
            return {"rel": "next", "href": str(request.url.include_query_params(token=new_token)),
                    "type": GEOJSON, "method": "GET"}

        return answer(request, parsed, next_link)

    class SearchRequest(SearchBody):
        limit: int = Field(10, ge=1, le=max_limit, description="items per page")

    @app.post("/search", name="search_post", tags=["search"], responses=search_responses)
    def search_post(request: Request, body: SearchRequest) -> JSONResponse:
        """The same search with a JSON body (GeoJSON `intersects` fits better here)."""
        parsed = service.parse(body.q, body.mode, body.bbox, body.intersects, body.datetime, body.collections,
                               body.ids, body.properties, body.limit, body.token, body.fusion, body.explain)
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
        for bucket in service.collection_buckets():
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
        buckets = service.collection_buckets(_text(collection_id, "collectionId"))
        return buckets[0] if buckets else None

    def no_collection(collection_id: str) -> JSONResponse:
        return _error(404, "NotFound", f"no collection with id {collection_id!r}", "collectionId")

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
        mode: Annotated[Mode | None, Query(description="dense, lexical or hybrid")] = None,
        bbox: Annotated[str | None, Query(description="west,south,east,north (WGS84)")] = None,
        datetime: Annotated[str | None, Query(description="instant, or start/end with '..' open ends")] = None,
        limit: Annotated[int, Query(ge=1, le=max_limit, description="items per page")] = 10,
        token: Annotated[str | None, Query(description="paging token from a `next` link")] = None,
        fusion: Annotated[Fusion | None, Query(description="hybrid fusion: minmax or rrf")] = None,
    ) -> JSONResponse:
        """OGC API Features items of one collection, with rsrt's `q` as in /search."""
        parsed = service.parse(q, mode, bbox, None, datetime, [collection_id], None, None, limit, token, fusion,
                               False)
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
        searcher = service.searcher
        query: dict[str, Any] = {"ids": {"values": [_text(item_id, "id")]}}
        if collection_id is not None:
            query = {"bool": {"filter": [query, {"term": {"collection": _text(collection_id, "collectionId")}}]}}
        response = searcher.client.search(index=searcher.index, body={
            "size": 1, "query": query, "_source": {"excludes": SOURCE_EXCLUDES}})
        hits = response["hits"]["hits"]
        if not hits:
            where = f" in collection {collection_id!r}" if collection_id is not None else ""
            return _error(404, "NotFound", f"no item with id {item_id!r}{where}", "id")
        item = to_item(hits[0].get("_source", {}), hits[0]["_id"], str(request.url),
                       str(request.url_for("landing")), collection_href=collection_url(request))
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
        try:
            searcher = service.searcher
            health = searcher.client.cluster.health(request_timeout=5)
            status = health.get("status", "unknown")
            if status == "red":
                return JSONResponse({"status": "unavailable", "reason": "the OpenSearch cluster is red",
                                     "cluster": status, "index": searcher.index}, status_code=503)
            if not searcher.client.indices.exists(index=searcher.index):
                return JSONResponse({"status": "unavailable", "cluster": status, "index": searcher.index,
                                     "reason": f"index {searcher.index!r} does not exist"}, status_code=503)
            documents = int(searcher.client.count(index=searcher.index)["count"])
        except (opensearchpy.OpenSearchException, RsrtError) as exc:
            reason = (f"OpenSearch is unreachable ({type(exc).__name__})"
                      if isinstance(exc, opensearchpy.ConnectionError | opensearchpy.ConnectionTimeout)
                      else f"OpenSearch error: {exc}")
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok", "cluster": status, "index": searcher.index, "documents": documents})

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
