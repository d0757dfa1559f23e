"""rsrt's STAC API extensions and request models, in stac-fastapi's terms.

stac-fastapi composes the GET and POST request models of `/search` (and of a collection's items) from a
base model plus each extension's model, and builds `/conformance` from each extension's classes. rsrt's
base models carry the raw values (strings, JSON): every check is rsrt's own (`params.parse_search`,
`Filters.build`), so a bad `bbox` or `datetime` is one 400 naming it, the same by GET and POST. (stac-
fastapi's own base models validate bbox, datetime and intersects themselves, with other rules and other
error shapes; its free-text model splits `q` on commas, which would cut rsrt's sentence.)
"""

from typing import Annotated, Any, Literal

import attr
from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from stac_fastapi.api.models import create_request_model
from stac_fastapi.extensions import FieldsExtension, FilterExtension, SortExtension, TokenPaginationExtension
from stac_fastapi.extensions.fields.fields import FieldsConformanceClasses
from stac_fastapi.extensions.filter.filter import FilterConformanceClasses
from stac_fastapi.extensions.free_text.free_text import FreeTextConformanceClasses
from stac_fastapi.extensions.sort.sort import SortConformanceClasses
from stac_fastapi.types.conformance import BASE_CONFORMANCE_CLASSES
from stac_fastapi.types.extension import ApiExtension
from stac_fastapi.types.search import APIRequest

from .params import FusionName, ModeName, Scalar

DEFAULT_LIMIT = 10


# --- free text: rsrt's `q` is one natural-language sentence, run as a T2T mode --------------------

@attr.s
class TextGetRequest(APIRequest):
    q: Annotated[str | None, Query(description="a sentence describing the images (dense, lexical or hybrid "
                                               "retrieval over their captions); omit for a filtered browse")] = (
        attr.ib(default=None))
    mode: Annotated[ModeName | None, Query(description="dense, lexical or hybrid (default: the server's)")] = (
        attr.ib(default=None))
    fusion: Annotated[FusionName | None, Query(description="hybrid fusion: minmax or rrf")] = attr.ib(default=None)
    explain: Annotated[bool, Query(description="per item: lexical and dense contributions")] = attr.ib(default=False)


class TextPostRequest(BaseModel):
    q: str | list[str] | None = Field(None, description="a sentence describing the images (a list of terms is read "
                                                      "as one text); omit for a filtered browse")
    mode: ModeName | None = Field(None, description="dense, lexical or hybrid (default: the server's)")
    fusion: FusionName | None = Field(None, description="hybrid fusion: minmax or rrf (default: rsrt's)")
    explain: bool = Field(False, description="per item: lexical and dense contributions")


@attr.s
class TextSearchExtension(ApiExtension):
    """The free-text extension with rsrt's `q` (a superset of its keyword matching: ranked, semantic).

    Not stac-fastapi's FreeTextExtension: that one splits `q` on commas into keywords.
    """

    GET = TextGetRequest
    POST = TextPostRequest
    conformance_classes: list[str] = attr.ib(factory=lambda: [FreeTextConformanceClasses.SEARCH.value,
                                                              FreeTextConformanceClasses.ITEMS.value])

    def register(self, app: FastAPI) -> None:
        """Only parameters: the routes are the core's."""


# --- filter: CQL2 text and JSON; POST accepts either ------------------------------------------------

@attr.s
class FilterGetRequest(APIRequest):
    filter_expr: Annotated[str | None, Query(alias="filter", description="a CQL2 filter (text, or JSON)")] = (
        attr.ib(default=None))
    filter_lang: Annotated[Literal["cql2-text", "cql2-json"] | None,
                           Query(alias="filter-lang", description="cql2-text (default on GET) or cql2-json")] = (
        attr.ib(default=None))
    filter_crs: Annotated[Literal["http://www.opengis.net/def/crs/OGC/1.3/CRS84"] | None,
                          Query(alias="filter-crs", description="only WGS84 (CRS84)")] = attr.ib(default=None)


class FilterPostRequest(BaseModel):
    filter_expr: dict[str, Any] | str | None = Field(None, alias="filter",
                                                     description="a CQL2 JSON filter (or CQL2 text)")
    filter_lang: Literal["cql2-json", "cql2-text"] | None = Field(None, alias="filter-lang")
    filter_crs: Literal["http://www.opengis.net/def/crs/OGC/1.3/CRS84"] | None = Field(None, alias="filter-crs")


@attr.s
class CqlFilterExtension(FilterExtension):
    """stac-fastapi's filter extension (its `/queryables` routes) with raw values: rsrt's CQL2 parser checks."""

    GET = FilterGetRequest
    POST = FilterPostRequest


# --- sort and fields: stac-fastapi's POST models; GET keeps the raw string for rsrt's parser -------

@attr.s
class SortGetRequest(APIRequest):
    sortby: Annotated[str | None, Query(description="fields with + (ascending) or - (descending), e.g. "
                                                    "-datetime,+id")] = attr.ib(default=None)


@attr.s
class RsrtSortExtension(SortExtension):
    GET = SortGetRequest


@attr.s
class FieldsGetRequest(APIRequest):
    fields: Annotated[str | None, Query(description="item fields to include, or with - to exclude, "
                                                    "e.g. properties.datetime,-assets")] = attr.ib(default=None)


@attr.s
class RsrtFieldsExtension(FieldsExtension):
    GET = FieldsGetRequest


def api_extensions(queryables: Any) -> list[ApiExtension]:
    """The extensions of rsrt's API; `queryables` is the filter extension's client."""
    return [
        TextSearchExtension(),
        CqlFilterExtension(client=queryables, conformance_classes=[
            FilterConformanceClasses.FILTER.value, FilterConformanceClasses.SEARCH.value,
            FilterConformanceClasses.ITEMS.value, FilterConformanceClasses.BASIC_CQL2.value,
            FilterConformanceClasses.CQL2_JSON.value, FilterConformanceClasses.CQL2_TEXT.value]),
        RsrtSortExtension(conformance_classes=[SortConformanceClasses.ITEM_SEARCH_SORT.value,
                                               SortConformanceClasses.FEATURES_SORT.value]),
        RsrtFieldsExtension(conformance_classes=[FieldsConformanceClasses.SEARCH.value,
                                                 FieldsConformanceClasses.ITEMS.value]),
        TokenPaginationExtension(),
    ]


CONFORMANCE: list[str] = sorted({*(str(c) for c in BASE_CONFORMANCE_CLASSES),
                                 *(c for ext in api_extensions(None) for c in ext.conformance_classes)})


# --- the base models: STAC item search with raw values, plus rsrt's `properties` -------------------

@attr.s
class SearchGetBase(APIRequest):
    collections: Annotated[str | None, Query(description="comma-separated collection ids")] = attr.ib(default=None)
    ids: Annotated[str | None, Query(description="comma-separated item ids")] = attr.ib(default=None)
    bbox: Annotated[str | None, Query(description="west,south,east,north (WGS84)")] = attr.ib(default=None)
    intersects: Annotated[str | None, Query(description="a GeoJSON geometry, as JSON")] = attr.ib(default=None)
    datetime: Annotated[str | None, Query(description="an RFC 3339 instant, or start/end with '..' for open "
                                                      "ends")] = attr.ib(default=None)
    properties: Annotated[str | None, Query(description='JSON object {"name": value or [values]}')] = (
        attr.ib(default=None))
    limit: Annotated[int, Query(ge=1, description="items per page (above the server's maximum: the maximum)")] = (
        attr.ib(default=DEFAULT_LIMIT))


@attr.s
class ItemsGetBase(APIRequest):
    collection_id: Annotated[str, Path(description="the collection's id")] = attr.ib()
    bbox: Annotated[str | None, Query(description="west,south,east,north (WGS84)")] = attr.ib(default=None)
    datetime: Annotated[str | None, Query(description="an RFC 3339 instant, or start/end with '..' for open "
                                                      "ends")] = attr.ib(default=None)
    limit: Annotated[int, Query(ge=1, description="items per page (above the server's maximum: the maximum)")] = (
        attr.ib(default=DEFAULT_LIMIT))


class SearchPostBase(BaseModel):
    """POST /search: STAC item search, rsrt's text search and its `properties` terms."""

    model_config = ConfigDict(extra="forbid")

    bbox: list[float] | None = Field(None, description="[west, south, east, north] in WGS84")
    intersects: dict[str, Any] | None = Field(None, description="a GeoJSON geometry")
    datetime: str | None = Field(None, description="an RFC 3339 instant, or start/end with '..' for open ends")
    collections: list[str] | str | None = Field(None, description="collection ids (a lone string: one id)")
    ids: list[str] | str | None = Field(None, description="item ids (a lone string: one id)")
    properties: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="item property terms: {name: value or [values]}")
    limit: int = Field(DEFAULT_LIMIT, ge=1, description="items per page (above the server's maximum: the maximum)")


def request_models(extensions: list[ApiExtension]) -> tuple[type[APIRequest], type[BaseModel], type[APIRequest]]:
    """(GET /search, POST /search, GET /collections/{id}/items) models from the bases and the extensions."""
    search_get = create_request_model("SearchGetRequest", SearchGetBase, extensions, request_type="GET")
    search_post = create_request_model("SearchRequest", SearchPostBase, extensions, request_type="POST")
    items_get = create_request_model("ItemsGetRequest", ItemsGetBase, extensions, request_type="GET")
    return search_get, search_post, items_get  # type: ignore[return-value]
