"""The query-vector cache: the same query text is encoded once per process, not once per page.

Why: encoding a query (~15 ms on torch, 2 cores) costs more than the dense search itself (~2 ms), and the
STAC API's paging re-sends the same `q` for every page. Used by the `Searcher`'s query encoding only; ingest
encodes each text once anyway. Keyed by (encoder name, backend, text): backends give near-identical, not
identical, vectors, so one backend's vector never answers for another's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_QUERY_CACHE_SIZE = 1024  # 1024 × 384 float32 ≈ 1.5 MiB for MiniLM

CacheKey = tuple[str, str, str]


class QueryVectorCache:
    """A bounded, thread-safe LRU of float32 query vectors; `max_entries=0` disables it (every call encodes).

    Two threads missing on the same text may both encode it (the lock is not held while encoding, so one
    slow encode never blocks hits); both get the same vector and one entry is kept.
    """

    def __init__(self, max_entries: int = DEFAULT_QUERY_CACHE_SIZE) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be ≥ 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def get(self, key: CacheKey) -> np.ndarray | None:
        """The cached vector (now the most recently used), or None."""
        with self._lock:
            vector = self._entries.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: CacheKey, vector: np.ndarray) -> np.ndarray:
        """Store a read-only float32 copy (callers share it), evicting the least recently used beyond the bound."""
        stored = np.array(vector, dtype=np.float32, copy=True)
        stored.setflags(write=False)
        if not self.enabled:
            return stored
        with self._lock:
            self._entries[key] = stored
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return stored

    def vector(self, encoder: Any, text: str) -> np.ndarray:
        """`encoder.encode([text])[0]` (an rsrt `Encoder`: `.name`, `.backend`, `.encode`), from the cache if there."""
        return self.get_or_compute(cache_key(encoder, text), lambda: encoder.encode([text])[0])

    def get_or_compute(self, key: CacheKey, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if not self.enabled:
            return np.asarray(compute(), dtype=np.float32)
        found = self.get(key)
        if found is not None:
            return found
        return self.put(key, compute())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


def cache_key(encoder: Any, text: str) -> CacheKey:
    """(name, backend, text); an encoder without a backend attribute (a caller's own) counts as its class name."""
    return (str(encoder.name), str(getattr(encoder, "backend", type(encoder).__name__)), text)
