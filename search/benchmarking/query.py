"""Query latency, measured the way users see it: a script that prints numbers, not a timed test.

Each condition runs N benchmark captions after a warm-up, with 1 or more concurrent clients (threads,
each with its own connection pool slot). "engine" times the search call with the query vector
computed beforehand; "end-to-end" (one client) adds encoding the query text. With filters, every
query carries the corpus's bbox + datetime filter, the portal use case.

A *condition* is one measured row: a `Mode`, where hybrid fusion runs (`FusionSite`) and, for the
"-image" ones, BM25 over each image's whole text (`LexicalScope.IMAGE`, `--lexical-scope image`)
instead of the searcher's own scope. Its name is what `rsrt bench query --modes` takes and what
results.json calls the row's "mode".
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from opensearchpy import OpenSearch, OpenSearchException

from ..client import cluster_error, connect
from ..config import ConnectionSettings
from ..errors import ConfigError
from ..filters import Filters
from ..query_cache import QueryVectorCache
from ..request import EmbedSite, FusionSite, LexicalScope, Mode, SearchRequest
from ..searcher import Searcher


@dataclass(frozen=True)
class BenchCondition:
    mode: Mode
    fusion_site: FusionSite = FusionSite.AUTO
    lexical_scope: LexicalScope | None = None  # None: the scope of the searcher measured
    # None: the query vector is computed beforehand (engine latency); client: rsrt encodes each query in the
    # timed call; cluster: the index's ml-commons model does (a plain-text neural query)
    embed: EmbedSite | None = None


CONDITIONS: dict[str, BenchCondition] = {
    "lexical": BenchCondition(Mode.LEXICAL),
    "dense": BenchCondition(Mode.DENSE),
    "hybrid-server": BenchCondition(Mode.HYBRID, FusionSite.SERVER),
    "hybrid-client": BenchCondition(Mode.HYBRID, FusionSite.CLIENT),
    "lexical-image": BenchCondition(Mode.LEXICAL, lexical_scope=LexicalScope.IMAGE),
    "hybrid-server-image": BenchCondition(Mode.HYBRID, FusionSite.SERVER, LexicalScope.IMAGE),
    "hybrid-client-image": BenchCondition(Mode.HYBRID, FusionSite.CLIENT, LexicalScope.IMAGE),
    "dense-embed-client": BenchCondition(Mode.DENSE, embed=EmbedSite.CLIENT),
    "dense-embed-cluster": BenchCondition(Mode.DENSE, embed=EmbedSite.CLUSTER),
    "hybrid-client-embed-client": BenchCondition(Mode.HYBRID, FusionSite.CLIENT, embed=EmbedSite.CLIENT),
    "hybrid-client-embed-cluster": BenchCondition(Mode.HYBRID, FusionSite.CLIENT, embed=EmbedSite.CLUSTER),
    "hybrid-server-embed-cluster": BenchCondition(Mode.HYBRID, FusionSite.SERVER, embed=EmbedSite.CLUSTER),
}
# What `rsrt bench query` measures unless told: every engine condition on the searcher's own lexical scope.
DEFAULT_CONDITIONS = tuple(name for name, c in CONDITIONS.items() if c.lexical_scope is None and c.embed is None)


def check_conditions(names: Sequence[str]) -> tuple[str, ...]:
    """The names, each a known condition (else a `ConfigError` listing them)."""
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(CONDITIONS)}")
    return tuple(names)


def connect_for_queries(settings: ConnectionSettings, index: str) -> tuple[OpenSearch, str, int]:
    """(client, OpenSearch version, images in `index`) with only what a reader may do.

    Not `require_cluster`: its plugin inventory needs `cluster:monitor/nodes/info`, which the secure
    node's `rsrt-reader` (the portal's identity, the one whose latency counts) does not have.
    """
    client = connect(settings)
    try:
        version = client.info()["version"]["number"]
        images = int(client.count(index=index)["count"])
    except OpenSearchException as exc:
        raise cluster_error(exc, settings) from None
    return client, version, images


@dataclass
class LatencyRow:
    mode: str
    queries: int
    clients: int
    filtered: bool
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    qps: float
    e2e_p50_ms: float | None
    engine_took_p50_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def query_latency(searcher: Searcher, queries: list[str], modes: Sequence[str] = DEFAULT_CONDITIONS, k: int = 10,
                  warmup: int = 20, clients: int = 1, filters: Filters | None = None,
                  end_to_end: bool = True, candidates: int = 100) -> list[LatencyRow]:
    """One row per condition (`modes`: names of `CONDITIONS`); with `clients` > 1, the queries are
    shared out among that many threads."""
    check_conditions(modes)
    vectors = [[float(x) for x in v] for v in searcher.encoder.encode(queries)]
    rows = []
    # The timed searchers keep no query-vector cache: a text encoded by the warm-up, an earlier condition or
    # client count must not answer a pass that times encoding (end to end, the embed-client conditions).
    uncached = QueryVectorCache(0)
    scoped: dict[LexicalScope, Searcher] = {}
    for name in modes:
        condition = CONDITIONS[name]
        scope = condition.lexical_scope or LexicalScope(searcher.lexical_scope)
        if scope not in scoped:
            scoped[scope] = Searcher(searcher.client, searcher.index, encoder=searcher.encoder, lexical_scope=scope,
                                     encoder_backend=searcher.encoder_backend, query_cache=uncached)
        chosen = scoped[scope]

        def run(i: int, with_vector: bool, condition: BenchCondition = condition, chosen: Searcher = chosen) -> float:
            given = with_vector and condition.embed is None
            request = SearchRequest(queries[i], condition.mode, k, filters=filters or Filters(),
                                    candidates=candidates, fusion_site=condition.fusion_site,
                                    matched_variants=False, vector=vectors[i] if given else None,
                                    embed=condition.embed or EmbedSite.CLIENT)
            return chosen.search(request).took_ms

        for i in range(min(warmup, len(queries))):
            run(i, True)
        latencies, took, wall = _concurrently(run, len(queries), clients)
        e2e: list[float] = []
        if end_to_end and clients == 1:
            for i in range(min(len(queries), 100)):
                t0 = time.perf_counter()
                run(i, False)
                e2e.append((time.perf_counter() - t0) * 1000)
        rows.append(LatencyRow(name, len(queries), clients, bool(filters and filters.clauses()),
                               _percentile(latencies, 50), _percentile(latencies, 95), _percentile(latencies, 99),
                               statistics.fmean(latencies), len(queries) / wall,
                               _percentile(e2e, 50) if e2e else None, _percentile(took, 50)))
    return rows


def _concurrently(run: Callable[[int, bool], float], n: int, clients: int) -> tuple[list[float], list[float], float]:
    """Queries 0..n-1 shared round-robin among `clients` threads: (latencies ms, engine took ms, wall s)."""
    latencies: list[float] = []
    took: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        mine, took_mine = [], []
        try:
            for i in range(offset, n, clients):
                t0 = time.perf_counter()
                took_mine.append(run(i, True))
                mine.append((time.perf_counter() - t0) * 1000)
        except Exception as exc:  # re-raised in the caller's thread: a thread's failure is the measurement's
            with lock:
                failures.append(exc)
        with lock:
            latencies.extend(mine)
            took.extend(took_mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return latencies, took, time.perf_counter() - started


def format_latency(rows: list[LatencyRow]) -> str:
    header = (f"{'mode':<14} {'clients':>7} {'filter':>6} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'QPS':>7} {'took p50':>8} {'e2e p50':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        e2e = f"{r.e2e_p50_ms:>8.1f}" if r.e2e_p50_ms is not None else f"{'-':>8}"
        lines.append(f"{r.mode:<14} {r.clients:>7} {'yes' if r.filtered else 'no':>6} {r.queries:>5} "
                     f"{r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {r.p99_ms:>8.1f} {r.qps:>7.1f} "
                     f"{r.engine_took_p50_ms:>8.1f} {e2e}")
    return "\n".join(lines)
