"""`rsrt serve` checked by the official STAC API validator (stac-api-validator 0.6.8), offline.

The real CLI serves a real index on the test node from a subprocess; the validator runs from
`tests/offline_stac_validator.py`, which answers every schema read from the copies installed packages ship and fails
the harness on any other read that would leave the machine. The index holds dated and undated images, with
and without footprints, in two collections, the files being real JPEGs of the shared sample.

The validator works on one collection (`--collection`) at a time, so it runs once per collection:
- `validated-aerial` (every image dated, one without a footprint) with every class asked for, sort included;
- `mixed-archive` (two undated images, one without a footprint) with every class but sort: the validator's
  sort check sorts the returned `properties.datetime` values in Python (validations.py L3743, L3768, L3794,
  L3819: `sorted_datetimes.sort()`) and `None < str` raises, which ends its whole run, though `datetime: null`
  with a range is valid STAC 1.1.
The validator validates single items against the schemas only through /collections/{id}/items (first item)
and /collections/{id}/items/{id}; `test_pystac_validates_…` validates every item, undated ones included.

Why the images carry `eo:cloud_cover` and `mission`: the validator's CQL2 checks are fixed expressions on
those two properties (stac_api_validator/filters.py), and an API whose queryables do not hold them answers
400 (correct: our queryables say `additionalProperties: false`), which the validator counts as errors.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pystac_client import Client

from conftest import SAMPLE_IMAGES, build_index, serve_subprocess
from offline_stac_validator import (
    ValidatorCouldNotRun,
    ValidatorReport,
    is_loopback,
    local_schemas,
    run_validator,
)
from rsrt.search.index import delete_index
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

VALIDATED = "validated-aerial"  # every image dated: the validator's sort check can run on it
OTHER = "mixed-archive"  # dated and undated images
CONFORMANCE = ["core", "item-search", "collections", "features", "filter", "item-search#sort"]
RUNS = {VALIDATED: CONFORMANCE, OTHER: [name for name in CONFORMANCE if name != "item-search#sort"]}
VALIDATOR_OPTIONS = ("--validate-pagination",)  # next links of /search (GET, POST) and /items: 8 images, quick
# Covers the footprints near 10°E 45°N (not those at 20°E 20°N): the validator's intersects search must find
# some, and every one it gets must intersect it.
AREA = {"type": "Polygon", "coordinates": [[[9.0, 44.0], [13.0, 44.0], [13.0, 47.0], [9.0, 47.0], [9.0, 44.0]]]}
CAPTIONS = [
    ("An airport with a runway and parked planes.", "runway (long) center; planes (small) west",
     "Gray runway crossing the scene with white planes parked near a terminal."),
    ("Houses are scattered among green fields.", "houses (small) scattered; fields (large) everywhere",
     "Sparse residential area, single houses among green fields and trees."),
    ("A paved square surrounded by buildings.", "square (large) center; buildings (medium) around",
     "A wide paved square in the middle of dense buildings and streets."),
    ("Dense trees beside a river.", "trees (dense) north; river (long) south",
     "Dark green trees along a winding river with sandy banks."),
]


def _footprint(west: float, south: float) -> dict:
    east, north = west + 0.2, south + 0.2
    return {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                [west, south]]]}


def _records() -> list[ImageRecord]:
    images = sorted(SAMPLE_IMAGES.glob("*.jpg"))
    assert len(images) >= 8, f"the shared sample {SAMPLE_IMAGES} should hold 8 JPEGs"
    records = []
    for i, image in enumerate(images[:8]):
        validated = i < 4
        dated = validated or i % 2 == 0  # images 5 and 7 are undated
        with_footprint = i not in (3, 7)  # one image without a footprint in each collection
        # One image of each collection lies in the validator's fixed box 20,20,21,21: only then does it check
        # that `ids` does not override the other parameters (validate_item_search_ids_does_not_override_…).
        west, south = (20.2 + i * 0.05, 20.3) if i in (2, 6) else (10.0 + i * 0.3, 45.0 + (i % 3) * 0.3)
        geometry = _footprint(west, south) if with_footprint else None
        one, feature, caption = CAPTIONS[i % len(CAPTIONS)]
        records.append(ImageRecord(
            image_id=f"{image.stem}-{i}", source_uri=str(image), collection=VALIDATED if validated else OTHER,
            datetime=f"2021-0{i + 1}-1{i}T10:00:00Z" if dated else None, geometry=geometry,
            bbox=[*geometry["coordinates"][0][0], *geometry["coordinates"][0][2]] if geometry else None,
            properties={"eo:cloud_cover": float(i * 7 % 60), "mission": "sentinel-2" if i % 2 else "landsat-8"},
            variants=[Variant(one_sentence=one, feature=feature, caption=caption)]))
    return records


@pytest.fixture(scope="module")
def served_api(os_client, cli_env, tmp_path_factory) -> Iterator[str]:
    """`rsrt serve` on a fresh index, as a subprocess of the real CLI on a port the OS picked."""
    name = f"rsrt-validator-{uuid.uuid4().hex[:10]}"
    build_index(os_client, name, _records(), tmp_path_factory.mktemp("validator-ledger"))
    args = ["--index", name, "--host", "127.0.0.1", "--max-limit", "100"]
    try:
        with serve_subprocess(args, cli_env, tmp_path_factory.mktemp("serve") / "serve.log") as url:
            yield url
    finally:
        delete_index(os_client, name)


def _validate(url: str, collection: str) -> ValidatorReport:
    try:
        return run_validator(url, conformance=RUNS[collection], collection=collection, geometry=AREA,
                             extra_args=VALIDATOR_OPTIONS)
    except ValidatorCouldNotRun as exc:
        pytest.fail(f"the validator could not run (no verdict on the API): {exc}")


@pytest.mark.parametrize("collection", list(RUNS))
def test_rsrt_serve_passes_the_official_stac_api_validator(served_api: str, collection: str) -> None:
    report = _validate(served_api, collection)
    # Schema validation really happened, from the local copies: an item and a collection were checked.
    served = set(report.schemas_served)
    assert "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json" in served, served
    assert "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json" in served, served
    # The checks that skip themselves with a warning when the data does not let them run did run.
    skipped = [warning for warning in report.warnings if "to validate ids does not override" in warning]
    assert not skipped, skipped
    # No allowance: the validator's POST sort check sends `collections` as a lone string (validations.py
    # L3750, L3801; the spec says an array), which rsrt accepts as one id.
    assert report.errors == [], f"{len(report.errors)} validator errors:\n" + "\n".join(report.errors)


def test_pystac_validates_the_catalog_and_its_collections(served_api: str) -> None:
    """The validator's last step, run here too: it runs only when the validator found no error at all
    (validations.py L762-771), so one validator defect above would silently skip it. It walks `child` links,
    which a STAC API need not have; the collections are reached through /collections here as well. pystac
    validates STAC 1.1 against the schemas it ships; needing any other would raise (no network here)."""
    catalog = Client.open(served_api)
    catalog.validate()
    for child in catalog.get_children():
        child.validate()
    collections = list(catalog.get_collections())
    assert {collection.id for collection in collections} == {VALIDATED, OTHER}
    for collection in collections:
        collection.validate()
    items = list(catalog.search(limit=100).items())  # undated ones included: they must hydrate and validate
    assert len(items) == 8
    for item in items:
        item.validate()


def test_the_index_holds_what_the_validator_should_see(served_api: str) -> None:
    """The fixture is what the module says: undated and footprint-less images served, two collections."""
    items = httpx.get(f"{served_api}/search", params={"limit": 100}, timeout=60).json()["features"]
    assert len(items) == 8
    assert {item["collection"] for item in items} == {VALIDATED, OTHER}
    assert sum(item["properties"]["datetime"] is None for item in items) == 2
    assert sum(item["geometry"] is None for item in items) == 2


# ---------------------------------------------------------------- the harness itself: it can fail


def test_local_schemas_come_from_installed_packages() -> None:
    schemas = local_schemas()
    for url in ("https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
                "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json",
                "https://geojson.org/schema/Feature.json", "http://json-schema.org/draft-07/schema"):
        assert json.loads(schemas[url]), url
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("schemas.stacspec.org") and not is_loopback("10.0.0.1")


def test_a_schema_without_a_local_copy_fails_the_harness(tmp_path: Path) -> None:
    """An API naming a schema no package ships (here a stac-extensions schema): the harness refuses to judge."""
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "x", "geometry": None, "properties": {
        "datetime": "2021-01-01T00:00:00Z"}, "links": [], "assets": {},
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"]}
    with _static_api(tmp_path, item) as url, pytest.raises(ValidatorCouldNotRun,
                                                           match=r"needed the network.*stac-extensions\.github\.io/eo"):
        run_validator(url, conformance=["core", "features"], collection="c")


def test_no_api_at_all_is_could_not_run_not_a_pass() -> None:
    """Nothing listens: the validator prints "Failed." and exits 0 (its __main__.py L211-217: click drops the
    command's `return 1`); the harness must call that "could not run", never "no errors"."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(ValidatorCouldNotRun, match="crashed before giving a verdict"):
        run_validator(f"http://127.0.0.1:{closed_port}/", conformance=["core"], collection="c")


def test_an_api_that_breaks_the_rules_gets_errors_not_a_crash(tmp_path: Path) -> None:
    """A static directory served as an 'API': the validator runs to the end and finds errors, and the harness
    adds the sort class asked for but not advertised (the validator itself never looks)."""
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "x", "geometry": None, "properties": {
        "datetime": "2021-01-01T00:00:00Z"}, "links": [], "assets": {}, "stac_extensions": []}
    with _static_api(tmp_path, item) as url:
        report = run_validator(url, conformance=["core", "features", "item-search#sort"], collection="c")
    assert any("Link[rel=service-desc] must exist" in error for error in report.errors), report.errors
    assert any(error.startswith("[harness] --conformance item-search#sort") for error in report.errors), report.errors


class _JsonFiles(http.server.SimpleHTTPRequestHandler):
    """Serve `<path>/index.json` for `<path>`: application/geo+json under /items, else application/json."""

    def translate_path(self, path: str) -> str:
        local = Path(super().translate_path(path))
        return str(local / "index.json" if local.is_dir() else local)

    def guess_type(self, path: str | os.PathLike[str]) -> str:
        return "application/geo+json" if "/items" in str(path) else "application/json"

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _static_api(root: Path, item: dict) -> Iterator[str]:
    """A landing page, one collection and one item as files on a plain loopback HTTP server: no real API."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_JsonFiles, directory=str(root)))
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    item_links = [{"rel": "self", "href": f"{url}/collections/c/items/x"}, {"rel": "root", "href": f"{url}/"},
                  {"rel": "collection", "href": f"{url}/collections/c"}]
    feature = {**item, "collection": "c", "links": item_links}
    files = {
        "index.json": {"type": "Catalog", "stac_version": "1.1.0", "id": "r", "description": "r",
                       "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                      "https://api.stacspec.org/v1.0.0/ogcapi-features"],
                       "links": [{"rel": "self", "href": f"{url}/", "type": "application/json"},
                                 {"rel": "root", "href": f"{url}/", "type": "application/json"},
                                 {"rel": "data", "href": f"{url}/collections"},
                                 {"rel": "child", "href": f"{url}/collections/c"}]},
        "collections/c/index.json": {
            "type": "Collection", "stac_version": "1.1.0", "id": "c", "description": "c", "license": "other",
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
            "links": [{"rel": "self", "href": f"{url}/collections/c"}, {"rel": "root", "href": f"{url}/"},
                      {"rel": "parent", "href": f"{url}/"}, {"rel": "items", "href": f"{url}/collections/c/items"}]},
        "collections/c/items/index.json": {"type": "FeatureCollection", "features": [feature], "links": []},
        "collections/c/items/x/index.json": feature,
    }
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(body))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        httpd.shutdown()
        httpd.server_close()
