"""Benchmark evaluation that needs no cluster: protocols as data, metrics, the exact reference, reports.

The OpenSearch query layer plugs in as a `Ranker`; `evaluate(protocol, ranker)` scores it exactly
as it scores the in-memory reference (`ExactDenseRanker`, `ExactBM25Ranker`). A whole run against a
cluster (`EvaluationConfig`, `run_evaluation`) is in `run.py`, not imported here.
"""

from .metrics import DEFAULT_KS, hit_rates, hit_rates_direct, mean_recall, order_ranking
from .protocols import (
    DIRECTIONS,
    Corpus,
    Direction,
    Doc,
    EvalProtocol,
    Query,
    Ranker,
    Task,
    build_protocol,
    loo_protocol,
    standard_protocol,
    variants_from_records,
)
from .regression import (
    RegressionCondition,
    RegressionSpec,
    available_regressions,
    check_condition,
    check_results,
    load_regressions,
)
from .report import format_table, results_to_json, write_report
from .runner import ModeResult, TaskResult, evaluate

__all__ = [
    "DEFAULT_KS",
    "DIRECTIONS",
    "Corpus",
    "Direction",
    "Doc",
    "EvalProtocol",
    "ModeResult",
    "Query",
    "Ranker",
    "RegressionCondition",
    "RegressionSpec",
    "Task",
    "TaskResult",
    "available_regressions",
    "build_protocol",
    "check_condition",
    "check_results",
    "evaluate",
    "format_table",
    "hit_rates",
    "hit_rates_direct",
    "load_regressions",
    "loo_protocol",
    "mean_recall",
    "order_ranking",
    "results_to_json",
    "standard_protocol",
    "variants_from_records",
    "write_report",
]
