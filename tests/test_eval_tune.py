"""Fusion tuning (`rsrt eval tune`): the offline sweep fuses exactly as `fusion.fuse`, its single modes are
the exact rankers, the cache is only reused for the same protocol, defaults are chosen on train splits
only, and the packaged product default is what every front end uses and never loses to a single mode."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import BENCHMARKS
from rsrt.search.datasets import Benchmark, BenchmarkImage
from rsrt.search.errors import ConfigError
from rsrt.search.evaluation import evaluate, load_regressions, loo_protocol
from rsrt.search.evaluation.exact import ExactBM25Ranker, ExactDenseRanker
from rsrt.search.evaluation.metrics import order_ranking
from rsrt.search.evaluation.tune import (
    ExactFusionRanker,
    FusionCandidates,
    GridPoint,
    OfflineRanker,
    TuneResult,
    check_default,
    choose_default,
    collect_candidates,
    sweep,
    tune,
)
from rsrt.search.fusion import (
    DEFAULT_RANK_CONSTANT,
    DEFAULT_TECHNIQUE,
    DEFAULT_WEIGHTS,
    SEARCH_DEFAULTS,
    FusionSpec,
    fuse,
)
from rsrt.search.index import load_mapping_json
from rsrt.search.request import DEFAULT_MODE, Mode, SearchRequest

WORDS = ("green", "dense", "trees", "river", "bridge", "many", "buildings", "road", "cars", "parked", "white",
         "airplane", "runway", "beach", "sea", "waves", "farmland", "square", "two", "storage", "tanks")


def _hashed(texts: Sequence[str]) -> np.ndarray:
    """A deterministic toy encoder: words hashed into 12 dimensions (ties and near-ties on purpose)."""
    out = np.zeros((len(texts), 12), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, zlib.crc32(word.encode()) % 12] += 1.0
        out[row, 11] += 0.01
    return out


@pytest.fixture(scope="module")
def toy() -> Benchmark:
    rng = random.Random(7)
    images = [BenchmarkImage(f"img{i:02d}", f"img{i:02d}.jpg",
                             [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(5)])
              for i in range(24)]
    return Benchmark("toy", "train", images)


@pytest.fixture(scope="module")
def toy_candidates(toy: Benchmark) -> FusionCandidates:
    return collect_candidates(loo_protocol(toy), _hashed, depth=8)  # a short depth: lists cut, some absent


@pytest.mark.parametrize("spec", [FusionSpec("minmax", (0.5, 0.5)), FusionSpec("minmax", (0.2, 0.8)),
                                  FusionSpec("minmax", (0.0, 1.0)), FusionSpec("minmax", (1.0, 0.0)),
                                  FusionSpec("rrf", rank_constant=10), FusionSpec("rrf", rank_constant=60)])
def test_offline_fusion_is_exactly_fusion_fuse(toy: Benchmark, toy_candidates: FusionCandidates,
                                               spec: FusionSpec) -> None:
    protocol = loo_protocol(toy)
    ranker = OfflineRanker(toy_candidates, spec)
    compared = 0
    for task in protocol.tasks:
        texts = [q.text for q in task.queries]
        lists = toy_candidates.lists(task.corpus.corpus_id, task.direction, texts)
        ranker.index(task.corpus)
        offline = ranker.rank(texts, 20, task.direction)
        for row in range(len(texts)):
            lexical = [(lists.ids[c], float(s)) for c, s in zip(lists.lex_idx[row], lists.lex_score[row], strict=True)
                       if c >= 0]
            dense = [(lists.ids[c], float(s)) for c, s in zip(lists.dense_idx[row], lists.dense_score[row],
                                                             strict=True) if c >= 0]
            expected = [(doc, score) for doc, score, _ in fuse([lexical, dense], spec)[:20]]
            assert offline[row] == expected
            compared += 1
    assert compared == 2 * 5 * 24


def test_candidate_lists_are_the_exact_rankers_lists(toy: Benchmark, toy_candidates: FusionCandidates) -> None:
    protocol = loo_protocol(toy)
    offline = evaluate(protocol, OfflineRanker(toy_candidates, "lexical"), depth=8)
    reference = evaluate(protocol, ExactBM25Ranker(), depth=8)
    assert offline.mr == reference.mr
    for mine, theirs in zip(offline.tasks, reference.tasks, strict=True):
        assert {q: [d for d, _ in r] for q, r in mine.run.items()} == {
            q: [d for d, _ in r] for q, r in theirs.run.items()}
    # Dense is on the engine's scale, (1 + cos) / 2 in float32: near-equal cosines become ties, settled by id.
    dense = ExactDenseRanker(_hashed)
    offline = evaluate(protocol, OfflineRanker(toy_candidates, "dense"), depth=8)
    for task, mine in zip(protocol.tasks, offline.tasks, strict=True):
        dense.index(task.corpus)
        rankings = dense.rank([q.text for q in task.queries], 16, task.direction)
        for query, ranking in zip(task.queries, rankings, strict=True):
            engine = [(d, float((np.float32(1) + np.float32(s)) / np.float32(2))) for d, s in ranking]
            assert [d for d, _ in mine.run[query.query_id]] == [d for d, _ in order_ranking(engine, 8)]


def test_the_cache_is_reused_only_for_the_same_protocol(tmp_path: Path, toy: Benchmark,
                                                        toy_candidates: FusionCandidates) -> None:
    path = tmp_path / "toy.npz"
    toy_candidates.save(path)
    protocol = loo_protocol(toy)
    loaded = FusionCandidates.load(path, protocol)
    assert loaded is not None
    for key, lists in toy_candidates.tasks.items():
        other = loaded.tasks[key]
        assert other.ids == lists.ids and np.array_equal(other.lex_idx, lists.lex_idx)
        assert np.array_equal(other.dense_score, lists.dense_score)
    changed = Benchmark("toy", "train", [BenchmarkImage(i.image_id, i.filename, [c + " sea" for c in i.captions])
                                         for i in toy.images])
    assert FusionCandidates.load(path, loo_protocol(changed)) is None
    calls: list[int] = []

    def counting(texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        return _hashed(texts)

    collect_candidates(protocol, counting, depth=8, cache=path)
    assert calls == []  # the cached lists, no encoding
    collect_candidates(loo_protocol(changed), counting, depth=8, cache=path)
    assert calls  # other queries: computed again (and the cache rewritten)
    assert FusionCandidates.load(path, loo_protocol(changed)) is not None


def test_the_sweep_covers_the_grid_and_marks_the_best(toy: Benchmark, toy_candidates: FusionCandidates) -> None:
    grid = sweep(loo_protocol(toy), toy_candidates)
    names = [p.name for p in grid]
    assert names[:2] == ["lexical", "dense"]
    assert len([p for p in grid if p.technique == "minmax"]) == 21
    assert [p.rank_constant for p in grid if p.technique == "rrf"] == [10, 20, 40, 60, 80, 100]
    result = TuneResult("toy", "train", "loo", "hashed", "2026-12-01", "0.1.0", 8, tuple(grid))
    best = result.best("minmax")
    assert best.mr == max(p.mr for p in grid if p.technique == "minmax")
    data = result.to_dict()
    assert data["provenance"]["split"] == "train" and data["provenance"]["encoder"] == "hashed"
    assert data["best_minmax"]["weights"] == list(best.weights)
    assert len(data["grid"]) == len(grid)


def _result(benchmark: str, split: str, scores: dict[str, float]) -> TuneResult:
    grid = [GridPoint("lexical", "lexical", 40.0), GridPoint("dense", "dense", 41.0)]
    grid += [GridPoint(name, "minmax", mr, weights=(float(name.split("-")[1].split("/")[0]),
                                                   float(name.split("/")[1]))) for name, mr in scores.items()]
    return TuneResult(benchmark, split, "loo", "e", "d", "v", 100, tuple(grid))


def test_the_default_is_chosen_on_the_average_of_train_splits_never_on_a_test_split() -> None:
    a = _result("a", "train", {"minmax-0.2/0.8": 42.0, "minmax-0.5/0.5": 43.0})
    b = _result("b", "train", {"minmax-0.2/0.8": 42.0, "minmax-0.5/0.5": 40.0})
    choice = choose_default([a, b])
    assert choice.point.name == "minmax-0.2/0.8" and choice.mean_mr == 42.0
    assert choice.per_split == {"a-train": 42.0, "b-train": 42.0}
    with pytest.raises(ConfigError, match="never chosen on a test split"):
        choose_default([a, _result("c", "test", {"minmax-0.2/0.8": 50.0, "minmax-0.5/0.5": 40.0})])
    # equal means: the smaller lexical weight (nearest dense) wins
    tie = _result("a", "train", {"minmax-0.2/0.8": 42.0, "minmax-0.3/0.7": 42.0})
    assert choose_default([tie]).point.name == "minmax-0.2/0.8"
    ok, mr, single = check_default(choice.point, _result("t", "test", {"minmax-0.2/0.8": 41.0}))
    assert (ok, mr, single.name) == (True, 41.0, "dense")
    assert not check_default(choice.point, _result("t", "test", {"minmax-0.2/0.8": 40.9}))[0]


def test_the_packaged_default_is_what_requests_and_the_named_pipeline_use() -> None:
    assert SEARCH_DEFAULTS["mode"] == DEFAULT_MODE.value
    request = SearchRequest("harbour")
    assert request.mode is DEFAULT_MODE
    assert (request.fusion.technique, request.fusion.weights, request.fusion.rank_constant) == (
        DEFAULT_TECHNIQUE, DEFAULT_WEIGHTS, DEFAULT_RANK_CONSTANT)
    named = load_mapping_json("search-pipelines/rsrt-hybrid-minmax.json")["phase_results_processors"]
    assert named == FusionSpec("minmax").pipeline()["phase_results_processors"]
    assert "tuned_on" in SEARCH_DEFAULTS["provenance"] and "checked_on" in SEARCH_DEFAULTS["provenance"]
    assert all(s.endswith("train") for s in SEARCH_DEFAULTS["provenance"]["tuned_on"])


def test_search_and_serve_take_the_packaged_default() -> None:
    from rsrt.cli_search import search_command
    from rsrt.cli_serve import serve
    from rsrt.search.api.app import ApiConfig
    from rsrt.search.api.params import SearchParams, SearchPolicy, parse_search

    defaults = {p.name: p.default for p in search_command.params}
    assert defaults["mode"] == DEFAULT_MODE.value and defaults["fusion"] == DEFAULT_TECHNIQUE
    assert defaults["rank_constant"] == DEFAULT_RANK_CONSTANT
    assert {p.name: p.default for p in serve.params}["default_mode"] == DEFAULT_MODE.value
    assert ApiConfig().default_mode == DEFAULT_MODE
    policy = SearchPolicy(DEFAULT_MODE.value, 100, 100)
    parsed = parse_search(SearchParams(q="harbour"), policy, lambda token, digest: 0)
    assert parsed.mode == DEFAULT_MODE.value and parsed.fusion == FusionSpec()
    for technique in ("minmax", "rrf"):  # asked for by name: that technique, with the default's other settings
        asked = parse_search(SearchParams(q="harbour", fusion=technique), policy, lambda token, digest: 0)
        assert asked.fusion == FusionSpec(technique)


def test_the_packaged_default_matches_its_regression_and_beats_every_single_mode_on_sydney_test(
        tmp_path: Path) -> None:
    """The default, exactly (offline fusion of the exact lists), on the smallest test split of ../shared/."""
    result = tune("sydney", "test", data_dir=str(BENCHMARKS), cache_dir=tmp_path)
    point = next(p for p in result.grid if p.fusion() == FusionSpec())
    ok, mr, single = check_default(point, result)
    assert ok, f"the default {point.name} (mR {mr:.2f}) loses to {single.name} (mR {single.mr:.2f})"
    condition = load_regressions("sydney-loo").conditions["exact-default"]
    assert condition.mode == DEFAULT_MODE.value and condition.extra["weights"] == list(DEFAULT_WEIGHTS)
    assert abs(mr - condition.expected["mR"]) <= condition.tolerance


def test_tune_command_writes_the_grid_and_the_chosen_default(tmp_path: Path) -> None:
    from rsrt.cli_eval_tune import tune_command

    runner = CliRunner()
    result = runner.invoke(tune_command, ["--benchmark", "sydney", "--split", "val", "--data-dir", str(BENCHMARKS),
                                          "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "<- best" in result.output and "chosen default: " in result.output
    data = json.loads((tmp_path / "tune-sydney-val.json").read_text())
    assert data["provenance"]["split"] == "val" and data["provenance"]["encoder"] == "all-MiniLM-L6-v2"
    assert len(data["grid"]) == 2 + 21 + 6
    chosen = json.loads((tmp_path / "default.json").read_text())
    assert chosen["provenance"]["chosen_on"] == ["sydney val"]
    best_single = max(data["single_modes"].values())
    winners = [p["mr"] for p in data["grid"] if p["technique"] in ("minmax", "rrf") and p["mr"] > best_single]
    if winners:  # the best fusion that beats both single modes
        assert chosen["default"]["technique"] in ("minmax", "rrf")
        assert chosen["default"]["pooled_mR"] == max(winners)
    else:
        assert chosen["default"]["technique"] in ("lexical", "dense")
    assert list((tmp_path / "cache").glob("*.npz"))

    refused = runner.invoke(tune_command, ["--benchmark", "nope", "--data-dir", str(tmp_path)])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "nope" in refused.output


def test_rsrt_eval_tune_is_registered() -> None:
    from rsrt.cli import main

    result = CliRunner().invoke(main, ["eval", "tune", "--help"])
    assert result.exit_code == 0, result.output
    assert "--split" in result.output and "--encoder" in result.output
    assert Mode.HYBRID.value in {m.value for m in Mode}


def test_exact_default_ranker_is_the_sweep_point_of_the_same_fusion(toy: Benchmark,
                                                                   toy_candidates: FusionCandidates) -> None:
    protocol = loo_protocol(toy)
    for spec in (FusionSpec("minmax", (0.3, 0.7)), FusionSpec("rrf", rank_constant=20)):
        swept = evaluate(protocol, OfflineRanker(toy_candidates, spec), fetch=20)
        direct = evaluate(protocol, ExactFusionRanker(_hashed, spec, depth=8), fetch=20)
        assert direct.mr == swept.mr
        assert [t.run for t in direct.tasks] == [t.run for t in swept.tasks]
