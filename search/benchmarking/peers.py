"""Peers side by side: exact numpy, FAISS HNSW and rsrt on OpenSearch, on the same vectors and queries.

Why: a reader of the performance report asks "what would the paper's numpy scan, or clip-retrieval's
FAISS, give on this machine?". Every peer gets the very same (images, variants, d) float32 vectors
and the same query vectors, answers one query at a time (a user's request), and ranks an image by
its BEST variant (the product's max rule). Each row has p50/p95 latency, tie-aware recall@k against
exact (`recall.exact_kth_scores`, `recall.EPSILON`), memory and build time, and ratios to OpenSearch.

- **numpy** (the paper's reference implementation): `flat @ q`, max over variants, `argpartition`.
  No index (build 0 s); memory is the float32 array itself.
- **faiss-hnsw** (clip-retrieval's engine): `IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT)` over every
  variant vector, built with `ef_construction`. The *fetch rule*: take `fetch = k × variants` hits,
  which by pigeonhole always holds k distinct images when FAISS returns all it was asked for (an
  image owns at most `variants` vectors), with `efSearch = max(ef_search, fetch)`; should fewer than
  k distinct images come back (unreachable graph parts leave -1 labels), fetch doubles, up to
  `k × variants × 16` or every vector, and the query is asked again (counted in `refetches`; the
  time of a query includes them). Hits are grouped by image keeping the max. Memory is the
  serialised index's size (counted while writing, without building the copy) and the growth of this
  process's resident set while adding.
- **opensearch**: rsrt's dense request (`SearchRequest(..., Mode.DENSE, k, candidates=ef,
  ef_search=ef, vector=...)`, as `recall.knn_recall` sends it), timed around `Searcher.search`
  (HTTP and JSON included). Memory is the index's k-NN files (flat vectors, HNSW graph, their meta
  and any quantised copies) from the segments' file sizes. Build time is the caller's (ingest +
  merge). The same depth means FAISS explores `efSearch` vectors while Lucene's nested kNN collects
  `ef` distinct parent images, which can visit more vectors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..request import Mode, SearchRequest
from ..searcher import Searcher
from .recall import EPSILON, exact_kth_scores

PEERS = ("numpy", "faiss-hnsw", "opensearch")
BASE = "opensearch"  # ratios are to this peer (= 1.0)
FETCH_CAP_FACTOR = 16  # FAISS refetching stops at k × variants × this (or at every vector)
# Lucene's k-NN files: flat vectors (+ meta), HNSW graph (+ meta), scalar-quantised copies (+ meta)
KNN_EXTENSIONS = ("vec", "vemf", "vex", "vem", "veq", "vemq", "veb", "vemb")
INSTALL_HINT = "pip install 'rsrt-search[bench]'"


@dataclass(frozen=True)
class PeerPlan:
    """What every peer is asked: the same k and search depth, the same HNSW build as rsrt's mapping."""

    k: int = 10
    ef_search: int = 100  # the same search depth for FAISS efSearch and the OpenSearch kNN (candidates)
    hnsw_m: int = 16  # rsrt's mapping: m 16, ef_construction 128
    ef_construction: int = 128
    warmup: int = 10
    peers: tuple[str, ...] = PEERS


@dataclass(frozen=True)
class _Exact:
    """The exact reference every peer's recall is scored against ((1 + cos) / 2 scale)."""

    kth: np.ndarray  # (queries,)
    image_scores: np.ndarray  # (queries, images)
    k: int

    def recall(self, found: list[np.ndarray]) -> tuple[float, float]:
        """(mean, min) tie-aware recall@k of each query's returned image positions."""
        per_query = [int(np.sum(self.image_scores[i, hits[:self.k]] >= self.kth[i] - EPSILON)) / self.k
                     for i, hits in enumerate(found)]
        return float(np.mean(per_query)), float(np.min(per_query))


def run_peers(vectors: np.ndarray, image_ids: list[str], query_vectors: np.ndarray, plan: PeerPlan,
              searcher: Searcher | None = None, opensearch_build_seconds: float | None = None,
              opensearch_index: str | None = None) -> dict[str, Any]:
    """Every peer of `plan.peers` on the same vectors and queries; rows, ratios and machine facts."""
    _check(vectors, image_ids, query_vectors, plan, searcher)
    images, variants, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # a view unless the caller's array was not
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    kth, image_scores = exact_kth_scores(queries, vectors, plan.k)
    exact = _Exact(kth, image_scores, plan.k)
    rows: dict[str, dict[str, Any]] = {}
    machine: dict[str, Any] = {"cpus": _cpus(), "numpy_blas_threads": _blas_threads()}
    for peer in plan.peers:
        if peer == "numpy":
            rows[peer] = _numpy_peer(vectors, queries, plan, exact)
        elif peer == "faiss-hnsw":
            rows[peer] = _faiss_peer(vectors, queries, plan, exact)
            machine["faiss_omp_threads"] = rows[peer]["omp_threads"]
        else:
            assert searcher is not None
            rows[peer] = _opensearch_peer(searcher, image_ids, queries, plan, exact, opensearch_build_seconds,
                                          opensearch_index or searcher.index)
    return {
        "plan": {**asdict(plan), "peers": list(plan.peers)},
        "data": {"images": images, "variants": variants, "dimension": dim, "vectors": images * variants,
                 "queries": len(queries), "vector_bytes": int(vectors.nbytes), "epsilon": EPSILON},
        "machine": machine,
        "peers": rows,
        "ratios": _ratios(rows),
    }


def _check(vectors: np.ndarray, image_ids: list[str], query_vectors: np.ndarray, plan: PeerPlan,
           searcher: Searcher | None) -> None:
    unknown = [p for p in plan.peers if p not in PEERS]
    if unknown or not plan.peers:
        raise ConfigError(f"peers: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PEERS)}")
    if vectors.ndim != 3:
        raise ConfigError(f"peers: vectors must be (images, variants, dimension), got shape {vectors.shape}")
    if len(image_ids) != vectors.shape[0]:
        raise ConfigError(f"peers: {len(image_ids)} image ids for {vectors.shape[0]} images")
    if query_vectors.ndim != 2 or query_vectors.shape[1] != vectors.shape[2] or not len(query_vectors):
        raise ConfigError(f"peers: query vectors must be (queries ≥ 1, {vectors.shape[2]}), "
                          f"got shape {query_vectors.shape}")
    if not 1 <= plan.k <= vectors.shape[0] or plan.ef_search < plan.k:
        raise ConfigError(f"peers: need 1 ≤ k ≤ images ({vectors.shape[0]}) and ef_search ≥ k, "
                          f"got k {plan.k}, ef_search {plan.ef_search}")
    if BASE in plan.peers and searcher is None:
        raise ConfigError("peers: the opensearch peer needs a searcher on the index holding these vectors")


# the peers --------------------------------------------------------------------------------------------
def _numpy_peer(vectors: np.ndarray, queries: np.ndarray, plan: PeerPlan, exact: _Exact) -> dict[str, Any]:
    images, variants, dim = vectors.shape
    flat = vectors.reshape(-1, dim)
    k = plan.k

    def answer(q: np.ndarray) -> np.ndarray:
        best = (flat @ q).reshape(images, variants).max(axis=1)
        top = np.argpartition(-best, k - 1)[:k]
        return top[np.argsort(-best[top], kind="stable")]

    found, latencies = _timed(answer, queries, plan.warmup)
    return {**_summary(latencies, exact.recall(found)), "memory_bytes": int(vectors.nbytes),
            "memory_note": "the float32 vectors", "build_seconds": 0.0, "build_note": "no index: exact scan"}


def _faiss_peer(vectors: np.ndarray, queries: np.ndarray, plan: PeerPlan, exact: _Exact) -> dict[str, Any]:
    faiss = _import_faiss()
    _, variants, dim = vectors.shape
    flat = vectors.reshape(-1, dim)  # FAISS copies these into its own storage once
    index = faiss.IndexHNSWFlat(dim, plan.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = plan.ef_construction
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    index.add(flat)
    build_seconds = time.perf_counter() - t0
    rss_after = _rss_mb()
    k = plan.k
    fetch0 = k * variants
    cap = min(len(flat), fetch0 * FETCH_CAP_FACTOR)
    refetches = [0]

    def answer(q: np.ndarray) -> np.ndarray:
        fetch = min(fetch0, len(flat))
        while True:
            index.hnsw.efSearch = max(plan.ef_search, fetch)
            scores, labels = index.search(q[None, :], fetch)
            top = group_by_image(scores[0], labels[0], variants, k)
            if len(top) >= k or fetch >= cap:
                return top
            fetch = min(fetch * 2, cap)
            refetches[0] += 1

    found, latencies = _timed(answer, queries, plan.warmup)
    serialized = _serialized_bytes(faiss, index)
    row = {**_summary(latencies, exact.recall(found)), "memory_bytes": serialized,
           "memory_note": "serialised index (vectors + graph)", "build_seconds": round(build_seconds, 2),
           "build_note": f"add {len(flat)} vectors", "fetch": fetch0, "fetch_cap": cap,
           "ef_search_used": max(plan.ef_search, fetch0), "refetches": refetches[0],
           "omp_threads": int(faiss.omp_get_max_threads())}
    if rss_before is not None and rss_after is not None:
        row["rss_growth_mb"] = round(rss_after - rss_before, 1)
    return row


def group_by_image(scores: np.ndarray, labels: np.ndarray, variants: int, k: int) -> np.ndarray:
    """The k best images of variant hits, each image scored by its best variant (labels -1: none).

    Vector `v` is image `v // variants`'s variant `v % variants` (the array is image-major).
    """
    best: dict[int, float] = {}
    for score, label in zip(scores.tolist(), labels.tolist(), strict=True):
        if label < 0:
            continue
        image = label // variants
        if score > best.get(image, -np.inf):
            best[image] = score
    ranked = sorted(best, key=lambda image: (-best[image], image))
    return np.asarray(ranked[:k], dtype=np.int64)


def _opensearch_peer(searcher: Searcher, image_ids: list[str], queries: np.ndarray, plan: PeerPlan,
                     exact: _Exact, build_seconds: float | None, index: str) -> dict[str, Any]:
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    depth = max(plan.ef_search, plan.k)
    outside: list[str] = []

    def answer(q: np.ndarray) -> np.ndarray:
        request = SearchRequest("peers query vector", Mode.DENSE, plan.k, candidates=depth,
                                ef_search=plan.ef_search, vector=[float(x) for x in q])
        hits = searcher.search(request).hits[:plan.k]
        outside.extend(h.image_id for h in hits if h.image_id not in position)
        return np.asarray([position[h.image_id] for h in hits if h.image_id in position], dtype=np.int64)

    found, latencies = _timed(answer, queries, plan.warmup)
    if outside:
        raise ConfigError(f"peers: index {index!r} returned images that are not among the vectors given "
                          f"(e.g. {outside[0]!r}): it must hold exactly these vectors")
    files = _segment_file_sizes(searcher, index)
    knn = {ext: size for ext, size in files.items() if ext in KNN_EXTENSIONS}
    return {**_summary(latencies, exact.recall(found)), "memory_bytes": int(sum(knn.values())),
            "memory_note": f"k-NN segment files ({', '.join(sorted(knn)) or 'none found'})",
            "build_seconds": None if build_seconds is None else round(build_seconds, 2),
            "build_note": "ingest + merge, timed by the caller" if build_seconds is not None else "not given",
            "index": index, "file_sizes": files, "knn_file_bytes": knn}


# measuring --------------------------------------------------------------------------------------------
def _timed(answer: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
           warmup: int) -> tuple[list[np.ndarray], list[float]]:
    """Each query alone, after `warmup` untimed ones: (image positions per query, milliseconds per query)."""
    for i in range(min(warmup, len(queries))):
        answer(queries[i])
    found, latencies = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = answer(q)
        latencies.append((time.perf_counter() - t0) * 1000)
        found.append(hits)
    return found, latencies


def _summary(latencies: list[float], recall: tuple[float, float]) -> dict[str, Any]:
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p95_ms": round(float(np.percentile(latencies, 95)), 3),
            "recall_at_k": round(recall[0], 4), "min_recall": round(recall[1], 2), "queries": len(latencies)}


def _ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each peer's latency, memory and build time ÷ OpenSearch's (and latency ÷ numpy's)."""
    base = rows.get(BASE, {})
    exact = rows.get("numpy", {})

    def ratio(value: Any, reference: Any) -> float | None:
        if value is None or reference is None or reference == 0:
            return None
        return round(float(value) / float(reference), 3)

    return {peer: {"p50_vs_opensearch": ratio(row["p50_ms"], base.get("p50_ms")),
                   "p95_vs_opensearch": ratio(row["p95_ms"], base.get("p95_ms")),
                   "p50_vs_numpy": ratio(row["p50_ms"], exact.get("p50_ms")),
                   "memory_vs_opensearch": ratio(row["memory_bytes"], base.get("memory_bytes")),
                   "build_vs_opensearch": ratio(row["build_seconds"], base.get("build_seconds"))}
            for peer, row in rows.items()}


def _segment_file_sizes(searcher: Searcher, index: str) -> dict[str, int]:
    """Bytes per Lucene file extension over the index's primary segments."""
    stats = searcher.client.indices.stats(index=index, metric="segments",
                                          params={"include_segment_file_sizes": "true"})
    sizes = stats["_all"]["primaries"]["segments"].get("file_sizes", {})
    return {ext: int(entry["size_in_bytes"]) for ext, entry in sorted(sizes.items())}


def _serialized_bytes(faiss: Any, index: Any) -> int:
    """len(faiss.serialize_index(index)), counted as it is written: no second copy of the vectors."""
    written = [0]

    def count(chunk: bytes) -> int:
        written[0] += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer
    return written[0]


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"the faiss-hnsw peer needs faiss-cpu: {INSTALL_HINT}") from None
    return faiss


def _rss_mb() -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _blas_threads() -> int | None:
    """numpy's BLAS threads (threadpoolctl when installed; else unknown)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in str(pool.get("filepath", "")):
            return int(pool["num_threads"])
    return None


# the table ---------------------------------------------------------------------------------------------
def format_peers(result: dict[str, Any]) -> str:
    """A markdown table: one row per peer, with ratios to OpenSearch (= 1.0) and to exact numpy."""
    data, machine, plan = result["data"], result["machine"], result["plan"]
    lines = [
        f"Peers on the same vectors: {data['images']:,} images × {data['variants']} variants × "
        f"{data['dimension']} d, {data['queries']} queries one at a time, k {plan['k']}, search depth "
        f"{plan['ef_search']}, HNSW m {plan['hnsw_m']} / ef_construction {plan['ef_construction']}.",
        "",
        f"| peer | p50 ms | p95 ms | recall@{plan['k']} | min recall | memory MB | build s "
        "| p50 ÷ OS | p50 ÷ numpy | memory ÷ OS | build ÷ OS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for peer, row in result["peers"].items():
        r = result["ratios"][peer]
        lines.append(f"| {peer} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['recall_at_k']:.4f} "
                     f"| {row['min_recall']:.2f} | {row['memory_bytes'] / 2**20:.1f} | {_num(row['build_seconds'])} "
                     f"| {_num(r['p50_vs_opensearch'])} | {_num(r['p50_vs_numpy'])} "
                     f"| {_num(r['memory_vs_opensearch'])} | {_num(r['build_vs_opensearch'])} |")
    lines.append("")
    for peer, row in result["peers"].items():
        extra = ""
        if peer == "faiss-hnsw":
            extra = (f"; fetch {row['fetch']} hits (efSearch {row['ef_search_used']}), {row['refetches']} refetches"
                     + (f", RSS +{row['rss_growth_mb']} MB while adding" if "rss_growth_mb" in row else ""))
        lines.append(f"- {peer}: memory = {row['memory_note']}; build = {row['build_note']}{extra}.")
    lines.append(f"- recall: tie-aware against exact max-over-variants (ε {data['epsilon']} on the (1 + cos) / 2 "
                 "scale, as recall.py).")
    lines.append(f"- machine: {machine['cpus']} CPUs, numpy BLAS threads {_num(machine.get('numpy_blas_threads'))}"
                 + (f", FAISS OpenMP threads {machine['faiss_omp_threads']}" if "faiss_omp_threads" in machine
                    else "") + ".")
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
