"""`rsrt bench …`: performance figures as printed numbers (targets live here, not in timed tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors
from rsrt.cli_index import index_option


def _ints(value: str, name: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v.replace("_", "").replace("k", "000")) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers (10k allowed)", param_hint=name) \
            from None
    if not numbers or any(n <= 0 for n in numbers):
        raise click.BadParameter(f"{value!r}: expected positive integers", param_hint=name)
    return numbers


@click.group()
def bench() -> None:
    """Measure speed, recall and cost: the performance report and its parts."""


@bench.command("query")
@index_option
@connection_options
@click.option("--benchmark", default="rsitmd", show_default=True, help="where the query captions come from")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@click.option("--n", "count", default=200, show_default=True, help="queries per mode")
@click.option("--k", default=10, show_default=True)
@click.option("--clients", default="1", show_default=True, help="concurrent clients, e.g. 1,4")
@click.option("--bbox", default=None, help="filter every query: west,south,east,north")
@click.option("--datetime", "when", default=None, help="filter every query: ISO interval a/b")
@click.option("--lexical-scope", type=click.Choice(["variant", "image"]), envvar="RSRT_LEXICAL_SCOPE",
              default="variant", show_default=True,
              help="BM25 per variant (max, the product rule) or over each image's whole text")
@click.option("--modes", default="lexical,dense,hybrid-server,hybrid-client", show_default=True)
@click.option("--candidates", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="candidates per sub-query (kNN k, hybrid depth)")
@click.option("--json", "as_json", is_flag=True)
@encoder_backend_option
@user_errors
def bench_query(index_name: str, benchmark: str, data_dir: str | None, count: int, k: int, clients: str,
                bbox: str | None, when: str | None, lexical_scope: str, modes: str, candidates: int, as_json: bool,
                encoder_backend: str, **kwargs: Any) -> None:
    """p50/p95/p99 latency and QPS per mode against an existing index."""
    from rsrt.search.benchmarking.query import check_conditions, connect_for_queries, format_latency, query_latency
    from rsrt.search.datasets import load_benchmark
    from rsrt.search.filters import Filters, complete_dates
    from rsrt.search.searcher import Searcher

    conditions = check_conditions([m.strip() for m in modes.split(",")])
    client, version, images = connect_for_queries(settings_from(kwargs), index_name)
    texts = list(dict.fromkeys(text for _, _, text in load_benchmark(benchmark, "test", data_dir).captions()))
    queries = texts[:count]
    filters = Filters.build(bbox=bbox, datetime=complete_dates(when)) if (bbox or when) else None
    searcher = Searcher(client, index_name, lexical_scope=lexical_scope, encoder_backend=encoder_backend)
    rows = []
    for n in _ints(clients, "--clients"):
        rows += query_latency(searcher, queries, conditions, k, clients=n, filters=filters, candidates=candidates)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        click.echo(f"{index_name}: {images} images, OpenSearch "
                   f"{version}, {len(queries)} queries per mode, k={k}, {candidates} candidates, "
                   f"lexical scope {lexical_scope}")
        click.echo(format_latency(rows))


@bench.command("tls")
@index_option
@connection_options
@click.option("--compare-url", required=True,
              help="the second connection, e.g. the TLS + basic-auth node (https://…); the first is --url")
@click.option("--compare-user", default=None, help="its basic-auth user (e.g. rsrt-reader)")
@click.option("--compare-password", envvar="RSRT_COMPARE_PASSWORD", show_envvar=False, default=None,
              help="its password; prefer env RSRT_COMPARE_PASSWORD (never printed)")
@click.option("--compare-ca-file", type=click.Path(dir_okay=False), default=None, help="its CA bundle")
@click.option("--compare-index", default=None, help="the index there [default: --index]")
@click.option("--benchmark", default="rsitmd", show_default=True, help="where the query captions come from")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@click.option("--n", "count", default=200, show_default=True, help="queries per mode")
@click.option("--k", default=10, show_default=True)
@click.option("--clients", default="1,4", show_default=True, help="concurrent clients, e.g. 1,4")
@click.option("--modes", default="lexical,dense,hybrid-server,hybrid-client", show_default=True)
@click.option("--candidates", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="candidates per sub-query (kNN k, hybrid depth)")
@click.option("--rounds", type=click.IntRange(1, 50), default=3, show_default=True,
              help="rounds over both connections, the order alternating; the table shows medians over rounds")
@click.option("--cold-repeats", type=click.IntRange(0, 1000), default=20, show_default=True,
              help="fresh clients (new connection, handshake) timed per side; 0 skips")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write every round, the summary and the handshake figures as JSON here")
@click.option("--json", "as_json", is_flag=True)
@encoder_backend_option
@user_errors
def bench_tls(index_name: str, compare_url: str, compare_user: str | None, compare_password: str | None,
              compare_ca_file: str | None, compare_index: str | None, benchmark: str, data_dir: str | None,
              count: int, k: int, clients: str, modes: str, candidates: int, rounds: int, cold_repeats: int,
              out: Path | None, as_json: bool, encoder_backend: str, **kwargs: Any) -> None:
    """Query latency on two connections to the same documents (plain HTTP vs TLS + auth): both sides and the
    overhead, per mode; plus what a new connection costs on each."""
    import os
    import platform
    from datetime import UTC, datetime

    from rsrt.search.benchmarking.query import check_conditions, connect_for_queries
    from rsrt.search.benchmarking.transport import (
        Side,
        cold_requests,
        compare_latency,
        format_comparison,
        handshake,
        side_label,
    )
    from rsrt.search.client import connect
    from rsrt.search.config import ConnectionSettings
    from rsrt.search.datasets import load_benchmark
    from rsrt.search.searcher import Searcher

    conditions = check_conditions([m.strip() for m in modes.split(",")])
    client_counts = _ints(clients, "--clients")
    base_settings = settings_from(kwargs)
    # Only the flags: the environment's RSRT_OPENSEARCH_* describe the base connection, not this one.
    compare_settings = ConnectionSettings.resolve(url=compare_url, user=compare_user, password=compare_password,
                                                  ca_file=compare_ca_file, env={})
    texts = list(dict.fromkeys(text for _, _, text in load_benchmark(benchmark, "test", data_dir).captions()))
    queries = texts[:count]
    sides = []
    for settings, index in ((base_settings, index_name), (compare_settings, compare_index or index_name)):
        client, version, images = connect_for_queries(settings, index)
        searcher = Searcher(client, index, encoder=sides[0][0].searcher.encoder if sides else None,
                            encoder_backend=encoder_backend)
        label = side_label(settings.urls[0], bool(settings.user or settings.client_cert))
        sides.append((Side(label, f"{settings.describe()} {index}", searcher), settings, version, images))
    (base, _, base_version, base_count), (compare, _, _, compare_count) = sides
    if base_count != compare_count:
        click.echo(f"warning: {base.described} holds {base_count} images, {compare.described} {compare_count}: "
                   "the two sides do not search the same documents", err=True)
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "load_at_start": [round(x, 2) for x in os.getloadavg()]},
        "opensearch": base_version,
        "sides": {name: {"label": side.label, "connection": side.described, "images": images}
                  for name, (side, _, _, images) in zip(("base", "compare"), sides, strict=True)},
        "plan": {"queries": len(queries), "benchmark": benchmark, "k": k, "candidates": candidates,
                 "clients": list(client_counts), "modes": list(conditions), "rounds": rounds},
    }
    result.update(compare_latency(base, compare, queries, conditions, client_counts, rounds, k, candidates,
                                  echo=lambda line: click.echo(line, err=as_json)))
    if cold_repeats:
        result["new_connection"] = {}
        for name, (side, settings, _, _) in zip(("base", "compare"), sides, strict=True):
            entry = cold_requests(lambda settings=settings: connect(settings), side.searcher.index, cold_repeats)
            entry["handshake"] = handshake(settings.urls[0], settings.ca_file, settings.verify_certs, cold_repeats)
            result["new_connection"][name] = entry
    result["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"base: {base.described} ({base_count} images); compare: {compare.described} ({compare_count}); "
               f"{len(queries)} queries per mode, medians over {rounds} round(s)")
    click.echo(format_comparison(result["summary"], base.label, compare.label))
    for name, entry in result.get("new_connection", {}).items():
        shake = entry["handshake"]
        tls = f", TLS handshake p50 {shake['tls_handshake_p50_ms']} ms" if "tls_handshake_p50_ms" in shake else ""
        click.echo(f"{name}: new client's first request p50 {entry['first_request_p50_ms']} ms vs pooled "
                   f"{entry['pooled_request_p50_ms']} ms; TCP connect p50 {shake['tcp_connect_p50_ms']} ms{tls}")
    if out is not None:
        click.echo(f"results: {out}")


@bench.command("corpus")
@click.option("--size", "sizes", default="10000", show_default=True, help="images, e.g. 10k,100k")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results/corpus"),
              show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@user_errors
def bench_corpus(sizes: str, out: Path, seed: int, data_dir: str | None) -> None:
    """Write the deterministic scale corpus (grouped captions JSONL, `rsrt ingest captions` reads it)."""
    from rsrt.search.benchmarking.corpus import build_corpus, write_corpus

    corpus = build_corpus(seed, data_dir)
    for size in _ints(sizes, "--size"):
        manifest = write_corpus(corpus, size, out)
        click.echo(f"{out / manifest['file']}: {size} images, {manifest['distinct_variants']} distinct variants, "
                   f"sha256 {manifest['sha256']}")


@bench.command("all")
@connection_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="results.json, summary.md, latency-vs-size.png and the corpus files")
@click.option("--sizes", default="10k,100k", show_default=True, help="corpus sizes (images)")
@click.option("--end-to-end-sizes", default="10k", show_default=True,
              help="sizes also ingested with the real encoder (10k: ~14 min torch, ~9 min onnx-int8, 2 cores)")
@click.option("--clients", default="1,4", show_default=True)
@click.option("--queries", default=200, show_default=True, help="queries per measurement")
@click.option("--backends", default="torch,torch-int8,onnx,onnx-int8", show_default=True,
              help="encoder backends to compare")
@click.option("--skip", default="", help="comma list of: encoder, ingest, e2e, query, recall, sweep")
@click.option("--pool-per-class", type=click.IntRange(min=5), default=300, show_default=True,
              help="distinct variants per scene class (the corpus's vocabulary; smaller is faster to encode)")
@click.option("--no-merge", is_flag=True, help="measure only as loaded, without the force-merge phase")
@click.option("--lexical-scope", type=click.Choice(["variant", "image"]), envvar="RSRT_LEXICAL_SCOPE",
              default="variant", show_default=True,
              help="BM25 per variant (max, the product rule) or over each image's whole text")
@click.option("--keep", is_flag=True, help="keep the benchmark indices afterwards")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None)
@encoder_backend_option
@user_errors
def bench_all(out: Path, sizes: str, end_to_end_sizes: str, clients: str, queries: int, backends: str, skip: str,
              pool_per_class: int, no_merge: bool, lexical_scope: str, keep: bool, data_dir: str | None,
              encoder_backend: str, **kwargs: Any) -> None:
    """The whole performance report: corpus, encoders, ingest, queries, recall, HNSW sweep, memory."""
    from rsrt.search.benchmarking.harness import BenchPlan, run_all
    from rsrt.search.benchmarking.report import write_report
    from rsrt.search.client import require_cluster

    known = {"encoder", "ingest", "e2e", "query", "recall", "sweep"}
    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    if skipped - known:
        raise click.BadParameter(f"unknown: {', '.join(sorted(skipped - known))}; use {', '.join(sorted(known))}",
                                 param_hint="--skip")
    client, _ = require_cluster(settings_from(kwargs))
    plan = BenchPlan(sizes=_ints(sizes, "--sizes"), end_to_end_sizes=_ints(end_to_end_sizes, "--end-to-end-sizes"),
                     clients=_ints(clients, "--clients"), queries=queries,
                     encoder_backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
                     force_merge=not no_merge, keep_indices=keep, data_dir=data_dir, skip=skipped,
                     lexical_scope=lexical_scope, encoder_backend=encoder_backend, pool_per_class=pool_per_class)
    data = run_all(client, out, plan, echo=click.echo)
    summary = write_report(data, out)
    click.echo(f"\n{summary.read_text()}")
    click.echo(f"results: {out / 'results.json'}, summary: {summary}")


@bench.command("raster")
@click.option("--size", default=4000, show_default=True, help="synthetic scene width and height (pixels)")
@click.option("--bands", default=4, show_default=True, help="uint16 bands in the scene")
@click.option("--chip-size", default=512, show_default=True, help="chip side (pixels)")
@click.option("--max-image-side", default=1024, show_default=True, help="longest side of each VLM picture")
@click.option("--repeats", default=3, show_default=True, help="passes over the chips")
@click.option("--no-full-read", is_flag=True, help="skip the full-resolution comparison read")
@click.option("--no-http", is_flag=True, help="skip the HTTP phase (the same chips over range reads)")
@click.option("--url", default=None,
              help="a real remote COG (http(s)://, s3://) for the HTTP phase [default: the synthetic COG on a "
                   "loopback range-serving server the benchmark starts]")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the temporary scenes are written [default: the system temp dir]")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def bench_raster(size: int, bands: int, chip_size: int, max_image_side: int, repeats: int, no_full_read: bool,
                 no_http: bool, url: str | None, workdir: Path | None, as_json: bool) -> None:
    """Chips per second (read + stretch + resize) and peak RSS on a local 4-band uint16 COG, then over HTTP."""
    from rsrt.search.benchmarking.raster import RasterBenchPlan, format_raster_benchmark, run_raster_benchmark

    plan = RasterBenchPlan(size=size, bands=bands, chip_size=chip_size, max_side=max_image_side,
                           repeats=max(1, repeats), full_read=not no_full_read, http=not no_http, url=url)
    result = run_raster_benchmark(plan, workdir)
    click.echo(json.dumps(result, indent=2) if as_json else format_raster_benchmark(result))


def _register() -> None:
    """The larger benchmarks live in their own modules, each one command."""
    from rsrt.cli_bench_capacity import bench_capacity
    from rsrt.cli_bench_encode import bench_encode_query
    from rsrt.cli_bench_scale import bench_scale
    from rsrt.cli_bench_shards import bench_shards

    for command in (bench_scale, bench_shards, bench_capacity, bench_encode_query):
        bench.add_command(command)


_register()
