"""`rsrt bench …`: performance figures as printed numbers (targets live here, not in timed tests)."""

from __future__ import annotations

import json
from typing import Any

import click

from rsrt._cli_common import connection_options, settings_from, user_errors
from rsrt.cli_index import index_option


@click.group()
def bench() -> None:
    """Measure speed: query latency per mode."""


@bench.command("query")
@index_option
@connection_options
@click.option("--benchmark", default="rsitmd", show_default=True, help="where the query captions come from")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@click.option("--n", "count", default=200, show_default=True, help="queries per mode")
@click.option("--k", default=10, show_default=True)
@click.option("--modes", default="lexical,dense,hybrid-server,hybrid-client", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_query(index_name: str, benchmark: str, data_dir: str | None, count: int, k: int, modes: str,
                as_json: bool, **kwargs: Any) -> None:
    """p50/p95/p99 latency and QPS per mode, one client, against an existing index."""
    from rsrt.search.bench import format_latency, query_latency
    from rsrt.search.benchmarks import load_benchmark
    from rsrt.search.client import require_cluster
    from rsrt.search.searcher import Searcher

    client, inventory = require_cluster(settings_from(kwargs))
    texts = list(dict.fromkeys(text for _, _, text in load_benchmark(benchmark, "test", data_dir).captions()))
    queries = texts[:count]
    rows = query_latency(Searcher(client, index_name), queries, tuple(m.strip() for m in modes.split(",")), k)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        click.echo(f"{index_name}: {client.count(index=index_name)['count']} images, OpenSearch "
                   f"{inventory.version}, {len(queries)} queries per mode, k={k}, one client")
        click.echo(format_latency(rows))
