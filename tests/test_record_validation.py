"""Issue #15's hostile records and options: what a source lets through, what a filter matches, what the CLI says.

One captions file holds every kind of record the probes used; it goes through the real `rsrt ingest`
into a real node once, and the tests read the run's summary, its quarantine and the index.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from rsrt.ingest.sources import SourceProblem, StacSource
from rsrt.ingest.sources.base import MAX_PROPERTY_FIELDS, check_properties, geometry_and_bbox, property_fields
from rsrt.search.errors import QueryError
from rsrt.search.filters import Filters
from rsrt.search.index import delete_index, to_document
from rsrt.search.request import SearchRequest
from rsrt.search.schema import ImageRecord, Variant
from rsrt.search.searcher import Searcher

MODES = ("dense", "lexical", "hybrid")
BOWTIE = {"type": "Polygon", "coordinates": [[[10, 40], [11, 41], [11, 40], [10, 41], [10, 40]]]}
UNCLOSED = {"type": "Polygon", "coordinates": [[[10, 40], [11, 40], [11, 41], [10, 41]]]}
SQUARE = {"type": "Polygon", "coordinates": [[[10, 40], [11, 40], [11, 41], [10, 41], [10, 40]]]}
TYPED = {  # one image each: a whole number, a fraction, a flag, a date
    "box-europe": {"cloud_cover": 7, "sun_elevation": 41.5, "clear": True, "acquired": "2021-06-01T10:00:00Z"},
    "box-dateline": {"cloud_cover": 30, "sun_elevation": 12.25, "clear": False, "acquired": "2021-07-01T10:00:00Z"},
    "no-place": {"cloud_cover": 7, "sun_elevation": 60.0, "clear": False, "acquired": "2021-08-01T10:00:00Z"},
    # a fraction after whole numbers: a `long` mapping (dynamic mapping's guess from the first value) would index 12
    "late-fraction": {"cloud_cover": 12.5, "sun_elevation": 33.0, "clear": False, "acquired": "2021-09-01T10:00:00Z"},
}


def _variants(name: str) -> list[dict[str, str]]:
    return [{"one_sentence": f"A harbour with {j + 2} ships ({name}).", "feature": "ships (small) north; dock south",
             "caption": f"A gray port seen from above with {j + 2} ships moored, image {name}."} for j in range(5)]


def _line(name: str, **meta: object) -> str:
    return json.dumps({"image": f"{name}.jpg", "variants": _variants(name), **meta}) + "\n"


def _archive_lines() -> list[str]:
    """In the order the probes used: the records that must work first, then the ones that broke the run."""
    return [
        _line("box-europe", bbox=[10, 40, 11, 41], properties=TYPED["box-europe"]),
        _line("box-dateline", bbox=[170, -10, -170, 10], properties=TYPED["box-dateline"]),
        _line("no-place", properties=TYPED["no-place"]),
        _line("late-fraction", properties=TYPED["late-fraction"]),
        _line("self-crossing", geometry=BOWTIE),
        _line("unclosed", geometry=UNCLOSED),
        _line("bbox-elsewhere", geometry=SQUARE, bbox=[50, 50, 51, 51]),
        _line("off-the-globe", geometry={"type": "Point", "coordinates": [200, 10]}),
        _line("many-properties", properties={f"key{n:03d}": n for n in range(900)}),
        # each valid (150 fields), together far past what the 900-key image left of the 1,000-field limit
        *[_line(f"wide-{i}", properties={f"w{i}_{n:03d}": n for n in range(150)}) for i in range(3)],
    ]


@pytest.fixture(scope="module")
def archive(os_client, cli_env, tmp_path_factory):
    """The run's summary and quarantine after `rsrt ingest captions` of every hostile record, one writer."""
    folder = tmp_path_factory.mktemp("hostile")
    path = folder / "captions.jsonl"
    path.write_text("".join(_archive_lines()), encoding="utf-8")
    name = "rsrt-record-validation"
    delete_index(os_client, name)
    state = folder / "state"
    result = run_cli(["ingest", "captions", str(path), "--index", name, "--state-dir", str(state), "--json",
                      "--batch-size", "1", "--workers", "1", "--no-cluster-model"], cli_env)
    assert "Traceback" not in result.stderr, result.stderr
    summary = json.loads(result.stdout)
    quarantine = {}
    if (state / "quarantine.jsonl").exists():
        for line in (state / "quarantine.jsonl").read_text().splitlines():
            entry = json.loads(line)
            quarantine[entry["item"]] = entry["reason"]
    dead = state / "dead-letter.jsonl"
    letters = [json.loads(line)["image_id"] for line in dead.read_text().splitlines()] if dead.exists() else []
    os_client.indices.refresh(index=name)
    yield {"name": name, "summary": summary, "quarantine": quarantine, "dead": letters}
    delete_index(os_client, name)


def _indexed(os_client, name: str) -> set[str]:
    hits = os_client.search(index=name, body={"size": 100, "_source": False})["hits"]["hits"]
    return {hit["_id"] for hit in hits}


def _reason(archive, stem: str) -> str:
    found = [reason for item, reason in archive["quarantine"].items() if stem in item]
    assert len(found) == 1, archive["quarantine"]
    assert "\n" not in found[0]
    return found[0]


# ---------------------------------------------------------------------- 1. properties and the mapping


@pytest.mark.integration
def test_a_record_with_900_properties_does_not_lock_out_later_records(archive, os_client):
    indexed = _indexed(os_client, archive["name"])
    assert {"wide-0", "wide-1", "wide-2"} <= indexed, (archive["dead"], archive["summary"])
    assert archive["dead"] == [] and archive["summary"]["failed"] == 0
    assert "many-properties" not in indexed
    reason = _reason(archive, "many-properties")
    assert "900 fields" in reason and str(MAX_PROPERTY_FIELDS) in reason


def test_property_bounds_count_what_the_mapping_would_hold():
    paths, depth = property_fields({"a": 1, "b.c": "x", "d": {"e": [1, 2], "f": None}, "g": [{"h": 1}, {"i": 2}]})
    assert paths == {"a", "b.c", "d.e", "g.h", "g.i"} and depth == 2
    check_properties({f"k{n}": n for n in range(MAX_PROPERTY_FIELDS)})  # at the bound: fine
    with pytest.raises(ValueError, match=f"{MAX_PROPERTY_FIELDS + 1} fields"):
        check_properties({f"k{n}": n for n in range(MAX_PROPERTY_FIELDS + 1)})
    deep: dict = {"leaf": 1}
    for _ in range(12):
        deep = {"level": deep}
    with pytest.raises(ValueError, match="13 levels deep"):
        check_properties(deep)
    for bad in ("", " ", "a..b", ".a"):
        with pytest.raises(ValueError, match="cannot be a field name"):
            check_properties({bad: 1})
    check_properties({"a.": 1, "eo:cloud_cover": 3, " spaced ": 1})  # OpenSearch maps these


# ---------------------------------------------------------------------- 2. a bbox alone is a place


def test_a_bbox_alone_becomes_its_polygon():
    geometry, bbox = geometry_and_bbox(None, [10, 40, 11, 41])
    assert geometry == SQUARE and bbox == [10.0, 40.0, 11.0, 41.0]
    across, _ = geometry_and_bbox(None, [170, -10, -170, 10])
    assert across["type"] == "MultiPolygon" and [p[0][0][0] for p in across["coordinates"]] == [170.0, -180.0]
    assert geometry_and_bbox(None, [5, 5, 5, 5])[0] == {"type": "Point", "coordinates": [5.0, 5.0]}
    # a record made in code with a bbox only (no source) is matched by its box too
    document = to_document(ImageRecord(image_id="x", bbox=[10, 40, 11, 41], variants=[Variant(caption="port")]))
    assert document["geometry"] == SQUARE


@pytest.mark.integration
@pytest.mark.parametrize("mode", MODES)
def test_bbox_only_records_match_bbox_filters_in_every_mode(archive, os_client, mode):
    searcher = Searcher(os_client, archive["name"])
    for query_box, expected in [("10.5,40.5,12,42", {"box-europe"}), ("175,-5,179,5", {"box-dateline"}),
                                ("-179,-5,-175,5", {"box-dateline"}), ("160,-5,-160,5", {"box-dateline"}),
                                ("-60,-5,-50,5", set())]:
        request = SearchRequest("harbour with ships", mode, 10, filters=Filters.build(bbox=query_box))
        assert {h.image_id for h in searcher.search(request).hits} == expected, query_box


@pytest.mark.integration
def test_bbox_only_record_through_the_cli(archive, cli_env):
    result = run_cli(["search", "harbour with ships", "--index", archive["name"], "--bbox", "10.5,40.5,12,42",
                      "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    assert [hit["image_id"] for hit in json.loads(result.stdout)["hits"]] == ["box-europe"]


# ---------------------------------------------------------------------- 3. typed property filters


def test_property_values_are_converted_for_their_mapped_type():
    types = {"n": "long", "x": "double", "ok": "boolean", "when": "date", "name": "keyword"}
    typed = Filters.build(properties={"n": ["9007199254740993", "1e3"], "x": " 7 ", "ok": "TRUE", "when": "2020/01/02",
                                      "name": "s2a", "unmapped": "7"}).typed(types)
    assert typed.properties == {"n": [9007199254740993, 1000], "x": 7.0, "ok": True, "when": "2020/01/02",
                                "name": "s2a", "unmapped": "7"}
    assert typed.clauses()[0] == {"bool": {"minimum_should_match": 1, "should": [
        {"term": {"properties.n": 9007199254740993}}, {"term": {"properties.n": 1000}}]}}
    for key, value in [("n", "inf"), ("n", "7.5"), ("x", "nan"), ("ok", "yes"), ("when", "2020-13-45"), ("n", True)]:
        with pytest.raises(QueryError, match=repr(key)):
            Filters.build(properties={key: value}).typed(types)


@pytest.mark.integration
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("key", "value"), [("cloud_cover", "7"), ("cloud_cover", "12.5"),
                                            ("sun_elevation", "41.5"), ("clear", "true"),
                                            ("acquired", "2021-06-01T10:00:00Z"), ("cloud_cover", ["7", "30"])])
def test_property_filters_on_typed_fields_match_in_every_mode(archive, os_client, mode, key, value):
    wanted = value if isinstance(value, list) else [value]
    expected = {name for name, props in TYPED.items() if json.dumps(props[key]).strip('"') in wanted}
    request = SearchRequest("harbour with ships", mode, 10, explain=True,
                            filters=Filters.build(properties={key: value}))
    searcher = Searcher(os_client, archive["name"])
    results = searcher.search(request)
    assert expected and {h.image_id for h in results.hits} == expected
    if mode == "hybrid":  # fused from both sides, not lexical alone; in the cluster's hybrid query too
        assert results.fusion_site == "client"
        assert all(h.explanation["dense"]["raw"] is not None for h in results.hits)
        server = searcher.search(dataclasses.replace(request, fusion_site="server", explain=False))
        assert {h.image_id for h in server.hits} == expected


@pytest.mark.integration
def test_numbers_in_properties_are_mapped_as_double_so_later_fractions_are_not_truncated(archive, os_client):
    mapping = os_client.indices.get_mapping(index=archive["name"])
    fields = next(iter(mapping.values()))["mappings"]["properties"]["properties"]["properties"]
    assert fields["cloud_cover"]["type"] == "double"  # its first value was 7: dynamic mapping alone says long
    twelve = Filters.build(properties={"cloud_cover": "12"})
    request = SearchRequest("harbour with ships", "lexical", 10, filters=twelve)
    assert Searcher(os_client, archive["name"]).search(request).hits == []  # 12.5 was not indexed as 12


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("key", "value", "says"), [("cloud_cover", "cloudy", "holds numbers"),
                                                    ("clear", "yes", "holds true/false"),
                                                    ("acquired", "last june", "holds dates")])
@pytest.mark.integration
def test_a_value_the_property_cannot_hold_is_refused_naming_it(archive, os_client, mode, key, value, says):
    request = SearchRequest("harbour", mode, 10, filters=Filters.build(properties={key: [value]}))
    with pytest.raises(QueryError, match=says) as caught:
        Searcher(os_client, archive["name"]).search(request)
    assert caught.value.field == "properties" and repr(key) in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize("mode", MODES)
def test_numeric_property_filter_through_the_cli(archive, cli_env, mode):
    args = ["search", "harbour with ships", "--index", archive["name"], "--mode", mode, "--json"]
    result = run_cli([*args, "--property", "cloud_cover=7"], cli_env)
    assert result.returncode == 0, result.stderr
    assert {hit["image_id"] for hit in json.loads(result.stdout)["hits"]} == {"box-europe", "no-place"}
    refused = run_cli([*args, "--property", "cloud_cover=lots"], cli_env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == ["error: --property: 'cloud_cover' holds numbers; 'lots' is not "
                                                   "a number"]


# ---------------------------------------------------------------------- 4. geometries checked at the source


@pytest.mark.parametrize(("stem", "says"), [("self-crossing", "Self-intersection"), ("unclosed", "not closed"),
                                            ("bbox-elsewhere", "does not contain the geometry"),
                                            ("off-the-globe", "not WGS84")])
@pytest.mark.integration
def test_bad_geometries_are_quarantined_and_the_run_goes_on(archive, os_client, stem, says):
    assert says in _reason(archive, stem)
    indexed = _indexed(os_client, archive["name"])
    assert not any(stem in image_id for image_id in indexed)
    assert archive["dead"] == [] and archive["summary"]["failed"] == 0  # no dead letters
    assert {"box-europe", "box-dateline", "no-place"} <= indexed


def test_geometry_checks():
    cases = [
        (BOWTIE, None, "Self-intersection"),
        (UNCLOSED, None, "not closed"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, None, "at least 4 positions"),
        ({"type": "LineString", "coordinates": [[0, 0]]}, None, "at least 2 positions"),
        ({"type": "Point", "coordinates": [10, 95]}, None, "not WGS84"),
        ({"type": "Point", "coordinates": [10, float("nan")]}, None, "finite"),
        ({"type": "Point", "coordinates": ["10", 5]}, None, "numbers"),
        ({"type": "Feature"}, None, "GeoJSON geometry"),
        (SQUARE, [10, 40, 10.5, 41], "does not contain"),
        (SQUARE, [170, -10, -170, 10], "does not contain"),
    ]
    for geometry, bbox, says in cases:
        with pytest.raises(ValueError, match=says):
            geometry_and_bbox(geometry, bbox)
    # within the tolerance of a rounded bbox, and across the antimeridian, a bbox does contain its geometry
    assert geometry_and_bbox(SQUARE, [10.0004, 40, 11, 40.9996])[1] == [10.0004, 40.0, 11.0, 40.9996]
    east_side = [[[175, 0], [180, 0], [180, 1], [175, 1], [175, 0]]]
    west_side = [[[-180, 0], [-175, 0], [-175, 1], [-180, 1], [-180, 0]]]
    both_sides = {"type": "MultiPolygon", "coordinates": [east_side, west_side]}
    assert geometry_and_bbox(both_sides, [175, 0, -175, 1])[1] == [175.0, 0.0, -175.0, 1.0]


def test_stac_items_with_bad_geometries_are_problems_naming_the_item(tmp_path: Path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "scene.jpg", format="JPEG")

    def item(item_id: str, geometry: dict, bbox: list[float]) -> dict:
        return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": geometry, "bbox": bbox,
                "properties": {"datetime": "2021-01-01T00:00:00Z"},
                "assets": {"visual": {"href": "scene.jpg", "type": "image/jpeg"}}, "links": []}

    features = [item("good", SQUARE, [10, 40, 11, 41]), item("bowtie", BOWTIE, [10, 40, 11, 41]),
                item("open-ring", UNCLOSED, [10, 40, 11, 41]), item("wrong-box", SQUARE, [0, 0, 1, 1]),
                item("too-many", SQUARE, [10, 40, 11, 41])]
    features[-1]["properties"] |= {f"p{n}": n for n in range(MAX_PROPERTY_FIELDS + 10)}
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    items = list(StacSource(path))
    problems = {p.item: p.reason for p in items if isinstance(p, SourceProblem)}
    assert [r.image_id for r in items if isinstance(r, ImageRecord)] == ["good"]
    assert set(problems) == {"bowtie", "open-ring", "wrong-box", "too-many"}, problems
    assert "Self-intersection" in problems["bowtie"] and "not closed" in problems["open-ring"]
    assert "does not contain" in problems["wrong-box"] and "fields" in problems["too-many"]


# ---------------------------------------------------------------------- 5. the CLI's options


UNREACHABLE = {**os.environ, "RSRT_OPENSEARCH_URL": "http://127.0.0.1:9"}  # checks must come before connecting


@pytest.mark.parametrize(("args", "line"), [
    (["--intersects", "@/nope"], "error: --intersects @/nope: cannot read the file (No such file or directory)"),
    (["--intersects", "@/"], "error: --intersects @/: cannot read the file (Is a directory)"),
    (["--intersects", "@BINARY"], "error: --intersects @BINARY: the file is not UTF-8 text (GeoJSON is)"),
    (["--intersects", "{nope"], "error: --intersects is not valid JSON (Expecting property name enclosed in double "
                                "quotes: line 1 column 2 (char 1))"),
    (["--intersects", json.dumps(BOWTIE)], "error: --intersects: geometry is invalid: Self-intersection[10.5 40.5]"),
    (["--intersects", json.dumps(UNCLOSED)], "error: --intersects: Polygon ring 0 is not closed: it starts at "
                                             "[10.0, 40.0] and ends at [10.0, 41.0]"),
    (["--intersects", ""], "error: --intersects: is empty"),
    (["--bbox", " "], "error: --bbox: is empty"),
    (["--bbox", "0,50,1,40"], "error: --bbox: south 50.0 is north of north 40.0"),
    (["--fusion", "rrf", "--rank-constant", "-5"], "error: --rank-constant: must be a whole number of at least 1, "
                                                   "not -5"),
    (["--rank-constant", "0"], "error: --rank-constant: must be a whole number of at least 1, not 0"),
    (["--k", "0"], "error: --k: must be between 1 and 1000"),
    (["--offset", "-1"], "error: --offset: must be at least 0, and offset + limit at most 10000"),
    (["--candidates", "0"], "error: --candidates: must be between 1 and 10000"),
    (["--ef-search", "99999999999"], "error: --ef-search: must be between 1 and 100000"),
    (["--weights", "1,nan"], "error: --weights: give two finite weights (lexical, dense), each >= 0 and not both 0"),
    (["--weights", "1,2,3"], "error: --weights: give two numbers: lexical,dense (e.g. 0.3,0.7)"),
    (["--datetime", "yesterday"], "error: --datetime: 'yesterday' is not an RFC 3339 date-time such as "
                                  "2020-01-31T00:00:00Z"),
    (["--property", "platform"], "error: --property: 'platform' is not key=value"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_bad_search_options_are_one_line_naming_the_option(tmp_path, args, line):
    binary = tmp_path / "binary.geojson"
    binary.write_bytes(b"\xff\xfe{\x00")
    args = [str(arg).replace("BINARY", str(binary)) for arg in args]
    result = run_cli(["search", "ships", *args], UNREACHABLE)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [line.replace("BINARY", str(binary))]
