"""The one way rsrt talks to OpenSearch: build a client, check it can be used, say clearly why not.

The transport class is pluggable (opensearch-py's `connection_class`), so callers and tests can put
a real alternative (requests-based, or one with extra instrumentation) behind the same client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import opensearchpy
from opensearchpy import OpenSearch

from .config import ConnectionSettings
from .errors import ClusterError, RsrtError, from_opensearch
from .serializer import FastJSONSerializer

# What the rsrt index contract needs from a cluster.
REQUIRED_PLUGINS: tuple[str, ...] = ("opensearch-knn",)
REQUIRED_MODULES: tuple[str, ...] = ("analysis-common", "lang-painless")
# Optional: with it the cluster embeds text itself; without it rsrt embeds on the client.
ML_COMMONS_PLUGIN = "opensearch-ml"


def connect(
    settings: ConnectionSettings | None = None,
    connection_class: type[opensearchpy.Connection] | None = None,
    **client_options: Any,
) -> OpenSearch:
    """Build a client; nothing is sent until first use (see `ping_cluster`)."""
    settings = settings or ConnectionSettings.resolve()
    options: dict[str, Any] = {
        "hosts": list(settings.urls),
        "timeout": settings.timeout,
        "max_retries": 3,
        "retry_on_timeout": True,
        "verify_certs": settings.verify_certs,
        "ssl_show_warn": settings.verify_certs,
        "serializer": FastJSONSerializer(),
        # One pooled connection per concurrent caller (API workers, bench clients, bulk writers);
        # urllib3's default of 1 made every concurrent request open a new TCP connection.
        "pool_maxsize": 16,
    }
    if settings.user and settings.password is not None:
        options["http_auth"] = (settings.user, settings.password.reveal())
    if settings.ca_file:
        options["ca_certs"] = settings.ca_file
    if settings.client_cert:
        options["client_cert"] = settings.client_cert
        if settings.client_key:
            options["client_key"] = settings.client_key
    if connection_class is not None:
        options["connection_class"] = connection_class
    options.update(client_options)
    return OpenSearch(**options)


def cluster_error(exc: Exception, settings: ConnectionSettings) -> RsrtError:
    """A client exception as the one-line error users see, naming the cluster (errors.py has the table)."""
    return from_opensearch(exc, where=settings.describe())


@dataclass
class ClusterInventory:
    """What a cluster is and has: version, nodes, health, plugins and modules."""

    cluster_name: str
    version: str
    distribution: str
    status: str
    number_of_nodes: int
    plugins: dict[str, str] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)

    def missing(
        self, plugins: Iterable[str] = REQUIRED_PLUGINS, modules: Iterable[str] = REQUIRED_MODULES
    ) -> list[str]:
        gaps = [f"plugin {p}" for p in plugins if p not in self.plugins]
        gaps += [f"module {m}" for m in modules if m not in self.modules and m not in self.plugins]
        return gaps

    @property
    def has_neural_search(self) -> bool:
        return "opensearch-neural-search" in self.plugins

    @property
    def has_ml_commons(self) -> bool:
        """ml-commons is there, so models can be deployed in the cluster (optional, never required)."""
        return ML_COMMONS_PLUGIN in self.plugins


def inspect_cluster(client: OpenSearch, settings: ConnectionSettings) -> ClusterInventory:
    """Ask the cluster what it is; every failure becomes a ClusterError with a readable reason."""
    try:
        info = client.info()
        health = client.cluster.health()
        nodes = client.nodes.info(metric="plugins")
    except opensearchpy.exceptions.OpenSearchException as exc:
        raise cluster_error(exc, settings) from None
    plugins: dict[str, str] = {}
    modules: dict[str, str] = {}
    for node in nodes.get("nodes", {}).values():
        for plugin in node.get("plugins", []):
            plugins[plugin["name"]] = plugin.get("version", "")
        for module in node.get("modules", []):
            modules[module["name"]] = module.get("version", "")
    version = info.get("version", {})
    return ClusterInventory(
        cluster_name=info.get("cluster_name", ""),
        version=version.get("number", ""),
        distribution=version.get("distribution", "elasticsearch"),
        status=health.get("status", "unknown"),
        number_of_nodes=int(health.get("number_of_nodes", 0)),
        plugins=plugins,
        modules=modules,
    )


def require_cluster(
    settings: ConnectionSettings | None = None,
    plugins: Iterable[str] = REQUIRED_PLUGINS,
    modules: Iterable[str] = REQUIRED_MODULES,
    **client_options: Any,
) -> tuple[OpenSearch, ClusterInventory]:
    """Connect and fail early, naming what is missing, before any real work starts."""
    settings = settings or ConnectionSettings.resolve()
    client = connect(settings, **client_options)
    inventory = inspect_cluster(client, settings)
    gaps = inventory.missing(plugins, modules)
    if gaps:
        raise ClusterError(
            f"OpenSearch at {settings.describe()} lacks {', '.join(gaps)}; rsrt needs them "
            "(the local node `rsrt node start` has all of them)"
        )
    return client, inventory
