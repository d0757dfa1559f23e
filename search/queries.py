"""OpenSearch request bodies for every read rsrt makes: pure functions, no client, no encoder.

An image is one document with nested caption variants; every ranked query scores an image by its
best variant (nested, score_mode max). The same filter clauses go inside every sub-query, so a
filtered kNN search still returns k hits whenever k images match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import fields
from .filters import Filters
from .request import LexicalScope, Mode, SearchRequest

# Exact totals up to here, "at least" beyond: counting every lexical match would switch off
# Lucene's block-max WAND early termination, the main cost of a BM25 query on a large index.
TRACK_TOTAL_HITS = 10_000
# Inner hits name the best variant by its position only: its text is already in the image's own
# _source, and loading sources again for every inner hit was a third of a lexical query's time.
_INNER_HITS: dict[str, Any] = {"size": 1, "_source": False}
MAX_COLLECTIONS = 1000  # one terms aggregation lists them all; more than this is not an rsrt archive


@dataclass(frozen=True)
class ClusterText:
    """A query vector the cluster computes from the text (a `neural` query on the index's model).

    `model_id` None: the index's default search pipeline (neural_query_enricher) names the model, so
    the body holds only the text, as an analyst would write it in Dev Tools.
    """

    text: str
    model_id: str | None = None


QueryVector = list[float] | ClusterText


def _vector_clause(vector: QueryVector, k: int, condition: dict[str, Any] | None,
                   ef_search: int | None) -> dict[str, Any]:
    """The kNN clause on the variant vectors: `knn` with floats, `neural` with text."""
    clause: dict[str, Any]
    if isinstance(vector, ClusterText):
        clause = {"query_text": vector.text, "k": k}
        if vector.model_id:
            clause["model_id"] = vector.model_id
        kind = "neural"
    else:
        clause = {"vector": vector, "k": k}
        kind = "knn"
    if ef_search:
        clause["method_parameters"] = {"ef_search": int(ef_search)}
    if condition:
        clause["filter"] = condition
    return {kind: {fields.VARIANT_EMBEDDING: clause}}


def _filtered(query: dict[str, Any], filters: Filters) -> dict[str, Any]:
    clauses = filters.clauses()
    return {"bool": {"must": [query], "filter": clauses}} if clauses else query


def lexical_query(text: str, filters: Filters, scope: LexicalScope = LexicalScope.VARIANT,
                  inner_hits: bool = True) -> dict[str, Any]:
    """BM25; scope "variant" scores an image by its best variant (nested, max), "image" by all its
    variants' text at once (`all_text`, flat: Lucene can skip non-competitive documents)."""
    if scope == LexicalScope.IMAGE:
        return _filtered({"match": {fields.ALL_TEXT: {"query": text}}}, filters)
    nested: dict[str, Any] = {
        "path": fields.VARIANTS,
        "score_mode": "max",
        "query": {"multi_match": {"query": text, "type": "most_fields",
                                  "fields": [f"{name}^1" for name in fields.VARIANT_TEXT_FIELDS]}},
    }
    if inner_hits:
        nested["inner_hits"] = {"name": "lexical", **_INNER_HITS}
    return _filtered({"nested": nested}, filters)


def dense_query(vector: QueryVector, k: int, filters: Filters, ef_search: int | None = None,
                inner_hits: bool = True) -> dict[str, Any]:
    """Nested kNN (or neural), image score = best variant; place filters take an exact path (see below)."""
    if filters.exact_only:
        if isinstance(vector, ClusterText):
            raise ValueError("place filters score exactly and need the vector itself (Searcher predicts it)")
        return exact_dense_query(vector, filters, inner_hits)
    nested: dict[str, Any] = {"path": fields.VARIANTS, "score_mode": "max",
                              "query": _vector_clause(vector, k, filters.as_filter(), ef_search)}
    if inner_hits:
        nested["inner_hits"] = {"name": "dense", **_INNER_HITS}
    return {"nested": nested}


def exact_dense_query(vector: list[float], filters: Filters, inner_hits: bool = True) -> dict[str, Any]:
    """Exact cosine over the images a place filter selects.

    k-NN 2.19 silently matches nothing when a parent-level geo_shape clause sits in a nested kNN
    `filter` (term, range and ids clauses work). So with bbox/intersects the filter moves to the
    parent and each variant is scored exactly with the lucene engine's own formula, (1 + cos) / 2:
    the same scores as the kNN path, perfect recall, cost linear in the filtered images.
    """
    nested: dict[str, Any] = {"path": fields.VARIANTS, "score_mode": "max", "query": {"script_score": {
        "query": {"exists": {"field": fields.VARIANT_EMBEDDING}},
        "script": {"source": f"(1.0 + cosineSimilarity(params.query_value, doc['{fields.VARIANT_EMBEDDING}'])) / 2.0",
                   "params": {"query_value": vector}},
    }}}
    if inner_hits:
        nested["inner_hits"] = {"name": "dense", **_INNER_HITS}
    return {"bool": {"must": [{"nested": nested}], "filter": filters.clauses()}}


def ranked_body(request: SearchRequest, vector: QueryVector | None, scope: LexicalScope) -> dict[str, Any]:
    """One page of a dense, lexical or (server-side) hybrid search; hybrid needs its pipeline beside it."""
    body: dict[str, Any] = {"size": request.k, "from": request.offset, "_source": {"excludes": fields.SOURCE_EXCLUDES},
                            "track_total_hits": TRACK_TOTAL_HITS}
    if request.mode == Mode.LEXICAL:
        body["query"] = lexical_query(request.text, request.filters, scope)
        return body
    assert vector is not None, "dense and hybrid queries need the query vector"
    if request.mode == Mode.DENSE:
        body["query"] = dense_query(vector, request.depth, request.filters, request.hnsw_ef_search)
        return body
    body["query"] = {"hybrid": {"pagination_depth": request.depth, "queries": [
        lexical_query(request.text, request.filters, scope, inner_hits=False),
        dense_query(vector, request.depth, request.filters, request.hnsw_ef_search, inner_hits=False),
    ]}}
    return body


def fusion_bodies(request: SearchRequest, vector: QueryVector, scope: LexicalScope) -> tuple[dict, dict]:
    """The lexical and dense candidate lists of a client-fused hybrid search (one msearch).

    Ids and scores are all fusion needs: sources and matched variants are fetched for the page alone
    afterwards (explain keeps them per side, to say which variant each side matched).
    """
    source: Any = {"excludes": fields.SOURCE_EXCLUDES} if request.explain else False
    depth = request.depth
    lexical = {"size": depth, "_source": source, "track_total_hits": False,
               "query": lexical_query(request.text, request.filters, scope, inner_hits=request.explain)}
    dense = {"size": depth, "_source": source, "track_total_hits": False,
             "query": dense_query(vector, depth, request.filters, request.hnsw_ef_search, inner_hits=request.explain)}
    return lexical, dense


def nearest_variant_body(vector: QueryVector, ids: list[str], with_source: bool) -> dict[str, Any]:
    """The given images only, each with its variant nearest the query vector (an inner hit)."""
    source: Any = {"excludes": fields.SOURCE_EXCLUDES} if with_source else False
    return {"size": len(ids), "_source": source, "query": dense_query(vector, len(ids), Filters(ids=ids))}


def sources_body(ids: list[str]) -> dict[str, Any]:
    """The given images' sources, nothing scored: a page's images that a scored fetch did not return."""
    return {"size": len(ids), "_source": {"excludes": fields.SOURCE_EXCLUDES}, "query": Filters(ids=ids).as_filter()}


def best_lexical_variant_body(text: str, ids: list[str]) -> dict[str, Any]:
    """The given images only, each with its best BM25 variant (image-scope hits name one too)."""
    return {"size": len(ids), "_source": False,
            "query": lexical_query(text, Filters(ids=ids), LexicalScope.VARIANT)}


DEFAULT_BROWSE_SORT: list[dict[str, Any]] = [
    {fields.DATETIME: {"order": "desc", "missing": "_last", "unmapped_type": "date"}},
    {fields.IMAGE_ID: {"order": "asc", "unmapped_type": "keyword"}},
]


def browse_body(filters: Filters, size: int, offset: int, sort: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """Images matching the filters only, with an exact total; newest first unless `sort` (clauses from
    `rsrt.search.sorting.sort_clauses`, which end with the id so pages are stable) says otherwise."""
    return {
        "size": size, "from": offset, "track_total_hits": True,
        "_source": {"excludes": fields.SOURCE_EXCLUDES},
        "query": filters.as_filter() or {"match_all": {}},
        "sort": sort or DEFAULT_BROWSE_SORT,
    }


def item_body(item_id: str, collection: str | None = None) -> dict[str, Any]:
    """One image by id, optionally only when it belongs to `collection`."""
    query: dict[str, Any] = {"ids": {"values": [item_id]}}
    if collection is not None:
        query = {"bool": {"filter": [query, {"term": {fields.COLLECTION: collection}}]}}
    return {"size": 1, "query": query, "_source": {"excludes": fields.SOURCE_EXCLUDES}}


def thumbnail_body(item_id: str) -> dict[str, Any]:
    """One image's thumbnail alone (search bodies leave it out of `_source`)."""
    return {"size": 1, "query": {"ids": {"values": [item_id]}}, "_source": {"includes": [fields.THUMBNAIL]}}


def collections_body(only: str | None = None) -> dict[str, Any]:
    """One terms bucket per collection with its time span and footprint bounds: the Collection extents."""
    query: dict[str, Any] = {"term": {fields.COLLECTION: only}} if only is not None else {"match_all": {}}
    return {"size": 0, "query": query, "aggs": {"collections": {
        "terms": {"field": fields.COLLECTION, "size": MAX_COLLECTIONS, "order": {"_key": "asc"}},
        "aggs": {"first": {"min": {"field": fields.DATETIME}}, "last": {"max": {"field": fields.DATETIME}},
                 "where": {"geo_bounds": {"field": fields.GEOMETRY}}},
    }}}
