"""The read side of the index contract: every read the CLI and the HTTP API make goes through `Searcher`.

`Searcher.search(SearchRequest)` ranks images for a text query, dense, lexical or hybrid, over the
nested variants of each image (score = best variant). Hybrid fuses in rsrt by default (two searches
in one msearch, `rsrt.search.fusion`) or in the cluster (a `hybrid` query through a search pipeline).
Browsing, single items, collections and the mapping's property types are read here too. Request
bodies come from `rsrt.search.queries`; client failures become rsrt errors through
`rsrt.search.errors.from_opensearch`, the one error boundary.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import opensearchpy
from opensearchpy import OpenSearch

from . import fields, queries, sorting
from .errors import ClusterAuthError, ConfigError, IndexNotFound, RsrtError, from_opensearch, from_response_error
from .filters import NUMERIC_TYPES as NUMERIC_TYPES  # the API's check reads it here
from .filters import Filters
from .fusion import FusionSpec, fuse
from .index import DEFAULT_ALIAS, PIPELINES, load_mapping_json, put_search_pipelines, read_encoder
from .queries import ClusterText, QueryVector
from .query_cache import QueryVectorCache
from .request import MAX_K, EmbedSite, FusionSite, LexicalScope, Mode, SearchRequest

T = TypeVar("T")
_UNKNOWN = object()


@functools.cache
def _named_processors() -> dict[str, list[dict[str, Any]]]:
    """The processors of the pipelines in mappings/search-pipelines/, read once per process."""
    return {name: load_mapping_json(f"search-pipelines/{name}.json")["phase_results_processors"]
            for name in PIPELINES}


@dataclass
class SearchHit:
    image_id: str
    score: float
    rank: int
    source: dict[str, Any]
    matched_variant: dict[str, Any] | None = None
    explanation: dict[str, Any] | None = None

    def best_caption(self) -> str:
        variant = self.matched_variant or {}
        text = variant.get("one_sentence") or variant.get("caption") or self.source.get(fields.SUMMARY) or ""
        return str(text)


@dataclass
class SearchResults:
    query: str
    mode: str
    hits: list[SearchHit]
    total: int
    took_ms: float
    offset: int
    fusion_site: str | None = None  # hybrid only: "client" or "server", where the fusion ran
    embed: str | None = None  # dense and hybrid: "client" or "cluster", where the text became a vector


@dataclass
class Page:
    """One page of a filter-only browse: (hits in order, exact total, engine time)."""

    hits: list[SearchHit]
    total: int
    took_ms: float


@dataclass
class IndexStatus:
    """What a readiness probe needs: the cluster's health, whether the index exists, how many images."""

    cluster: str
    exists: bool
    documents: int = 0


class Searcher:
    """Reads one index (or alias). Thread-safe once built (the client and encoder are).

    `encoder` overrides the index's own (it must have the same name); otherwise the one the index
    records in `_meta` is loaded with `encoder_backend`. `lexical_scope` is how BM25 scores images.
    `query_cache` holds the query vectors this searcher encoded (default: its own, 1024 texts;
    `QueryVectorCache(0)` disables it).
    """

    def __init__(self, client: OpenSearch, index: str = DEFAULT_ALIAS, encoder: Any | None = None, *,
                 lexical_scope: str = LexicalScope.VARIANT, encoder_backend: str = "torch",
                 query_cache: QueryVectorCache | None = None) -> None:
        self.client = client
        self.index = index
        self._encoder = encoder
        self.encoder_backend = encoder_backend
        self.query_cache = query_cache if query_cache is not None else QueryVectorCache()
        self.lexical_scope = check_lexical_scope(lexical_scope)
        self._encoder_info: dict[str, Any] | None = None
        self._installed_pipelines: set[str] = set()
        self._cluster_model: Any = _UNKNOWN  # the index's ml-commons model (None: it has none), read once
        self._model_checked = False

    # index facts ------------------------------------------------------------------------------------
    @property
    def encoder_info(self) -> dict[str, Any]:
        if self._encoder_info is None:
            self._encoder_info = self._call(lambda: read_encoder(self.client, self.index))
        return self._encoder_info

    @property
    def encoder(self) -> Any:
        """The index's own encoder; a different one given by the caller is refused."""
        if self._encoder is None:
            from .encoder import get_encoder

            self._encoder = get_encoder(self.encoder_info["name"], self.encoder_backend)
        if self._encoder.name != self.encoder_info["name"]:
            raise ConfigError(f"index {self.index!r} was built with encoder {self.encoder_info['name']!r}; "
                              f"queries encoded by {self._encoder.name!r} would not match its vectors")
        return self._encoder

    # ranked search ----------------------------------------------------------------------------------
    def build_request(self, request: SearchRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """(body, params) of the one-request form of a search, as `--show-dsl` prints it.

        Hybrid is the cluster-side form (a `hybrid` query and its search pipeline): it runs as it is
        from Dev Tools, where no client can fuse. With `embed` cluster the body holds the text, no vector.
        """
        request = self._typed(request)
        return self._request_body(request, self._query_vector(request)[0])

    def _request_body(self, request: SearchRequest, vector: QueryVector | None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
        body = queries.ranked_body(request, vector, self.lexical_scope)
        params: dict[str, Any] = {}
        if request.mode == Mode.HYBRID:
            named = self._named_pipeline(request.fusion)
            if named:
                params["search_pipeline"] = named
            else:
                body["search_pipeline"] = request.fusion.pipeline()
        return body, params

    def search(self, request: SearchRequest) -> SearchResults:
        """Ranked images for one request; see `SearchRequest` for what it can ask."""
        request = self._typed(request)
        if request.sort:
            return self._sorted_search(request)
        return self._ranked_search(request)

    def _sorted_search(self, request: SearchRequest) -> SearchResults:
        """The first max(candidates, k) ranked images, ordered by `request.sort`, paged within: the same
        window on every page, so pages neither repeat nor skip (see `rsrt.search.sorting`)."""
        types = self.property_types(sorting.property_names(request.sort))
        sorting.sort_clauses(request.sort, types)  # an unknown or unsortable field: QueryError naming sortby
        window = sorting.candidate_window(request.candidates, request.k, MAX_K)
        results = self._ranked_search(dataclasses.replace(request, k=window, offset=0, sort=()))
        ordered = sorting.sort_hits(results.hits, request.sort, types)
        results.hits = ordered[request.offset:request.offset + request.k]
        for position, hit in enumerate(results.hits):
            hit.rank = request.offset + position + 1
        results.total, results.offset = min(results.total, window), request.offset
        return results

    def _ranked_search(self, request: SearchRequest) -> SearchResults:
        vector, site = self._query_vector(request)
        try:
            results = self._search_with(request, vector)
        except RsrtError as exc:
            model = self._cluster_model
            if not isinstance(vector, ClusterText) or model is None or model.model_id not in str(exc):
                raise
            self._ready_model(recheck=True)  # undeployed or evicted since (a node restart): deploy, once more
            results = self._search_with(request, vector)
        results.embed = site
        return results

    def _search_with(self, request: SearchRequest, vector: QueryVector | None) -> SearchResults:
        if request.mode != Mode.HYBRID:
            results = self._ranked(request, vector)
            if request.mode == Mode.LEXICAL and self.lexical_scope == LexicalScope.IMAGE and (
                    request.matched_variants or request.explain):
                self._attach_lexical_variants(results.hits, request.text)
            if request.explain:
                for hit in results.hits:
                    hit.explanation = {request.mode.value: {"raw": hit.score},
                                       "matched_variant": (hit.matched_variant or {}).get(fields.VARIANT_POSITION)}
            return results
        assert vector is not None
        if request.fusion_site != FusionSite.SERVER:  # auto = client: 3-6x faster at 10k-100k (docs/performance)
            return self._client_hybrid(request, vector)
        results = self._ranked(request, vector)
        results.fusion_site = FusionSite.SERVER.value
        if request.explain:  # the per-side scores come from the same fusion done here
            twins = {h.image_id: h for h in self._client_hybrid(request, vector).hits}
            for hit in results.hits:
                twin = twins.get(hit.image_id)
                if twin:
                    hit.explanation, hit.matched_variant = twin.explanation, twin.matched_variant
        elif request.matched_variants:
            self._attach_matched_variants(results.hits, vector)
        return results

    def _typed(self, request: SearchRequest) -> SearchRequest:
        typed = self._typed_filters(request.filters)
        return request if typed is request.filters else dataclasses.replace(request, filters=typed)

    def _typed_filters(self, filters: Filters) -> Filters:
        """Property filter values as their mapped types: text against a numeric field would match in
        BM25 and not in kNN filters; a value the type cannot hold is a QueryError naming the property.
        Read on every such search (one small request): an alias may move to a version mapped otherwise."""
        if not filters.properties and not filters.cql2:
            return filters
        return filters.typed(self.property_types(filters.property_names()))

    # query vectors ----------------------------------------------------------------------------------
    def _query_vector(self, request: SearchRequest) -> tuple[QueryVector | None, str | None]:
        """(vector, where it was embedded): the request's own, the Python encoder's, or the text for the
        cluster's model to embed (None, None for lexical; given vectors were embedded by the caller)."""
        if not request.needs_vector:
            return None, None
        if request.vector is not None:
            return request.vector, None
        if self._embed_site(request.embed) == EmbedSite.CLUSTER:
            try:
                model = self._ready_model()
            except ClusterAuthError:
                if request.embed == EmbedSite.CLUSTER:
                    raise
                # auto, and this user may not (re)deploy the evicted model (a portal's reader): embed here
                self._cluster_model = None
                return self._query_vector(request)
            if request.filters.exact_only:  # the exact path scores with the vector itself: ask the model for it
                from .ml import predict

                vector = self._call(lambda: predict(self.client, model.model_id, [request.text]))[0]
                return [float(x) for x in vector], EmbedSite.CLUSTER.value
            return ClusterText(request.text, model.model_id), EmbedSite.CLUSTER.value
        return [float(x) for x in self.query_cache.vector(self.encoder, request.text)], EmbedSite.CLIENT.value

    def _embed_site(self, asked: EmbedSite) -> EmbedSite:
        """`auto` → the cluster when the index has a model there; `cluster` without one is an error."""
        if asked == EmbedSite.CLIENT:
            return asked
        if self._cluster_model is _UNKNOWN:
            try:
                self._cluster_model = self._call(lambda: _recorded_model(self.client, self.index))
            except RsrtError:
                if asked == EmbedSite.CLUSTER:
                    raise
                return EmbedSite.CLIENT  # auto: a cluster that will not say (e.g. no monitor permission) → rsrt
        if self._cluster_model is None:
            if asked == EmbedSite.CLUSTER:
                raise ConfigError(f"--embed cluster: index {self.index!r} has no model in the cluster; deploy its "
                                  f"encoder with `rsrt model deploy --index {self.index}` (the cluster needs "
                                  "ml-commons), or embed in rsrt with --embed client")
            return EmbedSite.CLIENT
        return EmbedSite.CLUSTER

    def _ready_model(self, recheck: bool = False) -> Any:
        """The index's cluster model, deployed (checked once per searcher, again after a failure)."""
        from .ml import ensure_deployed

        model = self._cluster_model
        assert model is not None and model is not _UNKNOWN
        if recheck or not self._model_checked:
            self._call(lambda: ensure_deployed(self.client, model))
            self._model_checked = True
        return model

    def _named_pipeline(self, spec: FusionSpec) -> str | None:
        """The installed pipeline for the default fusions (a temporary one is built per request)."""
        processors = spec.pipeline()["phase_results_processors"]
        for name, installed in _named_processors().items():
            if processors == installed:
                if name not in self._installed_pipelines:
                    try:
                        self.client.transport.perform_request("GET", f"/_search/pipeline/{name}")
                    except opensearchpy.NotFoundError:
                        put_search_pipelines(self.client)
                    except opensearchpy.TransportError:
                        return None
                    self._installed_pipelines.add(name)
                return name
        return None

    def _ranked(self, request: SearchRequest, vector: QueryVector | None) -> SearchResults:
        body, params = self._request_body(request, vector)
        response = self._search(body, params)
        hits = [_to_hit(raw, request.offset + i + 1) for i, raw in enumerate(response["hits"]["hits"])]
        total = _total(response)
        if request.mode == Mode.DENSE:
            total = min(total, request.depth)
        return SearchResults(request.text, request.mode.value, hits, total, float(response.get("took", 0)),
                             request.offset)

    def _attach_matched_variants(self, hits: list[SearchHit], vector: QueryVector | None) -> None:
        """The hybrid query returns no inner hits: ask which variant of each hit is nearest the query."""
        if not hits or vector is None:
            return
        response = self._search(queries.nearest_variant_body(vector, [h.image_id for h in hits], with_source=False))
        matched = {raw["_id"]: _to_hit(raw, 0).matched_variant for raw in response["hits"]["hits"]}
        for hit in hits:
            found = matched.get(hit.image_id)
            if found and set(found) == {fields.VARIANT_POSITION}:  # position only: the text is in the hit's source
                position = found[fields.VARIANT_POSITION]
                found = {**(fields.variant_at(hit.source, position) or {}), fields.VARIANT_POSITION: position}
            hit.matched_variant = hit.matched_variant or found

    def _attach_lexical_variants(self, hits: list[SearchHit], text: str) -> None:
        """Image-scope lexical hits name their best-matching variant: one nested query over the page only."""
        if not hits:
            return
        response = self._search(queries.best_lexical_variant_body(text, [h.image_id for h in hits]))
        matched = {raw["_id"]: _to_hit(raw, 0).matched_variant for raw in response["hits"]["hits"]}
        for hit in hits:
            found = matched.get(hit.image_id)
            if found:
                position = found.get(fields.VARIANT_POSITION)
                hit.matched_variant = {**(fields.variant_at(hit.source, position) or {}), **found}

    def _client_hybrid(self, request: SearchRequest, vector: QueryVector) -> SearchResults:
        lexical_body, dense_body = queries.fusion_bodies(request, vector, self.lexical_scope)
        # One shard copy per query text for every read of this request (and its other pages): replicas hold
        # their own HNSW graphs, so the page fetch below must see the graphs the candidates came from.
        preference = "rsrt-" + hashlib.sha1(request.text.encode("utf-8")).hexdigest()[:16]
        lexical_response, dense_response = self._msearch([lexical_body, dense_body], preference)
        lexical_hits = [_to_hit(raw, i + 1) for i, raw in enumerate(lexical_response["hits"]["hits"])]
        dense_hits = [_to_hit(raw, i + 1) for i, raw in enumerate(dense_response["hits"]["hits"])]
        fusion = request.fusion
        fused = fuse([[(h.image_id, h.score) for h in lexical_hits], [(h.image_id, h.score) for h in dense_hits]],
                     fusion)
        by_id_lex = {h.image_id: h for h in lexical_hits}
        by_id_dense = {h.image_id: h for h in dense_hits}
        page = fused[request.offset:request.offset + request.k]
        if not request.explain and page:
            body = queries.nearest_variant_body(vector, [image_id for image_id, _, _ in page], with_source=True)
            by_id_dense = {raw["_id"]: _to_hit(raw, 0)
                           for raw in self._search(body, {"preference": preference})["hits"]["hits"]}
            missing = [image_id for image_id, _, _ in page if image_id not in by_id_dense]
            if missing:  # the filtered kNN is approximate too: the page's sources by id, without a matched variant
                by_id_dense.update({raw["_id"]: _to_hit(raw, 0) for raw in self._search(
                    queries.sources_body(missing), {"preference": preference})["hits"]["hits"]})
        hits = []
        for rank, (image_id, score, parts) in enumerate(page, start=request.offset + 1):
            lex, dense = by_id_lex.get(image_id), by_id_dense.get(image_id)
            base = dense or lex
            if base is None:  # an image both sides ranked but the cluster no longer holds (deleted meanwhile)
                continue
            hit = SearchHit(image_id, score, rank, base.source,
                            matched_variant=(dense.matched_variant if dense else None) or
                            (lex.matched_variant if lex else None))
            if request.explain:
                hit.explanation = {
                    "lexical": _side(lex, parts[0]),
                    "dense": _side(dense, parts[1]),
                    "fusion": {"technique": fusion.technique, "weights": list(fusion.weights),
                               "rank_constant": fusion.rank_constant},
                }
            hits.append(hit)
        took = float(lexical_response.get("took", 0)) + float(dense_response.get("took", 0))
        return SearchResults(request.text, Mode.HYBRID.value, hits, len(fused), took, request.offset,
                             fusion_site=FusionSite.CLIENT.value)

    # other reads ------------------------------------------------------------------------------------
    def browse(self, filters: Filters, size: int, offset: int = 0,
               sort: tuple[sorting.SortKey, ...] = ()) -> Page:
        """Images matching `filters` only (no text), newest first or in `sort`'s order (ties by id)."""
        clauses = sorting.sort_clauses(sort, self.property_types(sorting.property_names(sort))) if sort else None
        response = self._search(queries.browse_body(self._typed_filters(filters), size, offset, clauses))
        hits = [_to_hit(raw, offset + i + 1) for i, raw in enumerate(response["hits"]["hits"])]
        return Page(hits, _total(response), float(response.get("took", 0)))

    def get_item(self, item_id: str, collection: str | None = None) -> SearchHit | None:
        """One image by id (None when absent, or not in `collection` when one is given)."""
        hits = self._search(queries.item_body(item_id, collection))["hits"]["hits"]
        return _to_hit(hits[0], 1) if hits else None

    def thumbnail(self, item_id: str) -> bytes | None:
        """The image's thumbnail JPEG (None when the image is absent or has none), read alone: search
        bodies leave it out of `_source` (`fields.SOURCE_EXCLUDES`)."""
        hits = self._search(queries.thumbnail_body(item_id))["hits"]["hits"]
        encoded = (hits[0].get("_source") or {}).get(fields.THUMBNAIL) if hits else None
        if not isinstance(encoded, str) or not encoded:
            return None
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:  # the mapping checks base64 on write: only a document written around rsrt
            return None

    def collections(self, only: str | None = None) -> list[dict[str, Any]]:
        """Terms buckets per collection (just `only`'s when given) with time span and footprint bounds."""
        response = self._search(queries.collections_body(only))
        return list(response["aggregations"]["collections"]["buckets"])

    def property_types(self, names: list[str]) -> dict[str, str]:
        """The mapped type of each item property named (absent when the index has not seen it)."""
        if not names:
            return {}
        wanted = ",".join(fields.property_field(name) for name in names)
        found = self._call(lambda: self.client.indices.get_field_mapping(index=self.index, fields=wanted))
        types: dict[str, str] = {}
        prefix = fields.property_field("")
        for index_mapping in found.values():
            for full_name, entry in (index_mapping.get("mappings") or {}).items():
                for spec in (entry.get("mapping") or {}).values():
                    types[full_name.removeprefix(prefix)] = str(spec.get("type", ""))
        return types

    def status(self, timeout: float = 5) -> IndexStatus:
        """Cluster health, and the index's existence and size (for readiness probes)."""
        health = self._call(lambda: self.client.cluster.health(request_timeout=timeout))
        cluster = str(health.get("status", "unknown"))
        if cluster == "red":
            return IndexStatus(cluster, exists=False)
        try:  # a count, not HEAD /<index>: a portal's reader may read the index but not `indices:admin/exists`
            documents = int(self._call(lambda: self.client.count(index=self.index))["count"])
        except IndexNotFound:
            return IndexStatus(cluster, exists=False)
        return IndexStatus(cluster, exists=True, documents=documents)

    # the error boundary -----------------------------------------------------------------------------
    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except opensearchpy.OpenSearchException as exc:
            raise from_opensearch(exc, index=self.index) from None

    def _search(self, body: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call(lambda: self.client.search(index=self.index, body=body, params=params or {}))

    def _msearch(self, bodies: list[dict[str, Any]], preference: str | None = None) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for body in bodies:
            lines += [{"preference": preference} if preference else {}, body]
        responses = self._call(lambda: self.client.msearch(index=self.index, body=lines))["responses"]
        for response in responses:
            if "error" in response:
                raise from_response_error(response, index=self.index)
        return responses


def _recorded_model(client: OpenSearch, index: str) -> Any:
    """The model the index's `_meta` records (None: embed in rsrt).

    Read from the index alone, not from the cluster's plugin list: a portal's reader may read rsrt's
    indices but not `_cat/plugins` (cluster monitor). A recorded model implies ml-commons was there.
    """
    from .ml import index_cluster_model

    return index_cluster_model(client, index)


def check_lexical_scope(scope: str) -> LexicalScope:
    try:
        return LexicalScope(scope)
    except ValueError:
        raise ConfigError(f"lexical scope {scope!r} is unknown; choose one of "
                          f"{', '.join(s.value for s in LexicalScope)}") from None


def _side(hit: SearchHit | None, normalized: float | None) -> dict[str, Any]:
    """One sub-query's part in a fused hit's explanation."""
    return {"raw": hit.score if hit else None, "normalized": normalized,
            "matched_variant": (hit.matched_variant or {}).get(fields.VARIANT_POSITION) if hit else None}


def _total(response: dict[str, Any]) -> int:
    total = response["hits"]["total"]
    return int(total["value"] if isinstance(total, dict) else total)


def _to_hit(raw: dict[str, Any], rank: int) -> SearchHit:
    source = raw.get("_source", {})
    matched = None
    for inner in (raw.get("inner_hits") or {}).values():
        inner_hits = inner.get("hits", {}).get("hits", [])
        if inner_hits:
            position = inner_hits[0].get("_nested", {}).get("offset")
            matched = dict(inner_hits[0].get("_source") or fields.variant_at(source, position) or {})
            matched.setdefault(fields.VARIANT_POSITION, position)
            break
    return SearchHit(raw["_id"], float(raw["_score"] or 0.0), rank, source, matched)
