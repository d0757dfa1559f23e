"""Scores evaluation protocols through the real query layer on OpenSearch (the `Ranker` hook).

Each corpus is written as real rsrt documents (the index contract of `rsrt.search.index`) into two
indices: one document per image with its texts as variants (text→image, best variant wins) and one
document per text (image→text). Queries then go through `Searcher.search`, mode by mode, exactly as
users' queries do; only the query vectors are computed once up front (a distinct text is embedded once).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from opensearchpy import OpenSearch, helpers

from ..encoder import get_encoder
from ..fusion import FusionSpec
from ..index import create_index, delete_index, to_document
from ..schema import ImageRecord, Variant
from ..searcher import Searcher
from .protocols import Corpus, Direction

ENGINE_MODES = ("lexical", "dense", "hybrid", "hybrid-rrf")


class _VectorCache:
    """Each distinct text embedded once per run (loo folds and modes reuse the same captions)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> list[np.ndarray]:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.update(zip(new, self.encoder.encode(new, batch_size=128), strict=True))
        return [self.cache[t] for t in texts]


class OpenSearchIndexes:
    """The per-corpus indices, shared by every mode of one evaluation run."""

    def __init__(self, client: OpenSearch, prefix: str = "rsrt-eval", encoder_name: str = "all-MiniLM-L6-v2",
                 keep: bool = False) -> None:
        self.client = client
        self.prefix = re.sub(r"[^a-z0-9-]", "-", prefix.lower())
        self.encoder = get_encoder(encoder_name)
        self.vectors = _VectorCache(self.encoder)
        self.keep = keep
        self._ready: dict[tuple[str, str], str] = {}

    def alias(self, corpus: Corpus, layout: str) -> str:
        """`<prefix>-<layout>-<hash of the corpus id>`: stable across modes, safe as an index name."""
        digest = hashlib.sha1(corpus.corpus_id.encode()).hexdigest()[:10]
        return f"{self.prefix}-{layout}-{digest}"

    def ensure(self, corpus: Corpus, layout: str) -> str:
        key = (corpus.corpus_id, layout)
        if key in self._ready:
            return self._ready[key]
        alias = self.alias(corpus, layout)
        delete_index(self.client, alias)
        create_index(self.client, self.encoder.info(), alias)
        records = self._records(corpus, layout)
        texts = [v.labelled_text() for r in records for v in r.variants]
        vectors = self.vectors(texts)
        offset = 0
        for record in records:
            record.vectors = [list(map(float, v)) for v in vectors[offset:offset + len(record.variants)]]
            offset += len(record.variants)
        actions = ({"_index": alias, "_id": r.image_id, "_source": to_document(r)} for r in records)
        helpers.bulk(self.client, actions, chunk_size=500, max_retries=5, request_timeout=120)
        self.client.indices.refresh(index=alias)
        self._ready[key] = alias
        return alias

    @staticmethod
    def _records(corpus: Corpus, layout: str) -> list[ImageRecord]:
        def variant(doc) -> Variant:
            return Variant(**dict(doc.fields)) if doc.fields else Variant(caption=doc.text)

        if layout == "images":
            return [ImageRecord(image_id=image_id, variants=[variant(d) for d in docs])
                    for image_id, docs in corpus.by_image().items()]
        return [ImageRecord(image_id=doc.doc_id, variants=[variant(doc)], properties={"image": doc.image_id})
                for doc in corpus.docs]

    def close(self) -> None:
        if not self.keep:
            for alias in self._ready.values():
                delete_index(self.client, alias)
        self._ready.clear()


class OpenSearchRanker:
    """One retrieval mode through `Searcher.search` on the shared indices."""

    def __init__(self, indexes: OpenSearchIndexes, mode: str, fusion: FusionSpec | None = None,
                 candidates: int = 100, concurrency: int = 4, hybrid_backend: str = "auto") -> None:
        if mode not in ENGINE_MODES:
            raise ValueError(f"mode must be one of {ENGINE_MODES}")
        self.indexes = indexes
        self.name = mode
        self.mode = "hybrid" if mode.startswith("hybrid") else mode
        self.fusion = fusion or (FusionSpec("rrf") if mode == "hybrid-rrf" else FusionSpec())
        self.candidates = candidates
        self.concurrency = concurrency
        self.hybrid_backend = hybrid_backend
        self._corpus: Corpus | None = None

    def index(self, corpus: Corpus) -> None:
        self._corpus = corpus

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        assert self._corpus is not None, "index() comes first"
        alias = self.indexes.ensure(self._corpus, "images" if direction == "t2i" else "texts")
        searcher = Searcher(self.indexes.client, alias, encoder=self.indexes.encoder)
        vectors = self.indexes.vectors(list(queries)) if self.mode != "lexical" else [None] * len(queries)

        def one(item: tuple[str, Any]) -> list[tuple[str, float]]:
            text, vector = item
            results = searcher.search(text, self.mode, k, fusion=self.fusion, candidates=max(self.candidates, k),
                                      hybrid_backend=self.hybrid_backend, matched_variants=False,
                                      vector=None if vector is None else [float(x) for x in vector])
            return [(hit.image_id, hit.score) for hit in results.hits]

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, zip(queries, vectors, strict=True)))

    def config(self) -> dict[str, Any]:
        return {"engine": "opensearch", "mode": self.mode, "encoder": self.indexes.encoder.name,
                "fusion": None if self.mode != "hybrid" else {
                    "technique": self.fusion.technique, "weights": list(self.fusion.weights),
                    "rank_constant": self.fusion.rank_constant},
                "candidates": self.candidates, "hybrid_backend": self.hybrid_backend}
