"""`rsrt dashboards`: export the OpenSearch Dashboards saved objects for an index, or import them."""

from __future__ import annotations

from pathlib import Path

import click

from rsrt._cli_common import user_errors
from rsrt.cli_index import index_option


@click.group()
def dashboards() -> None:
    """OpenSearch Dashboards objects: index pattern, saved search, visualizations, dashboard."""


@dashboards.command("export")
@index_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the NDJSON here (default: standard output)")
@user_errors
def dashboards_export(index_name: str, output: Path | None) -> None:
    """Write the saved objects for --index (an index, alias or wildcard pattern) as NDJSON."""
    from rsrt.search.dashboards import export_objects, to_ndjson

    objects = export_objects(index_name)
    text = to_ndjson(objects)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {len(objects)} saved objects for {index_name} to {output}", err=True)


@dashboards.command("import")
@index_option
@click.option("--url", envvar="RSRT_DASHBOARDS_URL", required=True,
              help="OpenSearch Dashboards URL, e.g. http://127.0.0.1:5601 [env RSRT_DASHBOARDS_URL]")
@click.option("--user", envvar="RSRT_DASHBOARDS_USER", default=None, help="basic-auth user [env RSRT_DASHBOARDS_USER]")
@click.option("--password", envvar="RSRT_DASHBOARDS_PASSWORD", default=None, show_envvar=False,
              help="basic-auth password; prefer env RSRT_DASHBOARDS_PASSWORD (never printed)")
@click.option("--tenant", default=None, help="security plugin tenant (sent as the securitytenant header)")
@click.option("--file", "ndjson_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="import this NDJSON instead of exporting for --index")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), default=None, help="CA bundle for TLS")
@click.option("--insecure", is_flag=True, default=False, help="do not verify TLS certificates")
@user_errors
def dashboards_import(index_name: str, url: str, user: str | None, password: str | None, tenant: str | None,
                      ndjson_file: Path | None, ca_file: str | None, insecure: bool) -> None:
    """Post the objects to /api/saved_objects/_import?overwrite=true and report what was written."""
    from rsrt.search.dashboards import DashboardsError, export_objects, import_objects, to_ndjson

    if ndjson_file is not None:
        text, filename = ndjson_file.read_text(encoding="utf-8"), ndjson_file.name
        if not filename.endswith(".ndjson"):
            filename += ".ndjson"
    else:
        text, filename = to_ndjson(export_objects(index_name)), f"rsrt-{index_name.replace('*', 'all')}.ndjson"
    verify: bool | str = False if insecure else (ca_file or True)
    result = import_objects(url, text, user=user, password=password, tenant=tenant, verify=verify,
                            filename=filename)
    for entry in result.created:
        title = (entry.get("meta") or {}).get("title", "")
        click.echo(f"imported {entry.get('type')}:{entry.get('id')}  {title}".rstrip())
    for error in result.errors:
        reason = error.get("error") or {}
        click.secho(f"refused  {error.get('type')}:{error.get('id')}  {reason.get('type', '')} "
                    f"{reason.get('message', '')}".rstrip(), fg="red", err=True)
    if not result.success or result.errors:
        raise DashboardsError(f"Dashboards refused {len(result.errors)} of the objects (see above)")
    click.echo(f"{len(result.created)} saved objects imported into {url}", err=True)
