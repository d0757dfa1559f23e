"""The image path end to end: real JPEGs → a VLM (loopback HTTP server, or the tiny local model) → index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_captioners_openai import API_KEY, FakeVLM, Reply

from conftest import SAMPLE_IMAGES, run_cli

pytestmark = pytest.mark.integration

SAMPLES = sorted(SAMPLE_IMAGES.glob("*.jpg"))


@pytest.fixture
def vlm():
    server = FakeVLM().start()
    try:
        yield server
    finally:
        server.stop()


def _docs(os_client, index: str) -> dict[str, dict]:
    os_client.indices.refresh(index=index)
    hits = os_client.search(index=index, body={"size": 100, "_source": {"excludes": ["variants.embedding"]}})
    return {h["_id"]: h["_source"] for h in hits["hits"]["hits"]}


def test_sample_images_through_the_http_vlm(os_client, index_name, cli_env, tmp_path, vlm):
    assert len(SAMPLES) == 8
    folder = tmp_path / "archive"
    folder.mkdir()
    for sample in SAMPLES:
        shutil.copy(sample, folder / sample.name)
    (folder / "truncated.jpg").write_bytes(SAMPLES[0].read_bytes()[:3000])
    (folder / "notes.jpg").write_text("not an image")
    prose_image = folder / "prose.jpg"
    shutil.copy(SAMPLES[1], prose_image)
    prose = prose_image.read_bytes() + b"\x00"  # different bytes, still a valid JPEG (trailing data)
    prose_image.write_bytes(prose)
    vlm.for_image(prose, Reply(content="The image shows a port with several ships."))
    env = {**cli_env, "RSRT_VLM_API_KEY": API_KEY}
    args = ["ingest", "images", str(folder), "--index", index_name, "--captioner", "openai", "--vlm-url",
            vlm.base_url, "--model", vlm.model, "--state-dir", str(tmp_path / "state"), "--json"]
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ingested"] == 8 and summary["quarantined"] == 3, summary
    docs = _docs(os_client, index_name)
    assert set(docs) == {p.stem for p in SAMPLES}
    for doc in docs.values():
        assert doc["variant_count"] == 5
        assert all(v["one_sentence"] and v["feature"] and v["caption"] for v in doc["variants"])
        assert doc["captioner"]["model"] == vlm.model and doc["captioner"]["prompt_version"]
        assert doc["source_uri"].startswith("file://")
    quarantine = (tmp_path / "state" / "quarantine.jsonl").read_text()
    assert "truncated" in quarantine and "notes" in quarantine and "prose" in quarantine
    assert API_KEY not in result.stdout + result.stderr + quarantine
    assert not vlm.problems, vlm.problems
    calls = sum(vlm.hits.values())
    again = run_cli(args, env)
    assert json.loads(again.stdout)["ingested"] == 0
    assert sum(vlm.hits.values()) == calls  # nothing captioned twice, the quarantined item is not retried
    retry = run_cli([*args, "--retry-quarantined"], env)
    assert json.loads(retry.stdout)["quarantined"] == 3
    assert sum(vlm.hits.values()) == calls + 3  # only the prose image is asked again (3 attempts)
    search = run_cli(["search", "a port", "--index", index_name, "--json"], cli_env)
    assert search.returncode == 0 and json.loads(search.stdout)["hits"]


def test_sample_images_through_the_tiny_local_vlm(os_client, index_name, cli_env, tmp_path):
    from tiny_vlm import shared_tiny_vlm

    model = shared_tiny_vlm()
    result = run_cli(["ingest", "images", str(SAMPLE_IMAGES), "--index", index_name, "--captioner",
                      "transformers", "--model", str(model), "--device", "cpu", "--state-dir",
                      str(tmp_path / "state"), "--batch-size", "4", "--json"], cli_env, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ingested"] == 8 and summary["quarantined"] == 0, summary
    docs = _docs(os_client, index_name)
    assert set(docs) == {p.stem for p in SAMPLES}
    assert all(doc["variant_count"] == 5 and doc["captioner"]["name"] == "transformers" for doc in docs.values())
    assert Path(docs[SAMPLES[0].stem]["source_uri"].removeprefix("file://")).exists()


def test_an_image_as_the_query(os_client, index_name, cli_env, tmp_path, vlm):
    """VLM → query text → T2T: the image's description is searched like any text."""
    env = {**cli_env, "RSRT_VLM_API_KEY": API_KEY}
    ingest = run_cli(["ingest", "images", str(SAMPLE_IMAGES), "--index", index_name, "--captioner", "openai",
                      "--vlm-url", vlm.base_url, "--model", vlm.model, "--state-dir", str(tmp_path / "s"), "--json"],
                     env)
    assert ingest.returncode == 0, ingest.stderr
    before = sum(vlm.hits.values())
    result = run_cli(["search", "--image", str(SAMPLES[3]), "--captioner", "openai", "--vlm-url", vlm.base_url,
                      "--model", vlm.model, "--index", index_name, "--mode", "hybrid", "--json"], env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert sum(vlm.hits.values()) == before + 1  # one description of the query image
    assert "query" in answer["query"].lower() and len(answer["hits"]) == 8
    # The loopback VLM describes an image by its size and mean colour: the image itself ranks first.
    assert answer["hits"][0]["image_id"] == SAMPLES[3].stem
