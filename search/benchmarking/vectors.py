"""Vectors of the scale corpus's distinct variant texts, computed once per encoder and cached.

An ingest run fed these vectors measures the pipeline and the engine alone: the "writing only"
figure beside the end-to-end one.

Images of the scale corpus share variant texts, hence vectors; real VLM output never repeats, and
an HNSW graph full of exact duplicates is a different (harder) graph. So each image's copy of a
variant vector gets a small deterministic jitter (`image_vectors`): cos(original, copy) ≈ 0.95,
well inside the spread of real paraphrases, and every vector in the index is distinct.
`CorpusEncoder` hands those vectors to the ingest pipeline in corpus order.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..encoder import DEFAULT_BATCH_SIZE
from ..errors import RsrtError


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def pool_vectors(texts: list[str], encoder: Any, folder: Path,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[np.ndarray, float]:
    """(vectors, seconds spent encoding — 0 when read from the cache)."""
    name = str(getattr(encoder, "name", "encoder")).replace("/", "_")
    backend = str(getattr(encoder, "backend", "torch"))
    path = folder / f"pool-{texts_digest(texts)}-{name}-{backend}.npy"
    if path.exists():
        vectors = np.load(path)
        if vectors.shape[0] == len(texts):
            return vectors, 0.0
    t0 = time.perf_counter()
    vectors = np.asarray(encoder.encode(texts, batch_size=batch_size), dtype=np.float32)
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors, seconds


JITTER_SIGMA = 0.0168  # per dimension; ‖noise‖ ≈ 0.33 at d = 384, so cos(v, jittered v) ≈ 0.95
_CHUNK = 1000  # images per random draw: fixed, so the vectors never depend on how many are drawn


def image_vectors(pool: np.ndarray, rows: np.ndarray, seed: int, sigma: float = JITTER_SIGMA) -> np.ndarray:
    """(images, 5, d) float32: each image's variant vectors, jittered per image, L2-normalised."""
    out = np.empty((len(rows), rows.shape[1], pool.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), _CHUNK):
        block = rows[start:start + _CHUNK]
        rng = np.random.default_rng([seed, 7919, start // _CHUNK])
        noise = rng.standard_normal((_CHUNK, rows.shape[1], pool.shape[1]), dtype=np.float32)[:len(block)]
        vectors = pool[block] + sigma * noise
        vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
        out[start:start + len(block)] = vectors
    return out


class CorpusEncoder:
    """Answers `encode()` with the corpus's own vectors, in corpus order, checking every text.

    Only for a fresh index fed the corpus file from its start (what the harness does): the k-th text
    the pipeline encodes is image k // 5's variant k % 5. A text out of step is an error, not a guess.
    """

    def __init__(self, texts_in_order: list[str], vectors: np.ndarray, name: str) -> None:
        self.texts = texts_in_order
        self.vectors = vectors.reshape(-1, vectors.shape[-1])
        self.name = name
        self.backend = "corpus"
        self.position = 0

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        start, end = self.position, self.position + len(texts)
        if self.texts[start:end] != list(texts):
            raise RsrtError(f"corpus encoder out of step at text {start}: the pipeline must read the corpus "
                            "file from its first line into a fresh index")
        self.position = end
        return self.vectors[start:end]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "dimension": self.dimension, "normalized": True}
