"""The exact in-memory reference: top-k with ties, dense cosine, Lucene-formula BM25, and the
RSITMD leave-one-out numbers recorded in the regression file."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from rsrt.search.datasets import Benchmark, BenchmarkImage, load_benchmark
from rsrt.search.evaluation import Corpus, Doc, evaluate, load_regressions, loo_protocol
from rsrt.search.evaluation.exact import (
    CachedEncoder,
    ExactBM25Ranker,
    ExactDenseRanker,
    SentenceTransformerEncoder,
    default_model_path,
    english_analyzer,
    load_default_encoder,
    top_k,
)
from rsrt.search.evaluation.regression import check_condition


@pytest.fixture(scope="session")
def model() -> SentenceTransformerEncoder:
    """The default encoder, loaded once per test session (offline, from the installed package)."""
    return load_default_encoder()


class BagOfWords:
    """A deterministic toy encoder over a fixed vocabulary; counts how many texts it embedded."""

    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.vocabulary = list(vocabulary)
        self.calls: list[int] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        rows = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                if word in self.vocabulary:
                    rows[i, self.vocabulary.index(word)] += 1.0
        return rows


def _corpus(*docs: tuple[str, str, str]) -> Corpus:
    return Corpus("c", tuple(Doc(doc_id, image_id, text) for doc_id, image_id, text in docs))


def test_top_k_orders_ties_by_id() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]])
    ids = ["a", "b", "c", "d"]
    assert top_k(scores, ids, 3) == [[("b", 0.9), ("a", 0.5), ("c", 0.5)], [("d", 0.4), ("c", 0.3), ("b", 0.2)]]
    assert len(top_k(scores, ids, 10)[0]) == 4
    assert top_k(scores, ids, 0) == [[], []]


def test_dense_ranks_images_by_best_variant_and_texts_individually() -> None:
    encoder = BagOfWords(["ship", "port", "field", "green", "tree"])
    corpus = _corpus(
        ("x#0", "x", "ship port"),
        ("x#1", "x", "green field"),
        ("y#0", "y", "tree tree green"),
        ("z#0", "z", "ship port"),  # same text as x#0, other image: an exact tie
    )
    ranker = ExactDenseRanker(encoder)
    ranker.index(corpus)
    t2i = ranker.rank(["ship", "green field", "ship"], 3, "t2i")
    assert [i for i, _ in t2i[0]] == ["x", "z", "y"]  # x and z tie at cos = 1/sqrt(2); x < z
    assert t2i[0][0][1] == t2i[0][1][1] == pytest.approx(1 / math.sqrt(2))
    assert t2i[0][2][1] == 0.0
    assert t2i[1][0] == ("x", pytest.approx(1.0))  # best variant, not the mean
    assert t2i[2] == t2i[0]
    i2t = ranker.rank(["ship"], 2, "i2t")
    assert [d for d, _ in i2t[0]] == ["x#0", "z#0"]
    # "ship port" is embedded once although two docs carry it; each distinct query once.
    assert encoder.calls == [3, 1]  # "green field" was embedded at index time


def test_cached_encoder_embeds_each_text_once() -> None:
    encoder = BagOfWords(["a", "b"])
    cached = CachedEncoder(encoder)
    first = cached(["a", "b", "a"])
    second = cached(["b", "a b"])
    assert first.shape == (3, 2) and second.shape == (2, 2)
    assert encoder.calls == [2, 1]
    np.testing.assert_array_equal(first[1], second[0])


def test_english_analyzer() -> None:
    assert english_analyzer("The ship's buildings are arranged NEATLY, with 4 trees.") == [
        "ship",
        "build",
        "arrang",
        "neatli",
        "4",
        "tree",
    ]
    assert english_analyzer("There's a port") == ["port"]  # possessive filter, then "there" is a stop word
    assert english_analyzer("it is the") == []


def test_bm25_matches_lucene_formula() -> None:
    corpus = _corpus(
        ("a#0", "a", "red ships in the port"),
        ("a#1", "a", "a quiet port"),
        ("b#0", "b", "green trees and a river"),
        ("c#0", "c", "ships ships and boats"),
    )
    ranker = ExactBM25Ranker()
    ranker.index(corpus)
    # Tokens: a#0 [red, ship, port] a#1 [quiet, port] b#0 [green, tree, river] c#0 [ship, ship, boat].
    n, avgdl, k1, b = 4, 11 / 4, 1.2, 0.75

    def term(df: int, tf: int, dl: int) -> float:
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))

    scores = ranker.scores("ship")
    expected = [term(2, 1, 3), 0.0, 0.0, term(2, 2, 3)]  # doc-id order: a#0, a#1, b#0, c#0
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    # A repeated query term counts twice, as in Lucene's match query.
    np.testing.assert_allclose(ranker.scores("ship ships"), 2 * np.asarray(expected), rtol=1e-12)
    assert not ranker.scores("the and of").any()
    assert not ranker.scores("unknownword").any()
    t2i = ranker.rank(["ships in port"], 3, "t2i")[0]
    assert [i for i, _ in t2i] == ["a", "c"]  # b matches no term: not returned, as in Lucene
    assert t2i[0][1] == pytest.approx(term(2, 1, 3) + term(2, 1, 3))
    assert ranker.rank(["unknownword", "the"], 3, "t2i") == [[], []]  # no match, no result
    assert [i for i, _ in ranker.rank(["river"], 3, "t2i")[0]] == ["b"]
    i2t = ranker.rank(["port"], 2, "i2t")[0]
    assert [d for d, _ in i2t] == ["a#1", "a#0"]  # shorter doc wins


def test_default_model_loads_offline(model: SentenceTransformerEncoder) -> None:
    assert (default_model_path() / "model.safetensors").is_file()
    vectors = model(["ships moored in a harbour", "boats docked at a port", "a dense green forest"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_dense_loo_on_a_small_fixture(model: SentenceTransformerEncoder) -> None:
    bench = Benchmark(
        "mini",
        "test",
        [
            BenchmarkImage("harbour", "h.tif", ["ships in a harbour", "boats docked at a port", "a port with ships"]),
            BenchmarkImage("forest", "f.tif", ["a dense green forest", "many trees", "a green woodland"]),
            BenchmarkImage("court", "c.tif", ["two tennis courts", "tennis courts near a road", "courts for tennis"]),
        ],
    )
    result = evaluate(loo_protocol(bench, folds=3), ExactDenseRanker(model), ks=(1, 2))
    assert result.recall("t2i") == {1: 100.0, 2: 100.0}
    assert result.recall("i2t") == {1: 100.0, 2: 100.0}
    assert result.mr == 100.0


@pytest.mark.parametrize("name", ["sydney-loo", "ucm-loo"])
def test_small_benchmarks_bm25_match_their_regression_files(name: str) -> None:
    spec = load_regressions(name)
    result = evaluate(loo_protocol(load_benchmark(spec.benchmark, spec.split)), ExactBM25Ranker(), mode="exact-bm25")
    assert check_condition(spec.conditions["exact-bm25"], result) == []


@pytest.mark.slow
def test_rsitmd_loo_matches_the_regression_file(model: SentenceTransformerEncoder) -> None:
    spec = load_regressions("rsitmd-loo")
    protocol = loo_protocol(load_benchmark(spec.benchmark, spec.split))
    bm25 = evaluate(protocol, ExactBM25Ranker(), mode="exact-bm25")
    dense = evaluate(protocol, ExactDenseRanker(model), mode="exact-dense")
    assert check_condition(spec.conditions["exact-bm25"], bm25) == []
    assert check_condition(spec.conditions["exact-dense"], dense) == []
    assert 90.0 < dense.mr < 92.5 and 86.0 < bm25.mr < 88.5
