"""A deterministic scale corpus of any size, built from real human captions.

Why synthetic: no public remote-sensing caption set has 100 000 images, and benchmarking needs a
corpus whose size is a parameter. How: the RSITMD (train + test) and UCM-captions human captions
are grouped by scene class (RSITMD's file-name prefix; UCM's 21 classes of 100 consecutive ids).
Each class gets a *pool* of VLM-shaped variants, every field a real human caption of that class:
`one_sentence` = caption A, `feature` = caption B, `caption` = captions C + D + E. A synthetic image
draws a class (weighted by the class's image count) and five distinct variants from its pool, so
texts look like the paper's five-variant output and stay within one scene. Pools are capped, so the
whole corpus has a bounded number of distinct variant texts: their vectors are computed once, which
is what makes a write-only run at 100k+ images possible.

Metadata gives filters work: ids `scale-0000001`…, one of four collections, a datetime uniform in
2016–2025, and a square footprint of 0.5–2 km placed in one of four land regions (weighted).
Everything comes from one `numpy.random.Generator(seed)`: same seed and size → same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import load_benchmark
from ..errors import ConfigError
from ..schema import CaptionerInfo, ImageRecord, Variant

CORPUS_VERSION = 1
POOL_PER_CLASS = 300
COLLECTIONS = (("sentinel-2-l2a", 0.4), ("naip", 0.25), ("landsat-c2-l2", 0.2), ("worldview-3", 0.15))
# name, [west, south, east, north], weight
REGIONS = (
    ("europe", (-10.0, 36.0, 30.0, 60.0), 0.35),
    ("north-america", (-125.0, 25.0, -70.0, 50.0), 0.30),
    ("east-asia", (100.0, 20.0, 140.0, 45.0), 0.20),
    ("australia", (113.0, -39.0, 154.0, -12.0), 0.15),
)
EPOCH_START = datetime(2016, 1, 1, tzinfo=UTC)
EPOCH_DAYS = (datetime(2026, 1, 1, tzinfo=UTC) - EPOCH_START).days
# The filtered benchmark queries use this: central Europe, 2020–2021 (≈2 % of the corpus).
BENCH_FILTER = {"bbox": [0.0, 40.0, 20.0, 55.0], "datetime": "2020-01-01T00:00:00Z/2021-12-31T23:59:59Z"}
_CLASS = re.compile(r"^([a-z]+)")


@dataclass
class ScaleCorpus:
    """The pool of distinct variants and how synthetic images draw from it."""

    seed: int
    pool: list[Variant]
    pool_class: list[str]
    class_rows: dict[str, np.ndarray]
    class_weights: dict[str, float]
    sources: list[str] = field(default_factory=list)
    # A duplicate-free corpus (`build_distinct_corpus`): image k owns pool rows 5k..5k+4, no text repeats.
    distinct: bool = False

    @property
    def kind(self) -> str:
        return "distinct" if self.distinct else "clustered"

    def texts(self) -> list[str]:
        """What the encoder embeds for each pool row (precomputed once per encoder)."""
        return [v.labelled_text() for v in self.pool]

    def records(self, size: int) -> Iterator[tuple[ImageRecord, np.ndarray]]:
        """`size` synthetic images, each with the pool rows of its five variants."""
        if self.distinct and 5 * size > len(self.pool):
            raise ConfigError(f"this duplicate-free corpus has {len(self.pool) // 5} images, not {size}")
        rng = np.random.default_rng(self.seed)
        classes = sorted(self.class_rows)
        weights = np.array([self.class_weights[c] for c in classes])
        weights /= weights.sum()
        coll_names = [c for c, _ in COLLECTIONS]
        coll_p = np.array([w for _, w in COLLECTIONS])
        region_p = np.array([w for *_, w in REGIONS])
        captioner = CaptionerInfo(name="scale-corpus", model=f"human-captions-v{CORPUS_VERSION}",
                                  prompt_version="recombined", created="2026-01-01T00:00:00Z")
        chunk = 4096
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            cls_idx = rng.choice(len(classes), size=n, p=weights)
            coll_idx = rng.choice(len(coll_names), size=n, p=coll_p)
            reg_idx = rng.choice(len(REGIONS), size=n, p=region_p)
            u = rng.random((n, 2))
            half = rng.uniform(0.0025, 0.01, size=n)
            days = rng.integers(0, EPOCH_DAYS, size=n)
            seconds = rng.integers(0, 86400, size=n)
            picks = rng.random((n, 5))
            for j in range(n):
                number = start + j + 1
                if self.distinct:  # the image's own five rows (same draws as below, so metadata is alike)
                    rows = np.arange(5 * (number - 1), 5 * number)
                    cls = self.pool_class[int(rows[0])]
                else:
                    cls = classes[cls_idx[j]]
                    rows_of_class = self.class_rows[cls]
                    rows = rows_of_class[_five_distinct(picks[j], len(rows_of_class))]
                west, south, east, north = REGIONS[reg_idx[j]][1]
                lon = west + u[j, 0] * (east - west)
                lat = south + u[j, 1] * (north - south)
                h = float(half[j])
                bbox = [round(lon - h, 6), round(lat - h, 6), round(lon + h, 6), round(lat + h, 6)]
                when = EPOCH_START + timedelta(days=int(days[j]), seconds=int(seconds[j]))
                record = ImageRecord(
                    image_id=f"scale-{number:07d}",
                    source_uri=f"s3://rsrt-scale/{coll_names[coll_idx[j]]}/{number:07d}.tif",
                    collection=coll_names[coll_idx[j]],
                    datetime=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    geometry=_polygon(bbox),
                    bbox=bbox,
                    properties={"scene_class": cls, "region": REGIONS[reg_idx[j]][0]},
                    variants=[self.pool[r] for r in rows],
                    captioner=captioner,
                )
                yield record, rows


def _five_distinct(u: np.ndarray, n: int) -> np.ndarray:
    """Five distinct indices in [0, n) from five uniforms (a partial Fisher–Yates)."""
    order = list(range(n)) if n < 64 else None
    chosen: list[int] = []
    for i, x in enumerate(u):
        if order is not None:
            k = i + int(x * (n - i))
            order[i], order[k] = order[k], order[i]
            chosen.append(order[i])
        else:  # large pools: rejection is cheap and still deterministic
            k = int(x * n)
            while k in chosen:
                k = (k + 1) % n
            chosen.append(k)
    return np.array(chosen)


def _polygon(bbox: list[float]) -> dict[str, Any]:
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _class_captions(data_dir: str | None) -> tuple[dict[str, list[str]], dict[str, int], list[str]]:
    captions: dict[str, list[str]] = {}
    images: dict[str, int] = {}
    sources = []
    for split in ("train", "test"):
        bench = load_benchmark("rsitmd", split, data_dir)
        sources.append(f"rsitmd/{split} ({bench.n_images} images)")
        for image in bench.images:
            match = _CLASS.match(image.image_id)
            cls = f"rsitmd:{match.group(1) if match else 'other'}"
            captions.setdefault(cls, []).extend(c for c in image.captions if c.strip())
            images[cls] = images.get(cls, 0) + 1
    for split in ("train", "val", "test"):
        try:
            bench = load_benchmark("ucm", split, data_dir)
        except Exception:  # UCM has no val split in some copies; train + test suffice
            continue
        sources.append(f"ucm/{split} ({bench.n_images} images)")
        for image in bench.images:
            cls = f"ucm:{(int(image.image_id) - 1) // 100:02d}" if image.image_id.isdigit() else "ucm:other"
            captions.setdefault(cls, []).extend(c for c in image.captions if c.strip())
            images[cls] = images.get(cls, 0) + 1
    return captions, images, sources


def build_corpus(seed: int = 7, data_dir: str | None = None, pool_per_class: int = POOL_PER_CLASS) -> ScaleCorpus:
    """The variant pools; deterministic for a seed and the benchmark files."""
    rng = np.random.default_rng(seed)
    by_class, image_counts, sources = _class_captions(data_dir)
    pool: list[Variant] = []
    pool_class: list[str] = []
    class_rows: dict[str, np.ndarray] = {}
    for cls in sorted(by_class):
        texts = list(dict.fromkeys(by_class[cls]))  # distinct, in file order
        if len(texts) < 5:
            continue
        rows = []
        order = rng.permutation(len(texts))
        for i in range(min(pool_per_class, len(texts))):
            a = texts[order[i]]
            others = rng.choice(len(texts), size=4, replace=False)
            b, c, d, e = (texts[k] for k in others)
            rows.append(len(pool))
            pool.append(Variant(one_sentence=a, feature=b, caption=f"{c} {d} {e}"))
            pool_class.append(cls)
        class_rows[cls] = np.array(rows)
    weights = {cls: float(image_counts[cls]) for cls in class_rows}
    return ScaleCorpus(seed, pool, pool_class, class_rows, weights, sources)


def build_distinct_corpus(size: int, seed: int = 7, data_dir: str | None = None) -> ScaleCorpus:
    """A duplicate-free corpus of `size` images: 5 × size variant texts, no two equal.

    Why: the pooled corpus repeats each text ~45 times at 100k images (jittered vectors), a clustered
    layout that depresses HNSW recall; real VLM output never repeats. Here every variant is its own
    combination of three real captions of the image's scene class (`one_sentence`, `feature`,
    `caption`), so every vector is the encoding of a distinct text. Shorter than the pooled corpus's
    variants (3 captions, not 5), because all 5 × size texts must be encoded.
    """
    rng = np.random.default_rng([seed, 104729])
    by_class, image_counts, sources = _class_captions(data_dir)
    texts_of = {cls: list(dict.fromkeys(by_class[cls])) for cls in sorted(by_class)}
    classes = [cls for cls, texts in texts_of.items() if len(texts) >= 5]
    all_texts = sorted({text for cls in classes for text in texts_of[cls]})
    weights = np.array([float(image_counts[cls]) for cls in classes])
    weights /= weights.sum()
    pool: list[Variant] = []
    pool_class: list[str] = []
    seen: set[tuple[str, str, str]] = set()  # by text: a caption may occur in two classes
    for cls_index in rng.choice(len(classes), size=size, p=weights):
        cls = classes[cls_index]
        texts = texts_of[cls]
        for _ in range(5):
            for attempt in range(1000):
                triple = tuple(texts[int(x)] for x in rng.choice(len(texts), size=3, replace=False))
                if attempt >= 20:  # a small class ran out of combinations: its third caption from any class
                    triple = (triple[0], triple[1], all_texts[int(rng.integers(len(all_texts)))])
                if triple not in seen:
                    break
            else:
                raise ConfigError(f"cannot draw {size} duplicate-free images from the benchmark captions")
            seen.add(triple)
            pool.append(Variant(one_sentence=triple[0], feature=triple[1], caption=triple[2]))
            pool_class.append(cls)
    class_rows = {cls: np.flatnonzero(np.asarray(pool_class) == cls) for cls in classes}
    weights_by_class = {cls: float(image_counts[cls]) for cls in classes}
    return ScaleCorpus(seed, pool, pool_class, class_rows, weights_by_class, sources, distinct=True)


def write_corpus(corpus: ScaleCorpus, size: int, folder: Path) -> dict[str, Any]:
    """Writes `images.jsonl` (the grouped captions layout `rsrt ingest captions` reads) and a manifest.

    Returns the manifest. Re-running with the same seed and size rewrites identical bytes, so the
    manifest's sha256 says whether two machines benchmarked the same corpus.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"images-{size}.jsonl"
    digest = hashlib.sha256()
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for record, _ in corpus.records(size):
            line = json.dumps({
                "image": record.image_id,
                "collection": record.collection, "datetime": record.datetime,
                "geometry": record.geometry, "bbox": record.bbox, "properties": record.properties,
                "captioner": vars(record.captioner) if record.captioner else None,
                "variants": [v.to_dict() for v in record.variants],
            }, ensure_ascii=False, separators=(",", ":")) + "\n"
            digest.update(line.encode("utf-8"))
            out.write(line)
    tmp.replace(path)
    manifest = {"corpus_version": CORPUS_VERSION, "seed": corpus.seed, "images": size, "file": path.name,
                "sha256": digest.hexdigest(), "kind": corpus.kind, "distinct_variants": len(corpus.pool),
                "classes": len(corpus.class_rows), "sources": corpus.sources, "filter": BENCH_FILTER}
    (folder / f"manifest-{size}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
