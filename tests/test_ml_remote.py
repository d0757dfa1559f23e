"""`POST /v1/embeddings` and the ml-commons remote model over it, end to end on the session node.

The API serves an index under real uvicorn; the cluster's HTTP connector calls it back on loopback,
and `_predict` through the cluster must give the Python encoder's vectors, one per text.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import build_index, run_cli, serving
from rsrt.search.api import create_app
from rsrt.search.encoder import get_encoder
from rsrt.search.errors import ConfigError
from rsrt.search.index import delete_index
from rsrt.search.ml_remote import (
    MAX_INPUTS,
    MODEL_GROUP,
    TRUSTED_SETTING,
    create_remote_model,
    delete_remote_model,
    embeddings_endpoint,
)
from rsrt.search.schema import ImageRecord, Variant

TEXTS = ["a harbour with many boats", "dense residential area with trees", "Ein Flughafen mit zwei Landebahnen"]


def _records() -> list[ImageRecord]:
    captions = ["many boats are moored in a harbour", "a green golf course next to a lake"]
    return [ImageRecord(image_id=f"ml-{i}", source_uri=f"https://data.example.org/ml-{i}.tif", collection="ml",
                        variants=[Variant(caption=caption)]) for i, caption in enumerate(captions)]


@pytest.fixture(scope="module")
def ml_index(os_client, tmp_path_factory) -> Iterator[str]:
    name = f"rsrt-ml-{uuid.uuid4().hex[:10]}"
    try:
        build_index(os_client, name, _records(), tmp_path_factory.mktemp("ml-ledger"))
        yield name
    finally:
        delete_index(os_client, name)


@pytest.fixture(scope="module")
def served(os_client, ml_index) -> Iterator[str]:
    with serving(create_app(client=os_client, index=ml_index)) as base:
        yield base


@pytest.fixture(scope="module", autouse=True)
def model_group(os_client) -> Iterator[None]:
    """Delete rsrt's model group after the module when the module made it."""
    query = {"query": {"term": {"name.keyword": MODEL_GROUP}}}
    path = "/_plugins/_ml/model_groups/_search"
    had = os_client.transport.perform_request("POST", path, body=query)["hits"]["hits"]
    yield
    if not had:
        for hit in os_client.transport.perform_request("POST", path, body=query)["hits"]["hits"]:
            os_client.transport.perform_request("DELETE", f"/_plugins/_ml/model_groups/{hit['_id']}")


@pytest.fixture
def trusted_setting(os_client) -> Iterator[None]:
    """Restore the persistent trusted-endpoint setting the test widened."""
    before = os_client.cluster.get_settings(flat_settings=True)["persistent"].get(TRUSTED_SETTING)
    yield
    os_client.cluster.put_settings(body={"persistent": {TRUSTED_SETTING: before}})


def _cosines(got: list[list[float]], want: np.ndarray) -> list[float]:
    a = np.asarray(got, dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = want / np.linalg.norm(want, axis=1, keepdims=True)
    return [float(x) for x in (a * b).sum(axis=1)]


def _predict(os_client, model_id: str, texts: list[str]) -> list[list[float]]:
    """Through `search/ml.py`'s `predict` when it exists; else the plain ml-commons call, one vector per result."""
    if importlib.util.find_spec("rsrt.search.ml") is not None:
        from rsrt.search import ml

        if hasattr(ml, "predict"):
            return [list(map(float, v)) for v in ml.predict(os_client, model_id, texts)]
    answer = os_client.transport.perform_request("POST", f"/_plugins/_ml/_predict/text_embedding/{model_id}",
                                                 body={"text_docs": texts})
    return [result["output"][0]["data"] for result in answer["inference_results"]]


# ---------------------------------------------------------------------------------------------------
# the route
# ---------------------------------------------------------------------------------------------------


def test_embeddings_route_gives_the_index_encoders_vectors(served):
    encoder = get_encoder()
    with httpx.Client(base_url=served, timeout=120) as http:
        answer = http.post("/v1/embeddings", json={"input": TEXTS, "model": encoder.name})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "list" and body["model"] == encoder.name
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert all(d["object"] == "embedding" and len(d["embedding"]) == encoder.dimension for d in body["data"])
        assert min(_cosines([d["embedding"] for d in body["data"]], encoder.encode(TEXTS))) >= 0.9999
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0

        one = http.post("/v1/embeddings", json={"input": TEXTS[0], "model": encoder.name,
                                                 "encoding_format": "base64"}).json()
        vector = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
        assert len(one["data"]) == 1 and min(_cosines([vector.tolist()], encoder.encode(TEXTS[:1]))) >= 0.9999

        models = http.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == [encoder.name]


@pytest.mark.parametrize(("body", "field"), [
    ({"input": "boats", "model": "text-embedding-3-small"}, "model"),
    ({"input": ["boats"] * (MAX_INPUTS + 1)}, "input"),
    ({"input": ["x" * 8_001]}, "input"),
    ({"input": []}, "input"),
    ({"input": ["boats", "  "]}, "input"),
    ({"input": [1, 2]}, "input"),
    ({"input": "boats", "encoding_format": "int8"}, "encoding_format"),
])
def test_embeddings_route_refuses_bad_requests_naming_the_field(served, body, field):
    body = {"model": get_encoder().name, **body}
    answer = httpx.post(f"{served}/v1/embeddings", json=body, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["field"] == field and error["code"] == "InvalidParameterValue" and error["description"]


def test_endpoint_url_and_its_trusted_pattern():
    endpoint, pattern = embeddings_endpoint("http://127.0.0.1:8080/")
    assert endpoint == "http://127.0.0.1:8080/v1/embeddings"
    assert re.fullmatch(pattern, endpoint)
    for other in ("http://127.0.0.1:8081/v1/embeddings", "https://127.0.0.1:8080/v1/embeddings",
                  "http://127.0.0.1:8080.evil.example/v1/embeddings", "http://127.0.0.10:8080/v1/embeddings",
                  "http://127x0x0x1:8080/v1/embeddings"):
        assert not re.fullmatch(pattern, other), other
    assert embeddings_endpoint("https://Embed.Example.org/rsrt")[0] == "https://embed.example.org:443/rsrt/v1/embeddings"
    assert embeddings_endpoint("http://[::1]:9000")[0] == "http://[::1]:9000/v1/embeddings"
    for bad in ("ftp://127.0.0.1/", "127.0.0.1:8080", "http://", "http://u:p@host/", "http://host/?a=1"):
        with pytest.raises(ConfigError):
            embeddings_endpoint(bad)


# ---------------------------------------------------------------------------------------------------
# the remote model, through the cluster
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("texts_per_request", [1, MAX_INPUTS])
def test_remote_model_embeds_through_the_cluster_one_vector_per_text(os_client, served, trusted_setting,
                                                                     texts_per_request):
    encoder = get_encoder()
    before = _trusted(os_client)
    model_id = create_remote_model(os_client, encoder.name, served, encoder.dimension,
                                   texts_per_request=texts_per_request)
    try:
        assert create_remote_model(os_client, encoder.name, served, encoder.dimension,
                                   texts_per_request=texts_per_request) == model_id  # idempotent
        _, pattern = embeddings_endpoint(served)
        after = _trusted(os_client)
        assert pattern in after and set(before) <= set(after) and after.count(pattern) == 1

        if texts_per_request == 1:
            vectors = _predict(os_client, model_id, TEXTS)
        else:  # one request for all texts: ONE inference result holding one output per text
            answer = os_client.transport.perform_request(
                "POST", f"/_plugins/_ml/_predict/text_embedding/{model_id}", body={"text_docs": TEXTS})
            assert len(answer["inference_results"]) == 1
            vectors = [output["data"] for output in answer["inference_results"][0]["output"]]
        assert len(vectors) == len(TEXTS)
        assert min(_cosines(vectors, encoder.encode(TEXTS))) >= 0.9999
    finally:
        model = os_client.transport.perform_request("GET", f"/_plugins/_ml/models/{model_id}")
        delete_remote_model(os_client, model_id)
    assert not _exists(os_client, f"/_plugins/_ml/models/{model_id}")
    assert not _exists(os_client, f"/_plugins/_ml/connectors/{model['connector_id']}")


def test_remote_model_refuses_a_wrong_dimension_and_a_bad_url(os_client, served, trusted_setting):
    encoder = get_encoder()
    with pytest.raises(ConfigError, match="384-dimensional"):
        create_remote_model(os_client, encoder.name, served, 512)
    with pytest.raises(ConfigError, match="not an http"):
        create_remote_model(os_client, encoder.name, "file:///etc/passwd", encoder.dimension)
    _cleanup_rsrt_models(os_client, served)


def _trusted(os_client) -> list[str]:
    settings = os_client.cluster.get_settings(include_defaults=True, flat_settings=True)
    for scope in ("persistent", "transient", "defaults"):
        value: Any = settings.get(scope, {}).get(TRUSTED_SETTING)
        if value is not None:
            return [value] if isinstance(value, str) else list(value)
    return []


def _exists(os_client, path: str) -> bool:
    import opensearchpy

    try:
        os_client.transport.perform_request("GET", path)
    except opensearchpy.NotFoundError:
        return False
    return True


def _cleanup_rsrt_models(os_client, served: str) -> None:
    """Delete the remote models this module made for `served` (a failed check leaves one deployed)."""
    endpoint, _ = embeddings_endpoint(served)
    found = os_client.transport.perform_request("POST", "/_plugins/_ml/models/_search",
                                                body={"query": {"match_all": {}}, "size": 100})
    for hit in found["hits"]["hits"]:
        name = str(hit["_source"].get("name", ""))
        if name.startswith("rsrt/") and name.endswith(f"@{endpoint}") and "chunk_number" not in hit["_source"]:
            delete_remote_model(os_client, hit["_id"])


def test_rsrt_model_deploy_remote_then_plain_text_search_through_the_cluster(os_client, served, ml_index, cli_env,
                                                                             trusted_setting):
    """As an operator of a managed cluster would: `rsrt model deploy --remote`, then search with --embed cluster."""
    from rsrt.search.ml import index_cluster_model
    from rsrt.search.request import SearchRequest
    from rsrt.search.searcher import Searcher

    deployed = run_cli(["model", "deploy", "--index", ml_index, "--remote", served], cli_env)
    assert deployed.returncode == 0, deployed.stderr
    model = index_cluster_model(os_client, ml_index)
    assert model is not None and model.kind == "remote"
    try:
        searcher = Searcher(os_client, ml_index)
        for text in TEXTS:
            client = searcher.search(SearchRequest(text, "dense", 5, embed="client"))
            cluster = searcher.search(SearchRequest(text, "dense", 5, embed="cluster"))
            assert cluster.embed == "cluster"
            assert [(h.image_id, round(h.score, 4)) for h in cluster.hits] == \
                [(h.image_id, round(h.score, 4)) for h in client.hits]
    finally:
        delete_remote_model(os_client, model.model_id)
