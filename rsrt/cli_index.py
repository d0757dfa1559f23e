"""`rsrt index create | delete | stats`."""

from __future__ import annotations

import json
from typing import Any

import click

from rsrt._cli_common import connection_options, settings_from, user_errors
from rsrt.search.index import DEFAULT_ALIAS


def index_option(func):
    return click.option("--index", "index_name", default=DEFAULT_ALIAS, show_default=True, envvar="RSRT_INDEX",
                        help="index alias [env RSRT_INDEX]")(func)


@click.group()
def index() -> None:
    """Create, inspect and delete rsrt indices (versioned names behind an alias)."""


@index.command("create")
@index_option
@connection_options
@click.option("--encoder", default="all-MiniLM-L6-v2", show_default=True,
              help="sentence encoder: a packaged name, a local path, or a hub id")
@click.option("--shards", default=1, show_default=True)
@click.option("--replicas", default=0, show_default=True)
@click.option("--new-version", is_flag=True, help="build <alias>-vN+1 and move the alias to it")
@click.option("--hnsw-m", type=int, default=None, help="HNSW m (default 16)")
@click.option("--hnsw-ef-construction", type=int, default=None, help="HNSW ef_construction (default 128)")
@click.option("--no-cluster-model", "cluster_model", is_flag=True, flag_value=False, default=True,
              help="do not deploy the encoder in the cluster (done by default when it has ml-commons)")
@user_errors
def index_create(index_name: str, encoder: str, shards: int, replicas: int, new_version: bool,
                 hnsw_m: int | None, hnsw_ef_construction: int | None, cluster_model: bool, **kwargs: Any) -> None:
    """Create the index (idempotent): mappings from mappings/index-template.json, dimension from the encoder."""
    from rsrt.search.client import require_cluster
    from rsrt.search.encoder import Encoder
    from rsrt.search.index import create_index

    client, _ = require_cluster(settings_from(kwargs))
    hnsw = {k: v for k, v in (("m", hnsw_m), ("ef_construction", hnsw_ef_construction)) if v}
    name = create_index(client, Encoder(encoder).info(), index_name, shards, replicas, new_version, hnsw or None)
    click.echo(f"{index_name} -> {name}")
    if cluster_model:
        from rsrt.search.ml import deploy_quietly

        found = deploy_quietly(client, index_name, warn=lambda msg: click.secho(msg, fg="yellow", err=True),
                               log=lambda msg: click.echo(msg, err=True))
        if found is not None:
            click.echo(f"cluster model {found.model_id}, default search pipeline {found.search_pipeline}")


@index.command("delete")
@index_option
@connection_options
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@user_errors
def index_delete(index_name: str, yes: bool, **kwargs: Any) -> None:
    """Delete every version behind the alias, and its template."""
    from rsrt.search.client import connect
    from rsrt.search.index import delete_index

    if not yes:
        click.confirm(f"delete index {index_name!r} and all its versions?", abort=True)
    deleted = delete_index(connect(settings_from(kwargs)), index_name)
    click.echo(f"deleted {', '.join(deleted)}" if deleted else f"{index_name!r} did not exist")


@index.command("stats")
@index_option
@connection_options
@click.option("--json", "as_json", is_flag=True)
@user_errors
def index_stats_command(index_name: str, as_json: bool, **kwargs: Any) -> None:
    """Documents, size, versions and the encoder of an index."""
    from rsrt.search.client import connect
    from rsrt.search.index import index_stats

    info = index_stats(connect(settings_from(kwargs)), index_name)
    if as_json:
        click.echo(json.dumps(vars(info), indent=2))
        return
    click.echo(f"index:     {info.alias} -> {info.index} (versions: {', '.join(info.versions)})")
    click.echo(f"documents: {info.documents}")
    click.echo(f"size:      {info.size_bytes / 1e6:.1f} MB")
    click.echo(f"encoder:   {info.encoder.get('name')} ({info.dimension} dims)")
