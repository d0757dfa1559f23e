"""The performance harness: a deterministic corpus, honest exact references, and `rsrt bench all` end to end.

Timings are printed by the harness, never asserted here; these tests check that what it measures is
what it says it measures.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from rsrt.ingest.sources import CaptionsJsonlSource, SourceProblem
from rsrt.search.benchmarking.corpus import BENCH_FILTER, build_corpus, write_corpus
from rsrt.search.benchmarking.recall import exact_kth_scores
from rsrt.search.benchmarking.report import summary_markdown
from rsrt.search.benchmarking.vectors import CorpusEncoder, image_vectors
from rsrt.search.errors import RsrtError


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(seed=7)


def test_the_corpus_is_deterministic_and_reads_as_valid_captions(corpus, tmp_path):
    first = write_corpus(corpus, 500, tmp_path / "a")
    second = write_corpus(build_corpus(seed=7), 500, tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    assert hashlib.sha256((tmp_path / "a" / "images-500.jsonl").read_bytes()).hexdigest() == first["sha256"]
    assert write_corpus(build_corpus(seed=8), 500, tmp_path / "c")["sha256"] != first["sha256"]
    items = list(CaptionsJsonlSource(tmp_path / "a" / "images-500.jsonl"))
    assert not [i for i in items if isinstance(i, SourceProblem)]
    assert len(items) == 500 and len({r.image_id for r in items}) == 500
    record = items[0]
    assert len(record.variants) == 5 and all(v.one_sentence and v.feature and v.caption for v in record.variants)
    assert record.collection and record.datetime and record.geometry["type"] == "Polygon"


def test_variants_stay_within_one_scene_class_and_filters_have_work(corpus):
    records = list(corpus.records(4000))
    for record, rows in records[:200]:
        assert len(set(rows)) == 5
        assert {corpus.pool_class[r] for r in rows} == {f"{record.properties['scene_class']}"}
    west, south, east, north = BENCH_FILTER["bbox"]
    inside = [r for r, _ in records
              if r.bbox[0] < east and r.bbox[2] > west and r.bbox[1] < north and r.bbox[3] > south
              and "2020-01-01" <= r.datetime[:10] <= "2021-12-31"]
    assert 0.005 < len(inside) / len(records) < 0.06  # selective, as a portal's place + time query is


def test_jittered_vectors_are_distinct_deterministic_and_close_to_their_text(corpus):
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((50, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    rows = rng.integers(0, 50, size=(2500, 5))
    vectors = image_vectors(pool, rows, seed=7, sigma=0.05)
    assert vectors.shape == (2500, 5, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=2), 1.0, rtol=1e-5)
    assert np.array_equal(vectors[:1000], image_vectors(pool, rows[:1000], seed=7, sigma=0.05))
    assert len({v.tobytes() for v in vectors.reshape(-1, 16)}) == 2500 * 5
    cosines = np.sum(vectors * pool[rows], axis=2)
    assert cosines.min() > 0.9


def test_corpus_encoder_refuses_texts_out_of_step():
    vectors = np.eye(4, dtype=np.float32).reshape(2, 2, 4)
    encoder = CorpusEncoder(["a", "b", "c", "d"], vectors, "m")
    assert encoder.encode(["a", "b"]).tolist() == vectors[0].tolist()
    with pytest.raises(RsrtError, match="out of step at text 2"):
        encoder.encode(["d"])


def test_exact_reference_is_brute_force_max_over_variants():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 5, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    kth, scores = exact_kth_scores(queries, vectors, k=10, chunk=3)
    for q in range(7):
        slow = sorted(((1 + max(float(vectors[i, j] @ queries[q]) for j in range(5))) / 2 for i in range(300)),
                      reverse=True)
        assert kth[q] == pytest.approx(slow[9], abs=1e-5)
        assert sorted(scores[q].tolist(), reverse=True)[:10] == pytest.approx(slow[:10], abs=1e-5)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_all_runs_end_to_end_and_writes_its_report(cli_env, tmp_path, os_client):
    out = tmp_path / "bench"
    result = run_cli(["bench", "all", "--sizes", "300", "--end-to-end-sizes", "300", "--clients", "1,2",
                      "--queries", "12", "--skip", "encoder,sweep", "--pool-per-class", "6", "--out", str(out)],
                     cli_env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    entry = data["sizes"]["300"]
    assert entry["ingest_write_only"]["images"] == 300 and entry["ingest_end_to_end"]["images"] == 300
    assert set(entry["ingest_write_only"]["stage_share_of_wall"]) == {"read", "caption", "embed", "write"}
    e2e = entry["ingest_end_to_end"]
    assert e2e["encoder_backend"] == "torch" and e2e["encoder_alone_variants_per_second"] > 0
    for phase in ("as_loaded", "merged"):
        rows = entry[phase]["query"]
        assert {(r["mode"], r["clients"], r["filtered"]) for r in rows} == {
            (m, c, f) for m in ("lexical", "dense", "hybrid-server", "hybrid-client", "lexical-image",
                                 "hybrid-server-image", "hybrid-client-image") for c in (1, 2) for f in (False, True)}
        assert all(r["p50_ms"] > 0 and r["qps"] > 0 for r in rows)
        # On 300 images, ef_search 400 explores the whole graph: recall must be perfect.
        assert entry[phase]["recall"][-1]["ef_search"] == 400 and entry[phase]["recall"][-1]["recall_at_k"] == 1.0
    assert entry["merged"]["segments"] == 1
    assert entry["memory"]["node"]["heap_max_mb"] > 0 and entry["memory"]["python_peak_mb"] > 0
    summary = (out / "summary.md").read_text()
    assert "## 300 images" in summary and "kNN recall@10" in summary
    assert (out / "latency-vs-size.png").stat().st_size > 1000
    assert not os_client.indices.exists(index="rsrt-bench-300")  # cleaned up without --keep


@pytest.mark.integration
@pytest.mark.slow
def test_bench_end_to_end_alone_skips_what_needs_the_write_only_index(cli_env, tmp_path, os_client):
    out = tmp_path / "bench"
    result = run_cli(["bench", "all", "--sizes", "40", "--end-to-end-sizes", "40", "--pool-per-class", "6",
                      "--skip", "encoder,ingest,query,recall,sweep", "--out", str(out)], cli_env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads((out / "results.json").read_text())["sizes"]["40"]
    assert entry["ingest_end_to_end"]["images"] == 40 and "as_loaded" not in entry
    assert "write-only ingest skipped" in result.stdout
    assert not os_client.indices.exists(index="rsrt-bench-40-e2e")


def test_summary_names_what_missed_its_target():
    data = {"started": "x", "machine": {"cpus": 2}, "sizes": {"10": {"ingest_end_to_end": {
        "images": 10, "wall_seconds": 1.0, "docs_per_second": 10.0, "variants_per_second": 50.0,
        "stage_share_of_wall": {"read": 0.1, "caption": 0.0, "embed": 0.9, "write": 0.2},
        "segments_after_load": 1, "store_bytes": 2**20, "encoder_alone_variants_per_second": 100.0}}}}
    assert "**50 %** of it (target ≥ 90 %)" in summary_markdown(data)


def test_bad_sizes_are_a_clear_usage_error(cli_env, tmp_path: Path):
    result = run_cli(["bench", "corpus", "--size", "ten", "--out", str(tmp_path)], cli_env)
    assert result.returncode == 2 and "expected comma-separated integers" in result.stderr
    assert "Traceback" not in result.stderr
    for args in (["bench", "query", "--candidates", "0"], ["eval", "--benchmark", "rsitmd", "--candidates", "0"],
                 ["bench", "all", "--pool-per-class", "4"]):
        result = run_cli(args, cli_env)
        assert result.returncode == 2 and "Traceback" not in result.stderr, args
        assert args[-2] in result.stderr, args  # the message names the option at fault


def test_transport_comparison_alternates_its_order_and_reports_medians_and_overheads():
    from rsrt.search.benchmarking.transport import round_order, side_label, summarize

    assert [round_order(n) for n in range(3)] == [("base", "compare"), ("compare", "base"), ("base", "compare")]
    assert side_label("http://127.0.0.1:9200", False) == "http"
    assert side_label("https://127.0.0.1:9200", True) == "https+auth"

    def row(side: str, p50: float, p95: float, qps: float, mode: str = "dense") -> dict:
        return {"side": side, "mode": mode, "clients": 1, "p50_ms": p50, "p95_ms": p95, "qps": qps}

    rows = [row("base", 4.0, 6.0, 200.0), row("compare", 5.0, 9.0, 160.0),
            row("compare", 50.0, 90.0, 20.0), row("base", 40.0, 60.0, 25.0),  # a burst of load: both sides slow
            row("base", 4.2, 6.2, 190.0), row("compare", 5.4, 8.0, 150.0),
            row("base", 3.0, 3.0, 300.0, mode="lexical")]  # a mode measured on one side only: no comparison
    [entry] = summarize(rows)
    assert entry["mode"] == "dense" and entry["rounds"] == 3
    assert (entry["base_p50_ms"], entry["compare_p50_ms"]) == (4.2, 5.4)  # medians, not means
    assert entry["overhead_p50_ms"] == 1.2 and entry["overhead_p50_pct"] == 28.6
    assert entry["overhead_p95_ms"] == 2.8 and entry["overhead_p95_pct"] == 45.2
    assert (entry["base_qps"], entry["compare_qps"], entry["qps_loss_pct"]) == (190.0, 150.0, 21.1)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_tls_compares_plain_and_secure_nodes_holding_the_same_images(cli_env, tmp_path, os_client,
                                                                          secure_node):
    from rsrt.search._node.security import INGEST, READER
    from rsrt.search.index import delete_index

    build = ["bench", "all", "--sizes", "30", "--pool-per-class", "6", "--skip", "encoder,e2e,query,recall,sweep",
             "--keep", "--no-merge", "--out", str(tmp_path / "build")]
    index = "rsrt-bench-30"
    try:
        for env in (cli_env, secure_node.env(INGEST, cli_env)):  # the secure one as the least-privilege writer
            built = secure_node.run(build, env, timeout=600)
            assert built.returncode == 0, built.stderr[-3000:]
        # `rsrt bench query` as the portal's reader: no cluster inventory (nodes/info) needed
        queried = secure_node.run(["bench", "query", "--index", index, "--n", "3", "--modes", "dense"],
                                  secure_node.env(READER, cli_env), timeout=600)
        assert queried.returncode == 0, queried.stderr[-3000:]
        assert f"{index}: 30 images" in queried.stdout
        out = tmp_path / "tls.json"
        env = {**cli_env, "RSRT_COMPARE_PASSWORD": secure_node.passwords[READER]}
        result = secure_node.run(["bench", "tls", "--index", index, "--compare-url", secure_node.url,
                                  "--compare-user", READER, "--compare-ca-file", secure_node.ca_file,
                                  "--n", "6", "--clients", "1,2", "--modes", "lexical,dense", "--rounds", "2",
                                  "--cold-repeats", "2", "--out", str(out)], env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        data = json.loads(out.read_text())
        assert data["sides"]["base"]["label"] == "http" and data["sides"]["compare"]["label"] == "https+auth"
        assert READER in data["sides"]["compare"]["connection"]
        assert data["sides"]["base"]["images"] == data["sides"]["compare"]["images"] == 30
        assert [(x["round"], x["side"]) for x in data["load"]] == [(1, "base"), (1, "compare"),
                                                                   (2, "compare"), (2, "base")]
        assert len(data["rows"]) == 2 * 2 * 2 * 2  # rounds × sides × modes × client counts
        assert {(e["mode"], e["clients"]) for e in data["summary"]} == {
            (m, c) for m in ("lexical", "dense") for c in (1, 2)}
        for e in data["summary"]:
            assert e["rounds"] == 2
            assert e["overhead_p50_ms"] == pytest.approx(e["compare_p50_ms"] - e["base_p50_ms"], abs=0.011)
        assert "tls_handshake_p50_ms" in data["new_connection"]["compare"]["handshake"]
        assert "tls_handshake_p50_ms" not in data["new_connection"]["base"]["handshake"]
        assert "https+auth" in result.stdout and "TLS handshake p50" in result.stdout
        assert secure_node.passwords[READER] not in out.read_text()
    finally:
        delete_index(os_client, index)
        delete_index(secure_node.client(INGEST), index)
