"""Plain caption lists — a benchmark split's human captions — as a source.

Each caption becomes a variant holding only its `caption` text; the strict five-variant checks
are for VLM output, not here (benchmarks have 5 human captions per image, some fewer after cleaning).
"""

from __future__ import annotations

from collections.abc import Iterator

from rsrt.search.datasets import Benchmark, load_benchmark
from rsrt.search.schema import CaptionerInfo, ImageRecord, Variant

from .base import Source, SourceItem, SourceProblem
from .captions_jsonl import unfit_value


class CaptionListSource(Source):
    """Images of a benchmark split with their human captions as variants."""

    kind = "benchmark"
    needs_captioning = False

    def __init__(self, benchmark: Benchmark, collection: str | None = None,
                 leave_out: int | None = None) -> None:
        self.benchmark = benchmark
        self.collection = collection or benchmark.name
        # leave_out=f drops caption f of every image (the leave-one-out protocol's fold f).
        self.leave_out = leave_out

    @classmethod
    def load(cls, name: str, split: str = "test", data_dir: str | None = None, **options) -> CaptionListSource:
        return cls(load_benchmark(name, split, data_dir), **options)

    def describe(self) -> str:
        fold = f", without caption {self.leave_out}" if self.leave_out is not None else ""
        return f"{self.benchmark.name} {self.benchmark.split} captions ({self.benchmark.n_images} images{fold})"

    def count_hint(self) -> int | None:
        return self.benchmark.n_images

    def __iter__(self) -> Iterator[SourceItem]:
        info = CaptionerInfo(name="human", model=f"{self.benchmark.name}-{self.benchmark.split}")
        for image in self.benchmark.images:
            captions = [text for i, text in enumerate(image.captions) if i != self.leave_out]
            unfit = unfit_value(captions)
            if unfit is not None:  # a lone-surrogate escape in the split's JSON: it would fail the encoder
                yield SourceProblem(image.image_id, f"captions{unfit}", path=image.filename)
                continue
            variants = [Variant(caption=text.strip()) for text in captions if text.strip()]
            if not variants:
                yield SourceProblem(image.image_id, "no caption text", path=image.filename)
                continue
            yield ImageRecord(image_id=image.image_id, source_uri=image.filename, collection=self.collection,
                              variants=variants, captioner=info,
                              properties={"benchmark": self.benchmark.name, "split": self.benchmark.split})
