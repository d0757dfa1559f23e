"""The RSRT captioning prompts, versioned.

The prompt is part of the index contract: captions written with different prompts are not
comparable, so every document records `PROMPT_VERSION`. Change the text ⇒ bump the version.
"""

from __future__ import annotations

from rsrt.search.schema import VARIANTS_PER_IMAGE

PROMPT_VERSION = "rsrt-caption-v1"
QUERY_PROMPT_VERSION = "rsrt-query-v1"

# Shared wording, so archive captions and query descriptions use the same vocabulary
# (text-to-text retrieval works best when both sides are written the same way).
_ORIENTATION = (
    "The image is north-up: its top edge is north (N), bottom edge south (S), "
    "left edge west (W) and right edge east (E)."
)
_FIELDS = (
    '- "one_sentence": one sentence that summarises the scene (what kind of place this is).\n'
    '- "feature": the main visible objects; for each give its position in the image '
    "(N, S, E, W, NE, NW, SE, SW or center) and its size (small, medium or large), "
    'e.g. "large runway (center, running E-W); small white airplanes (NE); medium parking lot (S)".\n'
    '- "caption": a detailed caption of two to four sentences: scene type, objects and their '
    "approximate counts, colours, layout and spatial relations, using the same directions."
)
_RULES = (
    "Describe only what is visible; do not guess place names, dates or the sensor. "
    "Use plain English and the words small, medium and large for sizes."
)

CAPTION_PROMPT = (
    "You are annotating a remote sensing image for a text search index. "
    f"{_ORIENTATION}\n\n"
    f"Write {VARIANTS_PER_IMAGE} different descriptions (variants) of the image. "
    "Each variant has three fields:\n"
    f"{_FIELDS}\n\n"
    f"{_RULES} The {VARIANTS_PER_IMAGE} variants must differ in wording and emphasis "
    "(overall scene, dominant objects, layout, colours and textures, small details); "
    "never repeat a variant.\n\n"
    "Answer with JSON only: no prose, no markdown, exactly this shape:\n"
    '{"variants": [{"one_sentence": "...", "feature": "...", "caption": "..."}, '
    f"... {VARIANTS_PER_IMAGE} objects in total]}}"
)
"""Asks a VLM for the five structured variants of one archive image (strict JSON)."""

QUERY_PROMPT = (
    "You are describing a remote sensing image so that similar images can be found by text search. "
    f"{_ORIENTATION}\n\n"
    "Describe the image with three fields:\n"
    f"{_FIELDS}\n\n"
    f"{_RULES}\n\n"
    "Answer with one JSON object only: no prose, no markdown, exactly this shape:\n"
    '{"one_sentence": "...", "feature": "...", "caption": "..."}'
)
"""Asks a VLM for one description of a *query* image, in the same fields as the archive variants."""

__all__ = ["CAPTION_PROMPT", "PROMPT_VERSION", "QUERY_PROMPT", "QUERY_PROMPT_VERSION"]
