"""Captioners: a VLM writes the five RSRT caption variants of each archive image.

    from rsrt.ingest.captioners import ImageInput, make_captioner

    with make_captioner("openai", base_url="http://gpu:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct") as c:
        for result in c.caption([ImageInput.from_path("a.jpg")]):
            ...  # result.variants, or result.error for the quarantine

The backends are imported lazily: importing this package must not pull in torch or httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    Answer,
    Captioner,
    CaptionerError,
    CaptionerOutage,
    CaptionResult,
    ImageInput,
    ImageLoadError,
    LoadedImage,
    captioner_from_flags,
    captioner_kinds,
    make_captioner,
    register_captioner,
)
from .parse import CaptionFormatError, PartialVariants, parse_partial_variants, parse_query_description, parse_variants
from .prompt import CAPTION_PROMPT, PROMPT_VERSION, QUERY_PROMPT, QUERY_PROMPT_VERSION

if TYPE_CHECKING:
    from .openai_http import OpenAICompatibleCaptioner
    from .transformers_vlm import TransformersCaptioner

_LAZY = {
    "TransformersCaptioner": "transformers_vlm",
    "OpenAICompatibleCaptioner": "openai_http",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPTION_PROMPT",
    "PROMPT_VERSION",
    "QUERY_PROMPT",
    "QUERY_PROMPT_VERSION",
    "Answer",
    "CaptionFormatError",
    "CaptionResult",
    "Captioner",
    "CaptionerError",
    "CaptionerOutage",
    "ImageInput",
    "ImageLoadError",
    "LoadedImage",
    "OpenAICompatibleCaptioner",
    "PartialVariants",
    "TransformersCaptioner",
    "captioner_from_flags",
    "captioner_kinds",
    "make_captioner",
    "parse_partial_variants",
    "parse_query_description",
    "parse_variants",
    "register_captioner",
]
