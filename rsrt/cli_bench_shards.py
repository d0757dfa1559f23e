"""`rsrt bench shards`: shard/replica layouts on a local multi-node cluster, then the loss of a node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, settings_from, user_errors


def _int_list(value: str, option: str, minimum: int) -> tuple[int, ...]:
    """Comma-separated integers ≥ minimum (10k allowed), else a one-line ConfigError naming the option."""
    from rsrt.search.errors import ConfigError

    try:
        numbers = tuple(int(v.strip().replace("_", "").replace("k", "000")) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} {value!r}: expected comma-separated integers") from None
    if not numbers or any(n < minimum for n in numbers):
        raise ConfigError(f"{option} {value!r}: expected integers ≥ {minimum}")
    return tuple(dict.fromkeys(numbers))


def _layout(value: str) -> tuple[int, int]:
    from rsrt.search.errors import ConfigError

    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) < 1:
        raise ConfigError(f"--kill-layout {value!r}: expected SHARDSxREPLICAS, e.g. 3x1")
    return int(parts[0]), int(parts[1])


@click.command("shards")
@connection_options
@click.option("--cluster-name", default=None,
              help="the local cluster (`rsrt node start --nodes 3 --name NAME`) to kill a node of; without it, "
                   "no node-kill run. Without --url, the client connects to all its nodes")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="RSRT_HOME",
              help="the local clusters' home [env RSRT_HOME; default as `rsrt node`]")
@click.option("--size", default="10000", show_default=True, help="corpus images per layout (10k allowed)")
@click.option("--shards", default="1,3,6", show_default=True, help="primary shard counts")
@click.option("--replicas", default="0,1", show_default=True, help="replica counts (each ≤ nodes − 1)")
@click.option("--clients", default="1,4", show_default=True, help="concurrent query clients")
@click.option("--queries", default=200, show_default=True, type=int, help="queries per mode and client count")
@click.option("--modes", default="dense,hybrid-client", show_default=True, help="engine query conditions")
@click.option("--kill-modes", default=None, help="conditions of the node-kill run [default: --modes]")
@click.option("--kill-layout", default="3x1", show_default=True, help="the layout of the node-kill run")
@click.option("--kill-seconds", default=60.0, show_default=True, type=float,
              help="length of the query run during which a node is killed (a quarter in)")
@click.option("--kill-clients", default=None, type=int,
              help="clients in the node-kill run [default: the most of --clients]")
@click.option("--no-kill", is_flag=True, help="measure the layouts only")
@click.option("--pool-per-class", default=300, show_default=True, type=int,
              help="distinct variants per scene class (smaller is faster to encode)")
@click.option("--index-prefix", default="rsrt-bench-shards", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-shards"),
              show_default=True, help="results.json, summary.md and the corpus files")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@click.option("--keep", is_flag=True, help="keep the indices this run created")
@user_errors
def bench_shards(cluster_name: str | None, home: Path | None, size: str, shards: str, replicas: str, clients: str,
                 queries: int, modes: str, kill_modes: str | None, kill_layout: str, kill_seconds: float,
                 kill_clients: int | None,
                 no_kill: bool, pool_per_class: int, index_prefix: str, out: Path, data_dir: str | None,
                 keep: bool, **kwargs: Any) -> None:
    """Ingest and query latency per shards × replicas layout, then a node SIGKILLed during queries."""
    from rsrt.search.errors import ConfigError

    sizes = _int_list(size, "--size", 1)
    if len(sizes) != 1:
        raise ConfigError(f"--size {size!r}: one size per run")
    if pool_per_class < 5:
        raise ConfigError(f"--pool-per-class {pool_per_class}: at least 5 (an image takes five variants of one class)")
    if kill_clients is not None and kill_clients < 1:
        raise ConfigError(f"--kill-clients {kill_clients}: expected a positive integer")
    layouts = tuple((s, r) for r in _int_list(replicas, "--replicas", 0) for s in _int_list(shards, "--shards", 1))
    from rsrt.search.benchmarking.cluster import ShardPlan

    plan = ShardPlan(size=sizes[0], layouts=layouts, clients=_int_list(clients, "--clients", 1), queries=queries,
                     modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                     kill_layout=None if no_kill else _layout(kill_layout), kill_seconds=kill_seconds,
                     index_prefix=index_prefix, pool_per_class=pool_per_class, data_dir=data_dir,
                     keep_indices=keep, kill_clients=kill_clients,
                     kill_modes=tuple(m.strip() for m in kill_modes.split(",") if m.strip()) if kill_modes else None)
    plan.validate()
    from opensearchpy import OpenSearchException

    from rsrt.search.benchmarking.cluster import attach_cluster, format_shards, node_urls, run_shards
    from rsrt.search.client import cluster_error, connect

    cluster = None
    if cluster_name and not no_kill:
        cluster = attach_cluster(cluster_name, home, log=lambda msg: click.echo(msg, err=True))
        if not kwargs.get("url"):
            kwargs["url"] = ",".join(node_urls(cluster))
    elif not no_kill:
        click.echo("no --cluster-name: the layouts only, no node-kill run", err=True)
    settings = settings_from(kwargs)
    client = connect(settings)
    try:
        client.info()
    except OpenSearchException as exc:
        raise cluster_error(exc, settings) from None
    data = run_shards(client, cluster, out, plan, echo=click.echo)
    summary = out / "summary.md"
    summary.write_text(format_shards(data))
    click.echo(f"\n{summary.read_text()}")
    click.echo(f"results: {out / 'results.json'}, summary: {summary}")
