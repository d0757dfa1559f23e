"""Fusion tuning on a benchmark's train split: every min-max weight and RRF constant, exactly and fast.

Each query's two candidate lists are computed once per split with the exact rankers (`exact.py`,
which equal the engine): the best `candidates` (100, as `rsrt eval`) by cosine and by BM25 (BM25
only returns matching texts). Dense scores are put on the engine's scale ((1 + cos) / 2, float32)
and both lists are min-max normalised per query over their own hits, exactly as `fusion.fuse`
does; the sweep then only re-combines cached numbers (vectorised, the same float32 arithmetic as
`fuse`), and every grid point is scored by the same `evaluate` / metrics code as `rsrt eval`.

`tune(...)` gives a `TuneResult` (best min-max weights, best RRF constant, their mR, the whole grid
and its provenance); `choose_default(results)` picks the one fusion best on average over several
train splits. Test splits are for checking a choice (`check_default`), never for making it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..fusion import MIN_SCORE, FusionSpec
from .exact import CachedEncoder, ExactBM25Ranker, ExactDenseRanker, SentenceTransformerEncoder
from .protocols import Direction, EvalProtocol, Task, loo_protocol
from .runner import ModeResult, evaluate

__all__ = [
    "LEXICAL_WEIGHTS",
    "RANK_CONSTANTS",
    "DefaultChoice",
    "ExactFusionRanker",
    "FusionCandidates",
    "GridPoint",
    "TuneResult",
    "check_default",
    "choose_default",
    "collect_candidates",
    "sweep",
    "tune",
]

LEXICAL_WEIGHTS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))  # dense = 1 - lexical
RANK_CONSTANTS: tuple[int, ...] = (10, 20, 40, 60, 80, 100)
CANDIDATES = 100  # per sub-query, as `rsrt eval --candidates` and SearchRequest.DEFAULT_CANDIDATES
FETCH = 20  # ranks kept per query before the metrics settle ties by id (as run.FETCH)
_BATCH = 256


@dataclass
class TaskLists:
    """One task's candidate lists: column indices (-1 = none) and raw scores, best first, per query."""

    ids: list[str]
    texts: list[str]
    lex_idx: np.ndarray
    lex_score: np.ndarray
    dense_idx: np.ndarray
    dense_score: np.ndarray
    _union: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    def union(self) -> tuple[np.ndarray, ...]:
        """(column, lexical part, dense part, lexical rank, dense rank, valid) over both lists, per query.

        Weight-independent, so computed once: parts are the min-max normalised scores (0 when the
        column is absent from that list, as `fuse` counts it), ranks are 1-based (0 when absent).
        """
        if self._union is None:
            lex_norm, dense_norm = _min_max_rows(self.lex_score, self.lex_idx), _min_max_rows(
                self.dense_score, self.dense_idx)
            n, depth = self.lex_idx.shape
            ranks = np.broadcast_to(np.arange(1, depth + 1, dtype=np.int32), (n, depth))
            sentinel = np.int64(len(self.ids) + 1)
            cols = np.concatenate([self.lex_idx, self.dense_idx], axis=1).astype(np.int64)
            cols = np.where(cols < 0, sentinel, cols)
            zeros_f, zeros_i = np.zeros_like(lex_norm), np.zeros_like(ranks)
            lex_part = np.concatenate([np.where(self.lex_idx >= 0, lex_norm, 0), zeros_f], axis=1)
            dense_part = np.concatenate([zeros_f, np.where(self.dense_idx >= 0, dense_norm, 0)], axis=1)
            lex_rank = np.concatenate([np.where(self.lex_idx >= 0, ranks, 0), zeros_i], axis=1)
            dense_rank = np.concatenate([zeros_i, np.where(self.dense_idx >= 0, ranks, 0)], axis=1)
            order = np.argsort(cols, axis=1, kind="stable")
            cols, lex_part, dense_part, lex_rank, dense_rank = (
                np.take_along_axis(a, order, axis=1) for a in (cols, lex_part, dense_part, lex_rank, dense_rank))
            dup = cols[:, 1:] == cols[:, :-1]  # a column in both lists: merge into the first, drop the second
            lex_part, dense_part = lex_part.copy(), dense_part.copy()
            lex_rank, dense_rank = lex_rank.copy(), dense_rank.copy()
            for part in (lex_part, dense_part, lex_rank, dense_rank):
                part[:, :-1] += np.where(dup, part[:, 1:], 0)
            valid = cols != sentinel
            valid[:, 1:] &= ~dup
            self._union = (cols, lex_part.astype(np.float32), dense_part.astype(np.float32), lex_rank, dense_rank,
                           valid)
        return self._union


def _min_max_rows(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """`fusion.min_max` on every row at once (float32; 0 → MIN_SCORE; a flat list → 1.0)."""
    valid = idx >= 0
    values = scores.astype(np.float32)
    low = np.where(valid, values, np.float32(np.inf)).min(axis=1, keepdims=True)
    high = np.where(valid, values, np.float32(-np.inf)).max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = ((values - low) / (high - low)).astype(np.float32)
    normalised = np.where(normalised == 0, np.float32(MIN_SCORE), normalised)
    normalised = np.where(high == low, np.float32(1.0), normalised)
    return np.where(valid, normalised, np.float32(0)).astype(np.float32)


def _top(scores: np.ndarray, cols: np.ndarray, valid: np.ndarray, ids: list[str], k: int
         ) -> list[list[tuple[str, float]]]:
    """Best `k` per row by (-score, column = id order), invalid entries never returned."""
    keyed = np.where(valid, scores, -np.inf)
    order = np.lexsort((cols, -keyed), axis=-1)[:, :k]
    out = []
    for row, picks in enumerate(order):
        out.append([(ids[cols[row, c]], float(keyed[row, c])) for c in picks if valid[row, c]])
    return out


def _top_rows(matrix: np.ndarray, depth: int, positive_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `depth` best columns, ties (also at the cut) by column = id order, as `exact.top_k`;
    -1 pads short rows."""
    n, width = matrix.shape
    take = min(depth, width)
    idx = np.full((n, depth), -1, dtype=np.int32)
    out = np.zeros((n, depth), dtype=np.float32)
    if take == 0 or n == 0:
        return idx, out
    kth = -np.partition(-matrix, take - 1, axis=1)[:, take - 1:take]
    above = matrix > kth
    at = matrix == kth
    need = take - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1) <= need))  # the cut's ties: the lowest columns
    part = np.nonzero(chosen)[1].reshape(n, take)
    values = np.take_along_axis(matrix, part, axis=1)
    order = np.lexsort((part, -values), axis=-1)
    part, values = np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)
    keep = values > 0 if positive_only else np.ones_like(values, dtype=bool)
    idx[:, :take] = np.where(keep, part, -1)
    out[:, :take] = np.where(keep, values, 0).astype(np.float32)
    return idx, out


def _task_key(task: Task) -> str:
    return f"{task.corpus.corpus_id}:{task.direction}"


class FusionCandidates:
    """Every task's two candidate lists for one protocol (computed once, cached on disk when asked)."""

    def __init__(self, tasks: dict[str, TaskLists]) -> None:
        self.tasks = tasks

    def lists(self, corpus_id: str, direction: Direction, queries: Sequence[str]) -> TaskLists:
        lists = self.tasks[f"{corpus_id}:{direction}"]
        if list(queries) != lists.texts:
            raise ConfigError(f"{corpus_id} {direction}: the cached candidate lists are of other queries")
        return lists

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        meta = {}
        for i, (key, t) in enumerate(self.tasks.items()):
            meta[key] = {"i": i, "n_ids": len(t.ids), "texts": hashlib.sha1("\n".join(t.texts).encode()).hexdigest()}
            arrays.update({f"{i}_lex_idx": t.lex_idx, f"{i}_lex_score": t.lex_score,
                           f"{i}_dense_idx": t.dense_idx, f"{i}_dense_score": t.dense_score})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, protocol: EvalProtocol) -> FusionCandidates | None:
        """The cached lists if they are of this very protocol (same ids, same query texts), else None."""
        try:
            data = np.load(path)
            meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError):
            return None
        tasks = {}
        for task in protocol.tasks:
            key = _task_key(task)
            ids = _columns(task)
            texts = [q.text for q in task.queries]
            entry = meta.get(key)
            if not entry or entry["n_ids"] != len(ids) or entry["texts"] != hashlib.sha1(
                    "\n".join(texts).encode()).hexdigest():
                return None
            i = entry["i"]
            tasks[key] = TaskLists(ids, texts, data[f"{i}_lex_idx"], data[f"{i}_lex_score"],
                                   data[f"{i}_dense_idx"], data[f"{i}_dense_score"])
        return cls(tasks)


def _columns(task: Task) -> list[str]:
    """What a task ranks, in id order (as the exact rankers keep their columns)."""
    if task.direction == "t2i":
        return sorted(set(task.corpus.image_ids()))
    return sorted(d.doc_id for d in task.corpus.docs)


def collect_candidates(protocol: EvalProtocol, encoder: Any, *, depth: int = CANDIDATES,
                       cache: Path | None = None, echo: Any = None) -> FusionCandidates:
    """Both exact candidate lists of every query of every task (from `cache` when it holds them)."""
    if cache is not None and cache.exists():
        loaded = FusionCandidates.load(cache, protocol)
        if loaded is not None:
            return loaded
    encoder = encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder)
    dense, bm25 = ExactDenseRanker(encoder), ExactBM25Ranker()
    tasks: dict[str, TaskLists] = {}
    indexed = None
    for task in protocol.tasks:
        if task.corpus.corpus_id != indexed:
            dense.index(task.corpus)
            bm25.index(task.corpus)
            indexed = task.corpus.corpus_id
            if echo:
                echo(f"  candidates: {task.corpus.corpus_id} ({len(task.corpus.docs)} texts)")
        texts = [q.text for q in task.queries]
        tasks[_task_key(task)] = task_lists(dense, bm25, texts, task.direction, depth)
    candidates = FusionCandidates(tasks)
    if cache is not None:
        candidates.save(cache)
    return candidates


def task_lists(dense: ExactDenseRanker, bm25: ExactBM25Ranker, texts: list[str], direction: Direction,
               depth: int = CANDIDATES) -> TaskLists:
    """Both candidate lists of `texts` on the corpus the two rankers indexed (in batches: bounded memory)."""
    parts: dict[str, list[np.ndarray]] = {"li": [], "ls": [], "di": [], "ds": []}
    ids: list[str] = []
    for start in range(0, len(texts), _BATCH):
        batch = texts[start:start + _BATCH]
        ids, cosine = dense.score_rows(batch, direction)
        engine_scale = ((np.float32(1) + cosine.astype(np.float32)) / np.float32(2)).astype(np.float32)
        di, ds = _top_rows(engine_scale, depth, positive_only=False)
        lex_ids, lexical = bm25.score_rows(batch, direction)
        if lex_ids != ids:
            raise ConfigError("the dense and BM25 references disagree on the corpus")
        li, ls = _top_rows(lexical.astype(np.float32), depth, positive_only=True)
        for key, value in (("li", li), ("ls", ls), ("di", di), ("ds", ds)):
            parts[key].append(value)
    if not texts:
        empty_i, empty_f = np.zeros((0, depth), np.int32), np.zeros((0, depth), np.float32)
        return TaskLists(ids, texts, empty_i, empty_f, empty_i, empty_f)
    arrays = (np.concatenate(parts[k]) for k in ("li", "ls", "di", "ds"))
    return TaskLists(list(ids), list(texts), *arrays)


class OfflineRanker:
    """A `Ranker` over cached candidate lists: one single mode (`lexical`, `dense`) or one fusion."""

    def __init__(self, candidates: FusionCandidates, condition: str | FusionSpec) -> None:
        self.candidates = candidates
        self.condition = condition
        self.name = condition if isinstance(condition, str) else _fusion_name(condition)
        self._corpus_id: str | None = None

    def index(self, corpus: Any) -> None:
        self._corpus_id = corpus.corpus_id

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        assert self._corpus_id is not None, "index() comes first"
        return self.rank_lists(self.candidates.lists(self._corpus_id, direction, queries), k)

    def rank_lists(self, lists: TaskLists, k: int) -> list[list[tuple[str, float]]]:
        """The condition's best `k` per query of one task's candidate lists."""
        if self.condition == "lexical":
            return _top(lists.lex_score, lists.lex_idx, lists.lex_idx >= 0, lists.ids, k)
        if self.condition == "dense":
            return _top(lists.dense_score, lists.dense_idx, lists.dense_idx >= 0, lists.ids, k)
        assert isinstance(self.condition, FusionSpec)
        cols, lex, dense, lex_rank, dense_rank, valid = lists.union()
        spec = self.condition
        if spec.technique == "rrf":
            table = np.asarray([0.0] + [1.0 / (spec.rank_constant + r) for r in range(1, lex_rank.max(initial=0)
                                                                                     + dense_rank.max(initial=0) + 2)],
                               dtype=np.float32)
            scores = (table[lex_rank] + table[dense_rank]).astype(np.float32)
        else:
            w_lex, w_dense = np.float32(spec.weights[0]), np.float32(spec.weights[1])
            numerator = (lex * w_lex).astype(np.float32) + (dense * w_dense).astype(np.float32)
            scores = (numerator.astype(np.float32) / np.float32(w_lex + w_dense)).astype(np.float32)
        return _top(scores, cols, valid, lists.ids, k)


class ExactFusionRanker:
    """A `Ranker` fusing the exact dense and BM25 lists as the engine does (`exact-default` in regressions)."""

    def __init__(self, encoder: Any, fusion: FusionSpec | None = None, *, name: str = "exact-default",
                 depth: int = CANDIDATES) -> None:
        encoder = encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder)
        self.dense, self.bm25 = ExactDenseRanker(encoder), ExactBM25Ranker()
        self.fusion = fusion or FusionSpec()
        self.name, self.depth = name, depth
        self._corpus_id: str | None = None

    def index(self, corpus: Any) -> None:
        self.dense.index(corpus)
        self.bm25.index(corpus)
        self._corpus_id = corpus.corpus_id

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        if self._corpus_id is None:
            raise ConfigError("index a corpus before ranking")
        lists = task_lists(self.dense, self.bm25, list(queries), direction, self.depth)
        return OfflineRanker(FusionCandidates({}), self.fusion).rank_lists(lists, k)


def _fusion_name(spec: FusionSpec) -> str:
    if spec.technique == "rrf":
        return f"rrf-{spec.rank_constant}"
    return f"minmax-{spec.weights[0]:g}/{spec.weights[1]:g}"


@dataclass(frozen=True)
class GridPoint:
    """One swept condition and what it measured on the split."""

    name: str
    technique: str  # "lexical" | "dense" (single modes) | "minmax" | "rrf"
    mr: float
    weights: tuple[float, float] | None = None
    rank_constant: int | None = None

    def fusion(self) -> FusionSpec | None:
        if self.technique == "minmax":
            return FusionSpec("minmax", self.weights or (0.5, 0.5))
        if self.technique == "rrf":
            return FusionSpec("rrf", rank_constant=self.rank_constant or 60)
        return None


def _point(result: ModeResult, condition: str | FusionSpec) -> GridPoint:
    mr = round(float(result.mr or 0.0), 4)
    if isinstance(condition, str):
        return GridPoint(condition, condition, mr)
    if condition.technique == "rrf":
        return GridPoint(result.mode, "rrf", mr, rank_constant=condition.rank_constant)
    return GridPoint(result.mode, "minmax", mr, weights=(float(condition.weights[0]), float(condition.weights[1])))


def sweep(protocol: EvalProtocol, candidates: FusionCandidates, *,
          lexical_weights: Sequence[float] = LEXICAL_WEIGHTS, rank_constants: Sequence[int] = RANK_CONSTANTS,
          singles: bool = True) -> list[GridPoint]:
    """Every condition scored by `evaluate` (the metrics of `rsrt eval`), single modes first."""
    conditions: list[str | FusionSpec] = ["lexical", "dense"] if singles else []
    conditions += [FusionSpec("minmax", (round(w, 4), round(1 - w, 4))) for w in lexical_weights]
    conditions += [FusionSpec("rrf", rank_constant=c) for c in rank_constants]
    points = []
    for condition in conditions:
        ranker = OfflineRanker(candidates, condition)
        points.append(_point(evaluate(protocol, ranker, mode=ranker.name, fetch=FETCH), condition))
    return points


@dataclass(frozen=True)
class TuneResult:
    """What one tuning run found, and where it comes from (never a test split for a product default)."""

    benchmark: str
    split: str
    protocol: str
    encoder: str
    date: str
    rsrt_version: str
    candidates: int
    grid: tuple[GridPoint, ...]
    n_queries: int = 0  # over every task (folds × directions): how much this split weighs when pooled

    def best(self, technique: str) -> GridPoint:
        points = [p for p in self.grid if p.technique == technique]
        if not points:
            raise ConfigError(f"no {technique} point in the grid")
        # highest mR; among equals the smallest lexical weight / constant (the simplest, nearest dense)
        return max(points, key=lambda p: (p.mr, -(p.weights or (0, 0))[0], -(p.rank_constant or 0)))

    @property
    def best_single(self) -> GridPoint:
        return max((p for p in self.grid if p.technique in ("lexical", "dense")), key=lambda p: p.mr)

    def to_dict(self) -> dict[str, Any]:
        minmax, rrf = self.best("minmax"), self.best("rrf")
        return {
            "provenance": {"benchmark": self.benchmark, "split": self.split, "protocol": self.protocol,
                           "encoder": self.encoder, "date": self.date, "rsrt_version": self.rsrt_version,
                           "candidates": self.candidates, "n_queries": self.n_queries,
                           "engine": "exact (offline fusion of exact lists)"},
            "best_minmax": {"weights": list(minmax.weights or ()), "mR": minmax.mr},
            "best_rrf": {"rank_constant": rrf.rank_constant, "mR": rrf.mr},
            "single_modes": {p.technique: p.mr for p in self.grid if p.technique in ("lexical", "dense")},
            "grid": [{k: v for k, v in asdict(p).items() if v is not None} for p in self.grid],
        }

    def table(self) -> str:
        lines = [f"{self.benchmark} {self.split} ({self.protocol}, {self.encoder}): mR per condition"]
        best = {self.best("minmax").name, self.best("rrf").name}
        for p in self.grid:
            lines.append(f"  {p.name:<18} {p.mr:7.2f}{'  <- best' if p.name in best else ''}")
        return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rsrt-search")
    except PackageNotFoundError:  # a source tree that was never installed still tunes
        return "unknown"


def load_encoder(name: str, backend: str) -> SentenceTransformerEncoder:
    """rsrt's encoder `name` as the exact rankers' callable (offline, shared with the query layer)."""
    from ..encoder import get_encoder

    return SentenceTransformerEncoder(get_encoder(name, backend), name)


def tune(benchmark: str, split: str = "train", *, data_dir: str | None = None, encoder: str | None = None,
         backend: str = "torch", cache_dir: Path | None = None, echo: Any = None,
         encoder_fn: Any = None) -> TuneResult:
    """Sweeps min-max weights and RRF constants on one split (loo protocol) and returns the grid."""
    from ..datasets import load_benchmark
    from ..encoder import DEFAULT_ENCODER

    name = encoder or DEFAULT_ENCODER
    protocol = loo_protocol(load_benchmark(benchmark, split, data_dir))
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{benchmark}-{split}-loo-{name.replace('/', '_')}-c{CANDIDATES}.npz"
    candidates = collect_candidates(protocol, encoder_fn or load_encoder(name, backend), cache=cache, echo=echo)
    grid = sweep(protocol, candidates)
    return TuneResult(benchmark, split, "loo", name, _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                      _version(), CANDIDATES, tuple(grid), sum(len(t.queries) for t in protocol.tasks))


@dataclass(frozen=True)
class DefaultChoice:
    """The chosen default and its numbers on each tuning split (`mean_mr`: pooled over their queries)."""

    point: GridPoint
    mean_mr: float
    per_split: dict[str, float]
    margins: dict[str, float]  # over each split's best single mode

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.point.name, "technique": self.point.technique,
                "weights": list(self.point.weights) if self.point.weights else None,
                "rank_constant": self.point.rank_constant, "pooled_mR": round(self.mean_mr, 4),
                "per_split": self.per_split, "margin_over_best_single_mode": self.margins}


def choose_default(results: Sequence[TuneResult]) -> DefaultChoice:
    """The product default from tuning splits (never a test split).

    Rule: among the fusions (min-max or RRF) that beat the best single mode on *every* split, the one
    with the highest mR pooled over all their queries (each split weighted by its query count; equal
    weights when counts are unknown); among equals the smallest lexical weight. When no fusion beats
    the best single mode everywhere, the default is the single mode best pooled (a fusion that loses to
    one of its own parts is not a default).
    """
    if not results:
        raise ConfigError("choose a default from at least one tuning result")
    for r in results:
        if r.split == "test":
            raise ConfigError(f"{r.benchmark} {r.split}: a product default is never chosen on a test split")
    weights = np.asarray([r.n_queries or 1 for r in results], dtype=np.float64)
    weights = weights / weights.sum()
    by_name: dict[str, list[GridPoint]] = {}
    for r in results:
        for p in r.grid:
            by_name.setdefault(p.name, []).append(p)
    complete = {n: ps for n, ps in by_name.items() if len(ps) == len(results)}
    singles = [r.best_single.mr for r in results]

    def margins(name: str) -> list[float]:
        return [p.mr - best for p, best in zip(complete[name], singles, strict=True)]

    fusions = [n for n, ps in complete.items() if ps[0].technique in ("minmax", "rrf") and min(margins(n)) > 0]
    pool = fusions or [n for n, ps in complete.items() if ps[0].technique in ("lexical", "dense")]

    def pooled(name: str) -> float:
        return float(np.dot(weights, [p.mr for p in complete[name]]))

    name = max(pool, key=lambda n: (round(pooled(n), 6), -(complete[n][0].weights or (0, 0))[0]))
    keys = [f"{r.benchmark}-{r.split}" for r in results]
    return DefaultChoice(complete[name][0], pooled(name), dict(zip(keys, (p.mr for p in complete[name]), strict=True)),
                         dict(zip(keys, (round(m, 4) for m in margins(name)), strict=True)))


def check_default(point: GridPoint, result: TuneResult) -> tuple[bool, float, GridPoint]:
    """(is `point` ≥ the best single mode on `result`'s split, its mR there, that best single mode)."""
    same = next(p for p in result.grid if p.name == point.name)
    single = result.best_single
    return same.mr >= single.mr, same.mr, single
