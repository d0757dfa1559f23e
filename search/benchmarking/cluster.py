"""`rsrt bench shards`: shard and replica layouts on a local multi-node cluster, then the loss of a node.

Per layout (shards × replicas): write-only ingest of the scale corpus (precomputed, per-image jittered
vectors fed through the real pipeline, as `rsrt bench all` does), the documents counted after the load,
and engine query latency (query vectors computed beforehand) with 1 and N clients.

What "writing with replicas" measures here: the ingest pipeline's bulk-load rule (`bulk_load_settings`)
drops the replicas while loading and restores them at the end, so the documents are written to the
primaries only; the replicas are then built by peer recovery. Both are reported: the load's own rate
(primaries) and the time from the end of the load until the index is green, with the rate over both.
That is what `rsrt ingest` costs on such a cluster; writing with live replicas is not measured.

Then the node-kill run: a bounded query run with N clients on one layout during which one node gets
SIGKILL. The client holds every node's URL, so it fails over when its coordinator dies. A search that
some shards failed to answer counts as a failure (a partial answer is wrong results, not a success).
Reported: errors by kind, latency before / during (kill → health back to yellow or green without the
node) / after, the time until every query is answered again, and until health is yellow or green;
finally the node is started again and the time until the cluster is green is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from opensearchpy import OpenSearch, OpenSearchException

from ..datasets import load_benchmark
from ..encoder import DEFAULT_ENCODER, get_encoder
from ..errors import ConfigError, NodeError, RsrtError
from ..index import create_index, delete_index
from ..node import LocalCluster, NodeSettings, _pid_alive, default_home
from ..request import EmbedSite, SearchRequest
from ..searcher import Searcher
from .corpus import build_corpus, write_corpus
from .ingest import ingest_corpus
from .query import CONDITIONS, check_conditions, query_latency
from .vectors import CorpusEncoder, image_vectors, pool_vectors

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ShardPlan:
    size: int = 10_000
    layouts: tuple[tuple[int, int], ...] = ((1, 0), (3, 0), (6, 0), (1, 1), (3, 1), (6, 1))  # (shards, replicas)
    clients: tuple[int, ...] = (1, 4)
    queries: int = 200
    modes: tuple[str, ...] = ("dense", "hybrid-client")
    kill_layout: tuple[int, int] | None = (3, 1)  # None: no node-kill run
    kill_seconds: float = 60.0
    index_prefix: str = "rsrt-bench-shards"
    pool_per_class: int = 300
    seed: int = 7
    data_dir: str | None = None
    keep_indices: bool = False
    kill_clients: int | None = None  # None: the largest of `clients`
    kill_modes: tuple[str, ...] | None = None  # None: `modes`; the conditions the node-kill run alternates
    green_timeout: float = 600.0  # seconds to wait for green after a load or a restart

    def validate(self) -> None:
        """User errors before anything is built or loaded."""
        if self.size < 1:
            raise ConfigError(f"--size must be positive, not {self.size}")
        if not self.layouts:
            raise ConfigError("no layout to measure: give --shards and --replicas")
        for shards, replicas in (*self.layouts, *([self.kill_layout] if self.kill_layout else [])):
            if shards < 1 or replicas < 0:
                raise ConfigError(f"layout {shards} shard(s) × {replicas} replica(s): shards ≥ 1, replicas ≥ 0")
        if not self.clients or any(c < 1 for c in self.clients):
            raise ConfigError(f"--clients must be positive integers, not {self.clients}")
        if self.queries < 1:
            raise ConfigError(f"--queries must be positive, not {self.queries}")
        if self.kill_layout and self.kill_seconds < 5:
            raise ConfigError(f"--kill-seconds must be at least 5, not {self.kill_seconds:g}")
        check_conditions((*self.modes, *(self.kill_modes or ())))
        embedding = [m for m in dict.fromkeys((*self.modes, *(self.kill_modes or ())))
                     if CONDITIONS[m].embed is not None]
        if embedding:
            raise ConfigError(f"mode(s) {', '.join(embedding)} embed the query; this benchmark measures the engine "
                              "with precomputed query vectors")

    def alias(self, shards: int, replicas: int) -> str:
        return f"{self.index_prefix}-{shards}s{replicas}r"


# the local cluster ------------------------------------------------------------------------------------


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
            "cluster_manager": _cluster_manager(client)}


def _cluster_manager(client: OpenSearch) -> str | None:
    try:
        rows = client.transport.perform_request("GET", "/_cat/cluster_manager", params={"format": "json"})
        return rows[0]["node"] if rows else None
    except (OpenSearchException, KeyError, IndexError):
        return None


def _concrete(client: OpenSearch, alias: str) -> str:
    return sorted(client.indices.get_alias(name=alias))[-1]


def _wait_green(client: OpenSearch, index: str | None, nodes: int | None, timeout: float) -> float | None:
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


class QueryVectors:
    """The query encoder, answered from vectors computed once: latency is the engine's, not the encoder's."""

    def __init__(self, texts: list[str], vectors: np.ndarray, name: str) -> None:
        self.name = name
        self.backend = "precomputed"
        self._by_text = {text: vectors[i] for i, text in enumerate(texts)}
        self.dimension = int(vectors.shape[1])

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        try:
            return np.stack([self._by_text[t] for t in texts])
        except KeyError as exc:
            raise RsrtError(f"no precomputed vector for query {exc.args[0][:60]!r}") from None


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


class _Results:
    """results.json, rewritten after every step: an interrupted run keeps what it measured."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        tmp.replace(self.path)


def run_shards(client: OpenSearch, cluster: LocalCluster | None, out: Path, plan: ShardPlan,
               echo: Echo = print) -> dict[str, Any]:
    """Every layout of `plan`, then the node-kill run (when `cluster` and `plan.kill_layout`); results.json in `out`."""
    plan.validate()
    facts = cluster_facts(client)
    n_nodes = facts["number_of_nodes"]
    for _shards, replicas in (*plan.layouts, *([plan.kill_layout] if plan.kill_layout else [])):
        if replicas > n_nodes - 1:
            raise ConfigError(f"{replicas} replica(s) need at least {replicas + 1} nodes; the cluster has {n_nodes}")
    for shards, replicas in dict.fromkeys((*plan.layouts, *([plan.kill_layout] if plan.kill_layout else []))):
        alias = plan.alias(shards, replicas)
        if client.indices.exists(index=alias) or client.indices.exists_alias(name=alias):
            raise ConfigError(f"index {alias!r} exists already; delete it (`rsrt index delete --index {alias}`) or "
                              "choose another --index-prefix")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "corpus"
    results = _Results(out / "results.json", {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "platform": platform.platform()},
        "plan": asdict(plan), "cluster": facts, "layouts": [], "kill": None,
        "write_rule": "replicas dropped while loading, restored at the end (the pipeline's bulk-load rule): "
                      "load docs/s is writes to primaries; replica_seconds is end of load → green",
    })
    echo(f"cluster: {n_nodes} node(s), OpenSearch {facts['version']}, heap "
         + ", ".join(f"{n['name']} {n['heap_max_mb']} MB" for n in facts["nodes"])
         + f"; cluster manager {facts['cluster_manager']}")

    encoder = get_encoder(DEFAULT_ENCODER)
    corpus = build_corpus(plan.seed, plan.data_dir, plan.pool_per_class)
    texts = corpus.texts()
    pool, _ = pool_vectors(texts, encoder, work)
    manifest = write_corpus(corpus, plan.size, work)
    corpus_file = work / manifest["file"]
    rows = np.asarray([picked for _, picked in corpus.records(plan.size)])
    vectors = image_vectors(pool, rows, plan.seed)
    in_order = [texts[r] for r in rows.reshape(-1)]
    results.data["corpus"] = manifest
    query_texts = list(dict.fromkeys(t for _, _, t in load_benchmark("rsitmd", "test", plan.data_dir).captions()))
    rng = np.random.default_rng(plan.seed + 1)
    queries = [query_texts[i] for i in rng.permutation(len(query_texts))[:plan.queries]]
    query_encoder = QueryVectors(queries, np.asarray(encoder.encode(queries), dtype=np.float32), encoder.name)
    results.save()

    created: list[str] = []
    loaded: dict[tuple[int, int], dict[str, Any]] = {}

    def load(shards: int, replicas: int) -> dict[str, Any]:
        alias = plan.alias(shards, replicas)
        echo(f"[{shards}×{replicas}] write-only ingest of {plan.size} images → {alias}")
        created.append(alias)
        create_index(client, CorpusEncoder(in_order, vectors, encoder.name).info(), alias, shards=shards,
                     replicas=replicas)
        figures = ingest_corpus(client, corpus_file, alias, CorpusEncoder(in_order, vectors, encoder.name),
                                fresh=False)
        concrete = _concrete(client, alias)
        green = _wait_green(client, concrete, None, plan.green_timeout)
        client.indices.refresh(index=alias)
        documents = int(client.count(index=alias)["count"])
        entry = {"shards": shards, "replicas": replicas, "index": concrete, "documents": documents,
                 "expected_documents": plan.size, "load": figures,
                 "replica_seconds": round(green, 2) if green is not None else None,
                 "docs_per_second_with_replicas": (round(plan.size / (figures["wall_seconds"] + green), 1)
                                                   if green is not None and replicas else None),
                 "shard_copies": _placement(client, concrete)}
        echo(f"  {documents}/{plan.size} documents, {figures['docs_per_second']} docs/s to primaries"
             + (f", replicas green {green:.1f} s later" if replicas and green is not None else "")
             + ("" if green is not None else f", NOT green within {plan.green_timeout:.0f} s"))
        loaded[(shards, replicas)] = entry
        return entry

    try:
        for shards, replicas in plan.layouts:
            entry = load(shards, replicas)
            results.data["layouts"].append(entry)
            results.save()
            searcher = Searcher(client, plan.alias(shards, replicas), encoder=query_encoder)
            latency: list[dict[str, Any]] = []
            for clients in plan.clients:
                for mode in plan.modes:
                    latency.append(_latency_row(searcher, queries, mode, clients))
                echo(f"  {clients} client(s): " + ", ".join(
                    f"{r['mode']} p50 {r['p50_ms']} p95 {r['p95_ms']} ms" if "error" not in r
                    else f"{r['mode']} FAILED ({r['error']})" for r in latency[-len(plan.modes):]))
                entry["query"] = latency
                results.save()
            if not plan.keep_indices and (shards, replicas) != plan.kill_layout:
                delete_index(client, plan.alias(shards, replicas))
                created.remove(plan.alias(shards, replicas))

        if plan.kill_layout is None:
            results.data["kill"] = {"skipped": "no kill layout asked (--no-kill)"}
        elif cluster is None:
            results.data["kill"] = {"skipped": "no local cluster named (--cluster-name): no node to kill"}
            echo("node-kill run skipped: no local cluster named (--cluster-name)")
        else:
            shards, replicas = plan.kill_layout
            extra = None if plan.kill_layout in loaded else load(shards, replicas)
            results.data["kill"] = kill_run(client, cluster, plan, queries, query_encoder, echo)
            if extra is not None:
                results.data["kill"]["load"] = extra
            results.save()
    finally:
        if not plan.keep_indices:
            for alias in created:
                try:
                    delete_index(client, alias)
                except (OpenSearchException, RsrtError) as exc:
                    echo(f"could not delete {alias}: {exc}")
        results.data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        results.data["kept_indices"] = created if plan.keep_indices else []
        results.save()
    return results.data


def _latency_row(searcher: Searcher, queries: list[str], mode: str, clients: int) -> dict[str, Any]:
    """One condition's latency row; a condition that fails is recorded as such and the run goes on
    (one broken mode must not cost the other layouts' figures)."""
    try:
        rows = query_latency(searcher, queries, (mode,), clients=clients, end_to_end=False,
                             warmup=min(20, len(queries)))
    except Exception as exc:  # recorded in the results and the report
        # query_latency's threads drop their own exceptions (an empty sample is all it sees): find the cause
        cause = _first_failure(searcher, queries, mode)
        error = _describe(cause) if cause else (f"a query failed in a client thread ({_describe(exc)}); every query "
                                                "succeeded when run again one by one: intermittent")
        return {"mode": mode, "clients": clients, "queries": len(queries), "error": error}
    return rows[0].as_dict()


def _first_failure(searcher: Searcher, queries: list[str], mode: str) -> BaseException | None:
    condition = CONDITIONS[mode]
    for text, vector in zip(queries, searcher.encoder.encode(queries), strict=True):
        request = SearchRequest(text, condition.mode, 10, candidates=100, fusion_site=condition.fusion_site,
                                matched_variants=False, vector=[float(x) for x in vector], embed=EmbedSite.CLIENT)
        try:
            searcher.search(request)
        except Exception as exc:  # the cause, for the record
            return exc
    return None


def _describe(exc: BaseException) -> str:
    import traceback

    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"{type(exc).__name__}{at}: {str(exc)[:160]}".rstrip(": ")


def _placement(client: OpenSearch, index: str) -> list[dict[str, str]]:
    rows = client.cat.shards(index=index, format="json", h="shard,prirep,state,node")
    return [{"shard": r["shard"], "prirep": r["prirep"], "state": r["state"], "node": r.get("node")} for r in rows]


def choose_victim(client: OpenSearch, cluster: LocalCluster, index: str) -> tuple[int, str]:
    """(node index, why): a node the client can do without, preferring one that holds primaries of
    `index` and is not the elected cluster manager (so the run shows a replica promotion, not an election)."""
    state = cluster.state()
    if state is None:
        raise NodeError(f"cluster {cluster.settings.name!r} is not running")
    hosts = getattr(client.transport, "hosts", None) or []
    client_ports = {int(h["port"]) for h in hosts if "port" in h}
    manager = _cluster_manager(client)
    copies = Counter((r["node"], r["prirep"]) for r in _placement(client, index) if r["node"])
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
    index = _concrete(client, alias)
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
                    block.setdefault("error_examples", {}).setdefault(error, _describe(exc))
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
    green = _wait_green(client, None, nodes, plan.green_timeout)
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


def format_shards(result: dict[str, Any]) -> str:
    """The run as markdown: cluster, load per layout, latency per layout, the node-kill run."""
    cluster = result.get("cluster", {})
    lines = ["# Shards and nodes", ""]
    nodes = cluster.get("nodes", [])
    heaps = ", ".join(f"{n['name']} {n['heap_max_mb']} MB" for n in nodes)
    lines.append(f"Cluster: {cluster.get('number_of_nodes', len(nodes))} node(s), OpenSearch "
                 f"{cluster.get('version', '?')}, heap {heaps}"
                 + f"; cluster manager {_fmt(cluster.get('cluster_manager'))}.")
    corpus = result.get("corpus", {})
    if corpus:
        lines.append(f"Corpus: {corpus.get('images', '?')} images, sha256 {str(corpus.get('sha256', ''))[:12]}….")
    lines += ["", "Writing: " + result.get("write_rule", ""), "",
              "| shards | replicas | documents | load s | docs/s (primaries) | replicas green after s "
              "| docs/s incl. replicas | segments | store MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for entry in result.get("layouts", []):
        load = entry.get("load", {})
        docs = f"{entry['documents']}/{entry['expected_documents']}"
        if entry["documents"] != entry["expected_documents"]:
            docs = f"**{docs}**"
        lines.append(f"| {entry['shards']} | {entry['replicas']} | {docs} | {_fmt(load.get('wall_seconds'))} | "
                     f"{_fmt(load.get('docs_per_second'))} | "
                     f"{_fmt(entry.get('replica_seconds')) if entry['replicas'] else '—'} | "
                     f"{_fmt(entry.get('docs_per_second_with_replicas'))} | {_fmt(load.get('segments_after_load'))} | "
                     f"{round(load['store_bytes'] / 2**20, 1) if load.get('store_bytes') else '—'} |")
    lines += ["", "Query latency (engine, query vectors computed beforehand, as loaded):", "",
              "| shards | replicas | mode | clients | p50 ms | p95 ms | QPS |", "|---|---|---|---|---|---|---|"]
    for entry in result.get("layouts", []):
        for row in entry.get("query", []):
            if "error" in row:
                lines.append(f"| {entry['shards']} | {entry['replicas']} | {row['mode']} | {row['clients']} | "
                             f"failed: {row['error']} | | |")
                continue
            lines.append(f"| {entry['shards']} | {entry['replicas']} | {row['mode']} | {row['clients']} | "
                         f"{row['p50_ms']} | {row['p95_ms']} | {row['qps']} |")
    kill = result.get("kill")
    lines += ["", "## Node kill", ""]
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
    return "\n".join(lines) + "\n"


__all__ = ["PartialAnswer", "QueryVectors", "ShardPlan", "ShardWatch", "attach_cluster",
           "choose_victim", "cluster_facts", "format_shards", "kill_node", "kill_run", "node_urls",
           "restart_node", "run_shards"]
