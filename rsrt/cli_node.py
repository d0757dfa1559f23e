"""`rsrt node start | stop | status | logs | security-config`: a local OpenSearch node for development and tests.

Import-light on purpose: `rsrt node status` must answer fast, so the node and client modules are imported
inside the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, settings_from, user_errors


def node_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--name", default="rsrt", show_default=True, help="cluster name (one data dir per name)"),
        click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="RSRT_HOME",
                     help="cache dir for artifacts and node data [env RSRT_HOME; default user cache, "
                          "/var/cache/rsrt as root]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _cluster(name: str, home: Path | None, **overrides: Any):
    from rsrt.search.node import LocalCluster, NodeSettings

    settings = NodeSettings(name=name, **overrides)
    if home:
        settings.home = home.expanduser().resolve()
    if "http_port" not in overrides or "nodes" not in overrides:
        # status/stop/logs: take ports and node count from what `start` recorded
        probe = LocalCluster(settings)
        state = probe.state()
        if state:
            settings.http_port = state.http_ports[0]
            settings.nodes = state.nodes
            settings.secure = state.secure
    return LocalCluster(settings, log=lambda msg: click.echo(msg, err=True))


@click.group()
def node() -> None:
    """Run a local OpenSearch 2.19 node (k-NN, neural-search, ml-commons) built from Maven Central."""


@node.command("start")
@node_options
@click.option("--nodes", default=1, show_default=True, type=int, help="number of nodes (3 for replica tests)")
@click.option("--http-port", default=9200, show_default=True, type=int, help="first node's HTTP port")
@click.option("--transport-port", default=9300, show_default=True, type=int, help="first node's transport port")
@click.option("--heap", default="1g", show_default=True, help="JVM heap per node, e.g. 512m, 2g")
@click.option("--version", "os_version", default=None, help="OpenSearch version (default 2.19.1)")
@click.option("--fresh", is_flag=True, help="delete this cluster's data before starting")
@click.option("--timeout", default=180.0, show_default=True, help="seconds to wait for green")
@click.option("--secure", is_flag=True, help="TLS and basic auth (security plugin): own CA, users admin, "
              "rsrt-ingest, rsrt-reader, rsrt-dashboards; passwords shown once, kept in "
              "<cluster dir>/passwords.json (0600)")
@user_errors
def node_start(name: str, home: Path | None, nodes: int, http_port: int, transport_port: int, heap: str,
               os_version: str | None, fresh: bool, timeout: float, secure: bool) -> None:
    """Provision (once) and start the node(s); wait until the cluster is green."""
    overrides: dict[str, Any] = {"nodes": nodes, "http_port": http_port, "transport_port": transport_port,
                                 "heap": heap, "start_timeout": timeout, "secure": secure}
    if os_version:
        overrides["version"] = os_version
    cluster = _cluster(name, home, **overrides)
    state = cluster.start(fresh=fresh)
    click.echo(f"{state.url}  (cluster {state.name}, {state.nodes} node(s), pids {' '.join(map(str, state.pids))})")
    if state.secure:
        click.echo(f"CA for clients: {state.ca_file}   (--ca-file / RSRT_OPENSEARCH_CA_FILE)")
        click.echo(f"users: {', '.join(state.users)}   (passwords in {cluster.security.passwords_file})")
    if cluster.new_passwords:  # first creation only: shown once, never logged
        click.echo("passwords (shown once; keep them, or read the file above as root):")
        for user, password in cluster.new_passwords.items():
            click.echo(f"  {user}: {password}")


@node.command("stop")
@node_options
@user_errors
def node_stop(name: str, home: Path | None) -> None:
    """Stop every process of the local cluster."""
    cluster = _cluster(name, home)
    pids = cluster.stop()
    click.echo(f"stopped {len(pids)} process(es)" if pids else f"cluster {name!r} was not running")


@node.command("status")
@node_options
@connection_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@user_errors
def node_status(name: str, home: Path | None, as_json: bool, **kwargs: Any) -> None:
    """The local processes, and what the connected cluster is: version, health, plugins, modules."""
    from rsrt.search.client import REQUIRED_MODULES, REQUIRED_PLUGINS, connect, inspect_cluster

    cluster = _cluster(name, home)
    state = cluster.state()
    url_given = kwargs.get("url")
    if not url_given and state:
        kwargs["url"] = state.url
    if not url_given and state and state.secure:
        # the local secure node: verify with its CA, authenticate as its admin (never printed)
        kwargs["ca_file"] = kwargs.get("ca_file") or state.ca_file
        if not kwargs.get("user"):
            kwargs["user"] = "admin"
            kwargs["password"] = cluster.security.passwords()["admin"]
    settings = settings_from(kwargs)
    local = {"name": name, "running_pids": cluster.running_pids(), "url": state.url if state else None,
             "startup_seconds": state.startup_seconds if state else None,
             "security": bool(state and state.secure), "users": state.users if state else [],
             "ca_file": state.ca_file if state else None}
    inventory = inspect_cluster(connect(settings), settings)
    gaps = inventory.missing(REQUIRED_PLUGINS, REQUIRED_MODULES)
    if as_json:
        click.echo(json.dumps({"local": local, "cluster": inventory.__dict__, "missing": gaps,
                               "ml_commons": inventory.has_ml_commons}, indent=2))
    else:
        if local["running_pids"]:
            click.echo(f"local cluster {name}: running, pids {' '.join(map(str, local['running_pids']))}")
        if state:
            click.echo("security:    " + (f"on (TLS + basic auth; CA {state.ca_file}; users {', '.join(state.users)})"
                                          if state.secure else "off (plain HTTP, no authentication)"))
        click.echo(f"connected:   {settings.describe()}")
        click.echo(f"cluster:     {inventory.cluster_name} ({inventory.distribution} {inventory.version}), "
                   f"status {inventory.status}, {inventory.number_of_nodes} node(s)")
        click.echo("plugins:     " + (", ".join(f"{k} {v}" for k, v in sorted(inventory.plugins.items())) or "-"))
        click.echo("modules:     " + (", ".join(sorted(inventory.modules)) or "-"))
        click.echo("hybrid:      " + ("server-side (neural-search)" if inventory.has_neural_search
                                      else "client-side fusion (no neural-search)"))
        click.echo("ml-commons:  " + ("yes (the cluster can embed text)" if inventory.has_ml_commons
                                      else "no (rsrt embeds queries on the client)"))
        if gaps:
            click.secho("missing:     " + ", ".join(gaps), fg="red")
    if gaps:
        sys.exit(1)


@node.command("logs")
@node_options
@click.option("-n", "--lines", default=50, show_default=True, help="lines to show")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("--node-index", default=0, show_default=True, help="which node of a multi-node cluster")
@user_errors
def node_logs(name: str, home: Path | None, lines: int, follow: bool, node_index: int) -> None:
    """Show the node's log."""
    cluster = _cluster(name, home)
    for line in cluster.follow_log(node_index, lines, follow):
        click.echo(line.rstrip("\n"))


@node.command("security-config")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--node-config-dir", default="/usr/share/opensearch/config", show_default=True,
              help="the node's config dir as the node sees it (the official image's; a VM's, e.g. /etc/opensearch)")
@click.option("--force", is_flag=True, help="replace material an earlier run wrote here (new certificates and "
              "passwords); other files in OUT_DIR are never touched")
@user_errors
def node_security_config(out_dir: Path, node_config_dir: str, force: bool) -> None:
    """Write `--secure`'s CA, certificates, users and roles for a cluster rsrt does not start (docker/, a VM)."""
    from pathlib import PurePosixPath

    from rsrt.search._node.security import PASSWORDS_FILE, USERS, write_external_config

    passwords = write_external_config(out_dir, PurePosixPath(node_config_dir), force=force)
    click.echo(f"wrote the security material to {out_dir}   (CA for clients: {out_dir / 'ca.pem'})")
    click.echo(f"users: {', '.join(USERS)}   (passwords in {out_dir / PASSWORDS_FILE}, 0600)")
    click.echo("passwords (shown once; keep them, or read the file above):")
    for user, password in passwords.items():
        click.echo(f"  {user}: {password}")
