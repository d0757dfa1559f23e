"""`rsrt bench shards`: layouts on a real 3-node cluster, and a node SIGKILLed while clients query.

Timings are printed, never asserted; these tests check that every layout holds all its documents, that
the latency rows are there, and that the node-kill run names the node, recovers and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsrt.search.benchmarking.cluster import ShardPlan, format_shards, node_urls, run_shards
from rsrt.search.client import connect
from rsrt.search.config import ConnectionSettings
from rsrt.search.node import LocalCluster, NodeSettings, _pid_alive, free_port_block


def _rsrt(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    rsrt = shutil.which("rsrt", path=str(Path(sys.executable).parent)) or "rsrt"
    return subprocess.run([rsrt, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
@pytest.mark.slow
def test_layouts_hold_every_document_and_the_cluster_recovers_from_a_killed_node(tmp_path):
    http_port = free_port_block(3, 19720)
    transport_port = free_port_block(3, 19820)
    cluster = LocalCluster(NodeSettings(name="rsrt-bench-shards-test", nodes=3, http_port=http_port,
                                        transport_port=transport_port, heap="384m"), log=print)
    cluster.start(fresh=True)
    pids: list[int] = []
    try:
        client = connect(ConnectionSettings.resolve(url=",".join(node_urls(cluster)), env={}))
        plan = ShardPlan(size=200, layouts=((1, 0), (3, 1)), clients=(1, 2), queries=20, kill_layout=(3, 1),
                         kill_seconds=15.0, pool_per_class=5, index_prefix="rsrt-bench-shards-t",
                         kill_modes=("dense",))
        result = run_shards(client, cluster, tmp_path / "out", plan)
        state = cluster.state()
        assert state is not None
        pids = list(state.pids)

        assert result["cluster"]["number_of_nodes"] == 3 and result["cluster"]["version"]
        assert all(n["heap_max_mb"] > 0 for n in result["cluster"]["nodes"])
        layouts = {(e["shards"], e["replicas"]): e for e in result["layouts"]}
        assert set(layouts) == {(1, 0), (3, 1)}
        for (shards, replicas), entry in layouts.items():
            assert entry["documents"] == 200 and entry["load"]["images"] == 200
            copies = [c for c in entry["shard_copies"] if c["state"] == "STARTED"]
            assert len(copies) == shards * (1 + replicas)  # the replicas were really built
            assert {(r["mode"], r["clients"]) for r in entry["query"]} == {
                (m, c) for m in ("dense", "hybrid-client") for c in (1, 2)}
            for row in entry["query"]:
                # no failed row: client-side hybrid on a replicated index once lost page images when its page
                # fetch reached another shard copy (fixed: one copy per query text, `preference`)
                assert "error" not in row and row["p50_ms"] > 0 and row["queries"] == 20, row
        assert layouts[(3, 1)]["replica_seconds"] is not None

        kill = result["kill"]
        killed = kill["killed_node"]
        assert killed.startswith("rsrt-bench-shards-test-") and killed in kill["why"]
        assert kill["killed_pid"] not in pids  # a new process replaced it
        assert kill["phases"]["before"]["queries"] > 0 and kill["phases"]["before"]["errors"] == 0
        assert kill["health_back_seconds"] is not None and kill["health_back_status"] in {"yellow", "green"}
        assert kill["recovered"], kill["phases"]
        assert kill["phases"]["after"]["queries"] > 0 and kill["phases"]["after"]["errors"] == 0
        assert kill["documents_before"] == kill["documents_after"] == 200
        assert kill["restart"]["green_seconds"] is not None
        assert client.cluster.health()["number_of_nodes"] == 3

        saved = json.loads((tmp_path / "out" / "results.json").read_text())
        assert saved["kill"]["killed_node"] == killed and saved["finished"]
        report = format_shards(saved)
        assert killed in report and "| 3 | 1 | 200/200 |" in report
        for alias in ("rsrt-bench-shards-t-1s0r", "rsrt-bench-shards-t-3s1r"):
            assert not client.indices.exists_alias(name=alias)  # deleted without keep
    finally:
        cluster.stop()
        shutil.rmtree(cluster.cluster_dir, ignore_errors=True)
    assert not any(_pid_alive(pid) for pid in pids)


def _result() -> dict:
    phase = {"queries": 10, "errors": 0, "error_kinds": {}, "p50_ms": 4.0, "p95_ms": 6.0, "max_ms": 7.0,
             "mean_ms": 4.5}
    return {
        "cluster": {"version": "2.19.1", "number_of_nodes": 3, "cluster_manager": "c-0",
                    "nodes": [{"name": f"c-{i}", "heap_max_mb": 384} for i in range(3)]},
        "corpus": {"images": 100, "sha256": "ab" * 32},
        "write_rule": "replicas dropped while loading",
        "layouts": [
            {"shards": 3, "replicas": 1, "documents": 99, "expected_documents": 100, "replica_seconds": 2.5,
             "docs_per_second_with_replicas": 20.0,
             "load": {"wall_seconds": 2.5, "docs_per_second": 40.0, "segments_after_load": 3, "store_bytes": 2**20},
             "query": [{"mode": "dense", "clients": 4, "p50_ms": 3.5, "p95_ms": 9.25, "qps": 300.0}]},
        ],
        "kill": {"layout": {"shards": 3, "replicas": 1}, "clients": 4, "modes": ["dense"], "run_seconds": 20.0,
                 "killed_at_s": 5.0, "why": "c-2: holds 1 primary", "killed_node": "c-2", "queries": 30,
                 "errors": 2, "error_kinds": {"ClusterUnavailable": 1, "PartialAnswer": 1},
                 "answers_every_query_after_seconds": 1.5, "recovered": True, "health_back_status": "yellow",
                 "health_back_seconds": 1.2, "documents_before": 100, "documents_after": 100,
                 "restart": {"green_seconds": 12.0},
                 "phases": {"before": phase, "during": {**phase, "errors": 2, "p50_ms": 40.0}, "after": phase}},
    }


def test_format_shards_shows_layouts_latency_and_the_kill_run():
    text = format_shards(_result())
    assert "| 3 | 1 | **99/100** | 2.5 | 40.0 | 2.5 | 20.0 | 3 | 1.0 |" in text  # a missing document stands out
    assert "| 3 | 1 | dense | 4 | 3.5 | 9.25 | 300.0 |" in text
    assert "SIGKILL at 5.0 s of c-2: holds 1 primary" in text
    assert "failed: 2 (ClusterUnavailable 1, PartialAnswer 1)" in text
    assert "answered again 1.5 s after the kill." in text and "Health yellow without the node 1.2 s" in text
    assert "| during | 10 | 2 | 40.0 |" in text and "green with every node after 12.0 s" in text
    skipped = {**_result(), "kill": {"skipped": "no local cluster named (--cluster-name): no node to kill"}}
    assert "Not run: no local cluster named" in format_shards(skipped)
    not_recovered = _result()
    not_recovered["kill"]["recovered"] = False
    assert "**not recovered**" in format_shards(not_recovered)


@pytest.mark.parametrize(("args", "named"), [
    (["--shards", "0"], "--shards"),
    (["--shards", "three"], "--shards"),
    (["--replicas", "-1"], "--replicas"),
    (["--clients", "0,4"], "--clients"),
    (["--size", "10,20"], "--size"),
    (["--kill-layout", "3"], "--kill-layout"),
    (["--kill-seconds", "1"], "--kill-seconds"),
    (["--modes", "dense,nope"], "nope"),
    (["--modes", "dense-embed-client"], "dense-embed-client"),
    (["--pool-per-class", "4"], "--pool-per-class"),
    (["--cluster-name", "absent"], "no running local cluster 'absent'"),
])
def test_bad_options_are_one_line_errors_before_any_cluster(args, named, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RSRT_HOME": str(tmp_path / "home"),
           "RSRT_OPENSEARCH_URL": "http://127.0.0.1:1"}  # nothing listens there: no option may reach it
    result = _rsrt(["bench", "shards", "--out", str(tmp_path / "out"), *args], env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
