"""The backend-independent part: image inputs, the retry policy, results, and the factory."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE_IMAGES
from rsrt.ingest.captioners import (
    QUERY_PROMPT,
    Answer,
    Captioner,
    CaptionerError,
    CaptionFormatError,
    CaptionResult,
    ImageInput,
    ImageLoadError,
    LoadedImage,
    OpenAICompatibleCaptioner,
    captioner_from_flags,
    captioner_kinds,
    make_captioner,
    register_captioner,
)
from rsrt.ingest.captioners import base as captioners_base
from rsrt.search.errors import ConfigError, RsrtError

SAMPLES = SAMPLE_IMAGES


def valid_answer(tag: str = "") -> str:
    return json.dumps(
        {
            "variants": [
                {
                    "one_sentence": f"Scene {i} {tag}.",
                    "feature": f"large field (N); {i} small houses (S)",
                    "caption": f"A field covers the north and {i} houses stand in the south {tag}.",
                }
                for i in range(5)
            ]
        }
    )


def png_bytes(size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


class ScriptedCaptioner(Captioner):
    """Answers from a script per image id (one entry per attempt; the last one repeats)."""

    kind = "scripted"

    def __init__(self, script: dict[str, list[Answer | str]] | None = None, chunk: int = 3, **options):
        super().__init__(**options)
        self.script = script or {}
        self.calls: list[tuple[list[str], str, int]] = []
        self.seen_sizes: dict[str, tuple[int, int]] = {}
        self.closed = False
        self._chunk = chunk

    @property
    def model_id(self) -> str:
        return "scripted-model"

    @property
    def chunk_size(self) -> int:
        return self._chunk

    def _answer(self, images: Sequence[LoadedImage], prompt: str, attempt: int) -> list[Answer]:
        self.calls.append(([i.image_id for i in images], prompt, attempt))
        answers = []
        for loaded in images:
            assert loaded.image.mode == "RGB"
            self.seen_sizes[loaded.image_id] = loaded.image.size
            entries = self.script.get(loaded.image_id, [valid_answer(loaded.image_id)])
            entry = entries[min(attempt, len(entries)) - 1]
            answers.append(entry if isinstance(entry, Answer) else Answer(text=entry))
        return answers

    def close(self) -> None:
        self.closed = True


def inputs(*ids: str) -> list[ImageInput]:
    return [ImageInput(image_id=i, data=png_bytes((10 + n, 12))) for n, i in enumerate(ids)]


# -- ImageInput ------------------------------------------------------------------------------------


def test_image_input_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one of path, data or uri"):
        ImageInput("a")
    with pytest.raises(ValueError, match="exactly one of path, data or uri"):
        ImageInput("a", path=tmp_path / "a.png", data=b"x")
    item = ImageInput.from_path(str(tmp_path / "scene_01.png"))
    assert item.image_id == "scene_01" and isinstance(item.path, Path)
    assert ImageInput("b", path=str(tmp_path / "x.png")).path == tmp_path / "x.png"


def test_sample_jpeg_loads_as_rgb():
    path = SAMPLES / "airport_17.jpg"
    loaded = ImageInput.from_path(path).load()
    assert loaded.image.mode == "RGB" and loaded.image.size == (384, 384)
    assert loaded.format == "JPEG" and loaded.image_id == "airport_17"


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode):
    loaded = ImageInput("x", data=png_bytes((5, 4), mode) if mode != "CMYK" else _jpeg_cmyk()).load()
    assert loaded.image.mode == "RGB" and loaded.image.size == (5, 4)


def _jpeg_cmyk() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (5, 4)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_sixteen_bit_band_is_stretched_not_clipped():
    array = np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    pixels = np.asarray(ImageInput("dem", data=buffer.getvalue()).load().image)
    assert pixels[0, 0, 0] == 0 and pixels[1, 1, 0] == 255 and 0 < pixels[0, 1, 0] < pixels[1, 0, 0] < 255


def test_truncated_jpeg_fails_with_its_name(tmp_path):
    data = (SAMPLES / "square_102.jpg").read_bytes()
    broken = tmp_path / "square_102_cut.jpg"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as info:
        ImageInput.from_path(broken).load()
    message = str(info.value)
    assert "'square_102_cut'" in message and str(broken) in message and "truncated" in message
    assert isinstance(info.value, RsrtError)


def test_not_an_image_and_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"image 'junk' \(13 bytes in memory\) is not a readable image"):
        ImageInput("junk", data=b"hello, world!").load()
    with pytest.raises(ImageLoadError, match=r"image 'gone' \(.*gone.png\) cannot be read: No such file"):
        ImageInput("gone", path=tmp_path / "gone.png").load()


# -- the retry policy ------------------------------------------------------------------------------


def test_results_keep_input_order_and_chunking():
    captioner = ScriptedCaptioner(chunk=3)
    results = captioner.caption(inputs("a", "b", "c", "d", "e", "f", "g"))
    assert [r.image_id for r in results] == list("abcdefg")
    assert all(r.ok and r.attempts == 1 and r.error is None and len(r.variants) == 5 for r in results)
    assert results[3].variants[0].one_sentence == "Scene 0 d."
    assert [ids for ids, _, _ in captioner.calls] == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert captioner.seen_sizes["b"] == (11, 12)  # each image reached the backend, decoded


def test_bad_answer_is_retried_then_succeeds():
    captioner = ScriptedCaptioner({"b": ["The image shows houses.", valid_answer("ok")]})
    a, b = captioner.caption(inputs("a", "b"))
    assert a.ok and a.attempts == 1
    assert b.ok and b.attempts == 2 and b.error is None and b.variants[0].one_sentence == "Scene 0 ok."
    assert captioner.calls[1][0] == ["b"] and captioner.calls[1][2] == 2  # only the bad one is asked again


def test_hopeless_answer_becomes_a_failure_with_reason():
    three = json.dumps({"variants": json.loads(valid_answer())["variants"][:3]})
    captioner = ScriptedCaptioner({"b": ["prose only", "```json\n{broken", three]}, max_attempts=3,
                                  strict_variants=True)
    a, b, c = captioner.caption(inputs("a", "b", "c"))
    assert a.ok and c.ok
    assert not b.ok and b.variants is None and b.attempts == 3
    assert b.error == "no valid answer after 3 attempts: expected 5 variants, got 3"
    assert b.raw == three  # the last raw answer is kept for the quarantine file
    assert [attempt for ids, _, attempt in captioner.calls if "b" in ids] == [1, 2, 3]


def test_max_attempts_is_honoured():
    captioner = ScriptedCaptioner({"a": ["nope"]}, max_attempts=1)
    (result,) = captioner.caption(inputs("a"))
    assert result.attempts == 1 and "answer is prose" in result.error
    with pytest.raises(ConfigError, match="max_attempts must be at least 1"):
        ScriptedCaptioner(max_attempts=0)


def test_final_backend_error_is_not_retried():
    captioner = ScriptedCaptioner({"a": [Answer(error="HTTP 400: image too large")]})
    (result,) = captioner.caption(inputs("a"))
    assert result.error == "HTTP 400: image too large" and result.attempts == 1 and len(captioner.calls) == 1


def test_truncated_answer_reason_mentions_the_token_limit():
    captioner = ScriptedCaptioner({"a": [Answer(text=valid_answer()[:200], truncated=True)]}, max_attempts=2)
    (result,) = captioner.caption(inputs("a"))
    assert "cut off" in result.error and "max_new_tokens/max_tokens" in result.error


def test_unreadable_image_fails_alone_without_a_model_call(tmp_path):
    items = [*inputs("a"), ImageInput("broken", data=b"\xff\xd8\xff garbage"), *inputs("c")]
    captioner = ScriptedCaptioner()
    results = captioner.caption(items)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].attempts == 0 and "image 'broken'" in results[1].error
    assert all("broken" not in ids for ids, _, _ in captioner.calls)


def test_describe_uses_the_query_prompt_and_retries():
    description = {"one_sentence": "A farm.", "feature": "large field (N)", "caption": "A field fills the north."}
    captioner = ScriptedCaptioner({"q": ["Sorry, I cannot.", json.dumps(description)]})
    variant = captioner.describe(inputs("q")[0])
    assert variant.one_sentence == "A farm." and captioner.calls[-1][1] == QUERY_PROMPT
    expected = r"no valid description of query image 'q' after 3 attempts: answer is prose"
    with pytest.raises(CaptionFormatError, match=expected):
        ScriptedCaptioner({"q": ["Sorry."]}).describe(inputs("q")[0])
    with pytest.raises(CaptionerError, match="query image 'q': HTTP 401"):
        ScriptedCaptioner({"q": [Answer(error="HTTP 401")]}).describe(inputs("q")[0])
    with pytest.raises(ImageLoadError):
        ScriptedCaptioner().describe(ImageInput("q", data=b"nope"))


def test_identity_and_context_manager():
    with ScriptedCaptioner() as captioner:
        identity = (captioner.name, captioner.model, captioner.prompt_version)
        assert identity == ("scripted", "scripted-model", "rsrt-caption-v1")
        assert captioner.model == captioner.model_id
    assert captioner.closed


def test_caption_result_ok():
    assert not CaptionResult("a").ok
    assert not CaptionResult("a", variants=[], error="x").ok


# -- the factory ----------------------------------------------------------------------------------


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        make_captioner("llamacpp")
    assert str(info.value) == "unknown captioner kind 'llamacpp'; valid kinds: openai, transformers"
    assert {"openai", "transformers"} <= set(captioner_kinds())


def test_bad_option_lists_accepted_options():
    with pytest.raises(ConfigError) as info:
        make_captioner("openai", base_url="http://127.0.0.1:9/v1", model="m", concurency=3)
    assert "concurency" in str(info.value) and "concurrency" in str(info.value)
    with pytest.raises(ConfigError, match="missing a required argument: 'model'"):
        make_captioner("openai", base_url="http://127.0.0.1:9/v1")


def test_factory_builds_the_backends():
    with make_captioner("openai", base_url="http://127.0.0.1:9/v1", model="qwen-vl", concurrency=2) as captioner:
        assert isinstance(captioner, OpenAICompatibleCaptioner)
        assert captioner.model == "qwen-vl" and captioner.name == "openai"
    with pytest.raises(CaptionerError, match="model folder '/nonexistent/model' does not exist"):
        make_captioner("transformers", model_path="/nonexistent/model")
    with pytest.raises(ConfigError, match="base_url must start with http"):
        make_captioner("openai", base_url="127.0.0.1:8000", model="m")


def test_flags_factory_names_the_missing_flag():
    with pytest.raises(ConfigError, match=r"^--captioner openai needs --model$"):
        captioner_from_flags("openai", model=None, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match=r"^--captioner openai needs --vlm-url \(or RSRT_VLM_URL\)$"):
        captioner_from_flags("openai", model="m", base_url=None)
    with pytest.raises(ConfigError, match=r"^--captioner transformers needs --model$"):
        captioner_from_flags("transformers", model="")
    with captioner_from_flags("openai", model="m", base_url="http://127.0.0.1:9/v1", concurrency=2) as captioner:
        assert isinstance(captioner, OpenAICompatibleCaptioner) and captioner.model == "m"
    # `model` is the model's name for every backend (the transformers backend calls it model_path)
    with pytest.raises(CaptionerError, match="model folder '/nonexistent/model' does not exist"):
        captioner_from_flags("transformers", model="/nonexistent/model", device="cpu")


def test_register_a_custom_backend(monkeypatch):
    monkeypatch.setattr(captioners_base, "_REGISTRY", dict(captioners_base._REGISTRY))  # undone after the test
    register_captioner("scripted", ScriptedCaptioner)
    captioner = make_captioner("scripted", chunk=2)
    assert isinstance(captioner, ScriptedCaptioner) and "scripted" in captioner_kinds()
    assert all(r.ok for r in captioner.caption(inputs("x", "y", "z")))
