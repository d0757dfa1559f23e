"""`rsrt bench scale`: quantisation, hybrid depth, recall and peers at one size (benchmarking/scale.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("scale")
@connection_options
@click.option("--size", default="100k", show_default=True, help="images (10k, 100k …)")
@click.option("--corpus", type=click.Choice(["clustered", "distinct"]), default="clustered", show_default=True,
              help="pooled texts with jittered copies, or duplicate-free (every variant its own text; 5 × size "
                   "texts to encode)")
@click.option("--quantizations", default="none,sq", show_default=True, help="vector storage options to build")
@click.option("--candidates", default="20,30,50,100", show_default=True, help="hybrid / kNN depths to time")
@click.option("--ef", "ef_values", default="20,30,50,100,200,400", show_default=True,
              help="ef_search values for recall@10")
@click.option("--queries", default=200, show_default=True)
@click.option("--no-peers", is_flag=True, help="skip exact numpy and FAISS HNSW beside OpenSearch")
@click.option("--rebuild", is_flag=True, help="rebuild indices that already hold the corpus")
@click.option("--keep", is_flag=True, help="keep the indices built (a later run measures them without rebuilding)")
@click.option("--index-prefix", default="rsrt-bench", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results/scale"),
              show_default=True)
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@encoder_backend_option
@user_errors
def bench_scale(size: str, corpus: str, quantizations: str, candidates: str, ef_values: str, queries: int,
                no_peers: bool, rebuild: bool, keep: bool, index_prefix: str, out: Path, data_dir: str | None,
                encoder_backend: str, **kwargs: Any) -> None:
    """Storage, recall and latency per quantisation and hybrid depth; exact numpy and FAISS beside OpenSearch."""
    from rsrt.cli_bench import _ints
    from rsrt.search.benchmarking.scale import ScalePlan, check_plan, format_scale, run_scale
    from rsrt.search.client import require_cluster

    plan = check_plan(ScalePlan(size=_ints(size, "--size")[0], corpus=corpus, quantizations=_names(quantizations),
                                candidates=_ints(candidates, "--candidates"), ef_values=_ints(ef_values, "--ef"),
                                queries=queries, peers=not no_peers, reuse=not rebuild, keep=keep, data_dir=data_dir,
                                index_prefix=index_prefix,
                                encoder_backend=encoder_backend))
    client, _ = require_cluster(settings_from(kwargs))
    results = run_scale(client, out, plan, echo=click.echo)
    summary = out / "summary.md"
    summary.write_text(format_scale(results))
    click.echo(f"\n{summary.read_text()}\nresults: {out / 'results.json'}, summary: {summary}")
