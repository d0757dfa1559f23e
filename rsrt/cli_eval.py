"""`rsrt eval`: benchmark protocols through the real query layer, with the exact reference beside them.

Only the options live here: the run is `rsrt.search.evaluation.run.run_evaluation(EvaluationConfig(...))`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors


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
@click.option("--embed", type=click.Choice(["client", "cluster"]), default="client", show_default=True,
              help="where queries become vectors: rsrt's encoder, or the index's model in the cluster (ml-commons; "
                   "rows are named <mode>-cluster)")
@encoder_backend_option
@connection_options
@user_errors
def eval_command(benchmark: str, protocol_name: str, modes: str, split: str, data_dir: str | None,
                 out: Path | None, no_exact: bool, weights: str, rank_constant: int, variants: str | None,
                 image_queries: str | None, check_name: str | None, keep_indices: bool, candidates: int,
                 encoder_backend: str, embed: str, **kwargs: Any) -> None:
    """Evaluate retrieval modes on a benchmark split: R@1/5/10 both directions and mR."""
    from rsrt.search.client import require_cluster
    from rsrt.search.errors import ConfigError
    from rsrt.search.evaluation.run import EvaluationConfig, run_evaluation

    try:
        lexical, dense = (float(x) for x in weights.split(","))
    except ValueError:
        raise ConfigError("--weights needs two numbers: lexical,dense") from None
    config = EvaluationConfig(benchmark, protocol_name, [m.strip() for m in modes.split(",") if m.strip()],
                              split=split, data_dir=data_dir, exact=not no_exact, weights=(lexical, dense),
                              rank_constant=rank_constant, variants=variants, image_queries=image_queries,
                              keep_indices=keep_indices, candidates=candidates, out=out,
                              encoder_backend=encoder_backend, embed=embed)
    client, _ = require_cluster(settings_from(kwargs))
    results = run_evaluation(config, client, echo=click.echo)
    if check_name:
        from rsrt.search.evaluation.regression import check_results

        checked, failures = check_results(check_name, results)
        click.echo(f"\nregression {check_name}: {checked} condition(s) checked, {len(failures)} failure(s)")
        for failure in failures:
            click.secho(f"  {failure}", fg="red")
        if failures:
            raise SystemExit(1)
