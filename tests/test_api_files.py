"""`GET /thumbnails/{id}` and `GET /assets/{id}/image` on a real node, over a real uvicorn.

Raw HTTP (http.client) so that `../`, encoded and absolute-path ids reach the server as sent: an
HTTP client library would normalise them away before they could be tried.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from PIL import Image

from conftest import SAMPLE_IMAGES, build_index, serving
from rsrt.ingest.thumbnails import ThumbnailOptions, make_thumbnail
from rsrt.search.api import create_app
from rsrt.search.api.files import install_file_routes
from rsrt.search.schema import ImageRecord, Variant
from rsrt.search.searcher import Searcher

pytestmark = pytest.mark.integration

SAMPLES = sorted(SAMPLE_IMAGES.glob("*.jpg"))
SECRET = "this file must never be served\n"


def _record(image_id: str, source_uri: str, thumbnail: bytes | None = None) -> ImageRecord:
    return ImageRecord(image_id, source_uri=source_uri, variants=[Variant(caption=f"an airport {image_id}")],
                       thumbnail=thumbnail)


@pytest.fixture(scope="module")
def served(tmp_path_factory, os_client):
    """An index whose documents name local images, a remote one, and paths that must not be served."""
    import uuid

    root = tmp_path_factory.mktemp("files")
    photo = root / "photo one.jpg"
    shutil.copy(SAMPLES[0], photo)
    png = root / "scene.png"
    with Image.open(SAMPLES[1]) as image:
        image.save(png)
        jpeg = make_thumbnail(image.convert("RGB"), ThumbnailOptions())
    secret = root / "secret.txt"
    secret.write_text(SECRET)
    disguised = root / "disguised.jpg"  # a symlink with an image name to a file that is not one
    os.symlink(secret, disguised)
    folder = root / "folder.jpg"
    folder.mkdir()
    records = [
        _record("photo", photo.as_uri(), jpeg),
        _record("a/b c", str(png)),  # a plain absolute path, an id that needs quoting
        _record("remote", "https://example.org/scene.jpg"),
        _record("gone", (root / "gone.jpg").as_uri()),
        _record("secret", secret.as_uri()),
        _record("disguised", disguised.as_uri()),
        _record("folder", folder.as_uri()),
        _record("relative", "photo one.jpg"),
        _record("other-host", f"file://elsewhere{photo}"),
    ]
    name = f"rsrt-test-files-{uuid.uuid4().hex[:8]}"
    build_index(os_client, name, records, root / "ledger")
    app = create_app(client=os_client, index=name)
    install_file_routes(app, lambda: Searcher(os_client, name))
    missing = create_app(client=os_client, index=f"{name}-missing")
    install_file_routes(missing, lambda: Searcher(os_client, f"{name}-missing"))
    try:
        with serving(app) as url, serving(missing) as missing_url:
            yield {"url": url, "missing_url": missing_url, "photo": photo, "png": png, "jpeg": jpeg}
    finally:
        for concrete in os_client.indices.get(index=f"{name}*", params={"expand_wildcards": "all"}):
            os_client.indices.delete(index=concrete)


def _get(base: str, raw_path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET exactly `raw_path` (not normalised, not re-quoted)."""
    where = urlsplit(base)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.request("GET", raw_path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _error(status: int, headers: dict[str, str], body: bytes, expected: int = 404) -> dict[str, Any]:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"code", "field", "description"}
    return error


def test_a_thumbnail_is_served_as_jpeg_with_an_etag_and_cache_control(served):
    status, headers, body = _get(served["url"], "/thumbnails/photo")
    assert status == 200 and body == served["jpeg"]
    assert headers["content-type"] == "image/jpeg"
    assert "max-age" in headers["cache-control"]
    etag = headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    again, again_headers, nothing = _get(served["url"], "/thumbnails/photo", {"If-None-Match": etag})
    assert (again, nothing, again_headers["etag"]) == (304, b"", etag)
    changed, _, body = _get(served["url"], "/thumbnails/photo", {"If-None-Match": '"something-else"'})
    assert changed == 200 and body == served["jpeg"]


def test_no_thumbnail_and_no_item_are_404_in_the_error_shape(served):
    error = _error(*_get(served["url"], "/thumbnails/remote"))
    assert error["code"] == "NotFound" and "'remote'" in error["description"]
    error = _error(*_get(served["url"], "/thumbnails/no-such-item"))
    assert error["code"] == "NotFound"
    assert _error(*_get(served["url"], "/thumbnails/" + "x" * 5000))["description"].count("x") < 300


def test_a_local_source_image_is_streamed_and_nothing_else(served):
    status, headers, body = _get(served["url"], "/assets/photo/image")
    assert status == 200 and body == served["photo"].read_bytes()
    assert headers["content-type"] == "image/jpeg" and "max-age" in headers["cache-control"]
    status, headers, body = _get(served["url"], f"/assets/{quote('a/b c', safe='')}/image")
    assert status == 200 and body == served["png"].read_bytes() and headers["content-type"] == "image/png"
    status, _, body = _get(served["url"], "/assets/a/b%20c/image")  # the id's slash unquoted: the same item
    assert status == 200 and body == served["png"].read_bytes()
    # a remote image is linked by the item itself; a missing file, a non-image (also behind an image-named
    # symlink), a directory, a relative path and another host's file:// are not served
    for image_id in ("remote", "gone", "secret", "disguised", "folder", "relative", "other-host", "no-such-item"):
        status, headers, body = _get(served["url"], f"/assets/{image_id}/image")
        error = _error(status, headers, body)
        assert error["code"] == "NotFound", image_id
        assert SECRET.encode() not in body


@pytest.mark.parametrize("raw_path", [
    "/assets/../../../../etc/passwd/image",
    "/assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd/image",
    "/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd/image",
    "/assets//etc/passwd/image",
    "/assets/%2Fetc%2Fpasswd/image",
    "/assets/file:%2F%2F%2Fetc%2Fpasswd/image",
    "/assets/photo/../secret/image",
    "/thumbnails/../../../../etc/passwd",
    "/thumbnails/..%2F..%2Fetc%2Fpasswd",
    "/thumbnails//etc/passwd",
    "/thumbnails/%2Fetc%2Fpasswd",
])
def test_path_traversal_and_absolute_paths_as_ids_are_404(served, raw_path):
    status, headers, body = _get(served["url"], raw_path)
    _error(status, headers, body)
    assert b"root:" not in body and SECRET.encode() not in body


def test_a_secret_next_to_a_served_image_is_not_reachable_by_its_name(served):
    # the only input is the id: naming a file (even one beside a served image) finds no item
    for raw_path in (f"/assets/{quote(str(served['photo'].parent / 'secret.txt'), safe='')}/image",
                     f"/assets/{served['photo'].parent}/secret.txt/image"):
        _error(*_get(served["url"], raw_path))


def test_a_missing_index_is_an_error_answer_not_a_crash(served):
    for raw_path in ("/thumbnails/photo", "/assets/photo/image"):
        status, _, body = _get(served["missing_url"], raw_path)
        assert status >= 400 and status != 500, body
        error = json.loads(body)
        assert set(error) == {"code", "field", "description"}
        assert "127.0.0.1" not in error["description"]


def test_the_routes_are_in_the_openapi_document(served):
    status, _, body = _get(served["url"], "/openapi.json")
    assert status == 200
    paths = json.loads(body)["paths"]
    assert "/thumbnails/{item_id}" in paths and "/assets/{item_id}/image" in paths
    assert Path(served["photo"]).exists()
