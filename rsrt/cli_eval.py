"""`rsrt eval`: benchmark protocols through the real query layer, with the exact reference beside them.

Only the options live here: the run is `rsrt.search.evaluation.run.run_evaluation(EvaluationConfig(...))`.
`rsrt eval` is a group that runs an evaluation when called without a sub-command (`rsrt eval
--benchmark rsitmd …`, as before), so sub-commands such as `rsrt eval tune` can sit beside it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors
from rsrt.search.fusion import DEFAULT_RANK_CONSTANT, DEFAULT_WEIGHTS

_SPLITS = ("train", "val", "test")


@click.group("eval", invoke_without_command=True)
@click.option("--benchmark", default=None, metavar="NAME|PATH",
              help="rsitmd, rsicd, nwpu, ucm, sydney (read from --data-dir), or the path of a split: a precomp "
                   "folder ({split}_caps.txt + {split}_filename.txt), a Karpathy dataset.json, a Sydney folder, "
                   'or an RSRT captions JSONL (lines {"image": ..., "captions": [...]}, optional "split")')
@click.option("--protocol", "protocol_name", type=click.Choice(["loo", "standard"]), default="loo", show_default=True)
@click.option("--modes", default="lexical,dense,hybrid,hybrid-rrf", show_default=True,
              help="comma list of lexical, dense, hybrid (min-max), hybrid-rrf")
@click.option("--split", type=click.Choice(_SPLITS), default="test", show_default=True)
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None, help="benchmark folder [env RSRT_DATA_DIR]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write results.json, report.md, report.png and TREC runs here")
@click.option("--no-exact", is_flag=True, help="skip the in-memory exact reference")
@click.option("--weights", default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS), show_default=True,
              help="hybrid weights lexical,dense [default: the product default, mappings/search-defaults.json]")
@click.option("--rank-constant", default=DEFAULT_RANK_CONSTANT, show_default=True, help="RRF rank constant")
@click.option("--variants", default=None, help="standard protocol: JSON image id → list of VLM variants")
@click.option("--image-queries", default=None, help="standard protocol: JSON image id → VLM query text")
@click.option("--allow-missing", is_flag=True,
              help="standard protocol: accept images without variants; they stay in the protocol and cannot be "
                   "retrieved (numbers are never inflated), and the report says how many")
@click.option("--check", "check_name", default=None, help="compare with a regression file, e.g. rsitmd-loo")
@click.option("--keep-indices", is_flag=True, help="keep the run's evaluation indices for inspection (names printed)")
@click.option("--candidates", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="candidates per sub-query (kNN k, hybrid depth); at least the 20 ranks evaluated")
@click.option("--embed", type=click.Choice(["client", "cluster"]), default="client", show_default=True,
              help="where queries become vectors: rsrt's encoder, or the index's model in the cluster (ml-commons; "
                   "rows are named <mode>-cluster)")
@click.option("--encoder", default="all-MiniLM-L6-v2", show_default=True,
              help="sentence encoder (packaged, offline: all-MiniLM-L6-v2, all-mpnet-base-v2)")
@click.option("--max-retries", type=click.IntRange(1, 100), default=6, show_default=True,
              help="attempts per cluster request on HTTP 429, rejected executions and timeouts (with back-off)")
@encoder_backend_option
@connection_options
@user_errors
@click.pass_context
def eval_command(ctx: click.Context, benchmark: str | None, protocol_name: str, modes: str, split: str,
                 data_dir: str | None, out: Path | None, no_exact: bool, weights: str, rank_constant: int,
                 variants: str | None, image_queries: str | None, allow_missing: bool, check_name: str | None,
                 keep_indices: bool, candidates: int, embed: str, encoder: str, max_retries: int,
                 encoder_backend: str, **kwargs: Any) -> None:
    """Evaluate retrieval modes on a benchmark split: R@1/5/10 both directions and mR."""
    if ctx.invoked_subcommand is not None:
        return  # `rsrt eval <sub-command> …`: the sub-command has its own options
    if not benchmark:
        raise click.UsageError("Missing option '--benchmark' (a benchmark name or the path of a split).")
    from rsrt.search.client import require_cluster
    from rsrt.search.errors import ConfigError
    from rsrt.search.evaluation.run import EvaluationConfig, load_protocol, run_evaluation

    try:
        lexical, dense = (float(x) for x in weights.split(","))
    except ValueError:
        raise ConfigError("--weights needs two numbers: lexical,dense") from None
    config = EvaluationConfig(benchmark, protocol_name, [m.strip() for m in modes.split(",") if m.strip()],
                              split=split, data_dir=data_dir, exact=not no_exact, weights=(lexical, dense),
                              rank_constant=rank_constant, variants=variants, image_queries=image_queries,
                              keep_indices=keep_indices, candidates=candidates, out=out, encoder=encoder,
                              encoder_backend=encoder_backend, embed=embed, allow_missing=allow_missing,
                              retries=max_retries)
    protocol = load_protocol(config)  # data errors before the cluster is touched
    client, _ = require_cluster(settings_from(kwargs))
    results = run_evaluation(config, client, echo=click.echo, protocol=protocol)
    if check_name:
        from rsrt.search.evaluation.regression import check_results

        checked, failures = check_results(check_name, results)
        click.echo(f"\nregression {check_name}: {checked} condition(s) checked, {len(failures)} failure(s)")
        for failure in failures:
            click.secho(f"  {failure}", fg="red")
        if failures:
            raise SystemExit(1)


# `rsrt eval tune` (issue #17, item 4) lives in rsrt/cli_eval_tune.py, written separately: registered once it exists.
if importlib.util.find_spec("rsrt.cli_eval_tune") is not None:
    from rsrt.cli_eval_tune import tune_command

    eval_command.add_command(tune_command)
