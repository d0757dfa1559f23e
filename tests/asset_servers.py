"""Loopback servers for remote-asset tests: a range-serving HTTP server with faults, and S3 (moto).

Imported by several test modules (remote assets, end-to-end ingest); nothing here touches the
network beyond 127.0.0.1.

* `RangeServer(root)`: serves a directory over HTTP/1.1 with `Range` (206, `Content-Range`, 416)
  and HEAD (a multi-range `Range` is ignored, as S3 does:
  200 and the whole object); counts requests and bytes per path; `fail(path, status, times, retry_after=None)`
  fails the next requests for a path, `stall(path, seconds, times)` holds them (a timeout).
* `S3Server()`: moto's S3 in server mode on a free port; `upload(bucket, key, path)`.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class _Fault:
    status: int | None = None  # answer this status
    stall: float = 0.0  # or wait this long before answering
    times: int = 1  # for this many requests
    retry_after: str | None = None


class RangeServer:
    """A directory over HTTP with byte ranges, request/byte counters and injected faults."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.requests: dict[str, int] = defaultdict(int)  # every request per path, faults included
        self.bytes_served: dict[str, int] = defaultdict(int)  # body bytes sent per path
        self.faults: dict[str, list[_Fault]] = defaultdict(list)
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ----------------------------------------------------------------------- lifecycle
    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    # ----------------------------------------------------------------------- faults and counters
    def fail(self, path: str, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """The next `times` requests for `path` answer `status` (with `Retry-After` when given)."""
        with self.lock:
            self.faults["/" + path.lstrip("/")].append(_Fault(status=status, times=times, retry_after=retry_after))

    def stall(self, path: str, seconds: float, times: int = 1) -> None:
        """The next `times` requests for `path` wait `seconds` before answering (then answer normally)."""
        with self.lock:
            self.faults["/" + path.lstrip("/")].append(_Fault(stall=seconds, times=times))

    def heal(self, path: str | None = None) -> None:
        """Drop the pending faults of `path` (of every path when None)."""
        with self.lock:
            if path is None:
                self.faults.clear()
            else:
                self.faults.pop("/" + path.lstrip("/"), None)

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_served.clear()

    def count(self, path: str) -> int:
        return self.requests.get("/" + path.lstrip("/"), 0)

    def served(self, path: str) -> int:
        return self.bytes_served.get("/" + path.lstrip("/"), 0)

    def _next_fault(self, path: str) -> _Fault | None:
        with self.lock:
            self.requests[path] += 1
            queue = self.faults.get(path)
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            return fault

    # ----------------------------------------------------------------------- handler
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _plain(self, status: int, extra: dict[str, str] | None = None) -> None:
                payload = f"{status}\n".encode()
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                fault = server._next_fault(path)
                if fault is not None and fault.stall:
                    time.sleep(fault.stall)
                elif fault is not None and fault.status is not None:
                    extra = {"Retry-After": fault.retry_after} if fault.retry_after else None
                    self._plain(fault.status, extra)
                    return
                file = (server.root / path.lstrip("/")).resolve()
                if server.root.resolve() not in file.parents or not file.is_file():
                    self._plain(404)
                    return
                size = file.stat().st_size
                start, end, status = 0, size - 1, 200
                header = self.headers.get("Range")
                if header and "," in header:  # several ranges in one GET: ignored, like S3 (the whole object)
                    header = None
                if header:
                    match = _RANGE.match(header.strip())
                    if match is None or (not match.group(1) and not match.group(2)):
                        self._plain(416, {"Content-Range": f"bytes */{size}"})
                        return
                    if match.group(1):
                        start = int(match.group(1))
                        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                    else:  # a suffix: the last N bytes
                        start, end = max(0, size - int(match.group(2))), size - 1
                    if start >= size or start > end:
                        self._plain(416, {"Content-Range": f"bytes */{size}"})
                        return
                    status = 206
                length = end - start + 1
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(length))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if not body:
                    return
                with file.open("rb") as handle:
                    handle.seek(start)
                    data = handle.read(length)
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return
                with server.lock:
                    server.bytes_served[path] += len(data)

        return Handler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """moto's S3 on loopback (`ThreadedMotoServer`); needs AWS_ACCESS_KEY_ID/SECRET set (any value)."""

    def __init__(self, region: str = "us-east-1") -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.region = region
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3Server:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))

    def upload(self, bucket: str, key: str, path: str | Path) -> str:
        """Create `bucket` if needed, upload `path` as `key`; the `s3://bucket/key` URI."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        client.upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{key}"


def write_cog(path: str | Path, size: int = 4096, bands: int = 4, seed: int = 0, tile: int = 256,
              crs: str = "EPSG:32633") -> Path:
    """A tiled, internally overviewed uint16 GeoTIFF (a COG) with smooth, varied pixels."""
    import numpy as np
    import rasterio
    from rasterio.shutil import copy as copy_dataset
    from rasterio.transform import from_origin

    path = Path(path)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    data = np.empty((bands, size, size), dtype=np.uint16)
    for b in range(bands):
        base = 500 + 3000 * (0.5 + 0.5 * np.sin(6.0 * x * (b + 1) + 4.0 * y))
        data[b] = (base + rng.integers(0, 16, size=(size, size))).astype(np.uint16)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16",
               "crs": crs, "transform": from_origin(400000.0, 5000000.0, 10.0, 10.0), "tiled": True,
               "blockxsize": tile, "blockysize": tile, "compress": "deflate"}
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        factors = [f for f in (2, 4, 8, 16, 32) if size // f >= tile // 2]
        dst.build_overviews(factors)
    # COG layout: overviews and IFDs first, so a header read is one short range request
    with rasterio.open(tmp) as src:
        copy_dataset(src, path, driver="COG", compress="DEFLATE", blocksize=tile,
                             overview_resampling="average")
    tmp.unlink()
    return path
