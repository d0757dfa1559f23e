"""Files a browser can load for an item: its thumbnail, and its source image when that is a local file.

`GET /thumbnails/{item_id}` answers the small JPEG the ingest stored in the item's document
(`fields.THUMBNAIL`, read by `Searcher.thumbnail`), with an ETag and `Cache-Control`.

`GET /assets/{item_id}/image` streams the item's source image from the server's disk, and only that:
the one input is the item id, the path is the `source_uri` *the indexed document names*, and it is
served only when it is an absolute local path or `file://` URI of a regular file with an image suffix
(JPEG, PNG, TIFF; after symlinks are resolved). Anything else is a 404 in the API's error shape —
an absent item, a missing file, a directory, a non-image file a caption file happened to name, a
relative path (relative to what the ingest saw, not to this server), and a remote URI: the item's
`image` asset links a remote image directly (`items.item_assets`), so this route never redirects to
one (no open redirect, and no request this server would make or vouch for).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse

from .. import fields
from ..searcher import Searcher
from .errors import ErrorBody, error_response

THUMBNAIL_CACHE_CONTROL = "public, max-age=3600"  # a re-ingest (--overwrite) may change it: revalidate by ETag
ASSET_CACHE_CONTROL = "public, max-age=3600"
# What the ingest reads as images (folder, STAC and caption sources): nothing else is ever served.
IMAGE_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".tif": "image/tiff; application=geotiff",
    ".tiff": "image/tiff; application=geotiff",
}
_ID_IN_MESSAGE = 200  # characters of an item id repeated in a 404's description


def install_file_routes(app: FastAPI, searcher: Callable[[], Searcher]) -> None:
    """Add `GET /thumbnails/{item_id}` and `GET /assets/{item_id}/image` to `app`.

    A failed read (the cluster down, the index gone) is raised as the searcher's `RsrtError`, like in
    every route: the app's error handlers (`errors.install_error_handlers`) answer it in the one shape;
    only the 404s of absent items and files are built here."""
    not_found = {404: {"model": ErrorBody, "description": "no such item, or it has no such file"}}

    @app.get("/thumbnails/{item_id:path}", name="get_thumbnail", tags=["files"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "the item's thumbnail (JPEG)"},
                        **not_found})
    def get_thumbnail(item_id: str, request: Request) -> Response:
        """The item's thumbnail, made at ingest (`rsrt ingest … --thumbnail-size`)."""
        jpeg = searcher().thumbnail(item_id)
        if jpeg is None:
            return error_response(404, "NotFound", f"item {_shown(item_id)} does not exist or has no thumbnail")
        etag = f'"{hashlib.sha256(jpeg).hexdigest()[:32]}"'
        headers = {"Cache-Control": THUMBNAIL_CACHE_CONTROL, "ETag": etag}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    @app.get("/assets/{item_id:path}/image", name="get_asset_image", tags=["files"], response_class=Response,
             responses={200: {"content": {media: {} for media in sorted(set(IMAGE_MEDIA_TYPES.values()))},
                              "description": "the item's source image, from the server's disk"}, **not_found})
    def get_asset_image(item_id: str) -> Response:
        """The item's source image when it is a local file (a remote one is linked by the item directly)."""
        hit = searcher().get_item(item_id)
        if hit is None:
            return error_response(404, "NotFound", f"item {_shown(item_id)} does not exist")
        found = local_image(hit.source.get(fields.SOURCE_URI))
        if found is None:
            return error_response(404, "NotFound", f"item {_shown(item_id)} has no image file on this server "
                                                   "(its image asset links a remote image, or the file is gone)")
        path, media_type = found
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": ASSET_CACHE_CONTROL})


def local_image(uri: object) -> tuple[Path, str] | None:
    """(the file, its media type) when `uri` is an absolute local path or `file://` URI of a readable
    regular file with an image suffix (checked after symlinks); None for everything else."""
    if not isinstance(uri, str) or not uri or "\x00" in uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            return None
        text = unquote(parts.path)
    elif parts.scheme == "" or (len(parts.scheme) == 1 and uri[1:3] in (":\\", ":/")):  # C:\ on Windows
        text = uri
    else:
        return None  # http(s), s3, …: linked by the item, never fetched or redirected to here
    path = Path(text)
    if not path.is_absolute() or "\x00" in text:
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop
        return None
    media_type = IMAGE_MEDIA_TYPES.get(resolved.suffix.lower())
    if media_type is None or IMAGE_MEDIA_TYPES.get(path.suffix.lower()) is None:
        return None
    if not resolved.is_file() or not os.access(resolved, os.R_OK):
        return None
    return resolved, media_type


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether a client's `If-None-Match` names this ETag (or `*`): it has the thumbnail already."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _shown(item_id: str) -> str:
    text = item_id if len(item_id) <= _ID_IN_MESSAGE else item_id[:_ID_IN_MESSAGE] + "…"
    return repr(text)


__all__ = ["IMAGE_MEDIA_TYPES", "install_file_routes", "local_image"]
