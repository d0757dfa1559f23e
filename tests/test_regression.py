"""Published numbers stay true: RSITMD leave-one-out through the real query layer on the local node."""

from __future__ import annotations

import pytest

from conftest import BENCHMARKS
from rsrt.search.datasets import load_benchmark
from rsrt.search.evaluation.engine import OpenSearchIndexes, OpenSearchRanker
from rsrt.search.evaluation.protocols import loo_protocol
from rsrt.search.evaluation.regression import check_condition, load_regressions
from rsrt.search.evaluation.runner import evaluate
from rsrt.search.fusion import FusionSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def rsitmd_indexes(os_client):
    indexes = OpenSearchIndexes(os_client, prefix="rsrt-regression-rsitmd")
    yield indexes
    indexes.close()


@pytest.mark.parametrize("mode", ["lexical", "dense", "hybrid"])
def test_rsitmd_loo_matches_the_regression_file(rsitmd_indexes, mode):
    spec = load_regressions("rsitmd-loo")
    condition = spec.conditions[f"opensearch-{mode}"]
    protocol = loo_protocol(load_benchmark("rsitmd", "test", BENCHMARKS))
    ranker = OpenSearchRanker(rsitmd_indexes, mode)
    if mode == "hybrid":  # the product default (mappings/search-defaults.json), the condition users get
        assert ranker.fusion == FusionSpec() and condition.extra["default"] is True
        assert condition.fusion == {"technique": FusionSpec().technique, "weights": list(FusionSpec().weights)}
    result = evaluate(protocol, ranker, mode=mode, fetch=20)
    failures = check_condition(condition, result)
    assert not failures, "\n".join(failures)
    if condition.reference:  # the engine loses (almost) nothing to approximation
        reference = spec.conditions[condition.reference].expected["mR"]
        assert abs(result.mr - reference) <= 0.1


@pytest.fixture(scope="module")
def rsitmd_cluster_indexes(os_client):
    """The same indices, with the encoder deployed in the cluster: queries go as plain text (`neural`)."""
    indexes = OpenSearchIndexes(os_client, prefix="rsrt-regression-rsitmd-cluster", embed="cluster")
    yield indexes
    indexes.close()


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_rsitmd_loo_with_cluster_embedding_is_within_0_1_mr_of_client_embedding(rsitmd_cluster_indexes, mode):
    spec = load_regressions("rsitmd-loo")
    condition = spec.conditions[f"opensearch-{mode}-cluster"]
    protocol = loo_protocol(load_benchmark("rsitmd", "test", BENCHMARKS))
    ranker = OpenSearchRanker(rsitmd_cluster_indexes, mode)
    assert mode != "hybrid" or ranker.fusion == FusionSpec()  # the product default
    result = evaluate(protocol, ranker, mode=f"{mode}-cluster", fetch=20)
    failures = check_condition(condition, result)
    assert not failures, "\n".join(failures)
    assert abs(result.mr - spec.conditions[f"opensearch-{mode}"].expected["mR"]) <= 0.1
