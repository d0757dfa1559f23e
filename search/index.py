"""Index lifecycle: versioned indices behind an alias, built from the JSON in `mappings/`.

`rsrt-images` (the alias) → `rsrt-images-v1`, `-v2`, …; a new version can be built beside the live
one and the alias swapped atomically. The encoder that wrote the vectors is recorded in `_meta`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import numpy as np
import opensearchpy
from opensearchpy import OpenSearch

from . import fields
from .errors import ConfigError, IndexNotFound, RsrtError, from_opensearch
from .schema import ImageRecord

DEFAULT_ALIAS = "rsrt-images"
CONTRACT_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,200}$")


def load_mapping_json(name: str) -> dict[str, Any]:
    """A JSON file from `mappings/` (installed as rsrt.mappings)."""
    path = resources.files("rsrt.mappings").joinpath(name)
    return json.loads(path.read_text(encoding="utf-8"))


def render_template(dimension: int, alias: str = DEFAULT_ALIAS) -> dict[str, Any]:
    """The index template with the encoder's dimension filled in and patterns for this alias."""
    template = copy.deepcopy(load_mapping_json("index-template.json"))
    template["index_patterns"] = [f"{alias}-v*"]
    embedding = template["template"]["mappings"]["properties"]["variants"]["properties"]["embedding"]
    embedding["dimension"] = int(dimension)
    return template


PIPELINES = ("rsrt-hybrid-minmax", "rsrt-hybrid-rrf")


def put_search_pipelines(client: OpenSearch) -> list[str]:
    """Install the named hybrid pipelines from mappings/search-pipelines/ (for Dev Tools and Dashboards).

    rsrt's own queries carry their pipeline in the request body, so per-query weights need no install;
    the named ones let an operator paste `rsrt search --show-dsl` output or write their own queries.
    """
    installed = []
    for name in PIPELINES:
        body = load_mapping_json(f"search-pipelines/{name}.json")
        client.transport.perform_request("PUT", f"/_search/pipeline/{name}", body=body)
        installed.append(name)
    return installed


def check_alias_name(alias: str) -> str:
    if not _NAME.match(alias):
        raise ConfigError(f"index name {alias!r} must be lowercase letters, digits, '-', '_' or '.'")
    return alias


@dataclass
class IndexInfo:
    alias: str
    index: str
    encoder: dict[str, Any]
    dimension: int
    documents: int
    size_bytes: int
    versions: list[str]
    created: str = ""


def _resolve(client: OpenSearch, alias: str) -> list[str]:
    try:
        if client.indices.exists_alias(name=alias):
            return sorted(client.indices.get_alias(name=alias).keys())
        if client.indices.exists(index=alias):
            return [alias]
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=alias) from None
    return []


def _versions(client: OpenSearch, alias: str) -> list[str]:
    found = client.indices.get(index=f"{alias}-v*", params={"expand_wildcards": "all", "ignore_unavailable": "true"})
    return sorted(found, key=lambda name: int(name.rsplit("-v", 1)[1]) if name.rsplit("-v", 1)[1].isdigit() else 0)


def create_index(
    client: OpenSearch,
    encoder_info: dict[str, Any],
    alias: str = DEFAULT_ALIAS,
    shards: int = 1,
    replicas: int = 0,
    new_version: bool = False,
    hnsw: dict[str, int] | None = None,
) -> str:
    """Create `<alias>-vN` and point the alias at it; idempotent unless `new_version`.

    An existing index written with another encoder is refused: its vectors would be meaningless
    to queries encoded by the new one.
    """
    check_alias_name(alias)
    current = _resolve(client, alias)
    if current and not new_version:
        existing = read_encoder(client, alias)
        if existing.get("name") != encoder_info["name"]:
            raise ConfigError(
                f"index {alias!r} holds vectors from encoder {existing.get('name')!r}, not "
                f"{encoder_info['name']!r}; use that encoder or `rsrt index create --new-version`"
            )
        return current[0]
    versions = _versions(client, alias)
    next_n = 1 + max((int(v.rsplit("-v", 1)[1]) for v in versions if v.rsplit("-v", 1)[1].isdigit()), default=0)
    name = f"{alias}-v{next_n}"
    template = render_template(int(encoder_info["dimension"]), alias)
    client.indices.put_index_template(name=alias, body=template)
    body = copy.deepcopy(template["template"])
    body["settings"]["index"]["number_of_shards"] = shards
    body["settings"]["index"]["number_of_replicas"] = replicas
    if hnsw:
        params = body["mappings"]["properties"]["variants"]["properties"]["embedding"]["method"]["parameters"]
        params.update(hnsw)
    body["mappings"]["_meta"] = {
        "rsrt_contract": CONTRACT_VERSION,
        "encoder": encoder_info,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "alias": alias,
    }
    client.indices.create(index=name, body=body)
    if has_neural_search(client):
        put_search_pipelines(client)
    actions: list[dict[str, Any]] = [{"add": {"index": name, "alias": alias, "is_write_index": True}}]
    actions += [{"remove": {"index": old, "alias": alias}} for old in current]
    client.indices.update_aliases(body={"actions": actions})
    # (opensearch-py would take a `timeout` param as its own request timeout: put it in the path)
    client.transport.perform_request("GET", f"/_cluster/health/{name}?wait_for_status=yellow&timeout=30s")
    return name


def index_uuid(client: OpenSearch, alias: str) -> str:
    """The write index's UUID: what a checkpoint is tied to (a recreated index has a new one)."""
    indices = _resolve(client, alias)
    if not indices:
        raise IndexNotFound(f"index {alias!r} does not exist")
    settings = client.indices.get_settings(index=indices[-1], name="index.uuid")
    return str(next(iter(settings.values()))["settings"]["index"]["uuid"])


def has_neural_search(client: OpenSearch) -> bool:
    try:
        plugins = client.cat.plugins(format="json")
    except opensearchpy.TransportError:
        return False
    return any(p.get("component") == "opensearch-neural-search" for p in plugins)


def read_meta(client: OpenSearch, alias: str) -> dict[str, Any]:
    indices = _resolve(client, alias)
    if not indices:
        raise IndexNotFound(f"index {alias!r} does not exist; create it with `rsrt index create` or ingest")
    mapping = client.indices.get_mapping(index=indices[-1])
    return next(iter(mapping.values()))["mappings"].get("_meta", {})


def read_encoder(client: OpenSearch, alias: str) -> dict[str, Any]:
    meta = read_meta(client, alias)
    if "encoder" not in meta:
        raise RsrtError(f"index {alias!r} was not created by rsrt (no encoder in its _meta)")
    return meta["encoder"]


def delete_index(client: OpenSearch, alias: str = DEFAULT_ALIAS) -> list[str]:
    """Delete every version behind the alias and its template; returns what was deleted."""
    check_alias_name(alias)
    targets = sorted(set(_resolve(client, alias)) | set(_versions(client, alias)))
    for name in targets:
        client.indices.delete(index=name)
    with contextlib.suppress(opensearchpy.NotFoundError):
        client.indices.delete_index_template(name=alias)
    return targets


def index_stats(client: OpenSearch, alias: str = DEFAULT_ALIAS) -> IndexInfo:
    indices = _resolve(client, alias)
    if not indices:
        raise IndexNotFound(f"index {alias!r} does not exist")
    meta = read_meta(client, alias)
    stats = client.indices.stats(index=",".join(indices), metric="docs,store")
    total = stats["_all"]["primaries"]
    documents = int(client.count(index=alias)["count"])
    encoder = meta.get("encoder", {})
    return IndexInfo(
        alias=alias,
        index=indices[-1],
        encoder=encoder,
        dimension=int(encoder.get("dimension", 0)),
        documents=documents,
        size_bytes=int(total["store"]["size_in_bytes"]),
        versions=_versions(client, alias),
        created=str(meta.get("created", "")),
    )


@contextlib.contextmanager
def bulk_load_settings(client: OpenSearch, alias: str) -> Iterator[None]:
    """Refresh off and replicas 0 while loading; the previous values come back afterwards.

    The values to restore are kept in the index's own mapping `_meta`, so a load interrupted by a
    dead node or a killed process is undone by the next run, from any machine.
    """
    indices = _resolve(client, alias)
    saved: dict[str, dict[str, str]] = {}
    for name in indices:
        meta = next(iter(client.indices.get_mapping(index=name).values()))["mappings"].get("_meta", {})
        if meta.get("bulk_load_saved"):
            saved[name] = meta["bulk_load_saved"]  # an earlier load did not finish: keep its originals
        else:
            settings = client.indices.get_settings(index=name, params={"include_defaults": "true"})[name]
            merged = {**settings.get("defaults", {}).get("index", {}), **settings["settings"]["index"]}
            saved[name] = {"refresh_interval": str(merged.get("refresh_interval", "1s")),
                           "number_of_replicas": str(merged.get("number_of_replicas", "0"))}
            client.indices.put_mapping(index=name, body={"_meta": {**meta, "bulk_load_saved": saved[name]}})
        client.indices.put_settings(index=name, body={"index": {"refresh_interval": "-1", "number_of_replicas": 0}})
    try:
        yield
    finally:
        try:
            for name, original in saved.items():
                client.indices.put_settings(index=name, body={"index": {
                    "refresh_interval": original["refresh_interval"],
                    "number_of_replicas": int(original["number_of_replicas"])}})
                meta = next(iter(client.indices.get_mapping(index=name).values()))["mappings"].get("_meta", {})
                meta.pop("bulk_load_saved", None)
                client.indices.put_mapping(index=name, body={"_meta": meta})
            if indices:
                client.indices.refresh(index=",".join(indices))
        except (opensearchpy.ConnectionError, opensearchpy.ConnectionTimeout):
            pass  # the cluster is gone; the next run finds bulk_load_saved in _meta and restores


def to_document(record: ImageRecord) -> dict[str, Any]:
    """The one place an ImageRecord becomes an OpenSearch document (see mappings/index-template.json)."""
    variants = []
    vectors = record.vectors or []
    for n, variant in enumerate(record.variants):
        entry: dict[str, Any] = {fields.VARIANT_POSITION: n}
        for key, value in variant.to_dict().items():
            if value:
                entry[key] = value
        if n < len(vectors):
            vector = vectors[n]
            # numpy rows stay arrays: the client's serializer writes them as float32 (see serializer.py)
            entry[fields.EMBEDDING] = vector if isinstance(vector, np.ndarray) else [float(x) for x in vector]
        variants.append(entry)
    first = record.variants[0] if record.variants else None
    doc: dict[str, Any] = {
        fields.IMAGE_ID: record.image_id,
        fields.SOURCE_URI: record.source_uri or None,
        fields.COLLECTION: record.collection,
        fields.DATETIME: record.datetime,
        fields.GEOMETRY: record.geometry,
        fields.CENTROID: record.centroid(),
        fields.BBOX: record.bbox,
        fields.PROPERTIES: record.properties or {},
        fields.SUMMARY: (first.one_sentence or first.caption) if first else None,
        fields.VARIANT_COUNT: len(variants),
        fields.VARIANTS: variants,
    }
    if record.captioner:
        doc[fields.CAPTIONER] = {k: v for k, v in vars(record.captioner).items() if v}
    return {k: v for k, v in doc.items() if v is not None}
