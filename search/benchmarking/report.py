"""The performance report: Markdown summary and a latency-vs-size plot from results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {"dense": 10.0, "hybrid": 15.0}


def _mb(n: float | int | None) -> str:
    return f"{n / 2**20:,.0f} MB" if n else "-"


def _query_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| mode | clients | filter | p50 ms | p95 ms | p99 ms | QPS | engine took p50 | e2e p50 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e2e = r.get("e2e_p50_ms")
        lines.append(f"| {r['mode']} | {r['clients']} | {'bbox+datetime' if r['filtered'] else '-'} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['qps']:.1f} | "
                     f"{r['engine_took_p50_ms']:.1f} | {f'{e2e:.1f}' if e2e is not None else '-'} |")
    return lines


def summary_markdown(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    out = ["# rsrt performance report", "",
           f"Measured {data.get('started', '?')} on {machine.get('cpus', '?')} CPUs ({machine.get('platform', '')}), "
           f"OpenSearch {data.get('node', '?')}, encoder all-MiniLM-L6-v2. Produced by `rsrt bench all`; "
           "every number below is in `results.json` beside this file.", ""]
    pool = data.get("pool", {})
    if pool:
        out += [f"Scale corpus: {pool.get('distinct_variants')} distinct variant texts "
                f"(mean {pool.get('mean_words')} words) recombined from RSITMD + UCM human captions; five per image."
                + (f" Encoding them took {pool['encode_seconds']} s ({pool.get('texts_per_second')} texts/s)."
                   if pool.get("encode_seconds") else ""), ""]
    if data.get("encoders"):
        out += ["## Encoder backends", "",
                "| backend | short texts/s | long texts/s | long, other batch sizes | speed-up (long) | "
                "RSITMD loo mR (exact) | ΔmR % | min cos vs torch |", "|---|---|---|---|---|---|---|---|"]
        for r in data["encoders"]:
            sweep = ", ".join(f"{v} at {k}" for k, v in r.get("long_texts_per_s_by_batch", {}).items()) or "-"
            out.append(f"| {r['backend']} | {r['short_texts_per_s']} | {r['long_texts_per_s']} "
                       f"(batch {r.get('batch_size', '?')}) | {sweep} | "
                       f"{r.get('speedup_long', '-')}× | {r.get('rsitmd_loo_mr', '-')} | "
                       f"{r.get('mr_relative_change_pct', '-')} | {r.get('min_cosine_vs_first', '-')} |")
        out.append("")
    for size, entry in data.get("sizes", {}).items():
        out += [f"## {int(size):,} images", ""]
        corpus = entry.get("corpus", {})
        if corpus:
            out += [f"Corpus `{corpus.get('file')}`, sha256 `{corpus.get('sha256', '')[:16]}…`.", ""]
        for key, title in (("ingest_write_only", "write only (precomputed vectors)"),
                           ("ingest_end_to_end", "end to end (real encoder)")):
            ing = entry.get(key)
            if ing and ing.get("encoder_backend"):
                title = f"{title}, backend {ing['encoder_backend']}"
            if ing:
                shares = ", ".join(f"{k} {v:.0%}" for k, v in ing["stage_share_of_wall"].items())
                out.append(f"- Ingest {title}: {ing['images']:,} images in {ing['wall_seconds']} s = "
                           f"**{ing['docs_per_second']} docs/s** ({ing['variants_per_second']} variants/s); "
                           f"stage busy time ÷ wall: {shares}; {ing['segments_after_load']} segments, "
                           f"{_mb(ing['store_bytes'])} on disk.")
                alone = ing.get("encoder_alone_variants_per_second")
                if alone:
                    out.append(f"  - The encoder alone: {alone} texts/s → the pipeline reaches "
                               f"**{100 * ing['variants_per_second'] / alone:.0f} %** of it (target ≥ 90 %).")
        merge = entry.get("force_merge")
        if merge:
            out.append(f"- Force-merge to {merge['segments']} segment: {merge['seconds']} s; "
                       f"{_mb(merge['store_bytes'])} on disk.")
        mem = entry.get("memory", {})
        if mem:
            node = mem.get("node", {})
            out.append(f"- Memory: node heap {node.get('heap_used_mb')} / {node.get('heap_max_mb')} MB, node RSS "
                       f"{node.get('rss_mb', '-')} MB (peak {node.get('rss_peak_mb', '-')} MB); Python peak "
                       f"{mem.get('python_peak_mb')} MB. Raw float32 vectors: {_mb(entry.get('raw_vector_bytes'))}.")
        out.append("")
        for phase in ("as_loaded", "merged"):
            block = entry.get(phase)
            if not block:
                continue
            out += [f"### Queries, {phase.replace('_', ' ')} ({block.get('segments')} segments)", ""]
            if block.get("query"):
                out += [*_query_table(block["query"]), ""]
            if block.get("recall"):
                out += ["kNN recall@10 vs exact (tie-aware), dense, one client:", "",
                        "| ef_search | recall@10 | min | p50 ms | p95 ms |", "|---|---|---|---|---|"]
                out += [f"| {r['ef_search']} | {r['recall_at_k']} | {r['min_recall']} | {r['p50_ms']} | "
                        f"{r['p95_ms']} |" for r in block["recall"]] + [""]
    if data.get("hnsw_sweep"):
        out += ["## HNSW build parameters", "", "| m | ef_construction | images | load s | merge s | disk | "
                "recall@10 at ef 10 / 50 / 100 | p50 ms at ef 100 |", "|---|---|---|---|---|---|---|---|"]
        for r in data["hnsw_sweep"]:
            recalls = " / ".join(str(x["recall_at_k"]) for x in r["recall"])
            out.append(f"| {r['m']} | {r['ef_construction']} | {r['images']:,} | {r['load_seconds']} | "
                       f"{r['merge_seconds']} | {_mb(r['store_bytes'])} | {recalls} | {r['recall'][-1]['p50_ms']} |")
        out.append("")
    return "\n".join(out) + "\n"


def plot_latency(data: dict[str, Any], path: Path) -> Path | None:
    """p50 latency per mode against corpus size (one client, no filter; merged phase when measured)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series: dict[str, list[tuple[int, float]]] = {}
    for size, entry in sorted(data.get("sizes", {}).items(), key=lambda kv: int(kv[0])):
        block = entry.get("merged") or entry.get("as_loaded") or {}
        for r in block.get("query", []):
            if r["clients"] == 1:
                label = f"{r['mode']}{' +filter' if r['filtered'] else ''}"
                series.setdefault(label, []).append((int(size), r["p50_ms"]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20")
    for i, (label, points) in enumerate(sorted(series.items())):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", linestyle="--" if "+filter" in label else "-", label=label,
                color=colours(i % 20))
    for mode, target in TARGETS.items():
        ax.axhline(target, color="grey", linewidth=0.6, linestyle=":")
        ax.text(ax.get_xlim()[0], target, f" target {mode} {target:g} ms", fontsize=7, va="bottom", color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images in the index")
    ax.set_ylabel("p50 latency, ms (one client)")
    ax.set_title("rsrt query latency vs corpus size")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(data: dict[str, Any], out: Path) -> Path:
    summary = out / "summary.md"
    text = summary_markdown(data)
    plot = plot_latency(data, out / "latency-vs-size.png")
    if plot:
        text += f"\n![p50 latency vs corpus size]({plot.name})\n"
    summary.write_text(text)
    return summary
