"""Memory and disk: the node's resident set (from /proc, same machine) and the Python process's peak."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch


def node_memory(client: OpenSearch) -> dict[str, Any]:
    """Heap and resident memory of the node serving this client (RSS peak when it runs on this machine)."""
    stats = client.nodes.stats(node_id="_local", metric="jvm,process")
    node = next(iter(stats["nodes"].values()))
    info = client.nodes.info(node_id="_local", metric="process")
    pid = next(iter(info["nodes"].values()))["process"]["id"]
    out: dict[str, Any] = {
        "heap_used_mb": round(node["jvm"]["mem"]["heap_used_in_bytes"] / 2**20, 1),
        "heap_max_mb": round(node["jvm"]["mem"]["heap_max_in_bytes"] / 2**20, 1),
        "non_heap_used_mb": round(node["jvm"]["mem"]["non_heap_used_in_bytes"] / 2**20, 1),
        "pid": pid,
    }
    status = Path(f"/proc/{pid}/status")
    if status.exists():  # a node on this machine: its resident set, now and at peak
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        for key, name in (("VmRSS", "rss_mb"), ("VmHWM", "rss_peak_mb")):
            if key in fields:
                out[name] = round(int(fields[key].split()[0]) / 1024, 1)
    return out


def python_peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
