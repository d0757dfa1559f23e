"""OpenAICompatibleCaptioner against a real chat-completions server on 127.0.0.1.

The server (stdlib http.server, one thread per request) checks every request's shape, decodes the
image, counts requests and in-flight requests, and is scripted per image: valid JSON, prose, a
wrong variant count, 429 with Retry-After, 5xx, a malformed body, an answer slower than the timeout.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE_IMAGES
from rsrt.ingest.captioners import QUERY_PROMPT, ImageInput, OpenAICompatibleCaptioner, make_captioner
from rsrt.ingest.captioners.openai_http import parse_retry_after

SAMPLES = SAMPLE_IMAGES
SAMPLE_FILES = sorted(SAMPLES.glob("*.jpg"))
API_KEY = "sk-test-0123456789abcdef"


@dataclass
class Reply:
    """What the server answers to one request for one image."""

    status: int = 200
    content: str | None = None  # the assistant's text; None: a valid answer describing the image
    body: Any = None  # a JSON body instead of a chat completion
    raw: bytes | None = None  # raw bytes instead of JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    finish_reason: str = "stop"


def variants_for(tag: str, count: int = 5) -> list[dict[str, str]]:
    return [
        {
            "one_sentence": f"Variant {i} of an aerial image {tag}.",
            "feature": f"large area (center, {tag}); {i} small objects (NE)",
            "caption": f"The image {tag} shows a large area in the center and {i} small objects in the northeast.",
        }
        for i in range(1, count + 1)
    ]


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class FakeVLM:
    """A chat-completions endpoint that validates requests and follows a per-image script."""

    def __init__(self, api_key: str | None = API_KEY, model: str = "tiny-vl", delay: float = 0.0) -> None:
        self.api_key = api_key
        self.model = model
        self.delay = delay
        self.script: dict[str, list[Reply]] = {}  # sha1 of the image bytes → replies, one per request
        self.hits: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeVLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def for_image(self, data: bytes, *replies: Reply) -> None:
        self.script[sha1(data)] = list(replies)

    def hits_for(self, data: bytes) -> int:
        return self.hits[sha1(data)]

    def requests_for(self, data: bytes) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["key"] == sha1(data)]

    # -- the protocol ---------------------------------------------------------------------------

    def _check(self, handler: BaseHTTPRequestHandler, body: Any) -> tuple[str, str, Image.Image, bytes]:
        """Validate one request like a strict server would; returns (problem, prompt, image, bytes)."""
        if handler.path != "/v1/chat/completions":
            return f"path {handler.path}", "", None, b""  # type: ignore[return-value]
        if handler.headers.get("content-type", "").split(";")[0] != "application/json":
            return "content-type", "", None, b""  # type: ignore[return-value]
        if body.get("model") != self.model:
            return f"model {body.get('model')!r}", "", None, b""  # type: ignore[return-value]
        messages = body.get("messages")
        if not (isinstance(messages, list) and len(messages) == 1 and messages[0].get("role") == "user"):
            return "messages", "", None, b""  # type: ignore[return-value]
        parts = messages[0]["content"]
        texts = [p["text"] for p in parts if p.get("type") == "text"]
        urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
        if len(texts) != 1 or len(urls) != 1:
            return "expected one text and one image_url part", "", None, b""  # type: ignore[return-value]
        prefix = "data:image/jpeg;base64,"
        if not urls[0].startswith(prefix):
            return f"image url {urls[0][:40]!r}", "", None, b""  # type: ignore[return-value]
        data = base64.b64decode(urls[0][len(prefix) :], validate=True)
        image = Image.open(io.BytesIO(data))
        if image.format != "JPEG":
            return f"image format {image.format}", "", None, b""  # type: ignore[return-value]
        image.load()
        return "", texts[0], image, data

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(raw)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, raw: bytes) -> None:
                given = self.headers.get("authorization")
                if server.api_key is not None and given != f"Bearer {server.api_key}":
                    key = (given or "").removeprefix("Bearer ")
                    message = {"error": {"message": f"Incorrect API key provided: {key}", "code": "invalid_api_key"}}
                    return self._send(401, json.dumps(message).encode())
                if server.api_key is None and given is not None:
                    server.problems.append("unexpected authorization header")
                body = json.loads(raw)
                problem, prompt, image, data = server._check(self, body)
                if problem:
                    server.problems.append(problem)
                    return self._send(400, json.dumps({"error": {"message": problem}}).encode())
                key = sha1(data)
                with server._lock:
                    server.hits[key] += 1
                    number = server.hits[key]
                    replies = server.script.get(key) or [Reply()]
                    reply = replies[min(number, len(replies)) - 1]
                    server.requests.append(
                        {
                            "key": key,
                            "time": time.monotonic(),
                            "body": {k: v for k, v in body.items() if k != "messages"},
                            "prompt": prompt,
                            "size": image.size,
                            "authorization": self.headers.get("authorization"),
                        }
                    )
                time.sleep(reply.delay or server.delay)
                if reply.raw is not None:
                    return self._send(reply.status, reply.raw, reply.headers)
                if reply.body is not None:
                    return self._send(reply.status, json.dumps(reply.body).encode(), reply.headers)
                content = reply.content
                if content is None:
                    tag = f"{image.size[0]}x{image.size[1]} mean {int(np.asarray(image).mean())}"
                    if prompt == QUERY_PROMPT:
                        content = json.dumps(variants_for(f"query {tag}", 1)[0])
                    else:
                        content = json.dumps({"variants": variants_for(tag)})
                completion = {
                    "id": f"chatcmpl-{number}",
                    "object": "chat.completion",
                    "model": server.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": reply.finish_reason,
                        }
                    ],
                }
                return self._send(reply.status, json.dumps(completion).encode(), reply.headers)

        return Handler


@pytest.fixture
def server() -> Iterator[FakeVLM]:
    fake = FakeVLM().start()
    try:
        yield fake
    finally:
        fake.stop()


def captioner_for(server: FakeVLM, **options: Any) -> OpenAICompatibleCaptioner:
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "backoff_base": 0.02,
        "backoff_max": 0.1,
        "timeout": 10.0,
        "concurrency": 2,
        **options,
    }
    return OpenAICompatibleCaptioner(server.base_url, server.model, **settings)


def jpeg(seed: int, size: tuple[int, int] = (32, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def wrong_count() -> str:
    return json.dumps({"variants": variants_for("x", 3)})


# -- the happy path ------------------------------------------------------------------------------


def test_all_sample_images_are_captioned_within_the_concurrency_bound(server):
    assert len(SAMPLE_FILES) == 8
    server.delay = 0.3
    images = [ImageInput.from_path(path) for path in SAMPLE_FILES]
    with captioner_for(server, concurrency=3) as captioner:
        started = time.monotonic()
        results = captioner.caption(images)
        elapsed = time.monotonic() - started
    assert server.problems == []
    assert [r.image_id for r in results] == [p.stem for p in SAMPLE_FILES]
    assert all(r.ok and r.attempts == 1 and len(r.variants) == 5 for r in results), [r.error for r in results]
    for path, result in zip(SAMPLE_FILES, results, strict=True):
        with Image.open(path) as original:
            size = f"{original.size[0]}x{original.size[1]}"
        assert size in result.variants[0].one_sentence  # the server decoded this very image
        assert server.hits_for(path.read_bytes()) == 1  # JPEG files are sent byte for byte
    assert len(server.requests) == 8
    assert 2 <= server.max_in_flight <= 3
    assert elapsed < 8 * 0.3  # concurrency actually happened
    for request in server.requests:
        assert request["authorization"] == f"Bearer {API_KEY}"
        assert request["body"]["response_format"] == {"type": "json_object"}
        assert request["body"]["temperature"] == 0.0 and request["body"]["max_tokens"] == 2048
        assert request["body"]["model"] == "tiny-vl"


def test_concurrency_one_means_one_request_at_a_time(server):
    server.delay = 0.05
    with captioner_for(server, concurrency=1) as captioner:
        results = captioner.caption([ImageInput(f"i{n}", data=jpeg(n)) for n in range(5)])
    assert all(r.ok for r in results) and server.max_in_flight == 1 and len(server.requests) == 5


def test_query_image_is_described(server):
    with captioner_for(server) as captioner:
        variant = captioner.describe(ImageInput.from_path(SAMPLE_FILES[0]))
    assert variant.one_sentence.startswith("Variant 1 of an aerial image query 384x384")
    assert server.requests[0]["prompt"] == QUERY_PROMPT


def test_factory_and_injected_transport():
    seen: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        content = json.dumps({"variants": variants_for("mock")})
        return httpx.Response(200, json={"choices": [{"message": {"content": content}, "finish_reason": "stop"}]})

    transport = httpx.MockTransport(handle)
    with make_captioner("openai", base_url="http://vlm.invalid/v1", model="m", transport=transport) as captioner:
        (result,) = captioner.caption([ImageInput("a", data=jpeg(1))])
    assert result.ok and seen[0]["model"] == "m"


# -- bad answers ------------------------------------------------------------------------------------


def test_bad_answers_are_retried_with_sampling_then_fail_with_reason(server):
    prose, count, fenced = jpeg(1), jpeg(2), jpeg(3)
    server.for_image(prose, Reply(content="The image shows a residential area."), Reply())
    server.for_image(count, Reply(content=wrong_count()))
    server.for_image(fenced, Reply(content="```json\n" + json.dumps({"variants": variants_for("f")}) + "\n```"))
    items = [ImageInput("prose", data=prose), ImageInput("count", data=count), ImageInput("fenced", data=fenced)]
    with captioner_for(server, max_attempts=3, retry_temperature=0.8, strict_variants=True) as captioner:
        first, second, third = captioner.caption(items)
    assert server.problems == []
    assert first.ok and first.attempts == 2
    assert [r["body"]["temperature"] for r in server.requests_for(prose)] == [0.0, 0.8]
    assert not second.ok and second.attempts == 3 and server.hits_for(count) == 3
    assert second.error == "no valid answer after 3 attempts: expected 5 variants, got 3"
    assert second.raw == wrong_count()
    assert third.ok and third.attempts == 1


def test_answers_with_fewer_valid_variants_keep_them_unless_strict(server):
    three, broken = jpeg(30), jpeg(31)
    items = variants_for("b")
    items[2]["caption"] = "no"  # too short: that variant is dropped, the other four kept
    server.for_image(three, Reply(content=wrong_count()))
    server.for_image(broken, Reply(content=json.dumps({"variants": items})))
    inputs = [ImageInput("three", data=three), ImageInput("broken", data=broken)]
    with captioner_for(server) as captioner:
        kept_three, kept_four = captioner.caption(inputs)
    assert kept_three.ok and kept_three.partial and len(kept_three.variants) == 3 and kept_three.attempts == 1
    assert kept_three.dropped == ["expected 5 variants, got 3"]
    assert kept_four.ok and len(kept_four.variants) == 4
    assert kept_four.dropped == ["variant 3 field 'caption' is too short (2 chars, min 3): 'no'"]
    assert server.hits_for(three) == server.hits_for(broken) == 1  # kept as answered: no extra VLM calls
    with captioner_for(server, min_variants=4) as captioner:
        too_few, enough = captioner.caption(inputs)
    assert not too_few.ok and too_few.error.startswith("no valid answer after 3 attempts: 3 valid variants, need")
    assert enough.ok and len(enough.variants) == 4
    with captioner_for(server, strict_variants=True, max_attempts=1) as captioner:
        strict_three, strict_four = captioner.caption(inputs)
    assert strict_three.error == "no valid answer after 1 attempts: expected 5 variants, got 3"
    assert not strict_four.ok and "variant 3 field 'caption' is too short" in strict_four.error


def test_failures_of_the_server_are_transient_failures_of_the_image_are_not(server):
    down, big, key, model, surrogate = jpeg(32), jpeg(33), jpeg(34), jpeg(35), jpeg(36)
    server.for_image(down, Reply(status=503))
    server.for_image(big, Reply(status=400, body={"error": {"message": "image is too large"}}))
    server.for_image(key, Reply(status=401, body={"error": {"message": "bad key"}}))
    server.for_image(model, Reply(status=404, body={"detail": "no such model"}))
    server.for_image(surrogate, Reply(content='{"variants": [{"one_sentence": "x\\udfff"}]} \udfff'))
    names = ("down", "big", "key", "model", "surrogate")
    items = [ImageInput(n, data=d) for n, d in zip(names, (down, big, key, model, surrogate), strict=True)]
    with captioner_for(server, max_retries=1, max_attempts=1) as captioner:
        results = dict(zip(names, captioner.caption(items), strict=True))
    assert {name: r.transient for name, r in results.items()} == {
        "down": True, "big": False, "key": True, "model": True, "surrogate": False}
    assert not any(r.ok for r in results.values())
    results["surrogate"].raw.encode("utf-8")  # a lone surrogate in an answer is kept printable for the quarantine


def test_cli_flags_reach_the_captioner(server, monkeypatch):
    from rsrt.ingest.captioners import captioner_from_flags
    from rsrt.search.errors import ConfigError

    monkeypatch.setenv("RSRT_VLM_API_KEY", API_KEY)

    with captioner_from_flags("openai", model=server.model, base_url=server.base_url, timeout=7.5, retries=2,
                              max_tokens=99, image_size=20, min_variants=2, strict_variants=True) as captioner:
        assert (captioner.timeout, captioner.max_retries, captioner.max_tokens, captioner.max_image_side) == (
            7.5, 2, 99, 20)
        assert captioner.min_variants == 2 and captioner.strict_variants
        assert captioner.caption([ImageInput("a", data=jpeg(37, (64, 32)))])[0].ok
    assert server.requests[-1]["body"]["max_tokens"] == 99 and server.requests[-1]["size"] == (20, 10)
    with captioner_from_flags("openai", model="m", base_url=server.base_url) as defaults:
        assert (defaults.timeout, defaults.max_retries, defaults.max_tokens, defaults.max_image_side) == (
            180.0, 5, 2048, None)
        assert defaults.min_variants == 1 and not defaults.strict_variants
    with pytest.raises(ConfigError, match="--vlm-timeout must be more than 0"):
        captioner_from_flags("openai", model="m", base_url=server.base_url, timeout=0)
    with pytest.raises(ConfigError, match="--vlm-timeout, --vlm-image-size only apply to --captioner openai"):
        captioner_from_flags("transformers", model="/nowhere", timeout=3, image_size=64)


def test_cut_off_answer_mentions_the_token_limit(server):
    data = jpeg(4)
    server.for_image(data, Reply(content=json.dumps({"variants": variants_for("t")})[:150], finish_reason="length"))
    with captioner_for(server, max_attempts=2, max_tokens=64) as captioner:
        (result,) = captioner.caption([ImageInput("cut", data=data)])
    assert not result.ok and "cut off by the token limit" in result.error and server.hits_for(data) == 2
    assert server.requests[0]["body"]["max_tokens"] == 64


# -- transport failures -----------------------------------------------------------------------------


def test_429_honours_retry_after(server):
    data = jpeg(5)
    limited = Reply(status=429, body={"error": {"message": "rate limited"}}, headers={"Retry-After": "1"})
    server.for_image(data, limited, Reply())
    with captioner_for(server) as captioner:
        (result,) = captioner.caption([ImageInput("limited", data=data)])
    assert result.ok and result.attempts == 1 and server.hits_for(data) == 2
    first, second = server.requests_for(data)
    assert second["time"] - first["time"] >= 0.95  # waited as told, not the 0.02 s backoff


def test_5xx_is_retried_with_backoff_then_given_up(server):
    flaky, dead = jpeg(6), jpeg(7)
    server.for_image(flaky, Reply(status=500), Reply(status=502, raw=b"Bad Gateway"), Reply())
    server.for_image(dead, Reply(status=503, body={"error": {"message": "model is loading"}}))
    items = [ImageInput("flaky", data=flaky), ImageInput("dead", data=dead)]
    with captioner_for(server, max_retries=2, backoff_base=0.1, backoff_max=1.0) as captioner:
        ok, failed = captioner.caption(items)
    assert ok.ok and server.hits_for(flaky) == 3
    assert not failed.ok and server.hits_for(dead) == 3
    assert failed.error == "HTTP 503 model is loading (gave up after 3 tries)"
    times = [r["time"] for r in server.requests_for(dead)]
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1  # exponential: 0.1·[.5,1], 0.2·[.5,1]


def test_malformed_success_body_is_retried(server):
    data = jpeg(8)
    server.for_image(data, Reply(raw=b"<html>proxy error</html>"), Reply(body={"choices": []}), Reply())
    with captioner_for(server) as captioner:
        (result,) = captioner.caption([ImageInput("odd", data=data)])
    assert result.ok and server.hits_for(data) == 3


def test_slow_answer_times_out_and_is_retried(server):
    slow_once, always_slow = jpeg(9), jpeg(10)
    server.for_image(slow_once, Reply(delay=2.0), Reply())
    server.for_image(always_slow, Reply(delay=2.0))
    items = [ImageInput("slow_once", data=slow_once), ImageInput("always_slow", data=always_slow)]
    with captioner_for(server, timeout=0.5, max_retries=1) as captioner:
        ok, failed = captioner.caption(items)
    assert ok.ok and server.hits_for(slow_once) == 2
    assert not failed.ok and server.hits_for(always_slow) == 2
    assert failed.error == "no answer within 0.5s (ReadTimeout) (gave up after 2 tries)"


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    captioner = OpenAICompatibleCaptioner(
        f"http://127.0.0.1:{port}/v1", "m", api_key="k", max_retries=2, backoff_base=0.01, backoff_max=0.02
    )
    with captioner:
        (result,) = captioner.caption([ImageInput("a", data=jpeg(11))])
    assert not result.ok
    assert result.error.startswith(f"connection to http://127.0.0.1:{port}/v1 failed: ")
    assert result.error.endswith("(gave up after 3 tries)")


def test_other_4xx_fail_that_image_only_without_retry(server):
    too_big, unknown, fine, fmt = jpeg(12), jpeg(13), jpeg(14), jpeg(15)
    server.for_image(too_big, Reply(status=400, body={"error": {"message": "image is too large", "type": "invalid"}}))
    server.for_image(unknown, Reply(status=404, body={"detail": "The model `x` does not exist."}))
    server.for_image(fmt, Reply(status=400, body={"message": "response_format json_object is not supported"}))
    items = [ImageInput(n, data=d) for n, d in (("big", too_big), ("unknown", unknown), ("fine", fine), ("fmt", fmt))]
    with captioner_for(server) as captioner:
        big, missing, ok, no_json = captioner.caption(items)
    endpoint = f"{server.base_url}/chat/completions"
    assert big.error == f"HTTP 400 from {endpoint}: image is too large" and big.attempts == 1
    assert missing.error == f"HTTP 404 from {endpoint}: The model `x` does not exist."
    assert no_json.error.endswith("(if the server does not support response_format, use json_mode=False)")
    assert ok.ok
    assert server.hits_for(too_big) == server.hits_for(unknown) == server.hits_for(fmt) == 1


# -- keys, options, images --------------------------------------------------------------------------


def test_api_key_from_environment_is_sent_and_never_logged(server, monkeypatch, caplog):
    monkeypatch.setenv("RSRT_VLM_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    caplog.set_level(logging.DEBUG)
    bad = jpeg(16)
    server.for_image(bad, Reply(status=500), Reply(content="no json"), Reply())
    with OpenAICompatibleCaptioner(server.base_url, server.model, backoff_base=0.01) as captioner:
        assert API_KEY not in repr(captioner)
        results = captioner.caption([ImageInput("a", data=jpeg(17)), ImageInput("bad", data=bad)])
    assert all(r.ok for r in results) and server.requests[0]["authorization"] == f"Bearer {API_KEY}"
    assert "retrying" in caplog.text and "attempt 1/3" in caplog.text  # the retries were logged...
    assert API_KEY not in caplog.text  # ...without the key


def test_openai_api_key_is_the_fallback_and_wrong_keys_are_redacted(server, monkeypatch):
    monkeypatch.delenv("RSRT_VLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with OpenAICompatibleCaptioner(server.base_url, server.model) as captioner:
        assert captioner.caption([ImageInput("a", data=jpeg(18))])[0].ok
    wrong = "sk-wrong-key-987"
    with OpenAICompatibleCaptioner(server.base_url, server.model, api_key=wrong) as captioner:
        (result,) = captioner.caption([ImageInput("a", data=jpeg(19))])
    assert not result.ok and result.error.startswith("HTTP 401 from ")
    assert "Incorrect API key provided: ***" in result.error and wrong not in result.error
    assert "RSRT_VLM_API_KEY" in result.error


def test_no_key_and_no_json_mode(monkeypatch):
    monkeypatch.delenv("RSRT_VLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake = FakeVLM(api_key=None).start()
    try:
        with OpenAICompatibleCaptioner(fake.base_url, fake.model, json_mode=False, temperature=None) as captioner:
            assert captioner.caption([ImageInput("a", data=jpeg(20))])[0].ok
    finally:
        fake.stop()
    assert fake.problems == [] and fake.requests[0]["authorization"] is None
    assert "response_format" not in fake.requests[0]["body"] and "temperature" not in fake.requests[0]["body"]


def test_non_jpeg_is_reencoded_and_large_images_downscaled(server):
    buffer = io.BytesIO()
    Image.new("RGBA", (300, 200), (10, 200, 30, 128)).save(buffer, format="PNG")
    big_jpeg = jpeg(21, (400, 100))
    items = [
        ImageInput("png", data=buffer.getvalue()),
        ImageInput("wide", data=big_jpeg),
        ImageInput("small", data=jpeg(22)),
    ]
    with captioner_for(server, max_image_side=100) as captioner:
        results = captioner.caption(items)
    assert all(r.ok for r in results) and server.problems == []  # the server only accepts JPEG
    assert sorted(r["size"] for r in server.requests) == [(32, 24), (100, 25), (100, 67)]
    assert server.hits_for(big_jpeg) == 0  # re-encoded, not sent as is


def test_corrupt_input_fails_without_a_request(server):
    half = SAMPLE_FILES[0].read_bytes()[:2000]
    with captioner_for(server) as captioner:
        broken, ok = captioner.caption([ImageInput("half", data=half), ImageInput.from_path(SAMPLE_FILES[1])])
    assert not broken.ok and broken.attempts == 0 and "image 'half'" in broken.error and "truncated" in broken.error
    assert ok.ok and len(server.requests) == 1


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("86400") == 300.0 and parse_retry_after("-3") == 0.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(when) <= 30
