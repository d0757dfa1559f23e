"""Query latency, measured the way users see it: a script that prints numbers, not a timed test.

`rsrt bench query` runs N benchmark captions per mode, one client, sequentially, after a warm-up.
"engine" times the search call with the query vector computed beforehand; "end-to-end" includes
encoding the query text.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .searcher import Searcher

BENCH_MODES = ("lexical", "dense", "hybrid-server", "hybrid-client")


@dataclass
class LatencyRow:
    mode: str
    queries: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    qps: float
    e2e_p50_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def query_latency(searcher: Searcher, queries: list[str], modes: tuple[str, ...] = BENCH_MODES, k: int = 10,
                  warmup: int = 20) -> list[LatencyRow]:
    vectors = [[float(x) for x in v] for v in searcher.encoder.encode(queries)]
    rows = []
    for name in modes:
        mode = "hybrid" if name.startswith("hybrid") else name
        backend = "client" if name == "hybrid-client" else "server" if name == "hybrid-server" else "auto"

        def run(i: int, with_vector: bool, mode: str = mode, backend: str = backend) -> None:
            searcher.search(queries[i], mode, k, hybrid_backend=backend, matched_variants=False,
                            vector=vectors[i] if with_vector else None)

        for i in range(min(warmup, len(queries))):
            run(i, True)
        engine: list[float] = []
        started = time.perf_counter()
        for i in range(len(queries)):
            t0 = time.perf_counter()
            run(i, True)
            engine.append((time.perf_counter() - t0) * 1000)
        wall = time.perf_counter() - started
        e2e: list[float] = []
        for i in range(min(len(queries), 100)):
            t0 = time.perf_counter()
            run(i, False)
            e2e.append((time.perf_counter() - t0) * 1000)
        rows.append(LatencyRow(name, len(queries), _percentile(engine, 50), _percentile(engine, 95),
                               _percentile(engine, 99), statistics.fmean(engine), len(queries) / wall,
                               _percentile(e2e, 50)))
    return rows


def format_latency(rows: list[LatencyRow]) -> str:
    header = f"{'mode':<14} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean':>8} {'QPS':>7} {'e2e p50':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.mode:<14} {r.queries:>5} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.p99_ms:>8.1f} "
                     f"{r.mean_ms:>8.1f} {r.qps:>7.1f} {r.e2e_p50_ms:>8.1f}")
    return "\n".join(lines)
