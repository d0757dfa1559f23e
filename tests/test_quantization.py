"""Quantised vectors in the index contract (issue #18) on the real node: an `sq` index is made with the lucene
engine's scalar quantiser, records it, is searched like any other, writes quantised-vector files (.veq) that a
float32 index does not, and an existing index is never silently given the other storage."""

from __future__ import annotations

import pytest

from conftest import build_index, run_cli
from rsrt.search.benchmarking.disk import index_files, vector_memory
from rsrt.search.encoder import get_encoder
from rsrt.search.errors import ConfigError
from rsrt.search.index import (
    DEFAULT_QUANTIZATION,
    QUANTIZATIONS,
    create_index,
    index_stats,
    read_meta,
    read_quantization,
)
from rsrt.search.request import SearchRequest
from rsrt.search.schema import ImageRecord, Variant
from rsrt.search.searcher import Searcher

pytestmark = pytest.mark.integration

NO_MODEL = "--no-cluster-model"
SCENES = [
    ("harbour", "Ships are moored at a gray harbour", "ships (small) west; dock (large) east"),
    ("airport", "Airplanes park beside a long runway", "airplanes (medium) north; runway (large) south"),
    ("forest", "Dense green forest covers the hills", "trees (large) everywhere"),
    ("stadium", "An oval stadium with a green pitch", "stadium (large) center; parking (medium) north"),
]


def _records(count: int = 24) -> list[ImageRecord]:
    records = []
    for i in range(count):
        scene, sentence, feature = SCENES[i % len(SCENES)]
        records.append(ImageRecord(
            image_id=f"{scene}-{i:03d}", collection="aerial",
            variants=[Variant(one_sentence=f"{sentence} (view {j}).", feature=feature,
                              caption=f"{sentence}; seen from above in variant {j} of image {i}.")
                      for j in range(5)]))
    return records


def _embedding(os_client, name: str) -> dict:
    mapping = next(iter(os_client.indices.get_mapping(index=name).values()))["mappings"]
    return mapping["properties"]["variants"]["properties"]["embedding"]


def _files_after_flush(os_client, name: str) -> dict[str, int]:
    os_client.indices.refresh(index=name)
    os_client.indices.flush(index=name)
    os_client.indices.forcemerge(index=name, params={"max_num_segments": "1"})
    # the merged-away segments' files go only with a later commit: without it they are counted twice
    os_client.indices.refresh(index=name)
    os_client.indices.flush(index=name, params={"force": "true"})
    return index_files(os_client, name)


def test_the_default_is_float32_and_one_of_the_names():
    assert DEFAULT_QUANTIZATION == "none" and set(QUANTIZATIONS) == {"none", "sq"}


def test_an_sq_index_is_quantised_recorded_and_found_by_dense_search(os_client, index_name, tmp_path):
    encoder = get_encoder()
    name = create_index(os_client, encoder.info(), index_name, quantization="sq")
    method = _embedding(os_client, name)["method"]
    assert method["engine"] == "lucene" and method["parameters"]["encoder"]["name"] == "sq"
    assert method["parameters"]["m"] == 16  # the contract's HNSW parameters are kept beside the encoder
    meta = read_meta(os_client, index_name)
    assert meta["vectors"]["quantization"] == "sq"
    assert meta["vectors"]["method"]["parameters"]["encoder"] == {"name": "sq"}

    # the ingest path calls create_index without a quantization: it must write into the sq index as it is
    build_index(os_client, index_name, _records(), tmp_path / "ledger")
    assert read_quantization(os_client, name) == "sq"
    results = Searcher(os_client, index_name).search(
        SearchRequest("ships moored in a harbour", mode="dense", k=3))
    assert results.hits and all(hit.image_id.startswith("harbour-") for hit in results.hits), \
        [hit.image_id for hit in results.hits]
    assert index_stats(os_client, index_name).quantization == "sq"

    files = _files_after_flush(os_client, name)
    memory = vector_memory(files)
    assert files.get("veq", 0) > 0 and memory["quantised"]
    assert memory["hot"] == files["vex"] + files["veq"]
    # 24 images x 5 variants x 384 dims: float32 copies stay (>= 4 bytes a value), the quantised ones are ~1
    values = 24 * 5 * 384
    assert files["vec"] >= 4 * values and values <= files["veq"] < 2 * values


def test_a_float32_index_has_no_quantised_files_and_refuses_sq_without_a_new_version(os_client, index_name,
                                                                                      tmp_path):
    encoder = get_encoder()
    build_index(os_client, index_name, _records(8), tmp_path / "ledger")
    first = f"{index_name}-v1"
    assert "encoder" not in _embedding(os_client, first)["method"].get("parameters", {})
    assert read_meta(os_client, index_name)["vectors"]["quantization"] == "none"
    assert index_stats(os_client, index_name).quantization == "none"
    files = _files_after_flush(os_client, first)
    memory = vector_memory(files)
    assert "veq" not in files and not memory["quantised"] and files["vec"] > 0
    assert memory["hot"] == files["vex"] + files["vec"]

    with pytest.raises(ConfigError) as refused:
        create_index(os_client, encoder.info(), index_name, quantization="sq")
    message = str(refused.value)
    assert "\n" not in message and "'none'" in message and "--new-version --quantization sq" in message
    assert create_index(os_client, encoder.info(), index_name, quantization="none") == first  # as it is: fine
    assert create_index(os_client, encoder.info(), index_name) == first

    second = create_index(os_client, encoder.info(), index_name, new_version=True, quantization="sq")
    assert second == f"{index_name}-v2" and read_quantization(os_client, second) == "sq"
    assert read_quantization(os_client, first) == "none"  # the live version is untouched


def test_an_unknown_quantization_is_one_line_before_the_cluster_is_touched(os_client, index_name):
    with pytest.raises(ConfigError, match=r"^quantization 'pq' is not one of none, sq$"):
        create_index(os_client, get_encoder().info(), index_name, quantization="pq")
    assert not os_client.indices.exists(index=f"{index_name}-v1")


def test_the_cli_creates_an_sq_index_and_refuses_what_it_cannot_do(os_client, index_name, cli_env):
    created = run_cli(["index", "create", "--index", index_name, "--quantization", "sq", NO_MODEL], cli_env)
    assert created.returncode == 0, created.stderr
    assert f"{index_name} -> {index_name}-v1 (vectors: quantization sq)" in created.stdout
    assert _embedding(os_client, f"{index_name}-v1")["method"]["parameters"]["encoder"]["name"] == "sq"

    again = run_cli(["index", "create", "--index", index_name, NO_MODEL], cli_env)  # no flag: keeps sq
    assert again.returncode == 0 and "quantization sq" in again.stdout, again.stderr

    other = run_cli(["index", "create", "--index", index_name, "--quantization", "none", NO_MODEL], cli_env)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
    assert "--new-version --quantization none" in other.stderr

    bad = run_cli(["index", "create", "--index", index_name, "--quantization", "pq", NO_MODEL], cli_env)
    assert bad.returncode == 2 and "'pq' is not one of 'none', 'sq'" in bad.stderr, bad.stderr

    stats = run_cli(["index", "stats", "--index", index_name], cli_env)
    assert stats.returncode == 0 and "vectors:   quantization sq" in stats.stdout, stats.stderr


def test_ingest_creates_a_quantised_index_when_asked(cli_env, tmp_path, os_client):
    """`rsrt ingest … --quantization sq` on a new index: the index it makes stores 7-bit vectors."""
    import json as _json

    from rsrt.search.index import delete_index, read_quantization

    captions = tmp_path / "captions.jsonl"
    variants = [{"one_sentence": f"a harbour with {n} boats", "feature": "boats: centre, small",
                 "caption": f"{n} boats moored at a pier"} for n in ("two", "three", "four", "five", "six")]
    captions.write_text(_json.dumps({"image": "q1", "variants": variants}) + "\n")
    alias = "rsrt-test-ingest-sq"
    try:
        result = run_cli(["ingest", "captions", str(captions), "--index", alias, "--quantization", "sq",
                          "--state-dir", str(tmp_path / "state")], cli_env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert read_quantization(os_client, alias) == "sq"
    finally:
        delete_index(os_client, alias)
