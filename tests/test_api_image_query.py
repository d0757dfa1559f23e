"""`POST /search/image` as a portal uses it: a real uvicorn, the real node, the loopback VLM, real JPEGs.

The loopback VLM (`vlm_server.ChatCompletions`) answers with text naming the sha1 of the picture it
was sent, and the index holds, for each sample image, the captions that VLM writes for it: a lexical
image query must therefore find the very image that was uploaded, which it can only do if the
upload reached the VLM intact and its description became the query text.
"""

from __future__ import annotations

import hashlib
import io
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import SAMPLE_IMAGES, build_index, serve_subprocess, serving
from rsrt.search.api import ApiConfig
from rsrt.search.api.hardening import HardeningConfig
from rsrt.search.api.server import CaptionerSettings, ServerConfig, build_server_app
from rsrt.search.schema import ImageRecord, Variant
from vlm_server import ChatCompletions

pytestmark = pytest.mark.integration

IMAGES = sorted(SAMPLE_IMAGES.glob("*.jpg"))


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _record(path: Path) -> ImageRecord:
    """The captions the loopback VLM writes for this image (its variants name the picture's sha1)."""
    short = _digest(path)[:8]
    variants = [Variant(one_sentence=f"Aerial scene {short}, view {i}.",
                        feature=f"large area (center); {i} small buildings (NE)",
                        caption=f"An aerial view {short} with {i} small buildings in the northeast.")
                for i in range(1, 6)]
    return ImageRecord(image_id=path.stem, source_uri=str(path), collection="rsicd-sample", variants=variants)


@pytest.fixture(scope="module")
def sample_index(os_client, tmp_path_factory) -> Iterator[str]:
    name = "rsrt-test-image-query"
    if os_client.indices.exists(index=f"{name}*"):
        for concrete in os_client.indices.get(index=f"{name}*"):
            os_client.indices.delete(index=concrete)
    build_index(os_client, name, [_record(path) for path in IMAGES], tmp_path_factory.mktemp("ledger"))
    yield name
    for concrete in os_client.indices.get(index=f"{name}*"):
        os_client.indices.delete(index=concrete)


@pytest.fixture
def vlm() -> Iterator[ChatCompletions]:
    server = ChatCompletions()
    yield server
    server.stop()


def _app(os_client, index: str, vlm_url: str | None, **hardening: Any):
    captioner = (CaptionerSettings(kind="openai", model="test-vlm", vlm_url=vlm_url, retries=0, timeout=10)
                 if vlm_url else CaptionerSettings())
    return build_server_app(os_client, ServerConfig(api=ApiConfig(index=index, max_limit=20),
                                                    hardening=HardeningConfig(**hardening), captioner=captioner))


@pytest.fixture
def api(os_client, sample_index, vlm) -> Iterator[str]:
    with serving(_app(os_client, sample_index, vlm.base_url, max_image_bytes=100_000)) as base:
        yield base


def _post(base: str, data: bytes, filename: str = "query.jpg", media_type: str = "image/jpeg",
          **form: Any) -> httpx.Response:
    return httpx.post(f"{base}/search/image", files={"image": (filename, data, media_type)},
                      data={key: str(value) for key, value in form.items()}, timeout=60)


def _is_error(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "field", "description"}, body
    assert body["field"] == field, body
    return body


def test_an_uploaded_image_finds_itself_through_the_vlm_description(api, vlm):
    for path in IMAGES[:3]:
        response = _post(api, path.read_bytes(), path.name, mode="lexical", limit=3)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/geo+json")
        body = response.json()
        assert body["type"] == "FeatureCollection"
        assert body["features"][0]["id"] == path.stem  # the description named this very picture
        assert body["numberReturned"] == len(body["features"]) <= 3
        query = body["rsrt:query"]
        assert _digest(path)[:8] in query["q"] and query["q"].startswith("Summary: ")  # labelled, as the CLI does
        assert query["mode"] == "lexical" and query["image"]["format"] == "JPEG"
        first = body["features"][0]
        assert first["collection"] == "rsicd-sample" and first["properties"]["rsrt:rank"] == 1
        assert all(link["href"].startswith(api) for link in first["links"])
    # the JPEGs (within the 1024-pixel side) reached the VLM byte for byte
    assert vlm.answered == [_digest(path) for path in IMAGES[:3]]


def test_the_default_mode_and_the_filters_apply(api, vlm):
    path = IMAGES[0]
    found = _post(api, path.read_bytes())
    assert found.status_code == 200, found.text
    assert found.json()["rsrt:query"]["mode"] == "hybrid"  # the server's default mode
    assert path.stem in [feature["id"] for feature in found.json()["features"]]
    other = _post(api, path.read_bytes(), mode="lexical", collections="another-collection")
    assert other.status_code == 200 and other.json()["features"] == []
    clamped = _post(api, path.read_bytes(), mode="lexical", limit=500)
    assert clamped.status_code == 200 and clamped.json()["context"]["limit"] == 20  # clamped, not refused
    asked = len(vlm.answered)
    _is_error(_post(api, path.read_bytes(), bbox="10,20,5"), 400, "bbox")
    _is_error(_post(api, path.read_bytes(), datetime="yesterday"), 400, "datetime")
    _is_error(_post(api, path.read_bytes(), mode="fuzzy"), 400, "mode")
    assert len(vlm.answered) == asked  # a bad parameter costs no VLM call


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a few bytes of data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def test_bad_uploads_are_refused_naming_image_before_the_vlm_is_asked(api, vlm):
    jpeg = IMAGES[0].read_bytes()
    body = _is_error(_post(api, b"just some text, not a picture", "notes.txt", "text/plain"), 400, "image")
    assert "JPEG, PNG or TIFF" in body["description"]
    body = _is_error(_post(api, jpeg[: len(jpeg) // 2]), 400, "image")
    assert "image file is truncated" in body["description"]  # the full decode, as ingest does it
    # past Pillow's warning threshold (89 Mpx): refused from the header, before a pixel is decoded
    body = _is_error(_post(api, _png_header_only(10_000, 10_000), "bomb.png", "image/png"), 413, "image")
    assert "10000x10000" in body["description"] and "decompression bomb" in body["description"]
    body = _is_error(_post(api, _png_header_only(40_000, 40_000), "bomb.png", "image/png"), 413, "image")
    assert "decompression bomb" in body["description"]
    gif = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(gif, format="GIF")
    body = _is_error(_post(api, gif.getvalue(), "q.gif", "image/gif"), 400, "image")
    assert "GIF" in body["description"]
    _is_error(_post(api, b""), 400, "image")
    missing = httpx.post(f"{api}/search/image", data={"mode": "lexical"}, timeout=30)
    _is_error(missing, 400, "image")
    assert vlm.answered == []


def test_an_upload_over_the_size_limit_is_413_naming_image(api, vlm):
    # within the body allowance (the limit + 64 KiB of form): the route's own check
    big = IMAGES[0].read_bytes() + b"\0" * (100_001 - len(IMAGES[0].read_bytes()))
    body = _is_error(_post(api, big), 413, "image")
    assert "100000 bytes" in body["description"]
    # far over: refused by the body limit while it arrives
    _is_error(_post(api, b"\0" * 3_000_000), 413, "image")
    assert vlm.answered == []


def test_without_a_captioner_image_queries_say_how_to_configure_one(os_client, sample_index):
    with serving(_app(os_client, sample_index, None)) as base:
        body = _is_error(_post(base, IMAGES[0].read_bytes()), 501, None)
    assert "--captioner" in body["description"] and "--vlm-url" in body["description"]


def test_a_vlm_outage_is_503_with_retry_after_and_no_internal_address(os_client, sample_index):
    overloaded = ChatCompletions(healthy_answers=0)  # answers HTTP 503 to every request
    stopped = ChatCompletions()
    stopped_port = stopped.port
    stopped.stop()  # nothing listens there any more: connection refused
    try:
        for url, port in ((overloaded.base_url, overloaded.port), (f"http://127.0.0.1:{stopped_port}/v1",
                                                                   stopped_port)):
            with serving(_app(os_client, sample_index, url)) as base:
                response = _post(base, IMAGES[0].read_bytes())
            body = _is_error(response, 503, None)
            assert int(response.headers["retry-after"]) > 0
            assert "captioner" in body["description"]
            assert str(port) not in response.text and "127.0.0.1" not in response.text
        assert overloaded.failed >= 1
    finally:
        overloaded.stop()


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_rsrt_serve_takes_the_public_url_limits_and_captioner_flags(cli_env, sample_index, vlm, tmp_path):
    public = "https://portal.example.org/stac/"
    args = ["--index", sample_index, "--public-url", public, "--max-body-bytes", "4096", "--max-image-bytes",
            "100000", "--captioner", "openai", "--model", "test-vlm", "--vlm-url", vlm.base_url, "--vlm-retries", "0"]
    with serve_subprocess(args, cli_env, tmp_path / "serve.log") as base:
        path = IMAGES[1]
        found = _post(base, path.read_bytes(), path.name, mode="lexical", limit=2)
        assert found.status_code == 200, found.text
        assert found.json()["features"][0]["id"] == path.stem
        hrefs = [link["href"] for feature in found.json()["features"] for link in feature["links"]]
        assert hrefs and all(href.startswith(public) for href in hrefs)
        landing = httpx.get(f"{base}/", headers={"Host": "evil.example.com"}, timeout=30)
        assert landing.status_code == 200 and "evil.example.com" not in landing.text
        _is_error(httpx.post(f"{base}/search", json={"q": "x" * 5000}, timeout=30), 413, None)
        _is_error(_post(base, path.read_bytes() + b"\0" * 100_000), 413, "image")


@pytest.mark.parametrize(("flags", "named"), [
    (["--captioner", "openai", "--vlm-url", "http://127.0.0.1:9/v1"], "--model"),
    (["--captioner", "openai", "--model", "m"], "--vlm-url"),
    (["--vlm-timeout", "5"], "--captioner"),
    (["--public-url", "portal.example.org"], "public URL"),
    (["--trusted-host", "evil.com/path"], "trusted host"),
])
def test_rsrt_serve_refuses_bad_flags_in_one_line(cli_env, flags, named):
    env = {key: value for key, value in cli_env.items() if key != "RSRT_VLM_URL"}
    done = subprocess.run([str(Path(sys.executable).parent / "rsrt"), "serve", "--port", str(_free_port()), *flags],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
