"""`rsrt bench scale` and the duplicate-free corpus: what is measured is what the report says.

No timing is asserted; the checks are on recall, files and completeness, which can fail.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from rsrt.search.benchmarking.corpus import build_distinct_corpus, write_corpus
from rsrt.search.errors import ConfigError


@pytest.fixture(scope="module")
def distinct():
    return build_distinct_corpus(400, seed=7)


def test_the_distinct_corpus_never_repeats_a_text_and_is_deterministic(distinct, tmp_path):
    texts = distinct.texts()
    assert len(texts) == 2000 and len(set(texts)) == 2000
    first = write_corpus(distinct, 400, tmp_path / "a")
    second = write_corpus(build_distinct_corpus(400, seed=7), 400, tmp_path / "b")
    assert first["sha256"] == second["sha256"] and first["kind"] == "distinct"
    records = list(distinct.records(400))
    assert [list(rows) for _, rows in records[:2]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    # each image's variants are its own, and of its own scene class
    record, rows = records[3]
    assert [v.labelled_text() for v in record.variants] == [texts[r] for r in rows]
    assert {distinct.pool_class[r] for r in rows} == {record.properties["scene_class"]}


def test_asking_more_images_than_the_distinct_corpus_holds_is_refused(distinct):
    with pytest.raises(ConfigError, match="has 400 images, not 401"):
        next(distinct.records(401))


def test_bench_scale_measures_both_storages_and_the_peers(cli_env, tmp_path, os_client):
    out = tmp_path / "scale"
    result = run_cli(["bench", "scale", "--size", "60", "--corpus", "distinct", "--quantizations", "none,sq",
                      "--candidates", "10,20", "--ef", "10,400", "--queries", "12", "--index-prefix",
                      "rsrt-test-scale", "--out", str(out)], cli_env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["corpus"]["kind"] == "distinct" and data["corpus"]["distinct_texts"] == 300
    fp32, sq = data["indices"]["none"], data["indices"]["sq"]
    assert fp32["load"]["images"] == sq["load"]["images"] == 60
    assert fp32["vectors"]["quantised_vectors"] == 0 and sq["vectors"]["quantised_vectors"] > 0
    assert sq["vectors"]["hot"] < fp32["vectors"]["hot"]  # 7-bit copies instead of float32 in the hot set
    # ef 400 over 60 images explores everything: exact, whatever the storage
    assert fp32["recall"][-1]["recall_at_k"] == 1.0
    assert sq["recall"][-1]["recall_at_k"] >= 0.9  # quantised scores may swap near-ties
    rows = {(r["mode"], r["candidates"], r["clients"]) for r in fp32["latency"]}
    assert ("hybrid-client", 10, 1) in rows and ("dense", 20, 1) in rows and ("dense", 100, 4) in rows
    assert all(r["e2e_p50_ms"] for r in fp32["latency"] if r["clients"] == 1)
    peers = data["peers"]["peers"]
    assert set(peers) == {"numpy", "faiss-hnsw", "opensearch"} and peers["numpy"]["recall_at_k"] == 1.0
    summary = (out / "summary.md").read_text()
    assert "| sq |" in summary and "faiss-hnsw" in summary
    assert not os_client.indices.exists(index="rsrt-test-scale-distinct-60")  # built here, so deleted here


def test_bad_scale_options_are_one_line(cli_env, tmp_path):
    result = run_cli(["bench", "scale", "--quantizations", "pq", "--out", str(tmp_path)], cli_env)
    assert result.returncode == 2 and "pq" in result.stderr and "Traceback" not in result.stderr
