"""Index lifecycle: versioned indices behind an alias, built from the JSON in `mappings/`.

`rsrt-images` (the alias) → `rsrt-images-v1`, `-v2`, …; a new version is built beside the live one
(`create_index(new_version=True)` leaves the alias where it is, so search keeps answering from the
old version), filled by an ingest into its concrete name, then `promote_version` swaps the alias in
one atomic request. The encoder that wrote the vectors is recorded in `_meta`; an index is rsrt's
only when its name is `<alias>-v<digits>` and its `_meta` carries rsrt's contract, the encoder and
the alias (`owns`) — nothing else is ever deleted. How the vectors are stored (`QUANTIZATIONS`: float32, or
the lucene engine's 7-bit scalar quantisation) is chosen when a version is made and recorded in `_meta.vectors`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import opensearchpy
from opensearchpy import OpenSearch

from . import fields
from .errors import ConfigError, IndexNotFound, RsrtError, from_opensearch
from .geometry import bbox_geometry
from .schema import ImageRecord

DEFAULT_ALIAS = "rsrt-images"
RSRT_INDEX_PATTERN = "rsrt*"  # what rsrt's security roles are granted on: index names should start with rsrt
CONTRACT_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,200}$")

# How an index stores its vectors. "none": float32 only (4 bytes a dimension, what HNSW reads). "sq": the lucene
# engine's built-in scalar quantiser (k-NN >= 2.16): each segment also keeps 7-bit copies (.veq, ~1 byte a
# dimension) and HNSW searches those, so the hot set is ~4x smaller; the float32 copies stay on disk (merges
# re-quantise from them), so the vector files grow by ~25 %. Its confidence interval is left to k-NN/Lucene
# (dimension-scaled: max(0.9, 1 - 1/(d + 1))); k-NN 2.19.1 accepts 0 (dynamic) or 0.9-1.0 and `bits` 7 only.
QUANTIZATIONS = ("none", "sq")
DEFAULT_QUANTIZATION = "none"  # the one default for new indices (the benchmarks decide whether it becomes "sq")
_KNN_ENCODERS: dict[str, dict[str, Any] | None] = {"none": None, "sq": {"name": "sq"}}


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


def check_quantization(quantization: str) -> str:
    """A name from QUANTIZATIONS, or a one-line ConfigError naming them."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    return quantization


def _embedding_mapping(mappings: dict[str, Any]) -> dict[str, Any]:
    """The `variants.embedding` field of a mapping ({} when it has none)."""
    variants = (mappings.get("properties") or {}).get(fields.VARIANTS) or {}
    return (variants.get("properties") or {}).get(fields.EMBEDDING) or {}


def quantization_of(mappings: dict[str, Any]) -> str:
    """How a mapping stores its vectors, read from the field itself (also right for indices made before `_meta`
    recorded it). `mode: on_disk` or `compression_level: 4x` on the lucene engine count as "sq": k-NN 2.19.1
    writes the same quantised files (.veq) for them as for the explicit encoder."""
    embedding = _embedding_mapping(mappings)
    method = embedding.get("method") or {}
    encoder = (method.get("parameters") or {}).get("encoder") or {}
    if encoder.get("name") == "sq":
        return "sq"
    if method.get("engine") == "lucene" and (embedding.get("mode") == "on_disk"
                                             or embedding.get("compression_level") == "4x"):
        return "sq"
    return "none"


def read_quantization(client: OpenSearch, name: str) -> str:
    """How the (concrete) index `name` stores its vectors, from its mapping."""
    try:
        mapping = client.indices.get_mapping(index=name)
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=name) from None
    return quantization_of(next(iter(mapping.values())).get("mappings") or {})


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
    quantization: str = DEFAULT_QUANTIZATION  # how the live version stores its vectors (QUANTIZATIONS)
    pending: list[str] = field(default_factory=list)  # built beside the live version, not promoted yet
    unfinished_bulk_load: list[str] = field(default_factory=list)  # loading now, or a killed load (repair)


def _resolve(client: OpenSearch, alias: str) -> list[str]:
    """The concrete indices behind an alias (or the index itself); [] when neither exists.

    One `GET /<name>/_alias`, scoped to the name: a cluster-wide `HEAD /_alias/<name>` is refused (403)
    to a user whose rights cover only rsrt's indices, as on any secured cluster.
    """
    try:
        return sorted(client.indices.get_alias(index=alias))
    except opensearchpy.NotFoundError:
        return []
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=alias) from None


def _version_number(alias: str, name: str) -> int | None:
    """N for `<alias>-vN` (digits only); None for any other name (`<alias>-vault` is not a version)."""
    prefix = f"{alias}-v"
    tail = name[len(prefix):] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() and tail.isascii() else None


def _matching(client: OpenSearch, alias: str) -> list[str]:
    """Every index the pattern `<alias>-v*` matches, versions or not."""
    try:
        return sorted(client.indices.get(index=f"{alias}-v*",
                                         params={"expand_wildcards": "all", "ignore_unavailable": "true"}))
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=alias) from None


def _versions(client: OpenSearch, alias: str) -> list[str]:
    """The `<alias>-v<digits>` indices, oldest first (whoever made them: see `owns`)."""
    numbered = [(n, name) for name in _matching(client, alias) if (n := _version_number(alias, name)) is not None]
    return [name for _, name in sorted(numbered)]


def _metas(client: OpenSearch, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each index's mapping `_meta` (one request)."""
    if not names:
        return {}
    mappings = client.indices.get_mapping(index=",".join(names))
    return {name: (body.get("mappings") or {}).get("_meta") or {} for name, body in mappings.items()}


def owns(meta: dict[str, Any], alias: str) -> bool:
    """Whether an index with this `_meta` is a version rsrt created for `alias`.

    The index template alone gives `rsrt_contract` to any `<alias>-v*` index someone creates by hand;
    only `create_index` also writes the encoder and the alias.
    """
    return bool(meta.get("rsrt_contract")) and "encoder" in meta and meta.get("alias", alias) == alias


def owned_versions(client: OpenSearch, alias: str) -> list[str]:
    """The versions rsrt created for `alias`, oldest first."""
    versions = _versions(client, alias)
    metas = _metas(client, versions)
    return [name for name in versions if owns(metas.get(name, {}), alias)]


def version_of(client: OpenSearch, name: str) -> str | None:
    """The alias `name` is a version of, when `name` is one of rsrt's concrete versions (`<alias>-vN`)."""
    if _resolve(client, name) != [name]:
        return None  # an alias, or nothing yet
    meta = _metas(client, [name]).get(name, {})
    alias = meta.get("alias")
    if isinstance(alias, str) and _version_number(alias, name) is not None and owns(meta, alias):
        return alias
    return None


def pending_versions(client: OpenSearch, alias: str) -> list[str]:
    """rsrt's versions newer than every index behind the alias: built (or being built), not promoted."""
    live = _resolve(client, alias)
    newest_live = max((_version_number(alias, name) or 0 for name in live), default=0)
    return [name for name in owned_versions(client, alias) if (_version_number(alias, name) or 0) > newest_live]


def create_index(
    client: OpenSearch,
    encoder_info: dict[str, Any],
    alias: str = DEFAULT_ALIAS,
    shards: int = 1,
    replicas: int = 0,
    new_version: bool = False,
    hnsw: dict[str, int] | None = None,
    quantization: str | None = None,
) -> str:
    """Create `<alias>-vN`; idempotent unless `new_version`. Returns the index to write to.

    `quantization` (QUANTIZATIONS) is how a new version stores its vectors; None means DEFAULT_QUANTIZATION for a
    new one and "whatever it has" for an existing one (an ingest into an sq index must not need the flag). Asking
    for one an existing index does not have is refused, naming `--new-version`: giving float32 to someone who
    asked for sq (or the reverse) would be a silent surprise, and a mapping cannot change it in place.

    The first version gets the alias at once (there is nothing to keep serving). With `new_version`
    and a live alias, `<alias>-vN+1` is built *beside* it: the alias stays on the old version, so
    search keeps answering from it while the new one is filled (ingest with `--index <alias>-vN+1`),
    and `promote_version` swaps the alias when it is complete.
    An existing index written with another encoder is refused: its vectors would be meaningless
    to queries encoded by the new one.
    Safe when N processes (ingest shards) create the same index at once: the first version and its
    alias are made in one request, the versions are listed before the alias is looked up (so no one
    sees versions without seeing their alias), and whoever loses the race to create uses the winner's.
    """
    check_alias_name(alias)
    if quantization is not None:
        check_quantization(quantization)
    versions = _versions(client, alias)
    current = _resolve(client, alias)
    if current and not new_version:
        return _existing_index(client, alias, encoder_info, current, quantization)
    next_n = 1 + max((int(v.rsplit("-v", 1)[1]) for v in versions if v.rsplit("-v", 1)[1].isdigit()), default=0)
    name = f"{alias}-v{next_n}"
    template = render_template(int(encoder_info["dimension"]), alias)
    client.indices.put_index_template(name=alias, body=template)
    body = copy.deepcopy(template["template"])
    body["settings"]["index"]["number_of_shards"] = shards
    body["settings"]["index"]["number_of_replicas"] = replicas
    method = _embedding_mapping(body["mappings"])["method"]
    if hnsw:
        method["parameters"].update(hnsw)
    stored_as = quantization or DEFAULT_QUANTIZATION
    knn_encoder = _KNN_ENCODERS[stored_as]
    if knn_encoder:
        method["parameters"]["encoder"] = copy.deepcopy(knn_encoder)
    body["mappings"]["_meta"] = {
        "rsrt_contract": CONTRACT_VERSION,
        "encoder": encoder_info,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "alias": alias,
        "vectors": {"quantization": stored_as, "method": copy.deepcopy(method)},
    }
    if not current:  # the first version: with its alias, in the same request (see above)
        body["aliases"] = {alias: {"is_write_index": True}}
    try:
        client.indices.create(index=name, body=body)
    except opensearchpy.RequestError as exc:
        if new_version or exc.error != "resource_already_exists_exception":
            raise
        # another process created it between our look and our create: it is the same index, use it
        name = _existing_index(client, alias, encoder_info, _resolve(client, alias) or [name], quantization)
    else:
        if has_neural_search(client):
            put_search_pipelines(client)
    _wait_for_yellow(client, name)
    return name


def _existing_index(client: OpenSearch, alias: str, encoder_info: dict[str, Any], current: list[str],
                    quantization: str | None = None) -> str:
    """The index to write to when `alias` exists already, unless its vectors come from another encoder or are
    stored otherwise than `quantization` asks (None: as they are)."""
    existing = read_encoder(client, alias)
    if existing.get("name") != encoder_info["name"]:
        raise ConfigError(
            f"index {alias!r} holds vectors from encoder {existing.get('name')!r}, not "
            f"{encoder_info['name']!r}; use that encoder or `rsrt index create --new-version`"
        )
    if quantization is not None and (have := read_quantization(client, current[0])) != quantization:
        raise ConfigError(
            f"index {alias!r} stores its vectors with quantization {have!r}, not {quantization!r}; build a new "
            f"version with `rsrt index create --index {alias} --new-version --quantization {quantization}`"
        )
    return current[0]


def _wait_for_yellow(client: OpenSearch, name: str) -> None:
    # (opensearch-py would take a `timeout` param as its own request timeout: put it in the path)
    client.transport.perform_request("GET", f"/_cluster/health/{name}?wait_for_status=yellow&timeout=30s")


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


class Deletion(NamedTuple):
    deleted: list[str]  # rsrt's versions of the alias
    left: list[str]  # indices behind the alias or matching `<alias>-v*` that rsrt did not create for it


def delete_index(client: OpenSearch, alias: str = DEFAULT_ALIAS) -> Deletion:
    """Delete rsrt's versions of `alias` (`<alias>-v<digits>` with rsrt's `_meta`, see `owns`) and its template.

    Anything else behind the alias or matching `<alias>-v*` (`<alias>-vault`, a hand-made `<alias>-v9`)
    is someone else's: it is left, and named in `left`.
    """
    check_alias_name(alias)
    candidates = sorted(set(_resolve(client, alias)) | set(_matching(client, alias)))
    metas = _metas(client, candidates)
    deleted = [name for name in candidates
               if _version_number(alias, name) is not None and owns(metas.get(name, {}), alias)]
    for name in deleted:
        client.indices.delete(index=name)
    with contextlib.suppress(opensearchpy.NotFoundError):
        found = client.indices.get_index_template(name=alias).get("index_templates", [])
        template = found[0]["index_template"] if found else {}
        if template.get("_meta", {}).get("rsrt_contract") and template.get("index_patterns") == [f"{alias}-v*"]:
            client.indices.delete_index_template(name=alias)
    return Deletion(deleted, [name for name in candidates if name not in deleted])


def promote_version(client: OpenSearch, alias: str, version: str | None = None,
                    allow_empty: bool = False) -> tuple[list[str], str]:
    """Move the alias to a complete new version in one atomic request; returns (old indices, new one).

    `version` defaults to the newest pending one. Refused: an index rsrt did not create for `alias`,
    one whose bulk load has not ended (an ingest into it is running or was killed: finish it, or
    `repair_bulk_load`), and an empty one unless `allow_empty` — each would leave search answering
    less than before. Old versions are kept (no alias), for a rollback by promoting them again.
    """
    check_alias_name(alias)
    current = _resolve(client, alias)
    if version is None:
        pending = pending_versions(client, alias)
        if not pending:
            raise ConfigError(f"index {alias!r} has no new version to promote; build one with "
                              f"`rsrt index create --index {alias} --new-version`, then ingest into it")
        version = pending[-1]
    elif version.isdigit():
        version = f"{alias}-v{version}"
    meta = _metas(client, [version]).get(version, {}) if client.indices.exists(index=version) else None
    if meta is None:
        raise IndexNotFound(f"index {version!r} does not exist")
    if _version_number(alias, version) is None or not owns(meta, alias):
        raise ConfigError(f"{version!r} is not a version rsrt created for {alias!r}; it is left alone")
    if meta.get("bulk_load_saved"):
        raise ConfigError(f"{version!r} is still being loaded (an ingest into it is running, or was interrupted: "
                          f"run it again to finish, or `rsrt index repair --index {version}`); not promoted")
    client.indices.refresh(index=version)
    if not allow_empty and int(client.count(index=version)["count"]) == 0:
        raise ConfigError(f"{version!r} holds no documents; ingest into it first (`--index {version}`), "
                          "or promote it anyway with --allow-empty")
    if current == [version]:
        return [], version  # already live
    actions: list[dict[str, Any]] = [{"add": {"index": version, "alias": alias, "is_write_index": True}}]
    actions += [{"remove": {"index": old, "alias": alias}} for old in current if old != version]
    try:
        client.indices.update_aliases(body={"actions": actions})
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=alias) from None
    return current, version


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
        quantization=read_quantization(client, indices[-1]),
        pending=pending_versions(client, alias),
        unfinished_bulk_load=sorted(unfinished_bulk_loads(client, alias)),
    )


# The refresh interval while loading. Never -1: a killed run (no `finally`) would leave what it wrote invisible.
# Not longer than the usual 1s either: measured on this index (3000 documents of 5 nested 384-d HNSW vectors,
# one node), a longer interval made bulk writes slower, not faster — 1s 17.5 s, 10s 33 s, 30s 63 s, -1 89 s
# (medians of 3; the same order when run in reverse). Larger in-memory segments make every HNSW insert costlier.
BULK_LOAD_REFRESH = "1s"


def _bulk_load_meta(client: OpenSearch, name: str) -> dict[str, Any]:
    return next(iter(client.indices.get_mapping(index=name).values()))["mappings"].get("_meta", {})


def _restore_settings(client: OpenSearch, name: str, original: dict[str, str]) -> None:
    """Put back what a bulk load changed and drop its record from `_meta`."""
    client.indices.put_settings(index=name, body={"index": {
        "refresh_interval": original["refresh_interval"],
        "number_of_replicas": int(original["number_of_replicas"])}})
    meta = _bulk_load_meta(client, name)
    meta.pop("bulk_load_saved", None)
    client.indices.put_mapping(index=name, body={"_meta": meta})


@contextlib.contextmanager
def bulk_load_settings(client: OpenSearch, alias: str, refresh_interval: str = BULK_LOAD_REFRESH) -> Iterator[None]:
    """Replicas 0 and a periodic refresh (`refresh_interval`, never -1) while loading; the previous
    values come back afterwards.

    Refresh is never switched off: a run killed with SIGKILL (no `finally`) must not leave the documents
    it wrote invisible; at most `refresh_interval` later they are searchable (see BULK_LOAD_REFRESH for
    why it is not longer). The values to restore are kept in the index's own mapping `_meta`
    (`bulk_load_saved`), so the replicas (and refresh) of a killed load come back with `repair_bulk_load`
    (`rsrt index repair`) or at the end of the next run, from any machine.

    Concurrent loads (ingest shards) share the record: the first one saves the originals, the others
    keep them; each load restores them when it ends, so the last one to end leaves the normal settings.
    The `_meta` is read again after the settings: a load that began meanwhile may have changed the
    settings just read, and its record holds the real originals.
    """
    indices = _resolve(client, alias)
    saved: dict[str, dict[str, str]] = {}
    for name in indices:
        meta = _bulk_load_meta(client, name)
        if meta.get("bulk_load_saved"):
            saved[name] = meta["bulk_load_saved"]  # another load is running, or did not finish: keep its originals
        else:
            settings = client.indices.get_settings(index=name, params={"include_defaults": "true"})[name]
            merged = {**settings.get("defaults", {}).get("index", {}), **settings["settings"]["index"]}
            meta = _bulk_load_meta(client, name)  # again: see above
            if meta.get("bulk_load_saved"):
                saved[name] = meta["bulk_load_saved"]
            else:
                saved[name] = {"refresh_interval": str(merged.get("refresh_interval", "1s")),
                               "number_of_replicas": str(merged.get("number_of_replicas", "0"))}
                client.indices.put_mapping(index=name, body={"_meta": {**meta, "bulk_load_saved": saved[name]}})
        client.indices.put_settings(index=name, body={"index": {"refresh_interval": refresh_interval,
                                                                "number_of_replicas": 0}})
    try:
        yield
    finally:
        try:
            for name, original in saved.items():
                _restore_settings(client, name, original)
            if indices:
                client.indices.refresh(index=",".join(indices))
        except (opensearchpy.ConnectionError, opensearchpy.ConnectionTimeout):
            pass  # the cluster is gone; the next run (or `rsrt index repair`) finds bulk_load_saved in _meta


def unfinished_bulk_loads(client: OpenSearch, alias: str) -> dict[str, dict[str, str]]:
    """Index → the settings a bulk load saved: loads that are running, or were killed before they ended.

    Looks at the indices behind `alias` and at its pending versions (a killed load into a new version).
    """
    names = sorted(set(_resolve(client, alias)) | set(pending_versions(client, alias)))
    return {name: meta["bulk_load_saved"] for name, meta in _metas(client, names).items()
            if isinstance(meta.get("bulk_load_saved"), dict)}


def repair_bulk_load(client: OpenSearch, alias: str) -> dict[str, dict[str, str]]:
    """Restore the settings of unfinished bulk loads (refresh, replicas) and refresh; returns what was restored.

    Safe while an ingest is running: it only makes that run's writes visible sooner (it restores the
    same values when it ends).
    """
    unfinished = unfinished_bulk_loads(client, alias)
    try:
        for name, original in unfinished.items():
            _restore_settings(client, name, original)
        if unfinished:
            client.indices.refresh(index=",".join(unfinished))
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=alias) from None
    return unfinished


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
        # place filters query the geometry: a record with only a bbox is matched by its box
        fields.GEOMETRY: record.geometry or (bbox_geometry(record.bbox) if record.bbox else None),
        fields.CENTROID: record.centroid(),
        fields.BBOX: record.bbox,
        fields.PROPERTIES: record.properties or {},
        fields.SUMMARY: (first.one_sentence or first.caption) if first else None,
        fields.VARIANT_COUNT: len(variants),
        fields.VARIANTS: variants,
    }
    if record.captioner:
        doc[fields.CAPTIONER] = {k: v for k, v in vars(record.captioner).items() if v}
    if record.thumbnail:
        doc[fields.THUMBNAIL] = base64.b64encode(record.thumbnail).decode("ascii")
        doc[fields.THUMBNAIL_BYTES] = len(record.thumbnail)
    return {k: v for k, v in doc.items() if v is not None}


def add_thumbnail_fields(client: OpenSearch, name: str) -> list[str]:
    """Give an index made before thumbnails joined the contract its `thumbnail` fields; the names added.

    The mapping is `dynamic: strict`, so such an index would refuse every document with a thumbnail (all
    dead letters). Adding a field to a mapping is always allowed and changes nothing already indexed.
    Cluster failures go through the error boundary.
    """
    wanted = load_mapping_json("index-template.json")["template"]["mappings"]["properties"]
    try:
        have: set[str] = set()
        for entry in client.indices.get_mapping(index=name).values():
            have |= set((entry.get("mappings") or {}).get("properties") or {})
        missing = {field: wanted[field] for field in (fields.THUMBNAIL, fields.THUMBNAIL_BYTES) if field not in have}
        if missing:
            client.indices.put_mapping(index=name, body={"properties": missing})
    except opensearchpy.OpenSearchException as exc:
        raise from_opensearch(exc, index=name) from None
    return sorted(missing)
