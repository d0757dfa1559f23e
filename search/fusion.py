"""Client-side hybrid fusion, the same arithmetic as neural-search 2.19's search pipelines.

Used when the cluster has no neural-search (e.g. a managed service) and for `explain`. Mirrors:
- `min_max` normalisation per sub-query over its returned hits: (s - min) / (max - min); a result
  that normalises to exactly 0 becomes 0.001; a list whose max equals min gives 1.0;
- `arithmetic_mean` combination: Σ wᵢ·sᵢ / Σ wᵢ over all sub-queries, a hit missing from one
  list counting as 0 there;
- `rrf`: Σ 1 / (rank_constant + rank), rank starting at 1.
Ties are broken by image id, so the order is deterministic.

The product default (mode, technique, weights, RRF constant) is read once from
`mappings/search-defaults.json`, which records how it was chosen (tuned on train splits, checked on
test splits: docs/evaluation-defaults.md); `DEFAULT_WEIGHTS`, `DEFAULT_RANK_CONSTANT` and
`search.request.DEFAULT_MODE` are its only readers, every front end takes its defaults from them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from numbers import Integral, Real
from typing import Any

import numpy as np

from .errors import QueryError

MIN_SCORE = 0.001
FUSIONS = ("minmax", "rrf")


def _search_defaults() -> dict[str, Any]:
    """The packaged product default with its provenance (mappings/search-defaults.json)."""
    return json.loads(resources.files("rsrt.mappings").joinpath("search-defaults.json").read_text(encoding="utf-8"))


SEARCH_DEFAULTS: dict[str, Any] = _search_defaults()
DEFAULT_TECHNIQUE: str = SEARCH_DEFAULTS["fusion"]["technique"]
DEFAULT_WEIGHTS: tuple[float, float] = tuple(float(w) for w in SEARCH_DEFAULTS["fusion"]["weights"])  # type: ignore[assignment]
DEFAULT_RANK_CONSTANT: int = int(SEARCH_DEFAULTS["fusion"]["rank_constant"])


@dataclass(frozen=True)
class FusionSpec:
    """How two ranked lists become one; `weights` are (lexical, dense)."""

    technique: str = DEFAULT_TECHNIQUE  # "minmax" or "rrf" (FUSIONS); "min_max" is OpenSearch's normalisation
    weights: tuple[float, float] = DEFAULT_WEIGHTS
    rank_constant: int = DEFAULT_RANK_CONSTANT

    def __post_init__(self) -> None:
        if self.technique not in FUSIONS:
            raise QueryError("fusion", f"{self.technique!r} is not one of {', '.join(FUSIONS)}")
        # Checked whatever the technique: 1 / (rank_constant + rank) divides by zero at -1, and a
        # value given with minmax is still a mistake worth one line rather than silence.
        constant = self.rank_constant
        if isinstance(constant, bool) or not isinstance(constant, Integral) or constant < 1:
            raise QueryError("rank_constant", f"must be a whole number of at least 1, not {constant!r}")
        if len(self.weights) != 2 or not all(isinstance(w, Real) and math.isfinite(w) and w >= 0
                                             for w in self.weights) or sum(self.weights) == 0:
            raise QueryError("weights", "give two finite weights (lexical, dense), each >= 0 and not both 0")

    def pipeline(self) -> dict:
        """The equivalent search pipeline body (see mappings/search-pipelines/)."""
        if self.technique == "rrf":
            # 2.19 reads rank_constant only under "parameters"; a top-level one is silently ignored.
            return {"phase_results_processors": [{"score-ranker-processor": {
                "combination": {"technique": "rrf", "parameters": {"rank_constant": self.rank_constant}}}}]}
        return {"phase_results_processors": [{"normalization-processor": {
            "normalization": {"technique": "min_max"},
            "combination": {"technique": "arithmetic_mean",
                            "parameters": {"weights": [float(w) for w in self.weights]}}}}]}


def _f32(x: float) -> float:
    return float(np.float32(x))


def min_max(scores: Sequence[float]) -> list[float]:
    """neural-search's min-max, in float32 like the plugin, so ties and order agree."""
    if not scores:
        return []
    values = np.asarray(scores, dtype=np.float32)
    low, high = values.min(), values.max()
    out = []
    for score in values:
        if high == low and high == score:
            out.append(1.0)
            continue
        normalised = np.float32((score - low) / (high - low))
        out.append(float(MIN_SCORE if normalised == 0 else normalised))
    return out


def fuse(
    lists: Sequence[Sequence[tuple[str, float]]], spec: FusionSpec
) -> list[tuple[str, float, list[float | None]]]:
    """Fuse ranked (id, score) lists → [(id, fused score, per-list normalised score or None)]."""
    per_doc: dict[str, list[float | None]] = {}
    for position, ranked in enumerate(lists):
        if spec.technique == "rrf":
            normalised = [_f32(1.0 / (spec.rank_constant + rank)) for rank in range(1, len(ranked) + 1)]
        else:
            normalised = min_max([score for _, score in ranked])
        for (doc_id, _), value in zip(ranked, normalised, strict=True):
            per_doc.setdefault(doc_id, [None] * len(lists))[position] = value
    fused: list[tuple[str, float, list[float | None]]] = []
    weights = list(spec.weights) + [1.0] * (len(lists) - len(spec.weights))
    for doc_id, parts in per_doc.items():
        if spec.technique == "rrf":
            total = np.float32(0)
            for part in parts:
                total = np.float32(total + np.float32(part or 0.0))
            score = float(total)
        else:
            numerator = np.float32(0)
            denominator = np.float32(0)
            for weight, part in zip(weights, parts, strict=False):
                w = np.float32(weight)
                numerator = np.float32(numerator + np.float32(part or 0.0) * w)
                denominator = np.float32(denominator + w)
            score = float(numerator / denominator) if denominator else 0.0
        fused.append((doc_id, score, parts))
    fused.sort(key=lambda item: (-item[1], item[0]))
    return fused
