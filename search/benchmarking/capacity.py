"""The capacity model behind `rsrt bench capacity`: measured per-image costs → cluster size and ingest cost.

Why a model and not a measurement: nobody here can load 100M images, but the per-image costs that
decide a cluster's size (bytes on disk, bytes that must sit in the page cache for HNSW, CPU per
variant written or encoded) were measured at 100k. Scaling them is arithmetic; this module keeps the
arithmetic in one pure function (`capacity`: `CapacityPlan` → `CapacityReport`) and writes every
assumption into the generated page (`render_markdown`), so a reader can redo it or disagree with it.

The measured inputs are a JSON file (`load_measured`; the format is `docs/performance/
capacity-inputs.example.json`). `encoding_from_stats` turns an index's segment statistics into one
`encodings` entry of that file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FORMAT = "rsrt-capacity-inputs/1"
ENCODINGS = ("fp32", "sq")
ENCODING_LABELS = {"fp32": "fp32", "sq": "sq (lucene, 7-bit)"}
# The files an HNSW search reads for every query: the vectors it scores and the graph it walks. With
# scalar quantisation Lucene scores the quantised copy (.veq); the float32 .vec stays on disk, read by
# merges (re-quantisation) and rescoring only.
HOT_FILES: dict[str, tuple[str, ...]] = {"fp32": ("vec", "vex"), "sq": ("veq", "vex")}
DEFAULT_IMAGES = (1_000_000, 10_000_000, 100_000_000)
DEFAULT_VLM_RATES = (0.5, 1.0, 2.0, 5.0)
MILLION = 1_000_000
GIB = 2**30
GB = 10**9
TB = 10**12
MAX_HEAP_GIB = 31.0  # below the compressed-oops limit (~32 GiB): the usual OpenSearch advice


# inputs ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodingCost:
    """What one image costs in an index whose vectors use this encoding (measured after a force-merge)."""

    name: str  # one of ENCODINGS
    disk_bytes_per_image: float  # primary store
    file_bytes_per_image: Mapping[str, float]  # per Lucene file extension: at least HOT_FILES[name]
    heap_bytes_per_image: float | None = None  # None: not measured (counted as 0, said so)
    write_variants_per_second: float | None = None  # None: the shared writer rate
    source: str = "not stated"

    @property
    def hot_files(self) -> tuple[str, ...]:
        return HOT_FILES[self.name]

    @property
    def hot_bytes_per_image(self) -> float:
        return float(sum(self.file_bytes_per_image[ext] for ext in self.hot_files))


@dataclass(frozen=True)
class Rate:
    """A measured throughput: variants per second on `cores` cores."""

    variants_per_second: float
    cores: float
    source: str = "not stated"

    @property
    def per_core(self) -> float:
        """Assumes linear scaling with cores: the model's reading of a rate measured on a few cores."""
        return self.variants_per_second / self.cores


@dataclass(frozen=True)
class MeasuredCosts:
    """The measured input file, checked (`load_measured`)."""

    encodings: Mapping[str, EncodingCost]
    encoder: Rate
    writer: Rate
    recommended_shard_gb: float
    shard_source: str = "not stated"
    thumbnail_bytes_per_image: float = 0.0
    thumbnail_source: str = "not stated"
    variants_per_image: int = 5
    dimension: int = 384
    vlm_calls_per_image: float = 1.0
    example: bool = False
    note: str = ""

    def write_rate(self, encoding: str) -> float:
        """Variants/s per core the nodes index at for this encoding."""
        own = self.encodings[encoding].write_variants_per_second
        return (own if own is not None else self.writer.variants_per_second) / self.writer.cores


@dataclass(frozen=True)
class ClusterAssumptions:
    """The cluster the sizing is for: everything here is a choice or a rule of thumb, not a measurement."""

    replicas: int = 1
    node_ram_gib: float = 64.0
    page_cache_share: float = 0.8  # of the RAM outside the heap that vectors may use: an assumption
    heap_share_for_index: float = 0.5  # of the heap that per-image heap may use (the rest: queries, buffers)
    shard_gb: float | None = None  # None: the measured recommendation
    disk_per_node_tb: float = 2.0
    disk_watermark: float = 0.85  # OpenSearch's low disk watermark: above it no new shards land on the node
    replicas_serve_queries: bool = True

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ConfigError(f"replicas: {self.replicas}: must be 0 or more")
        for name in ("node_ram_gib", "disk_per_node_tb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: {getattr(self, name)}: must be positive")
        if self.shard_gb is not None and self.shard_gb <= 0:
            raise ConfigError(f"shard_gb: {self.shard_gb}: must be positive")
        for name in ("page_cache_share", "heap_share_for_index", "disk_watermark"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name}: {getattr(self, name)}: must be in (0, 1]")

    @property
    def heap_gib(self) -> float:
        return min(0.5 * self.node_ram_gib, MAX_HEAP_GIB)

    @property
    def cache_bytes_per_node(self) -> float:
        return self.page_cache_share * (self.node_ram_gib - self.heap_gib) * GIB

    @property
    def usable_disk_bytes_per_node(self) -> float:
        return self.disk_watermark * self.disk_per_node_tb * TB

    @property
    def copies(self) -> int:
        return 1 + self.replicas


@dataclass(frozen=True)
class Fleet:
    """What runs an ingest, for its wall time: the stages run at once (rsrt's pipeline), the slowest sets it."""

    gpus: int = 8
    encoder_cores: int = 64
    node_cores: int = 8  # per data node, all given to indexing during the load

    def __post_init__(self) -> None:
        for name in ("gpus", "encoder_cores", "node_cores"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: {getattr(self, name)}: must be positive")


@dataclass(frozen=True)
class CapacityPlan:
    """Everything `capacity` needs: the measured costs and the choices made around them."""

    measured: MeasuredCosts
    cluster: ClusterAssumptions = field(default_factory=ClusterAssumptions)
    fleet: Fleet = field(default_factory=Fleet)
    images: tuple[int, ...] = DEFAULT_IMAGES
    vlm_rates: tuple[float, ...] = DEFAULT_VLM_RATES  # VLM answers per second per GPU

    def __post_init__(self) -> None:
        if not self.images or any(n <= 0 for n in self.images):
            raise ConfigError(f"images: {self.images}: expected positive counts")
        if not self.vlm_rates or any(r <= 0 for r in self.vlm_rates):
            raise ConfigError(f"vlm_rates: {self.vlm_rates}: expected positive rates")

    @property
    def shard_gb(self) -> float:
        return self.cluster.shard_gb if self.cluster.shard_gb is not None else self.measured.recommended_shard_gb


# outputs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizingRow:
    """One cluster size: N images in one encoding, thumbnails on or off."""

    images: int
    encoding: str
    thumbnails: bool
    primary_bytes: float
    total_disk_bytes: float
    hot_bytes: float  # over the whole cluster
    heap_bytes: float  # over the whole cluster
    nodes_by_memory: int
    nodes_by_heap: int
    nodes_by_disk: int
    nodes_for_copies: int
    nodes: int
    primary_shards: int
    shards_by_size: int  # before the even-spread rounding

    @property
    def bound(self) -> str:
        """Which limit set the node count (the first, in this order, on a tie)."""
        for name, value in (("memory", self.nodes_by_memory), ("heap", self.nodes_by_heap),
                            ("disk", self.nodes_by_disk), ("copies", self.nodes_for_copies)):
            if value == self.nodes:
                return name
        return "?"

    @property
    def shard_bytes(self) -> float:
        return self.primary_bytes / self.primary_shards


@dataclass(frozen=True)
class IngestCost:
    """What one million images cost to ingest, per stage."""

    vlm_gpu_hours: tuple[tuple[float, float], ...]  # (VLM answers/s per GPU, GPU-hours)
    encode_core_hours: float
    write_core_hours: Mapping[str, float]  # per encoding, all copies


@dataclass(frozen=True)
class WallRow:
    """Wall time of one whole ingest on the fleet, per VLM rate: (hours, the stage that set it)."""

    images: int
    encoding: str
    data_nodes: int
    by_rate: tuple[tuple[float, float, str], ...]  # (rate, hours, bottleneck)


@dataclass(frozen=True)
class CapacityReport:
    plan: CapacityPlan
    sizing: tuple[SizingRow, ...]
    ingest: IngestCost
    wall: tuple[WallRow, ...]

    def row(self, images: int, encoding: str, thumbnails: bool = False) -> SizingRow:
        return next(r for r in self.sizing
                    if r.images == images and r.encoding == encoding and r.thumbnails == thumbnails)


# the model ---------------------------------------------------------------------------------------------
def even_shards(by_size: int, copies: int, nodes: int) -> int:
    """The fewest primaries ≥ `by_size` whose copies (primaries × copies) divide evenly over `nodes`.

    Every node then holds the same number of equal shards, so the same disk and hot memory: the
    per-node limits the node count came from hold on each node, not just on average.
    """
    shards = max(1, by_size)
    while (shards * copies) % nodes:
        shards += 1
    return shards


def size_cluster(plan: CapacityPlan, images: int, encoding: str, thumbnails: bool) -> SizingRow:
    """Disk, hot memory, nodes and shards for `images` images (see the rules in the generated page)."""
    cost = plan.measured.encodings[encoding]
    cluster = plan.cluster
    per_image = cost.disk_bytes_per_image + (plan.measured.thumbnail_bytes_per_image if thumbnails else 0.0)
    primary = images * per_image
    serving = cluster.copies if cluster.replicas_serve_queries else 1
    hot = images * cost.hot_bytes_per_image * serving
    heap = images * (cost.heap_bytes_per_image or 0.0) * serving
    by_memory = math.ceil(hot / cluster.cache_bytes_per_node)
    by_heap = math.ceil(heap / (cluster.heap_share_for_index * cluster.heap_gib * GIB))
    by_disk = math.ceil(primary * cluster.copies / cluster.usable_disk_bytes_per_node)
    nodes = max(by_memory, by_heap, by_disk, cluster.copies)
    by_size = math.ceil(primary / (plan.shard_gb * GB))
    return SizingRow(images=images, encoding=encoding, thumbnails=thumbnails, primary_bytes=primary,
                     total_disk_bytes=primary * cluster.copies, hot_bytes=hot, heap_bytes=heap,
                     nodes_by_memory=by_memory, nodes_by_heap=by_heap, nodes_by_disk=by_disk,
                     nodes_for_copies=cluster.copies, nodes=nodes,
                     primary_shards=even_shards(by_size, cluster.copies, nodes), shards_by_size=by_size)


def ingest_cost(plan: CapacityPlan) -> IngestCost:
    """GPU-hours and core-hours per million images, stage by stage."""
    m = plan.measured
    variants = MILLION * m.variants_per_image
    return IngestCost(
        vlm_gpu_hours=tuple((rate, MILLION * m.vlm_calls_per_image / rate / 3600) for rate in plan.vlm_rates),
        encode_core_hours=variants / m.encoder.per_core / 3600,
        # document replication: every copy indexes the document again
        write_core_hours={name: variants * plan.cluster.copies / m.write_rate(name) / 3600
                          for name in m.encodings})


def wall_time(plan: CapacityPlan, ingest: IngestCost, row: SizingRow) -> WallRow:
    """Hours for the whole load on the fleet: the slowest of the three concurrent stages."""
    millions = row.images / MILLION
    encode = ingest.encode_core_hours * millions / plan.fleet.encoder_cores
    write = ingest.write_core_hours[row.encoding] * millions / (row.nodes * plan.fleet.node_cores)
    cells = []
    for rate, gpu_hours in ingest.vlm_gpu_hours:
        stages = {"VLM": gpu_hours * millions / plan.fleet.gpus, "encoding": encode, "writing": write}
        slowest = max(stages, key=lambda s: stages[s])
        cells.append((rate, stages[slowest], slowest))
    return WallRow(images=row.images, encoding=row.encoding, data_nodes=row.nodes, by_rate=tuple(cells))


def capacity(plan: CapacityPlan) -> CapacityReport:
    """The whole model: sizing per N × encoding (thumbnails off, then on), ingest cost, wall time."""
    encodings = [e for e in ENCODINGS if e in plan.measured.encodings]
    sizing = tuple(size_cluster(plan, n, e, thumbs) for thumbs in (False, True) for n in plan.images
                   for e in encodings)
    ingest = ingest_cost(plan)
    wall = tuple(wall_time(plan, ingest, r) for r in sizing if not r.thumbnails)
    return CapacityReport(plan=plan, sizing=sizing, ingest=ingest, wall=wall)


# the input file ----------------------------------------------------------------------------------------
class _Fields:
    """Reads one JSON object, naming the field (`encodings.sq.disk_bytes_per_image`) in every refusal."""

    def __init__(self, data: Any, where: str, file: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: {where or 'the top level'}: expected a JSON object")
        self.data, self.where, self.file = data, where, file

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self._name(key)}: {problem}")

    def number(self, key: str, default: float | None = None, *, required: bool = True,
               positive: bool = True) -> float | None:
        value = self.data.get(key)
        if value is None:
            if required and default is None:
                raise self._fail(key, "missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._fail(key, f"{value!r}: expected a number")
        if value < 0 or (positive and value == 0):
            raise self._fail(key, f"{value!r}: expected a {'positive' if positive else 'non-negative'} number")
        return float(value)

    def text(self, key: str, default: str = "not stated") -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, f"{value!r}: expected a string")
        return value

    def child(self, key: str) -> _Fields:
        if key not in self.data:
            raise self._fail(key, "missing")
        return _Fields(self.data[key], self._name(key), self.file)


def _encoding(fields: _Fields, name: str) -> EncodingCost:
    files = fields.child("file_bytes_per_image")
    for ext in HOT_FILES[name]:
        files.number(ext)
    sizes = {ext: files.number(ext, positive=False) for ext in files.data}
    return EncodingCost(name=name, disk_bytes_per_image=fields.number("disk_bytes_per_image"),
                        file_bytes_per_image=sizes,
                        heap_bytes_per_image=fields.number("heap_bytes_per_image", required=False, positive=False),
                        write_variants_per_second=fields.number("write_variants_per_second", required=False),
                        source=fields.text("source"))


def _rate(fields: _Fields) -> Rate:
    return Rate(variants_per_second=fields.number("variants_per_second"), cores=fields.number("cores"),
                source=fields.text("source"))


def parse_measured(data: Any, file: str = "capacity inputs") -> MeasuredCosts:
    """The checked input file; a wrong or missing field is one ConfigError naming it."""
    top = _Fields(data, "", file)
    declared = top.data.get("format", FORMAT)
    if declared != FORMAT:
        raise ConfigError(f"{file}: format: {declared!r}: expected {FORMAT!r}")
    encodings = top.child("encodings")
    unknown = sorted(set(encodings.data) - set(ENCODINGS))
    if unknown:
        raise ConfigError(f"{file}: encodings.{unknown[0]}: unknown encoding (expected {', '.join(ENCODINGS)})")
    if "fp32" not in encodings.data:
        raise ConfigError(f"{file}: encodings.fp32: missing")
    example = top.data.get("example", False)
    if not isinstance(example, bool):
        raise ConfigError(f"{file}: example: {example!r}: expected true or false")
    variants = top.number("variants_per_image", 5)
    if variants != int(variants):
        raise ConfigError(f"{file}: variants_per_image: {variants!r}: expected a whole number")
    # in the file's reading order, so the first problem named is the first one in the file
    costs = {name: _encoding(encodings.child(name), name) for name in ENCODINGS if name in encodings.data}
    encoder, writer = _rate(top.child("encoder")), _rate(top.child("writer"))
    thumbnails = top.child("thumbnails") if "thumbnails" in top.data else None
    shard = top.child("shards")
    return MeasuredCosts(
        encodings=costs, encoder=encoder, writer=writer,
        recommended_shard_gb=shard.number("recommended_shard_gb"), shard_source=shard.text("source"),
        thumbnail_bytes_per_image=thumbnails.number("bytes_per_image", positive=False) if thumbnails else 0.0,
        thumbnail_source=thumbnails.text("source") if thumbnails else "no thumbnails figure given",
        variants_per_image=int(variants), dimension=int(top.number("dimension", 384)),
        vlm_calls_per_image=top.number("vlm_calls_per_image", 1.0), example=example, note=top.text("note", ""))


def load_measured(path: Path) -> MeasuredCosts:
    """`parse_measured` on a file; an unreadable file or bad JSON is a ConfigError too."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    return parse_measured(data, str(path))


def encoding_from_stats(stats: Mapping[str, Any], images: int, store_bytes: int | None = None,
                        source: str = "") -> dict[str, Any]:
    """One `encodings` entry of the input file from `indices.stats(metric="segments,store",
    include_segment_file_sizes=true)` of a force-merged index holding `images` images."""
    primaries = stats["_all"]["primaries"]
    sizes = primaries["segments"].get("file_sizes", {})
    if store_bytes is None:
        store_bytes = int(primaries["store"]["size_in_bytes"])
    return {"disk_bytes_per_image": round(store_bytes / images, 1),
            "file_bytes_per_image": {ext: round(int(v["size_in_bytes"]) / images, 1)
                                     for ext, v in sorted(sizes.items())},
            "heap_bytes_per_image": None, "source": source or f"index stats at {images:,} images"}


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
