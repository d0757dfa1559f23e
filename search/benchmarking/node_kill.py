"""The node-kill run of `rsrt bench shards`: a bounded query run during which one node gets SIGKILL.

The client holds every node's URL, so it fails over when its coordinator dies. A search that some
shards failed to answer counts as a failure (a partial answer is wrong results, not a success).
Reported: errors by kind, latency before / during (kill → health back to yellow or green without the
node) / after, the time until every query is answered again, and until health is yellow or green;
finally the node is started again and the time until the cluster is green is measured.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from opensearchpy import OpenSearch, OpenSearchException

from ..errors import ConfigError, NodeError, RsrtError
from ..node import LocalCluster
from ..request import EmbedSite, SearchRequest
from ..searcher import Searcher
from .local_cluster import Echo, cluster_manager, concrete_index, kill_node, restart_node, shard_placement, wait_green
from .query import CONDITIONS

if TYPE_CHECKING:
    from .cluster import ShardPlan


# partial answers are failures ---------------------------------------------------------------------------


class PartialAnswer(RsrtError):
    """A search that some shards failed: answered, but from part of the index."""


def _check_shards(response: dict[str, Any]) -> None:
    shards = response.get("_shards") or {}
    if shards.get("failed"):
        raise PartialAnswer(f"{shards['failed']} of {shards.get('total')} shards failed")


class ShardWatch:
    """The client, except that a search or msearch answer with failed shards raises `PartialAnswer`.

    The `Searcher` reads hits, not `_shards`; during a node loss a 200 answer may come from part of the
    index, and counting it as a success would hide the data loss the run is there to show.
    """

    def __init__(self, client: OpenSearch) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        response = self._client.search(*args, **kwargs)
        _check_shards(response)
        return response

    def msearch(self, *args: Any, **kwargs: Any) -> Any:
        response = self._client.msearch(*args, **kwargs)
        for entry in response.get("responses", []):
            if "error" not in entry:
                _check_shards(entry)
        return response


# results ----------------------------------------------------------------------------------------------


def describe_error(exc: BaseException) -> str:
    import traceback

    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"{type(exc).__name__}{at}: {str(exc)[:160]}".rstrip(": ")


def choose_victim(client: OpenSearch, cluster: LocalCluster, index: str) -> tuple[int, str]:
    """(node index, why): a node the client can do without, preferring one that holds primaries of
    `index` and is not the elected cluster manager (so the run shows a replica promotion, not an election)."""
    state = cluster.state()
    if state is None:
        raise NodeError(f"cluster {cluster.settings.name!r} is not running")
    hosts = getattr(client.transport, "hosts", None) or []
    client_ports = {int(h["port"]) for h in hosts if "port" in h}
    manager = cluster_manager(client)
    copies = Counter((r["node"], r["prirep"]) for r in shard_placement(client, index) if r["node"])
    candidates = []
    for i in range(state.nodes):
        name = f"{cluster.settings.name}-{i}"
        if len(client_ports) == 1 and state.http_ports[i] in client_ports:
            continue  # the client's only node: killing it would end the run, not test the cluster
        candidates.append(((copies[(name, "p")] > 0, name != manager, i != 0, copies[(name, "p")], i), i, name))
    if not candidates:
        raise ConfigError("the client knows only one node: give it every node's URL so it can fail over")
    _key, i, name = max(candidates)
    why = (f"{name}: holds {copies[(name, 'p')]} primary and {copies[(name, 'r')]} replica shard(s) of {index}; "
           + ("the elected cluster manager" if name == manager else f"not the cluster manager ({manager})")
           + ("" if len(client_ports) != 1 else "; not the client's node"))
    return i, why



@dataclass
class _Sample:
    start: float  # seconds since the run started
    end: float
    mode: str
    error: str | None  # kind, None when answered in full


def _phase(samples: list[_Sample]) -> dict[str, Any]:
    ok = [(s.end - s.start) * 1000 for s in samples if s.error is None]
    kinds = Counter(s.error for s in samples if s.error)
    return {"queries": len(samples), "errors": sum(kinds.values()), "error_kinds": dict(kinds),
            "p50_ms": round(float(np.percentile(ok, 50)), 2) if ok else None,
            "p95_ms": round(float(np.percentile(ok, 95)), 2) if ok else None,
            "max_ms": round(max(ok), 2) if ok else None,
            "mean_ms": round(statistics.fmean(ok), 2) if ok else None}


def kill_run(client: OpenSearch, cluster: LocalCluster, plan: ShardPlan, queries: list[str], encoder: Any,
             echo: Echo = print) -> dict[str, Any]:
    """The bounded query run with one node killed a quarter in, then the node started again."""
    if plan.kill_layout is None:
        raise ConfigError("no kill layout in the plan")
    shards, replicas = plan.kill_layout
    alias = plan.alias(shards, replicas)
    index = concrete_index(client, alias)
    state = cluster.state()
    if state is None or state.nodes < 2:
        raise ConfigError("the node-kill run needs a running cluster of at least 2 nodes")
    victim, why = choose_victim(client, cluster, index)
    clients = plan.kill_clients or max(plan.clients)
    searcher = Searcher(ShardWatch(client), alias, encoder=encoder)  # type: ignore[arg-type]
    vectors = [[float(x) for x in v] for v in encoder.encode(queries)]
    modes = plan.kill_modes or plan.modes
    conditions = [CONDITIONS[m] for m in modes]
    block: dict[str, Any] = {}
    block.update({"layout": {"shards": shards, "replicas": replicas}, "index": index, "clients": clients,
                  "modes": list(modes), "killed_node": f"{cluster.settings.name}-{victim}", "why": why,
                  "documents_before": int(client.count(index=alias)["count"])})
    echo(f"[kill] {clients} client(s) for {plan.kill_seconds:g} s on {alias}; SIGKILL of {why}")

    samples: list[_Sample] = []
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.perf_counter()

    def worker(offset: int) -> None:
        n = offset
        while not stop.is_set():
            i = n % len(queries)
            name, condition = modes[n % len(modes)], conditions[n % len(conditions)]
            n += clients
            request = SearchRequest(queries[i], condition.mode, 10, candidates=100, fusion_site=condition.fusion_site,
                                    matched_variants=False, vector=vectors[i], embed=EmbedSite.CLIENT)
            start = time.perf_counter() - t0
            error = None
            try:
                searcher.search(request)
            except Exception as exc:  # every failure is a sample: the run counts them by kind
                error = type(exc).__name__
                with lock:
                    block.setdefault("error_examples", {}).setdefault(error, describe_error(exc))
            sample = _Sample(start, time.perf_counter() - t0, name, error)
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    kill_at = max(2.0, plan.kill_seconds * 0.25)
    health_log: list[dict[str, Any]] = []
    killed_t: float | None = None
    yellow_t: float | None = None
    yellow_status: str | None = None
    try:
        while time.perf_counter() - t0 < kill_at:
            time.sleep(0.05)
        pid = kill_node(cluster, victim)
        killed_t = time.perf_counter() - t0
        block.update({"killed_pid": pid, "killed_at_s": round(killed_t, 2)})
        echo(f"[kill] node {victim} (pid {pid}) killed at {killed_t:.1f} s")
        # Until the end of the run; longer, if health is not back yet (at most twice the run), then a few
        # seconds more so that the "after" phase has queries.
        hard_end = plan.kill_seconds * 2
        while True:
            now = time.perf_counter() - t0
            health = _health(client)
            if not health_log or (health_log[-1]["status"], health_log[-1]["nodes"]) != (health["status"],
                                                                                         health["nodes"]):
                health_log.append({"t_s": round(now, 2), **health})
            if yellow_t is None and health["nodes"] == state.nodes - 1 and health["status"] in {"yellow", "green"}:
                yellow_t, yellow_status = now, health["status"]
                echo(f"[kill] health {health['status']} with {health['nodes']} nodes {now - killed_t:.1f} s after "
                     "the kill")
            if now >= hard_end or (now >= plan.kill_seconds and (
                    (yellow_t is not None and now - yellow_t >= 3.0) or replicas == 0)):
                break
            time.sleep(0.25)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        end_t = time.perf_counter() - t0
        if killed_t is not None:
            block["restart"] = _restart(client, cluster, victim, state.nodes, plan, echo)
    samples.sort(key=lambda s: s.end)
    failed_after_kill = [s for s in samples if s.error and s.end >= killed_t]
    before = [s for s in samples if s.end < killed_t]
    during = [s for s in samples if killed_t <= s.end < (yellow_t if yellow_t is not None else float("inf"))]
    after = [s for s in samples if yellow_t is not None and s.end >= yellow_t]
    block.update({
        "run_seconds": round(end_t, 2),
        "health": health_log,
        "health_back_seconds": round(yellow_t - killed_t, 2) if yellow_t is not None else None,
        "health_back_status": yellow_status,
        # the end of the last failed query: from then on, every query was answered in full
        "answers_every_query_after_seconds": (round(max(s.end for s in failed_after_kill) - killed_t, 2)
                                              if failed_after_kill else 0.0),
        # health back without the node, and every query after that moment answered in full
        "recovered": yellow_t is not None and bool(after) and not any(s.error for s in after),
        "queries": len(samples),
        "errors": sum(1 for s in samples if s.error),
        "error_kinds": dict(Counter(s.error for s in samples if s.error)),
        "phases": {"before": _phase(before), "during": _phase(during), "after": _phase(after)},
        "timeline": _timeline(samples),
    })
    block["documents_after"] = int(client.count(index=alias)["count"])
    phases = block["phases"]
    echo(f"[kill] {block['queries']} queries, {block['errors']} failed {block['error_kinds'] or ''}; p50 before "
         f"{phases['before']['p50_ms']}, during {phases['during']['p50_ms']}, after {phases['after']['p50_ms']} ms; "
         f"every query answered again {block['answers_every_query_after_seconds']} s after the kill")
    return block


def _health(client: OpenSearch) -> dict[str, Any]:
    try:
        health = client.cluster.health(request_timeout=5)
        return {"status": health.get("status"), "nodes": health.get("number_of_nodes"),
                "unassigned": health.get("unassigned_shards")}
    except OpenSearchException as exc:
        return {"status": f"unreachable ({type(exc).__name__})", "nodes": None, "unassigned": None}


def _restart(client: OpenSearch, cluster: LocalCluster, victim: int, nodes: int, plan: ShardPlan,
             echo: Echo) -> dict[str, Any]:
    """Start the killed node again and time the cluster back to green with every node."""
    t0 = time.perf_counter()
    try:
        pid = restart_node(cluster, victim)
    except RsrtError as exc:
        echo(f"[kill] could not start node {victim} again: {exc}")
        return {"error": str(exc)}
    green = wait_green(client, None, nodes, plan.green_timeout)
    echo(f"[kill] node {victim} started again (pid {pid}); cluster green with {nodes} nodes "
         + (f"after {green:.1f} s" if green is not None else f"NOT within {plan.green_timeout:.0f} s"))
    return {"pid": pid, "green_seconds": round(green, 2) if green is not None else None,
            "seconds_total": round(time.perf_counter() - t0, 2)}


def _timeline(samples: list[_Sample]) -> list[dict[str, Any]]:
    """Per second of the run: queries ended, errors, p50 of the answered ones."""
    seconds: dict[int, list[_Sample]] = {}
    for s in samples:
        seconds.setdefault(int(s.end), []).append(s)
    out = []
    for second in sorted(seconds):
        group = seconds[second]
        ok = [(s.end - s.start) * 1000 for s in group if s.error is None]
        out.append({"s": second, "queries": len(group), "errors": sum(1 for s in group if s.error),
                    "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok else None})
    return out


# report -----------------------------------------------------------------------------------------------


def _fmt(value: Any, suffix: str = "") -> str:
    return "—" if value is None else f"{value}{suffix}"


def format_kill(kill: dict[str, Any] | None) -> list[str]:
    """The node-kill section of the shards report, as Markdown lines."""
    lines = ["", "## Node kill", ""]
    if not kill:
        lines.append("Not run.")
    elif "skipped" in kill:
        lines.append(f"Not run: {kill['skipped']}.")
    else:
        layout = kill["layout"]
        lines.append(f"{layout['shards']} shard(s) × {layout['replicas']} replica(s), {kill['clients']} client(s) "
                     f"({', '.join(kill['modes'])}) for {kill['run_seconds']} s; SIGKILL at {kill['killed_at_s']} s "
                     f"of {kill['why']}.")
        kinds = ", ".join(f"{k} {v}" for k, v in kill.get("error_kinds", {}).items()) or "none"
        examples = "; ".join(f"{k}: {v}" for k, v in kill.get("error_examples", {}).items())
        lines += ["", f"- Queries: {kill['queries']}, failed: {kill['errors']} ({kinds})."
                  + (f" First of each kind: {examples}." if examples else ""),
                  f"- Every query answered again {kill['answers_every_query_after_seconds']} s after the kill"
                  + ("" if kill.get("recovered") else " (**not recovered**: health not back, or failures after it)")
                  + ("; none failed" if not kill['errors'] else "") + ".",
                  f"- Health {_fmt(kill.get('health_back_status'))} without the node "
                  f"{_fmt(kill.get('health_back_seconds'), ' s')} after the kill.",
                  f"- Documents: {kill.get('documents_before')} before, {kill.get('documents_after')} after."]
        restart = kill.get("restart") or {}
        if "error" in restart:
            lines.append(f"- Restart failed: {restart['error']}.")
        else:
            lines.append(f"- Node started again: cluster green with every node after "
                         f"{_fmt(restart.get('green_seconds'), ' s')}.")
        lines += ["", "| phase | queries | failed | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|---|"]
        for name, phase in kill["phases"].items():
            lines.append(f"| {name} | {phase['queries']} | {phase['errors']} | {_fmt(phase['p50_ms'])} | "
                         f"{_fmt(phase['p95_ms'])} | {_fmt(phase['max_ms'])} |")
        lines += ["", "before: until the kill; during: kill → health yellow/green without the node; after: the rest."]
    return lines


__all__ = ["PartialAnswer", "ShardWatch", "choose_victim", "describe_error", "format_kill", "kill_run"]
