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
