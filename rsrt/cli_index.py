"""`rsrt index create | promote | repair | delete | stats`."""

from __future__ import annotations

import json
from typing import Any

import click

from rsrt._cli_common import connection_options, settings_from, user_errors
from rsrt.search.index import DEFAULT_ALIAS, DEFAULT_QUANTIZATION, QUANTIZATIONS


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
@click.option("--new-version", is_flag=True,
              help="build <alias>-vN+1 beside the live version; the alias stays (search keeps answering from "
                   "the old one) until `rsrt index promote`")
@click.option("--hnsw-m", type=int, default=None, help="HNSW m (default 16)")
@click.option("--hnsw-ef-construction", type=int, default=None, help="HNSW ef_construction (default 128)")
@click.option("--quantization", type=click.Choice(QUANTIZATIONS), default=None,
              help="how vectors are stored: none (float32) or sq (lucene 7-bit scalar quantisation: HNSW reads "
                   "~4x fewer bytes, float32 copies stay on disk) [default for a new index: "
                   f"{DEFAULT_QUANTIZATION}; an existing one keeps its own, another is refused: --new-version]")
@click.option("--no-cluster-model", "cluster_model", is_flag=True, flag_value=False, default=True,
              help="do not deploy the encoder in the cluster (done by default when it has ml-commons)")
@user_errors
def index_create(index_name: str, encoder: str, shards: int, replicas: int, new_version: bool,
                 hnsw_m: int | None, hnsw_ef_construction: int | None, quantization: str | None,
                 cluster_model: bool, **kwargs: Any) -> None:
    """Create the index (idempotent): mappings from mappings/index-template.json, dimension from the encoder.

    \b
    Rebuilding (another encoder, other HNSW parameters) without a gap in search:
      rsrt index create --index X --new-version --encoder E   # builds X-v2 beside X -> X-v1
      rsrt ingest ... --index X-v2 --encoder E                # fills X-v2; search still answers from X-v1
      rsrt index promote --index X                            # X -> X-v2, in one atomic alias swap
    """
    from rsrt.search.client import require_cluster
    from rsrt.search.encoder import Encoder
    from rsrt.search.index import create_index, pending_versions, read_quantization

    client, _ = require_cluster(settings_from(kwargs))
    hnsw = {k: v for k, v in (("m", hnsw_m), ("ef_construction", hnsw_ef_construction)) if v}
    name = create_index(client, Encoder(encoder).info(), index_name, shards, replicas, new_version, hnsw or None,
                        quantization=quantization)
    stored = f"vectors: quantization {read_quantization(client, name)}"
    beside = name in pending_versions(client, index_name)
    if beside:
        click.echo(f"{name} built beside the live {index_name!r} (search keeps answering from it; {stored}); fill "
                   f"it with `rsrt ingest ... --index {name}`, then `rsrt index promote --index {index_name}`")
    else:
        click.echo(f"{index_name} -> {name} ({stored})")
    if cluster_model:
        _deploy(client, name if beside else index_name)


def _deploy(client: Any, target: str) -> None:
    from rsrt.search.ml import deploy_quietly

    found = deploy_quietly(client, target, warn=lambda msg: click.secho(msg, fg="yellow", err=True),
                           log=lambda msg: click.echo(msg, err=True))
    if found is not None:
        click.echo(f"cluster model {found.model_id}, default search pipeline {found.search_pipeline}")


@index.command("promote")
@index_option
@connection_options
@click.option("--version", "version", default=None,
              help="the version to promote: N or <alias>-vN [default: the newest one not yet behind the alias]")
@click.option("--allow-empty", is_flag=True, help="promote a version that holds no documents")
@click.option("--no-cluster-model", "cluster_model", is_flag=True, flag_value=False, default=True,
              help="do not deploy the encoder in the cluster for the promoted version")
@user_errors
def index_promote(index_name: str, version: str | None, allow_empty: bool, cluster_model: bool,
                  **kwargs: Any) -> None:
    """Move the alias to a new version built with `rsrt index create --new-version`, atomically.

    Refused while the version is still being loaded (an ingest into it is running or was killed), or when it
    is empty: search would answer less than before. The old version is kept without the alias; promoting it
    again is the rollback.
    """
    from rsrt.search.client import require_cluster
    from rsrt.search.index import promote_version

    client, _ = require_cluster(settings_from(kwargs))
    old, new = promote_version(client, index_name, version, allow_empty=allow_empty)
    click.echo(f"{index_name} -> {new}" + (f" (was {', '.join(old)}; kept, without the alias)" if old else ""))
    if cluster_model:
        _deploy(client, index_name)


@index.command("repair")
@index_option
@connection_options
@user_errors
def index_repair(index_name: str, **kwargs: Any) -> None:
    """Undo the bulk-load settings a killed ingest left (0 replicas, its refresh interval).

    An ingest drops replicas (and sets its own refresh interval, never off) while it loads and restores
    both when it ends; a killed one cannot. What it wrote is searchable anyway (within a second); this
    restores the original settings now (the next ingest into the index also does, when it ends).
    Harmless while an ingest is running.
    """
    from rsrt.search.client import connect
    from rsrt.search.index import repair_bulk_load

    restored = repair_bulk_load(connect(settings_from(kwargs)), index_name)
    if not restored:
        click.echo(f"{index_name}: no unfinished bulk load; nothing to repair")
    for name, original in restored.items():
        click.echo(f"{name}: restored refresh_interval {original['refresh_interval']}, "
                   f"{original['number_of_replicas']} replicas")


@index.command("delete")
@index_option
@connection_options
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@user_errors
def index_delete(index_name: str, yes: bool, **kwargs: Any) -> None:
    """Delete rsrt's versions of the alias (<alias>-v<digits> created by rsrt), and its template.

    Indices rsrt did not create for this alias (another tool's `<alias>-vault`, a hand-made `<alias>-v9`)
    are left, and named.
    """
    from rsrt.search.client import connect
    from rsrt.search.index import delete_index

    if not yes:
        click.confirm(f"delete index {index_name!r} and all its versions?", abort=True)
    deleted, left = delete_index(connect(settings_from(kwargs)), index_name)
    click.echo(f"deleted {', '.join(deleted)}" if deleted else f"{index_name!r}: no rsrt index to delete")
    if left:
        click.secho(f"left {', '.join(left)}: not created by rsrt for {index_name!r} (no rsrt _meta for it)",
                    fg="yellow", err=True)


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
    click.echo(f"vectors:   quantization {info.quantization}")
    if info.pending:
        click.echo(f"pending:   {', '.join(info.pending)} (not behind the alias yet; `rsrt index promote`)")
    if info.unfinished_bulk_load:
        click.echo(f"bulk load: unfinished on {', '.join(info.unfinished_bulk_load)} (an ingest is running, or was "
                   f"killed: `rsrt index repair --index {index_name}` restores refresh and replicas)")
