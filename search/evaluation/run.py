"""One evaluation run, typed: what `rsrt eval` and `rsrt demo` build and hand over, with no CLI in it.

`run_evaluation(config, client)` scores each engine condition (`engine.CONDITIONS`) through the real
query layer, then, unless `config.exact` is off, the in-memory exact reference (`exact-dense` on the
very vectors the engine indexed, `exact-bm25`), prints one line per condition and the table, and
writes the report when `config.out` is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opensearchpy import OpenSearch

from ..datasets import load_benchmark
from ..encoder import DEFAULT_BACKEND, DEFAULT_ENCODER
from ..errors import ConfigError
from .engine import CONDITIONS, OpenSearchIndexes, OpenSearchRanker, condition_fusion
from .protocols import EvalProtocol, build_protocol, read_json_file
from .report import format_table, write_report
from .runner import ModeResult, evaluate

__all__ = ["PROTOCOLS", "EvaluationConfig", "run_evaluation"]

PROTOCOLS = ("loo", "standard")
FETCH = 20  # ranks asked of each ranker: ties at the R@10 cut-off are settled by id, not by the engine
# The exact reference each engine condition is compared against in reports.
_REFERENCE = {"dense": "exact-dense", "lexical": "exact-bm25"}


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything one evaluation run needs, checked when it is made (a bad value is a `ConfigError`).

    `conditions` are names of `engine.CONDITIONS` (lexical, dense, hybrid = min-max, hybrid-rrf);
    `weights` (lexical, dense) tune "hybrid", `rank_constant` "hybrid-rrf". The standard protocol
    reads `variants` (JSON image id → VLM variants) and optionally `image_queries` (image id → text).
    """

    benchmark: str
    protocol: str = "loo"
    conditions: Sequence[str] = tuple(CONDITIONS)
    split: str = "test"
    data_dir: str | None = None
    exact: bool = True
    weights: tuple[float, float] = (0.5, 0.5)
    rank_constant: int = 60
    variants: str | Path | None = None
    image_queries: str | Path | None = None
    keep_indices: bool = False
    candidates: int = 100
    out: Path | None = None
    encoder: str = DEFAULT_ENCODER
    encoder_backend: str = DEFAULT_BACKEND
    embed: str = "client"  # "cluster": queries embedded by the index's ml-commons model (rows named <mode>-cluster)

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}: choose loo or standard")
        if self.embed not in ("client", "cluster"):
            raise ConfigError(f"--embed {self.embed!r}: choose client or cluster")
        if self.protocol == "standard" and not self.variants:
            raise ConfigError("--protocol standard needs --variants (JSON of image id → VLM variants)")

    def report_config(self) -> dict[str, object]:
        """What results.json records of the run."""
        return {"benchmark": self.benchmark, "protocol": self.protocol, "weights": list(self.weights),
                "rank_constant": self.rank_constant}


def load_protocol(config: EvaluationConfig) -> EvalProtocol:
    bench = load_benchmark(config.benchmark, config.split, config.data_dir)
    if config.protocol == "loo":
        return build_protocol("loo", bench)
    return build_protocol("standard", bench, variants=read_json_file(config.variants),
                          image_queries=read_json_file(config.image_queries))


def run_evaluation(config: EvaluationConfig, client: OpenSearch,
                   echo: Callable[[str], None] = print) -> list[ModeResult]:
    """The ModeResults of the engine conditions, in the config's order, then of the exact reference."""
    protocol = load_protocol(config)
    indexes = OpenSearchIndexes(client, prefix=f"rsrt-eval-{config.benchmark}-{config.protocol}",
                                encoder_name=config.encoder, keep=config.keep_indices,
                                encoder_backend=config.encoder_backend, embed=config.embed)
    results = []
    try:
        for name in config.conditions:
            ranker = OpenSearchRanker(indexes, name, condition_fusion(name, config.weights, config.rank_constant),
                                      candidates=config.candidates)
            t0 = time.perf_counter()
            reference = _REFERENCE.get(name) if config.exact else None
            row = name if config.embed == "client" else f"{name}-{config.embed}"
            results.append(evaluate(protocol, ranker, mode=row, fetch=FETCH, config=ranker.config(),
                                    reference=reference))
            echo(f"  {row}: {_score_line(results[-1])} ({time.perf_counter() - t0:.0f} s)")
    finally:
        indexes.close()
    if config.exact:
        from .exact import ExactBM25Ranker, ExactDenseRanker

        for name, exact in (("exact-dense", ExactDenseRanker(lambda texts: indexes.vectors(texts))),
                            ("exact-bm25", ExactBM25Ranker())):
            results.append(evaluate(protocol, exact, mode=name, fetch=FETCH, config={"engine": "exact"}))
            echo(f"  {name}: {_score_line(results[-1])}")
    echo("")
    echo(format_table(results))
    if config.out:
        paths = write_report(results, config.out, config=config.report_config(), protocol=protocol)
        echo(f"\nreport: {paths.markdown}\njson:   {paths.json}\nplot:   {paths.plot}")
    return results


def _score_line(result: ModeResult) -> str:
    """mR when both directions ran; a text-to-image-only run (standard protocol, no image queries) has R@K."""
    if result.mr is not None:
        return f"mR {result.mr:.2f}"
    recall = result.recall("t2i")
    return "t2i " + " ".join(f"R@{k} {v:.2f}" for k, v in recall.items())
