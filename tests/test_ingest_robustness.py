"""Hostile input to `rsrt ingest` (issue #15): a FIFO in an image folder, runs where nothing can be
indexed, re-runs over the same bad items, a state folder that cannot be written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_captioners_openai import API_KEY, FakeVLM

from conftest import SAMPLE_IMAGES, run_cli
from rsrt.ingest.config import IngestConfig
from rsrt.ingest.ledger import Ledger
from rsrt.ingest.pipeline import IngestPipeline
from rsrt.search.encoder import get_encoder
from rsrt.search.index import create_index
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

NO_MODEL = "--no-cluster-model"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _good_line(name: str) -> str:
    variants = [{"one_sentence": f"{name}: a river crossing farmland (variant {j}).",
                 "feature": "river (long) center; bridge (small) north; fields (large) around",
                 "caption": f"{name}: a river crossing farmland, variant {j}, with a bridge."} for j in range(5)]
    return json.dumps({"image": name, "variants": variants}) + "\n"


def test_a_fifo_in_an_image_folder_is_reported_not_opened(os_client, index_name, cli_env, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    samples = sorted(SAMPLE_IMAGES.glob("*.jpg"))[:2]
    for sample in samples:
        shutil.copy(sample, folder / sample.name)
    os.mkfifo(folder / "x.jpg")  # opening it for reading would wait for a writer forever
    vlm = FakeVLM().start()
    try:
        result = run_cli(["ingest", "images", str(folder), "--index", index_name, "--captioner", "openai",
                          "--vlm-url", vlm.base_url, "--model", vlm.model, "--state-dir", str(tmp_path / "state"),
                          NO_MODEL, "--json"], {**cli_env, "RSRT_VLM_API_KEY": API_KEY}, timeout=180)
    finally:
        vlm.stop()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ingested"] == 2 and summary["quarantined"] == 1, summary
    [entry] = _lines(tmp_path / "state" / "quarantine.jsonl")
    assert entry["item"] == "x.jpg" and "FIFO" in entry["reason"] and "without opening" in entry["reason"]


def test_a_run_that_indexes_nothing_and_quarantines_everything_exits_4(os_client, index_name, cli_env, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg", "variants": [ not json\n{"image": "b.jpg", "variants": []}\n',
                   encoding="utf-8")
    args = ["ingest", "captions", str(bad), "--index", index_name, "--state-dir", str(tmp_path / "state"), NO_MODEL]
    result = run_cli([*args, "--json"], cli_env)
    assert result.returncode == 4, (result.returncode, result.stdout, result.stderr)
    assert json.loads(result.stdout)["quarantined"] == 2  # the summary is still printed
    # Once something is indexed, quarantined items alone no longer fail the run; nor does a re-run that
    # finds everything already indexed.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(bad.read_text(encoding="utf-8") + _good_line("c.jpg"), encoding="utf-8")
    for _ in range(2):
        ok = run_cli(["ingest", "captions", str(mixed), *args[3:], "--json"], cli_env)
        assert ok.returncode == 0, (ok.stdout, ok.stderr)


def test_reruns_do_not_duplicate_quarantine_entries(os_client, index_name, cli_env, tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text(_good_line("ok.jpg") + '{"image": "torn.jpg", "variants": [ oops\n'
                    + json.dumps({"image": "empty.jpg", "variants": []}) + "\n", encoding="utf-8")
    state = tmp_path / "state"
    args = ["ingest", "captions", str(path), "--index", index_name, "--state-dir", str(state), NO_MODEL, "--json"]
    first = run_cli(args, cli_env)
    assert first.returncode == 0, first.stderr
    before = _lines(state / "quarantine.jsonl")
    assert len(before) == 2
    for _ in range(2):
        again = run_cli(args, cli_env)
        assert again.returncode == 0, again.stderr
    after = _lines(state / "quarantine.jsonl")
    assert len(after) == 2, after
    assert sorted((e["item"], e["reason"]) for e in after) == sorted((e["item"], e["reason"]) for e in before)
    assert after[0]["run"] != before[0]["run"]  # the entries are the latest run's


def test_reruns_do_not_duplicate_dead_letters(os_client, index_name, tmp_path):
    encoder = get_encoder()
    create_index(os_client, encoder.info(), index_name)
    records = [ImageRecord(image_id="a", properties={"cloud_cover": 5}, variants=[Variant(caption="a port")]),
               ImageRecord(image_id="b", properties={"cloud_cover": "very cloudy"}, variants=[Variant(caption="farm")])]
    options = IngestConfig(index=index_name, batch_size=1, workers=1)
    for _ in range(3):  # "b" is refused every time: the cluster's mapping says cloud_cover is a number
        ledger = Ledger(tmp_path / "state")
        stats = IngestPipeline(os_client, encoder, ledger, options).run(records)
        ledger.close()
        assert stats.failed == 1
    letters = _lines(tmp_path / "state" / "dead-letter.jsonl")
    assert [letter["image_id"] for letter in letters] == ["b"]
    assert letters[0]["document"]["variants"][0]["caption"] == "farm"


def test_an_unwritable_state_dir_is_one_line_before_anything_is_created(os_client, index_name, cli_env, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state folder's parent should be", encoding="utf-8")
    path = tmp_path / "captions.jsonl"
    path.write_text(_good_line("ok.jpg"), encoding="utf-8")
    result = run_cli(["ingest", "captions", str(path), "--index", index_name, "--state-dir",
                      str(blocker / "state"), NO_MODEL], cli_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(blocker / "state") in lines[0] and "--state-dir" in lines[0], result.stderr
    assert not os_client.indices.exists(index=index_name)
    assert not os_client.indices.exists(index=f"{index_name}-v1")
