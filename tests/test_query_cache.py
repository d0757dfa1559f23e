"""The query-vector cache: equal vectors, no second encode, LRU bound, disabled, threads, same hits as without."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import build_index, run_cli
from rsrt.search.encoder import get_encoder
from rsrt.search.query_cache import QueryVectorCache
from rsrt.search.request import SearchRequest
from rsrt.search.schema import ImageRecord, Variant
from rsrt.search.searcher import Searcher


class CountingEncoder:
    """A real encoder wrapped to count encode calls (the engine is not involved here)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.backend = inner.name, inner.backend
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def encode(self, texts, batch_size=None):
        with self._lock:
            self.calls += 1
        return self.inner.encode(texts, batch_size=batch_size)

    def info(self):
        return self.inner.info()


@pytest.fixture(scope="module")
def encoder():
    return CountingEncoder(get_encoder())


def test_hit_returns_equal_vector_without_encoding_again(encoder) -> None:
    cache = QueryVectorCache(8)
    direct = get_encoder().encode(["a harbour with boats"])[0]
    before = encoder.calls
    first = cache.vector(encoder, "a harbour with boats")
    second = cache.vector(encoder, "a harbour with boats")
    assert encoder.calls == before + 1
    assert first.dtype == np.float32 and np.array_equal(first, direct) and np.array_equal(second, direct)
    assert (cache.hits, cache.misses) == (1, 1)


def test_lru_evicts_least_recently_used(encoder) -> None:
    cache = QueryVectorCache(2)
    cache.vector(encoder, "a")
    cache.vector(encoder, "b")
    cache.vector(encoder, "a")  # a is now the most recent
    cache.vector(encoder, "c")  # evicts b
    assert len(cache) == 2
    calls = encoder.calls
    cache.vector(encoder, "a")
    cache.vector(encoder, "c")
    assert encoder.calls == calls
    cache.vector(encoder, "b")
    assert encoder.calls == calls + 1


def test_disabled_cache_always_encodes(encoder) -> None:
    cache = QueryVectorCache(0)
    calls = encoder.calls
    one, two = cache.vector(encoder, "fields"), cache.vector(encoder, "fields")
    assert encoder.calls == calls + 2 and len(cache) == 0 and np.array_equal(one, two)
    with pytest.raises(ValueError):
        QueryVectorCache(-1)


def test_keys_separate_backends(encoder) -> None:
    class Other(CountingEncoder):
        pass

    other = Other(get_encoder())
    other.backend = "onnx"
    cache = QueryVectorCache(8)
    cache.vector(encoder, "forest")
    cache.vector(other, "forest")
    assert len(cache) == 2


def test_threads_share_one_cache(encoder) -> None:
    cache = QueryVectorCache(16)
    texts = ["a stadium", "a river town", "an airport runway", "green farmland"]
    expected = {t: get_encoder().encode([t])[0] for t in texts}
    calls = encoder.calls
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: (t, cache.vector(encoder, t)), texts * 25))
    assert all(np.array_equal(v, expected[t]) for t, v in got)
    assert len(cache) == len(texts)
    assert encoder.calls - calls <= 8 * len(texts)  # racing misses may both encode; hits never do
    assert cache.hits + cache.misses == 100


SCENES = ["Ships moored in a grey harbour", "Airplanes beside a long runway", "Dense forest on hills",
          "Farmland fields in green and brown", "An oval stadium with a green pitch", "A river through a town"]


def _record(i: int) -> ImageRecord:
    text = SCENES[i % len(SCENES)]
    lon, lat = (i % 10) * 1.0, 40 + (i // 10) * 1.0
    return ImageRecord(image_id=f"q-{i:03d}", source_uri=f"file:///archive/q-{i:03d}.tif", collection="aerial",
                       datetime="2020-01-01T00:00:00Z",
                       geometry={"type": "Polygon", "coordinates": [[[lon, lat], [lon + 0.5, lat],
                                                                     [lon + 0.5, lat + 0.5], [lon, lat + 0.5],
                                                                     [lon, lat]]]},
                       bbox=[lon, lat, lon + 0.5, lat + 0.5], properties={},
                       variants=[Variant(one_sentence=f"{text} (view {j}).", feature="scene", caption=f"{text}; {i}.")
                                 for j in range(3)])


@pytest.mark.integration
def test_searcher_same_hits_with_and_without_cache(os_client, index_name, tmp_path, encoder) -> None:
    build_index(os_client, index_name, [_record(i) for i in range(24)], tmp_path / "ledger")
    cached = Searcher(os_client, index_name, encoder=encoder)
    plain = Searcher(os_client, index_name, encoder=get_encoder(), query_cache=QueryVectorCache(0))
    for mode in ("dense", "hybrid"):
        for offset in (0, 5, 10):  # paging re-sends the same text
            request = SearchRequest(text="boats in a harbour", mode=mode, k=5, offset=offset)
            a, b = cached.search(request), plain.search(request)
            assert [(h.image_id, h.score) for h in a.hits] == [(h.image_id, h.score) for h in b.hits]
            assert a.hits
    assert len(cached.query_cache) == 1 and cached.query_cache.hits >= 5


@pytest.mark.integration
def test_end_to_end_latency_encodes_every_query_even_when_measured_twice(os_client, index_name, tmp_path,
                                                                         encoder) -> None:
    """The benchmark's end-to-end pass times encoding: a vector cached by an earlier pass must not answer."""
    from rsrt.search.benchmarking.query import query_latency

    build_index(os_client, index_name, [_record(i) for i in range(24)], tmp_path / "ledger")
    searcher = Searcher(os_client, index_name, encoder=encoder)
    texts = [f"{scene} seen from above" for scene in SCENES]
    for _ in range(2):
        before = encoder.calls
        query_latency(searcher, texts, ("dense",), warmup=0, candidates=10)
        # one batch call for the engine pass's vectors, then one per text in the timed end-to-end pass
        assert encoder.calls - before == 1 + len(texts)


@pytest.mark.integration
def test_bench_encode_query_cli(cli_env) -> None:
    result = run_cli(["bench", "encode-query", "--backends", "torch", "--n", "5", "--warmup", "1",
                      "--threads", "0", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["backend"] for r in rows] == ["torch", "cache-hit"]
    assert rows[0]["texts"] == 5 and rows[0]["p50_ms"] > 0 and rows[0]["min_cosine_vs_torch"] == 1.0
    assert rows[1]["encoder_calls_on_hits"] == 0
