"""Turn a VLM's answer into validated `Variant`s.

VLMs wrap JSON in markdown fences, add a sentence before or after it, use older key names or give
`feature` as a list; all of that is tolerated. What is *not* tolerated is anything that would put a
bad document in the index: a wrong number of variants, empty or absurdly long fields, duplicates,
text that is not valid Unicode. Those raise `CaptionFormatError` with a message that says exactly
what is wrong, so the retry log and the quarantine file are readable.

`parse_variants` is the strict check (exactly five, all valid); `parse_partial_variants` keeps the
valid variants of an answer that has fewer (or some broken ones) and says which were dropped, so
an image with four good variants is not lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from rsrt.search.errors import RsrtError
from rsrt.search.schema import LEGACY_KEYS, VARIANT_FIELDS, VARIANTS_PER_IMAGE, Variant

MIN_FIELD_CHARS = 3
MAX_CHARS = {"one_sentence": 400, "feature": 4000, "caption": 4000}
QUOTE_CHARS = 80
# Keys under which a model may put the list of variants instead of "variants".
_LIST_KEYS = ("variants", "captions", "descriptions", "results", "items")

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript)?[ \t]*\n?(.*?)```", re.DOTALL)
# `{` opening a key or an empty object, `[` opening a list: not "{the answer}" or "[1]" in prose.
_JSON_START = re.compile(r"""\{\s*(?:["'}]|\Z)|\[\s*(?:[{\["'\]]|\Z)""")
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_SPACES = re.compile(r"\s+")


class CaptionFormatError(RsrtError):
    """A VLM answer that cannot become valid variants; the message says what is wrong."""


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """A one-line excerpt of `text` for error messages (long answers would flood logs)."""
    flat = _SPACES.sub(" ", text).strip()
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return repr(flat)


@dataclass
class PartialVariants:
    """The valid variants of one answer, and why each of the others was dropped."""

    variants: list[Variant]
    dropped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.dropped and len(self.variants) == VARIANTS_PER_IMAGE


def parse_partial_variants(text: str, *, min_variants: int = 1) -> PartialVariants:
    """Up to five valid variants of an answer; `CaptionFormatError` if fewer than `min_variants` are valid.

    Broken and duplicate variants are dropped (their reasons kept), variants past the fifth ignored;
    an answer that is not JSON at all still raises, as with `parse_variants`.
    """
    items = _variant_items(_extract_json(text))
    kept: list[Variant] = []
    dropped: list[str] = []
    seen: dict[tuple[str, ...], int] = {}
    for number, item in enumerate(items, start=1):
        if len(kept) == VARIANTS_PER_IMAGE:
            dropped.append(f"variants {number}-{len(items)} are beyond the {VARIANTS_PER_IMAGE} asked for")
            break
        try:
            variant = _to_variant(item, f"variant {number}")
        except CaptionFormatError as exc:
            dropped.append(str(exc))
            continue
        key = tuple(_normalise(getattr(variant, name)) for name in VARIANT_FIELDS)
        if key in seen:
            dropped.append(f"variant {number} duplicates variant {seen[key]}")
            continue
        seen[key] = number
        kept.append(variant)
    if len(items) < VARIANTS_PER_IMAGE:
        dropped.append(f"expected {VARIANTS_PER_IMAGE} variants, got {len(items)}")
    if len(kept) < max(1, min_variants):
        detail = "; ".join(dropped[:3]) + ("; …" if len(dropped) > 3 else "")
        raise CaptionFormatError(
            f"{len(kept)} valid variant{'s' * (len(kept) != 1)}, need at least {max(1, min_variants)}: {detail}"
        )
    return PartialVariants(kept, dropped)


def parse_variants(text: str) -> list[Variant]:
    """The five variants of an archive-image answer; raises `CaptionFormatError` otherwise."""
    value = _extract_json(text)
    items = _variant_items(value)
    if len(items) != VARIANTS_PER_IMAGE:
        raise CaptionFormatError(f"expected {VARIANTS_PER_IMAGE} variants, got {len(items)}")
    variants = [_to_variant(item, f"variant {number}") for number, item in enumerate(items, start=1)]
    seen: dict[tuple[str, ...], int] = {}
    for number, variant in enumerate(variants, start=1):
        key = tuple(_normalise(getattr(variant, name)) for name in VARIANT_FIELDS)
        if key in seen:
            raise CaptionFormatError(f"variant {number} duplicates variant {seen[key]}")
        seen[key] = number
    return variants


def parse_query_description(text: str) -> Variant:
    """The single description of a query image; raises `CaptionFormatError` otherwise.

    A model that answers with a list of variants anyway gets its first one used: for a query the
    extra variants are harmless, failing the user's search would not be.
    """
    value = _extract_json(text)
    if isinstance(value, dict) and _has_variant_keys(value):
        return _to_variant(value, "description")
    items = _variant_items(value)
    if not items:
        raise CaptionFormatError("expected one description object, got an empty list")
    return _to_variant(items[0], "description")


def _normalise(value: str) -> str:
    return _SPACES.sub(" ", value).strip().lower()


def _has_variant_keys(data: dict[str, Any]) -> bool:
    return any(LEGACY_KEYS.get(key, key) in VARIANT_FIELDS for key in data)


def _extract_json(text: str) -> Any:
    """The first JSON object or array in `text`, looking inside code fences first."""
    if not isinstance(text, str):
        raise CaptionFormatError(f"answer is {type(text).__name__}, not text")
    stripped = text.strip()
    if not stripped:
        raise CaptionFormatError("answer is empty")
    candidates = [block.strip() for block in _FENCE.findall(stripped)]
    if "```" in stripped and not candidates:  # an unclosed fence: the model was cut off
        candidates.append(stripped.split("```", 1)[1].removeprefix("json").strip())
    candidates.append(stripped)
    first_error: json.JSONDecodeError | None = None
    for candidate in candidates:
        # Only the first JSON-looking start: descending into a broken object would find one of
        # its inner variants and report a misleading count instead of the real problem.
        start = _JSON_START.search(candidate)
        if start is None:
            continue
        doc = candidate[start.start() :]
        for attempt in (doc, _TRAILING_COMMA.sub(r"\1", doc)):
            try:
                value, _end = json.JSONDecoder().raw_decode(attempt)
            except json.JSONDecodeError as exc:
                if first_error is None:
                    first_error = exc
                continue
            except RecursionError:
                raise CaptionFormatError("answer JSON is nested too deeply to decode") from None
            return value
    if first_error is None:
        raise CaptionFormatError(f"answer is prose, no JSON object found: {quote(stripped)}")
    if first_error.pos >= len(first_error.doc.rstrip()) or _unclosed(first_error.doc):
        raise CaptionFormatError(f"answer ends before its JSON is complete (cut off?): {quote(stripped)}")
    raise CaptionFormatError(
        f"answer has invalid JSON ({first_error.msg} at line {first_error.lineno} "
        f"column {first_error.colno}): {quote(stripped)}"
    )


def _unclosed(doc: str) -> bool:
    """Whether `doc` ends inside a string or with brackets still open: the model was cut off."""
    depth, in_string, escaped = 0, False, False
    for char in doc:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return False  # the first value closed: whatever is wrong, it is not a cut
    return in_string or depth > 0


def _variant_items(value: Any) -> list[Any]:
    """The list of variant objects inside a decoded answer, whatever wrapper the model chose."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for key in _LIST_KEYS:
            if key in value:
                items = value[key]
                if not isinstance(items, list):
                    raise CaptionFormatError(f"'{key}' must be a list, not {type(items).__name__}")
                return items
        if _has_variant_keys(value):
            return [value]  # one variant alone: reported as a count error by the caller
        nested = list(value.values())
        if nested and all(isinstance(item, dict) and _has_variant_keys(item) for item in nested):
            return nested  # {"variant_1": {...}, "variant_2": {...}, ...}
        keys = ", ".join(repr(key) for key in list(value)[:6])
        raise CaptionFormatError(f"JSON object has no 'variants' list (keys: {keys})")
    raise CaptionFormatError(f"answer JSON is a {type(value).__name__}, expected an object")


def _flatten(value: Any) -> Any:
    """Lists/objects of feature items as readable text: the encoder embeds text, not structures."""
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_flatten(item)}" for key, item in value.items())
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, dict):
                parts.append(", ".join(str(_flatten(v)) for v in item.values() if v not in (None, "")))
            else:
                parts.append(str(_flatten(item)))
        return "; ".join(part for part in parts if part)
    return value


def _to_variant(item: Any, label: str) -> Variant:
    if not isinstance(item, dict):
        raise CaptionFormatError(f"{label} is a {type(item).__name__}, expected an object")
    present = {LEGACY_KEYS.get(key, key) for key in item}
    if not present & set(VARIANT_FIELDS):
        keys = ", ".join(repr(key) for key in list(item)[:6]) or "none"
        raise CaptionFormatError(f"{label} has none of the fields {', '.join(VARIANT_FIELDS)} (keys: {keys})")
    try:
        data = {key: _flatten(raw) for key, raw in item.items()}
    except RecursionError:
        raise CaptionFormatError(f"{label} is nested too deeply") from None
    try:
        variant = Variant.from_mapping(data)
    except ValueError as exc:
        raise CaptionFormatError(f"{label}: {exc}") from None
    for name in VARIANT_FIELDS:
        if name not in present:
            raise CaptionFormatError(f"{label} field '{name}' is missing")
        value = getattr(variant, name)
        setattr(variant, name, _SPACES.sub(" ", value).strip() if name == "one_sentence" else value)
        value = getattr(variant, name)
        if not value:
            raise CaptionFormatError(f"{label} field '{name}' is empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # "\\udfff" in the JSON: it decodes, then fails the encoder
            raise CaptionFormatError(f"{label} field '{name}' contains a lone surrogate (not valid Unicode)") from None
        if len(value) < MIN_FIELD_CHARS:
            raise CaptionFormatError(
                f"{label} field '{name}' is too short ({len(value)} chars, min {MIN_FIELD_CHARS}): "
                f"{quote(value)}"
            )
        if len(value) > MAX_CHARS[name]:
            raise CaptionFormatError(
                f"{label} field '{name}' is too long ({len(value)} chars, max {MAX_CHARS[name]})"
            )
    return variant


__all__ = ["CaptionFormatError", "PartialVariants", "parse_partial_variants", "parse_query_description",
           "parse_variants"]
