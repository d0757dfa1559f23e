"""The read side on a real node: every mode, every filter, paging, explain, both hybrid paths, hostile text."""

from __future__ import annotations

import json

import pytest

from conftest import build_index, run_cli
from rsrt.search.errors import ConfigError, QueryError
from rsrt.search.filters import Filters
from rsrt.search.fusion import FusionSpec
from rsrt.search.index import delete_index, load_mapping_json
from rsrt.search.request import DEFAULT_EF_SEARCH, SearchRequest
from rsrt.search.schema import ImageRecord, Variant
from rsrt.search.searcher import Searcher

pytestmark = pytest.mark.integration

SCENES = [
    ("harbour", "Ships are moored at a gray harbour", "ships (small) west; dock (large) east"),
    ("airport", "Airplanes park beside a long runway", "airplanes (medium) north; runway (large) south"),
    ("forest", "Dense green forest covers the hills", "trees (large) everywhere"),
    ("farmland", "Rectangular farmland fields in green and brown", "fields (large) center"),
    ("stadium", "An oval stadium with a green pitch", "stadium (large) center; parking (medium) north"),
    ("river", "A river winds through a town", "river (medium) south; houses (small) north"),
]


def _record(i: int) -> ImageRecord:
    scene, sentence, feature = SCENES[i % len(SCENES)]
    lon, lat = -10 + (i % 10) * 2.0, 40 + (i // 10) * 1.0
    rare = i % 13 == 0
    return ImageRecord(
        image_id=f"{scene}-{i:03d}",
        source_uri=f"file:///archive/{scene}-{i:03d}.tif",
        collection="rare" if rare else ("sentinel-2" if i % 2 else "aerial"),
        datetime=f"20{10 + i % 12:02d}-0{1 + i % 9}-1{i % 9}T12:00:00Z",
        geometry={"type": "Polygon", "coordinates": [[[lon, lat], [lon + 0.5, lat], [lon + 0.5, lat + 0.5],
                                                      [lon, lat + 0.5], [lon, lat]]]},
        bbox=[lon, lat, lon + 0.5, lat + 0.5],
        properties={"platform": "s2a" if i % 3 else "s2b", "cloud_cover": i % 50},
        variants=[Variant(one_sentence=f"{sentence} (view {j}).", feature=feature,
                          caption=f"{sentence}; seen from above in variant {j} of image {i}.")
                  for j in range(5)],
    )


RECORDS = [_record(i) for i in range(130)]


@pytest.fixture(scope="module")
def searcher(os_client, tmp_path_factory):
    name = "rsrt-search-tests"
    delete_index(os_client, name)
    build_index(os_client, name, RECORDS, tmp_path_factory.mktemp("ledger"))
    yield Searcher(os_client, name)
    delete_index(os_client, name)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_every_mode_finds_the_right_scene(searcher, mode):
    results = searcher.search(SearchRequest("ships moored in a harbour", mode, 5))
    assert len(results.hits) == 5
    assert all(hit.image_id.startswith("harbour") for hit in results.hits), [h.image_id for h in results.hits]
    scores = [h.score for h in results.hits]
    assert scores == sorted(scores, reverse=True)
    assert "embedding" not in json.dumps(results.hits[0].source)
    assert results.hits[0].matched_variant is not None


@pytest.mark.parametrize("spec", [FusionSpec(), FusionSpec(weights=(0.2, 0.8)), FusionSpec("rrf", rank_constant=10)])
@pytest.mark.parametrize("query", ["ships moored in a harbour", "green field", "planes near the runway in town"])
def test_server_and_client_hybrid_rank_identically(searcher, spec, query):
    server = searcher.search(SearchRequest(query, "hybrid", 20, fusion=spec, fusion_site="server"))
    client = searcher.search(SearchRequest(query, "hybrid", 20, fusion=spec, fusion_site="client"))
    assert server.fusion_site == "server" and client.fusion_site == "client"
    # Same scores in the same order; images with exactly equal fused scores may be listed in another
    # order (the plugin breaks ties by Lucene doc id, the client by image id), so compare tie groups.
    assert [h.score for h in server.hits] == pytest.approx([h.score for h in client.hits], abs=1e-5)
    assert _tie_groups(server.hits) == _tie_groups(client.hits)


def _tie_groups(hits) -> list[frozenset[str]]:
    groups: list[set[str]] = []
    previous = None
    for hit in hits:
        if previous is None or abs(hit.score - previous) > 1e-6:
            groups.append(set())
        groups[-1].add(hit.image_id)
        previous = hit.score
    return [frozenset(g) for g in groups[:-1]]  # the last group may be cut by k differently


def _ids(results) -> set[str]:
    return {h.image_id for h in results.hits}


def _by_id(image_id: str) -> ImageRecord:
    return next(r for r in RECORDS if r.image_id == image_id)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_filters_apply_in_every_mode(searcher, mode):
    bbox = Filters.build(bbox="-10.1,39.9,-5.9,41.6")
    hits = searcher.search(SearchRequest("harbour", mode, 50, filters=bbox)).hits
    assert hits or mode == "lexical"
    for hit in hits:
        west, south, east, north = _by_id(hit.image_id).bbox
        assert east >= -10.1 and west <= -5.9 and north >= 39.9 and south <= 41.6
    when = Filters.build(datetime="2015-01-01T00:00:00Z/2017-12-31T23:59:59Z")
    hits = searcher.search(SearchRequest("harbour", mode, 50, filters=when)).hits
    assert hits and all("2015" <= _by_id(h.image_id).datetime[:4] <= "2017" for h in hits)
    open_end = Filters.build(datetime="2020-01-01T00:00:00Z/..")
    later = searcher.search(SearchRequest("field", mode, 50, filters=open_end)).hits
    assert all(_by_id(h.image_id).datetime >= "2020" for h in later)
    collections = Filters.build(collections=["aerial", "rare"])
    chosen = searcher.search(SearchRequest("forest", mode, 50, filters=collections)).hits
    assert {_by_id(h.image_id).collection for h in chosen} <= {"aerial", "rare"}
    props = Filters.build(properties={"platform": "s2b"})
    hits = searcher.search(SearchRequest("harbour", mode, 50, filters=props)).hits
    assert hits and all(_by_id(h.image_id).properties["platform"] == "s2b" for h in hits)
    polygon = {"type": "Polygon", "coordinates": [[[-10.2, 39.8], [-9.2, 39.8], [-9.2, 40.8], [-10.2, 40.8],
                                                    [-10.2, 39.8]]]}
    hits = searcher.search(SearchRequest("harbour", mode, 50, filters=Filters.build(intersects=polygon))).hits
    assert [h.image_id for h in hits] == ["harbour-000"]
    both = Filters.build(bbox="-10.1,39.9,10,41.6", datetime="2010-01-01T00:00:00Z/2014-12-31T00:00:00Z",
                         collections=["aerial", "sentinel-2"])
    expected = {r.image_id for r in RECORDS if r.bbox[1] <= 41.6 and r.bbox[3] >= 39.9 and
                "2010" <= r.datetime[:4] <= "2014" and r.collection != "rare" and r.image_id.startswith("farm")}
    hits = searcher.search(SearchRequest("farmland fields", mode, 50, filters=both)).hits
    assert expected and expected <= {h.image_id for h in hits}


def test_filtered_knn_still_returns_k_hits(searcher):
    """Only 10 images are 'rare' and none is about ships: post-filtering a top-k would return fewer."""
    rare = [r for r in RECORDS if r.collection == "rare"]
    assert len(rare) == 10
    rare_only = Filters.build(collections="rare")
    results = searcher.search(SearchRequest("ships moored in a harbour", "dense", 10, filters=rare_only))
    assert len(results.hits) == 10
    assert _ids(results) == {r.image_id for r in rare}


def _ef_searches(node) -> list[int]:
    """Every method_parameters.ef_search in a request body, wherever the kNN clause sits."""
    if isinstance(node, dict):
        found = [int(node["method_parameters"]["ef_search"])] if "method_parameters" in node else []
        return found + [ef for value in node.values() for ef in _ef_searches(value)]
    if isinstance(node, list):
        return [ef for value in node for ef in _ef_searches(value)]
    return []


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_knn_beam_defaults_to_200_and_follows_the_depth_or_the_request(searcher, mode):
    """ef_search widens the graph search beyond k (recall 0.980 → 0.9935 at 100k): the default, a page
    deeper than it and an explicit value each reach the body; the cluster accepts all three, and the
    default and a wider beam give the same top 10 on this small index."""
    text = "ships moored in a harbour"
    cases = {"default": (SearchRequest(text, mode, 10), DEFAULT_EF_SEARCH),
             "deep page": (SearchRequest(text, mode, 10, offset=290, candidates=60), 300),
             "asked": (SearchRequest(text, mode, 10, ef_search=400), 400)}
    answers = {}
    for name, (request, expected) in cases.items():
        body, _ = searcher.build_request(request)
        assert _ef_searches(body) == [expected], name
        answers[name] = [h.image_id for h in searcher.search(request).hits]
    assert DEFAULT_EF_SEARCH == 200 and len(answers["default"]) == 10
    assert answers["asked"] == answers["default"]  # 650 variants: both beams find the exact top 10


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_paging_has_no_duplicates_and_no_gaps(searcher, mode):
    whole = searcher.search(SearchRequest("green", mode, 30, candidates=60))
    pages = []
    for offset in range(0, 30, 7):
        pages += searcher.search(SearchRequest("green", mode, min(7, 30 - offset), offset=offset, candidates=60)).hits
    assert [h.image_id for h in pages] == [h.image_id for h in whole.hits]
    assert [h.rank for h in pages] == list(range(1, 31))


def test_explain_gives_both_contributions_and_the_matched_variant(searcher):
    results = searcher.search(SearchRequest("oval stadium with parking", "hybrid", 5, explain=True))
    top = results.hits[0]
    assert top.image_id.startswith("stadium")
    assert top.explanation["lexical"]["raw"] > 0 and top.explanation["dense"]["raw"] > 0
    assert 0 < top.explanation["lexical"]["normalized"] <= 1
    assert top.explanation["dense"]["matched_variant"] in range(5)
    lexical = searcher.search(SearchRequest("oval stadium", "lexical", 3, explain=True))
    assert lexical.hits[0].explanation["lexical"]["raw"] == lexical.hits[0].score


def test_mismatched_encoder_is_refused(searcher):
    class OtherEncoder:
        name = "some-other-model"

        def encode(self, texts, batch_size=None):
            raise AssertionError("must not be called")

    other = Searcher(searcher.client, searcher.index, encoder=OtherEncoder())
    with pytest.raises(ConfigError, match="was built with encoder 'all-MiniLM-L6-v2'"):
        other.search(SearchRequest("ships", "dense"))
    assert other.search(SearchRequest("ships", "lexical")).hits  # lexical needs no encoder


def test_named_pipelines_match_the_query_layer(os_client, searcher):
    default = load_mapping_json("search-pipelines/rsrt-hybrid-minmax.json")
    assert default["phase_results_processors"] == FusionSpec().pipeline()["phase_results_processors"]
    rrf = load_mapping_json("search-pipelines/rsrt-hybrid-rrf.json")
    assert rrf["phase_results_processors"] == FusionSpec("rrf").pipeline()["phase_results_processors"]
    installed = os_client.transport.perform_request("GET", "/_search/pipeline/rsrt-hybrid-minmax")
    assert "rsrt-hybrid-minmax" in installed


def test_bad_filters_name_the_field():
    cases = [({"bbox": "1,2,3"}, "bbox"), ({"bbox": "0,50,1,40"}, "bbox"), ({"datetime": "yesterday"}, "datetime"),
             ({"datetime": "2020-01-01/2019-01-01"}, "datetime"), ({"intersects": {"type": "Polygon"}}, "intersects"),
             ({"properties": {"a b": 1}}, "properties")]
    for kwargs, field in cases:
        with pytest.raises(QueryError) as caught:
            Filters.build(**kwargs)
        assert caught.value.field == field


HOSTILE = [
    '"unbalanced quote', "ships AND NOT port", "*", "?", "~fuzzy~2", "[1 TO 5]", "{}", "(((", "a\\b\\", "\\",
    "title:ships", "/regex.*/", "+must -not", "&& || !", "x" * 10_000, "ship " * 3000, "港口里停着两艘船",
    "مرفأ فيه سفن", "🚢⚓️🌊", "\u0001null\u0007\u001b[31m", "   ", "<script>alert(1)</script>", "'; DROP TABLE;--",
    "%s%n%x", "\u202eevil", "ünïcödé ñ",
]


# Through a real `rsrt` subprocess: an empty, a huge, a control-character and a non-Latin text. A cold
# `rsrt search` process loads the encoder (≈ 13 s of CI each), so the rest go through the same click
# command in this process (the encoder loaded once); the code path from argument parsing to the user-error
# boundary and the exit code is the same.
SUBPROCESS_HOSTILE = ("   ", "x" * 10_000, "\u0001null\u0007\u001b[31m", "港口里停着两艘船")


def _answered_or_refused_as_empty(text: str, code: int, stdout: str, stderr: str) -> None:
    """Any text with a word is answered as JSON; a blank one is a one-line usage error; never a traceback."""
    assert "Traceback" not in stderr
    if text.strip():
        assert code == 0, stderr
        json.loads(stdout)
    else:
        assert code == 2 and "empty" in stderr


@pytest.mark.parametrize("text", SUBPROCESS_HOSTILE, ids=range(len(SUBPROCESS_HOSTILE)))
def test_hostile_text_through_the_cli(searcher, cli_env, text):
    result = run_cli(["search", "--index", searcher.index, "--mode", "hybrid", "--json", "--", text], cli_env)
    _answered_or_refused_as_empty(text, result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_text_through_the_cli_command_in_process(searcher, cli_env, text):
    from click.testing import CliRunner

    from rsrt.cli import main

    # hybrid runs the lexical and the dense query both
    result = CliRunner().invoke(main, ["search", "--index", searcher.index, "--mode", "hybrid", "--json", "--", text],
                                env={"RSRT_OPENSEARCH_URL": cli_env["RSRT_OPENSEARCH_URL"]})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    _answered_or_refused_as_empty(text, result.exit_code, result.stdout, result.stderr)


def test_show_dsl_prints_a_request_dev_tools_accepts(searcher, cli_env, os_client):
    result = run_cli(["search", "ships", "--index", searcher.index, "--mode", "hybrid", "--show-dsl",
                      "--bbox", "-11,39,0,45"], cli_env)
    assert result.returncode == 0, result.stderr
    first, _, body = result.stdout.partition("\n")
    assert first == f"GET {searcher.index}/_search?search_pipeline=rsrt-hybrid-minmax"
    response = os_client.search(index=searcher.index, body=json.loads(body),
                                params={"search_pipeline": "rsrt-hybrid-minmax"})
    assert response["hits"]["hits"]


def test_cli_table_output(searcher, cli_env):
    result = run_cli(["search", "two airplanes at the runway", "--index", searcher.index, "--k", "3"], cli_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("hybrid, client-side fusion")  # auto: the faster path (docs/performance)
    assert "airport-" in lines[2] and "runway" in lines[2].lower()


def test_image_scope_lexical_scores_whole_images_and_still_names_the_variant(searcher, os_client):
    image = Searcher(os_client, searcher.index, lexical_scope="image")
    results = image.search(SearchRequest("ships moored in a harbour", "lexical", 5))
    assert [h.image_id.split("-")[0] for h in results.hits] == ["harbour"] * 5
    assert all(h.matched_variant and "Ships are moored" in h.matched_variant["one_sentence"] for h in results.hits)
    aerial = Filters.build(collections="aerial")
    body, _ = image.build_request(SearchRequest("ships moored", "lexical", 5, filters=aerial))
    assert "nested" not in json.dumps(body["query"]) and "all_text" in json.dumps(body["query"])
    filtered = image.search(SearchRequest("ships moored", "lexical", 5, filters=aerial))
    assert filtered.hits and all(h.source["collection"] == "aerial" for h in filtered.hits)
    # Hybrid server- and client-side still agree with image-scope lexical scores.
    server = image.search(SearchRequest("green field", "hybrid", 10, fusion_site="server"))
    client = image.search(SearchRequest("green field", "hybrid", 10, fusion_site="client"))
    assert [round(h.score, 4) for h in server.hits] == [round(h.score, 4) for h in client.hits]


def test_unknown_lexical_scope_is_refused(os_client, searcher, cli_env):
    with pytest.raises(ConfigError, match="lexical scope 'page' is unknown; choose one of variant, image"):
        Searcher(os_client, "x", lexical_scope="page")
    # The environment is read at the CLI edge only: RSRT_LEXICAL_SCOPE is --lexical-scope's default.
    args = ["search", "ships", "--index", searcher.index, "--mode", "lexical", "--show-dsl"]
    image = run_cli(args, {**cli_env, "RSRT_LEXICAL_SCOPE": "image"})
    variant = run_cli(args, {k: v for k, v in cli_env.items() if k != "RSRT_LEXICAL_SCOPE"})
    assert image.returncode == 0 and variant.returncode == 0, (image.stderr, variant.stderr)
    assert "all_text" in image.stdout and "nested" not in image.stdout
    assert "nested" in variant.stdout and "all_text" not in variant.stdout
    assert Searcher(os_client, "x").lexical_scope == "variant"
