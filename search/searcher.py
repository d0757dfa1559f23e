"""T2T search: dense, lexical and hybrid, over the nested variants of each image (score = best variant).

One entry point, `Searcher.search(query, mode, k, filters, …)`; `build_request` gives the exact
OpenSearch body for `--show-dsl`. Hybrid runs server-side (hybrid query + search pipeline) when
the cluster has neural-search, else the same fusion client-side (`rsrt.search.fusion`).
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import opensearchpy
from opensearchpy import OpenSearch

from .errors import ClusterError, ConfigError
from .filters import Filters, QueryError
from .fusion import FusionSpec, fuse
from .index import (
    DEFAULT_ALIAS,
    PIPELINES,
    load_mapping_json,
    put_search_pipelines,
    read_encoder,
)

MODES = ("dense", "lexical", "hybrid")
MAX_QUERY_CHARS = 2000
MAX_QUERY_TERMS = 128  # keeps BM25 under max_clause_count whatever users paste
MAX_K = 1000
SOURCE_EXCLUDES = ["variants.embedding"]
# Exact totals up to here, "at least" beyond: counting every lexical match would switch off
# Lucene's block-max WAND early termination, the main cost of a BM25 query on a large index.
TRACK_TOTAL_HITS = 10_000
# Inner hits name the best variant by its position only: its text is already in the image's own
# _source, and loading sources again for every inner hit was a third of a lexical query's time.
_INNER_HITS: dict[str, Any] = {"size": 1, "_source": False}
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]")


@functools.cache
def _named_processors() -> dict[str, list[dict[str, Any]]]:
    """The processors of the pipelines in mappings/search-pipelines/, read once per process."""
    return {name: load_mapping_json(f"search-pipelines/{name}.json")["phase_results_processors"]
            for name in PIPELINES}


def clean_query_text(text: Any) -> str:
    """User text is only text: normalised, control characters dropped, bounded in size."""
    if not isinstance(text, str):
        raise QueryError("q", "the query must be text")
    text = unicodedata.normalize("NFC", _CONTROL.sub(" ", text))
    text = " ".join(text.split()[:MAX_QUERY_TERMS])[:MAX_QUERY_CHARS].strip()
    if not text:
        raise QueryError("q", "the query text is empty")
    return text


@dataclass
class LexicalBoosts:
    one_sentence: float = 1.0
    feature: float = 1.0
    caption: float = 1.0

    def fields(self) -> list[str]:
        return [f"variants.{name}^{boost:g}" for name, boost in vars(self).items() if boost > 0]


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
        text = variant.get("one_sentence") or variant.get("caption") or self.source.get("summary") or ""
        return str(text)


@dataclass
class SearchResults:
    query: str
    mode: str
    hits: list[SearchHit]
    total: int
    took_ms: float
    offset: int
    hybrid_backend: str | None = None
    request: dict[str, Any] = field(default_factory=dict)

    def next_offset(self, k: int) -> int | None:
        end = self.offset + len(self.hits)
        return end if len(self.hits) == k and end < self.total else None


class Searcher:
    """Read side of the index contract. Thread-safe once built (the client and encoder are)."""

    def __init__(self, client: OpenSearch, index: str = DEFAULT_ALIAS, encoder: Any | None = None,
                 server_side_hybrid: bool | None = None, lexical_scope: str | None = None) -> None:
        self.client = client
        self.index = index
        self._encoder = encoder
        self.lexical_scope = check_lexical_scope(lexical_scope or os.environ.get("RSRT_LEXICAL_SCOPE") or "variant")
        self._server_hybrid = server_side_hybrid  # True: "auto" hybrid runs server-side (default: client-side)
        self._encoder_info: dict[str, Any] | None = None
        self._installed_pipelines: set[str] = set()

    # index facts ------------------------------------------------------------------------------------
    @property
    def encoder_info(self) -> dict[str, Any]:
        if self._encoder_info is None:
            self._encoder_info = read_encoder(self.client, self.index)
        return self._encoder_info

    @property
    def encoder(self) -> Any:
        """The index's own encoder; a different one given by the caller is refused."""
        if self._encoder is None:
            from .encoder import get_encoder

            self._encoder = get_encoder(self.encoder_info["name"])
        if self._encoder.name != self.encoder_info["name"]:
            raise ConfigError(f"index {self.index!r} was built with encoder {self.encoder_info['name']!r}; "
                              f"queries encoded by {self._encoder.name!r} would not match its vectors")
        return self._encoder

    # query building ---------------------------------------------------------------------------------
    def lexical_query(self, text: str, filters: Filters, boosts: LexicalBoosts | None = None,
                      inner_hits: bool = True, scope: str | None = None) -> dict[str, Any]:
        """BM25; `scope` "variant" scores an image by its best variant (nested, max), "image" by all
        its variants' text at once (`all_text`, flat: Lucene can skip non-competitive documents)."""
        if (scope or self.lexical_scope) == "image":
            query: dict[str, Any] = {"match": {"all_text": {"query": text}}}
            clauses = filters.clauses()
            return {"bool": {"must": [query], "filter": clauses}} if clauses else query
        nested: dict[str, Any] = {
            "path": "variants",
            "score_mode": "max",
            "query": {"multi_match": {"query": text, "type": "most_fields",
                                      "fields": (boosts or LexicalBoosts()).fields()}},
        }
        if inner_hits:
            nested["inner_hits"] = {"name": "lexical", **_INNER_HITS}
        query = {"nested": nested}
        clauses = filters.clauses()
        if clauses:
            query = {"bool": {"must": [query], "filter": clauses}}
        return query

    def dense_query(self, vector: list[float], k: int, filters: Filters, ef_search: int | None = None,
                    inner_hits: bool = True) -> dict[str, Any]:
        """Nested kNN, image score = best variant; place filters take an exact path (see below)."""
        if filters.has_place:
            return self._exact_dense_query(vector, filters, inner_hits)
        knn: dict[str, Any] = {"vector": vector, "k": k}
        if ef_search:
            knn["method_parameters"] = {"ef_search": int(ef_search)}
        condition = filters.as_filter()
        if condition:
            knn["filter"] = condition
        nested: dict[str, Any] = {"path": "variants", "score_mode": "max",
                                  "query": {"knn": {"variants.embedding": knn}}}
        if inner_hits:
            nested["inner_hits"] = {"name": "dense", **_INNER_HITS}
        return {"nested": nested}

    def _exact_dense_query(self, vector: list[float], filters: Filters, inner_hits: bool) -> dict[str, Any]:
        """Exact cosine over the images a place filter selects.

        k-NN 2.19 silently matches nothing when a parent-level geo_shape clause sits in a nested kNN
        `filter` (term, range and ids clauses work). So with bbox/intersects the filter moves to the
        parent and each variant is scored exactly with the lucene engine's own formula, (1 + cos) / 2:
        the same scores as the kNN path, perfect recall, cost linear in the filtered images.
        """
        nested: dict[str, Any] = {"path": "variants", "score_mode": "max", "query": {"script_score": {
            "query": {"exists": {"field": "variants.embedding"}},
            "script": {"source": "(1.0 + cosineSimilarity(params.query_value, doc['variants.embedding'])) / 2.0",
                       "params": {"query_value": vector}},
        }}}
        if inner_hits:
            nested["inner_hits"] = {"name": "dense", **_INNER_HITS}
        return {"bool": {"must": [{"nested": nested}], "filter": filters.clauses()}}

    def build_request(
        self, query: str, mode: str = "hybrid", k: int = 10, filters: Filters | None = None, offset: int = 0,
        fusion: FusionSpec | None = None, boosts: LexicalBoosts | None = None, candidates: int = 100,
        ef_search: int | None = None, vector: list[float] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(body, params) of the search request; `vector` skips encoding (benchmarks, tests)."""
        if mode not in MODES:
            raise QueryError("mode", f"{mode!r} is not one of {', '.join(MODES)}")
        if not 1 <= k <= MAX_K:
            raise QueryError("limit", f"must be between 1 and {MAX_K}")
        if offset < 0 or offset + k > 10_000:
            raise QueryError("offset", "offset + limit must stay within 10000")
        text = clean_query_text(query)
        filters = filters or Filters()
        depth = max(candidates, offset + k)
        body: dict[str, Any] = {"size": k, "from": offset, "_source": {"excludes": SOURCE_EXCLUDES},
                                "track_total_hits": TRACK_TOTAL_HITS}
        params: dict[str, Any] = {}
        if mode == "lexical":
            body["query"] = self.lexical_query(text, filters, boosts)
        elif mode == "dense":
            vec = vector if vector is not None else self._encode(text)
            body["query"] = self.dense_query(vec, depth, filters, ef_search)
        else:
            vec = vector if vector is not None else self._encode(text)
            body["query"] = {"hybrid": {"pagination_depth": depth, "queries": [
                self.lexical_query(text, filters, boosts, inner_hits=False),
                self.dense_query(vec, depth, filters, ef_search, inner_hits=False),
            ]}}
            spec = fusion or FusionSpec()
            named = self._named_pipeline(spec)
            if named:
                params["search_pipeline"] = named
            else:
                body["search_pipeline"] = spec.pipeline()
        return body, params

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

    def _encode(self, text: str) -> list[float]:
        return [float(x) for x in self.encoder.encode([text])[0]]

    # searching --------------------------------------------------------------------------------------
    def search(
        self, query: str, mode: str = "hybrid", k: int = 10, filters: Filters | None = None, offset: int = 0,
        fusion: FusionSpec | None = None, boosts: LexicalBoosts | None = None, candidates: int = 100,
        ef_search: int | None = None, explain: bool = False, hybrid_backend: str = "auto",
        vector: list[float] | None = None, matched_variants: bool = True,
    ) -> SearchResults:
        """Ranked images for a text query. `hybrid_backend`: auto | server | client.

        `matched_variants=False` skips the extra look-up that names each server-side hybrid hit's
        best variant (evaluation and benchmarks need only ids and scores).
        """
        filters = filters or Filters()
        text = clean_query_text(query)
        if mode in ("dense", "hybrid") and vector is None:
            vector = self._encode(text)
        if mode == "hybrid":
            if hybrid_backend not in ("auto", "server", "client"):
                raise QueryError("hybrid_backend", "must be auto, server or client")
            # auto = client-side fusion: two WAND-capable searches in one msearch plus a page fetch beat the
            # `hybrid` query, which scores every lexical match, 3-6x at 10k-100k images (docs/performance).
            use_server = hybrid_backend == "server" or (hybrid_backend == "auto" and self._server_hybrid is True)
            if explain or not use_server:
                results = self._client_hybrid(text, k, filters, offset, fusion or FusionSpec(), boosts,
                                              candidates, ef_search, vector, explain)
                if not use_server:
                    return results
                server = self._server_search(text, mode, k, filters, offset, fusion, boosts, candidates,
                                             ef_search, vector)
                explanations = {h.image_id: h for h in results.hits}
                for hit in server.hits:
                    twin = explanations.get(hit.image_id)
                    if twin:
                        hit.explanation, hit.matched_variant = twin.explanation, twin.matched_variant
                server.hybrid_backend = "server"
                return server
            results = self._server_search(text, mode, k, filters, offset, fusion, boosts, candidates,
                                          ef_search, vector)
            results.hybrid_backend = "server"
            if matched_variants:
                self._attach_matched_variants(results.hits, vector)
            return results
        results = self._server_search(text, mode, k, filters, offset, fusion, boosts, candidates, ef_search, vector)
        if mode == "lexical" and self.lexical_scope == "image" and (matched_variants or explain):
            self._attach_lexical_variants(results.hits, text, boosts)
        if explain:
            for hit in results.hits:
                hit.explanation = {mode: {"raw": hit.score},
                                   "matched_variant": (hit.matched_variant or {}).get("n")}
        return results

    def _attach_matched_variants(self, hits: list[SearchHit], vector: list[float] | None) -> None:
        """The hybrid query returns no inner hits: ask which variant of each hit is nearest the query."""
        if not hits or vector is None:
            return
        body = {"size": len(hits), "_source": False,
                "query": self.dense_query(vector, len(hits), Filters(ids=[h.image_id for h in hits]))}
        response = self._run(body)
        matched = {raw["_id"]: _to_hit(raw, 0).matched_variant for raw in response["hits"]["hits"]}
        for hit in hits:
            found = matched.get(hit.image_id)
            if found and set(found) == {"n"}:  # position only: the text is in the hit's own source
                found = {**(_variant_at(hit.source, found["n"]) or {}), "n": found["n"]}
            hit.matched_variant = hit.matched_variant or found

    def _attach_lexical_variants(self, hits: list[SearchHit], text: str, boosts: LexicalBoosts | None) -> None:
        """Image-scope lexical hits name their best-matching variant: one nested query over the page only."""
        if not hits:
            return
        query = self.lexical_query(text, Filters(ids=[h.image_id for h in hits]), boosts, scope="variant")
        response = self._run({"size": len(hits), "_source": False, "query": query})
        matched = {raw["_id"]: _to_hit(raw, 0).matched_variant for raw in response["hits"]["hits"]}
        for hit in hits:
            found = matched.get(hit.image_id)
            if found:
                hit.matched_variant = {**(_variant_at(hit.source, found.get("n")) or {}), **found}

    def _page_documents(self, ids: list[str], vector: list[float]) -> dict[str, SearchHit]:
        """Sources of one page of client-fused hits, each with its variant nearest the query."""
        body = {"size": len(ids), "_source": {"excludes": SOURCE_EXCLUDES},
                "query": self.dense_query(vector, len(ids), Filters(ids=ids))}
        return {raw["_id"]: _to_hit(raw, 0) for raw in self._run(body)["hits"]["hits"]}

    def _run(self, body: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return self.client.search(index=self.index, body=body, params=params or {})
        except opensearchpy.NotFoundError:
            raise ConfigError(f"index {self.index!r} does not exist; ingest something first") from None
        except (opensearchpy.ConnectionError, opensearchpy.ConnectionTimeout) as exc:
            raise ClusterError(f"cannot reach OpenSearch ({type(exc).__name__}); is it running?") from None
        except opensearchpy.RequestError as exc:
            raise QueryError("q", f"OpenSearch refused the query: {_reason(exc)}") from None

    def _server_search(self, text: str, mode: str, k: int, filters: Filters, offset: int,
                       fusion: FusionSpec | None, boosts: LexicalBoosts | None, candidates: int,
                       ef_search: int | None, vector: list[float] | None) -> SearchResults:
        body, params = self.build_request(text, mode, k, filters, offset, fusion, boosts, candidates, ef_search,
                                          vector)
        response = self._run(body, params)
        hits = [_to_hit(raw, offset + i + 1) for i, raw in enumerate(response["hits"]["hits"])]
        total = response["hits"]["total"]["value"] if isinstance(response["hits"]["total"], dict) else \
            int(response["hits"]["total"])
        if mode == "dense":
            total = min(total, max(candidates, offset + k))
        return SearchResults(text, mode, hits, total, float(response.get("took", 0)), offset, request=body)

    def _client_hybrid(self, text: str, k: int, filters: Filters, offset: int, fusion: FusionSpec,
                       boosts: LexicalBoosts | None, candidates: int, ef_search: int | None,
                       vector: list[float] | None, explain: bool) -> SearchResults:
        depth = max(candidates, offset + k)
        vector = vector or self._encode(text)
        # Ids and scores are all fusion needs: sources and matched variants are fetched for the page
        # alone afterwards (explain keeps them per side, to say which variant each side matched).
        source: Any = {"excludes": SOURCE_EXCLUDES} if explain else False
        lexical_body = {"size": depth, "_source": source, "track_total_hits": False,
                        "query": self.lexical_query(text, filters, boosts, inner_hits=explain)}
        dense_body = {"size": depth, "_source": source, "track_total_hits": False,
                      "query": self.dense_query(vector, depth, filters, ef_search, inner_hits=explain)}
        responses = self.client.msearch(index=self.index, body=[{}, lexical_body, {}, dense_body])["responses"]
        for response in responses:
            if "error" in response:
                raise QueryError("q", f"OpenSearch refused the query: {response['error'].get('reason', response)}")
        lexical_hits = [_to_hit(raw, i + 1) for i, raw in enumerate(responses[0]["hits"]["hits"])]
        dense_hits = [_to_hit(raw, i + 1) for i, raw in enumerate(responses[1]["hits"]["hits"])]
        fused = fuse([[(h.image_id, h.score) for h in lexical_hits], [(h.image_id, h.score) for h in dense_hits]],
                     fusion)
        by_id_lex = {h.image_id: h for h in lexical_hits}
        by_id_dense = {h.image_id: h for h in dense_hits}
        page = fused[offset:offset + k]
        if not explain and page:
            by_id_dense = self._page_documents([image_id for image_id, _, _ in page], vector)
        hits = []
        for rank, (image_id, score, parts) in enumerate(page, start=offset + 1):
            lex, dense = by_id_lex.get(image_id), by_id_dense.get(image_id)
            base = dense or lex
            assert base is not None
            hit = SearchHit(image_id, score, rank, base.source,
                            matched_variant=(dense.matched_variant if dense else None) or
                            (lex.matched_variant if lex else None))
            if explain:
                hit.explanation = {
                    "lexical": {"raw": lex.score if lex else None, "normalized": parts[0],
                                "matched_variant": (lex.matched_variant or {}).get("n") if lex else None},
                    "dense": {"raw": dense.score if dense else None, "normalized": parts[1],
                              "matched_variant": (dense.matched_variant or {}).get("n") if dense else None},
                    "fusion": {"technique": fusion.technique, "weights": list(fusion.weights),
                               "rank_constant": fusion.rank_constant},
                }
            hits.append(hit)
        return SearchResults(text, "hybrid", hits, len(fused), float(responses[0].get("took", 0)) +
                             float(responses[1].get("took", 0)), offset, hybrid_backend="client",
                             request={"lexical": lexical_body, "dense": dense_body})


LEXICAL_SCOPES = ("variant", "image")


def check_lexical_scope(scope: str) -> str:
    if scope not in LEXICAL_SCOPES:
        raise ConfigError(f"lexical scope {scope!r} is unknown; choose one of {', '.join(LEXICAL_SCOPES)}"
                          " (RSRT_LEXICAL_SCOPE)")
    return scope


def _reason(exc: opensearchpy.TransportError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error", {})
    if isinstance(error, dict):
        root = (error.get("root_cause") or [{}])[0]
        return str(root.get("reason") or error.get("reason") or exc.error)[:300]
    return str(exc.error)[:300]


def _to_hit(raw: dict[str, Any], rank: int) -> SearchHit:
    source = raw.get("_source", {})
    matched = None
    for inner in (raw.get("inner_hits") or {}).values():
        inner_hits = inner.get("hits", {}).get("hits", [])
        if inner_hits:
            offset = inner_hits[0].get("_nested", {}).get("offset")
            matched = dict(inner_hits[0].get("_source") or _variant_at(source, offset) or {})
            matched.setdefault("n", offset)
            break
    return SearchHit(raw["_id"], float(raw["_score"] or 0.0), rank, source, matched)


def _variant_at(source: dict[str, Any], offset: int | None) -> dict[str, Any] | None:
    """The variant at a nested offset, from the image's _source (None when the source was not fetched)."""
    variants = source.get("variants") if isinstance(source, dict) else None
    if offset is None or not isinstance(variants, list) or not 0 <= offset < len(variants):
        return None
    return {k: v for k, v in variants[offset].items() if k != "embedding"}
