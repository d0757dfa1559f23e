"""`rsrt bench scale`: one corpus size, every vector storage option, every hybrid depth, and the peers.

Per quantisation (`none` = float32, `sq` = the lucene engine's 7-bit scalar quantisation): a
write-only load of the scale corpus (precomputed vectors), a force-merge to one segment, then
- disk and memory: the index's files by kind (`disk.py`: raw vectors, quantised copies, graph) and
  "hot", what an HNSW search reads and so what must stay in page cache;
- kNN recall@10 against exact at several ef_search (candidates = ef, as the product sets them);
- latency per mode and per `--candidates` (the hybrid depth, and the kNN depth with it), one client,
  engine p50/p95 beside end to end (the query encoded in the timed call), and 4 clients at the
  default depth.
Then the peers (`peers.py`) on the float32 index: exact numpy, FAISS HNSW and OpenSearch on the very
vectors and queries. The corpus is the pooled one (`clustered`: jittered copies of 11k texts) or the
duplicate-free one (`distinct`: every vector its own text). Results go to results.json as they come.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from opensearchpy import OpenSearch

from ..datasets import load_benchmark
from ..encoder import DEFAULT_BACKEND, DEFAULT_ENCODER, get_encoder
from ..index import DEFAULT_QUANTIZATION, QUANTIZATIONS, delete_index
from ..request import DEFAULT_CANDIDATES
from ..searcher import Searcher
from .corpus import POOL_PER_CLASS, build_corpus, build_distinct_corpus, write_corpus
from .disk import index_files, vector_memory
from .ingest import force_merge, ingest_corpus
from .peers import PeerPlan, format_peers, run_peers
from .query import query_latency
from .recall import knn_recall
from .resources import node_memory, python_peak_mb
from .vectors import CorpusEncoder, image_vectors, pool_vectors

CORPORA = ("clustered", "distinct")


@dataclass(frozen=True)
class ScalePlan:
    size: int = 100_000
    corpus: str = "clustered"
    quantizations: tuple[str, ...] = ("none", "sq")
    candidates: tuple[int, ...] = (20, 30, 50, 100)
    ef_values: tuple[int, ...] = (20, 30, 50, 100, 200, 400)
    modes: tuple[str, ...] = ("dense", "hybrid-client", "hybrid-client-image", "lexical", "lexical-image")
    queries: int = 200
    concurrent_clients: int = 4
    peers: bool = True
    reuse: bool = True  # an index of the same name already holding the corpus is measured, not rebuilt
    keep: bool = False  # keep the indices this run built (reused ones are never deleted)
    seed: int = 7
    pool_per_class: int = POOL_PER_CLASS  # the clustered corpus's vocabulary (tests use a few)
    data_dir: str | None = None
    encoder_backend: str = DEFAULT_BACKEND
    index_prefix: str = "rsrt-bench"

    def index_name(self, quantization: str) -> str:
        corpus = "" if self.corpus == "clustered" else f"-{self.corpus}"
        suffix = "" if quantization == "none" else f"-{quantization}"
        return f"{self.index_prefix}{corpus}-{self.size}{suffix}"


def run_scale(client: OpenSearch, out: Path, plan: ScalePlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    work = out / "corpus"
    path = out / "results.json"
    results: dict[str, Any] = {"plan": asdict(plan), "node": client.info()["version"]["number"], "indices": {}}

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(path)

    encoder = get_encoder(DEFAULT_ENCODER, plan.encoder_backend)
    corpus = (build_distinct_corpus(plan.size, plan.seed, plan.data_dir) if plan.corpus == "distinct"
              else build_corpus(plan.seed, plan.data_dir, plan.pool_per_class))
    texts = corpus.texts()
    echo(f"{plan.corpus} corpus: {len(texts)} distinct variant texts; encoding them (cached in {work})")
    pool, seconds = pool_vectors(texts, encoder, work)
    results["corpus"] = {"kind": corpus.kind, "distinct_texts": len(texts), "encode_seconds": round(seconds, 1),
                         "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1)}
    corpus_file = work / f"images-{plan.size}.jsonl"
    if not corpus_file.exists():
        results["corpus"]["manifest"] = write_corpus(corpus, plan.size, work)
    ids, rows = [], []
    for record, picked in corpus.records(plan.size):
        ids.append(record.image_id)
        rows.append(picked)
    rows_array = np.asarray(rows)
    vectors = pool[rows_array] if corpus.distinct else image_vectors(pool, rows_array, plan.seed)
    in_order = [texts[r] for r in rows_array.reshape(-1)]
    query_texts = list(dict.fromkeys(t for _, _, t in load_benchmark("rsitmd", "test", plan.data_dir).captions()))
    order = np.random.default_rng(plan.seed + 1).permutation(len(query_texts))[:plan.queries]
    queries = [query_texts[i] for i in order]
    query_vectors = np.asarray(encoder.encode(queries), dtype=np.float32)
    save()

    for quantization in plan.quantizations:
        index = plan.index_name(quantization)
        entry: dict[str, Any] = results["indices"].setdefault(quantization, {"index": index})
        existing = client.indices.exists(index=index) and int(client.count(index=index)["count"]) == plan.size
        if existing and plan.reuse:
            echo(f"[{quantization}] {index} holds the corpus already: measured as it is")
            entry["load"] = "reused"
        else:
            echo(f"[{quantization}] write-only load of {plan.size} images → {index}")
            entry["load"] = ingest_corpus(client, corpus_file, index, CorpusEncoder(in_order, vectors, encoder.name),
                                          quantization=quantization)
            echo(f"  {entry['load']['docs_per_second']} docs/s")
        if len(client.cat.segments(index=index, format="json")) > 1:
            echo(f"[{quantization}] force-merge to one segment")
            entry["force_merge"] = force_merge(client, index)
        save()
        client.indices.flush(index=index)
        files = index_files(client, index)
        entry["files"] = files
        entry["vectors"] = vector_memory(files)
        entry["store_bytes"] = int(client.indices.stats(index=index, metric="store")["_all"]["primaries"]
                                   ["store"]["size_in_bytes"])
        searcher = Searcher(client, index, encoder=encoder)
        entry["recall"] = knn_recall(searcher, queries, query_vectors, vectors, ids, plan.ef_values)
        echo(f"[{quantization}] recall@10: " + ", ".join(f"ef {r['ef_search']} {r['recall_at_k']}"
                                                     for r in entry["recall"]))
        save()
        latency = []
        for depth in plan.candidates:
            rows_out = [r.as_dict() for r in query_latency(searcher, queries, plan.modes, clients=1,
                                                           candidates=depth, end_to_end=True)]
            for row in rows_out:
                row["candidates"] = depth
            latency += rows_out
            echo(f"[{quantization}] candidates {depth}: " + ", ".join(
                f"{r['mode']} p50 {r['p50_ms']} (e2e {r['e2e_p50_ms']})" for r in rows_out))
            entry["latency"] = latency
            save()
        if plan.concurrent_clients > 1:
            rows_out = [r.as_dict() for r in query_latency(searcher, queries, plan.modes,
                                                           clients=plan.concurrent_clients,
                                                           candidates=DEFAULT_CANDIDATES, end_to_end=False)]
            for row in rows_out:
                row["candidates"] = DEFAULT_CANDIDATES
            entry["latency"] = latency + rows_out
        entry["memory"] = node_memory(client)
        save()

    if plan.peers and "none" in plan.quantizations:
        entry = results["indices"]["none"]
        load = entry.get("load")
        build = None
        if isinstance(load, dict):
            build = load["wall_seconds"] + (entry.get("force_merge") or {}).get("seconds", 0.0)
        echo("peers: exact numpy, FAISS HNSW, OpenSearch on the same vectors")
        searcher = Searcher(client, entry["index"], encoder=encoder)
        results["peers"] = run_peers(vectors, ids, query_vectors, PeerPlan(), searcher,
                                     opensearch_build_seconds=build, opensearch_index=entry["index"])
        echo(format_peers(results["peers"]))
    if not plan.keep:
        for entry in results["indices"].values():
            if isinstance(entry.get("load"), dict):  # built by this run, so this run's to delete
                delete_index(client, entry["index"])
    results["python_peak_mb"] = python_peak_mb()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    return results


def format_scale(results: dict[str, Any]) -> str:
    """Markdown: storage and recall per quantisation, latency per depth, the peers."""
    plan = results["plan"]
    lines = [f"## {plan['size']} images, {results['corpus']['kind']} corpus "
             f"({results['corpus']['distinct_texts']} distinct texts), OpenSearch {results['node']}", "",
             "| quantization | store MB | raw .vec MB | quantised .veq MB | graph .vex MB | hot MB | "
             + " | ".join(f"recall ef {ef}" for ef in plan["ef_values"]) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(plan["ef_values"])]
    mb = 2 ** 20
    for quantization, entry in results["indices"].items():
        vec = entry.get("vectors", {})
        recalls = {r["ef_search"]: r["recall_at_k"] for r in entry.get("recall", [])}
        store = entry.get("store_bytes", 0) / mb
        lines.append(f"| {quantization} | {store:.0f} | {vec.get('raw_vectors', 0) / mb:.0f} | "
                     f"{vec.get('quantised_vectors', 0) / mb:.0f} | {vec.get('graph', 0) / mb:.0f} | "
                     f"{vec.get('hot', 0) / mb:.0f} | "
                     + " | ".join(str(recalls.get(ef, "—")) for ef in plan["ef_values"]) + " |")
    lines += ["", "| quantization | candidates | clients | mode | p50 ms | p95 ms | end-to-end p50 ms |",
              "|---|---|---|---|---|---|---|"]
    for quantization, entry in results["indices"].items():
        for row in entry.get("latency", []):
            e2e = "—" if row["e2e_p50_ms"] is None else row["e2e_p50_ms"]
            lines.append(f"| {quantization} | {row['candidates']} | {row['clients']} | {row['mode']} | "
                         f"{row['p50_ms']} | {row['p95_ms']} | {e2e} |")
    if "peers" in results:
        lines += ["", format_peers(results["peers"])]
    return "\n".join(lines) + "\n"


def check_plan(plan: ScalePlan) -> ScalePlan:
    """One-line errors for what the CLI cannot catch by its option types."""
    from ..errors import ConfigError

    if plan.corpus not in CORPORA:
        raise ConfigError(f"--corpus {plan.corpus!r}: choose {' or '.join(CORPORA)}")
    unknown = [q for q in plan.quantizations if q not in QUANTIZATIONS]
    if unknown or not plan.quantizations:
        raise ConfigError(f"--quantizations {','.join(plan.quantizations)!r}: choose from {', '.join(QUANTIZATIONS)}"
                          f" (default {DEFAULT_QUANTIZATION})")
    return plan
