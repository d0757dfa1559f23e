"""Peers side by side (numpy exact, FAISS HNSW, OpenSearch): same vectors, same max rule, honest recall.

Timings are printed by the benchmark, never asserted here.
"""

from __future__ import annotations

import numpy as np
import pytest

from rsrt.search.benchmarking import peers
from rsrt.search.benchmarking.peers import PeerPlan, format_peers, group_by_image, run_peers
from rsrt.search.errors import ConfigError

OFFLINE = ("numpy", "faiss-hnsw")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def separated():
    """300 images × 5 × 32 random unit vectors; each query is one image's variant plus a little noise."""
    rng = np.random.default_rng(11)
    vectors = _unit(rng.standard_normal((300, 5, 32)))
    targets = rng.choice(300, size=20, replace=False)
    queries = _unit(vectors[targets, rng.integers(0, 5, size=20)] + 0.05 * rng.standard_normal((20, 32)))
    return vectors, [f"img-{i:04d}" for i in range(300)], queries, targets


def test_numpy_is_exact_and_faiss_is_close_on_separated_data(separated):
    vectors, ids, queries, _ = separated
    result = run_peers(vectors, ids, queries, PeerPlan(warmup=2, peers=OFFLINE))
    numpy_row, faiss_row = result["peers"]["numpy"], result["peers"]["faiss-hnsw"]
    assert numpy_row["recall_at_k"] == 1.0 and numpy_row["min_recall"] == 1.0
    assert faiss_row["recall_at_k"] >= 0.9
    assert numpy_row["build_seconds"] == 0.0 and numpy_row["memory_bytes"] == vectors.nbytes
    assert faiss_row["fetch"] == 50 and faiss_row["ef_search_used"] == 100 and faiss_row["refetches"] == 0
    assert faiss_row["memory_bytes"] > vectors.nbytes  # its own copy of the vectors plus the graph
    assert result["machine"]["faiss_omp_threads"] >= 1 and result["machine"]["cpus"] >= 1
    assert result["data"] == {"images": 300, "variants": 5, "dimension": 32, "vectors": 1500, "queries": 20,
                              "vector_bytes": vectors.nbytes, "epsilon": peers.EPSILON}
    # no OpenSearch row: ratios to it are unknown, to numpy known
    assert result["ratios"]["faiss-hnsw"]["p50_vs_opensearch"] is None
    assert result["ratios"]["numpy"]["p50_vs_numpy"] == 1.0
    table = format_peers(result)
    assert "| numpy |" in table and "| faiss-hnsw |" in table and "opensearch" not in table.split("\n")[2]


def test_faiss_top1_is_the_exact_top1_on_separated_data(separated):
    import faiss

    vectors, _, queries, targets = separated
    index = faiss.IndexHNSWFlat(32, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    index.add(vectors.reshape(-1, 32))
    index.hnsw.efSearch = 100
    scores, labels = index.search(queries, 50)
    exact_top1 = (np.einsum("ivd,qd->qiv", vectors, queries).max(axis=2)).argmax(axis=1)
    assert exact_top1.tolist() == targets.tolist()
    assert [int(group_by_image(scores[q], labels[q], 5, 10)[0]) for q in range(len(queries))] == targets.tolist()


def test_faiss_memory_is_exactly_the_serialised_size(separated):
    import faiss

    vectors = separated[0]
    index = faiss.IndexHNSWFlat(32, 16, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors.reshape(-1, 32))
    assert peers._serialized_bytes(faiss, index) == len(faiss.serialize_index(index))


def test_an_image_scores_by_its_best_variant_everywhere():
    """Image A has one variant equal to the query and four opposite ones; image B five at cos 0.8:
    by the max rule A wins (by a mean it would lose), in numpy, in FAISS and in the grouping."""
    rng = np.random.default_rng(3)
    dim = 32
    q = _unit(rng.standard_normal(dim))
    side = rng.standard_normal(dim)
    side = _unit(side - (side @ q) * q)
    filler = _unit(rng.standard_normal((60, 5, dim)))
    filler -= 0.9 * np.einsum("ivd,d->iv", filler, q)[..., None] * q  # fillers far from the query
    filler = _unit(filler)
    a = np.stack([q] + [-q] * 4)
    b = np.stack([_unit(0.8 * q + 0.6 * _unit(side + 0.1 * rng.standard_normal(dim))) for _ in range(5)])
    vectors = np.concatenate([filler, a[None], b[None]]).astype(np.float32)
    ids = [f"f{i}" for i in range(60)] + ["A", "B"]
    a_cos, b_cos = vectors[60] @ q, vectors[61] @ q
    assert b_cos.mean() > a_cos.mean() and a_cos.max() > b_cos.max() + 0.1  # the trap: B wins on a mean
    result = run_peers(vectors, ids, q[None, :], PeerPlan(k=1, ef_search=10, warmup=0, peers=OFFLINE))
    assert result["peers"]["numpy"]["recall_at_k"] == 1.0
    assert result["peers"]["faiss-hnsw"]["recall_at_k"] == 1.0
    # hits as FAISS returns them: B's variants first in number, A's one great variant first in score
    scores = np.array([1.0, 0.8, 0.8, 0.8, 0.8, 0.79, -1.0], dtype=np.float32)
    labels = np.array([300, 305, 306, 307, 308, 309, -1])
    assert group_by_image(scores, labels, 5, 2).tolist() == [60, 61]
    assert group_by_image(scores[::-1], labels[::-1], 5, 2).tolist() == [60, 61]  # order of hits is irrelevant


def test_recall_is_computed_from_the_answers_not_assumed(separated, monkeypatch):
    """Against a reference that disagrees with the scan, numpy's recall falls: it is measured."""
    vectors, ids, queries, _ = separated
    real = peers.exact_kth_scores

    def shifted(queries: np.ndarray, vectors: np.ndarray, k: int = 10):
        kth, scores = real(queries, vectors, k)
        scores = scores.copy()  # kth stays the true one
        for i in range(len(queries)):  # the true top 3 of every query rank last in the "reference"
            scores[i, np.argsort(-scores[i])[:3]] = 0.0
        return kth, scores

    monkeypatch.setattr(peers, "exact_kth_scores", shifted)
    result = run_peers(vectors, ids, queries, PeerPlan(warmup=0, peers=("numpy",)))
    assert result["peers"]["numpy"]["recall_at_k"] == pytest.approx(0.7)


def test_bad_inputs_are_one_line_config_errors(separated):
    vectors, ids, queries, _ = separated
    with pytest.raises(ConfigError, match="unknown annoy"):
        run_peers(vectors, ids, queries, PeerPlan(peers=("numpy", "annoy")))
    with pytest.raises(ConfigError, match="needs a searcher"):
        run_peers(vectors, ids, queries, PeerPlan())
    with pytest.raises(ConfigError, match="299 image ids for 300 images"):
        run_peers(vectors, ids[1:], queries, PeerPlan(peers=("numpy",)))
    with pytest.raises(ConfigError, match="query vectors must be"):
        run_peers(vectors, ids, queries[:, :16], PeerPlan(peers=("numpy",)))


@pytest.mark.integration
def test_all_three_peers_on_a_real_index(os_client, index_name, tmp_path):
    from rsrt.search.benchmarking.corpus import build_corpus, write_corpus
    from rsrt.search.benchmarking.ingest import force_merge, ingest_corpus
    from rsrt.search.benchmarking.vectors import CorpusEncoder, image_vectors
    from rsrt.search.searcher import Searcher

    corpus = build_corpus(seed=7, pool_per_class=6)
    texts = corpus.texts()
    write_corpus(corpus, 300, tmp_path)
    ids, rows = [], []
    for record, picked in corpus.records(300):
        ids.append(record.image_id)
        rows.append(picked)
    rows = np.asarray(rows)
    rng = np.random.default_rng(5)
    pool = _unit(rng.standard_normal((len(texts), 32)))
    vectors = image_vectors(pool, rows, seed=7, sigma=0.1)
    in_order = [texts[r] for r in rows.reshape(-1)]
    load = ingest_corpus(os_client, tmp_path / "images-300.jsonl", index_name,
                         CorpusEncoder(in_order, vectors, "synthetic-32"))
    merged = force_merge(os_client, index_name)
    assert load["images"] == 300 and merged["segments"] == 1
    queries = _unit(pool[rng.choice(len(texts), size=15, replace=False)] + 0.1 * rng.standard_normal((15, 32)))

    result = run_peers(vectors, ids, queries, PeerPlan(warmup=3), searcher=Searcher(os_client, index_name),
                       opensearch_build_seconds=load["wall_seconds"] + merged["seconds"])
    assert list(result["peers"]) == ["numpy", "faiss-hnsw", "opensearch"]
    table_fields = ("p50_ms", "p95_ms", "recall_at_k", "min_recall", "memory_bytes", "memory_note",
                    "build_seconds", "build_note", "queries")
    for peer, row in result["peers"].items():
        assert all(name in row for name in table_fields), peer
        assert row["queries"] == 15 and row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"]
        assert set(result["ratios"][peer]) == {"p50_vs_opensearch", "p95_vs_opensearch", "p50_vs_numpy",
                                               "memory_vs_opensearch", "build_vs_opensearch"}
    searched = result["peers"]["opensearch"]
    assert result["peers"]["numpy"]["recall_at_k"] == 1.0
    assert searched["recall_at_k"] >= 0.9  # ef 100 over 300 images explores nearly all of them
    # the k-NN files hold at least the raw float32 vectors (1,500 × 32 × 4 bytes)
    assert "vec" in searched["knn_file_bytes"] and searched["knn_file_bytes"]["vec"] >= vectors.nbytes
    assert searched["memory_bytes"] == sum(searched["knn_file_bytes"].values())
    assert set(searched["knn_file_bytes"]) <= set(searched["file_sizes"])
    assert result["ratios"]["opensearch"] == {"p50_vs_opensearch": 1.0, "p95_vs_opensearch": 1.0,
                                              "p50_vs_numpy": result["ratios"]["opensearch"]["p50_vs_numpy"],
                                              "memory_vs_opensearch": 1.0, "build_vs_opensearch": 1.0}
    assert result["ratios"]["numpy"]["build_vs_opensearch"] == 0.0
    table = format_peers(result)
    for peer in ("numpy", "faiss-hnsw", "opensearch"):
        assert f"| {peer} |" in table
    assert "k-NN segment files" in table and "FAISS OpenMP threads" in table
