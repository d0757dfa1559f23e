"""`rsrt bench encode-query`: what encoding one query costs, per encoder backend and thread count."""

from __future__ import annotations

import json

import click

from rsrt._cli_common import user_errors


def _choices(value: str, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed]
    if not chosen or unknown:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(allowed)}", param_hint=name)
    return chosen


def _threads(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected integers, 0 = the backend's default",
                                 param_hint="--threads") from None
    if not counts or any(c < 0 for c in counts):
        raise click.BadParameter(f"{value!r}: expected integers ≥ 0", param_hint="--threads")
    return counts


@click.command("encode-query")
@click.option("--backends", default="torch,onnx,onnx-int8,torch-int8", show_default=True,
              help="encoder backends, comma-separated (torch is always run: the cosine reference)")
@click.option("--n", "count", type=click.IntRange(1), default=200, show_default=True,
              help="queries timed per backend, one text per call")
@click.option("--warmup", type=click.IntRange(0), default=20, show_default=True, help="untimed calls first")
@click.option("--threads", default="0,1,2", show_default=True,
              help="torch / onnxruntime intra-op threads to compare; 0 = the backend's default")
@click.option("--encoder", default=None, help="model name (default: the packaged all-MiniLM-L6-v2)")
@click.option("--benchmark", default="rsitmd", show_default=True, help="where the query captions come from")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@click.option("--cold-export", is_flag=True,
              help="also time a first ONNX query with no export on disk (fresh temporary cache; slow)")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_encode_query(backends: str, count: int, warmup: int, threads: str, encoder: str | None, benchmark: str,
                       data_dir: str | None, cold_export: bool, as_json: bool) -> None:
    """Single-query encoding latency (p50/p95/mean), cosine to torch, cache-hit cost, first-query cost."""
    from rsrt.search.benchmarking.encoders import QueryEncodePlan, format_query_encoding, query_encoding_bench
    from rsrt.search.datasets import load_benchmark
    from rsrt.search.encoder import BACKENDS, DEFAULT_ENCODER

    plan = QueryEncodePlan(backends=_choices(backends, "--backends", BACKENDS), n=count, warmup=warmup,
                           threads=_threads(threads), model=encoder or DEFAULT_ENCODER, cold_export=cold_export)
    texts = list(dict.fromkeys(text for _, _, text in load_benchmark(benchmark, "test", data_dir).captions()))
    rows = query_encoding_bench(plan, texts, echo=None if as_json else lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(f"{len(texts[:count])} {benchmark} test captions, one per call, after {warmup} warm-up calls")
        click.echo(format_query_encoding(rows))
