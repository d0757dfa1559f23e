"""`StacApiSource` and `rsrt ingest stac-api` against a real STAC API: stac-fastapi-opensearch 8.0.0 on
the test node (tests/stac_fastapi_server.py), on loopback.

Seven items with local JPEG assets, one per degree of longitude along 10°N, one per month of 2021.
A small loopback proxy in front of the API counts the search requests (to see the paging) and can
answer 503 for the later pages (a STAC API that breaks down mid-run). The whole CLI runs as a user
runs it, with a loopback OpenAI-compatible VLM, into the session node.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import stac_fastapi_server
from conftest import run_cli
from rsrt.ingest.sources import SourceProblem, StacApiError, StacApiPageError, StacApiSource
from rsrt.search.errors import QueryError
from rsrt.search.schema import ImageRecord, stable_image_id
from stac_fastapi_server import StacFastApiServer, stac_item
from vlm_server import ChatCompletions

pytestmark = pytest.mark.integration
stac_api = stac_fastapi_server.stac_api  # the fixture: one stac-fastapi-opensearch for the session

SCENES = 7


# ------------------------------------------------------------------------------------------ loopback helpers


class ApiProxy:
    """A loopback HTTP proxy in front of the STAC API: counts search requests, and can fail later pages.

    The Host header is the proxy's, so the API's links (next pages, self) point back at the proxy.
    `failures_left` later-page requests (those with a paging `token`) get HTTP 503; None: all of them.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.search_requests = 0
        self.failed = 0
        self.failures_left: int | None = 0
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=60, trust_env=False)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def _should_fail(self, path: str, body: bytes) -> bool:
        if not path.startswith("/search"):
            return False
        with self._lock:
            self.search_requests += 1
            later_page = "token=" in path or b'"token"' in body
            if later_page and (self.failures_left is None or self.failures_left > 0):
                self.failed += 1
                if self.failures_left is not None:
                    self.failures_left -= 1
                return True
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
                if proxy._should_fail(self.path, body):
                    status, headers, data = 503, {"Content-Type": "application/json"}, b'{"detail": "overloaded"}'
                else:
                    forwarded = {k: v for k, v in self.headers.items()
                                 if k.lower() not in ("content-length", "connection", "accept-encoding")}
                    answer = proxy._http.request(self.command, proxy.upstream + self.path, content=body or None,
                                                 headers=forwarded)
                    status, data = answer.status_code, answer.content
                    headers = {"Content-Type": answer.headers.get("content-type", "application/json")}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward

        return Handler


@pytest.fixture
def proxy(stac_api: StacFastApiServer) -> Iterator[ApiProxy]:
    front = ApiProxy(stac_api.url)
    yield front
    front.stop()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Seven small JPEGs, each a different picture (so each is its own caption)."""
    folder = tmp_path_factory.mktemp("stac-api-pictures")
    paths = []
    for i in range(SCENES):
        image = Image.new("RGB", (64, 48), (30 * i, 200 - 20 * i, 90))
        image.paste((255, 255, 255), (4 * i, 4, 4 * i + 10, 14))
        path = folder / f"scene{i}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def scene_items(collection: str, pictures: list[Path], prefix: str = "scene") -> list[dict[str, Any]]:
    """Item i: bbox [i, 10, i+0.5, 10.5], datetime 2021-(i+1)-15, a JPEG `visual` asset."""
    return [stac_item(f"{prefix}{i}", collection, bbox=[float(i), 10.0, i + 0.5, 10.5],
                      datetime=f"2021-{i + 1:02d}-15T10:00:00Z", properties={"gsd": 0.5 + i},
                      assets={"visual": {"href": path.as_uri(), "type": "image/jpeg", "roles": ["visual"]}})
            for i, path in enumerate(pictures)]


@pytest.fixture(scope="module")
def scenes(stac_api: StacFastApiServer, pictures: list[Path]) -> str:
    """A collection of the seven scenes (read-only for the tests that use it)."""
    collection = stac_api.new_collection("scenes")
    stac_api.add_items(collection, scene_items(collection, pictures))
    return collection


def records(source: StacApiSource) -> list[ImageRecord]:
    items = list(source)
    problems = [item for item in items if isinstance(item, SourceProblem)]
    assert not problems, [str(p) for p in problems]
    return [item for item in items if isinstance(item, ImageRecord)]


def ids(*names: str) -> list[str]:
    return sorted(stable_image_id(name) for name in names)


# ------------------------------------------------------------------------------------------ the source


def test_small_pages_bring_every_item_once(scenes, proxy):
    source = StacApiSource(proxy.url, collections=(scenes,), page_size=2)
    found = records(source)
    assert sorted(r.image_id for r in found) == ids(*(f"scene{i}" for i in range(SCENES)))
    assert proxy.search_requests == 4  # 2 + 2 + 2 + 1: the pages really were pages of two
    first = next(r for r in found if r.image_id == stable_image_id("scene3"))
    assert first.collection == scenes
    assert first.properties["stac:href"] == f"{proxy.url}/collections/{scenes}/items/scene3"  # its self link
    assert first.properties["stac:asset"] == "visual" and first.properties["gsd"] == 3.5
    assert first.bbox == [3.0, 10.0, 3.5, 10.5] and first.datetime == "2021-04-15T10:00:00Z"
    assert source.count_hint() == SCENES
    assert source.describe() == f"STAC API {proxy.url} (collections {scenes})"


def test_collections_restrict_the_search(stac_api, scenes, pictures):
    other = stac_api.new_collection("other")
    stac_api.add_items(other, scene_items(other, pictures[:2], prefix="elsewhere"))
    only_other = records(StacApiSource(stac_api.url, collections=(other,)))
    assert sorted(r.image_id for r in only_other) == ids("elsewhere0", "elsewhere1")
    both = records(StacApiSource(stac_api.url, collections=(scenes, other), page_size=3))
    assert len(both) == SCENES + 2 and {r.collection for r in both} == {scenes, other}


def test_bbox_and_datetime_filter_on_the_server(scenes, proxy):
    in_place = StacApiSource(proxy.url, collections=(scenes,), bbox="0.9,9,2.6,11")
    assert sorted(r.image_id for r in records(in_place)) == ids("scene1", "scene2")
    assert in_place.count_hint() == 2
    in_time = StacApiSource(proxy.url, collections=(scenes,), datetime="2021-03/2021-04")
    assert sorted(r.image_id for r in records(in_time)) == ids("scene2", "scene3")
    assert in_time.datetime == "2021-03-01T00:00:00Z/2021-04-30T23:59:59Z"
    area = {"type": "Polygon", "coordinates": [[[4.9, 9.0], [6.6, 9.0], [6.6, 11.0], [4.9, 11.0], [4.9, 9.0]]]}
    both = StacApiSource(proxy.url, collections=(scenes,), intersects=area, datetime="2021-06-01/..")
    assert sorted(r.image_id for r in records(both)) == ids("scene5", "scene6")


def test_max_items_stops_reading(scenes, proxy):
    source = StacApiSource(proxy.url, collections=(scenes,), page_size=2, max_items=3)
    assert len({r.image_id for r in records(source)}) == 3
    assert proxy.search_requests == 2  # the third item came from the second page; no third page asked
    assert source.count_hint() == 3


def test_query_and_cql2_filter_go_to_the_server(scenes, stac_api):
    query = StacApiSource(stac_api.url, collections=(scenes,), query={"gsd": {"gte": 5}})
    assert sorted(r.image_id for r in records(query)) == ids("scene5", "scene6")
    cql2 = StacApiSource(stac_api.url, collections=(scenes,), filter="gsd < 2")
    assert sorted(r.image_id for r in records(cql2)) == ids("scene0", "scene1")


def test_a_duplicate_id_across_pages_is_one_problem(stac_api, pictures):
    first = stac_api.new_collection("dup-a")
    second = stac_api.new_collection("dup-b")
    stac_api.add_items(first, scene_items(first, pictures[:1], prefix="twin"))
    stac_api.add_items(second, scene_items(second, pictures[1:2], prefix="twin"))
    items = list(StacApiSource(stac_api.url, collections=(first, second), page_size=1))
    problems = [i for i in items if isinstance(i, SourceProblem)]
    assert [type(i).__name__ for i in items].count("ImageRecord") == 1
    assert len(problems) == 1 and "duplicate image id" in problems[0].reason
    assert problems[0].path.endswith("/items/twin0")


def test_an_unusable_item_is_a_problem_and_the_rest_go_on(stac_api, pictures, tmp_path):
    collection = stac_api.new_collection("mixed")
    good = scene_items(collection, pictures[:2])
    missing = stac_item("gone", collection, bbox=[0, 0, 1, 1], datetime="2021-01-01T00:00:00Z",
                        assets={"visual": {"href": (tmp_path / "gone.jpg").as_uri(), "type": "image/jpeg"}})
    stac_api.add_items(collection, [*good, missing])
    items = list(StacApiSource(stac_api.url, collections=(collection,), page_size=2))
    problems = [i for i in items if isinstance(i, SourceProblem)]
    assert len(items) == 3 and len(problems) == 1
    assert problems[0].item == "gone" and "not found" in problems[0].reason


def test_a_page_that_keeps_failing_stops_with_one_line(scenes, proxy):
    proxy.failures_left = None  # every later page: HTTP 503
    source = StacApiSource(proxy.url, collections=(scenes,), page_size=2, retries=2, backoff=0)
    iterator = iter(source)
    got = [next(iterator), next(iterator)]  # the first page
    assert all(isinstance(r, ImageRecord) for r in got)
    with pytest.raises(StacApiPageError) as failure:
        next(iterator)
    message = str(failure.value)
    assert "\n" not in message and proxy.url in message and "page 2" in message and "503" in message
    assert "run the same command again to resume" in message
    assert failure.value.exit_code == 1
    assert proxy.failed == 3  # the request and its two retries


def test_a_page_that_fails_once_is_retried(scenes, proxy):
    proxy.failures_left = 2  # two 503s, then the API answers again
    source = StacApiSource(proxy.url, collections=(scenes,), page_size=2, retries=3, backoff=0)
    assert len({r.image_id for r in records(source)}) == SCENES
    assert proxy.failed == 2


def test_the_api_as_a_whole_is_checked_when_the_source_is_made(stac_api, scenes, opensearch_url, tmp_path):
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    (tmp_path / "index.html").write_text("<html>no STAC here</html>")
    catalog = {"type": "Catalog", "id": "static", "description": "d", "stac_version": "1.0.0", "links": []}
    (tmp_path / "static.json").write_text(json.dumps(catalog))  # a static catalog: no conformsTo
    (tmp_path / "core.json").write_text(json.dumps({**catalog, "conformsTo": ["https://api.stacspec.org/v1.0.0/core"]}))
    files = ThreadingHTTPServer(("127.0.0.1", 0),
                                lambda *a: SimpleHTTPRequestHandler(*a, directory=str(tmp_path)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    served = f"http://127.0.0.1:{files.server_address[1]}"
    try:
        cases = {
            f"http://127.0.0.1:{port}": "unreachable (connection refused)",
            opensearch_url: "not a STAC API (the landing page is JSON of type None, not a STAC Catalog)",
            served: "not a STAC API (the landing page is not JSON)",
            f"{served}/static.json": "not a STAC API (the landing page declares no conformsTo)",
            f"{served}/core.json": "no item search (conformsTo lacks https://api.stacspec.org/v1.0.0/item-search)",
            f"{stac_api.url}/collections/{scenes}":
                "not a STAC API (the landing page is JSON of type Collection, not a STAC Catalog)",
        }
        for url, expected in cases.items():
            with pytest.raises(StacApiError) as failure:
                StacApiSource(url, retries=0)
            assert str(failure.value) == f"STAC API {url}: {expected}"
            assert failure.value.exit_code == 2
        with pytest.raises(StacApiError, match=r"unknown collection 'nowhere-x'$"):
            StacApiSource(stac_api.url, collections=(scenes, "nowhere-x"))
        with pytest.raises(QueryError, match="bbox"):
            StacApiSource(stac_api.url, bbox="1,2,3")
        with pytest.raises(QueryError, match="datetime: 'last week' is not a STAC datetime"):
            StacApiSource(stac_api.url, datetime="last week")
        with pytest.raises(StacApiError, match="expected an http"):
            StacApiSource("ftp://example.org/stac")
    finally:
        files.shutdown()
        files.server_close()


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def vlm() -> Iterator[ChatCompletions]:
    server = ChatCompletions()
    yield server
    server.stop()


def ingest_args(url: str, index: str, state: Path, vlm: ChatCompletions, *extra: str) -> list[str]:
    return ["ingest", "stac-api", url, "--index", index, "--state-dir", str(state), "--json",
            "--captioner", "openai", "--model", "tiny-vl", "--vlm-url", vlm.base_url, "--vlm-concurrency", "1",
            "--no-cluster-model", "--batch-size", "2", *extra]


def indexed(os_client, index: str) -> list[str]:
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 100, "_source": False})["hits"]["hits"]
    return sorted(hit["_id"] for hit in hits)


def test_ingest_stac_api_then_search_by_place_and_rerun(scenes, proxy, vlm, os_client, index_name, cli_env,
                                                        tmp_path):
    args = ingest_args(proxy.url, index_name, tmp_path / "state", vlm, "--collections", scenes,
                       "--page-size", "2")
    first = run_cli(args, cli_env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["ingested"] == SCENES and summary["quarantined"] == 0
    assert summary["source"] == f"STAC API {proxy.url} (collections {scenes})"
    assert indexed(os_client, index_name) == ids(*(f"scene{i}" for i in range(SCENES)))
    assert len(vlm.answered) == SCENES

    found = run_cli(["search", "aerial view with small buildings", "--index", index_name, "--json",
                     "--bbox", "1.9,9,4.6,11"], cli_env)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert sorted(hit["image_id"] for hit in hits) == ids("scene2", "scene3", "scene4")

    again = run_cli(args, cli_env)
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert (rerun["ingested"], rerun["skipped"]) == (0, SCENES)
    assert len(vlm.answered) == SCENES  # nothing captioned twice


def test_a_stopped_run_resumes_without_duplicates(scenes, proxy, vlm, os_client, index_name, cli_env, tmp_path):
    state = tmp_path / "state"
    part = run_cli(ingest_args(proxy.url, index_name, state, vlm, "--collections", scenes, "--page-size", "2",
                               "--max-items", "3"), cli_env)
    assert part.returncode == 0, part.stderr
    assert json.loads(part.stdout)["ingested"] == 3
    newest = ids("scene6", "scene5", "scene4")  # the API sorts by datetime, newest first
    assert indexed(os_client, index_name) == newest

    proxy.failures_left = None  # from now on, the API fails every page after the first
    broken = run_cli(ingest_args(proxy.url, index_name, state, vlm, "--collections", scenes, "--page-size", "2",
                                 "--api-retries", "1"), cli_env)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    errors = [line for line in broken.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "page 2 of the search failed" in errors[0] and "Traceback" not in broken.stderr
    assert set(newest) <= set(indexed(os_client, index_name))

    proxy.failures_left = 0
    rest = run_cli(ingest_args(proxy.url, index_name, state, vlm, "--collections", scenes, "--page-size", "2"),
                   cli_env)
    assert rest.returncode == 0, rest.stderr
    summary = json.loads(rest.stdout)
    assert summary["ingested"] + summary["skipped"] == SCENES and summary["skipped"] >= 3
    assert indexed(os_client, index_name) == ids(*(f"scene{i}" for i in range(SCENES)))
    assert len(vlm.answered) == len(set(vlm.answered)) == SCENES  # no image captioned twice


def test_bad_input_is_one_line_exit_2_and_nothing_on_the_cluster(stac_api, scenes, opensearch_url, os_client,
                                                                 index_name, cli_env, tmp_path, vlm):
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    cases = [
        ([f"http://127.0.0.1:{port}", "--api-retries", "0"], "unreachable (connection refused)"),
        ([opensearch_url], "not a STAC API"),
        ([stac_api.url, "--collections", f"{scenes},nowhere-x"], "unknown collection 'nowhere-x'"),
        ([stac_api.url, "--bbox", "10,20,5"], "bbox: needs 4 numbers"),
        ([stac_api.url, "--bbox", "0,50,10,40"], "bbox: south 50.0 is north of north 40.0"),
        ([stac_api.url, "--datetime", "2022/2021"], "datetime: start"),
        ([stac_api.url, "--datetime", "soon"], "datetime: 'soon' is not a STAC datetime"),
        ([stac_api.url, "--intersects", "{not json"], "--intersects is not valid JSON"),
        ([stac_api.url, "--page-size", "0"], "--page-size 0: must be between 1 and 10000"),
        ([stac_api.url, "--max-items", "0"], "--max-items 0: must be 1 or more"),
        ([stac_api.url, "--query", "[1]"], "--query: expected a JSON object"),
    ]
    for extra, expected in cases:
        args = ["ingest", "stac-api", *extra, "--index", index_name, "--state-dir", str(tmp_path / "state"),
                "--captioner", "openai", "--model", "tiny-vl", "--vlm-url", vlm.base_url]
        result = run_cli(args, cli_env)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        assert len(lines) == 1 and expected in lines[0], (extra, lines)
        assert "Traceback" not in result.stderr
    assert not os_client.indices.exists(index=index_name)
    assert not os_client.indices.exists_alias(name=index_name)
    assert not vlm.answered
