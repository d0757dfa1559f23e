"""The ingest entry point: a source and an `IngestConfig` in, an `IngestSummary` out.

    from rsrt.ingest.run import IngestConfig, run_ingest

    summary = run_ingest(open_source("/data/archive"), IngestConfig(index="archive"), settings, captioner)
    print(summary.as_dict())

`run_ingest` connects, creates the index, and runs the pipeline; `run_pipeline` is the part after
connecting, for callers that hold a client and an encoder already (the benchmarks).

How a run ends (`IngestSummary.exit_code`, the CLI's exit status):

- 0: every item is indexed, skipped as already indexed, or quarantined while others went in;
- 1: the cluster (or the VLM, a remote catalog, a STAC API) stayed unreachable or failed (an `RsrtError`;
  the run resumes when re-run);
- 2: bad flags or input (an `RsrtError`: the state dir cannot be written, no captioner, ...);
- 3: the cluster refused some documents (they are in the dead letters);
- 4: nothing could be indexed: no document was written or already there, and items were quarantined
  (a wrong folder, a broken captioner, a caption file in another format): exiting 0 would let a
  script believe the archive is searchable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch

from rsrt.search.config import ConnectionSettings
from rsrt.search.errors import ConfigError

from .config import IngestConfig
from .ledger import Ledger, check_state_dir, claim_state_dir
from .pipeline import IngestPipeline, IngestStats, TextEncoder
from .shards import Shard, ShardedSource, sharded

Progress = Callable[[IngestStats], None]
_log = logging.getLogger(__name__)
EXIT_REFUSED = 3  # the cluster refused documents: they are in the dead letters
EXIT_NOTHING_INDEXED = 4  # items were quarantined and none is in the index (see the module docstring)


def exit_code(counts: Mapping[str, int]) -> int:
    """The exit status of a finished run from its counters (`IngestSummary.as_dict()`): see the module docstring."""
    if counts.get("failed"):
        return EXIT_REFUSED
    if counts.get("quarantined") and not counts.get("ingested") and not counts.get("skipped"):
        return EXIT_NOTHING_INDEXED
    return 0


@dataclass
class IngestSummary:
    """What one run did, and where its state is."""

    source: str
    index: str
    stats: IngestStats
    state_dir: Path
    quarantine: Path | None = None  # set when something was quarantined
    dead_letters: Path | None = None  # set when the cluster refused documents
    shard: Shard | None = None  # `--shard K/N`: this run ingested only that shard's items
    left_to_other_shards: int = 0  # items of the source the other shards ingest (not in `seen`)

    def as_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"source": self.source, "index": self.index, **self.stats.as_dict(),
                                   "thumbnails": self.stats.thumbnails, "state_dir": str(self.state_dir)}
        if self.stats.warning_count:  # what went wrong without costing an item (e.g. a thumbnail not made)
            summary["warnings"] = list(self.stats.warnings)
            summary["warning_count"] = self.stats.warning_count
        if self.shard is not None:
            summary["shard"] = str(self.shard)
            summary["left_to_other_shards"] = self.left_to_other_shards
        if self.quarantine is not None:
            summary["quarantine"] = str(self.quarantine)
        if self.dead_letters is not None:
            summary["dead_letters"] = str(self.dead_letters)
        return summary

    @property
    def exit_code(self) -> int:
        return exit_code(self.stats.as_dict())


def run_ingest(source: Any, config: IngestConfig, settings: ConnectionSettings | None = None,
               captioner: Any | None = None, progress: Progress | None = None) -> IngestSummary:
    """Connect (unless a dry run), create the index, run read → caption → embed → write.

    The client makes no retries of its own (`max_retries=0`): the writer holds the one retry
    budget, `config.max_retries` attempts per bulk batch. The captioner is closed afterwards.
    With `config.cluster_model` and ml-commons in the cluster, the encoder is deployed there too
    (idempotent); a failure is one warning, since rsrt's own embedding still works.
    With `config.embed == "cluster"` rsrt embeds nothing: the encoder is deployed in the cluster (which
    must have ml-commons) and documents go out without vectors through the index's embedding ingest
    pipeline (`rsrt.search.ml_ingest`).
    `config.index` may name a version built beside the live one (`rsrt index create --new-version`):
    the run fills it and the alias stays until `rsrt index promote`; its state (caption cache above
    all) is then the alias's own folder, `.rsrt/<alias>`, unless `state_dir` says otherwise.
    The state folder is checked to be writable before anything is created on the cluster, and to belong
    to this run's shard (`config.shard`, `rsrt.ingest.shards`; each shard has its own folder).
    With thumbnails on (`config.thumbnails`, `rsrt.ingest.thumbnails`), an index made before they joined the
    contract gets their two fields first: its strict mapping would refuse every document otherwise.
    Of N shards started at once, only shard 1 deploys the cluster model: the others would each export
    and upload the same model and start its deploy at once (`ml.register_once` keeps one registration,
    but N exports and N concurrent deploys are waste and risk); with `embed == "cluster"` they wait for it.
    """
    from rsrt.search.client import require_cluster
    from rsrt.search.encoder import get_encoder
    from rsrt.search.index import add_thumbnail_fields, create_index, version_of

    try:
        if source.needs_captioning and captioner is None:
            raise ConfigError(f"{source.describe()} holds images without captions: give --captioner and --model")
        encoder = get_encoder(config.encoder, config.encoder_backend)  # loads nothing until it encodes
        client = None
        shard = None if config.shard is None else str(config.shard)
        deploys = config.shard is None or config.shard.number == 1
        if config.dry_run:
            check_state_dir(config.state_path)
            claim_state_dir(config.state_path, shard)
        else:
            client, _ = require_cluster(settings, max_retries=0)
            alias = version_of(client, config.index) if config.state_dir is None else None
            if alias is not None:
                config = dataclasses.replace(config, state_dir=config.default_state_path(alias))
            check_state_dir(config.state_path)
            claim_state_dir(config.state_path, shard)
            create_index(client, encoder.info(), config.index, quantization=config.quantization)
            if config.thumbnails.enabled:  # an index made before thumbnails would refuse every document
                add_thumbnail_fields(client, config.index)
            if config.cluster_embeds and not deploys:
                _wait_for_cluster_model(client, config)
            elif config.cluster_embeds:  # the cluster must embed: its model has to be there, or the run stops
                from rsrt.search.ml import deploy_model

                deploy_model(client, config.index)
            elif config.cluster_model and deploys:
                from rsrt.search.ml import deploy_quietly

                deploy_quietly(client, config.index, warn=_log.warning)
        if config.cluster_embeds:
            from rsrt.search.ml_ingest import cluster_pipeline, pipeline_name

            pipeline = pipeline_name(config.index) if client is None else cluster_pipeline(client, config.index)
            return run_pipeline(source, config, None, client, captioner=captioner, progress=progress,
                                pipeline=pipeline)
        return run_pipeline(source, config, encoder, client, captioner=captioner, progress=progress)
    finally:
        if captioner is not None:
            captioner.close()


def run_pipeline(source: Any, config: IngestConfig, encoder: TextEncoder | None, client: OpenSearch | None,
                 captioner: Any | None = None, progress: Progress | None = None,
                 pipeline: str | None = None) -> IngestSummary:
    """The pipeline into `config.index`, which exists (no client: a dry run); the ledger is scoped to
    the index's UUID, so a checkpoint written for another index is not trusted. No `encoder`: the
    ingest `pipeline` embeds."""
    from rsrt.search.index import index_uuid

    scope = index_uuid(client, config.index) if client is not None and not config.dry_run else None
    source = sharded(source, config.shard)  # every kind of source, at the read stage: only this shard's items
    ledger = Ledger(config.state_path, scope=scope)
    try:
        stats = IngestPipeline(client, encoder, ledger, config, captioner=captioner, progress=progress,
                               pipeline=pipeline).run(source)
    finally:
        ledger.close()
    return IngestSummary(source=source.describe(), index=config.index, stats=stats, state_dir=config.state_path,
                         quarantine=ledger.quarantine_path if stats.quarantined else None,
                         dead_letters=ledger.dead_letter_path if stats.failed else None, shard=config.shard,
                         left_to_other_shards=source.left_to_others if isinstance(source, ShardedSource) else 0)


def _wait_for_cluster_model(client: OpenSearch, config: IngestConfig, poll_seconds: float = 2.0) -> None:
    """A shard other than 1 with `--embed cluster`: wait until shard 1 has deployed the index's model.

    Only shard 1 deploys (see `run_ingest`); the model is recorded in the index's `_meta` once it is
    deployed, and that record is what the others wait for.
    """
    from rsrt.search.ml import DEPLOY_TIMEOUT, index_cluster_model

    deadline = time.monotonic() + DEPLOY_TIMEOUT
    while index_cluster_model(client, config.index) is None:
        if time.monotonic() > deadline:
            raise ConfigError(f"shard {config.shard}: index {config.index!r} has no model in the cluster after "
                              f"{DEPLOY_TIMEOUT:.0f} s; shard 1 deploys it (start it too), or run "
                              f"`rsrt model deploy --index {config.index}` first")
        time.sleep(poll_seconds)


__all__ = ["EXIT_NOTHING_INDEXED", "EXIT_REFUSED", "IngestConfig", "IngestSummary", "Progress", "exit_code",
           "run_ingest", "run_pipeline"]
