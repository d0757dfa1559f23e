"""R@K for both directions and mR, computed the way the remote-sensing retrieval literature does.

Every "R@K" here is a **hit rate** (success@K): the share of queries with at least one relevant
item in the top K, in percent. For T2I (one relevant image per query) it equals recall@K; for I2T
(several relevant captions per image) it does not, and the literature means the hit rate.

**Deterministic tie-breaking**: before any metric, each ranking is re-ordered by descending score
and, for equal scores, by ascending id (plain string order). Captions repeat across images, so
ties are common (two images owning the same text score exactly alike), and an engine's own tie
order (shard, segment, insertion) must not change the numbers.

ranx (`hit_rate@k`) computes the reported values; `hit_rates_direct` is an independent numpy
computation the tests cross-check it against.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Ranking = Sequence[tuple[str, float]]
Run = Mapping[str, Ranking]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def order_ranking(ranking: Iterable[tuple[str, float]], depth: int | None = None) -> list[tuple[str, float]]:
    """Sorts by score (descending), then id (ascending) for ties; keeps the first `depth`."""
    ordered = sorted(((str(i), float(s)) for i, s in ranking), key=lambda pair: (-pair[1], pair[0]))
    return ordered if depth is None else ordered[:depth]


def order_run(run: Run, depth: int | None = None) -> dict[str, list[tuple[str, float]]]:
    return {qid: order_ranking(ranking, depth) for qid, ranking in run.items()}


def _check_queries(run: Run, qrels: Qrels) -> None:
    missing = [q for q in qrels if q not in run]
    extra = [q for q in run if q not in qrels]
    if missing or extra:
        raise ValueError(
            f"run and qrels disagree: {len(missing)} qrels quer(ies) without ranking "
            f"(e.g. {missing[:3]}), {len(extra)} ranked quer(ies) without qrels (e.g. {extra[:3]})"
        )


def hit_rates(run: Run, qrels: Qrels, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Hit rate (success@K) in percent for each K, via ranx, after deterministic tie-breaking.

    Every query of `qrels` must have a ranking (possibly empty) and vice versa.
    """
    _check_queries(run, qrels)
    if not qrels:
        return {k: 0.0 for k in ks}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba type-safety chatter from ranx's kernels
        from ranx import Qrels as RanxQrels
        from ranx import Run as RanxRun
        from ranx import evaluate

        ranx_run: dict[str, dict[str, float]] = {}
        for qid, ranking in run.items():
            ordered = order_ranking(ranking)
            # Scores become strictly decreasing ranks so ranx cannot reorder ties its own way.
            ranx_run[qid] = {doc: float(len(ordered) - r) for r, (doc, _) in enumerate(ordered)}
            if not ranx_run[qid]:
                ranx_run[qid] = {"\x00no-result": 0.0}  # ranx needs one entry; it is never relevant
        ranx_qrels = {qid: {doc: int(rel) for doc, rel in rels.items()} for qid, rels in qrels.items()}
        scores = evaluate(
            RanxQrels.from_dict(ranx_qrels),
            RanxRun.from_dict(ranx_run),
            [f"hit_rate@{k}" for k in ks],
            make_comparable=False,
        )
    if len(ks) == 1:
        scores = {f"hit_rate@{ks[0]}": scores}
    return {k: 100.0 * float(scores[f"hit_rate@{k}"]) for k in ks}


def first_hit_ranks(run: Run, qrels: Qrels) -> np.ndarray:
    """Per query (in `qrels` order), the 1-based rank of the first relevant item; 0 if none."""
    _check_queries(run, qrels)
    ranks = np.zeros(len(qrels), dtype=np.int64)
    for row, (qid, rels) in enumerate(qrels.items()):
        relevant = {doc for doc, rel in rels.items() if rel > 0}
        for position, (doc, _) in enumerate(order_ranking(run[qid]), start=1):
            if doc in relevant:
                ranks[row] = position
                break
    return ranks


def hit_rates_direct(run: Run, qrels: Qrels, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """The same numbers as `hit_rates` without ranx: a plain numpy count over first-hit ranks."""
    ranks = first_hit_ranks(run, qrels)
    if ranks.size == 0:
        return {k: 0.0 for k in ks}
    return {k: 100.0 * float(np.mean((ranks > 0) & (ranks <= k))) for k in ks}


def mean_recall(t2i: Mapping[int, float], i2t: Mapping[int, float], ks: Sequence[int] = DEFAULT_KS) -> float:
    """mR: the mean of R@K over both directions and all K (six numbers for K = 1, 5, 10)."""
    values = [t2i[k] for k in ks] + [i2t[k] for k in ks]
    return float(np.mean(values))
