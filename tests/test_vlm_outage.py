"""A VLM outage in the middle of `rsrt ingest images`: the run stops with one line, the rerun finishes.

A real chat-completions server on 127.0.0.1 answers the first images, then fails (HTTP 503), then
is gone (connection refused), then comes back on the same port. The real `rsrt` CLI ingests the
eight sample JPEGs into the real test node through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import SAMPLE_IMAGES, run_cli
from vlm_server import ChatCompletions

pytestmark = pytest.mark.integration


def _ingest(index: str, state: Path, vlm_url: str, env: dict[str, str]):
    args = ["ingest", "images", str(SAMPLE_IMAGES), "--index", index, "--state-dir", str(state), "--json",
            "--captioner", "openai", "--model", "tiny-vl", "--vlm-url", vlm_url, "--vlm-concurrency", "1",
            "--vlm-retries", "1", "--vlm-timeout", "20", "--max-consecutive-failures", "3", "--no-cluster-model"]
    return run_cli(args, env)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _indexed(os_client, index: str) -> set[str]:
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 100, "_source": False})["hits"]["hits"]
    return {hit["_id"] for hit in hits}


def test_outage_stops_the_run_with_one_line_and_the_rerun_captions_the_rest(tmp_path, cli_env, os_client,
                                                                             index_name):
    images = sorted(SAMPLE_IMAGES.glob("*.jpg"))
    assert len(images) == 8
    state = tmp_path / "state"
    vlm = ChatCompletions(healthy_answers=3)  # three images, then HTTP 503 for every request
    port = vlm.port
    try:
        failing = _ingest(index_name, state, vlm.base_url, cli_env)
    finally:
        vlm.stop()
    assert failing.returncode == 1, (failing.stdout, failing.stderr)
    assert "Traceback" not in failing.stderr
    (line,) = _error_lines(failing.stderr)
    assert line.startswith("error: captioning stopped: 3 images in a row failed, the last ")
    assert "HTTP 503 model overloaded (gave up after 2 tries)" in line
    assert "--max-consecutive-failures" in line
    # 5 images × (1 try + 1 retry): the breaker trips on the 3rd, the chunk of 4 in flight is finished.
    assert len(vlm.answered) == 3 and vlm.failed == 5 * 2
    first = _indexed(os_client, index_name)
    assert first == {path.stem for path in images[:3]}  # what was captioned before the outage is indexed
    quarantine = [json.loads(x) for x in (state / "quarantine.jsonl").read_text("utf-8").splitlines()]
    assert len(quarantine) == 5 and all(entry["transient"] for entry in quarantine)

    # The server is gone: connection refused from the first image; the run stops again, losing nothing.
    refused = _ingest(index_name, state, f"http://127.0.0.1:{port}/v1", cli_env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    (line,) = _error_lines(refused.stderr)
    assert line.startswith("error: captioning stopped: ") and f"connection to http://127.0.0.1:{port}/v1" in line
    assert _indexed(os_client, index_name) == first

    # It comes back on the same port: the rerun captions exactly the images that failed.
    healthy = ChatCompletions(port=port)
    try:
        done = _ingest(index_name, state, healthy.base_url, cli_env)
    finally:
        healthy.stop()
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["ingested"], summary["skipped"], summary["quarantined"]) == (5, 3, 0)
    assert len(healthy.answered) == 5  # the three indexed images were not sent again
    assert _indexed(os_client, index_name) == {path.stem for path in images}
    # the quarantine says what is wrong now: the five are indexed, so their outage entries are gone
    assert (state / "quarantine.jsonl").read_text("utf-8") == ""


# -- the caption stage's bookkeeping, through the real pipeline (dry run: no index needed) ------------


class _ScriptedVLM:
    """A real `Captioner` whose answers are scripted per image id: "ok", "prose" (a bad answer, the
    image's failure) or "down" (the server's failure)."""

    def __new__(cls, script: dict[str, str], **options: Any):
        from rsrt.ingest.captioners import Answer, Captioner

        class Scripted(Captioner):
            kind = "scripted"
            model_id = "scripted-model"

            def _answer(self, images, prompt, attempt):
                answers = []
                for loaded in images:
                    what = script.get(loaded.image_id, "ok")
                    if what == "down":
                        answers.append(Answer(error="connection refused", transient=True))
                    elif what == "prose":
                        answers.append(Answer(text="The image shows fields."))
                    else:
                        answers.append(Answer(text=json.dumps({"variants": [
                            {"one_sentence": f"Fields {loaded.image_id} {i}.", "feature": f"fields (N) {i}",
                             "caption": f"Green fields {loaded.image_id}, view {i}."} for i in range(5)]})))
                return answers

        return Scripted(max_attempts=1, **options)


def _run(tmp_path: Path, script: dict[str, str], limit: int):
    from PIL import Image

    from rsrt.ingest.config import IngestConfig
    from rsrt.ingest.ledger import Ledger
    from rsrt.ingest.pipeline import IngestPipeline
    from rsrt.search.encoder import get_encoder
    from rsrt.search.schema import ImageRecord

    records = []
    for n in range(6):
        path = tmp_path / f"img{n}.png"
        if not path.exists():
            Image.new("RGB", (8 + n, 8), (n * 40, 90, 30)).save(path)
        records.append(ImageRecord(image_id=f"img{n}", source_uri=path.resolve().as_uri()))
    ledger = Ledger(tmp_path / "state")
    config = IngestConfig(index="dry", dry_run=True, batch_size=6, max_consecutive_failures=limit)
    pipeline = IngestPipeline(None, get_encoder(), ledger, config, captioner=_ScriptedVLM(script))
    try:
        return pipeline.run(records), ledger.done([r.image_id for r in records])
    finally:
        ledger.close()


def test_an_image_failure_is_quarantined_for_good_a_server_failure_is_retried(tmp_path):
    stats, done = _run(tmp_path, {"img1": "prose", "img3": "down"}, limit=3)
    assert (stats.ingested, stats.quarantined, stats.deferred) == (4, 2, 1)
    assert done == {"img1"}  # dry run: nothing written, only the image's own failure is checkpointed
    assert "img3" not in done  # the server's failure: the next run asks again


def test_failures_in_the_streak_that_stopped_the_run_are_all_retried(tmp_path):
    from rsrt.ingest.captioners import CaptionerOutage

    with pytest.raises(CaptionerOutage, match=r"^captioning stopped: 2 images in a row failed, the last 'img2'"):
        _run(tmp_path, {"img1": "prose", "img2": "prose", "img3": "down"}, limit=2)
    from rsrt.ingest.ledger import Ledger

    ledger = Ledger(tmp_path / "state")
    try:  # a model that answers prose for everything looks like bad images: none is quarantined for good
        assert ledger.done([f"img{n}" for n in range(6)]) == set()
    finally:
        ledger.close()
    stats, _ = _run(tmp_path, {}, limit=2)  # the captioner is fixed
    assert (stats.ingested, stats.quarantined) == (6, 0)
