"""Request parameters: GET strings and POST JSON validated into one `ParsedSearch`.

Everything a user sends is checked here or by `Filters`, so bad input is a 400 naming the field.
"""

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..cql2 import parse_filter
from ..errors import QueryError
from ..filters import Filters
from ..fusion import FusionSpec
from ..request import Mode, clean_query_text
from ..sorting import SortKey, parse_sortby
from .tokens import query_digest

MAX_RESULT_WINDOW = 10_000  # OpenSearch's index.max_result_window: from + size never goes past it
MAX_LIST_VALUES = 1000  # collections, ids, values of one property: keeps terms queries small
_SURROGATES = re.compile(r"[\ud800-\udfff]")
ModeName = Literal["dense", "lexical", "hybrid"]
FusionName = Literal["minmax", "rrf"]
Scalar = str | int | float | bool


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


@dataclass(frozen=True)
class FieldSelection:
    """The fields extension: which item fields to keep (`include`) or drop (`exclude`), dotted paths."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any) -> "FieldSelection":
        """GET `a,-b,+c` or POST `{"include": [...], "exclude": [...]}` (the extension's two spellings)."""
        if value is None:
            return cls()
        if isinstance(value, str | list):
            include, exclude = [], []
            for raw in _string_list(value, "fields"):
                (exclude if raw.startswith("-") else include).append(raw.lstrip("+-"))
            return cls(tuple(name for name in include if name), tuple(name for name in exclude if name))
        if isinstance(value, dict):
            return cls(tuple(_string_list(list(value.get("include") or []), "fields")),
                       tuple(_string_list(list(value.get("exclude") or []), "fields")))
        raise QueryError("fields", 'must be "a,-b" (GET) or {"include": [...], "exclude": [...]} (POST)')


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
    sort: tuple[Any, ...] = ()  # rsrt.search.sorting.SortKey, in order; () = the mode's own order
    fields: FieldSelection = field(default_factory=lambda: FieldSelection())


@dataclass
class SearchParams:
    """A search as the user sent it (GET strings already decoded from JSON where they carry JSON)."""

    q: str | None = None
    mode: str | None = None
    bbox: Any = None
    intersects: Any = None
    datetime: str | None = None
    collections: Any = None
    ids: Any = None
    properties: Any = None
    limit: int = 10
    token: str | None = None
    fusion: str | None = None
    explain: bool = False
    filter: Any = None  # CQL2: JSON (an object, or its text on GET) or CQL2 text
    filter_lang: str | None = None
    sortby: Any = None  # GET "+datetime,-id" or POST [{"field", "direction"}]
    fields: Any = None  # GET "a,-b" or POST {"include": [...], "exclude": [...]}


@dataclass(frozen=True)
class SearchPolicy:
    """The server's side of every search: defaults and bounds set when the app is made."""

    default_mode: str
    max_limit: int
    window: int  # how deep dense and hybrid results page (the kNN candidate list)
    fusion_site: str = "auto"  # where hybrid fusion runs (rsrt.search.request.FusionSite)
    embed: str = "client"  # where query text becomes a vector (rsrt.search.request.EmbedSite)

    def window_for(self, mode: str | None) -> int:
        """How deep a result list can be paged, with the same order on every page.

        kNN and hybrid rank a fixed candidate list (k = the window); past it the order would shift.
        """
        return self.window if mode in (Mode.DENSE, Mode.HYBRID) else MAX_RESULT_WINDOW



def parse_search(params: SearchParams, policy: SearchPolicy, decode_token: Any) -> ParsedSearch:
    """Validate one search; `decode_token(token, digest)` turns a paging token into its offset."""
    text = _query_text(params.q)
    chosen = (params.mode or policy.default_mode) if text is not None else None
    if chosen is not None and chosen not in {m.value for m in Mode}:
        raise QueryError("mode", f"{chosen!r} is not one of {', '.join(m.value for m in Mode)}")
    if params.limit < 1:
        raise QueryError("limit", f"must be at least 1 (at most {policy.max_limit} are returned per page)")
    limit = min(params.limit, policy.max_limit)  # STAC API: a limit above the maximum is clamped, not refused
    when = _text(params.datetime, "datetime") if params.datetime is not None else None
    cql2 = _cql2_filter(params.filter, params.filter_lang)
    filters = Filters.build(bbox=params.bbox, intersects=_geometry(params.intersects), datetime=when,
                            collections=_string_list(params.collections, "collections"),
                            properties=_properties(params.properties), ids=_string_list(params.ids, "ids"),
                            **({"cql2": cql2} if cql2 is not None else {}))
    sort = _sort_keys(params.sortby)
    spec = FusionSpec(params.fusion) if params.fusion else FusionSpec()  # the product default unless asked
    canonical = {"q": text, "mode": chosen, "bbox": filters.bbox, "intersects": filters.intersects,
                 "datetime": filters.datetime, "collections": filters.collections, "ids": filters.ids,
                 "properties": filters.properties, "fusion": params.fusion if chosen == "hybrid" else None,
                 "filter": cql2, "sortby": [str(key) for key in sort]}
    digest = query_digest(canonical)
    offset = decode_token(_text(params.token, "token"), digest) if params.token else 0
    if offset >= policy.window_for(chosen):
        raise QueryError("token", "the token points past the last page")
    return ParsedSearch(text, chosen, filters, limit, offset, spec, params.fusion, params.explain, digest, sort,
                        FieldSelection.parse(params.fields))


def _cql2_filter(value: Any, lang: str | None) -> dict[str, Any] | None:
    """A CQL2 filter (JSON object, or its text on GET; or CQL2 text) as CQL2 JSON, or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if lang is not None and lang not in ("cql2-json", "cql2-text"):
        raise QueryError("filter-lang", f"{lang!r} is not cql2-json or cql2-text")
    if isinstance(value, str):
        value = _text(value, "filter")
    return parse_filter(value, lang or ("cql2-json" if isinstance(value, dict) else "cql2-text"))


def _sort_keys(value: Any) -> tuple[SortKey, ...]:
    if value is None or value == [] or (isinstance(value, str) and not value.strip()):
        return ()
    return tuple(parse_sortby(value))


def _query_text(value: Any) -> str | None:
    """`q` as one sentence. The free-text extension also allows a list of terms (STAC Browser sends
    `["trees"]`): rsrt ranks by meaning, so the terms are read as one text, not as keyword ORs."""
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) > MAX_LIST_VALUES:
            raise QueryError("q", f"at most {MAX_LIST_VALUES} terms")
        value = " ".join(_text(term, "q").strip() for term in value)
    text = _text(value, "q")
    return clean_query_text(text) if text.strip() else None
