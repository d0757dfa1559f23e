"""`rsrt bench all`: every figure of the performance report from one command.

Per corpus size: build the scale corpus (deterministic); ingest it write-only, fed the corpus's own
precomputed, per-image jittered vectors (see vectors.py), and, for the sizes asked, end to end with
the real encoder; measure query latency per mode with 1 and N clients, with and without the
bbox + datetime filter, as loaded and after a force-merge; kNN recall@10 against exact at several
ef_search; index size and memory. Once: the encoder backends, and an HNSW m / ef_construction sweep
on the smallest size. Results go to `results.json` as they arrive, so an interrupted run keeps what
it measured.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from opensearchpy import OpenSearch

from ..datasets import load_benchmark
from ..encoder import DEFAULT_BACKEND, DEFAULT_BATCH_SIZE, DEFAULT_ENCODER, get_encoder
from ..filters import Filters
from ..index import delete_index
from ..searcher import Searcher
from .corpus import BENCH_FILTER, POOL_PER_CLASS, build_corpus, write_corpus
from .encoders import encoder_bench, encoder_rate
from .ingest import force_merge, ingest_corpus
from .query import CONDITIONS, query_latency
from .recall import knn_recall
from .resources import node_memory, python_peak_mb
from .vectors import CorpusEncoder, image_vectors, pool_vectors


@dataclass
class BenchPlan:
    sizes: tuple[int, ...] = (10_000, 100_000)
    end_to_end_sizes: tuple[int, ...] = (10_000,)
    clients: tuple[int, ...] = (1, 4)
    queries: int = 200
    # names of query.CONDITIONS: the engine ones (embedding is compared by `rsrt bench query --modes …-embed-…`)
    modes: tuple[str, ...] = tuple(name for name, c in CONDITIONS.items() if c.embed is None)
    ef_values: tuple[int, ...] = (10, 25, 50, 100, 200, 400)
    hnsw_sweep: tuple[tuple[int, int], ...] = ((8, 64), (16, 128), (32, 256))
    encoder_backends: tuple[str, ...] = ("torch", "torch-int8", "onnx", "onnx-int8")
    encoder_quality: bool = True
    force_merge: bool = True
    keep_indices: bool = False
    seed: int = 7
    pool_per_class: int = POOL_PER_CLASS  # distinct variants per scene class (tests use a few)
    index_prefix: str = "rsrt-bench"
    lexical_scope: str = "variant"
    encoder_backend: str = DEFAULT_BACKEND  # how the query and end-to-end ingest encoder runs
    data_dir: str | None = None
    skip: set[str] = field(default_factory=set)  # any of: encoder, ingest, e2e, query, recall, sweep


class Results:
    """results.json, rewritten after every step."""

    def __init__(self, path: Path, plan: BenchPlan) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version()},
            "plan": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(plan).items()},
            "sizes": {}, "encoders": [], "hnsw_sweep": [],
        }

    def size(self, n: int) -> dict[str, Any]:
        return self.data["sizes"].setdefault(str(n), {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_all(client: OpenSearch, out: Path, plan: BenchPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    work = out / "corpus"
    results = Results(out / "results.json", plan)
    results.data["node"] = client.info()["version"]["number"]
    corpus = build_corpus(plan.seed, plan.data_dir, plan.pool_per_class)
    texts = corpus.texts()
    encoder = get_encoder(DEFAULT_ENCODER, plan.encoder_backend)
    echo(f"scale corpus: {len(corpus.pool)} distinct variants in {len(corpus.class_rows)} scene classes")
    results.data["pool"] = {"distinct_variants": len(texts),
                            "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1)}
    # The distinct texts' vectors feed write-only loads and the exact recall reference; an end-to-end-only
    # run does without them (encoding them takes minutes).
    pool: np.ndarray | None = None
    if not {"ingest", "recall", "sweep"} <= plan.skip:
        pool, seconds = pool_vectors(texts, encoder, work)
        results.data["pool"]["encode_seconds"] = round(seconds, 1)
        if seconds:
            results.data["pool"]["texts_per_second"] = round(len(texts) / seconds, 1)
    results.save()

    if "encoder" not in plan.skip:
        echo("encoders: throughput and quality per backend")
        rng = np.random.default_rng(plan.seed)
        sample = [texts[i] for i in rng.permutation(len(texts))[:1000]]
        results.data["encoders"] = encoder_bench(plan.encoder_backends, sample, data_dir=plan.data_dir,
                                                 quality=plan.encoder_quality, echo=echo)
        results.save()

    query_texts = list(dict.fromkeys(t for _, _, t in load_benchmark("rsitmd", "test", plan.data_dir).captions()))
    rng = np.random.default_rng(plan.seed + 1)
    queries = [query_texts[i] for i in rng.permutation(len(query_texts))[:plan.queries]]
    query_vectors = np.asarray(encoder.encode(queries), dtype=np.float32)
    filters = Filters.build(bbox=BENCH_FILTER["bbox"], datetime=BENCH_FILTER["datetime"])

    for size in plan.sizes:
        entry = results.size(size)
        manifest_path = work / f"manifest-{size}.json"
        corpus_file = work / f"images-{size}.jsonl"
        if not (manifest_path.exists() and corpus_file.exists()):
            t0 = time.perf_counter()
            manifest = write_corpus(corpus, size, work)
            manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        else:
            manifest = json.loads(manifest_path.read_text())
        entry["corpus"] = manifest
        ids, rows = _ids_and_rows(corpus, size)
        vectors = image_vectors(pool, rows, plan.seed) if pool is not None else None
        in_order = [texts[r] for r in rows.reshape(-1)]
        index = f"{plan.index_prefix}-{size}"
        echo(f"[{size}] corpus {corpus_file} ({manifest['sha256'][:12]}…)")

        if "ingest" not in plan.skip:
            echo(f"[{size}] write-only ingest (precomputed vectors) → {index}")
            entry["ingest_write_only"] = ingest_corpus(client, corpus_file, index,
                                                        CorpusEncoder(in_order, vectors, encoder.name))
            echo(f"  {entry['ingest_write_only']['docs_per_second']} docs/s")
            results.save()
        if "e2e" not in plan.skip and size in plan.end_to_end_sizes:
            # the reference: the same encoder on the corpus's own first texts, nothing else running
            alone = encoder_rate(encoder, in_order[:2000], DEFAULT_BATCH_SIZE)
            echo(f"[{size}] end-to-end ingest (encoder {encoder.name}, {encoder.backend}; alone {alone:.1f} texts/s)"
                 f" → {index}-e2e")
            e2e = ingest_corpus(client, corpus_file, f"{index}-e2e", encoder)
            e2e["encoder_backend"] = encoder.backend
            e2e["encoder_alone_variants_per_second"] = round(alone, 1)
            entry["ingest_end_to_end"] = e2e
            echo(f"  {e2e['docs_per_second']} docs/s, {e2e['variants_per_second']} variants/s")
            if not plan.keep_indices:
                delete_index(client, f"{index}-e2e")
            results.save()

        if not client.indices.exists(index=index):
            entry["memory"] = {"node": node_memory(client), "python_peak_mb": python_peak_mb()}
            echo(f"[{size}] no index {index} (write-only ingest skipped): no query, recall or size figures")
            results.save()
            continue
        searcher = Searcher(client, index, encoder=encoder, lexical_scope=plan.lexical_scope)
        phases = [("as_loaded", None)]
        if plan.force_merge:
            phases.append(("merged", "merge"))
        for phase, action in phases:
            if action == "merge":
                echo(f"[{size}] force-merge to one segment")
                entry["force_merge"] = force_merge(client, index)
                results.save()
            block = entry.setdefault(phase, {})
            block["segments"] = len(client.cat.segments(index=index, format="json"))
            if "query" not in plan.skip:
                rows_out = []
                for clients in plan.clients:
                    for filtered in (False, True):
                        rows_out += [r.as_dict() for r in query_latency(
                            searcher, queries, plan.modes, clients=clients,
                            filters=filters if filtered else None, end_to_end=not filtered)]
                        echo(f"[{size}/{phase}] queries: {clients} client(s), filter={filtered}: " + ", ".join(
                            f"{r['mode']} p50 {r['p50_ms']}" for r in rows_out[-len(plan.modes):]))
                        block["query"] = rows_out
                        results.save()
            if "recall" not in plan.skip:
                block["recall"] = knn_recall(searcher, queries, query_vectors, vectors, ids, plan.ef_values)
                echo(f"[{size}/{phase}] recall@10: " + ", ".join(
                    f"ef {r['ef_search']}: {r['recall_at_k']} ({r['p50_ms']} ms)" for r in block["recall"]))
                results.save()
        entry["memory"] = {"node": node_memory(client), "python_peak_mb": python_peak_mb()}
        entry["store_bytes"] = int(client.indices.stats(index=index, metric="store")["_all"]["primaries"]
                                   ["store"]["size_in_bytes"])
        entry["raw_vector_bytes"] = size * 5 * encoder.dimension * 4
        results.save()

    if "sweep" not in plan.skip and plan.sizes:
        size = min(plan.sizes)
        ids, rows = _ids_and_rows(corpus, size)
        vectors = image_vectors(pool, rows, plan.seed)
        in_order = [texts[r] for r in rows.reshape(-1)]
        for m, efc in plan.hnsw_sweep:
            index = f"{plan.index_prefix}-sweep-m{m}-efc{efc}"
            echo(f"[sweep] m={m} ef_construction={efc} at {size} images")
            load = ingest_corpus(client, work / f"images-{size}.jsonl", index,
                                 CorpusEncoder(in_order, vectors, encoder.name),
                                 hnsw={"m": m, "ef_construction": efc})
            merged = force_merge(client, index)
            recall = knn_recall(Searcher(client, index, encoder=encoder), queries, query_vectors, vectors, ids,
                                (10, 50, 100))
            results.data["hnsw_sweep"].append({"m": m, "ef_construction": efc, "images": size,
                                               "load_seconds": load["wall_seconds"],
                                               "merge_seconds": merged["seconds"],
                                               "store_bytes": merged["store_bytes"], "recall": recall})
            delete_index(client, index)
            results.save()

    if not plan.keep_indices:
        for size in plan.sizes:
            delete_index(client, f"{plan.index_prefix}-{size}")
    results.data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results.data["python_peak_mb"] = python_peak_mb()
    results.save()
    return results.data


def _ids_and_rows(corpus: Any, size: int) -> tuple[list[str], np.ndarray]:
    ids, rows = [], []
    for record, picked in corpus.records(size):
        ids.append(record.image_id)
        rows.append(picked)
    return ids, np.asarray(rows)
