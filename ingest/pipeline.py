"""Ingest as stages — read → caption → embed → write — overlapped in threads, each timed.

Bounded queues between the stages keep memory flat and let the encoder work while the previous
batch is being written. Bad items go to the quarantine, refused documents to the dead letters;
the run stops (non-zero) only when the cluster stays unreachable, or when the captioner fails
`max_consecutive_failures` images in a row (a VLM outage), and then resumes on re-run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from opensearchpy import OpenSearch

from rsrt.search.errors import RsrtError
from rsrt.search.index import bulk_load_settings, to_document
from rsrt.search.ml_ingest import NO_PIPELINE
from rsrt.search.schema import CaptionerInfo, ImageRecord

from .captioners.base import CaptionerOutage
from .config import IngestConfig
from .ledger import Ledger
from .thumbnails import Thumbnails
from .writer import write_documents

STAGES = ("read", "caption", "embed", "write")
COUNTERS = ("seen", "ingested", "skipped", "quarantined", "failed", "variants", "partial", "deferred")
RESUME_HINT = "what was written is checkpointed — run the same command again to resume"
MAX_WARNINGS = 100  # warning lines a run's report keeps; the rest are counted (and logged)
_DONE = object()
_log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    name: str

    def encode(self, texts: list[str], batch_size: int | None = None) -> Any: ...


class Problem(Protocol):
    item: str
    reason: str


@dataclass
class IngestStats:
    """The run summary users see, and what benchmarks read.

    Stages in several threads count into it: every update goes through `add` / `add_seconds`,
    which hold its lock (reading a counter needs none).
    """

    seen: int = 0
    ingested: int = 0
    skipped: int = 0
    quarantined: int = 0
    failed: int = 0
    variants: int = 0
    partial: int = 0  # captioned with fewer than the five variants asked for (the valid ones were kept)
    deferred: int = 0  # of `quarantined`: the captioner's failure, not the image's; retried on the next run
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    # Not counters of items (the summary adds them, `IngestSummary.as_dict`): documents written with a
    # thumbnail, and one line per thing that went wrong without costing an item (a thumbnail not made).
    thumbnails: int = 0
    warnings: list[str] = field(default_factory=list)
    warning_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """`stats.add(quarantined=1)`: add to counters (the names in COUNTERS), atomically."""
        unknown = set(counts) - set(COUNTERS)
        if unknown:
            raise AttributeError(f"IngestStats has no counter {', '.join(sorted(unknown))}")
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def add_seconds(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stage_seconds[stage] += seconds

    def add_thumbnails(self, count: int) -> None:
        with self._lock:
            self.thumbnails += count

    def warn(self, line: str) -> None:
        """One line for the run's report (the first MAX_WARNINGS are kept, all are counted and logged)."""
        _log.warning("%s", line)
        with self._lock:
            self.warning_count += 1
            if len(self.warnings) < MAX_WARNINGS:
                self.warnings.append(line)

    @property
    def docs_per_second(self) -> float:
        return self.ingested / self.wall_seconds if self.wall_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in COUNTERS},
                "wall_seconds": self.wall_seconds,
                "docs_per_second": round(self.docs_per_second, 2),
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()}}


class _Timer:
    def __init__(self, stats: IngestStats, stage: str) -> None:
        self.stats, self.stage = stats, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stats.add_seconds(self.stage, time.perf_counter() - self.t0)


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class IngestPipeline:
    """One run of records from a source into one index."""

    def __init__(
        self,
        client: OpenSearch | None,
        encoder: TextEncoder | None,
        ledger: Ledger,
        options: IngestConfig,
        captioner: Any | None = None,
        progress: Callable[[IngestStats], None] | None = None,
        pipeline: str | None = None,
    ) -> None:
        """`encoder` None with an ingest `pipeline`: the cluster embeds (documents go without vectors)."""
        self.client = client
        self.encoder = encoder
        self.ledger = ledger
        self.options = options
        self.captioner = captioner
        self.progress = progress or (lambda stats: None)
        self.pipeline = pipeline
        if encoder is None and pipeline is None:
            raise RsrtError("no encoder and no embedding ingest pipeline: nothing would embed the variants")
        self.stats = IngestStats()
        self.thumbnails = Thumbnails(options.thumbnails, options.assets, warn=self.stats.warn)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._outage: str | None = None  # set by the caption stage: stop reading, finish the rest, fail
        self._failure_streak = 0  # captioner failures in a row
        self._streak_quarantined: list[str] = []  # the streak's failures of the image, marked once it ends

    # public ------------------------------------------------------------------------------------------
    def run(self, items: Iterable[ImageRecord | Problem]) -> IngestStats:
        t0 = time.perf_counter()
        to_caption: queue.Queue = queue.Queue(self.options.queue_depth)
        to_embed: queue.Queue = queue.Queue(self.options.queue_depth)
        to_write: queue.Queue = queue.Queue(self.options.queue_depth)
        threads = [
            threading.Thread(target=self._guard, args=(self._read, items, to_caption), name="read"),
            threading.Thread(target=self._guard, args=(self._caption, to_caption, to_embed), name="caption"),
            threading.Thread(target=self._guard, args=(self._embed, to_embed, to_write), name="embed"),
        ]
        threads += [
            threading.Thread(target=self._guard, args=(self._write, to_write, None), name=f"write-{i}")
            for i in range(max(1, self.options.workers))
        ]
        context = (bulk_load_settings(self.client, self.options.index)
                   if self.client is not None and not self.options.dry_run else contextlib.nullcontext())
        with context:
            for thread in threads:
                thread.start()
            try:
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.2)
            except KeyboardInterrupt:
                self._stop.set()
                for thread in threads:
                    thread.join(30)
                raise
        self.stats.wall_seconds = time.perf_counter() - t0
        if self._error is not None:
            raise self._error
        if self._outage is not None:
            raise CaptionerOutage(self._outage)
        return self.stats

    # stages ------------------------------------------------------------------------------------------
    def _guard(self, stage: Callable[..., None], source: Any, sink: queue.Queue | None) -> None:
        try:
            stage(source, sink)
        except BaseException as exc:
            self._error = self._error or exc
            self._stop.set()
            self._drain(source if isinstance(source, queue.Queue) else None)
        finally:
            if sink is not None:
                self._put(sink, _DONE, force=True)

    def _put(self, sink: queue.Queue, item: Any, force: bool = False) -> None:
        while True:
            if self._stop.is_set() and not force:
                return
            try:
                sink.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set():
                    # Make room for the end marker so the next stage can finish.
                    try:
                        sink.get_nowait()
                    except queue.Empty:
                        pass

    def _take(self, source: queue.Queue) -> Iterator[Any]:
        while True:
            try:
                item = source.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set() and self._error is not None:
                    return
                continue
            if item is _DONE:
                source.put(_DONE)  # let sibling workers see it too
                return
            if self._stop.is_set():
                continue
            yield item

    def _drain(self, source: queue.Queue | None) -> None:
        if source is None:
            return
        try:
            while True:
                source.get_nowait()
        except queue.Empty:
            pass

    def _read(self, items: Iterable[ImageRecord | Problem], sink: queue.Queue) -> None:
        seen_ids: set[str] = set()
        batch: list[ImageRecord] = []
        iterator = iter(items)
        while not self._stop.is_set() and self._outage is None:
            with _Timer(self.stats, "read"):
                item = next(iterator, _DONE)
                if item is not _DONE:
                    self.stats.add(seen=1)
                    if not isinstance(item, ImageRecord):
                        self.ledger.quarantine(item.item, item.reason, "read",
                                               location=getattr(item, "location", None))
                        self.stats.add(quarantined=1)
                    elif item.image_id in seen_ids:
                        self.ledger.quarantine(item.image_id, f"duplicate image id {item.image_id!r} in this "
                                               "run; the first one was kept", "read", source_uri=item.source_uri)
                        self.stats.add(quarantined=1)
                    else:
                        seen_ids.add(item.image_id)
                        batch.append(item)
                full = len(batch) >= self.options.batch_size or (item is _DONE and batch)
                if full:
                    batch = self._skip_existing(batch)
            if full and batch:
                self._put(sink, batch)
                batch = []
            elif full:
                batch = []
            if item is _DONE:
                return

    def _skip_existing(self, batch: list[ImageRecord]) -> list[ImageRecord]:
        """Idempotence: ids in the checkpoint, or already in the index, are not written again."""
        if not batch or self.options.overwrite:
            return batch
        ids = [r.image_id for r in batch]
        done = self.ledger.done(ids, include_quarantined=not self.options.retry_quarantined)
        remaining = [i for i in ids if i not in done]
        if remaining and self.client is not None and not self.options.dry_run:
            found = self.options.retry.call(lambda final: self.client.mget(
                index=self.options.index, body={"ids": remaining}, params={"_source": "false"}),
                f"writing to {self.options.index!r}", hint=RESUME_HINT, stop=self._stopping)
            existing = {d["_id"] for d in found["docs"] if d.get("found")}
            if existing:
                self.ledger.mark(existing)
            done |= existing
        self.stats.add(skipped=len(done))
        return [r for r in batch if r.image_id not in done]

    def _caption(self, source: queue.Queue, sink: queue.Queue) -> None:
        for batch in self._take(source):
            if self._outage is not None:
                continue  # what the read stage queued before it stopped: left for the next run
            ready: list[ImageRecord] = []
            pending: list[ImageRecord] = []
            for record in batch:
                if record.variants:
                    ready.append(record)
                    self._read_thumbnail(record, local_only=True)  # precomputed captions: a local image, if any
                    continue
                cached = self._cached(record)
                if cached:
                    ready.append(cached)
                    self._read_thumbnail(cached, local_only=False)  # the VLM call is saved, not the picture
                else:
                    pending.append(record)
            if pending:
                if self.captioner is None:
                    raise RsrtError("these images need captions: give a captioner (--captioner)")
                with _Timer(self.stats, "caption"):
                    ready += self._caption_batch(pending)
            if ready:
                self._put(sink, ready)
        self._end_failure_streak()

    def _read_thumbnail(self, record: ImageRecord, *, local_only: bool) -> None:
        """The thumbnail of a record the VLM does not see, from one read of its image (timed as reading)."""
        if self.thumbnails.enabled and record.thumbnail is None:
            with _Timer(self.stats, "read"):
                record.thumbnail = self.thumbnails.read(record, local_only=local_only)

    def _cache_key(self, record: ImageRecord) -> str:
        """Who captioned, and for a raster how its picture was rendered (bands, stretch, window, size).

        The render is part of the key: the same scene with other `--bands` or `--stretch` is another picture.
        """
        from rsrt.ingest.raster import RASTER_PROPERTY

        c = self.captioner
        key = f"{getattr(c, 'name', '')}|{getattr(c, 'model', '')}|{getattr(c, 'prompt_version', '')}"
        render = (record.properties or {}).get(RASTER_PROPERTY)
        if render:
            digest = hashlib.sha256(json.dumps(render, sort_keys=True).encode("utf-8")).hexdigest()[:16]
            key += f"|raster:{digest}"
        return key

    def _cached(self, record: ImageRecord) -> ImageRecord | None:
        if self.captioner is None:
            return None
        hit = self.ledger.cached_caption(record.image_id, self._cache_key(record))
        if hit is None:
            return None
        record.variants, record.captioner = hit
        return record

    def _caption_batch(self, records: list[ImageRecord]) -> list[ImageRecord]:
        from rsrt.ingest.captioners import ImageInput
        from rsrt.ingest.raster import RasterRead

        inputs = [ImageInput.from_source_uri(r.image_id, r.source_uri, RasterRead.from_properties(r.properties),
                                             self.options.assets) for r in records]
        inputs = self.thumbnails.watch(inputs)  # the picture the VLM gets is the thumbnail's source too
        try:
            return self._caption_inputs(records, inputs)
        finally:
            self.thumbnails.forget([r.image_id for r in records])

    def _caption_inputs(self, records: list[ImageRecord], inputs: list[Any]) -> list[ImageRecord]:
        by_chunk = getattr(self.captioner, "caption_chunks", None)
        chunks = by_chunk(inputs) if by_chunk is not None else iter([self.captioner.caption(inputs)])
        by_id = {r.image_id: r for r in records}
        captioned: list[ImageRecord] = []
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for results in chunks:
            for result in results:
                record = by_id[result.image_id]
                if result.variants:
                    record.variants = list(result.variants)
                    record.captioner = CaptionerInfo(self.captioner.name, self.captioner.model,
                                                     self.captioner.prompt_version, created)
                    self.ledger.store_caption(record.image_id, self._cache_key(record), record.variants,
                                              record.captioner)
                    self.stats.add(partial=int(bool(getattr(result, "dropped", None))))
                    self._end_failure_streak()
                    if self.thumbnails.enabled:
                        self.thumbnails.take(record)
                    captioned.append(record)
                else:
                    self._caption_failed(record, result)
            if self._outage is not None:
                break  # the rest of the batch is neither captioned nor marked: the next run does it
        return captioned

    def _caption_failed(self, record: ImageRecord, result: Any) -> None:
        """Quarantine one failed image; stop the run when the captioner has failed too many in a row.

        A failure of the captioner (`result.transient`: server down, key refused) is never marked
        done, so the next run tries the image again. A failure of the image (bad answers, refused
        request) is marked once the streak it belongs to ends: if the streak stops the run, those
        images too are retried by the next run (a broken model looks like bad images).

        An image that could not be loaded (`attempts == 0`) says nothing about the captioner and
        never counts toward the streak: a remote asset that stays unreachable (5xx, 429, timeout;
        `transient`) is retried by the next run, a missing or unreadable one (404, 403, not a
        raster) is quarantined for good.
        """
        transient = bool(getattr(result, "transient", False))
        extra: dict[str, Any] = {"transient": True} if transient else {}
        if getattr(result, "status", None) is not None:
            extra["status"] = result.status
        self.ledger.quarantine(record.image_id, result.error or "no caption", "caption",
                               source_uri=record.source_uri, attempts=result.attempts,
                               raw_answer=(result.raw or "")[:2000], **extra)
        self.stats.add(quarantined=1, deferred=int(transient))
        if not result.attempts:  # the image could not even be loaded: says nothing about the captioner
            if not transient:
                self.ledger.mark([record.image_id], "quarantined")
            return
        if not transient:
            self._streak_quarantined.append(record.image_id)
        self._failure_streak += 1
        limit = self.options.max_consecutive_failures
        if limit and self._failure_streak >= limit and self._outage is None:
            self._outage = (
                f"captioning stopped: {self._failure_streak} images in a row failed, the last "
                f"{record.image_id!r}: {result.error}. What was captioned is indexed and cached; fix the "
                "captioner and run the same command again to caption the rest (if these images are simply "
                "bad, raise --max-consecutive-failures; 0 never stops)"
            )

    def _end_failure_streak(self) -> None:
        """A success (or the end of the run) ends the streak: its image failures are quarantined for good.

        Not once the streak has stopped the run: then they are retried with the rest."""
        if self._outage is not None:
            return
        if self._streak_quarantined:
            self.ledger.mark(self._streak_quarantined, "quarantined")
        self._streak_quarantined = []
        self._failure_streak = 0

    def _embed(self, source: queue.Queue, sink: queue.Queue) -> None:
        for batch in self._take(source):
            with _Timer(self.stats, "embed"):
                keep = []
                for record in batch:
                    if not record.variants or all(v.is_empty() for v in record.variants):
                        self.ledger.quarantine(record.image_id, "no caption text to embed", "embed",
                                               source_uri=record.source_uri)
                        self.stats.add(quarantined=1)
                        continue
                    record.variants = [v for v in record.variants if not v.is_empty()]
                    keep.append(record)
                texts = [v.labelled_text() for r in keep for v in r.variants]
                if self.encoder is not None:  # else the cluster embeds them on write (the ingest pipeline)
                    self._attach_vectors(keep, texts)
                self.stats.add(variants=len(texts))
            if keep:
                self._put(sink, keep)

    def _attach_vectors(self, records: list[ImageRecord], texts: list[str]) -> None:
        vectors = self.encoder.encode(texts, batch_size=self.options.encode_batch_size) if texts else []
        offset = 0
        for record in records:
            count = len(record.variants)
            # rows stay float32 arrays: the client serializes them as float32 (search/serializer.py)
            record.vectors = list(np.asarray(vectors[offset:offset + count], dtype=np.float32))
            offset += count

    def _write(self, source: queue.Queue, _: None) -> None:
        for batch in self._take(source):
            with _Timer(self.stats, "write"):
                if self.options.dry_run or self.client is None:
                    self.stats.add(ingested=len(batch))
                    self.stats.add_thumbnails(sum(r.thumbnail is not None for r in batch))
                else:
                    self._bulk(batch)
            self.progress(self.stats)

    # writing ----------------------------------------------------------------------------------------
    def _bulk(self, batch: list[ImageRecord]) -> None:
        written, refused = write_documents(self.client, self.options.index, batch, self.options.retry,
                                           chunk_size=len(batch), hint=RESUME_HINT, stop=self._stopping,
                                           pipeline=self.pipeline or NO_PIPELINE)
        by_id = {r.image_id: r for r in batch}
        for image_id, reason in refused:
            self.ledger.dead_letter(image_id, reason, to_document(by_id[image_id]))
        self.ledger.mark(written)
        self.stats.add(failed=len(refused), ingested=len(written))
        self.stats.add_thumbnails(sum(by_id[image_id].thumbnail is not None for image_id in written))

    def _stopping(self) -> bool:
        """Another stage failed: retrying a write is pointless."""
        return self._stop.is_set() and self._error is not None
