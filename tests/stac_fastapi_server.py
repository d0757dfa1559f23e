"""A real STAC API for tests: stac-fastapi-opensearch 8.0.0 under uvicorn, on the test node, on loopback.

    from stac_fastapi_server import stac_api, stac_fastapi_server, stac_item   # fixture, context manager, item

    def test_x(stac_api):                                  # one server per test session
        cid = stac_api.new_collection("mine")              # unique id, deleted at the end
        stac_api.add_items(cid, [stac_item("a", cid, bbox=[0, 0, 1, 1], datetime="2020-01-01T00:00:00Z",
                                            assets={"visual": {"href": "http://…/a.tif", "type": "image/tiff"}})])
        StacApiSource(stac_api.url, collections=(cid,))   # searchable right away

    with stac_fastapi_server(opensearch_url) as server:   # a server of one's own (e.g. to stop it mid-run)
        ...

The server runs as a subprocess (`python -m uvicorn stac_fastapi.opensearch.app:create_app --factory`:
8.0.0 has no module-level `app`). Its indices and index templates get a prefix of their own
(`STAC_COLLECTIONS_INDEX`, `STAC_ITEMS_INDEX_PREFIX`: `stacapi-<token>-…`), so they can neither match
rsrt's templates (`<alias>-v*`) nor be mistaken for rsrt's indices, and at the end exactly those are
deleted, by name (the node refuses wildcard deletes). `DATABASE_REFRESH=true` makes every POSTed item
searchable as soon as the POST answers (8.0.0's default, false, leaves them to the 1 s refresh).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

START_TIMEOUT = 120.0  # seconds: importing stac-fastapi and creating its templates, on a busy 2-core machine


def stac_item(item_id: str, collection: str, *, bbox: list[float], datetime: str,
              assets: dict[str, dict[str, Any]], properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """A STAC 1.0 item whose footprint is its bbox."""
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": list(bbox),
            "properties": {"datetime": datetime, **(properties or {})}, "assets": assets, "links": []}


class StacFastApiServer:
    """One stac-fastapi-opensearch process and what it created on the node."""

    def __init__(self, opensearch_url: str, log_dir: Path) -> None:
        self.opensearch_url = opensearch_url.rstrip("/")
        self.prefix = f"stacapi-{uuid.uuid4().hex[:8]}"
        self.collections_index = f"{self.prefix}-collections"
        self.items_prefix = f"{self.prefix}-items_"
        self.log_path = log_dir / f"{self.prefix}.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.created: list[str] = []  # collection ids, deleted at the end
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=60, trust_env=False)

    # ------------------------------------------------------------------ process

    def environment(self) -> dict[str, str]:
        node = urlparse(self.opensearch_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ES_", "STAC_"))}
        env.update({
            "ES_HOST": node.hostname or "127.0.0.1", "ES_PORT": str(node.port or 9200),
            "ES_USE_SSL": "false", "ES_VERIFY_CERTS": "false",
            "ENABLE_TRANSACTIONS_EXTENSIONS": "true", "DATABASE_REFRESH": "true",
            "STAC_COLLECTIONS_INDEX": self.collections_index, "STAC_ITEMS_INDEX_PREFIX": self.items_prefix,
            "STAC_FASTAPI_TITLE": "rsrt test STAC API", "STAC_FASTAPI_DESCRIPTION": "stac-fastapi-opensearch",
            "STAC_FASTAPI_VERSION": "8.0.0", "STAC_FASTAPI_LANDING_PAGE_ID": "rsrt-test",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        })
        return env

    def start(self) -> None:
        """Start uvicorn and wait for the landing page (the port is kept, so a restart has the same URL)."""
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.opensearch.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            env=self.environment(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"stac-fastapi exited with {self._process.returncode}: {self.log_tail()}")
            try:
                landing = self._http.get(self.url + "/", timeout=2)
                if landing.status_code == 200 and landing.json().get("type") == "Catalog":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"stac-fastapi did not answer on {self.url} in {START_TIMEOUT:.0f}s: "
                                   f"{self.log_tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop the server (the STAC API is then unreachable); what it stored stays on the node."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(15)
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ transactions API

    def new_collection(self, name: str = "test", *, bbox: list[float] | None = None,
                       description: str = "rsrt test collection") -> str:
        """POST /collections with a unique id (`<name>-<hex>`); returns the id."""
        collection_id = f"{name}-{uuid.uuid4().hex[:8]}"
        body = {"type": "Collection", "stac_version": "1.0.0", "id": collection_id, "description": description,
                "license": "proprietary", "links": [],
                "extent": {"spatial": {"bbox": [bbox or [-180, -90, 180, 90]]},
                           "temporal": {"interval": [["2000-01-01T00:00:00Z", None]]}}}
        self._check(self._http.post(f"{self.url}/collections", json=body), f"create collection {collection_id}")
        self.created.append(collection_id)
        return collection_id

    def add_items(self, collection_id: str, items: list[dict[str, Any]]) -> None:
        """POST the items as one FeatureCollection; they are searchable when this returns."""
        body = {"type": "FeatureCollection", "features": items}
        response = self._http.post(f"{self.url}/collections/{collection_id}/items", json=body)
        self._check(response, f"add {len(items)} items to {collection_id}")
        added = response.json().get("successfully_added", [])
        if len(added) != len(items):
            raise RuntimeError(f"stac-fastapi added {len(added)} of {len(items)} items: {response.text[:500]}")

    def search_ids(self, **params: Any) -> list[str]:
        """Every item id a GET /search with `params` returns (all pages), to check the server itself."""
        ids: list[str] = []
        url: str | None = f"{self.url}/search"
        query: dict[str, Any] | None = {"limit": 100, **params}
        while url:
            page = self._http.get(url, params=query)
            self._check(page, "search")
            ids += [f["id"] for f in page.json()["features"]]
            url = next((lk["href"] for lk in page.json().get("links", []) if lk.get("rel") == "next"), None)
            query = None
        return ids

    def delete_collection(self, collection_id: str) -> None:
        """DELETE /collections/{id}: 8.0.0 deletes the collection's items index with it."""
        response = self._http.delete(f"{self.url}/collections/{collection_id}")
        if response.status_code not in (200, 204, 404):
            self._check(response, f"delete collection {collection_id}")

    def cleanup(self) -> None:
        """Delete what this server created on the node, by exact name; nothing else."""
        if self.running:
            for collection_id in self.created:
                with contextlib.suppress(httpx.HTTPError, RuntimeError):
                    self.delete_collection(collection_id)
        self.stop()
        node = httpx.Client(base_url=self.opensearch_url, timeout=60, trust_env=False)
        try:
            found = node.get(f"/{self.prefix}-*", params={"expand_wildcards": "all"})
            names = sorted(found.json()) if found.status_code == 200 else []
            for name in names:
                if name.startswith(self.prefix + "-"):
                    node.delete(f"/{name}")
            for template in (f"template_{self.collections_index}", f"template_{self.items_prefix}"):
                node.delete(f"/_index_template/{template}")
        finally:
            node.close()
            self._http.close()

    @staticmethod
    def _check(response: httpx.Response, what: str) -> None:
        if response.status_code >= 300:
            raise RuntimeError(f"stac-fastapi: {what}: HTTP {response.status_code}: {response.text[:500]}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def stac_fastapi_server(opensearch_url: str, log_dir: Path | None = None) -> Iterator[StacFastApiServer]:
    """A running stac-fastapi-opensearch on the node at `opensearch_url`; removed, with what it stored, after."""
    import tempfile

    with contextlib.ExitStack() as stack:
        where = log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stacapi-")))
        server = StacFastApiServer(opensearch_url, where)
        try:
            server.start()
            yield server
        finally:
            server.cleanup()


@pytest.fixture(scope="session")
def stac_api(opensearch_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StacFastApiServer]:
    """One STAC API for the session; each test makes its own collections (`new_collection`)."""
    with stac_fastapi_server(opensearch_url, tmp_path_factory.mktemp("stacapi")) as server:
        yield server
