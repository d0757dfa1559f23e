"""The capacity page (docs/performance/capacity.md): the model's report as Markdown, numbers with units."""

from __future__ import annotations

from .capacity import (
    ENCODING_LABELS,
    GB,
    GIB,
    MAX_HEAP_GIB,
    MILLION,
    TB,
    CapacityPlan,
    CapacityReport,
    ClusterAssumptions,
    Fleet,
)


# the page ------------------------------------------------------------------------------------------------
def _sig(x: float, digits: int = 3) -> str:
    """At most `digits` significant figures, thousands separated: no false precision."""
    if x == 0:
        return "0"
    value = float(f"{x:.{digits}g}")
    if abs(value) >= 10 ** digits or (value == int(value) and abs(value) >= 100):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def fmt_bytes(n: float) -> str:
    """Decimal units (1 GB = 10⁹ bytes), as disks are sold."""
    for unit, size in (("TB", TB), ("GB", GB), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{_sig(n / size)} {unit}"
    return f"{_sig(n)} B"


def fmt_gib(n: float) -> str:
    """Binary units for memory (1 GiB = 2³⁰ bytes), as RAM is sold."""
    if n >= 1024 * GIB:
        return f"{_sig(n / (1024 * GIB))} TiB"
    return f"{_sig(n / GIB)} GiB"


def fmt_hours(h: float) -> str:
    if h >= 48:
        return f"{_sig(h, 2)} h ≈ {_sig(h / 24, 2)} days"
    return f"{_sig(h, 2)} h"


def _rate_text(rate: float) -> str:
    return f"{_sig(rate)}/s"


def _inputs_table(report: CapacityReport) -> list[str]:
    m, c, f = report.plan.measured, report.plan.cluster, report.plan.fleet
    rows = []
    for e in m.encodings.values():
        label = ENCODING_LABELS[e.name]
        rows.append((f"{label}: disk per image (primary store, merged)", fmt_bytes(e.disk_bytes_per_image),
                     e.source))
        parts = " + ".join(f"{fmt_bytes(e.file_bytes_per_image[x])} .{x}" for x in e.hot_files)
        rows.append((f"{label}: hot bytes per image ({' + '.join('.' + x for x in e.hot_files)})",
                     f"{parts} = {fmt_bytes(e.hot_bytes_per_image)}", e.source))
        others = {x: v for x, v in e.file_bytes_per_image.items() if x not in e.hot_files and x in ("vec", "veq")}
        for x, v in others.items():
            rows.append((f"{label}: .{x} per image (on disk, not hot)", fmt_bytes(v), e.source))
        rows.append((f"{label}: heap per image",
                     fmt_bytes(e.heap_bytes_per_image) if e.heap_bytes_per_image is not None
                     else "not measured: counted as 0", e.source if e.heap_bytes_per_image is not None else "-"))
        if e.write_variants_per_second is not None:
            rows.append((f"{label}: write-only rate",
                         f"{_sig(e.write_variants_per_second)} variants/s on {_sig(m.writer.cores)} cores",
                         e.source))
    rows += [
        ("thumbnails per image (when on)", fmt_bytes(m.thumbnail_bytes_per_image), m.thumbnail_source),
        ("variants per image × dimension", f"{m.variants_per_image} × {m.dimension}", "the index contract"),
        ("encoder rate", f"{_sig(m.encoder.variants_per_second)} variants/s on {_sig(m.encoder.cores)} cores "
         f"= {_sig(m.encoder.per_core)} per core (linear scaling assumed)", m.encoder.source),
        ("write-only rate (node indexing)", f"{_sig(m.writer.variants_per_second)} variants/s on "
         f"{_sig(m.writer.cores)} cores = {_sig(m.writer.per_core)} per core (linear scaling assumed)",
         m.writer.source),
        ("VLM calls per image", _sig(m.vlm_calls_per_image), "rsrt's prompt: one JSON answer holds all variants"
         if m.vlm_calls_per_image == 1 else "input"),
        ("VLM answers per second per GPU", ", ".join(_sig(r) for r in report.plan.vlm_rates),
         "choices, not measured here: they depend on the model, the GPU and the image size"),
        ("max shard size", f"{_sig(report.plan.shard_gb)} GB",
         m.shard_source if c.shard_gb is None else "chosen (--shard-gb)"),
        ("replicas R", str(c.replicas), "choice"),
        ("node RAM", f"{_sig(c.node_ram_gib)} GiB", "choice"),
        ("heap", f"min(50 % RAM, {_sig(MAX_HEAP_GIB)} GiB) = {_sig(c.heap_gib)} GiB", "OpenSearch's usual advice"),
        ("page cache usable for vectors", f"{_sig(c.page_cache_share * 100)} % of RAM outside the heap = "
         f"{fmt_gib(c.cache_bytes_per_node)} per node", "assumption (the OS, the JVM's off-heap use and the "
         "other files need the rest)"),
        ("heap usable for per-image structures", f"{_sig(c.heap_share_for_index * 100)} % of the heap",
         "assumption (the rest: queries, indexing buffers, caches)"),
        ("disk per node, usable", f"{_sig(c.disk_per_node_tb)} TB × {_sig(c.disk_watermark * 100)} % = "
         f"{fmt_bytes(c.usable_disk_bytes_per_node)}", "choice; the watermark leaves room for merges"),
        ("replicas serve queries", "yes" if c.replicas_serve_queries else "no",
         "so every copy must be hot" if c.replicas_serve_queries else "so only primaries must be hot"),
        ("ingest fleet", f"{f.gpus} GPUs, {f.encoder_cores} encoder cores, {f.node_cores} cores per data node",
         "choice"),
    ]
    return (["| input | value | source |", "|---|---|---|"]
            + [f"| {a} | {b} | {s} |" for a, b, s in rows])


def _sizing_table(report: CapacityReport, thumbnails: bool) -> list[str]:
    copies = report.plan.cluster.copies
    lines = [f"| images | encoding | primary store | disk, {copies} copies | hot memory | "
             "nodes by memory / heap / disk / copies | **data nodes** (bound) | primary shards (each) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report.sizing:
        if r.thumbnails != thumbnails:
            continue
        lines.append(f"| {_count_label(r.images)} | {ENCODING_LABELS[r.encoding]} | {fmt_bytes(r.primary_bytes)} | "
                     f"{fmt_bytes(r.total_disk_bytes)} | {fmt_gib(r.hot_bytes)} | "
                     f"{r.nodes_by_memory} / {r.nodes_by_heap} / {r.nodes_by_disk} / {r.nodes_for_copies} | "
                     f"**{r.nodes}** ({r.bound}) | {r.primary_shards} ({fmt_bytes(r.shard_bytes)}) |")
    return lines


def _ingest_table(report: CapacityReport) -> list[str]:
    m, cost, copies = report.plan.measured, report.ingest, report.plan.cluster.copies
    lines = ["| stage | per million images | how |", "|---|---|---|"]
    for rate, hours in cost.vlm_gpu_hours:
        lines.append(f"| VLM captioning at {_rate_text(rate)} per GPU | {_sig(hours, 2)} GPU-hours | "
                     f"10⁶ × {_sig(m.vlm_calls_per_image)} call(s) ÷ {_sig(rate)}/s ÷ 3600 |")
    lines.append(f"| encoding ({m.variants_per_image} variants per image) | {_sig(cost.encode_core_hours, 2)} "
                 f"CPU core-hours | {m.variants_per_image} × 10⁶ ÷ {_sig(m.encoder.per_core)} per core-second ÷ 3600 |")
    for name, hours in cost.write_core_hours.items():
        lines.append(f"| writing, {ENCODING_LABELS[name]} | {_sig(hours, 2)} node core-hours | "
                     f"{m.variants_per_image} × 10⁶ × {copies} copies ÷ {_sig(m.write_rate(name))} per "
                     "core-second ÷ 3600 |")
    return lines


def _wall_table(report: CapacityReport) -> list[str]:
    rates = report.plan.vlm_rates
    lines = ["| images | encoding | data nodes | " + " | ".join(f"VLM {_rate_text(r)}" for r in rates) + " |",
             "|---|---|---|" + "---|" * len(rates)]
    for w in report.wall:
        cells = " | ".join(f"{fmt_hours(h)} ({stage})" for _, h, stage in w.by_rate)
        lines.append(f"| {_count_label(w.images)} | {ENCODING_LABELS[w.encoding]} | {w.data_nodes} | {cells} |")
    return lines


def _command(plan: CapacityPlan, measured_name: str, out_name: str) -> str:
    c = plan.cluster
    parts = [f"rsrt bench capacity --measured {measured_name} --out {out_name}",
             "--images " + ",".join(_count_flag(n) for n in plan.images), f"--replicas {c.replicas}",
             f"--node-ram-gb {_sig(c.node_ram_gib)}"]
    if c.shard_gb is not None:
        parts.append(f"--shard-gb {_sig(c.shard_gb)}")
    parts.append("--vlm-images-per-second " + ",".join(_sig(r) for r in plan.vlm_rates))
    defaults = ClusterAssumptions()
    if c.disk_per_node_tb != defaults.disk_per_node_tb:
        parts.append(f"--disk-per-node-tb {_sig(c.disk_per_node_tb)}")
    if c.page_cache_share != defaults.page_cache_share:
        parts.append(f"--page-cache-share {_sig(c.page_cache_share)}")
    if not c.replicas_serve_queries:
        parts.append("--replicas-idle")
    f, fleet_defaults = plan.fleet, Fleet()
    for flag, value, default in (("--gpus", f.gpus, fleet_defaults.gpus),
                                 ("--encoder-cores", f.encoder_cores, fleet_defaults.encoder_cores),
                                 ("--node-cores", f.node_cores, fleet_defaults.node_cores)):
        if value != default:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _count_label(n: int) -> str:
    """1M, 10M, 250k: how image counts are spoken of (exact below 1,000 or when not round)."""
    for suffix, size in (("M", MILLION), ("k", 1000)):
        if n >= size and n % (size // 100) == 0:
            return f"{_sig(n / size)}{suffix}"
    return f"{n:,}"


def _count_flag(n: int) -> str:
    for suffix, size in (("M", MILLION), ("k", 1000)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def render_markdown(report: CapacityReport, measured_name: str = "FILE.json",
                    out_name: str = "docs/performance/capacity.md") -> str:
    """The generated page: inputs with sources, sizing, ingest cost, wall time and what would change it."""
    plan, m, c = report.plan, report.plan.measured, report.plan.cluster
    serving = f"× {c.copies} copies" if c.replicas_serve_queries else "primaries only (replicas idle)"
    out = ["# Capacity: what 1M to 100M images need", "",
           f"Generated by `{_command(plan, measured_name, out_name)}`: do not edit by hand, change the inputs "
           "and run it again. The model is `search/benchmarking/capacity.py` (`capacity`).", ""]
    if m.example:
        out += ["> **EXAMPLE NUMBERS.** The input file says `\"example\": true`: its figures are made up "
                "(plausible, near the 100k measurements in [README.md](README.md)), not measured. Do not size "
                "a cluster from this page.", ""]
    if m.note:
        out += [f"Input note: {m.note}", ""]
    out += ["Units: disk in decimal units (1 GB = 10⁹ bytes, 1 KB = 1,000 bytes), memory in binary units "
            "(1 GiB = 2³⁰ bytes); at most three significant figures, two for times.", "",
            "## Inputs", "", *_inputs_table(report), "",
            "## Cluster size", "",
            f"Thumbnails off. R = {c.replicas} replica(s), {_sig(c.node_ram_gib)} GiB data nodes, "
            f"at most {_sig(plan.shard_gb)} GB per shard.", "",
            *_sizing_table(report, thumbnails=False), "",
            "How each column is computed:", "",
            "- **primary store** = images × disk per image (the merged index: vectors, their graph, text, "
            "doc values, stored fields).",
            f"- **disk** = primary store × (1 + R) = × {c.copies}.",
            "- **hot memory** = images × hot bytes per image, "
            f"{serving}: the files an HNSW query reads must be in the page cache for full speed "
            "(fp32: .vec + .vex; sq: the quantised .veq + .vex, the float32 .vec stays on disk for merges "
            "and rescoring). Lucene keeps them off the JVM heap.",
            f"- **nodes by memory** = ⌈hot memory ÷ {fmt_gib(c.cache_bytes_per_node)} page cache per node⌉; "
            f"**by heap** = ⌈images × heap per image × copies ÷ ({_sig(c.heap_share_for_index * 100)} % of "
            f"{_sig(c.heap_gib)} GiB)⌉ (0 while heap per image is not measured); **by disk** = "
            f"⌈disk ÷ {fmt_bytes(c.usable_disk_bytes_per_node)} usable per node⌉; **copies** = 1 + R "
            "(OpenSearch never puts two copies of a shard on one node). Data nodes = the largest; the bound "
            "names it.",
            f"- **primary shards** = ⌈primary store ÷ {_sig(plan.shard_gb)} GB⌉, then raised to the fewest "
            "shards whose copies (shards × (1 + R)) divide evenly by the node count, so every node holds "
            "the same number of equal shards and so the same disk and hot memory.",
            "- Node count is for fitting the data at full query speed; query throughput (QPS), which adds "
            "replicas or nodes, is not modelled.", ""]
    if m.thumbnail_bytes_per_image:
        out += ["### With thumbnails", "",
                f"The ingest default (`--thumbnail-size 256`) stores a JPEG of about "
                f"{fmt_bytes(m.thumbnail_bytes_per_image)} in each document (stored fields: disk, not hot "
                "memory). The same table with them:", "",
                *_sizing_table(report, thumbnails=True), ""]
    f = plan.fleet
    out += ["## Ingest cost", "",
            "Per million images, each stage on its own:", "", *_ingest_table(report), "",
            f"- VLM: the rate is VLM answers per second per GPU; {_sig(m.vlm_calls_per_image)} answer(s) per "
            "image (rsrt's prompt asks for every variant in one JSON answer; a prompt per variant would "
            f"multiply it by {m.variants_per_image}).",
            "- Encoding and writing: the measured rate ÷ its cores = a per-core rate, assumed to scale "
            "linearly with cores (it does not quite: memory bandwidth, hyper-threads, turbo).",
            f"- Writing counts every copy: with OpenSearch's default document replication each of the "
            f"{c.copies} copies indexes the document (segment replication would save the replicas' share). "
            "The force-merge after the load is not counted.", "",
            "### Wall time on one fleet", "",
            f"{f.gpus} GPUs, {f.encoder_cores} encoder cores, and the data nodes of the sizing table with "
            f"{f.node_cores} cores each, all given to indexing. The three stages run at once (rsrt's pipeline "
            "overlaps them), so the wall time is the slowest stage's: total work ÷ its share of the fleet. "
            "The stage in brackets is the bottleneck.", "",
            *_wall_table(report), "",
            "## What would change it", "",
            "- **The measurements are at 100k images of a synthetic corpus.** Disk per image holds for real "
            "text only as far as the text's length does; HNSW graph size depends on m (16 here), not on N.",
            "- **Quantisation costs recall.** sq's smaller hot memory is only a saving if its recall is "
            "acceptable; the recall at each encoding comes from the benchmarks, not from this page.",
            "- **Replicas that do not serve queries** (`--replicas-idle`) need no page cache: memory-bound "
            "clusters then need about 1 ÷ (1 + R) of the nodes.",
            "- **Bigger nodes.** Above 62 GiB RAM the heap stays at 31 GiB, so all extra RAM is page cache: "
            "a memory-bound cluster shrinks faster than linearly with node RAM.",
            "- **The page-cache share** (an assumption) scales memory-bound node counts inversely.",
            "- **Disk-based vector search** (k-NN `on_disk` mode with binary quantisation and rescoring, "
            "faiss engine) is not modelled: it would trade hot memory for reads from disk per query.",
            "- **Heap per image** counts as 0 until it is measured; nested documents (6 Lucene documents per "
            "image) and per-segment structures are the likely sources if it is not small.",
            _bottleneck_note(report), ""]
    return "\n".join(out)


def _bottleneck_note(report: CapacityReport) -> str:
    """Which stage sets the wall time, as the numbers say (not as expected)."""
    stages = sorted({stage for w in report.wall for _, _, stage in w.by_rate})
    if stages == ["VLM"]:
        return ("- **The VLM sets every wall time above**, at each GPU rate: more GPUs (or a faster VLM), not a "
                "bigger cluster, shorten the ingest. Captions are cached (the ledger), so a re-index costs "
                "only encoding and writing.")
    return (f"- **The bottleneck depends on the case** ({', '.join(stages)} in the wall-time table): "
            "balance the fleet by giving the slowest stage more GPUs or cores.")
