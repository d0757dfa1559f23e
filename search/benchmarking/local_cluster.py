"""The local multi-node cluster a benchmark runs on: attach to it, kill a node, start it again, read its state.

Shared by `rsrt bench shards` (layouts) and its node-kill run (`node_kill.py`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch, OpenSearchException

from ..errors import ConfigError, NodeError
from ..node import LocalCluster, NodeSettings, _pid_alive, default_home

Echo = Callable[[str], None]


def attach_cluster(name: str, home: Path | None = None, log: Echo | None = None) -> LocalCluster:
    """The running local cluster `name` with the settings it was started with.

    `state.json` records the HTTP ports, node count and pids; the transport port and heap are read
    back from node 0's own config, so that a node started again gets the very same configuration.
    """
    settings = NodeSettings(name=name, home=(home or default_home()).expanduser().resolve())
    probe = LocalCluster(settings)
    state = probe.state()
    if state is None or not probe.running_pids():
        raise ConfigError(f"no running local cluster {name!r} under {settings.home}; start one with "
                          f"`rsrt node start --nodes 3 --name {name}`")
    config = probe.node_dir(0) / "config"
    transport, heap = settings.transport_port, settings.heap
    try:
        for line in (config / "opensearch.yml").read_text().splitlines():
            if line.startswith("transport.port:"):
                transport = int(line.split(":", 1)[1])
        for line in (config / "jvm.options.d" / "rsrt-heap.options").read_text().splitlines():
            if line.startswith("-Xmx"):
                heap = line[4:].strip()
    except (OSError, ValueError):
        raise ConfigError(f"cluster {name!r}: cannot read node 0's config under {config}") from None
    settings = replace(settings, nodes=state.nodes, http_port=state.http_ports[0], transport_port=transport,
                       heap=heap, version=state.version, secure=state.secure)
    return LocalCluster(settings, log=log or (lambda _msg: None))


def node_urls(cluster: LocalCluster) -> list[str]:
    """Every node's HTTP URL: a client given all of them fails over when one dies."""
    state = cluster.state()
    scheme = "https" if cluster.settings.secure else "http"
    ports = state.http_ports if state else [cluster.settings.http_port + i for i in range(cluster.settings.nodes)]
    return [f"{scheme}://127.0.0.1:{port}" for port in ports]


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our own child (a test's cluster): collect it, or it lingers as a zombie
    return _pid_alive(pid)


def kill_node(cluster: LocalCluster, index: int, timeout: float = 30.0) -> int:
    """SIGKILL node `index` (no shutdown: what a crash or the OOM killer does); returns its pid once it is gone."""
    state = cluster.state()
    if state is None or index >= len(state.pids) or not _alive(state.pids[index]):
        raise NodeError(f"cluster {cluster.settings.name!r} has no running node {index}")
    pid = state.pids[index]
    try:
        os.killpg(pid, signal.SIGKILL)  # the node runs in its own session: its group is the JVM
    except PermissionError:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise NodeError(f"node {index} (pid {pid}) survived SIGKILL for {timeout:.0f} s")
        time.sleep(0.05)
    return pid


def restart_node(cluster: LocalCluster, index: int) -> int:
    """Start node `index` again with its own data and config; the cluster's state records the new pid."""
    state = cluster.state()
    if state is not None and index < len(state.pids):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pids[index], os.WNOHANG)  # our own killed child (a test's cluster): collect it
    return cluster.start_node(index)



# facts ------------------------------------------------------------------------------------------------


def cluster_facts(client: OpenSearch) -> dict[str, Any]:
    """Version, nodes (name, heap, HTTP address, roles) and the elected cluster manager."""
    info = client.nodes.info(metric="jvm,http")
    nodes = []
    for node in info["nodes"].values():
        nodes.append({"name": node["name"], "heap_max_mb": round(node["jvm"]["mem"]["heap_max_in_bytes"] / 2**20),
                      "http": node.get("http", {}).get("publish_address"), "roles": node.get("roles", [])})
    nodes.sort(key=lambda n: n["name"])
    return {"version": client.info()["version"]["number"], "nodes": nodes, "number_of_nodes": len(nodes),
            "cluster_manager": cluster_manager(client)}


def cluster_manager(client: OpenSearch) -> str | None:
    try:
        rows = client.transport.perform_request("GET", "/_cat/cluster_manager", params={"format": "json"})
        return rows[0]["node"] if rows else None
    except (OpenSearchException, KeyError, IndexError):
        return None


def concrete_index(client: OpenSearch, alias: str) -> str:
    return sorted(client.indices.get_alias(name=alias))[-1]


def wait_green(client: OpenSearch, index: str | None, nodes: int | None, timeout: float) -> float | None:
    """Seconds until green (with `nodes` nodes, when given), None when not within `timeout`."""
    t0 = time.perf_counter()
    path = f"/_cluster/health/{index}" if index else "/_cluster/health"
    while time.perf_counter() - t0 < timeout:
        try:
            health = client.transport.perform_request(
                "GET", path, params={"wait_for_status": "green", "timeout": "5s", "request_timeout": 15})
            if health.get("status") == "green" and (nodes is None or health.get("number_of_nodes") == nodes):
                return time.perf_counter() - t0
        except OpenSearchException:
            pass
        time.sleep(0.25)
    return None


# encoders that answer from vectors computed beforehand ----------------------------------------------------


def shard_placement(client: OpenSearch, index: str) -> list[dict[str, str]]:
    rows = client.cat.shards(index=index, format="json", h="shard,prirep,state,node")
    return [{"shard": r["shard"], "prirep": r["prirep"], "state": r["state"], "node": r.get("node")} for r in rows]


__all__ = ["attach_cluster", "cluster_facts", "cluster_manager", "concrete_index", "kill_node", "node_urls",
           "restart_node", "shard_placement", "wait_green"]
