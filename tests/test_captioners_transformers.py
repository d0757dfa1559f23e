"""TransformersCaptioner on a tiny LLaVA built and trained by the test itself, offline.

The real code path runs: AutoProcessor + AutoModelForImageTextToText from a local folder, the
model's chat template, batched `generate` with left padding, decoding of the new tokens only,
and parsing/validation of the five variants.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import SAMPLE_IMAGES
from rsrt.ingest.captioners import CAPTION_PROMPT, ImageInput, TransformersCaptioner, make_captioner
from rsrt.ingest.captioners.base import CaptionerError
from rsrt.ingest.captioners.transformers_vlm import render_prompt, resolve_device, resolve_dtype
from rsrt.search.errors import ConfigError
from rsrt.search.schema import Variant
from tiny_vlm import TINY_ANSWER, TINY_QUERY, TINY_VARIANTS, build_tiny_vlm, shared_tiny_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SAMPLES = SAMPLE_IMAGES
SAMPLE_FILES = sorted(SAMPLES.glob("*.jpg"))
BUILD_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices: a second thread only adds contention on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_path() -> Path:
    started = time.perf_counter()
    path = shared_tiny_vlm()
    BUILD_SECONDS["build"] = time.perf_counter() - started
    return path


@pytest.fixture(scope="module")
def captioner(tiny_path: Path) -> Iterator[TransformersCaptioner]:
    with TransformersCaptioner(tiny_path, batch_size=4, max_new_tokens=320) as built:
        yield built


def test_the_fixture_is_a_complete_trained_model_folder(tiny_path):
    names = {p.name for p in tiny_path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert "chat_template.jinja" in names or "chat_template" in (tiny_path / "processor_config.json").read_text()
    stats = json.loads((tiny_path / "tiny_vlm_stats.json").read_text())
    assert stats["exact"] == 1.0 and stats["steps"] <= 600
    built = BUILD_SECONDS.get("build", 0.0)
    print(f"tiny VLM built in {built:.1f}s (training {stats['seconds']:.1f}s, {stats['steps']} steps)")


def test_processor_and_template_come_from_the_folder(captioner):
    assert type(captioner.hf_model).__name__ == "LlavaForConditionalGeneration"
    assert captioner.tokenizer.padding_side == "left"
    rendered = render_prompt(captioner.processor, CAPTION_PROMPT)
    assert rendered.startswith("USER: <image>\n") and rendered.endswith("]}ASSISTANT:")
    assert captioner.device == "cpu" or torch.cuda.is_available()


def test_all_sample_images_get_five_valid_variants(captioner):
    assert len(SAMPLE_FILES) == 8
    batches: list[tuple[int, ...]] = []
    hook = captioner.hf_model.model.vision_tower.register_forward_hook(
        lambda module, args, kwargs_or_out: batches.append(tuple(args[0].shape))
    )
    try:
        results = captioner.caption([ImageInput.from_path(p) for p in SAMPLE_FILES])
    finally:
        hook.remove()
    assert [r.image_id for r in results] == [p.stem for p in SAMPLE_FILES]
    assert all(r.ok and r.attempts == 1 for r in results), [(r.image_id, r.error) for r in results]
    expected = [Variant(**v) for v in TINY_VARIANTS]
    assert all(r.variants == expected for r in results)
    assert all(r.raw == TINY_ANSWER for r in results)  # only the new tokens were decoded
    assert batches == [(4, 3, 16, 16), (4, 3, 16, 16)]  # the pixels went through the vision tower, 4 at a time
    identity = (captioner.name, captioner.model, captioner.prompt_version)
    assert identity == ("transformers", str(captioner.model_id), "rsrt-caption-v1")


def test_query_image_is_described(captioner):
    assert captioner.describe(ImageInput.from_path(SAMPLE_FILES[3])) == Variant(**TINY_QUERY)


def test_a_corrupt_image_fails_alone(captioner, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(SAMPLE_FILES[0].read_bytes()[:1500])
    results = captioner.caption([ImageInput.from_path(broken), ImageInput.from_path(SAMPLE_FILES[1])])
    assert not results[0].ok and results[0].attempts == 0 and "'broken'" in results[0].error
    assert results[1].ok


def test_garbage_answers_are_retried_then_returned_as_failures(tmp_path):
    path = build_tiny_vlm(tmp_path / "untrained", train=False)
    calls: list[dict] = []
    with make_captioner("transformers", model_path=str(path), batch_size=2, max_new_tokens=24) as untrained:
        generate = untrained.hf_model.generate

        def spy(*args, **kwargs):
            calls.append({k: kwargs.get(k) for k in ("do_sample", "temperature")} | {"n": len(kwargs["input_ids"])})
            return generate(*args, **kwargs)

        untrained.hf_model.generate = spy
        results = untrained.caption([ImageInput.from_path(p) for p in SAMPLE_FILES[:2]])
    assert [r.ok for r in results] == [False, False]
    for result in results:
        assert result.attempts == 3 and result.variants is None and result.raw
        assert result.error.startswith("no valid answer after 3 attempts: answer ")
        assert "cut off by the token limit" in result.error or "prose" in result.error or "JSON" in result.error
    # One batched generate per attempt: greedy first, then sampling so a retry can differ.
    assert calls == [
        {"do_sample": False, "temperature": None, "n": 2},
        {"do_sample": True, "temperature": 0.7, "n": 2},
        {"do_sample": True, "temperature": 0.7, "n": 2},
    ]


def test_dtype_choice_reaches_the_weights(tiny_path):
    with TransformersCaptioner(tiny_path, dtype="bfloat16", max_new_tokens=8) as half:
        assert next(half.hf_model.parameters()).dtype == torch.bfloat16
        (result,) = half.caption([ImageInput.from_path(SAMPLE_FILES[0])])
    # It ran end to end in bfloat16; 8 new tokens cannot hold a valid answer, and the reason says why.
    assert not result.ok and result.attempts == 3 and "cut off by the token limit" in result.error


def test_device_and_dtype_resolution():
    assert resolve_device("auto") in ({"cuda"} if torch.cuda.is_available() else {"cpu", "mps"})
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'; valid: auto, float32, bfloat16, float16"):
        resolve_dtype("fp8", "cpu")


def test_loading_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionerError, match="'someorg/some-vlm' is not a local folder and HF_HUB_OFFLINE is set"):
        TransformersCaptioner("someorg/some-vlm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaptionerError, match="cannot load the processor of model"):
        TransformersCaptioner(empty)
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        TransformersCaptioner(empty, batch_size=0)
