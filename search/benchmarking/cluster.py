"""`rsrt bench shards`: shard and replica layouts on a local multi-node cluster, then the loss of a node.

Per layout (shards × replicas): write-only ingest of the scale corpus (precomputed, per-image jittered
vectors fed through the real pipeline, as `rsrt bench all` does), the documents counted after the load,
and engine query latency (query vectors computed beforehand) with 1 and N clients.

What "writing with replicas" measures here: the ingest pipeline's bulk-load rule (`bulk_load_settings`)
drops the replicas while loading and restores them at the end, so the documents are written to the
primaries only; the replicas are then built by peer recovery. Both are reported: the load's own rate
(primaries) and the time from the end of the load until the index is green, with the rate over both.
That is what `rsrt ingest` costs on such a cluster; writing with live replicas is not measured.

Then the node-kill run (`node_kill.py`): one node gets SIGKILL during a bounded query run.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from opensearchpy import OpenSearch, OpenSearchException

from ..datasets import load_benchmark
from ..encoder import DEFAULT_ENCODER, get_encoder
from ..errors import ConfigError, RsrtError
from ..index import create_index, delete_index
from ..node import LocalCluster
from ..request import EmbedSite, SearchRequest
from ..searcher import Searcher
from .corpus import build_corpus, write_corpus
from .ingest import ingest_corpus
from .local_cluster import Echo, attach_cluster, cluster_facts, concrete_index, node_urls, shard_placement, wait_green
from .node_kill import PartialAnswer, ShardWatch, describe_error, format_kill, kill_run
from .query import CONDITIONS, check_conditions, query_latency
from .vectors import CorpusEncoder, image_vectors, pool_vectors


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
        concrete = concrete_index(client, alias)
        green = wait_green(client, concrete, None, plan.green_timeout)
        client.indices.refresh(index=alias)
        documents = int(client.count(index=alias)["count"])
        entry = {"shards": shards, "replicas": replicas, "index": concrete, "documents": documents,
                 "expected_documents": plan.size, "load": figures,
                 "replica_seconds": round(green, 2) if green is not None else None,
                 "docs_per_second_with_replicas": (round(plan.size / (figures["wall_seconds"] + green), 1)
                                                   if green is not None and replicas else None),
                 "shard_copies": shard_placement(client, concrete)}
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
        error = describe_error(cause) if cause else (
            f"a query failed in a client thread ({describe_error(exc)}); every query succeeded when run again one "
            "by one: intermittent")
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
    lines += format_kill(result.get("kill"))
    return "\n".join(lines) + "\n"


__all__ = ["PartialAnswer", "QueryVectors", "ShardPlan", "ShardWatch", "attach_cluster", "format_shards", "node_urls",
           "run_shards"]
