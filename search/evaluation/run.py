"""One evaluation run, typed: what `rsrt eval` and `rsrt demo` build and hand over, with no CLI in it.

`run_evaluation(config, client)` scores each engine condition (`engine.CONDITIONS`) through the real
query layer, then, unless `config.exact` is off, the in-memory exact reference (`exact-dense` on the
very vectors the engine indexed, `exact-bm25`), prints one line per condition and the table, and
writes the report when `config.out` is set.

A run is isolated (`engine.OpenSearchIndexes`): its indices carry its run id in their names and
`_meta`, and are deleted when it ends, also when it fails or is interrupted (unless
`keep_indices`: then their names are printed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opensearchpy import OpenSearch

from ..datasets import load_benchmark
from ..encoder import DEFAULT_BACKEND, DEFAULT_ENCODER
from ..errors import ConfigError, RsrtError
from ..fusion import DEFAULT_RANK_CONSTANT, DEFAULT_WEIGHTS
from .engine import CONDITIONS, OpenSearchIndexes, OpenSearchRanker, condition_fusion, new_run_id
from .protocols import EvalProtocol, Ranker, build_protocol, read_json_file
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
    weights: tuple[float, float] = DEFAULT_WEIGHTS
    rank_constant: int = DEFAULT_RANK_CONSTANT
    variants: str | Path | None = None
    image_queries: str | Path | None = None
    keep_indices: bool = False
    candidates: int = 100
    out: Path | None = None
    encoder: str = DEFAULT_ENCODER
    encoder_backend: str = DEFAULT_BACKEND
    embed: str = "client"  # "cluster": queries embedded by the index's ml-commons model (rows named <mode>-cluster)
    allow_missing: bool = False  # standard protocol: images without variants stay in, unretrievable
    run_id: str = ""  # drawn when empty: the run's indices are named and marked with it
    retries: int = 6  # attempts per cluster call on 429s, rejected executions, timeouts (RetryPolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if not self.run_id:
            object.__setattr__(self, "run_id", new_run_id())
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}: choose loo or standard")
        if self.embed not in ("client", "cluster"):
            raise ConfigError(f"--embed {self.embed!r}: choose client or cluster")
        if self.protocol == "standard" and not self.variants:
            raise ConfigError("--protocol standard needs --variants (JSON of image id → VLM variants)")

    def report_config(self, encoder: dict[str, object] | None = None, benchmark: str | None = None
                      ) -> dict[str, object]:
        """What results.json records of the run (`encoder`: name, dimension, backend; `benchmark`: the
        name a split given by path was read as, the path then recorded beside it)."""
        config: dict[str, object] = {
            "benchmark": benchmark or self.benchmark, "protocol": self.protocol, "weights": list(self.weights),
            "rank_constant": self.rank_constant, "split": self.split,
            "encoder": encoder or {"name": self.encoder, "backend": self.encoder_backend}, "run_id": self.run_id}
        if benchmark and benchmark != self.benchmark:
            config["benchmark_path"] = str(self.benchmark)
        return config


def load_protocol(config: EvaluationConfig) -> EvalProtocol:
    bench = load_benchmark(config.benchmark, config.split, config.data_dir)
    if config.protocol == "loo":
        return build_protocol("loo", bench)
    return build_protocol("standard", bench, variants=read_json_file(config.variants),
                          image_queries=read_json_file(config.image_queries), allow_missing=config.allow_missing)


RankerFactory = Callable[[OpenSearchIndexes, str, EvaluationConfig], Ranker]


def opensearch_ranker(indexes: OpenSearchIndexes, name: str, config: EvaluationConfig) -> OpenSearchRanker:
    """The ranker of condition `name` with the run's fusion settings (the default `RankerFactory`)."""
    return OpenSearchRanker(indexes, name, condition_fusion(name, config.weights, config.rank_constant),
                            candidates=config.candidates)


def _prefix(config: EvaluationConfig, benchmark: str) -> str:
    return f"rsrt-eval-{benchmark}-{config.protocol}"


def run_evaluation(config: EvaluationConfig, client: OpenSearch, echo: Callable[[str], None] = print,
                   rankers: RankerFactory = opensearch_ranker, protocol: EvalProtocol | None = None
                   ) -> list[ModeResult]:
    """The ModeResults of the engine conditions, in the config's order, then of the exact reference.

    `rankers` makes each condition's ranker (tests inject failures through it); `protocol` is
    `load_protocol(config)` when the caller read it already (the CLI does, before connecting, so a
    data error is reported first). The run's indices are deleted when it ends, also on a failure or
    Ctrl-C.
    """
    protocol = protocol or load_protocol(config)
    for direction, count in protocol.missing.items():
        if count:
            echo(f"  {direction}: {count} image(s) had none (--allow-missing: they stay in the protocol, "
                 "unretrievable or not asked)")
    indexes = OpenSearchIndexes(client, prefix=_prefix(config, protocol.benchmark), encoder_name=config.encoder,
                                keep=config.keep_indices, encoder_backend=config.encoder_backend,
                                embed=config.embed, run_id=config.run_id, retries=config.retries)
    encoder = indexes.encoder_info()
    echo(f"  run {indexes.run_id}: encoder {encoder['name']} ({encoder['dimension']}-d, {encoder['backend']})")
    results = []
    try:
        for name in config.conditions:
            ranker = rankers(indexes, name, config)
            t0 = time.perf_counter()
            reference = _REFERENCE.get(name) if config.exact else None
            row = name if config.embed == "client" else f"{name}-{config.embed}"
            ranker_config = ranker.config() if hasattr(ranker, "config") else {}
            results.append(evaluate(protocol, ranker, mode=row, fetch=FETCH,
                                    config={**ranker_config, "encoder": encoder}, reference=reference))
            echo(f"  {row}: {_score_line(results[-1])} ({time.perf_counter() - t0:.0f} s)")
    except BaseException:
        _close(indexes, echo, failed=True)
        raise
    _close(indexes, echo, failed=False)
    if config.exact:
        from .exact import ExactBM25Ranker, ExactDenseRanker

        for name, exact in (("exact-dense", ExactDenseRanker(lambda texts: indexes.vectors(texts))),
                            ("exact-bm25", ExactBM25Ranker())):
            row_config = {"engine": "exact", "encoder": encoder} if name == "exact-dense" else {"engine": "exact"}
            results.append(evaluate(protocol, exact, mode=name, fetch=FETCH, config=row_config))
            echo(f"  {name}: {_score_line(results[-1])}")
    echo("")
    echo(format_table(results))
    if config.out:
        paths = write_report(results, config.out, config=config.report_config(encoder, protocol.benchmark),
                             protocol=protocol)
        echo(f"\nreport: {paths.markdown}\njson:   {paths.json}\nplot:   {paths.plot}")
    return results


def _close(indexes: OpenSearchIndexes, echo: Callable[[str], None], failed: bool) -> None:
    """Deletes the run's indices (or names them, with --keep-indices). After a failure, a cleanup that
    fails too is one more line, not a second error hiding the first."""
    if indexes.keep:
        if indexes.index_names():
            echo(f"  kept evaluation indices: {', '.join(indexes.index_names())}")
        return
    try:
        indexes.close()
    except RsrtError as exc:
        if not failed:
            raise
        echo(f"  cleanup: {exc}")


def _score_line(result: ModeResult) -> str:
    """mR when both directions ran; a text-to-image-only run (standard protocol, no image queries) has R@K."""
    if result.mr is not None:
        return f"mR {result.mr:.2f}"
    recall = result.recall("t2i")
    return "t2i " + " ".join(f"R@{k} {v:.2f}" for k, v in recall.items())
