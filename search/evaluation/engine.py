"""Scores evaluation protocols through the real query layer on OpenSearch (the `Ranker` hook).

Each corpus is written as real rsrt documents (the index contract of `rsrt.search.index`) into two
indices: one document per image with its texts as variants (text→image, best variant wins) and one
document per text (image→text). Queries then go through `Searcher.search`, condition by condition,
exactly as users' queries do; only the query vectors are computed once up front (a distinct text is
embedded once).

A *condition* is what one evaluated row measures: a `Mode` and, for hybrid, how the two lists are
fused (`CONDITIONS`). Its name is what `rsrt eval --modes` takes and what reports and results.json call
the row's "mode".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from opensearchpy import OpenSearch

from ..encoder import DEFAULT_BACKEND, DEFAULT_ENCODER, get_encoder
from ..fusion import FusionSpec
from ..index import create_index, delete_index
from ..request import EmbedSite, FusionSite, Mode, SearchRequest
from ..schema import ImageRecord, Variant
from ..searcher import Searcher
from .protocols import Corpus, Direction

# Condition name → (mode, fusion for hybrid); a run's --weights tune "hybrid", its --rank-constant "hybrid-rrf".
CONDITIONS: dict[str, tuple[Mode, FusionSpec | None]] = {
    "lexical": (Mode.LEXICAL, None),
    "dense": (Mode.DENSE, None),
    "hybrid": (Mode.HYBRID, FusionSpec("minmax")),
    "hybrid-rrf": (Mode.HYBRID, FusionSpec("rrf")),
}


def condition_fusion(name: str, weights: Sequence[float] = (0.5, 0.5), rank_constant: int = 60) -> FusionSpec | None:
    """The fusion of condition `name` with a run's settings: weights for min-max, the rank constant for RRF."""
    fusion = CONDITIONS[name][1]
    if fusion is None:
        return None
    if fusion.technique == "rrf":
        return replace(fusion, rank_constant=rank_constant)
    return replace(fusion, weights=(float(weights[0]), float(weights[1])))


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

    def __init__(self, client: OpenSearch, prefix: str = "rsrt-eval", encoder_name: str = DEFAULT_ENCODER,
                 keep: bool = False, encoder_backend: str = DEFAULT_BACKEND,
                 embed: EmbedSite | str = EmbedSite.CLIENT) -> None:
        self.client = client
        self.embed = EmbedSite(embed)  # cluster: each index gets the encoder's ml-commons model (deployed once)
        self.prefix = re.sub(r"[^a-z0-9-]", "-", prefix.lower())
        self.encoder = get_encoder(encoder_name, encoder_backend)
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
        from rsrt.ingest.writer import write_documents  # the ingest pipeline's writer: one write path

        write_documents(self.client, alias, records, chunk_size=500, request_timeout=120).raise_if_refused(alias)
        self.client.indices.refresh(index=alias)
        if self.embed == EmbedSite.CLUSTER:
            from ..ml import deploy_model

            deploy_model(self.client, alias)  # same model hash: registered and deployed once, recorded per index
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
    """One condition (see `CONDITIONS`) through `Searcher.search` on the shared indices."""

    def __init__(self, indexes: OpenSearchIndexes, condition: str, fusion: FusionSpec | None = None,
                 candidates: int = 100, concurrency: int = 4, fusion_site: FusionSite | str = FusionSite.AUTO) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {tuple(CONDITIONS)}")
        self.indexes = indexes
        self.name = condition
        self.mode = CONDITIONS[condition][0]
        self.fusion = fusion or CONDITIONS[condition][1] or FusionSpec()
        self.candidates = candidates
        self.concurrency = concurrency
        self.fusion_site = FusionSite(fusion_site)
        self._corpus: Corpus | None = None

    def index(self, corpus: Corpus) -> None:
        self._corpus = corpus

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        assert self._corpus is not None, "index() comes first"
        alias = self.indexes.ensure(self._corpus, "images" if direction == "t2i" else "texts")
        searcher = Searcher(self.indexes.client, alias, encoder=self.indexes.encoder)
        cluster = self.indexes.embed == EmbedSite.CLUSTER  # the cluster embeds each query text itself
        vectors = ([None] * len(queries) if self.mode is Mode.LEXICAL or cluster
                   else self.indexes.vectors(list(queries)))

        def one(item: tuple[str, Any]) -> list[tuple[str, float]]:
            text, vector = item
            request = SearchRequest(text, self.mode, k, fusion=self.fusion, candidates=max(self.candidates, k),
                                    fusion_site=self.fusion_site, matched_variants=False, embed=self.indexes.embed,
                                    vector=None if vector is None else [float(x) for x in vector])
            return [(hit.image_id, hit.score) for hit in searcher.search(request).hits]

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, zip(queries, vectors, strict=True)))

    def config(self) -> dict[str, Any]:
        """What results.json records of this condition (keys as before the `fusion_site` rename)."""
        return {"engine": "opensearch", "mode": self.mode.value, "encoder": self.indexes.encoder.name,
                "fusion": None if self.mode is not Mode.HYBRID else {
                    "technique": self.fusion.technique, "weights": list(self.fusion.weights),
                    "rank_constant": self.fusion.rank_constant},
                "candidates": self.candidates, "hybrid_backend": self.fusion_site.value,
                "embed": self.indexes.embed.value}
