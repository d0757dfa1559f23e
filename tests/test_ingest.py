"""The write side end to end: real files → real `rsrt ingest` → real OpenSearch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BENCHMARKS, run_cli
from rsrt.ingest.config import IngestConfig
from rsrt.ingest.ledger import Ledger
from rsrt.ingest.pipeline import IngestPipeline
from rsrt.search.encoder import get_encoder
from rsrt.search.index import create_index, index_stats
from rsrt.search.node import LocalCluster, NodeSettings, free_port_block
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration


def _variant_json(i: int, j: int) -> dict[str, str]:
    return {"one_sentence": f"Scene {i} variant {j}: a harbour with {j + 2} ships.",
            "feature": f"ships (small) north; dock (large) south; {i % 7} cranes east",
            "caption": f"A gray port seen from above, numbered {i}, with {j + 2} ships moored along the dock."}


def _write_grouped(path: Path, count: int, start: int = 0) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(start, start + count):
            handle.write(json.dumps({"image": f"img_{i:05d}.jpg", "collection": "synthetic",
                                     "datetime": f"2021-0{1 + i % 9}-15T10:00:00Z",
                                     "variants": [_variant_json(i, j) for j in range(5)]}) + "\n")


def _count(client, index: str) -> int:
    client.indices.refresh(index=index)
    return int(client.count(index=index)["count"])


def test_rsitmd_test_split_gives_exactly_452_documents_and_rerun_adds_none(os_client, index_name, cli_env, tmp_path):
    args = ["ingest", "benchmark", "rsitmd", "--index", index_name, "--data-dir", str(BENCHMARKS),
            "--state-dir", str(tmp_path / "state"), "--json"]
    first = run_cli(args, cli_env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["ingested"] == 452 and summary["quarantined"] == 0 and summary["failed"] == 0
    assert set(summary["stage_seconds"]) == {"read", "caption", "embed", "write"}
    assert _count(os_client, index_name) == 452
    again = run_cli(args, cli_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ingested"] == 0 and json.loads(again.stdout)["skipped"] == 452
    # Without the checkpoint (another machine), the index itself says what is there: still nothing twice.
    fresh_state = run_cli([*args[:-3], "--state-dir", str(tmp_path / "other"), "--json"], cli_env)
    assert json.loads(fresh_state.stdout)["skipped"] == 452
    assert _count(os_client, index_name) == 452
    doc = os_client.get(index=index_name, id="boat_0")["_source"]
    # Vectors are indexed (every image has them) but not kept in _source (a third of the disk otherwise).
    assert doc["variant_count"] == 5 and "embedding" not in doc["variants"][0]
    with_vectors = {"nested": {"path": "variants", "query": {"exists": {"field": "variants.embedding"}}}}
    assert os_client.count(index=index_name, body={"query": with_vectors})["count"] == 452
    assert doc["variants"][0]["caption"] and "one_sentence" not in doc["variants"][0]
    # Bulk-load tuning is undone afterwards.
    settings = os_client.indices.get_settings(index=index_name)
    index_settings = next(iter(settings.values()))["settings"]["index"]
    assert index_settings["refresh_interval"] != "-1"
    # A checkpoint is tied to the index it was written for: after the index is recreated (or on
    # another cluster) the same state dir must not skip anything.
    os_client.indices.delete(index=next(iter(settings)))
    recreated = run_cli(args, cli_env)
    assert json.loads(recreated.stdout)["ingested"] == 452, recreated.stdout
    assert _count(os_client, index_name) == 452


def test_bad_caption_lines_are_quarantined_and_the_run_goes_on(os_client, index_name, cli_env, tmp_path):
    path = tmp_path / "captions.jsonl"
    _write_grouped(path, 3)
    with path.open("ab") as handle:
        handle.write(b'{"image": "broken.jpg", "variants": [ this is not json\n')
        handle.write((json.dumps({"image": "three.jpg", "variants": [_variant_json(9, j) for j in range(3)]})
                      + "\n").encode())
        handle.write(b'{"image": "latin1.jpg", "variants": [{"caption": "caf\xe9"}]}\n')
        huge = _variant_json(8, 0) | {"caption": "ship " * 10_000}
        handle.write((json.dumps({"image": "huge.jpg", "variants": [huge] + [_variant_json(8, j)
                                                                            for j in range(1, 5)]}) + "\n").encode())
        handle.write((json.dumps({"image": "img_00001.jpg", "variants": [_variant_json(1, j) for j in range(5)]})
                      + "\n").encode())
        handle.write((json.dumps({"image": "ok.jpg", "variants": [_variant_json(77, j) for j in range(5)]})
                      + "\n").encode())
    state = tmp_path / "state"
    result = run_cli(["ingest", "captions", str(path), "--index", index_name, "--state-dir", str(state), "--json"],
                     cli_env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ingested"] == 4  # img_00000..2 and ok
    assert summary["quarantined"] == 5
    reasons = [json.loads(line) for line in (state / "quarantine.jsonl").read_text().splitlines()]
    text = "\n".join(f"{r['item']}: {r['reason']} @ {r.get('location')}" for r in reasons)
    assert "broken.jpg" in text or ":4" in text
    assert "three" in text and "5" in text
    assert "latin1" in text or "UTF-8" in text
    assert "huge" in text
    assert "duplicate" in text.lower()
    assert _count(os_client, index_name) == 4


def test_refused_documents_go_to_dead_letters(os_client, index_name, tmp_path):
    encoder = get_encoder()
    create_index(os_client, encoder.info(), index_name)
    records = [
        ImageRecord(image_id="a", properties={"cloud_cover": 5}, variants=[Variant(caption="a port")]),
        ImageRecord(image_id="b", properties={"cloud_cover": "very cloudy"}, variants=[Variant(caption="a farm")]),
    ]
    ledger = Ledger(tmp_path / "state")
    # One writer, so "a" reaches the index first and maps cloud_cover as a number; with two writers the
    # order (and so which record is refused) is a race.
    options = IngestConfig(index=index_name, batch_size=1, workers=1)
    stats = IngestPipeline(os_client, encoder, ledger, options).run(records)
    assert stats.ingested == 1 and stats.failed == 1
    letters = [json.loads(line) for line in ledger.dead_letter_path.read_text().splitlines()]
    assert letters[0]["image_id"] == "b" and "cloud_cover" in letters[0]["reason"]
    assert letters[0]["document"]["variants"][0]["caption"] == "a farm"  # nothing lost


def test_dry_run_writes_nothing(os_client, index_name, cli_env, tmp_path):
    path = tmp_path / "c.jsonl"
    _write_grouped(path, 5)
    result = run_cli(["ingest", "captions", str(path), "--index", index_name, "--dry-run", "--json",
                      "--state-dir", str(tmp_path / "s")], cli_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ingested"] == 5
    assert not os_client.indices.exists(index=index_name)


def test_empty_folder_and_missing_captioner_are_clear_errors(cli_env, tmp_path, index_name):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["ingest", "images", str(empty), "--index", index_name], cli_env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert str(empty) in result.stderr or "empty" in result.stderr.lower()
    images = Path(os.environ.get("RSRT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "images"
    result = run_cli(["ingest", "images", str(images / "rsicd-sample"), "--index", index_name], cli_env)
    assert result.returncode == 2 and "--captioner" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_killing_the_node_mid_ingest_then_rerunning_gives_exact_count(tmp_path, cli_env):
    """A real node is SIGKILLed while `rsrt ingest` writes; after a restart the re-run completes the job."""
    http_port, transport_port = free_port_block(1, 20200), free_port_block(1, 20300)
    cluster = LocalCluster(NodeSettings(name="rsrt-crash", http_port=http_port, transport_port=transport_port,
                                        heap="512m"))
    cluster.start(fresh=True)
    total = 300
    captions = tmp_path / "many.jsonl"
    _write_grouped(captions, total)
    env = {**cli_env, "RSRT_OPENSEARCH_URL": cluster.url}
    state = tmp_path / "state"
    args = [str(Path(sys.executable).parent / "rsrt"), "ingest", "captions", str(captions), "--index", "crash",
            "--state-dir", str(state), "--batch-size", "16", "--workers", "1", "--max-retries", "2", "--json"]
    try:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ledger_db = state / "checkpoint.sqlite"
        deadline = time.monotonic() + 240
        written = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if ledger_db.exists():
                ledger = Ledger(state)
                written = ledger.count()
                ledger.close()
                if written >= 64:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, f"ingest finished before the kill: {proc.communicate()}"
        state_before = cluster.state()
        assert state_before is not None
        os.kill(state_before.pids[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (out, err)
        assert "unreachable" in err and "run the same command again" in err and "Traceback" not in err
        cluster.start()
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr
        from rsrt.search.client import connect
        from rsrt.search.config import ConnectionSettings

        client = connect(ConnectionSettings.resolve(url=cluster.url, env={}))
        assert _count(client, "crash") == total
        response = client.search(index="crash", body={"size": 1000, "_source": False})
        ids = {hit["_id"] for hit in response["hits"]["hits"]}
        assert len(ids) == total
        assert index_stats(client, "crash").documents == total
    finally:
        cluster.stop()
