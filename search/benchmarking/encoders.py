"""Encoder throughput per backend, each with its retrieval quality (RSITMD loo mR, exact dense).

Speed is measured on two text shapes: benchmark human captions (~12 words, what users type) and
scale-corpus variants (~57 words, the shape of VLM output that ingest embeds). Quality is the loo
mR of exact brute-force ranking with that backend's vectors, so the engine plays no part: any
difference between backends is the encoder's alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..datasets import load_benchmark
from ..encoder import DEFAULT_BATCH_SIZE, DEFAULT_ENCODER, Encoder


def encoder_rate(encoder: Encoder, texts: list[str], batch_size: int) -> float:
    """Texts per second for one call over `texts`, after a warm-up batch."""
    encoder.encode(texts[:batch_size], batch_size=batch_size)  # warm-up: lazy load, first-call allocations
    t0 = time.perf_counter()
    encoder.encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - t0)


def loo_mr(encoder: Encoder, benchmark: str = "rsitmd", data_dir: str | None = None) -> float:
    from ..evaluation.exact import ExactDenseRanker
    from ..evaluation.protocols import loo_protocol
    from ..evaluation.runner import evaluate

    ranker = ExactDenseRanker(lambda texts: encoder.encode(list(texts), batch_size=128))
    result = evaluate(loo_protocol(load_benchmark(benchmark, "test", data_dir)), ranker, mode="exact-dense")
    return float(result.mr or 0.0)


def encoder_bench(backends: tuple[str, ...], long_texts: list[str], model: str = DEFAULT_ENCODER,
                  data_dir: str | None = None, short_n: int = 2000, long_n: int = 1000,
                  batch_size: int = DEFAULT_BATCH_SIZE, batch_sweep: tuple[int, ...] = (16, 128),
                  quality: bool = True, echo: Any = None) -> list[dict[str, Any]]:
    """One row per backend: sentences/s on short and long texts, loo mR, agreement with torch.

    Long texts are also timed at the `batch_sweep` sizes, the evidence for DEFAULT_BATCH_SIZE.
    """
    short = list(dict.fromkeys(t for _, _, t in load_benchmark("rsitmd", "test", data_dir).captions()))
    short = (short * (1 + short_n // max(1, len(short))))[:short_n]
    long = long_texts[:long_n]
    probe = short[:200] + long[:200]
    reference: np.ndarray | None = None
    rows = []
    for backend in backends:
        t0 = time.perf_counter()
        encoder = Encoder(model, backend=backend)
        encoder.encode(["warm-up"])
        load_seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"backend": backend, "model": encoder.name, "load_seconds": round(load_seconds, 1),
                               "short_texts_per_s": round(encoder_rate(encoder, short, batch_size), 1),
                               "long_texts_per_s": round(encoder_rate(encoder, long, batch_size), 1),
                               "batch_size": batch_size}
        row["long_texts_per_s_by_batch"] = {str(size): round(encoder_rate(encoder, long, size), 1)
                                            for size in batch_sweep if size != batch_size}
        vectors = encoder.encode(probe, batch_size=batch_size)
        if reference is None:
            reference = vectors
        row["min_cosine_vs_first"] = round(float(np.min(np.sum(vectors * reference, axis=1))), 4)
        if quality:
            row["rsitmd_loo_mr"] = round(loo_mr(encoder, "rsitmd", data_dir), 2)
        rows.append(row)
        if echo:
            echo(f"  encoder {backend}: {row}")
    base = rows[0] if rows else None
    for row in rows:
        if base:
            row["speedup_long"] = round(row["long_texts_per_s"] / base["long_texts_per_s"], 2)
            row["speedup_short"] = round(row["short_texts_per_s"] / base["short_texts_per_s"], 2)
            if "rsitmd_loo_mr" in row and base.get("rsitmd_loo_mr"):
                row["mr_relative_change_pct"] = round(
                    100 * (row["rsitmd_loo_mr"] - base["rsitmd_loo_mr"]) / base["rsitmd_loo_mr"], 2)
    return rows


# single-query encoding (the query path) ------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryEncodePlan:
    """What `rsrt bench encode-query` measures: one text per call, per backend and thread count.

    `threads`: torch.set_num_threads / onnxruntime intra-op threads; 0 means the backend's own default.
    `cold_export`: also time an ONNX export into a fresh temporary cache (what a first query costs when the
    export is not on disk yet; tens of seconds).
    """

    backends: tuple[str, ...] = ("torch", "onnx", "onnx-int8", "torch-int8")
    n: int = 200
    warmup: int = 20
    threads: tuple[int, ...] = (0, 1, 2)
    model: str = DEFAULT_ENCODER
    cold_export: bool = False


def _latency_row(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def _one_by_one(encode: Callable[[str], np.ndarray], texts: list[str]) -> tuple[list[float], np.ndarray]:
    times, vectors = [], []
    for text in texts:
        t0 = time.perf_counter()
        vectors.append(encode(text))
        times.append(time.perf_counter() - t0)
    return times, np.stack(vectors)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads for the block (process-wide, so restored afterwards); 0 leaves them alone."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def query_encoding_bench(plan: QueryEncodePlan, texts: list[str], echo: Any = None) -> list[dict[str, Any]]:
    """Rows: one per (backend, threads) with single-text latency and cosine to torch; one for a cache hit;
    one per ONNX backend with its first-query cost (and a cold export when `plan.cold_export`)."""
    from ..query_cache import QueryVectorCache

    timed = texts[:plan.n]
    warm = texts[plan.n:plan.n + plan.warmup] or timed[:plan.warmup]
    reference: np.ndarray | None = None
    rows: list[dict[str, Any]] = []
    last: Encoder | None = None
    order = sorted(plan.backends, key=lambda b: b != "torch")  # torch first: it is the reference
    if "torch" not in order:
        order.insert(0, "torch")
    for backend in order:
        for threads in plan.threads:
            t0 = time.perf_counter()
            encoder = Encoder(plan.model, backend=backend, threads=(threads or None))
            with _torch_threads(threads if backend.startswith("torch") else 0):
                encoder.encode(["warm-up"], batch_size=1)
                first = time.perf_counter() - t0
                for text in warm:
                    encoder.encode([text], batch_size=1)
                seconds, vectors = _one_by_one(lambda t, e=encoder: e.encode([t], batch_size=1)[0], timed)
            if reference is None:
                reference = vectors
            if backend not in plan.backends:
                continue  # torch only as the reference
            cosines = np.sum(vectors * reference, axis=1)
            row: dict[str, Any] = {"backend": backend, "threads": threads or "default", "texts": len(timed),
                                   **_latency_row(seconds), "min_cosine_vs_torch": round(float(cosines.min()), 5),
                                   "identical_to_torch": bool(np.array_equal(vectors, reference)),
                                   "load_and_first_query_s": round(first, 2)}
            if backend.startswith("onnx"):
                row["export_seconds"] = round(encoder.onnx_encoder.export_seconds, 2)
            rows.append(row)
            last = encoder
            if echo:
                echo(f"  {backend} threads={row['threads']}: p50 {row['p50_ms']} ms")
    if last is not None:
        cache = QueryVectorCache(max(1, len(timed)))
        for text in timed:
            cache.vector(last, text)
        seconds, _ = _one_by_one(lambda t: cache.vector(last, t), timed)
        rows.append({"backend": "cache-hit", "threads": "-", "texts": len(timed), **_latency_row(seconds),
                     "encoder_calls_on_hits": cache.misses - len(timed)})
    if plan.cold_export:
        rows += [_cold_export_row(plan.model, b) for b in plan.backends if b.startswith("onnx")]
    return rows


def _cold_export_row(model: str, backend: str) -> dict[str, Any]:
    """Time a first query with no export on disk: an OnnxEncoder over a fresh temporary cache."""
    import tempfile
    from pathlib import Path

    from ..encoder_onnx import OnnxEncoder

    encoder = Encoder(model, backend=backend)
    with tempfile.TemporaryDirectory(prefix="rsrt-cold-export-") as tmp:
        t0 = time.perf_counter()
        onnx = OnnxEncoder(encoder.name, encoder._location, Path(tmp), quantized=backend == "onnx-int8")
        onnx.encode(["a first query"], 1)
        total = time.perf_counter() - t0
    return {"backend": f"{backend} (cold export)", "threads": "default", "texts": 1,
            "export_seconds": round(onnx.export_seconds, 2), "load_and_first_query_s": round(total, 2)}


def format_query_encoding(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `query_encoding_bench`'s rows."""
    columns = ("backend", "threads", "p50_ms", "p95_ms", "mean_ms", "min_cosine_vs_torch", "identical_to_torch",
               "load_and_first_query_s", "export_seconds")
    table = [columns] + [tuple("" if row.get(c) is None else str(row.get(c)) for c in columns) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table)
