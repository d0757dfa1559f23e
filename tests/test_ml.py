"""The index's encoder deployed in ml-commons, on the session node: vectors, idempotence, faults, the CLI.

The ONNX export is made once per session into a session cache dir (about 8 s) and the model deployed once
(about 7 s); the tests then share it. Vectors must match the Python encoder's (cosine ≥ 0.999) so a plain-text
query inside OpenSearch ranks like `rsrt search`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import build_index, run_cli
from rsrt.search import ml
from rsrt.search.datasets import load_benchmark
from rsrt.search.encoder import get_encoder
from rsrt.search.errors import ConfigError
from rsrt.search.index import create_index, delete_index, read_meta
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

CAPTIONS = ["many boats are moored in a harbour", "a green golf course next to a lake",
            "an airport with two runways and planes", "dense residential houses with trees"]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ml-model-cache")


@pytest.fixture(scope="module")
def deployed(os_client, export_dir, tmp_path_factory) -> Iterator[tuple[str, ml.ClusterModel]]:
    name = f"rsrt-mlx-{uuid.uuid4().hex[:10]}"
    records = [ImageRecord(image_id=f"mlx-{i}", collection="mlx", variants=[Variant(caption=c)])
               for i, c in enumerate(CAPTIONS)]
    try:
        build_index(os_client, name, records, tmp_path_factory.mktemp("mlx-ledger"))
        yield name, ml.deploy_model(os_client, name, cache_dir=export_dir)
    finally:
        delete_index(os_client, name)


def _hits(response: dict) -> list[tuple[str, float]]:
    return [(hit["_id"], hit["_score"]) for hit in response["hits"]["hits"]]


def test_cluster_vectors_match_the_python_encoder(os_client, deployed) -> None:
    _, model = deployed
    texts = [text for _, _, text in load_benchmark("rsitmd").captions()][:100]
    cluster = ml.predict(os_client, model.model_id, texts)
    local = get_encoder().encode(texts)
    assert cluster.shape == local.shape == (100, 384) and cluster.dtype == np.float32
    assert np.allclose(np.linalg.norm(cluster, axis=1), 1.0, atol=1e-5)
    assert float((cluster * local).sum(axis=1).min()) >= 0.999


def test_deploy_records_the_model_and_the_default_pipeline(os_client, deployed) -> None:
    name, model = deployed
    meta = read_meta(os_client, name)
    assert meta["cluster_model"] == model.to_meta() and meta["encoder"]["name"] == "all-MiniLM-L6-v2"
    assert meta["rsrt_contract"]  # the other keys survive
    assert ml.index_cluster_model(os_client, name) == model
    assert (model.encoder, model.dimension, model.kind, model.search_pipeline) == (
        "all-MiniLM-L6-v2", 384, "local", f"{name}-neural")
    status = ml.model_status(os_client, name)
    assert status["state"] == "DEPLOYED" and status["pipeline_default"]


def test_deploy_is_idempotent(os_client, deployed, export_dir) -> None:
    name, model = deployed
    assert ml.deploy_model(os_client, name, cache_dir=export_dir) == model
    same = [m for m in ml.list_models(os_client) if m["content_hash"] == model.content_hash]
    assert [m["model_id"] for m in same] == [model.model_id]  # no second registration


def test_default_pipeline_leaves_plain_queries_alone(os_client, deployed) -> None:
    """A match and a nested kNN query score as without a pipeline; a text-only neural query just works."""
    name, _ = deployed
    vector = get_encoder().encode(["boats in a port"])[0].tolist()
    nested = {"nested": {"path": "variants", "score_mode": "max", "query": {}}}
    match = json.loads(json.dumps(nested))
    match["nested"]["query"] = {"match": {"variants.caption": "boats in a port"}}
    knn = json.loads(json.dumps(nested))
    knn["nested"]["query"] = {"knn": {"variants.embedding": {"vector": vector, "k": 4}}}
    for query in (match, knn):
        body = {"query": query, "_source": False}
        plain = os_client.search(index=name, body=body, params={"search_pipeline": "_none"})
        assert _hits(os_client.search(index=name, body=body)) == _hits(plain) and _hits(plain)
    neural = json.loads(json.dumps(nested))
    neural["nested"]["query"] = {"neural": {"variants.embedding": {"query_text": "boats in a port", "k": 4}}}
    got = _hits(os_client.search(index=name, body={"query": neural, "_source": False}))
    expected = _hits(os_client.search(index=name, body={"query": knn, "_source": False}))
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-3)


def test_undeployed_model_is_deployed_again(os_client, deployed) -> None:
    _, model = deployed
    ml.undeploy_model(os_client, model.model_id)
    assert ml.get_model(os_client, model.model_id)["model_state"] == "UNDEPLOYED"
    ml.ensure_deployed(os_client, model)
    assert ml.get_model(os_client, model.model_id)["model_state"] == "DEPLOYED"
    assert ml.predict(os_client, model.model_id, ["a harbour"]).shape == (1, 384)


def test_a_missing_model_is_named_with_the_fix(os_client, deployed) -> None:
    _, model = deployed
    gone = ml.ClusterModel("no-such-model", model.encoder, "x", 384, "local", "p")
    with pytest.raises(ConfigError, match=r"no-such-model .*rsrt model deploy --index idx"):
        ml.ensure_deployed(os_client, gone, index="idx")


def test_a_model_of_another_dimension_or_encoder_is_refused(os_client, deployed, index_name, export_dir) -> None:
    _, model = deployed
    create_index(os_client, {"name": "all-MiniLM-L6-v2", "dimension": 768}, index_name)
    with pytest.raises(ConfigError, match=r"384 dims.*768 dims"):
        ml.attach_model(os_client, index_name, model)
    with pytest.raises(ConfigError, match=r"384 dims.*768 dims"):
        ml.deploy_model(os_client, index_name, cache_dir=export_dir)
    other = ml.ClusterModel(model.model_id, "all-mpnet-base-v2", model.content_hash, 768, "local", "p")
    with pytest.raises(ConfigError, match=r"all-mpnet-base-v2.*all-MiniLM-L6-v2"):
        ml.attach_model(os_client, index_name, other)
    assert "cluster_model" not in read_meta(os_client, index_name)


def test_cli_list_and_status(deployed, cli_env) -> None:
    name, model = deployed
    listed = run_cli(["model", "list", "--json"], cli_env)
    assert listed.returncode == 0, listed.stderr
    mine = [m for m in json.loads(listed.stdout) if m["model_id"] == model.model_id]
    assert mine and mine[0]["state"] == "DEPLOYED" and f"{name}-v1" in mine[0]["indices"]
    status = run_cli(["model", "status", "--index", name], cli_env)
    assert status.returncode == 0, status.stderr
    assert model.model_id in status.stdout and "DEPLOYED" in status.stdout and "the index default" in status.stdout


def test_delete_refuses_a_model_an_index_records(os_client, deployed, cli_env) -> None:
    name, model = deployed
    refused = run_cli(["model", "delete", model.model_id], cli_env)
    assert refused.returncode == 2 and f"{name}-v1" in refused.stderr and "--force" in refused.stderr
    assert ml.get_model(os_client, model.model_id) is not None
    unknown = run_cli(["model", "delete", "no-such-model"], cli_env)
    assert unknown.returncode == 2 and "does not exist" in unknown.stderr


def test_the_ingest_hook_warns_instead_of_failing(os_client) -> None:
    warnings: list[str] = []
    assert ml.deploy_quietly(os_client, "rsrt-no-such-index", warn=warnings.append) is None
    assert len(warnings) == 1 and "rsrt-no-such-index" in warnings[0]


class _BareCluster:
    """A cluster without ml-commons: `_cat/plugins` lists k-NN only."""

    class transport:  # opensearch-py's attribute name
        @staticmethod
        def perform_request(method, path, body=None, params=None):
            assert path == "/_cat/plugins"
            return [{"component": "opensearch-knn"}]


def test_no_ml_commons_is_one_clear_line() -> None:
    bare = _BareCluster()
    assert not ml.has_ml_commons(bare)
    with pytest.raises(ConfigError, match=r"opensearch-ml plugin.*fall back to client embedding"):
        ml.deploy_model(bare, "any")
    assert ml.deploy_quietly(bare, "any", warn=pytest.fail) is None


def test_only_mean_pooling_models_are_exported(tmp_path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(ConfigError, match=r"mean pooling.*--remote"):
        ml.export_model(str(tmp_path), tmp_path / "cache")
