"""An evaluation run as a config: checked when made, and `rsrt eval` end to end on Sydney-captions."""

from __future__ import annotations

import json

import pytest

from conftest import BENCHMARKS, run_cli
from rsrt.search.errors import ConfigError
from rsrt.search.evaluation.engine import CONDITIONS, condition_fusion
from rsrt.search.evaluation.run import EvaluationConfig
from rsrt.search.fusion import DEFAULT_WEIGHTS
from rsrt.search.request import Mode


def test_conditions_are_modes_with_their_fusion() -> None:
    assert list(CONDITIONS) == ["lexical", "dense", "hybrid", "hybrid-rrf"]
    assert CONDITIONS["hybrid-rrf"][0] is Mode.HYBRID and CONDITIONS["dense"] == (Mode.DENSE, None)
    minmax, rrf = condition_fusion("hybrid", (0.3, 0.7), 10), condition_fusion("hybrid-rrf", (0.3, 0.7), 10)
    assert (minmax.technique, minmax.weights, minmax.rank_constant) == ("minmax", (0.3, 0.7), 60)
    assert (rrf.technique, rrf.weights, rrf.rank_constant) == ("rrf", DEFAULT_WEIGHTS, 10)
    assert condition_fusion("lexical") is None


def test_config_is_checked_when_made() -> None:
    config = EvaluationConfig("sydney", conditions=["dense", "hybrid"])
    assert config.conditions == ("dense", "hybrid") and config.encoder_backend == "torch"
    assert EvaluationConfig("sydney").conditions == tuple(CONDITIONS)
    with pytest.raises(ConfigError, match=r"unknown mode.*bogus.*choose from lexical"):
        EvaluationConfig("sydney", conditions=["dense", "bogus"])
    with pytest.raises(ConfigError, match="needs --variants"):
        EvaluationConfig("sydney", protocol="standard")
    with pytest.raises(ConfigError, match="unknown protocol"):
        EvaluationConfig("sydney", protocol="kfold")


@pytest.mark.integration
@pytest.mark.slow
def test_rsrt_eval_reproduces_the_sydney_regression_file(cli_env, tmp_path) -> None:
    out = tmp_path / "report"
    result = run_cli(["eval", "--benchmark", "sydney", "--data-dir", str(BENCHMARKS), "--check", "sydney-loo",
                      "--out", str(out)], cli_env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "regression sydney-loo: 6 condition(s) checked, 0 failure(s)" in result.stdout
    data = json.loads((out / "results.json").read_text())
    assert list(data["modes"]) == ["lexical", "dense", "hybrid", "hybrid-rrf", "exact-dense", "exact-bm25"]
    run_id = data["config"].pop("run_id")
    assert len(run_id) == 8 and f"run {run_id}: encoder all-MiniLM-L6-v2 (384-d, torch)" in result.stdout
    assert data["config"] == {"benchmark": "sydney", "protocol": "loo", "weights": list(DEFAULT_WEIGHTS),
                              "rank_constant": 60, "split": "test",
                              "encoder": {"name": "all-MiniLM-L6-v2", "dimension": 384, "backend": "torch"}}
    hybrid = data["modes"]["hybrid"]["config"]
    assert hybrid["fusion"] == {"technique": "minmax", "weights": list(DEFAULT_WEIGHTS), "rank_constant": 60}
    assert (hybrid["mode"], hybrid["hybrid_backend"]) == ("hybrid", "auto")
    assert data["modes"]["dense"]["reference"] == "exact-dense"
