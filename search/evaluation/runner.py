"""Scores a protocol with a ranker: index each corpus once, rank each task's queries, compute metrics.

The result (`ModeResult`) keeps every ranking so report.py can write TREC run files, and every
per-fold number so reports show the spread, not only the mean.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RsrtError
from .metrics import DEFAULT_KS, hit_rates, mean_recall, order_ranking
from .protocols import DIRECTIONS, Direction, EvalProtocol, Ranker, Task

# ranx compiles its metrics with numba, which aborts the process when two threads compile at once
# (two evaluations in one process, e.g. `rsrt serve` or a test): one metric computation at a time.
_METRICS_LOCK = threading.Lock()


def _hit_rates(run: Mapping[str, Sequence[tuple[str, float]]], qrels: Mapping[str, Mapping[str, int]],
               ks: Sequence[int]) -> dict[int, float]:
    with _METRICS_LOCK:
        return hit_rates(run, qrels, ks)


@dataclass
class TaskResult:
    """One direction of one fold: hit rates (percent) per K and the ordered rankings."""

    direction: Direction
    fold: int
    corpus_id: str
    n_queries: int
    recall: dict[int, float]
    run: dict[str, list[tuple[str, float]]] = field(repr=False, default_factory=dict)
    qrels: Mapping[str, Mapping[str, int]] = field(repr=False, default_factory=dict)


@dataclass
class ModeResult:
    """Everything measured for one mode (ranker) on one protocol."""

    mode: str
    protocol: str
    benchmark: str
    split: str
    ks: tuple[int, ...]
    tasks: list[TaskResult]
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    reference: str | None = None  # the mode this one is compared against in reports

    def directions(self) -> list[Direction]:
        return [d for d in DIRECTIONS if any(t.direction == d for t in self.tasks)]

    def folds(self) -> list[int]:
        return sorted({t.fold for t in self.tasks})

    def per_fold(self, direction: Direction) -> dict[int, dict[int, float]]:
        return {t.fold: dict(t.recall) for t in self.tasks if t.direction == direction}

    def recall(self, direction: Direction) -> dict[int, float]:
        """R@K of one direction, averaged over folds (folds have equal query counts in loo)."""
        folds = self.per_fold(direction)
        return {k: float(np.mean([fold[k] for fold in folds.values()])) for k in self.ks}

    @property
    def mr(self) -> float | None:
        """mR in percent; None when the protocol has only one direction."""
        if set(self.directions()) != set(DIRECTIONS):
            return None
        return mean_recall(self.recall("t2i"), self.recall("i2t"), self.ks)

    def fold_mr(self) -> dict[int, float]:
        if self.mr is None:
            return {}
        t2i, i2t = self.per_fold("t2i"), self.per_fold("i2t")
        return {f: mean_recall(t2i[f], i2t[f], self.ks) for f in self.folds() if f in t2i and f in i2t}

    def summary(self) -> dict[str, Any]:
        """Every number, JSON-ready (K keys become "R@K")."""

        def named(values: Mapping[int, float]) -> dict[str, float]:
            return {f"R@{k}": round(v, 6) for k, v in values.items()}

        return {
            "mode": self.mode,
            "protocol": self.protocol,
            "benchmark": self.benchmark,
            "split": self.split,
            "reference": self.reference,
            "seconds": round(self.seconds, 3),
            "config": self.config,
            "mR": None if self.mr is None else round(self.mr, 6),
            "mR_per_fold": {str(f): round(v, 6) for f, v in self.fold_mr().items()},
            "directions": {
                d: {
                    "mean": named(self.recall(d)),
                    "per_fold": {str(f): named(v) for f, v in self.per_fold(d).items()},
                    "n_queries_per_fold": {str(t.fold): t.n_queries for t in self.tasks if t.direction == d},
                }
                for d in self.directions()
            },
        }


def _check_ranking(task: Task, ranking: Sequence[tuple[str, float]], valid: set[str], qid: str) -> None:
    ids = [doc for doc, _ in ranking]
    if len(set(ids)) != len(ids):
        raise RsrtError(f"{task.key}: ranking for {qid} repeats an id (t2i must give each image once)")
    unknown = [doc for doc in ids if doc not in valid]
    if unknown:
        kind = "image ids" if task.direction == "t2i" else "doc ids"
        raise RsrtError(f"{task.key}: ranking for {qid} has ids that are not {kind} of the corpus: {unknown[:3]}")


def evaluate(
    protocol: EvalProtocol,
    ranker: Ranker,
    *,
    mode: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    depth: int | None = None,
    fetch: int | None = None,
    config: Mapping[str, Any] | None = None,
    reference: str | None = None,
) -> ModeResult:
    """Runs every task of `protocol` through `ranker`.

    `depth` (default max K) is how many results are kept per query, after re-ordering ties by id;
    `fetch` (default `depth`) is how many are asked of the ranker: ask an engine with its own tie
    order for more than `depth` so ties at the cut-off are settled by id here, not by the engine.
    """
    ks = tuple(sorted(ks))
    depth = depth or max(ks)
    fetch = max(fetch or depth, depth)
    started = time.perf_counter()
    indexed: str | None = None
    results: list[TaskResult] = []
    for task in protocol.tasks:
        if task.corpus.corpus_id != indexed:
            ranker.index(task.corpus)
            indexed = task.corpus.corpus_id
        rankings = ranker.rank([q.text for q in task.queries], fetch, task.direction)
        if len(rankings) != len(task.queries):
            raise RsrtError(f"{task.key}: ranker gave {len(rankings)} rankings for {len(task.queries)} queries")
        valid = set(task.corpus.image_ids()) if task.direction == "t2i" else {d.doc_id for d in task.corpus.docs}
        run: dict[str, list[tuple[str, float]]] = {}
        for query, ranking in zip(task.queries, rankings, strict=True):
            _check_ranking(task, ranking, valid, query.query_id)
            run[query.query_id] = order_ranking(ranking, depth)
        results.append(
            TaskResult(
                task.direction,
                task.fold,
                task.corpus.corpus_id,
                len(task.queries),
                _hit_rates(run, task.qrels, ks),
                run,
                task.qrels,
            )
        )
    return ModeResult(
        mode=mode or getattr(ranker, "name", type(ranker).__name__),
        protocol=protocol.name,
        benchmark=protocol.benchmark,
        split=protocol.split,
        ks=ks,
        tasks=results,
        config=dict(config or {}),
        seconds=time.perf_counter() - started,
        reference=reference,
    )
