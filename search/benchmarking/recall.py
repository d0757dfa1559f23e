"""kNN recall@k of the index against exact brute force, and what each `ef_search` costs.

The exact side scores every image as its best variant (the product's max rule) by brute force over
the very vectors that were indexed. Recall is tie-aware, as in ann-benchmarks: a returned image
counts when its exact score reaches the exact k-th best score minus ε, with ann-benchmarks' default
ε = 1e-3 of cosine distance (5e-4 on the (1 + cos) / 2 score scale): an index choosing among scores
that differ in the fourth decimal is not punished.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..filters import Filters
from ..request import Mode, SearchRequest
from ..searcher import Searcher

EPSILON = 5e-4  # 1e-3 of cosine distance, on the (1 + cos) / 2 scale


def exact_kth_scores(queries: np.ndarray, vectors: np.ndarray, k: int = 10,
                     chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(k-th best exact image score per query, (queries, images) exact image scores).

    `vectors` is (images, variants, d); an image scores as its best variant, cosine as (1 + cos) / 2
    like the lucene engine, so the numbers compare with the engine's own scores.
    """
    images, variants, dim = vectors.shape
    flat = vectors.reshape(-1, dim)
    kth = np.empty(len(queries), dtype=np.float32)
    image_scores = np.empty((len(queries), images), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        cosines = (flat @ queries[start:start + chunk].T).reshape(images, variants, -1).max(axis=1).T
        scores = (1.0 + cosines) / 2.0
        image_scores[start:start + chunk] = scores
        kth[start:start + chunk] = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    return kth, image_scores


def knn_recall(searcher: Searcher, queries: list[str], query_vectors: np.ndarray, vectors: np.ndarray,
               image_ids: list[str], ef_values: tuple[int, ...] = (10, 50, 100, 200, 400),
               k: int = 10, filters: Filters | None = None) -> list[dict[str, Any]]:
    """Recall@k and latency of the dense query at each ef_search (candidates = ef, as lucene uses k)."""
    kth, image_scores = exact_kth_scores(query_vectors, vectors, k)
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    rows = []
    for ef in ef_values:
        def request(i: int, ef: int = ef) -> SearchRequest:
            return SearchRequest(queries[i], Mode.DENSE, k, filters=filters or Filters(), candidates=max(ef, k),
                                 ef_search=ef, vector=[float(x) for x in query_vectors[i]])

        for i in range(min(10, len(queries))):  # warm-up
            searcher.search(request(i))
        recalls, latencies = [], []
        for i in range(len(queries)):
            asked = request(i)
            t0 = time.perf_counter()
            results = searcher.search(asked)
            latencies.append((time.perf_counter() - t0) * 1000)
            good = sum(1 for hit in results.hits[:k]
                       if hit.image_id in position and image_scores[i, position[hit.image_id]] >= kth[i] - EPSILON)
            recalls.append(good / k)
        rows.append({"ef_search": ef, "recall_at_k": round(float(np.mean(recalls)), 4),
                     "min_recall": round(float(np.min(recalls)), 2), "k": k, "queries": len(queries),
                     "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                     "p95_ms": round(float(np.percentile(latencies, 95)), 2)})
    return rows
