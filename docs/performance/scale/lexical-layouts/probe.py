"""Best-variant BM25 at 100k images: the nested query against the index layouts that might replace it.

A probe, not a benchmark of rsrt's code: it builds three lexical-only indices of the duplicate-free
corpus (`rsrt bench scale --corpus distinct` draws the same texts) and times one query shape on each.

- nested:   rsrt's index (its template, `to_document`), rsrt's best-variant query (nested, max);
- image:    the same index, rsrt's `--lexical-scope image` query (`all_text`);
- rescore:  image scope picks a window, rsrt's nested query re-orders it (`rescore`, weight 0/1);
- collapse: one top-level document per variant, same three fields; `collapse` on `image_id`;
- top5d:    the same variant documents, top 5 × depth variants, first hit per image (an image has five
            variants, so this is exact);
- slots:    one document per image with per-slot fields, `dis_max` (tie 0) over the slots.

Overlap is with the nested query's ids. Scores of collapse and top5d equal the nested ones, because
each field's BM25 statistics are over the same variant texts.

    RSRT_DATA_DIR=../shared/benchmarks python docs/performance/scale/lexical-layouts/probe.py \
        --url http://127.0.0.1:29200 --build --out docs/performance/scale/lexical-layouts/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from opensearchpy import OpenSearch, helpers

from rsrt.search.benchmarking.corpus import build_distinct_corpus
from rsrt.search.datasets import load_benchmark
from rsrt.search.filters import Filters
from rsrt.search.index import render_template, to_document
from rsrt.search.queries import lexical_query
from rsrt.search.request import LexicalScope
from rsrt.search.schema import VARIANT_FIELDS

NESTED, VARIANTS, SLOTS = "probe-nested", "probe-variants", "probe-slots"
MARK = {"created_by": "rsrt lexical-layouts probe"}  # the only indices this script deletes
SLOT_COUNT = 5
Body = Callable[[str, int], tuple[str, dict[str, Any]]]


def _create(client: OpenSearch, name: str, body: dict[str, Any]) -> None:
    if client.indices.exists(index=name):
        meta = client.indices.get_mapping(index=name)[name]["mappings"].get("_meta") or {}
        if meta.get("created_by") != MARK["created_by"]:
            raise SystemExit(f"{name}: exists and was not made by this probe; not deleting it")
        client.indices.delete(index=name)
    mappings = {**body["mappings"], "_meta": {**body["mappings"].get("_meta", {}), **MARK}}
    client.indices.create(index=name, body={**body, "mappings": mappings})


def _load(client: OpenSearch, name: str, actions: Iterator[dict[str, Any]]) -> float:
    started = time.perf_counter()
    helpers.bulk(client, actions, chunk_size=2000, request_timeout=600)
    client.indices.refresh(index=name)
    client.indices.forcemerge(index=name, max_num_segments=1, request_timeout=3600)
    client.indices.refresh(index=name)
    return round(time.perf_counter() - started, 1)


def build(client: OpenSearch, size: int, data_dir: str | None) -> dict[str, float]:
    corpus = build_distinct_corpus(size, 7, data_dir)
    template = render_template(384)["template"]
    analysis = template["settings"]["analysis"]
    bulk_index = {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1"}
    text = {"type": "text", "analyzer": "rsrt_english"}
    _create(client, NESTED, {"settings": {**template["settings"], "index": {**template["settings"]["index"],
                                                                               **bulk_index}},
                             "mappings": template["mappings"]})
    _create(client, VARIANTS, {"settings": {"index": bulk_index, "analysis": analysis}, "mappings": {
        "dynamic": "strict", "properties": {"image_id": {"type": "keyword"}, **{f: text for f in VARIANT_FIELDS}}}})
    _create(client, SLOTS, {"settings": {"index": bulk_index, "analysis": analysis}, "mappings": {
        "dynamic": "strict", "properties": {f"s{n}_{f}": text for n in range(SLOT_COUNT) for f in VARIANT_FIELDS}}})

    def nested() -> Iterator[dict[str, Any]]:
        for record, _ in corpus.records(size):
            yield {"_index": NESTED, "_id": record.image_id, "_source": to_document(record)}

    def variants() -> Iterator[dict[str, Any]]:
        for record, _ in corpus.records(size):
            for n, variant in enumerate(record.variants):
                yield {"_index": VARIANTS, "_id": f"{record.image_id}#{n}",
                       "_source": {"image_id": record.image_id, **variant.to_dict()}}

    def slots() -> Iterator[dict[str, Any]]:
        for record, _ in corpus.records(size):
            yield {"_index": SLOTS, "_id": record.image_id, "_source": {
                f"s{n}_{k}": v for n, variant in enumerate(record.variants) for k, v in variant.to_dict().items()}}

    return {NESTED: _load(client, NESTED, nested()), VARIANTS: _load(client, VARIANTS, variants()),
            SLOTS: _load(client, SLOTS, slots())}


def _most_fields(text: str, names: list[str]) -> dict[str, Any]:
    return {"multi_match": {"query": text, "type": "most_fields", "fields": names}}


def _page(size: int, query: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"size": size, "_source": False, "track_total_hits": False, "query": query, **extra}


def layouts(window: int) -> dict[str, Body]:
    def nested(q: str, d: int) -> tuple[str, dict[str, Any]]:
        return NESTED, _page(d, lexical_query(q, Filters(), LexicalScope.VARIANT, inner_hits=False))

    def image(q: str, d: int) -> tuple[str, dict[str, Any]]:
        return NESTED, _page(d, lexical_query(q, Filters(), LexicalScope.IMAGE, inner_hits=False))

    def rescore(q: str, d: int) -> tuple[str, dict[str, Any]]:
        best = lexical_query(q, Filters(), LexicalScope.VARIANT, inner_hits=False)
        return NESTED, _page(d, lexical_query(q, Filters(), LexicalScope.IMAGE, inner_hits=False), rescore={
            "window_size": max(window, d), "query": {"rescore_query": best, "query_weight": 0,
                                                     "rescore_query_weight": 1}})

    def collapse(q: str, d: int) -> tuple[str, dict[str, Any]]:
        return VARIANTS, _page(d, _most_fields(q, list(VARIANT_FIELDS)), collapse={"field": "image_id"})

    def top5d(q: str, d: int) -> tuple[str, dict[str, Any]]:
        return VARIANTS, _page(SLOT_COUNT * d, _most_fields(q, list(VARIANT_FIELDS)))

    def slots(q: str, d: int) -> tuple[str, dict[str, Any]]:
        return SLOTS, _page(d, {"dis_max": {"tie_breaker": 0, "queries": [
            _most_fields(q, [f"s{n}_{f}" for f in VARIANT_FIELDS]) for n in range(SLOT_COUNT)]}})

    return {"nested": nested, "image": image, f"rescore-{window}": rescore, "collapse": collapse,
            "top5d": top5d, "slots": slots}


def _ids(response: dict[str, Any], depth: int) -> list[str]:
    first: dict[str, None] = {}
    for hit in response["hits"]["hits"]:
        first.setdefault(hit["_id"].split("#")[0], None)
    return list(first)[:depth]


def measure(client: OpenSearch, queries: list[str], depth: int, bodies: dict[str, Body]) -> dict[str, Any]:
    """p50/p95 of the node's `took` and of the wall time, overlap with the nested ids; conditions interleaved."""
    took: dict[str, list[float]] = {k: [] for k in bodies}
    wall: dict[str, list[float]] = {k: [] for k in bodies}
    top10: dict[str, list[float]] = {k: [] for k in bodies}
    whole: dict[str, list[float]] = {k: [] for k in bodies}
    for q in queries:
        reference: list[str] | None = None
        for name, body in bodies.items():
            index, request = body(q, depth)
            started = time.perf_counter()
            response = client.search(index=index, body=request)
            wall[name].append((time.perf_counter() - started) * 1000)
            took[name].append(float(response["took"]))
            got = _ids(response, depth)
            reference = got if reference is None else reference
            top10[name].append(len(set(reference[:10]) & set(got[:10])) / max(1, len(reference[:10])))
            whole[name].append(len(set(reference) & set(got)) / max(1, len(reference)))
    return {name: {"took_p50_ms": statistics.median(took[name]),
                   "wall_p50_ms": round(statistics.median(wall[name]), 2),
                   "wall_p95_ms": round(float(np.percentile(wall[name], 95)), 2),
                   "overlap_at_10": round(statistics.fmean(top10[name]), 3),
                   "overlap_at_depth": round(statistics.fmean(whole[name]), 3)} for name in bodies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--build", action="store_true", help="(re)build the three probe-* indices")
    parser.add_argument("--out", default="lexical-layouts.json")
    args = parser.parse_args()
    data_dir = os.environ.get("RSRT_DATA_DIR")
    client = OpenSearch(args.url, timeout=600)
    results: dict[str, Any] = {"size": args.size, "node": client.info()["version"]["number"],
                               "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    if args.build:
        results["load_and_merge_seconds"] = build(client, args.size, data_dir)
    texts = list(dict.fromkeys(t for _, _, t in load_benchmark("rsitmd", "test", data_dir).captions()))
    queries = [texts[i] for i in np.random.default_rng(8).permutation(len(texts))[:args.queries]]
    bodies = layouts(args.window)
    measure(client, queries[:20], 100, bodies)  # warm-up
    for depth in (20, 100):
        results[f"depth_{depth}"] = measure(client, queries, depth, bodies)
        print(depth, json.dumps(results[f"depth_{depth}"], indent=1), flush=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
