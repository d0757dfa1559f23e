"""The API on a network: body limits over a real socket, links from the public URL, trusted hosts, and
5xx answers without internal addresses. A real uvicorn, the real node, `rsrt serve`'s composition."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import build_index, serving
from rsrt.search.api import ApiConfig
from rsrt.search.api.hardening import HardeningConfig
from rsrt.search.api.server import ServerConfig, build_server_app
from rsrt.search.client import connect
from rsrt.search.config import ConnectionSettings
from rsrt.search.errors import ConfigError
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

LIMIT = 256 * 1024
BIG = 50 * 1024 * 1024
PUBLIC = "https://portal.example.org/stac/"
EVIL = "evil.example.com"


@pytest.fixture(scope="module")
def small_index(os_client, tmp_path_factory) -> Iterator[str]:
    name = "rsrt-test-hardening"
    records = [ImageRecord(image_id=f"img-{i}", source_uri=f"https://data.example.org/img-{i}.jpg",
                           collection="harbours",
                           variants=[Variant(one_sentence=f"Ships are moored in harbour number {i}.",
                                             caption="A harbour with ships along the docks.")])
               for i in range(3)]
    if os_client.indices.exists(index=f"{name}*"):
        for concrete in os_client.indices.get(index=f"{name}*"):
            os_client.indices.delete(index=concrete)
    build_index(os_client, name, records, tmp_path_factory.mktemp("ledger"))
    yield name
    for concrete in os_client.indices.get(index=f"{name}*"):
        os_client.indices.delete(index=concrete)


def _app(client, index: str, cors_origins: tuple[str, ...] = (), **hardening: Any):
    return build_server_app(client, ServerConfig(api=ApiConfig(index=index, cors_origins=cors_origins),
                                                 hardening=HardeningConfig(**hardening)))


class _Counted:
    """The ASGI app as uvicorn calls it, counting the body bytes the server actually took in."""

    def __init__(self, app) -> None:
        self.app = app
        self.received = 0

    async def __call__(self, scope, receive, send) -> None:
        async def counting() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


def _rss_bytes() -> int:
    """This process's resident memory (the server runs in it, on a thread)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _send_quietly(sock: socket.socket, parts: Iterator[bytes], sent: list[int]) -> None:
    """Send until the server hangs up (it may, once it has answered 413)."""
    try:
        for part in parts:
            sock.sendall(part)
            sent[0] += len(part)
    except OSError:
        pass


def _chunked(total: int, piece: bytes) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_50_mb_body_is_refused_413_while_it_arrives(os_client, small_index, framing):
    counted = _Counted(_app(os_client, small_index, max_body_bytes=LIMIT))
    with serving(counted) as base:
        port = int(base.rsplit(":", 1)[1])
        before = _rss_bytes()
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        piece = b"[" * 65536  # JSON the parser would recurse into, were it ever read
        if framing == "chunked":
            head += "Transfer-Encoding: chunked\r\n\r\n"
            parts: Iterator[bytes] = _chunked(BIG, piece)
        else:
            head += f"Content-Length: {BIG}\r\n\r\n"
            parts = iter([piece] * (BIG // len(piece)))
        sock.sendall(head.encode())
        sent = [0]
        sender = threading.Thread(target=_send_quietly, args=(sock, parts, sent), daemon=True)
        sender.start()
        status, headers, body = _read_response(sock)
        sock.close()
        sender.join(30)
        grown = _rss_bytes() - before
        # the server still answers afterwards
        assert httpx.get(f"{base}/search", params={"q": "harbour", "mode": "lexical"}).status_code == 200
    assert status == 413, body
    error = json.loads(body)
    assert set(error) == {"code", "field", "description"} and error["code"] == "PayloadTooLarge"
    assert str(LIMIT) in error["description"]
    assert headers.get("connection") == "close"
    # the server read at most the limit and one network read more, never the 50 MB
    assert counted.received <= LIMIT + 1024 * 1024, counted.received
    assert grown < 30 * 1024 * 1024, grown
    if framing == "content-length":
        assert counted.received == 0  # a declared size over the limit: not a byte is read


def test_bodies_within_the_limit_still_work(os_client, small_index):
    with serving(_app(os_client, small_index, max_body_bytes=LIMIT)) as base:
        polygon = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
        response = httpx.post(f"{base}/search", json={"q": "harbour", "mode": "lexical", "limit": 2,
                                                      "intersects": polygon}, timeout=30)
        assert response.status_code == 200, response.text
        plain = httpx.post(f"{base}/search", json={"q": "harbour", "mode": "lexical"}, timeout=30)
        assert plain.status_code == 200 and plain.json()["features"], plain.text


def test_a_browser_can_read_the_413(os_client, small_index):
    origin = "https://portal.example.org"
    with serving(_app(os_client, small_index, cors_origins=(origin,), max_body_bytes=LIMIT)) as base:
        for body in (b"{" + b" " * (2 * LIMIT) + b"}", None):
            if body is None:  # streamed: no Content-Length to refuse up front
                response = httpx.post(f"{base}/search", headers={"Origin": origin, "Content-Type": "application/json"},
                                      content=iter([b" " * 65536] * (3 * LIMIT // 65536)), timeout=30)
            else:
                response = httpx.post(f"{base}/search", headers={"Origin": origin, "Content-Type": "application/json"},
                                      content=body, timeout=30)
            assert response.status_code == 413, response.text
            assert response.headers.get("access-control-allow-origin") == origin
            assert response.json()["code"] == "PayloadTooLarge"


def _hrefs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "href" and isinstance(v, str)] + \
            [h for v in value.values() for h in _hrefs(v)]
    if isinstance(value, list):
        return [h for v in value for h in _hrefs(v)]
    return []


def test_every_link_comes_from_the_public_url_whatever_host_a_client_sends(os_client, small_index):
    forged = {"Host": EVIL, "X-Forwarded-Host": EVIL, "X-Forwarded-Proto": "http",
              "Forwarded": f"host={EVIL};proto=http"}
    with serving(_app(os_client, small_index, public_url=PUBLIC)) as base:
        # the proxy strips /stac (most do) or passes it on: links are the same
        for prefix in ("", "/stac"):
            answers = [httpx.get(f"{base}{prefix}/", headers=forged),
                       httpx.get(f"{base}{prefix}/search", params={"q": "harbour", "mode": "lexical"},
                                 headers=forged),
                       httpx.get(f"{base}{prefix}/collections", headers=forged)]
            for response in answers:
                assert response.status_code == 200, (response.url, response.text)
                hrefs = _hrefs(response.json())
                assert hrefs, response.text
                assert all(href.startswith(PUBLIC) for href in hrefs if "example.org/img-" not in href), hrefs
                assert EVIL not in response.text and "127.0.0.1" not in response.text
        self_link = next(link["href"] for link in answers[1].json()["links"] if link["rel"] == "self")
        assert self_link.startswith(f"{PUBLIC}search")


def test_a_host_that_is_not_trusted_is_refused(os_client, small_index):
    with serving(_app(os_client, small_index)) as base:  # default: loopback hosts only
        port = base.rsplit(":", 1)[1]
        refused = httpx.get(f"{base}/", headers={"Host": EVIL})
        assert refused.status_code == 400
        body = refused.json()
        assert body["field"] == "Host" and "--public-url" in body["description"]
        assert set(body) == {"code", "field", "description"}
        trusted = httpx.get(f"{base}/search", params={"q": "harbour", "mode": "lexical"},
                            headers={"Host": f"localhost:{port}", "X-Forwarded-Host": EVIL})
        assert trusted.status_code == 200
        hrefs = _hrefs(trusted.json())
        assert hrefs and all(href.startswith(f"http://localhost:{port}/") for href in hrefs
                             if "example.org/img-" not in href), hrefs
        assert EVIL not in trusted.text
    with serving(_app(os_client, small_index, trusted_hosts=("*.example.com",))) as base:
        assert httpx.get(f"{base}/", headers={"Host": EVIL}).status_code == 200
        assert httpx.get(f"{base}/", headers={"Host": "example.org"}).status_code == 400


def test_hardening_settings_are_checked_when_made():
    for bad in ({"public_url": "portal.example.org"}, {"public_url": "https://x.org/?a=1"},
                {"trusted_hosts": ()}, {"trusted_hosts": ("evil.com/path",)}, {"max_body_bytes": 0}):
        with pytest.raises(ConfigError):
            HardeningConfig(**bad)


def _unreachable_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


class _Proxy:
    """A loopback TCP forwarder to the node that can be stopped: the cluster goes away under a running API."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            self.open += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() blocked on it; close alone would not
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_cluster_stopped_under_a_running_api_is_503_without_its_address(opensearch_url, small_index):
    node = httpx.URL(opensearch_url)
    proxy = _Proxy((node.host, node.port))
    client = connect(ConnectionSettings.resolve(url=f"http://127.0.0.1:{proxy.port}"), timeout=2, max_retries=0)
    with serving(_app(client, small_index)) as base:
        assert httpx.get(f"{base}/search", params={"q": "harbour", "mode": "lexical"}, timeout=60).status_code == 200
        proxy.stop()
        answers = [httpx.get(f"{base}/search", params={"q": "harbour", "mode": "lexical"}, timeout=60),
                   httpx.get(f"{base}/search", params={"q": "harbour", "mode": "hybrid"}, timeout=60),
                   httpx.get(f"{base}/collections", timeout=60),
                   httpx.get(f"{base}/healthz", timeout=60)]
    for response in answers:
        assert response.status_code == 503, (response.url, response.text)
        for address in (str(proxy.port), str(node.port), "127.0.0.1"):
            assert address not in response.text, (response.url, response.text)


def test_a_503_names_no_internal_address(small_index):
    port = _unreachable_port()
    client = connect(ConnectionSettings.resolve(url=f"http://127.0.0.1:{port}"), timeout=2, max_retries=0)
    started = time.monotonic()
    with serving(_app(client, small_index)) as base:
        answers = [httpx.get(f"{base}/search", params={"q": "harbour", "mode": "lexical"}, timeout=60),
                   httpx.post(f"{base}/search", json={"q": "harbour", "mode": "lexical"}, timeout=60),
                   httpx.get(f"{base}/collections", timeout=60),
                   httpx.get(f"{base}/search", timeout=60),
                   httpx.get(f"{base}/healthz", timeout=60)]
    assert time.monotonic() - started < 60
    for response in answers:
        assert response.status_code == 503, (response.url, response.text)
        assert str(port) not in response.text, (response.url, response.text)
        assert "127.0.0.1" not in response.text, (response.url, response.text)
