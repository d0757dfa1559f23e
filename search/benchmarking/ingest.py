"""Ingest throughput: the real pipeline (read → caption import → embed → write) on a corpus file.

Run twice per size: end to end with the real encoder, and "write only" with a `CorpusEncoder`
(precomputed vectors), whose rate is the ceiling the pipeline and the engine allow. The encoder's
own rate on the same texts gives the third number: end-to-end ÷ encoder-alone is the overlap target.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch

from ..encoder import DEFAULT_BATCH_SIZE
from ..index import create_index, delete_index, index_stats


def ingest_corpus(client: OpenSearch, corpus_file: Path, index: str, encoder: Any, *, batch_size: int = 64,
                  encode_batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 2, hnsw: dict[str, int] | None = None,
                  fresh: bool = True, quantization: str | None = None, shards: int = 1,
                  replicas: int = 0) -> dict[str, Any]:
    """Ingest one corpus file into a fresh index, through the same pipeline as `rsrt ingest`; the run's figures."""
    from rsrt.ingest.run import IngestConfig, run_pipeline
    from rsrt.ingest.sources import CaptionsJsonlSource

    if fresh:
        with contextlib.suppress(Exception):
            delete_index(client, index)
    create_index(client, encoder.info(), index, shards=shards, replicas=replicas, hnsw=hnsw,
                 quantization=quantization)
    with tempfile.TemporaryDirectory(prefix="rsrt-bench-ledger-") as state:
        config = IngestConfig(index=index, batch_size=batch_size, encode_batch_size=encode_batch_size,
                              workers=workers, state_dir=Path(state))
        stats = run_pipeline(CaptionsJsonlSource(corpus_file), config, encoder, client).stats
    wall = stats.wall_seconds
    share = {stage: round(seconds / wall, 3) if wall else 0.0 for stage, seconds in stats.stage_seconds.items()}
    segments = client.cat.segments(index=index, format="json")
    info = index_stats(client, index)
    return {
        "index": index,
        "images": stats.ingested,
        "quarantined": stats.quarantined,
        "failed": stats.failed,
        "variants": stats.variants,
        "wall_seconds": round(wall, 2),
        "docs_per_second": round(stats.docs_per_second, 1),
        "variants_per_second": round(stats.variants / wall, 1) if wall else 0.0,
        "stage_seconds": {k: round(v, 2) for k, v in stats.stage_seconds.items()},
        "stage_share_of_wall": share,
        "segments_after_load": len(segments),
        "store_bytes": info.size_bytes,
    }


def force_merge(client: OpenSearch, index: str) -> dict[str, Any]:
    """Merge to one segment (one HNSW graph per field): what an archive that is loaded, then served, does."""
    t0 = time.perf_counter()
    client.indices.forcemerge(index=index, max_num_segments=1, params={"request_timeout": 7200})
    client.indices.refresh(index=index)
    return {"seconds": round(time.perf_counter() - t0, 1),
            "segments": len(client.cat.segments(index=index, format="json")),
            "store_bytes": index_stats(client, index).size_bytes}
