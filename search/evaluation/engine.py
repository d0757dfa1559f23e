"""Scores evaluation protocols through the real query layer on OpenSearch (the `Ranker` hook).

Each corpus is written as real rsrt documents (the index contract of `rsrt.search.index`) into two
indices: one document per image with its texts as variants (text→image, best variant wins) and one
document per text (image→text). Queries then go through `Searcher.search`, condition by condition,
exactly as users' queries do; only the query vectors are computed once up front (a distinct text is
embedded once).

Isolation: every run has its own id (`new_run_id`), in its index names
(`rsrt-eval-<benchmark>-<protocol>-<run id>-<layout>-<corpus hash>`) and in each index's `_meta`
(`EVAL_META`); `close()` deletes only indices this run created and whose `_meta` says so, so two
evaluations on one cluster never touch each other's indices. Transient cluster errors (HTTP 429,
rejected executions, timeouts, lost connections) are retried with back-off by the ingest writer's
`RetryPolicy`, while indexing and while querying.

A *condition* is what one evaluated row measures: a `Mode` and, for hybrid, how the two lists are
fused (`CONDITIONS`). Its name is what `rsrt eval --modes` takes and what reports and results.json call
the row's "mode".
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import opensearchpy
from opensearchpy import OpenSearch

from ..encoder import DEFAULT_BACKEND, DEFAULT_ENCODER, get_encoder
from ..errors import ClusterError, ClusterUnavailable, from_opensearch
from ..fusion import DEFAULT_RANK_CONSTANT, DEFAULT_WEIGHTS, FusionSpec
from ..index import create_index, delete_index, owns
from ..request import EmbedSite, FusionSite, Mode, SearchRequest
from ..schema import ImageRecord, Variant
from ..searcher import Searcher
from .protocols import Corpus, Direction

EVAL_META = "rsrt_evaluation"  # `_meta` key of an evaluation index: {"run": <run id>, "benchmark", "protocol"}


def new_run_id() -> str:
    """A short random id that makes one run's index names its own (8 hex digits)."""
    return secrets.token_hex(4)


def _retry_policy(attempts: int) -> Any:
    from rsrt.ingest.writer import RetryPolicy  # the one retry budget (ingest/writer.py)

    return RetryPolicy(attempts=attempts)


# Condition name → (mode, fusion for hybrid); a run's --weights tune "hybrid", its --rank-constant "hybrid-rrf".
CONDITIONS: dict[str, tuple[Mode, FusionSpec | None]] = {
    "lexical": (Mode.LEXICAL, None),
    "dense": (Mode.DENSE, None),
    "hybrid": (Mode.HYBRID, FusionSpec("minmax")),
    "hybrid-rrf": (Mode.HYBRID, FusionSpec("rrf")),
}


def condition_fusion(name: str, weights: Sequence[float] = DEFAULT_WEIGHTS,
                     rank_constant: int = DEFAULT_RANK_CONSTANT) -> FusionSpec | None:
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
    """The per-corpus indices of one evaluation run, shared by every mode of it.

    Names carry the run id, so concurrent runs never meet; nothing is deleted before creating (a
    name already taken is refused). `close()` deletes what this run created (unless `keep`), also
    after a failure: `run_evaluation` calls it in a `finally`.
    """

    def __init__(self, client: OpenSearch, prefix: str = "rsrt-eval", encoder_name: str = DEFAULT_ENCODER,
                 keep: bool = False, encoder_backend: str = DEFAULT_BACKEND,
                 embed: EmbedSite | str = EmbedSite.CLIENT, run_id: str | None = None,
                 retries: int = 6) -> None:
        self.client = client
        self.embed = EmbedSite(embed)  # cluster: each index gets the encoder's ml-commons model (deployed once)
        self.run_id = run_id or new_run_id()
        self.prefix = re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{self.run_id}".lower())
        self.encoder = get_encoder(encoder_name, encoder_backend)
        self.vectors = _VectorCache(self.encoder)
        self.keep = keep
        self.retry = _retry_policy(retries)
        self._ready: dict[tuple[str, str], str] = {}
        self.created: list[str] = []  # aliases this run created (or began to), in order

    def encoder_info(self) -> dict[str, Any]:
        """Name, dimension and backend of the run's encoder: what every result and report records."""
        return {"name": self.encoder.name, "dimension": int(self.encoder.dimension), "backend": self.encoder.backend}

    def alias(self, corpus: Corpus, layout: str) -> str:
        """`<prefix>-<run id>-<layout>-<hash of the corpus id>`: stable across modes, safe as an index name."""
        digest = hashlib.sha1(corpus.corpus_id.encode()).hexdigest()[:10]
        return f"{self.prefix}-{layout}-{digest}"

    def _call(self, fn: Any, what: str) -> Any:
        """`fn()` under the retry budget (429s, timeouts, lost connections); other failures are rsrt errors."""
        try:
            return self.retry.call(lambda final: fn(), what, hint="run the evaluation again")
        except opensearchpy.OpenSearchException as exc:
            raise from_opensearch(exc) from None

    def ensure(self, corpus: Corpus, layout: str) -> str:
        key = (corpus.corpus_id, layout)
        if key in self._ready:
            return self._ready[key]
        alias = self.alias(corpus, layout)
        if self._call(lambda: self.client.indices.exists(index=alias), f"checking {alias!r}"):
            raise ClusterError(f"index {alias!r} exists already: another evaluation run has the same run id "
                               f"{self.run_id!r}; run again (a new id is drawn)")
        self.created.append(alias)
        name = self._call(lambda: create_index(self.client, self.encoder.info(), alias), f"creating {alias!r}")
        meta = self._call(lambda: self.client.indices.get_mapping(index=name), f"reading {name!r}")
        meta = next(iter(meta.values()))["mappings"].get("_meta", {})
        meta[EVAL_META] = {"run": self.run_id, "prefix": self.prefix}
        self._call(lambda: self.client.indices.put_mapping(index=name, body={"_meta": meta}), f"marking {name!r}")
        records = self._records(corpus, layout)
        texts = [v.labelled_text() for r in records for v in r.variants]
        vectors = self.vectors(texts)
        offset = 0
        for record in records:
            record.vectors = [list(map(float, v)) for v in vectors[offset:offset + len(record.variants)]]
            offset += len(record.variants)
        from rsrt.ingest.writer import write_documents  # the ingest pipeline's writer: one write path

        write_documents(self.client, alias, records, self.retry, chunk_size=500, request_timeout=120,
                        hint="run the evaluation again").raise_if_refused(alias)
        self._call(lambda: self.client.indices.refresh(index=alias), f"refreshing {alias!r}")
        if self.embed == EmbedSite.CLUSTER:
            from ..ml import deploy_model

            deploy_model(self.client, alias)  # same model hash: registered and deployed once, recorded per index
        self._ready[key] = alias
        return alias

    def search(self, searcher: Searcher, request: SearchRequest) -> Any:
        """`searcher.search(request)`, retried on transient cluster errors (the error boundary made them
        `ClusterUnavailable`s: 429, rejected executions, timeouts, lost connections)."""
        from rsrt.ingest.writer import _Overloaded  # what RetryPolicy retries besides opensearch-py's own errors

        def attempt(final: bool) -> Any:
            try:
                return searcher.search(request)
            except ClusterUnavailable as exc:
                if final:
                    raise
                raise _Overloaded(str(exc)) from None

        return self.retry.call(attempt, f"querying {searcher.index!r}", hint="run the evaluation again")

    def _is_ours(self, alias: str) -> bool:
        """Whether every `<alias>-v*` index is an rsrt index of this run (its `_meta` mark, see `EVAL_META`)."""
        try:
            mappings = self.client.indices.get_mapping(index=f"{alias}-v*")
        except opensearchpy.NotFoundError:
            return False
        metas = [body["mappings"].get("_meta", {}) for body in mappings.values()]
        # No mark yet: the run stopped between create and mark (the name is this run's, checked free before).
        return bool(metas) and all(owns(meta, alias) and meta.get(EVAL_META, {"run": self.run_id}).get("run")
                                   == self.run_id for meta in metas)

    @staticmethod
    def _records(corpus: Corpus, layout: str) -> list[ImageRecord]:
        def variant(doc) -> Variant:
            return Variant(**dict(doc.fields)) if doc.fields else Variant(caption=doc.text)

        if layout == "images":
            return [ImageRecord(image_id=image_id, variants=[variant(d) for d in docs])
                    for image_id, docs in corpus.by_image().items()]
        return [ImageRecord(image_id=doc.doc_id, variants=[variant(doc)], properties={"image": doc.image_id})
                for doc in corpus.docs]

    def index_names(self) -> list[str]:
        """The aliases this run created (what `--keep-indices` prints)."""
        return list(self.created)

    def close(self) -> list[str]:
        """Deletes this run's indices (unless `keep`); returns the aliases deleted.

        Only aliases this run created and whose indices carry its run id in `_meta` are deleted
        (`delete_index` then also checks rsrt's ownership); a cluster gone away leaves them, named in
        the `ClusterError` raised after trying the rest.
        """
        deleted: list[str] = []
        failed: list[str] = []
        if not self.keep:
            for alias in self.created:
                if failed:  # the cluster failed the last one after its retries: do not wait again per index
                    failed.append(alias)
                    continue
                try:
                    if self._call(lambda a=alias: self._is_ours(a), f"checking {alias!r}"):
                        self._call(lambda a=alias: delete_index(self.client, a), f"deleting {alias!r}")
                        deleted.append(alias)
                except ClusterError:
                    failed.append(alias)
            self.created = [a for a in self.created if a in failed]
        self._ready.clear()
        if failed:
            raise ClusterError(f"could not delete evaluation indices {', '.join(failed)} "
                               "(delete them with `rsrt index delete`)")
        return deleted


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
            return [(hit.image_id, hit.score) for hit in self.indexes.search(searcher, request).hits]

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, zip(queries, vectors, strict=True)))

    def config(self) -> dict[str, Any]:
        """What results.json records of this condition (keys as before the `fusion_site` rename)."""
        return {"engine": "opensearch", "mode": self.mode.value, "encoder": self.indexes.encoder_info(),
                "fusion": None if self.mode is not Mode.HYBRID else {
                    "technique": self.fusion.technique, "weights": list(self.fusion.weights),
                    "rank_constant": self.fusion.rank_constant},
                "candidates": self.candidates, "hybrid_backend": self.fusion_site.value,
                "embed": self.indexes.embed.value}
