"""The cluster embeds text itself: the index's own encoder exported, registered and deployed in ml-commons.

Why: analysts in Dashboards and portals with their own OpenSearch client can then run plain-text `neural`
and hybrid queries; without it only rsrt's Python process can make a query vector. The model that runs
in the cluster is the one that wrote the index (its `_meta["encoder"]`), exported once to an ONNX zip
(`model.onnx` + `tokenizer.json`), uploaded in chunks (the `_register` route with a URL would try to reach
an artifacts host) and recorded in every concrete index as `_meta["cluster_model"]`. The index's default
search pipeline names the model for its vector field (`neural_query_enricher`) and fuses hybrid queries
with today's normalisation, so a request needs neither a model id nor a pipeline.

Everything here is idempotent: the same zip (content hash) under the same name is reused, an undeployed
model is deployed again. rsrt only undeploys or deletes models it registered (names start `rsrt/`).
"""

from __future__ import annotations

import json
import random
import time
import weakref
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import opensearchpy
from opensearchpy import OpenSearch

from .errors import ClusterAuthError, ClusterError, ConfigError, IndexNotFound, from_opensearch
from .fusion import FusionSpec

MODEL_PREFIX = "rsrt/"  # every model rsrt registers; the only ones it undeploys or deletes
# Bumped when the export changes (exporter, opset, tokenizer settings, zip layout): old zips are not reused.
EXPORT_RECIPE = 1
CHUNK_BYTES = 10_000_000  # upload_chunk pieces (ml-commons refuses bodies over its http max content length)
PREDICT_BATCH = 32  # texts per _predict request
DEPLOY_TIMEOUT = 300.0  # seconds; a deploy took 7-18 s on a loaded machine
VECTOR_FIELD = "variants.embedding"
NO_ML_COMMONS = ("the cluster has no ml-commons: rsrt model deploy needs the opensearch-ml plugin (the local node "
                 "`rsrt node start` has it); searches fall back to client embedding")
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same export gives the same zip, hence the same hash


@dataclass(frozen=True)
class ClusterModel:
    """A model deployed in the cluster for one index: what `_meta["cluster_model"]` records."""

    model_id: str
    encoder: str  # the encoder's name, as in _meta["encoder"]["name"]
    content_hash: str  # sha256 of the uploaded zip ("remote:<url>" for a remote model)
    dimension: int
    kind: str  # "local" (ONNX in the cluster) or "remote" (an HTTP connector)
    search_pipeline: str  # the index's default search pipeline

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ClusterModel:
        return cls(model_id=str(meta["model_id"]), encoder=str(meta["encoder"]),
                   content_hash=str(meta.get("content_hash", "")), dimension=int(meta["dimension"]),
                   kind=str(meta.get("kind", "local")), search_pipeline=str(meta.get("search_pipeline", "")))


@dataclass(frozen=True)
class ModelExport:
    """An exported encoder, ready for chunk upload."""

    path: Path
    encoder: str
    content_hash: str
    size: int
    dimension: int
    model_type: str  # config.json's model_type: ml-commons feeds token_type_ids to bert-like models only


def pipeline_name(alias: str) -> str:
    return f"{alias}-neural"


def model_name(encoder: str) -> str:
    """`rsrt/<encoder>`; a local directory is named by its last component."""
    return MODEL_PREFIX + Path(encoder).name


def ml_request(client: OpenSearch, method: str, path: str, body: Any = None, index: str | None = None,
               params: dict[str, Any] | None = None) -> Any:
    """One request to the ml-commons (or any) REST API; failures leave through the error boundary."""
    try:
        return client.transport.perform_request(method, path, body=body, params=params)
    except opensearchpy.OpenSearchException as exc:
        raise from_opensearch(exc, index=index) from None


_ml_commons: weakref.WeakKeyDictionary[OpenSearch, bool] = weakref.WeakKeyDictionary()


def has_ml_commons(client: OpenSearch) -> bool:
    """Whether the cluster lists opensearch-ml (asked once per client)."""
    if client not in _ml_commons:
        plugins = ml_request(client, "GET", "/_cat/plugins", params={"format": "json"})
        _ml_commons[client] = any(p.get("component") == "opensearch-ml" for p in plugins)
    return _ml_commons[client]


def _require_ml_commons(client: OpenSearch) -> None:
    if not has_ml_commons(client):
        raise ConfigError(NO_ML_COMMONS)


# --- export -------------------------------------------------------------------------------------------


def export_model(encoder: str, cache_dir: Path | None = None) -> ModelExport:
    """The encoder as an ml-commons ONNX zip, exported once into the model cache (written atomically).

    The cache key is the encoder's name, its weights' sha256 and EXPORT_RECIPE. Only sentence-transformers
    models with mean pooling run in the cluster (ml-commons pools and normalises itself); others need --remote.
    """
    from .encoder_onnx import local_model_dir, read_sentence_config, weights_digest, write_atomically
    from .models import PACKAGED, model_cache_dir, resolve_model, sha256_file

    name, location = resolve_model(encoder)
    model_dir = local_model_dir(location)
    unsupported = (f"encoder {name!r} cannot run inside the cluster: ml-commons runs sentence-transformers "
                   "models with mean pooling and normalisation only; serve it and use "
                   "`rsrt model deploy --remote URL`")
    if not (model_dir / "modules.json").exists():
        raise ConfigError(f"{unsupported} (it is not a sentence-transformers model)")
    try:
        config = read_sentence_config(model_dir)
    except ConfigError as exc:
        raise ConfigError(f"{unsupported} ({exc})") from None
    if config.pooling != ("mean",) or config.do_lower_case:
        raise ConfigError(f"{unsupported} (it pools by {'+'.join(config.pooling)}"
                          f"{', lower-casing first' if config.do_lower_case else ''})")
    transformer = json.loads((config.transformer_dir / "config.json").read_text(encoding="utf-8"))
    spec = PACKAGED.get(name)
    digest = spec.weights_sha256 if spec else weights_digest(config.transformer_dir)
    folder = (cache_dir or model_cache_dir()) / "ml-commons" / f"{Path(name).name}-{digest[:12]}-r{EXPORT_RECIPE}"
    target = folder / "model.zip"
    if not target.exists():
        _build_zip(config, transformer, folder, target, write_atomically)
    dimension = spec.dimension if spec else int(transformer["hidden_size"])
    return ModelExport(target, name, sha256_file(target), target.stat().st_size, dimension,
                       str(transformer.get("model_type", "bert")))


def _build_zip(config: Any, transformer: dict[str, Any], folder: Path, target: Path,
               write_atomically: Callable[..., None]) -> None:
    """model.onnx (TorchScript exporter, checked against torch) + tokenizer.json truncating like the encoder."""
    from transformers.utils import logging as hf_logging

    from .encoder_onnx import export_transformer

    hf_logging.disable_progress_bar()
    onnx_path = folder / f".export-{time.time_ns()}.onnx"
    export_transformer(config, onnx_path)
    max_length = config.max_seq_length or min(int(transformer.get("max_position_embeddings", 512)), 512)
    tokenizer = _tokenizer_json(config.transformer_dir)
    # ml-commons tokenises each text alone: no padding; truncation as sentence-transformers does it.
    tokenizer["truncation"] = {"direction": "Right", "max_length": max_length, "strategy": "LongestFirst",
                               "stride": 0}
    tokenizer["padding"] = None

    def produce(path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            with onnx_path.open("rb") as handle:
                archive.writestr(zipfile.ZipInfo("model.onnx", _ZIP_DATE), handle.read(), zipfile.ZIP_DEFLATED)
            archive.writestr(zipfile.ZipInfo("tokenizer.json", _ZIP_DATE), json.dumps(tokenizer),
                             zipfile.ZIP_DEFLATED)

    try:
        write_atomically(target, produce)
    finally:
        onnx_path.unlink(missing_ok=True)


def _tokenizer_json(transformer_dir: Path) -> dict[str, Any]:
    path = transformer_dir / "tokenizer.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(str(transformer_dir), local_files_only=True)
    if not getattr(fast, "is_fast", False):
        raise ConfigError(f"{transformer_dir} has no tokenizer.json and no fast tokenizer to write one")
    return json.loads(fast.backend_tokenizer.to_str())


# --- models in the cluster ------------------------------------------------------------------------------


def _find_models(client: OpenSearch, *clauses: dict[str, Any]) -> list[dict[str, Any]]:
    """Model documents (not their chunks) matching `clauses`, each with its `model_id`."""
    body = {"size": 1000, "_source": {"excludes": ["content", "model_content"]},
            "query": {"bool": {"filter": list(clauses), "must_not": [{"exists": {"field": "chunk_number"}}]}}}
    found = ml_request(client, "POST", "/_plugins/_ml/models/_search", body)
    return [{**hit["_source"], "model_id": hit["_id"]} for hit in found["hits"]["hits"]]


def get_model(client: OpenSearch, model_id: str) -> dict[str, Any] | None:
    """The model's document, or None when it does not exist (a search: a GET's 404 would read as an index)."""
    found = _find_models(client, {"ids": {"values": [model_id]}})
    return found[0] if found else None


def _wait_task(client: OpenSearch, task_id: str, what: str, timeout: float = DEPLOY_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = ml_request(client, "GET", f"/_plugins/_ml/tasks/{task_id}")
        state = task.get("state")
        if state == "COMPLETED":
            return task
        if state in ("FAILED", "COMPLETED_WITH_ERROR", "CANCELLED"):
            raise ClusterError(f"{what} failed in the cluster: {' '.join(str(task.get('error', state)).split())[:300]}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not finish within {timeout:.0f} s (task {task_id}, state {state})")
        time.sleep(0.5)


def deploy_and_wait(client: OpenSearch, model_id: str, log: Callable[[str], None] = lambda msg: None,
                    timeout: float = DEPLOY_TIMEOUT) -> None:
    """Deploy a registered model (local or remote) unless it is DEPLOYED, and wait until it is.

    A deploy already under way is waited on, not started twice; the deploy task completes before the
    model itself says DEPLOYED, so the model's state is what ends the wait.
    """
    started = time.monotonic()
    state = (get_model(client, model_id) or {}).get("model_state")
    if state == "DEPLOYED":
        return
    if state != "DEPLOYING":
        task = ml_request(client, "POST", f"/_plugins/_ml/models/{model_id}/_deploy")
        _wait_task(client, task["task_id"], f"deploying model {model_id}", timeout)
    while (get_model(client, model_id) or {}).get("model_state") != "DEPLOYED":
        if time.monotonic() - started > timeout:
            raise ClusterError(f"model {model_id} did not reach DEPLOYED within {timeout:.0f} s")
        time.sleep(0.2)
    log(f"deployed model {model_id} in {time.monotonic() - started:.1f} s")


def _register(client: OpenSearch, export: ModelExport, log: Callable[[str], None]) -> str:
    """register_meta + upload_chunk: the route that needs no artifacts host (see the module docstring)."""
    name = model_name(export.encoder)
    chunks = (export.size + CHUNK_BYTES - 1) // CHUNK_BYTES
    meta: dict[str, Any] = {
        "name": name, "version": "1", "model_format": "ONNX", "function_name": "TEXT_EMBEDDING",
        "description": f"rsrt: {export.encoder} (export recipe {EXPORT_RECIPE})",
        "model_content_hash_value": export.content_hash, "model_content_size_in_bytes": export.size,
        "total_chunks": chunks,
        "model_config": {"model_type": export.model_type, "embedding_dimension": export.dimension,
                         "framework_type": "sentence_transformers", "pooling_mode": "mean",
                         "normalize_result": True},
    }
    model_id = _register_meta(client, name, meta)
    with export.path.open("rb") as handle:
        for n in range(chunks):
            # raw bytes sent as application/json: ml-commons answered octet-stream with 406
            ml_request(client, "POST", f"/_plugins/_ml/models/{model_id}/upload_chunk/{n}", handle.read(CHUNK_BYTES))
    log(f"registered {name} as {model_id} ({export.size / 1e6:.0f} MB in {chunks} chunks)")
    return model_id


def _retrying_group_races(call: Callable[[], Any], attempts: int = 8) -> Any:
    """`call()`, again after a short random pause when it lost a race on a model group.

    Registrations (and deletions) in one model group at once — ingest shards — update the group's
    version with optimistic concurrency: all but one get HTTP 409 "version conflict"; a group that
    another made meanwhile is "already being used". Anything else is raised at once.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except ClusterError as exc:
            text = str(exc)
            if attempt == attempts or not ("version conflict" in text or "already being used" in text):
                raise
        time.sleep(random.uniform(0.1, 0.5) * attempt)
    raise AssertionError("unreachable")  # the loop returns or raises


def _register_meta(client: OpenSearch, name: str, meta: dict[str, Any]) -> str:
    """`_register_meta` in the model group of `name` (made by the first registration); the new model's id."""

    def register() -> str:
        groups = ml_request(client, "POST", "/_plugins/_ml/model_groups/_search",
                            {"size": 1, "query": {"term": {"name.keyword": name}}})["hits"]["hits"]
        body = {**meta, "model_group_id": groups[0]["_id"]} if groups else meta  # join the group, not make one
        return str(ml_request(client, "POST", "/_plugins/_ml/models/_register_meta", body)["model_id"])

    return _retrying_group_races(register)


def _same_models(client: OpenSearch, export: ModelExport) -> list[dict[str, Any]]:
    """The registered models of this export: its name and content hash."""
    return _find_models(client, {"term": {"model_content_hash_value": export.content_hash}},
                        {"term": {"name.keyword": model_name(export.encoder)}})


def _first_registered(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The one every process keeps of several registrations of one export: the oldest (then the lowest id)."""
    return min(models, key=lambda m: (int(m.get("created_time") or 0), str(m["model_id"])))


def register_once(client: OpenSearch, export: ModelExport, log: Callable[[str], None] = lambda msg: None,
                  settle: float = 30.0) -> str:
    """The id of `export` registered in the cluster: the one already there, else a new registration.

    ml-commons has no "register unless registered": processes deploying at once (N ingest shards) all
    find no model and all register it. So after registering, a process waits until its own model is
    searchable (every registration made before it then is too), keeps the first one registered and
    deletes its own if that is another: they all end with the same model, and the cluster holds one.
    """
    same = _same_models(client, export)
    if same:
        model_id = str(_first_registered(same)["model_id"])
        log(f"reusing model {model_id} ({model_name(export.encoder)}, same content hash)")
    else:
        mine = _register(client, export, log)
        deadline = time.monotonic() + settle
        while not any(m["model_id"] == mine for m in same):
            if time.monotonic() > deadline:
                return mine  # not searchable yet: keep ours (at worst, one duplicate registration)
            time.sleep(0.2)
            same = _same_models(client, export)
        model_id = str(_first_registered(same)["model_id"])
        if model_id != mine:
            _retrying_group_races(lambda: ml_request(client, "DELETE", f"/_plugins/_ml/models/{mine}"))
            log(f"{model_name(export.encoder)} was registered at the same time as {model_id}: using that one, "
                f"deleted {mine}")
    deadline = time.monotonic() + DEPLOY_TIMEOUT
    while (get_model(client, model_id) or {}).get("model_state") == "REGISTERING":  # its chunks still uploading
        if time.monotonic() > deadline:
            raise ClusterError(f"model {model_id} is still registering after {DEPLOY_TIMEOUT:.0f} s")
        time.sleep(0.5)
    return model_id


def ensure_deployed(client: OpenSearch, model: ClusterModel, *, index: str | None = None,
                    log: Callable[[str], None] = lambda msg: None) -> None:
    """Deploy the model again when it is undeployed or was evicted (a node restart); fail if it is gone."""
    found = get_model(client, model.model_id)
    if found is None:
        raise ConfigError(f"cluster model {model.model_id} ({model.encoder}) no longer exists; deploy it again "
                          f"with `rsrt model deploy --index {index or 'I'}`")
    if found.get("model_state") != "DEPLOYED":
        deploy_and_wait(client, model.model_id, log)


def deploy_model(client: OpenSearch, alias: str, *, remote_url: str | None = None,
                 log: Callable[[str], None] = lambda msg: None, cache_dir: Path | None = None) -> ClusterModel:
    """Put the index's own encoder in the cluster, record it and make the index's pipeline its default.

    Reuses a registered model with the same name and content hash (deploying it again if needed).
    `cache_dir` overrides the model cache for the export (tests keep theirs per session).
    """
    from .index import read_encoder

    _require_ml_commons(client)
    encoder = read_encoder(client, alias)
    name, dimension = str(encoder["name"]), int(encoder["dimension"])
    if remote_url:
        from .ml_remote import create_remote_model

        model_id = create_remote_model(client, name, remote_url, dimension)
        model = ClusterModel(model_id, name, f"remote:{remote_url}", dimension, "remote", pipeline_name(alias))
    else:
        started = time.monotonic()
        export = export_model(name, cache_dir)
        log(f"exported {name} ({export.size / 1e6:.0f} MB, sha256 {export.content_hash[:12]}) in "
            f"{time.monotonic() - started:.1f} s")
        _check(export.encoder, export.dimension, encoder, alias)
        model_id = register_once(client, export, log)
        model = ClusterModel(model_id, name, export.content_hash, export.dimension, "local", pipeline_name(alias))
    ensure_deployed(client, model, index=alias, log=log)
    attach_model(client, alias, model)
    return model


def _check(name: str, dimension: int, encoder: dict[str, Any], alias: str) -> None:
    if name != encoder.get("name") or dimension != int(encoder.get("dimension", 0)):
        raise ConfigError(f"model of {name!r} ({dimension} dims) does not match index {alias!r}, whose vectors "
                          f"come from {encoder.get('name')!r} ({encoder.get('dimension')} dims)")


def attach_model(client: OpenSearch, alias: str, model: ClusterModel) -> None:
    """Record `model` in every concrete index's _meta and install the index's default search and ingest pipelines.

    A model of another encoder or dimension is refused: its query vectors would not match the index's.
    """
    from .index import _resolve, read_encoder

    _check(model.encoder, model.dimension, read_encoder(client, alias), alias)
    body = {
        "description": f"rsrt: {alias} — neural queries default to model {model.model_id}; hybrid fusion",
        "request_processors": [{"neural_query_enricher": {
            "default_model_id": model.model_id, "neural_field_default_id": {VECTOR_FIELD: model.model_id}}}],
        "phase_results_processors": FusionSpec().pipeline()["phase_results_processors"],
    }
    ml_request(client, "PUT", f"/_search/pipeline/{model.search_pipeline}", body, index=alias)
    for name in _resolve(client, alias):
        mapping = ml_request(client, "GET", f"/{name}/_mapping", index=alias)
        meta = next(iter(mapping.values()))["mappings"].get("_meta", {})
        ml_request(client, "PUT", f"/{name}/_mapping", {"_meta": {**meta, "cluster_model": model.to_meta()}},
                   index=alias)
        ml_request(client, "PUT", f"/{name}/_settings",
                   {"index": {"search": {"default_pipeline": model.search_pipeline}}}, index=alias)
    from .ml_ingest import put_embedding_pipeline

    # and the index's default ingest pipeline: any writer (Logstash, a portal) gets its variants embedded
    put_embedding_pipeline(client, alias, model.model_id)


def index_cluster_model(client: OpenSearch, alias: str) -> ClusterModel | None:
    """The model recorded in the index's _meta, if any."""
    from .index import read_meta

    recorded = read_meta(client, alias).get("cluster_model")
    return ClusterModel.from_meta(recorded) if recorded else None


def predict(client: OpenSearch, model_id: str, texts: list[str], batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Texts embedded by the cluster: float32 rows, L2-normalised (as the Python encoder returns them)."""
    rows: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        body = {"text_docs": texts[start:start + batch_size], "return_number": True,
                "target_response": ["sentence_embedding"]}
        out = ml_request(client, "POST", f"/_plugins/_ml/_predict/text_embedding/{model_id}", body)
        rows += [result["output"][0]["data"] for result in out["inference_results"]]
    vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32, copy=False)


# --- inventory and clean-up -----------------------------------------------------------------------------


def recorded_by(client: OpenSearch) -> dict[str, list[str]]:
    """model id → the concrete indices whose _meta records it.

    Every index's mapping when the user may read them all; else (a 403, as for rsrt's ingest role on a
    secured cluster) those of rsrt's own indices, the pattern rsrt's roles are granted on.
    """
    from .index import RSRT_INDEX_PATTERN

    users: dict[str, list[str]] = {}
    try:
        mappings = ml_request(client, "GET", "/_all/_mapping")
    except ClusterAuthError:
        mappings = ml_request(client, "GET", f"/{RSRT_INDEX_PATTERN}/_mapping",
                              params={"allow_no_indices": "true"})
    for name, mapping in sorted(mappings.items()):
        model = (mapping.get("mappings", {}).get("_meta") or {}).get("cluster_model")
        if isinstance(model, dict) and model.get("model_id"):
            users.setdefault(str(model["model_id"]), []).append(name)
    return users


def list_models(client: OpenSearch) -> list[dict[str, Any]]:
    """The models rsrt registered, with their state and the indices that record them."""
    _require_ml_commons(client)
    users = recorded_by(client)
    models = _find_models(client, {"prefix": {"name.keyword": MODEL_PREFIX}})
    return [{"model_id": m["model_id"], "name": m.get("name"), "state": m.get("model_state"),
             "format": m.get("model_format") or m.get("algorithm"),
             "dimension": (m.get("model_config") or {}).get("embedding_dimension"),
             "content_hash": m.get("model_content_hash_value"), "indices": users.get(m["model_id"], [])}
            for m in sorted(models, key=lambda m: (str(m.get("name")), m["model_id"]))]


def _own_model(client: OpenSearch, model_id: str) -> dict[str, Any]:
    _require_ml_commons(client)
    found = get_model(client, model_id)
    if found is None:
        raise ConfigError(f"model {model_id} does not exist in the cluster")
    if not str(found.get("name", "")).startswith(MODEL_PREFIX):
        raise ConfigError(f"model {model_id} ({found.get('name')}) was not registered by rsrt "
                          f"(its name does not start {MODEL_PREFIX!r}); rsrt leaves it alone")
    return found


def undeploy_model(client: OpenSearch, model_id: str) -> None:
    """Free the model's memory on every node; `ensure_deployed` (or a search) can deploy it again."""
    _own_model(client, model_id)
    ml_request(client, "POST", f"/_plugins/_ml/models/{model_id}/_undeploy")


def delete_model(client: OpenSearch, model_id: str, *, force: bool = False) -> None:
    """Undeploy and delete a model rsrt registered; one an index still records needs `force`."""
    found = _own_model(client, model_id)
    users = recorded_by(client).get(model_id, [])
    if users and not force:
        raise ConfigError(f"model {model_id} is the cluster model of {', '.join(users)}; deleting it breaks their "
                          "plain-text queries (give --force to delete it anyway)")
    if found.get("connector_id"):  # a remote model: its connector goes with it
        from .ml_remote import delete_remote_model

        delete_remote_model(client, model_id)
        return
    if found.get("model_state") in ("DEPLOYED", "PARTIALLY_DEPLOYED", "DEPLOYING"):
        ml_request(client, "POST", f"/_plugins/_ml/models/{model_id}/_undeploy")
    ml_request(client, "DELETE", f"/_plugins/_ml/models/{model_id}")


def model_status(client: OpenSearch, alias: str) -> dict[str, Any]:
    """The recorded model, its state in the cluster and whether its pipeline is every index's default."""
    from .index import _resolve

    indices = _resolve(client, alias)
    if not indices:
        raise IndexNotFound(f"index {alias!r} does not exist")
    model = index_cluster_model(client, alias)
    status: dict[str, Any] = {"index": alias, "ml_commons": has_ml_commons(client),
                              "model": model.to_meta() if model else None, "state": None, "pipeline_default": False}
    if model is None or not status["ml_commons"]:
        return status
    found = get_model(client, model.model_id)
    status["state"] = found.get("model_state") if found else "MISSING"
    settings = ml_request(client, "GET", f"/{','.join(indices)}/_settings/index.search.default_pipeline", index=alias)
    defaults = {((s.get("settings") or {}).get("index") or {}).get("search", {}).get("default_pipeline")
                for s in settings.values()}
    status["pipeline_default"] = defaults == {model.search_pipeline}
    return status


def deploy_quietly(client: OpenSearch, alias: str, warn: Callable[[str], None],
                   log: Callable[[str], None] = lambda msg: None) -> ClusterModel | None:
    """The index-creation and ingest hook: deploy when the cluster has ml-commons; a failure is one warning.

    Client embedding still works without a cluster model, so a deploy failure must not fail an ingest.
    """
    try:
        return deploy_model(client, alias, log=log) if has_ml_commons(client) else None
    except Exception as exc:  # any failure: the ingest goes on with client embedding)
        warn(f"warning: no cluster model for {alias!r} ({exc}); queries are embedded by rsrt")
        return None
