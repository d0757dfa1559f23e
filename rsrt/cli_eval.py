"""`rsrt eval`: benchmark protocols through the real query layer, with the exact reference beside them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors


def run_evaluation(settings: Any, benchmark: str, protocol_name: str, modes: list[str], out: Path | None,
                   data_dir: str | None = None, split: str = "test", exact: bool = True,
                   weights: tuple[float, float] = (0.5, 0.5), rank_constant: int = 60, variants: str | None = None,
                   image_queries: str | None = None, keep: bool = False, candidates: int = 100,
                   echo=click.echo) -> list[Any]:
    """Shared by `rsrt eval` and `rsrt demo`: returns the ModeResults (engine modes, then exact ones)."""
    import json

    from rsrt.search.benchmarks import load_benchmark
    from rsrt.search.client import require_cluster
    from rsrt.search.errors import ConfigError
    from rsrt.search.evaluation.engine import ENGINE_MODES, OpenSearchIndexes, OpenSearchRanker
    from rsrt.search.evaluation.protocols import loo_protocol, standard_protocol
    from rsrt.search.evaluation.report import format_table, write_report
    from rsrt.search.evaluation.runner import evaluate
    from rsrt.search.fusion import FusionSpec

    unknown = [m for m in modes if m not in ENGINE_MODES]
    if unknown:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(ENGINE_MODES)}")
    bench = load_benchmark(benchmark, split, data_dir)
    if protocol_name == "loo":
        protocol = loo_protocol(bench)
    else:
        def read(path: str | None) -> Any:
            return json.loads(Path(path).read_text(encoding="utf-8")) if path else None

        if not variants:
            raise ConfigError("--protocol standard needs --variants (JSON of image id → VLM variants)")
        protocol = standard_protocol(bench, variants=read(variants), image_queries=read(image_queries))
    client, _ = require_cluster(settings)
    indexes = OpenSearchIndexes(client, prefix=f"rsrt-eval-{benchmark}-{protocol_name}", keep=keep)
    results = []
    try:
        for mode in modes:
            fusion = (FusionSpec("rrf", rank_constant=rank_constant) if mode == "hybrid-rrf"
                      else FusionSpec(weights=weights))
            ranker = OpenSearchRanker(indexes, mode, fusion, candidates=candidates)
            t0 = time.perf_counter()
            reference = {"dense": "exact-dense", "lexical": "exact-bm25"}.get(mode) if exact else None
            results.append(evaluate(protocol, ranker, mode=mode, fetch=20, config=ranker.config(),
                                    reference=reference))
            echo(f"  {mode}: mR {results[-1].mr:.2f} ({time.perf_counter() - t0:.0f} s)")
    finally:
        indexes.close()
    if exact:
        from rsrt.search.evaluation.exact import ExactBM25Ranker, ExactDenseRanker

        for name, ranker in (("exact-dense", ExactDenseRanker(lambda texts: indexes.vectors(texts))),
                             ("exact-bm25", ExactBM25Ranker())):
            results.append(evaluate(protocol, ranker, mode=name, fetch=20, config={"engine": "exact"}))
            echo(f"  {name}: mR {results[-1].mr:.2f}")
    echo("")
    echo(format_table(results))
    if out:
        paths = write_report(results, out, config={"benchmark": benchmark, "protocol": protocol_name,
                                                   "weights": list(weights), "rank_constant": rank_constant},
                             protocol=protocol)
        echo(f"\nreport: {paths.markdown}\njson:   {paths.json}\nplot:   {paths.plot}")
    return results


@click.command("eval")
@click.option("--benchmark", type=click.Choice(["rsitmd", "ucm", "sydney"]), required=True)
@click.option("--protocol", "protocol_name", type=click.Choice(["loo", "standard"]), default="loo", show_default=True)
@click.option("--modes", default="lexical,dense,hybrid,hybrid-rrf", show_default=True,
              help="comma list of lexical, dense, hybrid (min-max), hybrid-rrf")
@click.option("--split", default="test", show_default=True)
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None, help="benchmark folder [env RSRT_DATA_DIR]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write results.json, report.md, report.png and TREC runs here")
@click.option("--no-exact", is_flag=True, help="skip the in-memory exact reference")
@click.option("--weights", default="0.5,0.5", show_default=True, help="hybrid weights lexical,dense")
@click.option("--rank-constant", default=60, show_default=True)
@click.option("--variants", default=None, help="standard protocol: JSON image id → list of VLM variants")
@click.option("--image-queries", default=None, help="standard protocol: JSON image id → VLM query text")
@click.option("--check", "check_name", default=None, help="compare with a regression file, e.g. rsitmd-loo")
@click.option("--keep-indices", is_flag=True, help="keep the evaluation indices for inspection")
@click.option("--candidates", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="candidates per sub-query (kNN k, hybrid depth); at least the 20 ranks evaluated")
@encoder_backend_option
@connection_options
@user_errors
def eval_command(benchmark: str, protocol_name: str, modes: str, split: str, data_dir: str | None,
                 out: Path | None, no_exact: bool, weights: str, rank_constant: int, variants: str | None,
                 image_queries: str | None, check_name: str | None, keep_indices: bool, candidates: int,
                 **kwargs: Any) -> None:
    """Evaluate retrieval modes on a benchmark split: R@1/5/10 both directions and mR."""
    from rsrt.search.errors import ConfigError

    try:
        lexical, dense = (float(x) for x in weights.split(","))
    except ValueError:
        raise ConfigError("--weights needs two numbers: lexical,dense") from None
    results = run_evaluation(settings_from(kwargs), benchmark, protocol_name,
                             [m.strip() for m in modes.split(",") if m.strip()], out, data_dir, split,
                             not no_exact, (lexical, dense), rank_constant, variants, image_queries, keep_indices,
                             candidates)
    if check_name:
        from rsrt.search.evaluation.regression import check_condition, load_regressions

        spec = load_regressions(check_name)
        failures: list[str] = []
        checked = 0
        for result in results:
            name = result.mode if result.mode.startswith("exact") else f"opensearch-{result.mode}"
            condition = spec.conditions.get(name)
            if condition:
                checked += 1
                failures += check_condition(condition, result)
        click.echo(f"\nregression {check_name}: {checked} condition(s) checked, {len(failures)} failure(s)")
        for failure in failures:
            click.secho(f"  {failure}", fg="red")
        if failures:
            raise SystemExit(1)
