"""`rsrt eval tune`: fusion weights and the RRF constant swept on a train split, offline and exactly.

Only the options live here: the sweep is `rsrt.search.evaluation.tune.tune(...)`; with several
`--benchmark`s the fusion best on their average is printed (and written) as the chosen default.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from rsrt._cli_common import encoder_backend_option, user_errors


@click.command("tune")
@click.option("--benchmark", "benchmarks", multiple=True, required=True,
              help="benchmark name (repeatable: the default is then chosen on all of them)")
@click.option("--split", default="train", show_default=True,
              help="the split to tune on (train or val; a test split only measures, never chooses)")
@click.option("--encoder", default=None, help="encoder name [default: rsrt's default encoder]")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None, help="benchmark folder [env RSRT_DATA_DIR]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write tune-<benchmark>-<split>.json (and default.json) here, and cache the candidate lists")
@encoder_backend_option
@user_errors
def tune_command(benchmarks: tuple[str, ...], split: str, encoder: str | None, data_dir: str | None,
                 out: Path | None, encoder_backend: str) -> None:
    """Sweep min-max weights (lexical 0..1 by 0.05) and RRF constants on a split: mR of each, best marked."""
    from rsrt.search.evaluation.tune import choose_default, tune

    results = []
    for benchmark in dict.fromkeys(benchmarks):
        click.echo(f"tuning on {benchmark} {split} (exact candidate lists, then the offline sweep)")
        result = tune(benchmark, split, data_dir=data_dir, encoder=encoder, backend=encoder_backend,
                      cache_dir=out / "cache" if out else None, echo=click.echo)
        results.append(result)
        click.echo(result.table())
        best_minmax, best_rrf = result.best("minmax"), result.best("rrf")
        click.echo(f"best min-max: weights {best_minmax.weights[0]:g},{best_minmax.weights[1]:g} "  # type: ignore[index]
                   f"(mR {best_minmax.mr:.2f}); best RRF: rank constant {best_rrf.rank_constant} "
                   f"(mR {best_rrf.mr:.2f}); best single mode: {result.best_single.name} "
                   f"(mR {result.best_single.mr:.2f})")
        if out:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"tune-{Path(benchmark).name}-{split}.json"
            path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
            click.echo(f"written: {path}")
    if split == "test":
        click.echo("a test split: numbers only, no default is chosen on it")
        return
    choice = choose_default(results)
    provenance = {"chosen_on": [f"{r.benchmark} {r.split}" for r in results], "protocol": "loo",
                  "encoder": results[0].encoder, "date": results[0].date, "rsrt_version": results[0].rsrt_version,
                  "rule": "among fusions that beat the best single mode on every tuning split, the highest mR "
                          "pooled over their queries (else the best single mode)"}
    margins = ", ".join(f"{k} {v:+.2f}" for k, v in choice.margins.items())
    click.echo(f"chosen default: {choice.point.name} (pooled mR {choice.mean_mr:.2f} over "
               f"{', '.join(provenance['chosen_on'])}; margin over the best single mode: {margins})")
    if out:
        path = out / "default.json"
        path.write_text(json.dumps({"default": choice.to_dict(), "provenance": provenance}, indent=2) + "\n",
                        encoding="utf-8")
        click.echo(f"written: {path}")
