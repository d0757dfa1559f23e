"""A real portal on rsrt: STAC Browser 4.0.1 in headless Chromium against `rsrt serve` (issue #16).

Everything is real: the 8 RSICD sample images in a static STAC catalog (footprints, datetimes) are
ingested by `rsrt ingest images CATALOG` with captions from a loopback VLM that gives each picture
its own known caption (`CAPTIONS`); `rsrt serve` (a subprocess of the CLI, lexical by default, CORS
for the portal's origin) serves the index; STAC Browser, built from its npm source
(`stac_browser.built_stac_browser`, cached), is served on loopback and driven by Chromium: catalog →
search page → free-text "trees" → submit → the tree images, their footprints on the map, their
thumbnails loaded → next page: the other tree images, none twice. Screenshots go to
`reports/stac-browser/`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import REPO, SAMPLE_IMAGES, run_cli, serve_subprocess
from rsrt.search.index import delete_index
from stac_browser import PortalServer, PortalSetupError, built_stac_browser, chromium
from vlm_server import ChatCompletions

pytestmark = pytest.mark.integration

SHOTS = REPO / "reports" / "stac-browser"
QUERY = "trees"
PER_PAGE = 2
# image → what the VLM says it shows; only the QUERY images say "trees" (lexical search: a known answer)
CAPTIONS: dict[str, str] = {
    "airport_17": "planes parked on the apron beside a long runway and a terminal",
    "rs_00013": "dense residential blocks with many buildings around a playground",
    "rs_00256": "a racecourse with a dirt track around a grass field",
    "rs_00455": "a stadium with a running track and a football field beside green trees",
    "sparseresidential_268": "a house with a blue roof in a dense forest of tall trees",
    "sparseresidential_3": "scattered houses and dirt roads between meadows and trees",
    "square_102": "a square with lawns and paths between tall buildings and trees",
    "square_146": "a highway interchange with curved overpasses and ramps",
}
MATCHES = {image for image, caption in CAPTIONS.items() if QUERY in caption.split()}
FOOTPRINT_ORANGE = (0xFF, 0x99, 0x33)  # ol-stac's default stroke for a list of children: search results


def _fingerprint(data: bytes) -> list[int]:
    """An 8×8 RGB miniature: tells the 8 pictures apart even after rsrt re-encodes them for the VLM."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return list(image.convert("RGB").resize((8, 8)).tobytes())


class CaptionTable(ChatCompletions):
    """The loopback VLM answering each sample image with its own `CAPTIONS` entry (five variants)."""

    def __init__(self) -> None:
        self.known = {path.stem: _fingerprint(path.read_bytes()) for path in SAMPLE_IMAGES.glob("*.jpg")}
        super().__init__()

    def _reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = body["messages"][0]["content"]
        url = next(p["image_url"]["url"] for p in parts if p.get("type") == "image_url")
        data = base64.b64decode(url.split(",", 1)[1])
        seen = _fingerprint(data)
        image = min(self.known, key=lambda name: sum(abs(a - b) for a, b in zip(self.known[name], seen, strict=True)))
        with self._lock:
            self.answered.append(hashlib.sha1(data).hexdigest())
        phrase = CAPTIONS[image]
        variants = [{"one_sentence": f"{phrase.capitalize()}, view {i}.", "feature": f"{phrase} (center)",
                     "caption": f"An aerial image of {phrase}, variant {i}."} for i in range(1, 6)]
        return 200, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": json.dumps({"variants": variants})}}]}


def _footprint(position: int) -> list[list[float]]:
    """A 0.02° square per image on a 4 × 2 grid over Beijing, so each footprint shows on its own."""
    west, south = 116.30 + 0.05 * (position % 4), 39.90 + 0.05 * (position // 4)
    return [[west, south], [west + 0.02, south], [west + 0.02, south + 0.02], [west, south + 0.02], [west, south]]


def _write_catalog(folder: Path) -> Path:
    """A static STAC catalog: one collection, one item per sample image (absolute asset hrefs: the
    shared images are not copied)."""
    import pystac

    root = pystac.Catalog(id="rsicd-portal", description="RSICD sample images for the STAC Browser test")
    collection = pystac.Collection(
        id="rsicd-sample", description="8 RSICD images",
        extent=pystac.Extent(pystac.SpatialExtent([[116.30, 39.90, 116.52, 39.97]]),
                             pystac.TemporalExtent([[None, None]])))
    for position, image in enumerate(sorted(CAPTIONS)):
        ring = _footprint(position)
        item = pystac.Item(
            id=image, geometry={"type": "Polygon", "coordinates": [ring]},
            bbox=[ring[0][0], ring[0][1], ring[2][0], ring[2][1]],
            datetime=pystac.utils.str_to_datetime(f"2024-{position + 1:02d}-15T10:00:00Z"), properties={})
        item.add_asset("visual", pystac.Asset(str(SAMPLE_IMAGES / f"{image}.jpg"), media_type=pystac.MediaType.JPEG,
                                              roles=["visual"]))
        collection.add_item(item)
    root.add_child(collection)
    root.normalize_hrefs(str(folder))
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"


@pytest.fixture(scope="module")
def portal_index(os_client, cli_env, tmp_path_factory) -> Iterator[str]:
    """The 8 sample images ingested through the real CLI from a static STAC catalog."""
    index = "rsrt-test-stac-browser"
    delete_index(os_client, index)
    folder = tmp_path_factory.mktemp("portal")
    catalog = _write_catalog(folder / "stac")
    vlm = CaptionTable()
    try:
        done = run_cli(["ingest", "images", str(catalog), "--index", index, "--state-dir", str(folder / "state"),
                        "--json", "--no-cluster-model", "--captioner", "openai", "--model", "tiny-vl",
                        "--vlm-url", vlm.base_url], cli_env)
    finally:
        vlm.stop()
    assert done.returncode == 0, (done.stdout, done.stderr)
    summary = json.loads(done.stdout)
    assert (summary["ingested"], summary["failed"]) == (len(CAPTIONS), 0), summary
    os_client.indices.refresh(index=index)
    yield index
    delete_index(os_client, index)


@pytest.fixture(scope="module")
def stac_browser_dist() -> Path:
    try:
        return built_stac_browser()
    except PortalSetupError as exc:
        pytest.fail(f"STAC Browser could not be built: {exc}")


@pytest.fixture(scope="module")
def portal(portal_index, stac_browser_dist, cli_env, tmp_path_factory) -> Iterator[tuple[str, PortalServer]]:
    """`rsrt serve` (a real subprocess) and the STAC Browser pointed at it: (API root, portal)."""
    # cardViewSort None: cards in the API's ranked order (STAC Browser sorts each page by title otherwise)
    config = {"catalogTitle": "rsrt portal test", "searchResultsPerPage": PER_PAGE,
              "allowExternalAccess": False, "detectLocaleFromBrowser": False, "storeLocale": False,
              "locale": "en", "socialSharing": [], "cardViewSort": None}
    with PortalServer(stac_browser_dist, config) as server:
        args = ["--index", portal_index, "--cors-origin", server.origin, "--default-mode", "lexical"]
        with serve_subprocess(args, cli_env, tmp_path_factory.mktemp("serve") / "serve.log") as base:
            api_root = f"{base}/"
            server.configure({**config, "catalogUrl": api_root})
            yield api_root, server


class Page:
    """The browser with waits that fail with a screenshot and the console log, never hang."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        SHOTS.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str, top: bool = True) -> Path:
        path = SHOTS / f"{name}.png"
        if top:
            self.driver.execute_script("window.scrollTo(0, 0);")
        self.driver.save_screenshot(str(path))
        return path

    def requests(self) -> str:
        """The page's requests to other origins than the portal (the API), from Chromium's log."""
        lines = []
        try:
            for entry in self.driver.get_log("performance"):
                message = json.loads(entry["message"])["message"]
                if message["method"] == "Network.requestWillBeSent":
                    request = message["params"]["request"]
                    lines.append(f"{request['method']} {request['url']} {request.get('postData', '')}".strip())
                elif message["method"] == "Network.responseReceived":
                    response = message["params"]["response"]
                    lines.append(f"  -> {response['status']} {response['url']}")
        except Exception as exc:  # help for a failure message, not part of the test
            return f"(no request log: {exc})"
        return "\n".join(line for line in lines if "/js/" not in line and "/css/" not in line)[-4000:]

    def console(self) -> str:
        try:
            return "\n".join(f"{e['level']} {e['message']}" for e in self.driver.get_log("browser"))[-4000:]
        except Exception as exc:  # the log is help for a failure message, not part of the test
            return f"(no console log: {exc})"

    def wait(self, what: str, condition: Any, timeout: float = 60) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(lambda d: condition(d))
        except TimeoutException:
            shot = self.shot("failure-" + "".join(c if c.isalnum() else "-" for c in what)[:60])
            alerts = " | ".join(a.text for a in self.css(".alert") if a.text.strip())
            pytest.fail(f"STAC Browser: {what} (not within {timeout} s; screenshot {shot}; url "
                        f"{self.driver.current_url})\nalerts: {alerts}\nbrowser console:\n{self.console()}"
                        f"\nrequests:\n{self.requests()}")

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def card_ids(self) -> list[str]:
        return [card.text.strip() for card in self.css("main.search .item-card .card-title")]


def _api_pages(api_root: str) -> list[list[dict[str, Any]]]:
    """What the API answers for the portal's query, page by page (following `next`)."""
    pages, url, params = [], f"{api_root}search", {"q": QUERY, "limit": PER_PAGE}
    while url and len(pages) < 10:
        answer = httpx.get(url, params=params, timeout=60)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append(body["features"])
        url = next((link["href"] for link in body["links"] if link["rel"] == "next"), None)
        params = None
    return pages


def _footprints_on_map(page: Page) -> int:
    """How many separate outlines the map draws in the footprint colour (the basemap stays blank: no network).

    A screenshot of the map, not the canvas: thumbnails drawn on it would taint a canvas read."""
    from PIL import Image

    maps = page.css("#search-map .map")
    if len(maps) != 1:  # between two pages: no map yet
        return -1
    image = Image.open(io.BytesIO(maps[0].screenshot_as_png)).convert("RGB")
    width, height = image.size
    pixels = image.load()
    mask = {(x, y) for y in range(height) for x in range(width)
            if all(abs(a - b) <= 40 for a, b in zip(pixels[x, y], FOOTPRINT_ORANGE, strict=True))}
    outlines = 0
    while mask:
        outlines += 1
        todo = [mask.pop()]
        while todo:  # flood fill one outline (8-connected)
            x, y = todo.pop()
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    if (x + dx, y + dy) in mask:
                        mask.remove((x + dx, y + dy))
                        todo.append((x + dx, y + dy))
    return outlines


def _check_results(page: Page, expected: list[dict[str, Any]], label: str) -> list[str]:
    """The cards are the expected items, in order; their thumbnails are the items' thumbnail assets and
    loaded; their footprints are on the map."""
    ids = [item["id"] for item in expected]
    page.wait(f"{label}: the cards {ids}", lambda d: page.card_ids() == ids)
    page.wait(f"{label}: {len(ids)} footprints on the map", lambda d: _footprints_on_map(page) == len(ids), timeout=30)
    for card, item in zip(page.css("main.search .item-card"), expected, strict=True):
        page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", card)
        thumbnail = item["assets"].get("thumbnail", {}).get("href")
        assert thumbnail, f"{label}: item {item['id']} has no thumbnail asset (H2's thumbnails + H1's items)"
        page.wait(f"{label}: {item['id']}'s thumbnail {thumbnail} loaded",
                  lambda d, card=card, thumbnail=thumbnail: d.execute_script(
                      "const img = arguments[0].querySelector('img.thumbnail');"
                      "return !!img && img.src === arguments[1] && img.complete && img.naturalWidth > 0;",
                      card, thumbnail), timeout=30)
    page.driver.execute_script("window.scrollTo(0, 0);")
    return ids


def test_stac_browser_finds_pages_and_shows_the_indexed_images(portal) -> None:
    from selenium.webdriver.common.keys import Keys

    api_root, server = portal
    expected_pages = _api_pages(api_root)
    expected_ids = [[item["id"] for item in page] for page in expected_pages]
    assert [len(ids) for ids in expected_ids] == [PER_PAGE, len(MATCHES) - PER_PAGE], expected_ids
    assert {i for ids in expected_ids for i in ids} == MATCHES  # the API's own answer is the known one

    title = httpx.get(api_root, timeout=30).json()["title"]

    with chromium(window=(1400, 1500)) as driver:
        page = Page(driver)
        driver.get(server.origin + "/")
        page.wait(f"the catalog page (title {title!r})", lambda d: title in [h1.text.strip() for h1 in page.css("h1")])
        page.wait("the collection rsicd-sample on the catalog page", lambda d: "rsicd-sample" in d.page_source)
        page.shot("01-catalog")

        page.wait("a link to the search page", lambda d: page.css("a[href$='/search']"))
        page.css("a[href$='/search']")[0].click()
        page.wait("the search page's free-text field (needs the item-search#free-text conformance class)",
                  lambda d: page.css("main.search .filter-freetext .multiselect"))
        page.shot("02-search-form")

        page.css("main.search .filter-freetext .multiselect")[0].click()
        field = page.wait("the free-text input", lambda d: page.css("main.search .filter-freetext input"))[0]
        field.send_keys(QUERY)
        field.send_keys(Keys.ENTER)
        page.wait(f"the search term '{QUERY}' as a tag",
                  lambda d: [t.text.strip() for t in page.css(".filter-freetext .multiselect__tag")] == [QUERY])
        page.css("main.search form.filter button[type=submit]")[0].click()

        first = _check_results(page, expected_pages[0], "page 1")
        page.shot("03-results-page-1")

        nexts = [button for button in page.css("main.search .items button")
                 if button.text.strip().startswith("Next") and button.is_enabled()]
        assert nexts, "STAC Browser shows no enabled Next button on page 1"
        nexts[0].click()
        second = _check_results(page, expected_pages[1], "page 2")
        page.shot("04-results-page-2")

        previous = [button for button in page.css("main.search .items button")
                    if "Previous" in button.text and button.is_enabled()]
        assert previous, "STAC Browser shows no enabled Previous button on page 2 (the API's `prev` link)"
        previous[0].click()
        assert _check_results(page, expected_pages[0], "page 1 again") == first

        driver.get(server.origin + "/search")  # a history-mode route loaded directly: the portal's fallback
        page.wait("the search page loaded from its own URL", lambda d: page.css("main.search .filter-freetext"))

    assert not set(first) & set(second), (first, second)
    assert set(first) | set(second) == MATCHES
