"""A STAC API (`/search`, item-search conformance) as an ingest source, read page by page.

`StacApiSource` asks the API for the items that match collections, place (bbox or intersects),
time, and optionally a `query`/CQL2 `filter`, and turns each item dict into a record exactly as a
static catalog's item is (`StacSource._item`: the same asset choice, raster rendering, chips and
per-item problems). Only one page is held at a time, so memory does not grow with the result
count (apart from the ids seen, kept to refuse duplicates).

Everything that makes the API unusable as a whole (unreachable, not a STAC API, no item search,
an unknown collection, bad search parameters) raises a one-line error when the source is made,
before a run touches the cluster. A page that still fails after the retries stops the run with
one line: what was indexed stays, and a rerun resumes (the ledger skips indexed ids).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from rsrt.search.errors import ConfigError, QueryError
from rsrt.search.filters import parse_bbox, parse_datetime_interval, parse_geometry
from rsrt.search.schema import ImageRecord

from ..raster import RasterOptions
from .base import SourceError, SourceItem, SourceProblem
from .stac import PREFERRED_ASSETS, StacSource

if TYPE_CHECKING:
    from ..assets import AssetOptions

# HTTP statuses worth asking again: the server is overloaded or briefly broken.
RETRY_STATUSES: tuple[int, ...] = (429, 500, 502, 503, 504)
MAX_PAGE_SIZE = 10_000  # the largest `limit` pystac-client (and most APIs) accept


class StacApiError(SourceError):
    """The API cannot be used as asked (bad URL, not a STAC API, unknown collection, bad search): fix and rerun."""

    exit_code = 2


class StacApiPageError(SourceError):
    """A page failed after the retries mid-run: what was indexed stays; running again resumes."""

    exit_code = 1


def _pystac_client() -> Any:
    try:
        import pystac_client
    except ImportError as exc:  # pragma: no cover - pystac-client is in the geo extra
        raise SourceError("reading a STAC API needs pystac-client: pip install 'rsrt-search[geo]'") from exc
    return pystac_client


def normalise_datetime(value: str) -> str:
    """A STAC `datetime` (an instant, `start/end`, `..` open ends, or `2020`/`2020-06` shorthands) in
    RFC 3339 form; `QueryError("datetime", …)` when it is not one, or when it ends before it starts."""
    from pystac_client.item_search import ItemSearch

    if not isinstance(value, str) or not value.strip():
        raise QueryError("datetime", "give an instant or an interval start/end")
    try:
        canonical = ItemSearch("http://127.0.0.1/search", datetime=value.strip()).get_parameters()["datetime"]
    except Exception as exc:  # pystac-client raises bare Exceptions and ValueErrors here
        raise QueryError("datetime", f"{value!r} is not a STAC datetime or interval ({exc})") from None
    parse_datetime_interval(canonical)  # start after end, both ends open
    return canonical


class StacApiSource(StacSource):
    """The items a STAC API's item search returns, as records (see the module docstring).

    `collections` restricts the search (each must exist: checked when made); `bbox` is
    west,south,east,north; `datetime` STAC interval syntax; `intersects` a GeoJSON geometry; `query`
    the query extension's dict and `filter` CQL2 (text or JSON), each only when the API conforms to
    it. `page_size` items per request, `max_items` at most this many items in all (None: all).
    `collection`, `asset_keys`, `raster` and `assets` mean what they mean for `StacSource`.
    `timeout` (seconds per request) and `retries` (attempts after the first on 429/5xx and
    connection failures, back-off `backoff` seconds doubling) are the API's, not the assets'.
    """

    kind = "stac-api"
    needs_captioning = True

    def __init__(
        self,
        url: str,
        *,
        collections: tuple[str, ...] | None = None,
        bbox: Any = None,
        datetime: str | None = None,
        intersects: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        filter: dict[str, Any] | str | None = None,
        page_size: int = 100,
        max_items: int | None = None,
        collection: str | None = None,
        asset_keys: tuple[str, ...] = PREFERRED_ASSETS,
        raster: RasterOptions | None = None,
        assets: AssetOptions | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        from ..assets import AssetOptions

        # What `StacSource._item` reads; `StacSource.__init__` is not called (it opens a file).
        self.collection = collection
        self.asset_keys = tuple(asset_keys)
        self.raster = raster or RasterOptions()
        self.assets = assets or AssetOptions()
        self._form = "api"

        self.url = _checked_url(url)
        self.collections = _checked_collections(collections)
        self.bbox = list(parse_bbox(bbox)) if bbox not in (None, "", []) else None
        self.datetime = normalise_datetime(datetime) if datetime not in (None, "") else None
        self.intersects = parse_geometry(intersects) if intersects not in (None, {}) else None
        if self.bbox is not None and self.intersects is not None:
            raise QueryError("intersects", "give a bbox or an intersects geometry, not both")
        if query is not None and not isinstance(query, dict):
            raise QueryError("query", "expected a JSON object such as {\"eo:cloud_cover\": {\"lt\": 10}}")
        self.query = query
        if filter is not None and not isinstance(filter, dict | str):
            raise QueryError("filter", "expected CQL2 text or a CQL2-JSON object")
        self.filter = filter or None
        if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ConfigError(f"--page-size {page_size}: must be between 1 and {MAX_PAGE_SIZE}")
        if max_items is not None and (not isinstance(max_items, int) or max_items < 1):
            raise ConfigError(f"--max-items {max_items}: must be 1 or more")
        if not timeout > 0 or retries < 0 or backoff < 0:
            raise ConfigError(f"STAC API timeout {timeout}s / {retries} retries: timeout must be > 0, retries >= 0")
        self.page_size = page_size
        self.max_items = max_items
        self.retries = retries
        self._client = self._open(timeout, retries, backoff)
        self._search = self._make_search()

    # ---------------------------------------------------------------------- opening

    def _open(self, timeout: float, retries: int, backoff: float) -> Any:
        """The pystac-client `Client`, after checking it is a STAC API with item search and the collections."""
        pystac_client = _pystac_client()
        from pystac_client.exceptions import APIError
        from pystac_client.stac_api_io import StacApiIO
        from urllib3.util.retry import Retry

        retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                      status_forcelist=RETRY_STATUSES, allowed_methods=None, respect_retry_after_header=True,
                      raise_on_status=False)
        io = StacApiIO(max_retries=retry, timeout=timeout)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client = pystac_client.Client.open(self.url, stac_io=io)
        except APIError as exc:
            status = getattr(exc, "status_code", None)
            if status is None:
                raise StacApiError(f"STAC API {self.url}: unreachable ({_reason(exc)})") from None
            raise StacApiError(f"STAC API {self.url}: not a STAC API (HTTP {status} for the landing page)") from None
        except Exception as exc:  # JSON that is no STAC catalog: ClientTypeError, KeyError, JSONDecodeError, …
            raise StacApiError(f"STAC API {self.url}: not a STAC API (the landing page is {_what(exc)})") from None
        if not client.get_conforms_to():
            raise StacApiError(f"STAC API {self.url}: not a STAC API (the landing page declares no conformsTo)")
        if not client.conforms_to("ITEM_SEARCH"):
            raise StacApiError(f"STAC API {self.url}: no item search (conformsTo lacks "
                               "https://api.stacspec.org/v1.0.0/item-search)")
        for name, given in (("QUERY", self.query), ("FILTER", self.filter)):
            if given is not None and not client.conforms_to(name):
                raise StacApiError(f"STAC API {self.url}: does not support --{name.lower()} (no {name.lower()} "
                                   "extension in conformsTo)")
        for collection_id in self.collections or ():
            try:
                found = client.get_collection(collection_id)
            except APIError as exc:
                raise StacApiError(f"STAC API {self.url}: cannot read collection {collection_id!r} "
                                   f"({_reason(exc)})") from None
            except Exception as exc:
                raise StacApiError(f"STAC API {self.url}: collection {collection_id!r} is not a STAC "
                                   f"collection ({_what(exc)})") from None
            if found is None:
                raise StacApiError(f"STAC API {self.url}: unknown collection {collection_id!r}")
        return client

    def _make_search(self) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._client.search(
                    max_items=self.max_items, limit=self.page_size, collections=self.collections, bbox=self.bbox,
                    intersects=self.intersects, datetime=self.datetime, query=self.query, filter=self.filter)
        except Exception as exc:  # a query/filter pystac-client cannot format
            raise StacApiError(f"STAC API {self.url}: bad search parameters ({_reason(exc)})") from None

    # ---------------------------------------------------------------------- Source

    def describe(self) -> str:
        parts = []
        if self.collections:
            parts.append(f"collections {','.join(self.collections)}")
        if self.bbox is not None:
            parts.append(f"bbox {','.join(f'{v:g}' for v in self.bbox)}")
        if self.intersects is not None:
            parts.append(f"intersects a {self.intersects.get('type')}")
        if self.datetime:
            parts.append(f"datetime {self.datetime}")
        if self.query:
            parts.append(f"query {json.dumps(self.query, separators=(',', ':'))}")
        if self.filter:
            parts.append(f"filter {self.filter if isinstance(self.filter, str) else json.dumps(self.filter)}")
        if self.max_items is not None:
            parts.append(f"at most {self.max_items} items")
        return f"STAC API {self.url}" + (f" ({'; '.join(parts)})" if parts else "")

    def count_hint(self) -> int | None:
        """The API's `numberMatched` (capped at `max_items`), when it gives one; None when chipping."""
        if self.raster.chip_size is not None:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                matched = self._search.matched()
        except Exception:  # a progress bar is not worth failing for
            return None
        if not isinstance(matched, int):
            return None
        return min(matched, self.max_items) if self.max_items is not None else matched

    def __iter__(self) -> Iterator[SourceItem]:
        seen: dict[str, str] = {}
        read = 0
        for features in self._pages():
            for data in features:
                read += 1
                href = self._item_href(data)
                group = self._item(data, href, None, f"search result {read}")
                for entry in group if isinstance(group, list) else [group]:
                    if isinstance(entry, ImageRecord):
                        if entry.image_id in seen:
                            yield SourceProblem(entry.image_id, f"duplicate image id {entry.image_id}, first in "
                                                f"{seen[entry.image_id]}", href)
                            continue
                        seen[entry.image_id] = href
                    yield entry

    def _pages(self) -> Iterator[list[Any]]:
        """The `features` of each page; a page that fails after the retries stops the run (resumable)."""
        pages = self._search.pages_as_dicts()
        number = 0
        while True:
            number += 1
            try:
                page = next(pages, None)
            except Exception as exc:  # APIError after the retries, a page that is not JSON, …
                raise StacApiPageError(
                    f"STAC API {self.url}: page {number} of the search failed after {self.retries} retries "
                    f"({_reason(exc)}); what was indexed stays: run the same command again to resume") from None
            if page is None:
                return
            features = page.get("features") if isinstance(page, dict) else None
            if not isinstance(features, list):
                raise StacApiPageError(f"STAC API {self.url}: page {number} of the search has no 'features' list")
            yield features

    def _item_href(self, data: Any) -> str:
        """The item's `self` link, else where the API serves it (`<url>/collections/<c>/items/<id>`)."""
        if isinstance(data, dict):
            for link in data.get("links") or []:
                if isinstance(link, dict) and link.get("rel") == "self" and isinstance(link.get("href"), str):
                    return link["href"]
            item_id, collection_id = data.get("id"), data.get("collection")
            if isinstance(item_id, str) and isinstance(collection_id, str):
                return f"{self.url}/collections/{quote(collection_id, safe='')}/items/{quote(item_id, safe='')}"
        return f"{self.url}/search"


# -------------------------------------------------------------------------- checks and messages


def _checked_url(url: str) -> str:
    parsed = urlparse(url.strip()) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StacApiError(f"STAC API {url!r}: expected an http:// or https:// URL of the API's landing page")
    return url.strip().rstrip("/")


def _checked_collections(collections: Any) -> tuple[str, ...] | None:
    if collections is None:
        return None
    if isinstance(collections, str):
        collections = collections.split(",")
    names = tuple(dict.fromkeys(str(c).strip() for c in collections))
    if not names or any(not name for name in names):
        raise QueryError("collections", "give one or more collection ids, comma-separated, none empty")
    return names


def _reason(exc: BaseException) -> str:
    """An exception in a few words: urllib3's 'Max retries exceeded … (Caused by …)' becomes the cause."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "Caused by" in text:
        cause = text.split("Caused by", 1)[1].strip(" ()")
        if "Connection refused" in cause:
            return "connection refused"
        if "timed out" in cause.lower():
            return "timed out"
        if "Name or service not known" in cause or "nodename nor servname" in cause:
            return "unknown host"
        text = cause
    status = getattr(exc, "status_code", None)
    if status is not None:
        text = f"HTTP {status}: {text}"
    return text[:200]


def _what(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return "not JSON"
    text = " ".join(str(exc).split())
    if "found type=" in text:
        return f"JSON of type {text.rsplit('found type=', 1)[1]}, not a STAC Catalog"
    return f"JSON but no STAC Catalog ({type(exc).__name__}: {text[:120]})"
