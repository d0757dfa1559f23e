"""Hit-rate metrics on hand-made rankings with known answers, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from rsrt.search.evaluation.metrics import (
    first_hit_ranks,
    hit_rates,
    hit_rates_direct,
    mean_recall,
    order_ranking,
)


def test_order_ranking_breaks_ties_by_id() -> None:
    ranking = [("c", 1.0), ("a", 2.0), ("b", 1.0), ("a2", 1.0)]
    assert order_ranking(ranking) == [("a", 2.0), ("a2", 1.0), ("b", 1.0), ("c", 1.0)]
    assert order_ranking(ranking, depth=2) == [("a", 2.0), ("a2", 1.0)]


def test_known_answers() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"z": 1}, "q4": {"d": 1}}
    run = {
        "q1": [("x", 3.0), ("a", 2.0)],  # first hit at 2
        "q2": [("c", 5.0), ("a", 1.0)],  # first hit at 1 (one of two relevant: hit rate, not recall)
        "q3": [("x", 1.0)],  # never
        "q4": [],  # empty ranking: a miss, not an error
    }
    expected = {1: 25.0, 2: 50.0, 10: 50.0}
    assert hit_rates(run, qrels, (1, 2, 10)) == pytest.approx(expected)
    assert hit_rates_direct(run, qrels, (1, 2, 10)) == pytest.approx(expected)
    assert list(first_hit_ranks(run, qrels)) == [2, 1, 0, 0]


def test_ties_are_settled_by_id_not_input_order() -> None:
    qrels = {"q1": {"img_b": 1}, "q2": {"img_a": 1}}
    # Both queries tie their relevant image with another; ids decide: img_a < img_b.
    run = {"q1": [("img_b", 0.5), ("img_a", 0.5)], "q2": [("img_b", 0.5), ("img_a", 0.5)]}
    assert hit_rates(run, qrels, (1,)) == {1: 50.0}
    assert hit_rates_direct(run, qrels, (1,)) == {1: 50.0}
    assert list(first_hit_ranks(run, qrels)) == [2, 1]


def test_single_k_and_empty_qrels() -> None:
    assert hit_rates({"q": [("a", 1.0)]}, {"q": {"a": 1}}, (1,)) == {1: 100.0}
    assert hit_rates({}, {}, (1, 5)) == {1: 0.0, 5: 0.0}


def test_run_and_qrels_must_cover_the_same_queries() -> None:
    with pytest.raises(ValueError, match="disagree"):
        hit_rates({"q1": []}, {"q1": {"a": 1}, "q2": {"b": 1}})
    with pytest.raises(ValueError, match="disagree"):
        hit_rates_direct({"q1": [], "q9": []}, {"q1": {"a": 1}})


def test_ranx_matches_direct_numpy_on_random_runs_with_ties() -> None:
    rng = np.random.default_rng(7)
    docs = [f"d{i:02d}" for i in range(40)]
    run, qrels = {}, {}
    for q in range(200):
        chosen = rng.choice(len(docs), size=15, replace=False)
        scores = rng.integers(0, 6, size=15).astype(float)  # many ties
        run[f"q{q}"] = [(docs[c], s) for c, s in zip(chosen, scores, strict=True)]
        relevant = rng.choice(len(docs), size=int(rng.integers(1, 4)), replace=False)
        qrels[f"q{q}"] = {docs[r]: 1 for r in relevant}
    ks = (1, 5, 10)
    via_ranx = hit_rates(run, qrels, ks)
    direct = hit_rates_direct(run, qrels, ks)
    assert via_ranx == pytest.approx(direct, abs=1e-9)
    # A plain numpy reimplementation, written independently of first_hit_ranks.
    for k in ks:
        hits = []
        for qid, ranking in run.items():
            ids = np.array([d for d, _ in ranking])
            sc = np.array([s for _, s in ranking])
            order = np.lexsort((ids, -sc))[:k]
            hits.append(bool(set(ids[order]) & set(qrels[qid])))
        assert direct[k] == pytest.approx(100.0 * np.mean(hits))
    assert via_ranx[1] <= via_ranx[5] <= via_ranx[10]


def test_mean_recall_is_the_mean_of_six() -> None:
    t2i = {1: 10.0, 5: 20.0, 10: 30.0}
    i2t = {1: 40.0, 5: 50.0, 10: 60.0}
    assert mean_recall(t2i, i2t) == pytest.approx(35.0)
