"""A remote ml-commons model over `rsrt serve`'s `POST /v1/embeddings`, for clusters that accept only remote models.

`create_remote_model(client, encoder_name, url, dimension)` makes (or reuses) an HTTP connector to
`<url>/v1/embeddings`, a remote model on it (in rsrt's model group), deploys it and waits, and returns
its model id; `ml.deploy_model(..., remote_url=...)` calls it. The cluster is made to trust exactly that
endpoint: one anchored regex for its scheme://host:port is *added* to the persistent
`plugins.ml_commons.trusted_connector_endpoints_regex` (the entries already in force are kept).
Everything rsrt creates is named `rsrt/…`, and `delete_remote_model` deletes only such things.

Batching: `text_docs` reach the connector's pre-process function (`connector.pre_process.openai.embedding`,
texts → `parameters.input` as a JSON array) in chunks of the connector parameter
`input_docs_processed_step_size`; each chunk is one HTTP request and one entry of `inference_results`
holding one output per text (`connector.post_process.openai.embedding`). Without the parameter all texts
go in one request and come back as *one* inference result with N outputs: reading `output[0]` of each
result then yields one vector for N texts. rsrt's connector sets the step size (`texts_per_request`,
default 1), so a remote model answers exactly like a local one: one inference result per text, its
vector in `output[0]`; any step size ≤ `MAX_INPUTS` also keeps every request within the endpoint's bound.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any
from urllib.parse import urlsplit

import opensearchpy
from opensearchpy import OpenSearch

from .errors import ClusterAuthError, ClusterError, ConfigError, RsrtError, from_opensearch
from .ml import deploy_and_wait, ml_request

PREFIX = "rsrt/"
MODEL_GROUP = "rsrt/remote-embeddings"
TRUSTED_SETTING = "plugins.ml_commons.trusted_connector_endpoints_regex"
ML = "/_plugins/_ml"
DEPLOY_TIMEOUT_S = 120.0
MAX_INPUTS = 256  # texts per request `/v1/embeddings` accepts (and so the largest step size)


def embeddings_endpoint(url: str) -> tuple[str, str]:
    """(the connector's URL `<base>/v1/embeddings`, the anchored regex trusting exactly its scheme://host:port)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"remote embeddings URL {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"remote embeddings URL {url!r}: give a base URL without credentials, query or fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"remote embeddings URL {url!r}: {exc}") from None
    host = parts.hostname.lower()
    origin = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    endpoint = f"{origin}{parts.path.rstrip('/')}/v1/embeddings"
    return endpoint, f"^{re.escape(origin)}/.*$"


def _search(client: OpenSearch, kind: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    """Hits of `_plugins/_ml/<kind>/_search` (none when ml-commons has not made the system index yet)."""
    try:
        answer = client.transport.perform_request("POST", f"{ML}/{kind}/_search", body={"query": query, "size": 100})
    except opensearchpy.NotFoundError:
        return []
    except opensearchpy.OpenSearchException as exc:
        raise from_opensearch(exc) from exc
    return [{"_id": hit["_id"], **hit["_source"]} for hit in answer.get("hits", {}).get("hits", [])]


def _visible(client: OpenSearch, kind: str, query: dict[str, Any], found_id: str, timeout_s: float = 10.0) -> str:
    """`found_id` once `_search` sees it (system indices refresh each second): the next caller then reuses it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(hit["_id"] == found_id for hit in _search(client, kind, query)):
            break
        time.sleep(0.25)
    return found_id


def trust_endpoint(client: OpenSearch, pattern: str, endpoint: str) -> None:
    """Add `pattern` to the persistent trusted-endpoint list, keeping the entries already in force."""
    answer = ml_request(client, "GET", "/_cluster/settings",
                        params={"include_defaults": "true", "flat_settings": "true"})
    current: Any = None
    for scope in ("persistent", "transient", "defaults"):
        current = answer.get(scope, {}).get(TRUSTED_SETTING)
        if current is not None:
            break
    existing = [current] if isinstance(current, str) else list(current or [])
    if pattern in existing:
        return
    try:
        ml_request(client, "PUT", "/_cluster/settings", body={"persistent": {TRUSTED_SETTING: [*existing, pattern]}})
    except ClusterAuthError:
        # A managed cluster may forbid the update but already trust the endpoint (Java and Python
        # regexes agree on such patterns); otherwise the cluster's admin must add `pattern`.
        if not any(re.fullmatch(p, endpoint) for p in existing):
            raise ClusterAuthError(f"the cluster refused to trust {endpoint}; an admin must add {pattern!r} to "
                                   f"{TRUSTED_SETTING}") from None


def _model_group(client: OpenSearch) -> str:
    found = _search(client, "model_groups", {"term": {"name.keyword": MODEL_GROUP}})
    if found:
        return str(found[0]["_id"])
    body = {"name": MODEL_GROUP, "description": "remote embedding models rsrt made over `rsrt serve`"}
    group_id = str(ml_request(client, "POST", f"{ML}/model_groups/_register", body)["model_group_id"])
    return _visible(client, "model_groups", {"term": {"name.keyword": MODEL_GROUP}}, group_id)


def connector_body(name: str, encoder_name: str, endpoint: str, texts_per_request: int) -> dict[str, Any]:
    """The HTTP connector: OpenAI embeddings shape, `texts_per_request` texts per call to the endpoint."""
    return {
        "name": name,
        "description": f"rsrt serve /v1/embeddings for encoder {encoder_name} at {endpoint}",
        "version": "1",
        "protocol": "http",
        "parameters": {"model": encoder_name, "input_docs_processed_step_size": str(texts_per_request)},
        "credential": {"none": "rsrt adds no auth; keep the endpoint on the cluster's network"},  # one is required
        "actions": [{
            "action_type": "predict",
            "method": "POST",
            "url": endpoint,
            "headers": {"Content-Type": "application/json"},
            "request_body": '{ "input": ${parameters.input}, "model": "${parameters.model}" }',
            "pre_process_function": "connector.pre_process.openai.embedding",
            "post_process_function": "connector.post_process.openai.embedding",
        }],
    }


def _connector(client: OpenSearch, name: str, body: dict[str, Any]) -> str:
    """The id of rsrt's connector `name` with these parameters and action (made if none matches)."""
    for found in _search(client, "connectors", {"term": {"name.keyword": name}}):
        actions = found.get("actions") or [{}]
        if found.get("parameters") == body["parameters"] and actions[0].get("url") == body["actions"][0]["url"]:
            return str(found["_id"])
    connector_id = str(ml_request(client, "POST", f"{ML}/connectors/_create", body)["connector_id"])
    return _visible(client, "connectors", {"term": {"name.keyword": name}}, connector_id)


def _check_dimension(client: OpenSearch, model_id: str, endpoint: str, dimension: int) -> None:
    """One predict through the cluster: the endpoint answers, with vectors of the index's dimension."""
    try:
        answer = ml_request(client, "POST", f"{ML}/_predict/text_embedding/{model_id}",
                            {"text_docs": ["dimension check"]})
    except RsrtError as exc:
        raise ConfigError(f"the cluster could not embed through {endpoint} (is `rsrt serve` running there, for "
                          f"this index?): {exc}") from None
    got = len(answer["inference_results"][0]["output"][0]["data"])
    if got != dimension:
        raise ConfigError(f"{endpoint} returns {got}-dimensional vectors; the index needs {dimension}")


def create_remote_model(client: OpenSearch, encoder_name: str, url: str, dimension: int, *,
                        texts_per_request: int = 1, timeout_s: float = DEPLOY_TIMEOUT_S) -> str:
    """A deployed remote text-embedding model over `<url>/v1/embeddings` (a base URL of `rsrt serve`).

    Idempotent: rsrt's connector for the same endpoint, encoder and step size, and its model, are reused
    (and redeployed if undeployed). The model is checked with one predict of `dimension`.
    """
    if not 1 <= texts_per_request <= MAX_INPUTS:
        raise ConfigError(f"texts_per_request must be between 1 and {MAX_INPUTS}")
    endpoint, pattern = embeddings_endpoint(url)
    trust_endpoint(client, pattern, endpoint)
    name = f"{PREFIX}{encoder_name}@{endpoint}"
    connector_id = _connector(client, name, connector_body(name, encoder_name, endpoint, texts_per_request))
    by_connector = {"term": {"connector_id.keyword": connector_id}}
    models = [m for m in _search(client, "models", by_connector) if str(m.get("name", "")).startswith(PREFIX)]
    if models:
        model_id = str(models[0]["_id"])
    else:
        body = {"name": name, "function_name": "remote", "connector_id": connector_id,
                "model_group_id": _model_group(client),
                "description": f"encoder {encoder_name} ({dimension} dimensions) served by rsrt at {endpoint}"}
        model_id = _visible(client, "models", by_connector,
                            str(ml_request(client, "POST", f"{ML}/models/_register", body)["model_id"]))
    deploy_and_wait(client, model_id, timeout=timeout_s)
    _check_dimension(client, model_id, endpoint, dimension)
    return model_id


def delete_remote_model(client: OpenSearch, model_id: str) -> None:
    """Undeploy and delete an rsrt remote model and its connector; anything not named `rsrt/…` is refused."""
    model = ml_request(client, "GET", f"{ML}/models/{model_id}")
    if not str(model.get("name", "")).startswith(PREFIX):
        raise ConfigError(f"model {model_id} ({model.get('name')!r}) was not made by rsrt; not deleting it")
    with contextlib.suppress(ClusterError):  # already undeployed, or evicted by a restart
        ml_request(client, "POST", f"{ML}/models/{model_id}/_undeploy")
    ml_request(client, "DELETE", f"{ML}/models/{model_id}")
    connector_id = model.get("connector_id")
    if connector_id:
        connector = ml_request(client, "GET", f"{ML}/connectors/{connector_id}")
        if str(connector.get("name", "")).startswith(PREFIX):
            _delete_connector(client, str(connector_id))


def _delete_connector(client: OpenSearch, connector_id: str, timeout_s: float = 10.0) -> None:
    """Delete a connector; right after its model's deletion ml-commons may still see the model (409) a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ml_request(client, "DELETE", f"{ML}/connectors/{connector_id}")
            return
        except ClusterError as exc:
            if "still using this connector" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
