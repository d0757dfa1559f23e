"""The ingest entry point: a source and an `IngestConfig` in, an `IngestSummary` out.

    from rsrt.ingest.run import IngestConfig, run_ingest

    summary = run_ingest(open_source("/data/archive"), IngestConfig(index="archive"), settings, captioner)
    print(summary.as_dict())

`run_ingest` connects, creates the index, and runs the pipeline; `run_pipeline` is the part after
connecting, for callers that hold a client and an encoder already (the benchmarks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch

from rsrt.search.config import ConnectionSettings
from rsrt.search.errors import ConfigError

from .config import IngestConfig
from .ledger import Ledger
from .pipeline import IngestPipeline, IngestStats, TextEncoder

Progress = Callable[[IngestStats], None]
_log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    """What one run did, and where its state is."""

    source: str
    index: str
    stats: IngestStats
    state_dir: Path
    quarantine: Path | None = None  # set when something was quarantined
    dead_letters: Path | None = None  # set when the cluster refused documents

    def as_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"source": self.source, "index": self.index, **self.stats.as_dict(),
                                   "state_dir": str(self.state_dir)}
        if self.quarantine is not None:
            summary["quarantine"] = str(self.quarantine)
        if self.dead_letters is not None:
            summary["dead_letters"] = str(self.dead_letters)
        return summary


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
    """
    from rsrt.search.client import require_cluster
    from rsrt.search.encoder import get_encoder
    from rsrt.search.index import create_index

    try:
        if source.needs_captioning and captioner is None:
            raise ConfigError(f"{source.describe()} holds images without captions: give --captioner and --model")
        encoder = get_encoder(config.encoder, config.encoder_backend)  # loads nothing until it encodes
        client = None
        if not config.dry_run:
            client, _ = require_cluster(settings, max_retries=0)
            create_index(client, encoder.info(), config.index)
            if config.cluster_embeds:  # the cluster must embed: its model has to be there, or the run stops
                from rsrt.search.ml import deploy_model

                deploy_model(client, config.index)
            elif config.cluster_model:
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
    ledger = Ledger(config.state_path, scope=scope)
    try:
        stats = IngestPipeline(client, encoder, ledger, config, captioner=captioner, progress=progress,
                               pipeline=pipeline).run(source)
    finally:
        ledger.close()
    return IngestSummary(source=source.describe(), index=config.index, stats=stats, state_dir=config.state_path,
                         quarantine=ledger.quarantine_path if stats.quarantined else None,
                         dead_letters=ledger.dead_letter_path if stats.failed else None)


__all__ = ["IngestConfig", "IngestSummary", "Progress", "run_ingest", "run_pipeline"]
