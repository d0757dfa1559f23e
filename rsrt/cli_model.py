"""`rsrt model deploy | list | status | undeploy | delete`: the index's encoder inside the cluster (ml-commons)."""

from __future__ import annotations

import json
from typing import Any

import click

from rsrt._cli_common import connection_options, settings_from, user_errors
from rsrt.cli_index import index_option


def _client(kwargs: dict[str, Any]):
    from rsrt.search.client import require_cluster

    client, _ = require_cluster(settings_from(kwargs))
    return client


@click.group()
def model() -> None:
    """Deploy the index's encoder in the cluster so any OpenSearch client can search by plain text."""


@model.command("deploy")
@index_option
@connection_options
@click.option("--remote", "remote_url", default=None, metavar="URL",
              help="an OpenAI-compatible /v1/embeddings endpoint for clusters that accept only remote models")
@user_errors
def model_deploy(index_name: str, remote_url: str | None, **kwargs: Any) -> None:
    """Export, register, deploy; record the model in the index and make its search pipeline the default."""
    from rsrt.search.ml import deploy_model

    found = deploy_model(_client(kwargs), index_name, remote_url=remote_url, log=lambda msg: click.echo(msg, err=True))
    click.echo(f"{index_name}: model {found.model_id} ({found.encoder}, {found.kind}), "
               f"default search pipeline {found.search_pipeline}")


@model.command("list")
@connection_options
@click.option("--json", "as_json", is_flag=True)
@user_errors
def model_list(as_json: bool, **kwargs: Any) -> None:
    """The models rsrt registered, their state and the indices that use them."""
    from rsrt.search.ml import list_models

    models = list_models(_client(kwargs))
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    if not models:
        click.echo("no rsrt models in the cluster")
    for m in models:
        click.echo(f"{m['model_id']}  {m['name']}  {m['state']}  {m['dimension']} dims  "
                   f"indices: {', '.join(m['indices']) or '-'}")


@model.command("status")
@index_option
@connection_options
@click.option("--json", "as_json", is_flag=True)
@user_errors
def model_status_command(index_name: str, as_json: bool, **kwargs: Any) -> None:
    """The index's recorded cluster model, its state, and whether its pipeline is the index default."""
    from rsrt.search.ml import model_status

    status = model_status(_client(kwargs), index_name)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    recorded = status["model"]
    if recorded is None:
        click.echo(f"{index_name}: no cluster model" + ("" if status["ml_commons"] else " (the cluster has no "
                   "ml-commons)") + f"; `rsrt model deploy --index {index_name}`")
        return
    click.echo(f"model:    {recorded['model_id']} ({recorded['encoder']}, {recorded['kind']}, "
               f"{recorded['dimension']} dims)")
    click.echo(f"state:    {status['state']}")
    click.echo(f"pipeline: {recorded['search_pipeline']} "
               f"({'the index default' if status['pipeline_default'] else 'NOT the index default'})")


@model.command("undeploy")
@click.argument("model_id")
@connection_options
@user_errors
def model_undeploy(model_id: str, **kwargs: Any) -> None:
    """Free a model's memory (searches through it fail until it is deployed again)."""
    from rsrt.search.ml import undeploy_model

    undeploy_model(_client(kwargs), model_id)
    click.echo(f"undeployed {model_id}")


@model.command("delete")
@click.argument("model_id")
@connection_options
@click.option("--force", is_flag=True, help="delete it even though an index records it as its cluster model")
@user_errors
def model_delete(model_id: str, force: bool, **kwargs: Any) -> None:
    """Undeploy and delete a model rsrt registered (rsrt never deletes models it did not create)."""
    from rsrt.search.ml import delete_model

    delete_model(_client(kwargs), model_id, force=force)
    click.echo(f"deleted {model_id}")
