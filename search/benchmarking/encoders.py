"""Encoder throughput per backend, each with its retrieval quality (RSITMD loo mR, exact dense).

Speed is measured on two text shapes: benchmark human captions (~12 words, what users type) and
scale-corpus variants (~57 words, the shape of VLM output that ingest embeds). Quality is the loo
mR of exact brute-force ranking with that backend's vectors, so the engine plays no part: any
difference between backends is the encoder's alone.
"""

from __future__ import annotations

import time
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
