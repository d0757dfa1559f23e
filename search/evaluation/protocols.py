"""Evaluation protocols as plain data: queries, a corpus of texts owned by images, and qrels.

A protocol says *what* is asked and what counts as a hit, never *how* ranking is done, so the same
protocol is scored by the OpenSearch query layer and by the in-memory exact reference
(`exact.py`): both implement `Ranker`. The runner (`runner.py`) feeds each task's corpus to
`Ranker.index` and its query texts to `Ranker.rank`.

Two protocols:

- ``loo`` (leave-one-out, training-free stand-in for images): for fold f, every image is indexed
  with its other captions as variants, and its caption f is the query. T2I ranks images (an image
  scores by its best variant); I2T ranks the individual indexed texts and hits when any text of
  the query's image is in the top K. Folds are averaged.
- ``standard``: T2I with the corpus = per-image VLM variants and queries = all human captions;
  I2T with one (or more) VLM query text per image against the corpus of human captions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ..datasets import Benchmark, caption_id
from ..errors import ConfigError, RsrtError
from ..schema import ImageRecord, Variant

Direction = Literal["t2i", "i2t"]
DIRECTIONS: tuple[Direction, ...] = ("t2i", "i2t")
LOO_FOLDS = 5


@dataclass(frozen=True)
class Doc:
    """One indexed text (a variant), owned by one image.

    `text` is what a dense encoder embeds (`Variant.labelled_text()`: a caption-only variant is the
    plain caption). `fields` keeps the variant's fields for engines that index them separately.
    """

    doc_id: str
    image_id: str
    text: str
    fields: Mapping[str, str] | None = None

    @property
    def lexical_text(self) -> str:
        """The text a lexical (BM25) ranker sees: the field values without the labels."""
        if self.fields:
            return "\n".join(v for v in self.fields.values() if v)
        return self.text


@dataclass(frozen=True)
class Corpus:
    """The texts one task searches; `corpus_id` is stable so a ranker can skip re-indexing."""

    corpus_id: str
    docs: tuple[Doc, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for doc in self.docs:
            if doc.doc_id in seen:
                raise ValueError(f"corpus {self.corpus_id}: duplicate doc id {doc.doc_id!r}")
            seen.add(doc.doc_id)

    def image_ids(self) -> list[str]:
        """Images that own at least one doc, in order of first appearance."""
        return list(dict.fromkeys(doc.image_id for doc in self.docs))

    def by_image(self) -> dict[str, list[Doc]]:
        groups: dict[str, list[Doc]] = {}
        for doc in self.docs:
            groups.setdefault(doc.image_id, []).append(doc)
        return groups


@dataclass(frozen=True)
class Query:
    """One query text; `image_id` is the image it stands for (its own image)."""

    query_id: str
    text: str
    image_id: str


@dataclass(frozen=True)
class Task:
    """One direction of one fold: queries against a corpus, with binary qrels.

    Qrels targets are image ids for ``t2i`` and doc ids for ``i2t`` — the ids a `Ranker` returns.
    """

    direction: Direction
    fold: int
    corpus: Corpus
    queries: tuple[Query, ...]
    qrels: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")
        ids = [q.query_id for q in self.queries]
        if len(set(ids)) != len(ids):
            raise ValueError(f"task {self.direction}/fold {self.fold}: duplicate query ids")
        for qid in ids:
            if not self.qrels.get(qid):
                raise ValueError(f"task {self.direction}/fold {self.fold}: query {qid!r} has no relevant target")

    @property
    def key(self) -> str:
        return f"{self.direction}-fold{self.fold}"


@dataclass(frozen=True)
class EvalProtocol:
    """A named list of tasks over one benchmark split."""

    name: str
    benchmark: str
    split: str
    tasks: tuple[Task, ...]
    notes: tuple[str, ...] = ()
    # Images of the split the standard protocol had nothing for, per direction (`--allow-missing`).
    missing: Mapping[str, int] = field(default_factory=dict)

    def folds(self) -> list[int]:
        return sorted({t.fold for t in self.tasks})

    def directions(self) -> list[Direction]:
        return [d for d in DIRECTIONS if any(t.direction == d for t in self.tasks)]

    def summary(self) -> dict[str, Any]:
        """Sizes of every task, for the JSON report."""
        return {
            "name": self.name,
            "benchmark": self.benchmark,
            "split": self.split,
            "folds": self.folds(),
            "notes": list(self.notes),
            "images_missing": dict(self.missing),
            "tasks": [
                {
                    "direction": t.direction,
                    "fold": t.fold,
                    "corpus_id": t.corpus.corpus_id,
                    "n_queries": len(t.queries),
                    "n_docs": len(t.corpus.docs),
                    "n_images": len(t.corpus.image_ids()),
                }
                for t in self.tasks
            ],
        }


@runtime_checkable
class Ranker(Protocol):
    """What a retrieval engine must offer to be scored by a protocol.

    `index(corpus)` makes the corpus searchable (the OpenSearch ranker bulk-loads it, one image
    record per `image_id` with its docs as variants); it is called once per distinct corpus, before
    the tasks that use it. `rank(queries, k, direction)` returns, per query text, up to `k`
    `(id, score)` pairs, best first:

    - ``t2i``: image ids, an image's score being the max over its docs;
    - ``i2t``: doc ids of the individual texts.

    Score ties may come in any order: the metrics re-order equal scores by id.
    """

    name: str

    def index(self, corpus: Corpus) -> None: ...

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]: ...


def _caption_doc(image_id: str, index: int, text: str) -> Doc:
    variant = Variant(caption=text)
    return Doc(caption_id(image_id, index), image_id, variant.labelled_text(), {"caption": text})


def _t2i_qrels(queries: Iterable[Query]) -> dict[str, dict[str, int]]:
    return {q.query_id: {q.image_id: 1} for q in queries}


def _i2t_qrels(queries: Iterable[Query], corpus: Corpus) -> dict[str, dict[str, int]]:
    groups = corpus.by_image()
    return {q.query_id: {d.doc_id: 1 for d in groups.get(q.image_id, [])} for q in queries}


def loo_protocol(benchmark: Benchmark, folds: int = LOO_FOLDS) -> EvalProtocol:
    """Leave-one-out: fold f queries caption f of every image against all other captions.

    Every image needs at least `folds` captions; captions past `folds` are always indexed.
    """
    short = [img.image_id for img in benchmark.images if len(img.captions) < folds]
    if short:
        raise ConfigError(
            f"loo protocol needs {folds} captions per image; {len(short)} image(s) have fewer "
            f"(first: {', '.join(short[:5])})"
        )
    tasks: list[Task] = []
    for fold in range(folds):
        docs = tuple(
            _caption_doc(img.image_id, i, text)
            for img in benchmark.images
            for i, text in enumerate(img.captions)
            if i != fold
        )
        corpus = Corpus(f"{benchmark.name}-{benchmark.split}-loo-f{fold}", docs)
        queries = tuple(
            Query(caption_id(img.image_id, fold), img.captions[fold], img.image_id) for img in benchmark.images
        )
        tasks.append(Task("t2i", fold, corpus, queries, _t2i_qrels(queries)))
        tasks.append(Task("i2t", fold, corpus, queries, _i2t_qrels(queries, corpus)))
    return EvalProtocol("loo", benchmark.name, benchmark.split, tuple(tasks))


VariantLike = Variant | str | Mapping[str, Any]


def _as_variant(value: VariantLike) -> Variant:
    if isinstance(value, Variant):
        return value
    if isinstance(value, str):
        return Variant(caption=value.strip())
    return Variant.from_mapping(dict(value))


def variants_from_records(records: Iterable[ImageRecord]) -> dict[str, list[Variant]]:
    """The `variants` argument of `standard_protocol` from ingested image records."""
    return {rec.image_id: list(rec.variants) for rec in records}


def _check_coverage(what: str, benchmark: Benchmark, given: Mapping[str, Any], allow_missing: bool) -> list[str]:
    missing = [img.image_id for img in benchmark.images if not given.get(img.image_id)]
    if missing and not allow_missing:
        raise ConfigError(
            f"{what}: {len(missing)} of {benchmark.n_images} {benchmark.name} {benchmark.split} images have "
            f"none (first: {', '.join(missing[:5])}); ids must be the benchmark's image ids (file stems), "
            "or pass --allow-missing to evaluate anyway (uncovered images stay in the protocol, unretrievable)"
        )
    return missing


def standard_protocol(
    benchmark: Benchmark,
    variants: Mapping[str, Sequence[VariantLike]] | None = None,
    image_queries: Mapping[str, str | Sequence[str]] | None = None,
    *,
    allow_missing: bool = False,
) -> EvalProtocol:
    """The literature's protocol with VLM text standing in for the image.

    - T2I (if `variants` given): corpus = each image's VLM variants (doc ids `<image>#v<j>`; images
      not in the benchmark are kept as distractors); queries = every human caption of the split.
    - I2T (if `image_queries` given): each image's VLM query text(s) (ids `<image>#q<j>`) against
      the corpus of all human captions; a hit is any caption of that image in the top K.

    Images without variants or query text are an error unless `allow_missing`. Then numbers are
    never inflated: an image without variants stays in the protocol — its captions are still
    queries — but has no document, so those queries are misses (the gallery is not shrunk to the
    covered images); an image without a query text is not asked in I2T. `missing` and the notes
    say how many images had none.
    """
    if variants is None and image_queries is None:
        raise ConfigError("standard protocol needs variants (T2I), image queries (I2T), or both")
    tasks: list[Task] = []
    notes: list[str] = []
    missing_by_direction: dict[str, int] = {}
    if variants is not None:
        missing = _check_coverage("T2I variants", benchmark, variants, allow_missing)
        missing_by_direction["t2i"] = len(missing)
        docs: list[Doc] = []
        for image_id, values in variants.items():
            for j, value in enumerate(values):
                variant = _as_variant(value)
                if variant.is_empty():
                    continue
                docs.append(Doc(f"{image_id}#v{j}", image_id, variant.labelled_text(), variant.to_dict()))
        known = {img.image_id for img in benchmark.images}
        extra = len({d.image_id for d in docs} - known)
        corpus = Corpus(f"{benchmark.name}-{benchmark.split}-standard-variants", tuple(docs))
        queries = tuple(Query(cid, text, image_id) for cid, image_id, text in benchmark.captions())
        tasks.append(Task("t2i", 0, corpus, queries, _t2i_qrels(queries)))
        if missing:
            notes.append(f"t2i: {len(missing)} image(s) without variants (always missed)")
        if extra:
            notes.append(f"t2i: {extra} distractor image(s) not in the benchmark")
    if image_queries is not None:
        missing = _check_coverage("I2T query texts", benchmark, image_queries, allow_missing)
        missing_by_direction["i2t"] = len(missing)
        corpus = Corpus(
            f"{benchmark.name}-{benchmark.split}-standard-captions",
            tuple(_caption_doc(img.image_id, i, t) for img in benchmark.images for i, t in enumerate(img.captions)),
        )
        queries_list: list[Query] = []
        for img in benchmark.images:
            texts = image_queries.get(img.image_id) or []
            if isinstance(texts, str):
                texts = [texts]
            queries_list.extend(
                Query(f"{img.image_id}#q{j}", t, img.image_id) for j, t in enumerate(texts) if t.strip()
            )
        queries = tuple(queries_list)
        tasks.append(Task("i2t", 0, corpus, queries, _i2t_qrels(queries, corpus)))
        if missing:
            notes.append(f"i2t: {len(missing)} image(s) without a query text (not asked)")
    return EvalProtocol("standard", benchmark.name, benchmark.split, tuple(tasks), tuple(notes), missing_by_direction)


def build_protocol(name: str, benchmark: Benchmark, **kwargs: Any) -> EvalProtocol:
    """`loo` or `standard` by name (the CLI's entry point)."""
    if name == "loo":
        return loo_protocol(benchmark, **kwargs)
    if name == "standard":
        return standard_protocol(benchmark, **kwargs)
    raise ConfigError(f"unknown protocol {name!r}: choose loo or standard")


def read_json_file(path: str | Path | None) -> Any:
    """A variants or image-queries JSON file's content (None without a path)."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RsrtError(f"cannot read {path}: {exc}") from exc
