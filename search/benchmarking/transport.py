"""What the transport costs: the same queries on two connections (e.g. plain HTTP vs TLS + basic auth).

`rsrt bench tls` runs `query_latency` on a *base* connection and a *compare* connection to indices
holding the same documents, in rounds whose order alternates (base first, then compare first), so
that the load of a shared machine falls on both alike. Per condition it reports the median over
rounds of p50, p95 and QPS on each side and the overhead of compare over base, in ms and %.

Warm pooled connections hide the handshake: opensearch-py (urllib3) keeps its TLS connections open
and reuses them, so a query pays only encryption and the security plugin's per-request auth check.
`cold_requests` measures what a new connection costs instead: a fresh client's first request against
its second, and, for https, the bare TCP + TLS handshake.
"""

from __future__ import annotations

import os
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from opensearchpy import OpenSearch

from ..filters import Filters
from ..searcher import Searcher
from .query import DEFAULT_CONDITIONS, query_latency

SIDES = ("base", "compare")


@dataclass(frozen=True)
class Side:
    """One connection to measure: a label for tables, what it connects to (never a secret), its searcher."""

    label: str
    described: str
    searcher: Searcher


def side_label(url: str, authenticated: bool) -> str:
    """"http", "https+auth", …: how a side is named in the table."""
    return urlsplit(url).scheme + ("+auth" if authenticated else "")


def round_order(round_number: int) -> tuple[str, str]:
    """Base first in rounds 0, 2, …, compare first in 1, 3, …: neither side always runs on a warmer node."""
    return SIDES if round_number % 2 == 0 else (SIDES[1], SIDES[0])


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def compare_latency(base: Side, compare: Side, queries: list[str], modes: Sequence[str] = DEFAULT_CONDITIONS,
                    clients: Sequence[int] = (1,), rounds: int = 3, k: int = 10, candidates: int = 100,
                    filters: Filters | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every round: both sides, all modes and client counts, the order alternating; the raw rows and the summary."""
    sides = {"base": base, "compare": compare}
    measured: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    for number in range(rounds):
        for name in round_order(number):
            side = sides[name]
            load_before = _load()
            for n in clients:
                rows = query_latency(side.searcher, queries, modes, k, clients=n, filters=filters,
                                     end_to_end=False, candidates=candidates)
                measured += [{"round": number + 1, "side": name, **row.as_dict()} for row in rows]
                echo(f"round {number + 1} {side.label:<8} {n} client(s): "
                     + ", ".join(f"{r.mode} p50 {r.p50_ms:.1f}" for r in rows))
            loads.append({"round": number + 1, "side": name, "load_before": load_before, "load_after": _load()})
    return {"rows": measured, "load": loads, "summary": summarize(measured)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, clients): the median over rounds of each side's p50/p95/QPS, and compare's overhead.

    Overhead is compare − base (ms; % of base); for QPS, the % it loses. Medians, because one round on a
    shared machine can catch a burst of someone else's work.
    """
    groups: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["clients"]), {s: [] for s in SIDES})[row["side"]].append(row)
    out = []
    for (mode, clients), by_side in groups.items():
        if not all(by_side.values()):
            continue
        entry: dict[str, Any] = {"mode": mode, "clients": clients, "rounds": min(len(v) for v in by_side.values())}
        for side, measured in by_side.items():
            for key in ("p50_ms", "p95_ms", "qps"):
                entry[f"{side}_{key}"] = round(statistics.median(r[key] for r in measured), 2)
        for key in ("p50_ms", "p95_ms"):
            delta = entry[f"compare_{key}"] - entry[f"base_{key}"]
            entry[f"overhead_{key}"] = round(delta, 2)
            entry[f"overhead_{key.removesuffix('_ms')}_pct"] = _pct(delta, entry[f"base_{key}"])
        entry["qps_loss_pct"] = _pct(entry["base_qps"] - entry["compare_qps"], entry["base_qps"])
        out.append(entry)
    return out


def _pct(delta: float, of: float) -> float | None:
    return round(100 * delta / of, 1) if of else None


def format_comparison(summary: list[dict[str, Any]], base_label: str, compare_label: str) -> str:
    """The summary as a fixed-width table: each side's p50/p95/QPS, then compare's overhead."""
    header = (f"{'mode':<20} {'clients':>7} | {base_label[:8]:>8} p50 {'p95':>6} {'QPS':>6} | "
              f"{compare_label[:8]:>8} p50 {'p95':>6} {'QPS':>6} | {'Δp50 ms':>8} {'Δp50 %':>7} {'Δp95 ms':>8} "
              f"{'QPS −%':>7}")
    lines = [header, "-" * len(header)]
    for e in summary:
        lines.append(
            f"{e['mode']:<20} {e['clients']:>7} | {e['base_p50_ms']:>12.2f} {e['base_p95_ms']:>6.2f} "
            f"{e['base_qps']:>6.1f} | {e['compare_p50_ms']:>12.2f} {e['compare_p95_ms']:>6.2f} "
            f"{e['compare_qps']:>6.1f} | {e['overhead_p50_ms']:>+8.2f} {_fmt_pct(e['overhead_p50_pct'])} "
            f"{e['overhead_p95_ms']:>+8.2f} {_fmt_pct(e['qps_loss_pct'])}")
    return "\n".join(lines)


def _fmt_pct(value: float | None) -> str:
    return f"{value:>+7.1f}" if value is not None else f"{'-':>7}"


def cold_requests(make_client: Callable[[], OpenSearch], index: str, repeats: int = 20) -> dict[str, Any]:
    """A new client's first request (connect, handshake, auth, count) against its second (pooled), in ms.

    Each repeat builds a fresh client, so its pool is empty; the second request reuses the connection the
    first one opened. The difference is what a caller without a pooled connection pays per request.
    """
    first, second = [], []
    for _ in range(repeats):
        client = make_client()
        try:
            t0 = time.perf_counter()
            client.count(index=index)
            t1 = time.perf_counter()
            client.count(index=index)
            t2 = time.perf_counter()
        finally:
            client.close()
        first.append((t1 - t0) * 1000)
        second.append((t2 - t1) * 1000)
    return {"repeats": repeats, "first_request_p50_ms": round(statistics.median(first), 2),
            "pooled_request_p50_ms": round(statistics.median(second), 2),
            "new_connection_cost_p50_ms": round(statistics.median(f - s for f, s in zip(first, second, strict=True)),
                                                2)}


def handshake(url: str, ca_file: str | None, verify: bool = True, repeats: int = 20) -> dict[str, Any]:
    """Median TCP connect and (for https) TLS handshake to the URL's host, in ms: the raw cost under a new
    connection, without HTTP or auth."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    context: ssl.SSLContext | None = None
    if secure:
        context = ssl.create_default_context(cafile=ca_file)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    tcp, tls = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sock = socket.create_connection((host, port), timeout=10)
        t1 = time.perf_counter()
        try:
            if context is not None:
                wrapped = context.wrap_socket(sock, server_hostname=host)
                tls.append((time.perf_counter() - t1) * 1000)
                wrapped.close()
        finally:
            sock.close()
        tcp.append((t1 - t0) * 1000)
    out: dict[str, Any] = {"url": url, "repeats": repeats, "tcp_connect_p50_ms": round(statistics.median(tcp), 3)}
    if tls:
        out["tls_handshake_p50_ms"] = round(statistics.median(tls), 2)
        out["tls_handshake_p95_ms"] = round(float(np.percentile(tls, 95)), 2)
    return out

