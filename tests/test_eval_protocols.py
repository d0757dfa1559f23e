"""Protocol construction on a small synthetic benchmark, and the runner with a scripted ranker."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from rsrt.search.datasets import Benchmark, BenchmarkImage
from rsrt.search.errors import ConfigError, RsrtError
from rsrt.search.evaluation import (
    Corpus,
    Direction,
    Doc,
    Ranker,
    Task,
    build_protocol,
    evaluate,
    loo_protocol,
    standard_protocol,
    variants_from_records,
)
from rsrt.search.schema import ImageRecord, Variant


def _bench(n_images: int = 3, n_captions: int = 5) -> Benchmark:
    images = [
        BenchmarkImage(f"img{i}", f"img{i}.tif", [f"image {i} caption {j}" for j in range(n_captions)])
        for i in range(n_images)
    ]
    # Captions repeat across images in real data: make one duplicate.
    images[1].captions[3] = images[0].captions[3]
    return Benchmark("toy", "test", images)


def test_loo_folds_queries_and_corpus() -> None:
    bench = _bench()
    protocol = loo_protocol(bench)
    assert protocol.name == "loo"
    assert protocol.folds() == [0, 1, 2, 3, 4]
    assert protocol.directions() == ["t2i", "i2t"]
    assert len(protocol.tasks) == 10
    for task in protocol.tasks:
        f = task.fold
        assert [q.query_id for q in task.queries] == [f"img{i}#{f}" for i in range(3)]
        assert [q.text for q in task.queries] == [img.captions[f] for img in bench.images]
        ids = [d.doc_id for d in task.corpus.docs]
        assert len(ids) == 12 and all(not i.endswith(f"#{f}") for i in ids)
        assert task.corpus.corpus_id == f"toy-test-loo-f{f}"
        # Caption-only variants are the plain caption text (no "Caption:" label).
        assert all(d.text == d.fields["caption"] == d.lexical_text for d in task.corpus.docs)
    t2i, i2t = protocol.tasks[0], protocol.tasks[1]
    assert t2i.corpus is i2t.corpus  # one index per fold serves both directions
    assert t2i.qrels["img0#0"] == {"img0": 1}
    assert i2t.qrels["img0#0"] == {"img0#1": 1, "img0#2": 1, "img0#3": 1, "img0#4": 1}
    # The duplicated text stays, owned by both images.
    owners = {d.image_id for d in t2i.corpus.docs if d.text == "image 0 caption 3"}
    assert owners == {"img0", "img1"}


def test_loo_needs_enough_captions() -> None:
    with pytest.raises(ConfigError, match="needs 5 captions"):
        loo_protocol(_bench(n_captions=4))
    assert len(loo_protocol(_bench(n_captions=4), folds=4).tasks) == 8


def test_standard_protocol() -> None:
    bench = _bench(n_images=2)
    variants = {
        "img0": ["a harbour", Variant(one_sentence="ships", feature="two ships; port")],
        "img1": [{"one_sentence_caption": "a field"}],
        "extra": ["a distractor"],
    }
    protocol = standard_protocol(bench, variants=variants, image_queries={"img0": "q zero", "img1": ["q one", "q 1"]})
    t2i, i2t = protocol.tasks
    assert (t2i.direction, i2t.direction) == ("t2i", "i2t")
    assert [d.doc_id for d in t2i.corpus.docs] == ["img0#v0", "img0#v1", "img1#v0", "extra#v0"]
    assert t2i.corpus.docs[1].text == "Summary: ships\nFeatures: two ships; port"
    assert t2i.corpus.docs[1].lexical_text == "ships\ntwo ships; port"
    assert len(t2i.queries) == bench.n_captions
    assert t2i.qrels["img1#2"] == {"img1": 1}
    assert [q.query_id for q in i2t.queries] == ["img0#q0", "img1#q0", "img1#q1"]
    assert len(i2t.corpus.docs) == bench.n_captions
    assert i2t.qrels["img1#q1"] == {f"img1#{j}": 1 for j in range(5)}
    assert any("distractor" in note for note in protocol.notes)


def test_standard_protocol_coverage() -> None:
    bench = _bench(n_images=2)
    with pytest.raises(ConfigError, match="1 of 2"):
        standard_protocol(bench, variants={"img0": ["x"]})
    protocol = standard_protocol(bench, variants={"img0": ["x"]}, allow_missing=True)
    assert "without variants" in protocol.notes[0]
    with pytest.raises(ConfigError):
        standard_protocol(bench)
    records = [
        ImageRecord("img0", variants=[Variant(caption="x")]),
        ImageRecord("img1", variants=[Variant(caption="y")]),
    ]
    assert variants_from_records(records)["img1"][0].caption == "y"
    assert build_protocol("standard", bench, variants=variants_from_records(records)).name == "standard"
    with pytest.raises(ConfigError):
        build_protocol("bogus", bench)


def test_data_validation() -> None:
    doc = Doc("a#0", "a", "text")
    with pytest.raises(ValueError, match="duplicate doc id"):
        Corpus("c", (doc, doc))
    corpus = Corpus("c", (doc,))
    with pytest.raises(ValueError, match="no relevant"):
        from rsrt.search.evaluation import Query

        Task("t2i", 0, corpus, (Query("q", "text", "a"),), {})


class ScriptedRanker:
    """Answers from a table keyed by query text; records what it was asked."""

    name = "scripted"

    def __init__(self, answers: dict[tuple[Direction, str], list[tuple[str, float]]]) -> None:
        self.answers = answers
        self.indexed: list[str] = []
        self.asked_k: list[int] = []

    def index(self, corpus: Corpus) -> None:
        self.indexed.append(corpus.corpus_id)

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        self.asked_k.append(k)
        return [self.answers.get((direction, q), []) for q in queries]


def test_runner_with_a_scripted_ranker() -> None:
    bench = Benchmark(
        "toy",
        "test",
        [BenchmarkImage("a", "a.tif", ["a0", "a1"]), BenchmarkImage("b", "b.tif", ["b0", "b1"])],
    )
    protocol = loo_protocol(bench, folds=2)
    answers: dict[tuple[Direction, str], list[tuple[str, float]]] = {
        # fold 0: a's query ties a with b (a wins by id), b's query ranks b second.
        ("t2i", "a0"): [("b", 1.0), ("a", 1.0)],
        ("t2i", "b0"): [("a", 0.9), ("b", 0.1)],
        ("i2t", "a0"): [("a#1", 0.5)],
        ("i2t", "b0"): [("a#1", 0.7), ("b#1", 0.2)],
        # fold 1: everything right.
        ("t2i", "a1"): [("a", 1.0)],
        ("t2i", "b1"): [("b", 1.0)],
        ("i2t", "a1"): [("a#0", 1.0)],
        ("i2t", "b1"): [("b#0", 1.0)],
    }
    ranker = ScriptedRanker(answers)
    assert isinstance(ranker, Ranker)
    result = evaluate(protocol, ranker, ks=(1, 5), fetch=20, reference="exact-dense")
    assert ranker.indexed == ["toy-test-loo-f0", "toy-test-loo-f1"]  # once per fold, not per task
    assert set(ranker.asked_k) == {20}
    assert result.mode == "scripted" and result.reference == "exact-dense"
    assert result.per_fold("t2i") == {0: {1: 50.0, 5: 100.0}, 1: {1: 100.0, 5: 100.0}}
    assert result.recall("t2i") == {1: 75.0, 5: 100.0}
    assert result.recall("i2t") == {1: 75.0, 5: 100.0}
    assert result.mr == pytest.approx(87.5)
    assert result.fold_mr() == {0: pytest.approx(75.0), 1: pytest.approx(100.0)}
    assert result.tasks[0].run["a#0"] == [("a", 1.0), ("b", 1.0)]  # ties re-ordered by id
    summary = result.summary()
    assert summary["directions"]["t2i"]["per_fold"]["0"] == {"R@1": 50.0, "R@5": 100.0}


def test_runner_rejects_wrong_ids() -> None:
    bench = Benchmark("toy", "test", [BenchmarkImage("a", "a.tif", ["a0", "a1"])])
    protocol = loo_protocol(bench, folds=2)
    with pytest.raises(RsrtError, match="not image ids"):
        evaluate(protocol, ScriptedRanker({("t2i", "a0"): [("a#1", 1.0)]}))
    with pytest.raises(RsrtError, match="repeats an id"):
        evaluate(protocol, ScriptedRanker({("t2i", "a0"): [("a", 1.0), ("a", 0.5)]}))


class _EveryImage:
    """Ranks every image of the corpus, equally: a hit whenever the query's image is in the corpus."""

    def index(self, corpus: Corpus) -> None:
        self.ids = corpus.image_ids()

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        return [[(i, 1.0) for i in self.ids[:k]] for _ in queries]


def test_allow_missing_keeps_uncovered_images_unretrievable(tmp_path) -> None:
    from rsrt.search.evaluation.report import write_report

    bench = _bench(n_images=5)
    variants = {f"img{i}": [f"vlm text {i}"] for i in range(4)}  # img4 has none
    with pytest.raises(ConfigError) as info:
        standard_protocol(bench, variants=variants)
    assert "1 of 5" in str(info.value) and "--allow-missing" in str(info.value)
    protocol = standard_protocol(bench, variants=variants, allow_missing=True)
    assert protocol.missing == {"t2i": 1} and protocol.summary()["images_missing"] == {"t2i": 1}
    # img4's five captions are still queries, and miss: 20 of 25 hit, not 20 of 20 (never inflated).
    result = evaluate(protocol, _EveryImage(), mode="every")
    assert result.tasks[0].n_queries == 25 and result.recall("t2i")[10] == 80.0
    paths = write_report([result], tmp_path, protocol=protocol)
    assert "images with none (t2i): 1" in paths.markdown.read_text()
    assert json.loads(paths.json.read_text())["protocol"]["images_missing"] == {"t2i": 1}
