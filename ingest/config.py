"""What an ingest run is told: one typed value the CLI, the demo and the benchmarks build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rsrt.search.encoder import DEFAULT_BACKEND, DEFAULT_BATCH_SIZE, DEFAULT_ENCODER
from rsrt.search.errors import ConfigError

from .assets import AssetOptions
from .thumbnails import ThumbnailOptions
from .writer import RetryPolicy

if TYPE_CHECKING:
    from .shards import Shard

EMBED_SITES = ("client", "cluster")


@dataclass(frozen=True)
class IngestConfig:
    index: str
    encoder: str = DEFAULT_ENCODER  # sentence encoder, by name (the index records it)
    encoder_backend: str = DEFAULT_BACKEND  # how the encoder runs here: torch, torch-int8, onnx, onnx-int8
    batch_size: int = 64  # images per batch through every stage
    encode_batch_size: int = DEFAULT_BATCH_SIZE  # texts per encoder forward pass
    workers: int = 2  # concurrent bulk writers
    state_dir: Path | None = None  # checkpoint, caption cache, quarantine, dead letters
    dry_run: bool = False  # read, caption and embed, but write nothing
    overwrite: bool = False  # re-write ids that already exist
    retry_quarantined: bool = False  # give items quarantined by an earlier run another chance
    max_retries: int = 6  # the retry budget: attempts per bulk batch (see rsrt.ingest.writer)
    queue_depth: int = 4  # batches waiting between two stages
    embed: str = "client"  # who embeds the variants: "client" (the encoder here) or "cluster" (the ingest pipeline)
    cluster_model: bool = True  # deploy the encoder in the cluster when it has ml-commons (rsrt.search.ml)
    # Stop the run (non-zero) when the captioner fails this many images in a row: an outage, not bad
    # images; those images are retried by the next run. 0: never stop.
    max_consecutive_failures: int = 20
    assets: AssetOptions = field(default_factory=AssetOptions)  # remote assets: timeout, retries, S3 endpoint
    shard: Shard | None = None  # --shard K/N: ingest only this shard's items, with its own state (shards.py)
    # --thumbnail-size: a small JPEG per image in its document (thumbnails.py); size 0: none
    thumbnails: ThumbnailOptions = field(default_factory=ThumbnailOptions)
    # --quantization: how a new index stores its vectors (rsrt.search.index.QUANTIZATIONS); None: the default for
    # a new index, and whatever an existing one has
    quantization: str | None = None

    @property
    def state_path(self) -> Path:
        """`state_dir`, by default `.rsrt/<index>` (`.rsrt/<index>/shard-K-of-N` for a shard)."""
        return self.state_dir or self.default_state_path(self.index)

    def default_state_path(self, name: str) -> Path:
        """Where the state of an ingest into `name` (an index or alias) lives unless `state_dir` says:
        each shard has its own folder, so no two shards share a checkpoint or a quarantine."""
        folder = Path(".rsrt") / name
        return folder / self.shard.slug if self.shard is not None else folder

    @property
    def cluster_embeds(self) -> bool:
        """Documents go out without vectors, through the index's embedding ingest pipeline."""
        if self.embed not in EMBED_SITES:
            raise ConfigError(f"--embed must be one of {', '.join(EMBED_SITES)}, not {self.embed!r}")
        return self.embed == "cluster"

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(attempts=max(1, self.max_retries))
