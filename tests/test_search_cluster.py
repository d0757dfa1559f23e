"""Queries embedded by the cluster (ml-commons): the same rankings as rsrt's own encoder, by plain text."""

from __future__ import annotations

import json
import re

import pytest
from test_search import SCENES as THEMES  # the same six scenes as the client-side tests

from conftest import build_index, run_cli
from rsrt.search.dashboards import export_objects
from rsrt.search.errors import ConfigError
from rsrt.search.filters import Filters
from rsrt.search.index import delete_index
from rsrt.search.ml import deploy_model, undeploy_model
from rsrt.search.request import SearchRequest
from rsrt.search.schema import ImageRecord, Variant
from rsrt.search.searcher import Searcher

pytestmark = pytest.mark.integration

QUERIES = ["ships moored in a harbour", "green fields", "planes near the runway", "a sports ground"]


def _records() -> list[ImageRecord]:
    records = []
    for i in range(40):
        theme, sentence, feature = THEMES[i % len(THEMES)]
        west, south = -10.0 + (i % 8) * 2.0, 38.0 + (i // 8)
        records.append(ImageRecord(
            image_id=f"{theme}-{i:03d}", collection="aerial" if i % 2 else "sentinel-2",
            datetime=f"{2015 + i % 8}-06-01T10:00:00Z",
            geometry={"type": "Polygon", "coordinates": [[[west, south], [west + 1, south], [west + 1, south + 1],
                                                          [west, south + 1], [west, south]]]},
            bbox=[west, south, west + 1, south + 1],
            variants=[Variant(one_sentence=f"{sentence}, scene {i}", feature=feature),
                      Variant(caption=f"A {theme} seen from above, number {i}.")]))
    return records


@pytest.fixture(scope="module")
def modelled(os_client, tmp_path_factory):
    """An index with its encoder deployed in the cluster (the model is registered once per cluster)."""
    name = f"rsrt-cluster-{tmp_path_factory.mktemp('x').name[-6:].lower().replace('_', '-')}"
    build_index(os_client, name, _records(), tmp_path_factory.mktemp("ledger"))
    model = deploy_model(os_client, name)
    yield name, model
    delete_index(os_client, name)


def _ranking(results) -> list[tuple[str, float]]:
    return [(hit.image_id, round(hit.score, 4)) for hit in results.hits]


@pytest.mark.parametrize("mode,site", [("dense", "auto"), ("hybrid", "client"), ("hybrid", "server")])
@pytest.mark.parametrize("filters", [Filters(), Filters.build(collections="aerial"),
                                     Filters.build(bbox="-10.5,37.5,-3.5,41.5")], ids=["none", "terms", "bbox"])
def test_cluster_embedding_ranks_like_the_python_encoder(os_client, modelled, mode, site, filters):
    searcher = Searcher(os_client, modelled[0])
    for text in QUERIES:
        client = searcher.search(SearchRequest(text, mode, 10, filters=filters, fusion_site=site, embed="client"))
        cluster = searcher.search(SearchRequest(text, mode, 10, filters=filters, fusion_site=site, embed="cluster"))
        assert (client.embed, cluster.embed) == ("client", "cluster")
        assert [s for _, s in _ranking(cluster)] == pytest.approx([s for _, s in _ranking(client)], abs=2e-4)
        assert {i for i, _ in _ranking(cluster)} == {i for i, _ in _ranking(client)}, text


def test_auto_embeds_in_the_cluster_only_when_the_index_has_a_model(os_client, modelled, index_name, tmp_path):
    assert Searcher(os_client, modelled[0]).search(SearchRequest("ships", "dense", 3, embed="auto")).embed == "cluster"
    build_index(os_client, index_name, _records()[:5], tmp_path / "ledger")
    bare = Searcher(os_client, index_name)
    assert bare.search(SearchRequest("ships", "dense", 3, embed="auto")).embed == "client"
    with pytest.raises(ConfigError, match=rf"index {index_name!r} has no model in the cluster.*rsrt model deploy"):
        bare.search(SearchRequest("ships", "dense", 3, embed="cluster"))


@pytest.mark.parametrize("args", [["--mode", "dense"], ["--mode", "hybrid", "--fusion-site", "server"]])
def test_show_dsl_holds_text_not_a_vector_and_posted_raw_gives_the_same_top_10(os_client, modelled, cli_env, args):
    index = modelled[0]
    shown = run_cli(["search", "ships moored in a harbour", "--index", index, "--embed", "cluster", "--show-dsl",
                     *args], cli_env)
    assert shown.returncode == 0, shown.stderr
    first, body_text = shown.stdout.split("\n", 1)
    body = json.loads(body_text)
    assert '"query_text": "ships moored in a harbour"' in json.dumps(body) and '"vector"' not in json.dumps(body)
    path = first.split(" ", 1)[1]
    raw = os_client.transport.perform_request("GET", f"/{path}", body=body)
    searched = run_cli(["search", "ships moored in a harbour", "--index", index, "--embed", "cluster", "--json",
                        *args], cli_env)
    assert searched.returncode == 0, searched.stderr
    hits = json.loads(searched.stdout)["hits"]
    assert json.loads(searched.stdout)["embed"] == "cluster"
    assert [h["_id"] for h in raw["hits"]["hits"]] == [h["image_id"] for h in hits]


def test_the_dashboards_snippets_run_as_they_are(os_client, modelled):
    """The exported semantic-search panel's two requests, posted unchanged: the cluster names the model."""
    index = modelled[0]
    panel = next(o for o in export_objects(index) if o["id"].endswith("-semantic-search"))
    markdown = json.loads(panel["attributes"]["visState"])["params"]["markdown"]
    blocks = re.findall(r"```\nGET (\S+)/_search\n(.*?)\n```", markdown, flags=re.S)
    assert len(blocks) == 2 and all(target == index for target, _ in blocks)
    searcher = Searcher(os_client, index)
    for (_, body_text), mode in zip(blocks, ("dense", "hybrid"), strict=True):
        body = json.loads(body_text)
        assert "model_id" not in body_text and '"vector"' not in body_text
        raw = os_client.search(index=index, body=body)["hits"]["hits"]
        expected = searcher.search(SearchRequest("ships moored in a harbour", mode, 10, fusion_site="server",
                                                 embed="cluster"))
        assert [(h["_id"], round(h["_score"], 4)) for h in raw] == _ranking(expected), mode


def test_an_undeployed_model_is_deployed_again_on_the_next_query(os_client, modelled):
    index, model = modelled
    undeploy_model(os_client, model.model_id)
    results = Searcher(os_client, index).search(SearchRequest("ships moored", "dense", 3, embed="cluster"))
    assert results.hits and results.embed == "cluster"
