"""`POST /search/image`: search by an example image over HTTP, as `rsrt search --image` does.

The VLM turns the uploaded image into query text with the query prompt (`QUERY_PROMPT`, the same
fields and wording as the archive's captions), exactly as the CLI's `_describe_image` does, and
that text runs as a T2T search (dense, lexical or hybrid) with the usual filters. The upload is
checked before the VLM is asked: its size (`ImageQueryLimits.max_bytes`, 413), that it is a JPEG,
PNG or TIFF (the image types ingest reads), its pixel count (Pillow's decompression-bomb threshold,
`Image.MAX_IMAGE_PIXELS`, before any pixel is decoded) and a full decode (a truncated file is 400,
not a VLM call on half a picture). Every refusal names `image` in the API's error shape.

A VLM that fails (down, overloaded, timing out) is 503 with `Retry-After`; its address never reaches
the client (the captioner's messages name its URL: they go to the server log only). Without a
configured captioner the route answers 501 saying how to configure one.

Results are one page (no `next` link): paging would ask the VLM again for every page.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError

from rsrt.ingest.captioners import Captioner, CaptionerError, CaptionFormatError, ImageInput, ImageLoadError

from .. import request as search_request
from ..errors import CaptionerNotConfigured, CaptionerUnavailable, ImageTooLarge, QueryError, RsrtError
from ..request import Mode
from ..searcher import Searcher
from .errors import ErrorBody
from .hardening import DEFAULT_MAX_IMAGE_BYTES, IMAGE_QUERY_PATH
from .items import GEOJSON, GeoJSONResponse, to_item
from .params import SearchParams, SearchPolicy, parse_search

log = logging.getLogger("rsrt.api")
# The image types ingest reads (`IMAGE_EXTENSIONS`: .jpg .jpeg .png .tif .tiff), as Pillow names them
IMAGE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "TIFF"})
T = TypeVar("T")


@dataclass(frozen=True)
class ImageQueryLimits:
    """What an image query may cost: upload size, pixels, and the search policy of `/search`."""

    search: SearchPolicy
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's bomb warning threshold (ingest's too)


def once(factory: Callable[[], T]) -> Callable[[], T]:
    """`factory`, called the first time only (thread-safe): a captioner or searcher is built once."""
    lock = threading.Lock()
    built: list[T] = []

    def get() -> T:
        with lock:
            if not built:
                built.append(factory())
            return built[0]

    return get


def read_upload(upload: UploadFile, limits: ImageQueryLimits) -> bytes:
    """The uploaded file's bytes, at most `max_bytes` of them (413 naming `image` past that)."""
    data = upload.file.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageTooLarge("image", f"the file is larger than the limit of {limits.max_bytes} bytes")
    if not data:
        raise QueryError("image", "the file is empty")
    return data


def check_image(data: bytes, limits: ImageQueryLimits) -> tuple[str, int, int]:
    """(format, width, height) of an upload that is a JPEG/PNG/TIFF within the pixel limit.

    Only the header is read here: a decompression bomb is refused before its pixels are decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            fmt, (width, height) = opened.format or "", opened.size
    except Image.DecompressionBombError as exc:  # Pillow refuses at open past twice its warning threshold
        raise ImageTooLarge("image", f"has more than the {limits.max_pixels} pixels this server decodes "
                            f"(a decompression bomb, or a whole scene: send a chip): {exc}") from None
    except UnidentifiedImageError:
        raise QueryError("image", "is not a readable JPEG, PNG or TIFF image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise QueryError("image", f"is corrupt ({exc})") from None
    if fmt not in IMAGE_FORMATS:
        raise QueryError("image", f"is a {fmt} image; send a JPEG, PNG or TIFF")
    if width * height > limits.max_pixels:
        raise ImageTooLarge("image", f"has {width}x{height} pixels, more than the {limits.max_pixels} pixels this "
                            "server decodes (a decompression bomb, or a whole scene: send a chip)")
    return fmt, width, height


def describe_image(captioner: Captioner, data: bytes) -> str:
    """The query text for an image, as `rsrt search --image` makes it (the query prompt, labelled text)."""
    try:
        return captioner.describe(ImageInput(image_id="query", data=data)).labelled_text()
    except ImageLoadError as exc:  # the full decode: truncated or corrupt pixel data
        detail = str(exc).split(" is corrupt", 1)[-1].lstrip(": ") or "cannot be decoded"
        raise QueryError("image", f"is corrupt or truncated ({detail})") from None
    except CaptionFormatError as exc:
        log.warning("image query: the VLM gave no usable description: %s", exc)
        raise CaptionerUnavailable("the image captioner (VLM) gave no usable description of the image; "
                                   "try again later") from None
    except CaptionerError as exc:  # names the VLM's URL: for the log, not for the client
        log.warning("image query: the VLM failed: %s", exc)
        raise CaptionerUnavailable("the image captioner (VLM) is unavailable; try again later") from None


def _started(captioner: Callable[[], Captioner]) -> Captioner:
    """The captioner, built on first use; a failure to build it is the server's setup, said so."""
    try:
        return captioner()
    except RsrtError as exc:
        log.error("image query: the captioner cannot start: %s", exc)
        raise CaptionerUnavailable("the image captioner (VLM) cannot start; see the server log") from None


def _collections(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",")] if value is not None else None


def install_image_query_route(app: FastAPI, searcher: Callable[[], Searcher],
                              captioner: Callable[[], Captioner] | None, limits: ImageQueryLimits) -> None:
    """Add `POST /search/image` to `app` (the app `create_app` returns)."""
    if importlib.util.find_spec("python_multipart") is None:  # FastAPI refuses File/Form routes without it
        log.warning("python-multipart is not installed: POST %s answers 501", IMAGE_QUERY_PATH)
        missing = CaptionerNotConfigured("image queries need the python-multipart package on the server "
                                         "(pip install 'rsrt-search[http]')")

        @app.post(IMAGE_QUERY_PATH, name="search_image", tags=["search"], include_in_schema=False)
        def no_multipart() -> JSONResponse:
            raise missing

        return
    policy = limits.search
    not_configured = CaptionerNotConfigured(
        "image queries need a VLM: start `rsrt serve` with --captioner openai --model NAME --vlm-url URL "
        "(an OpenAI-compatible server) or --captioner transformers --model PATH")

    @app.post(IMAGE_QUERY_PATH, name="search_image", tags=["search"], responses={
        200: {"content": {GEOJSON: {}}, "description": "a FeatureCollection of STAC Items"},
        400: {"model": ErrorBody, "description": "the image or a parameter is invalid; `field` names it"},
        413: {"model": ErrorBody, "description": "the image is larger than the server's limit"},
        501: {"model": ErrorBody, "description": "no VLM is configured for image queries"},
        503: {"model": ErrorBody, "description": "the VLM or OpenSearch is unavailable (Retry-After)"}})
    def search_image(
        request: Request,
        image: Annotated[UploadFile, File(description="the query image: JPEG, PNG or TIFF")],
        mode: Annotated[str | None, Form(description="dense, lexical or hybrid")] = None,
        limit: Annotated[int | None, Form(description="items per page (clamped to the server's maximum)")] = None,
        collections: Annotated[str | None, Form(description="comma-separated collection ids")] = None,
        bbox: Annotated[str | None, Form(description="west,south,east,north (WGS84)")] = None,
        datetime: Annotated[str | None, Form(description="instant, or start/end with '..' open ends")] = None,
    ) -> JSONResponse:
        """Search by an example image: a VLM describes it (rsrt's query prompt), the text runs as T2T."""
        if captioner is None:
            raise not_configured
        chosen = mode or policy.default_mode
        if chosen not in {m.value for m in Mode}:
            raise QueryError("mode", f"{chosen!r} is not one of {', '.join(m.value for m in Mode)}")
        size = min(limit if limit is not None else 10, policy.max_limit)
        if size < 1:
            raise QueryError("limit", "must be at least 1")
        # the filters are checked before the VLM is asked: a bad bbox must not cost a VLM call
        filters = parse_search(SearchParams(bbox=bbox, datetime=datetime, collections=_collections(collections),
                                            limit=size), policy, lambda *_: 0).filters
        data = read_upload(image, limits)
        fmt, width, height = check_image(data, limits)
        text = describe_image(_started(captioner), data)
        window = policy.window_for(chosen)
        results = searcher().search(search_request.SearchRequest(
            text, chosen, min(size, window), 0, filters, candidates=window, fusion_site=policy.fusion_site,
            embed=policy.embed))
        return GeoJSONResponse(_answer(request, results, size, {"format": fmt, "width": width, "height": height}))


def _answer(request: Request, results: Any, limit: int, image: dict[str, Any]) -> dict[str, Any]:
    """The FeatureCollection `/search` answers, one page; links built from the root (the public URL)."""
    root = str(request.base_url)

    def collection_href(collection_id: str) -> str:
        return f"{root}collections/{quote(collection_id, safe='')}"

    def item_href(hit: Any) -> str:
        collection = hit.source.get("collection")
        if collection:
            return f"{collection_href(str(collection))}/items/{quote(hit.image_id, safe='')}"
        return f"{root}search?ids={quote(hit.image_id, safe='')}"

    features = [to_item(hit.source, hit.image_id, item_href(hit), root, hit=hit, rank=hit.rank,
                        collection_href=collection_href) for hit in results.hits]
    return {
        "type": "FeatureCollection",
        "features": features,
        "links": [{"rel": "root", "href": root, "type": "application/json"}],
        "numberMatched": results.total,
        "numberReturned": len(features),
        "context": {"returned": len(features), "limit": limit, "matched": results.total},
        "rsrt:query": {"q": results.query, "mode": results.mode, "offset": 0, "image": image,
                       "took_ms": results.took_ms, "hybrid_backend": results.fusion_site},
    }


__all__ = ["IMAGE_FORMATS", "CaptionerNotConfigured", "CaptionerUnavailable", "ImageQueryLimits",
           "check_image", "describe_image", "install_image_query_route", "once", "read_upload"]

