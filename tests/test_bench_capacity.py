"""The capacity model (`rsrt bench capacity`): its arithmetic by hand, its rules, its page and its CLI.

Inputs here are round made-up numbers, so each expected figure can be checked with a pencil.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import run_cli
from rsrt.search.benchmarking.capacity import (
    GB,
    GIB,
    CapacityPlan,
    ClusterAssumptions,
    EncodingCost,
    Fleet,
    MeasuredCosts,
    Rate,
    capacity,
    even_shards,
    load_measured,
    parse_measured,
)
from rsrt.search.benchmarking.capacity_page import render_markdown
from rsrt.search.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "performance" / "capacity-inputs.example.json"


def _measured(**changes) -> MeasuredCosts:
    """fp32: 10 KB on disk, 5 KB hot per image; sq: 12 KB on disk, 2 KB hot; 100 / 800 variants/s on 2 cores."""
    base = MeasuredCosts(
        encodings={"fp32": EncodingCost("fp32", 10_000, {"vec": 4_000, "vex": 1_000}),
                   "sq": EncodingCost("sq", 12_000, {"vec": 4_000, "veq": 1_000, "vex": 1_000})},
        encoder=Rate(100, 2), writer=Rate(800, 2), recommended_shard_gb=30, thumbnail_bytes_per_image=15_000)
    return replace(base, **changes)


def test_disk_and_hot_memory_for_a_million_images_with_one_replica():
    report = capacity(CapacityPlan(_measured(), ClusterAssumptions(replicas=1)))
    row = report.row(1_000_000, "fp32")
    assert row.primary_bytes == 10 * GB  # 10^6 × 10,000 B
    assert row.total_disk_bytes == 20 * GB  # × (1 + R)
    assert row.hot_bytes == 10 * GB  # 10^6 × (4,000 + 1,000) B × 2 serving copies
    assert row.nodes == 2 and row.bound == "copies"  # 10 GB fits one node; two copies need two nodes
    assert row.primary_shards == 1 and row.shards_by_size == 1
    with_thumbnails = report.row(1_000_000, "fp32", thumbnails=True)
    assert with_thumbnails.primary_bytes == 25 * GB and with_thumbnails.hot_bytes == row.hot_bytes


def test_heap_and_page_cache_per_node_follow_the_stated_rules():
    small, large = ClusterAssumptions(node_ram_gib=32), ClusterAssumptions(node_ram_gib=64)
    assert small.heap_gib == 16 and large.heap_gib == 31  # min(50 % RAM, 31 GiB)
    assert large.cache_bytes_per_node == pytest.approx(0.8 * 33 * GIB)
    assert large.usable_disk_bytes_per_node == pytest.approx(1.7e12)


def test_nodes_bound_by_memory():
    row = capacity(CapacityPlan(_measured())).row(100_000_000, "fp32")
    # hot 10^8 × 5,000 × 2 = 10^12 B over 26.4 GiB of page cache per node; disk 2 × 10^12 over 1.7 TB
    assert row.nodes_by_memory == math.ceil(1e12 / (0.8 * 33 * GIB)) == 36
    assert row.nodes_by_disk == 2
    assert row.nodes == 36 and row.bound == "memory"


def test_nodes_bound_by_disk_when_documents_are_large_and_nodes_have_ram():
    heavy = _measured(encodings={"fp32": EncodingCost("fp32", 200_000, {"vec": 4_000, "vex": 1_000})})
    row = capacity(CapacityPlan(heavy, ClusterAssumptions(node_ram_gib=256))).row(100_000_000, "fp32")
    # disk 2 × 2·10^13 B over 1.7 TB usable = 23.5 → 24; hot 10^12 B over 0.8 × 225 GiB → 6
    assert (row.nodes_by_memory, row.nodes_by_disk) == (6, 24)
    assert row.nodes == 24 and row.bound == "disk"


def test_nodes_bound_by_heap_once_heap_per_image_is_measured():
    fp32 = EncodingCost("fp32", 10_000, {"vec": 4_000, "vex": 1_000}, heap_bytes_per_image=1_000)
    row = capacity(CapacityPlan(_measured(encodings={"fp32": fp32}), ClusterAssumptions(node_ram_gib=256))) \
        .row(100_000_000, "fp32")
    # 10^8 × 1,000 B × 2 copies over half of a 31 GiB heap
    assert row.nodes_by_heap == math.ceil(2e11 / (0.5 * 31 * GIB)) == 13
    assert row.nodes == 13 and row.bound == "heap"


def test_idle_replicas_need_no_page_cache():
    serving = capacity(CapacityPlan(_measured())).row(100_000_000, "fp32")
    idle = capacity(CapacityPlan(_measured(), ClusterAssumptions(replicas_serve_queries=False))) \
        .row(100_000_000, "fp32")
    assert idle.hot_bytes == serving.hot_bytes / 2 and idle.total_disk_bytes == serving.total_disk_bytes


def test_shards_are_raised_until_their_copies_spread_evenly_over_the_nodes():
    assert even_shards(59, copies=2, nodes=57) == 114  # 228 copies, 4 per node
    assert even_shards(7, copies=2, nodes=2) == 7
    assert even_shards(1, copies=2, nodes=4) == 2
    assert even_shards(5, copies=1, nodes=3) == 6
    assert even_shards(0, copies=1, nodes=1) == 1
    for row in capacity(CapacityPlan(_measured(), ClusterAssumptions(shard_gb=7))).sizing:
        assert row.primary_shards >= row.shards_by_size == math.ceil(row.primary_bytes / (7 * GB))
        assert (row.primary_shards * 2) % row.nodes == 0
        assert row.shard_bytes <= 7 * GB


def test_the_shard_size_comes_from_the_measured_recommendation_unless_chosen():
    assert CapacityPlan(_measured()).shard_gb == 30
    assert CapacityPlan(_measured(), ClusterAssumptions(shard_gb=50)).shard_gb == 50


def test_sq_needs_less_hot_memory_and_fewer_nodes_when_its_inputs_say_so():
    report = capacity(CapacityPlan(_measured()))
    fp32, sq = report.row(100_000_000, "fp32"), report.row(100_000_000, "sq")
    assert sq.hot_bytes == pytest.approx(fp32.hot_bytes * 2 / 5)  # (.veq + .vex) vs (.vec + .vex)
    assert sq.total_disk_bytes > fp32.total_disk_bytes  # it keeps the float32 .vec on disk too
    assert sq.nodes < fp32.nodes


def test_ingest_cost_per_million_images():
    cost = capacity(CapacityPlan(_measured(), vlm_rates=(1.0, 2.0))).ingest
    assert cost.vlm_gpu_hours == ((1.0, pytest.approx(1e6 / 3600)), (2.0, pytest.approx(1e6 / 2 / 3600)))
    assert cost.encode_core_hours == pytest.approx(5e6 / 50 / 3600)  # 100 variants/s on 2 cores
    assert cost.write_core_hours["fp32"] == pytest.approx(5e6 * 2 / 400 / 3600)  # both copies index
    three_calls = capacity(CapacityPlan(_measured(vlm_calls_per_image=3), vlm_rates=(1.0,))).ingest
    assert three_calls.vlm_gpu_hours[0][1] == pytest.approx(3e6 / 3600)


def test_wall_time_is_the_slowest_stage_on_the_fleet():
    plan = CapacityPlan(_measured(), fleet=Fleet(gpus=8, encoder_cores=1, node_cores=8), vlm_rates=(1.0, 5.0))
    wall = next(w for w in capacity(plan).wall if w.images == 1_000_000 and w.encoding == "fp32")
    (_, slow_vlm, stage_a), (_, encoding, stage_b) = wall.by_rate
    assert stage_a == "VLM" and slow_vlm == pytest.approx(1e6 / 3600 / 8)
    assert stage_b == "encoding" and encoding == pytest.approx(5e6 / 50 / 3600)  # 1 core beats 8 GPUs at 5/s


def test_the_page_names_inputs_assumptions_and_every_size():
    page = render_markdown(capacity(CapacityPlan(_measured(example=True))), "inputs.json", "out.md")
    assert "EXAMPLE NUMBERS" in page
    assert "--measured inputs.json --out out.md" in page
    for text in ("| 1M | fp32 |", "| 10M | sq (lucene, 7-bit) |", "| 100M | fp32 |", "### With thumbnails",
                 "page cache usable for vectors", "not measured: counted as 0", "linear scaling assumed",
                 "## What would change it", "| **36** (memory) |"):
        assert text in page, text
    assert "EXAMPLE NUMBERS" not in render_markdown(capacity(CapacityPlan(_measured())))


def test_the_example_file_parses_and_says_it_is_an_example():
    measured = load_measured(EXAMPLE)
    assert measured.example and "EXAMPLE" in measured.note
    assert measured.encodings["sq"].hot_bytes_per_image < measured.encodings["fp32"].hot_bytes_per_image


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["encodings"]["sq"].pop("disk_bytes_per_image"), "encodings.sq.disk_bytes_per_image: missing"),
    (lambda d: d["encodings"]["sq"]["file_bytes_per_image"].pop("veq"), "encodings.sq.file_bytes_per_image.veq"),
    (lambda d: d["encoder"].update(cores="two"), "encoder.cores: 'two': expected a number"),
    (lambda d: d["writer"].update(variants_per_second=0), "writer.variants_per_second: 0"),
    (lambda d: d.pop("shards"), "shards: missing"),
    (lambda d: d["encodings"].update(pq={}), "encodings.pq: unknown encoding"),
    (lambda d: d.update(format="other/2"), "format: 'other/2'"),
])
def test_a_bad_input_names_its_field(mutate, field):
    data = json.loads(EXAMPLE.read_text())
    mutate(data)
    with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace(".", r"\.")):
        parse_measured(data, "f.json")


def _env() -> dict[str, str]:
    return dict(os.environ)


def test_cli_writes_the_page_from_the_example_file(tmp_path):
    out = tmp_path / "docs" / "capacity.md"
    result = run_cli(["bench", "capacity", "--measured", str(EXAMPLE), "--out", str(out), "--images", "1M,250k",
                      "--replicas", "2", "--node-ram-gb", "128", "--vlm-images-per-second", "1,3"], _env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    page = out.read_text()
    expected = capacity(CapacityPlan(load_measured(EXAMPLE), ClusterAssumptions(replicas=2, node_ram_gib=128),
                                     images=(1_000_000, 250_000), vlm_rates=(1.0, 3.0)))
    assert page == render_markdown(expected, str(EXAMPLE), str(out)) + "\n"
    assert "disk, 3 copies" in page and "| 250k | fp32 |" in page and "VLM 3/s" in page
    assert "EXAMPLE NUMBERS" in page


def test_cli_refuses_a_bad_input_file_in_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "measured.json"
    data = json.loads(EXAMPLE.read_text())
    del data["encodings"]["fp32"]["file_bytes_per_image"]["vex"]
    bad.write_text(json.dumps(data))
    result = run_cli(["bench", "capacity", "--measured", str(bad), "--out", str(tmp_path / "c.md")], _env())
    assert result.returncode == 2
    assert "encodings.fp32.file_bytes_per_image.vex: missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "c.md").exists()
    bad.write_text("{not json")
    result = run_cli(["bench", "capacity", "--measured", str(bad), "--out", str(tmp_path / "c.md")], _env())
    assert result.returncode == 2 and "not JSON" in result.stderr


def test_stats_of_real_indices_give_the_hot_files_the_model_reads(os_client, index_name):
    """The model's premise, on the real node: sq adds a smaller quantised .veq beside the float32 .vec."""
    import numpy as np

    from rsrt.search.benchmarking.capacity import HOT_FILES, encoding_from_stats

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 64)).astype(np.float32)
    entries = {}
    for name, method_extra in (("fp32", {}), ("sq", {"encoder": {"name": "sq"}})):
        index = f"{index_name}-{name}"
        method = {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
                  "parameters": {"m": 16, "ef_construction": 128, **method_extra}}
        os_client.indices.create(index=index, body={
            "settings": {"index": {"knn": True, "number_of_shards": 1, "number_of_replicas": 0}},
            "mappings": {"dynamic": "strict", "properties": {
                "v": {"type": "knn_vector", "dimension": 64, "method": method}}}})
        body = []
        for i, v in enumerate(vectors):
            body += [{"index": {"_index": index, "_id": str(i)}}, {"v": v.tolist()}]
        assert not os_client.bulk(body=body, refresh=True)["errors"]
        os_client.indices.forcemerge(index=index, max_num_segments=1)
        stats = os_client.indices.stats(index=index, metric="segments,store",
                                        params={"include_segment_file_sizes": "true"})
        entries[name] = encoding_from_stats(stats, images=300, source="test")
    for name, entry in entries.items():
        assert set(HOT_FILES[name]) <= set(entry["file_bytes_per_image"]), (name, entry)
    fp32, sq = entries["fp32"]["file_bytes_per_image"], entries["sq"]["file_bytes_per_image"]
    assert fp32["vec"] >= 64 * 4 and "veq" not in fp32
    assert sq["veq"] < sq["vec"]  # one byte per dimension against four
    data = json.loads(EXAMPLE.read_text())
    data["encodings"] = entries
    measured = parse_measured(data)
    assert measured.encodings["sq"].hot_bytes_per_image < measured.encodings["fp32"].hot_bytes_per_image
