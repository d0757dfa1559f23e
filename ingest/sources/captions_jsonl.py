"""Precomputed captions in JSON Lines: records that already carry their caption variants.

Two layouts are read. *Grouped*, one image per line::

    {"image": "scene_01.jpg", "variants": [{"one_sentence": ..., "feature": ..., "caption": ...}, ...5],
     "collection": ..., "datetime": ..., "geometry": ..., "bbox": ..., "properties": {...},
     "captioner": {"name": ..., "model": ..., "prompt_version": ..., "created": ...}}

*Flat*, one variant per line (RSRT dumps; legacy key names accepted), grouped by image in order
of first appearance::

    {"image": "scene_01.jpg", "one_sentence_caption": ..., "feature_analysis": ..., "caption": ...}

*Structured* variants (RSRT VLM output: any line with `one_sentence` or `feature`) are checked
strictly: five variants (or at least `min_variants` when it is given), every field non-empty and
at most 20 000 characters. *Caption-only* variants — the captions users already have — are
accepted in any number from `min_variants` (default 1) up to `MAX_CAPTION_VARIANTS`:

    {"image": "scene_01.jpg", "caption": "..."}                  (flat: one line per caption)
    {"image": "scene_01.jpg", "captions": ["...", "..."]}        (grouped: blank entries skipped)
    {"image": "scene_01.jpg", "variants": [{"caption": "..."}]}  (grouped caption-only variants)

Each bad line or image becomes a `SourceProblem` naming `file:line`; the file is read as bytes
and decoded line by line, and every decoded line is checked for what would fail later in the run
(nesting too deep to decode or index, lone surrogates that cannot be encoded or tokenized), so
one bad line never loses the rest.

`parse_variant` and `parse_variants` are those checks on already-decoded JSON; a VLM's raw text
answer is parsed by `rsrt.ingest.captioners.parse`, which raises the same `CaptionFormatError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rsrt.search.schema import (
    LEGACY_KEYS,
    VARIANT_FIELDS,
    VARIANTS_PER_IMAGE,
    CaptionerInfo,
    ImageRecord,
    Variant,
    stable_image_id,
)

from ..captioners.parse import CaptionFormatError
from .base import (
    IMAGE_EXTENSIONS,
    Source,
    SourceError,
    SourceItem,
    SourceProblem,
    geometry_and_bbox,
    json_safe,
    parse_iso_datetime,
    path_to_uri,
)

MAX_FIELD_CHARS = 20_000  # a longer "caption" is a runaway generation, not a caption
MAX_LINE_BYTES = 4 * 1024 * 1024  # guards memory against a line that never ends
MAX_DEPTH = 32  # deeper JSON cannot be indexed (OpenSearch's mapping depth limit is 20) and may not decode
MAX_CAPTION_VARIANTS = 50  # caption-only variants per image: each one is a nested document with a vector
_STRUCTURED_KEYS = frozenset(("one_sentence", "feature")) | frozenset(
    key for key, name in LEGACY_KEYS.items() if name != "caption"
)
_CAPTION_KEYS = frozenset(VARIANT_FIELDS) | frozenset(LEGACY_KEYS)
_META_KEYS = ("collection", "datetime", "geometry", "bbox", "properties", "captioner")
_IMAGE_IN_BYTES = re.compile(rb'"image"\s*:\s*"((?:[^"\\]|\\.){1,500})"')


# ---------------------------------------------------------------------------- reusable validation


def parse_variant(data: Any, *, label: str = "variant", required: Iterable[str] = VARIANT_FIELDS) -> Variant:
    """One variant mapping (contract or legacy keys) → `Variant`, or `CaptionFormatError`.

    Every field in `required` must be non-empty text of at most `MAX_FIELD_CHARS` characters.
    """
    if not isinstance(data, dict):
        raise CaptionFormatError(f"{label}: expected an object with {', '.join(VARIANT_FIELDS)}")
    for key, raw in data.items():
        if key in _CAPTION_KEYS and isinstance(raw, str) and len(raw) > MAX_FIELD_CHARS:
            raise CaptionFormatError(f"{label}: field {key!r} is {len(raw):,} characters (limit {MAX_FIELD_CHARS:,})")
    try:
        variant = Variant.from_mapping(data)
    except ValueError as exc:
        raise CaptionFormatError(f"{label}: {exc}") from None
    for name in VARIANT_FIELDS:
        if len(getattr(variant, name)) > MAX_FIELD_CHARS:  # a list joined into a long string
            raise CaptionFormatError(f"{label}: field {name!r} is longer than {MAX_FIELD_CHARS:,} characters")
    empty = [name for name in required if not getattr(variant, name)]
    if empty:
        raise CaptionFormatError(f"{label}: empty or missing {', '.join(empty)}")
    return variant


def parse_variants(
    data: Any,
    *,
    expected: int | None = VARIANTS_PER_IMAGE,
    required: Iterable[str] = VARIANT_FIELDS,
    min_variants: int | None = None,
) -> list[Variant]:
    """A list of variant mappings → variants.

    Structured variants: exactly `expected` of them (None: any), or from `min_variants` up to
    `expected` when `min_variants` is given. Caption-only variants (no `one_sentence`/`feature`
    key in any of them): from `min_variants` (default 1) up to `MAX_CAPTION_VARIANTS`, caption required.
    """
    if not isinstance(data, list):
        raise CaptionFormatError(f"variants: expected a list, got {type(data).__name__}")
    if data and all(isinstance(v, dict) and is_caption_only(v) for v in data):
        check_count(len(data), caption_only=True, expected=expected, min_variants=min_variants)
        return [parse_variant(v, label=f"variant {i}", required=("caption",)) for i, v in enumerate(data, 1)]
    check_count(len(data), caption_only=False, expected=expected, min_variants=min_variants)
    required = tuple(required)
    return [parse_variant(v, label=f"variant {i}", required=required) for i, v in enumerate(data, 1)]


def parse_caption_list(data: Any, *, min_variants: int | None = None) -> list[Variant]:
    """A `captions` list of plain texts → caption-only variants; blank entries carry nothing and are skipped."""
    if not isinstance(data, list):
        raise CaptionFormatError(f"captions: expected a list of texts, got {type(data).__name__}")
    variants: list[Variant] = []
    for number, text in enumerate(data, 1):
        if not isinstance(text, str):
            raise CaptionFormatError(f"captions[{number}]: expected text, got {type(text).__name__}")
        if len(text) > MAX_FIELD_CHARS:
            raise CaptionFormatError(f"captions[{number}] is {len(text):,} characters (limit {MAX_FIELD_CHARS:,})")
        if text.strip():
            variants.append(Variant(caption=text.strip()))
    if not variants:
        raise CaptionFormatError("captions: no caption text" if data else "captions: empty list")
    check_count(len(variants), caption_only=True, min_variants=min_variants)
    return variants


def is_caption_only(data: dict[str, Any]) -> bool:
    """A mapping with a caption and no structured field: a caption users already have, not RSRT VLM output."""
    return not (_STRUCTURED_KEYS & data.keys())


def check_count(
    count: int, *, caption_only: bool, expected: int | None = VARIANTS_PER_IMAGE, min_variants: int | None = None
) -> None:
    """`CaptionFormatError` unless `count` variants are acceptable for one image (see `parse_variants`)."""
    if count == 0:
        raise CaptionFormatError("no variants")
    if caption_only:
        least, most = min_variants or 1, MAX_CAPTION_VARIANTS
    elif min_variants is None:
        if expected is None or count == expected:
            return
        hint = " (--min-variants accepts fewer)" if count < expected else ""
        raise CaptionFormatError(f"expected {expected} variants, got {count}{hint}")
    else:
        least, most = min_variants, expected or MAX_CAPTION_VARIANTS
    if count < least:
        raise CaptionFormatError(f"expected at least {least} variants (--min-variants), got {count}")
    if count > most:
        raise CaptionFormatError(f"expected at most {most} variants, got {count}")


def unfit_value(obj: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Why a decoded JSON value cannot go through the run, or None.

    `json.loads` accepts `"\\udfff"` (a lone surrogate: valid JSON, not valid Unicode) and nesting up to
    the interpreter's recursion limit; the first fails every later encode (ids, the tokenizer, the
    bulk body) and deep nesting fails indexing. Iterative, so it cannot overflow the stack itself.
    """
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels (at {where or 'the top'})"
        if isinstance(value, str):
            if _has_lone_surrogate(value):
                return f"{where or 'value'}: contains a lone surrogate (an unpaired \\udXXX escape: not valid Unicode)"
        elif isinstance(value, dict):
            for key, item in value.items():
                if _has_lone_surrogate(key):
                    return f"{where or 'object'}: a key contains a lone surrogate (not valid Unicode)"
                stack.append((item, f"{where}.{key}" if where else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{number}]", depth + 1) for number, item in enumerate(value))
    return None


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def image_id_for(image: str) -> str:
    """The record id for an "image" value: its path without the image extension.

    Matches `FolderSource` ids when "image" is relative to the same folder (`sub/a.jpg` → `sub/a`).
    """
    path = PurePosixPath(image.replace("\\", "/"))
    stem = str(path.with_suffix("")) if path.suffix.lower() in IMAGE_EXTENSIONS else str(path)
    return stable_image_id(stem)


def parse_record_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """The optional per-image fields, checked and normalised, as `ImageRecord` keyword arguments."""
    out: dict[str, Any] = {}
    collection = obj.get("collection")
    if collection is not None:
        if not isinstance(collection, str) or not collection.strip():
            raise CaptionFormatError("collection: expected non-empty text")
        out["collection"] = collection.strip()
    when = obj.get("datetime")
    if when is not None:
        if not isinstance(when, str):
            raise CaptionFormatError("datetime: expected an ISO 8601 string")
        try:
            out["datetime"] = parse_iso_datetime(when)
        except ValueError as exc:
            raise CaptionFormatError(str(exc)) from None
    if obj.get("geometry") is not None or obj.get("bbox") is not None:
        try:
            out["geometry"], out["bbox"] = geometry_and_bbox(obj.get("geometry"), obj.get("bbox"))
        except ValueError as exc:
            raise CaptionFormatError(str(exc)) from None
    properties = obj.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            raise CaptionFormatError("properties: expected an object")
        try:
            out["properties"] = json_safe(properties)
        except ValueError:
            raise CaptionFormatError("properties: NaN or Infinity cannot be indexed") from None
    captioner = obj.get("captioner")
    if captioner is not None:
        out["captioner"] = parse_captioner(captioner)
    return out


def parse_captioner(data: Any) -> CaptionerInfo:
    """A `captioner` object → `CaptionerInfo` (text fields; `created` normalised to ISO UTC)."""
    if not isinstance(data, dict):
        raise CaptionFormatError("captioner: expected an object with name, model, prompt_version, created")
    values: dict[str, str] = {}
    for key in ("name", "model", "prompt_version", "created"):
        raw = data.get(key)
        if raw is None:
            continue
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise CaptionFormatError(f"captioner.{key}: expected text")
        values[key] = str(raw).strip()
    if values.get("created"):
        try:
            values["created"] = parse_iso_datetime(values["created"])
        except ValueError as exc:
            raise CaptionFormatError(f"captioner.{exc}") from None
    return CaptionerInfo(**values)


# ---------------------------------------------------------------------------- the source


@dataclass
class _FlatGroup:
    """Lines of one image in the flat layout, accumulated until the file is read."""

    image: str
    source_uri: str
    lines: list[int] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    meta: dict[str, tuple[Any, int]] = field(default_factory=dict)  # key -> (value, first line)
    caption_only_lines: list[int] = field(default_factory=list)
    broken: bool = False
    conflict: str | None = None


class CaptionsJsonlSource(Source):
    """Records with their caption variants already written (no captioner needed).

    `image_root` resolves relative "image" paths into `source_uri`s (default: the JSONL's
    directory); `captioner` is used for records that name none; `expected_variants` and
    `required_fields` are the strict checks of structured variants (5 variants, all three fields);
    `min_variants` is the fewest variants an image may have (default: 1 for caption-only variants,
    exactly `expected_variants` for structured ones).
    """

    kind = "captions"
    needs_captioning = False

    def __init__(
        self,
        path: str | Path,
        *,
        collection: str | None = None,
        image_root: str | Path | None = None,
        captioner: CaptionerInfo | None = None,
        expected_variants: int | None = VARIANTS_PER_IMAGE,
        required_fields: Iterable[str] = VARIANT_FIELDS,
        min_variants: int | None = None,
    ) -> None:
        if min_variants is not None and not 1 <= min_variants <= MAX_CAPTION_VARIANTS:
            raise SourceError(f"min_variants must be from 1 to {MAX_CAPTION_VARIANTS}, got {min_variants}")
        self.min_variants = min_variants
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such file (expected a .jsonl of captions)")
        try:
            with self.path.open("rb") as fh:
                has_content = any(raw.strip(b" \t\r\n\xef\xbb\xbf") for raw in fh)
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror}") from None
        if not has_content:
            raise SourceError(f"{self.path}: empty (expected JSON lines of image captions)")
        self.collection = collection
        self.image_root = Path(image_root).expanduser().resolve() if image_root else self.path.parent
        self.captioner = captioner or CaptionerInfo(name="precomputed")
        self.expected_variants = expected_variants
        self.required_fields = tuple(required_fields)
        unknown = set(self.required_fields) - set(VARIANT_FIELDS)
        if unknown:
            raise SourceError(f"required_fields: unknown field(s) {', '.join(sorted(unknown))}")

    def describe(self) -> str:
        return f"captions {self.path}"

    def count_hint(self) -> int | None:
        """Non-blank lines, divided by the variants per image when the first line is flat."""
        count, first = 0, None
        with self.path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    count += 1
                    if first is None:
                        first = raw
        if first is None:
            return 0
        try:
            obj = json.loads(first.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return count
        if isinstance(obj, dict) and _layout(obj) == "flat" and not is_caption_only(obj) and self.expected_variants:
            return max(1, count // self.expected_variants)
        return count

    # -------------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[SourceItem]:
        form: str | None = None
        form_line = 0
        first_line: dict[str, int] = {}  # grouped layout: image id -> line
        groups: dict[str, _FlatGroup] = {}  # flat layout, in order of first appearance
        for lineno, entry in self._objects():
            if isinstance(entry, SourceProblem):
                yield entry
                continue
            obj = entry
            line_form = _layout(obj)
            label = obj.get("image") if isinstance(obj.get("image"), str) else f"line {lineno}"
            if line_form is None:
                yield self._problem(label, "no 'variants' or 'captions' list and no caption fields", lineno)
                continue
            if form is None:
                form, form_line = line_form, lineno
            elif line_form != form:
                reason = f"uses the {line_form} layout but the file is {form} (from line {form_line})"
                yield self._problem(label, reason, lineno)
                continue
            if form == "grouped":
                try:
                    record = self.parse_grouped(obj)
                except CaptionFormatError as exc:
                    yield self._problem(label, str(exc), lineno)
                    continue
                if record.image_id in first_line:
                    yield self._problem(
                        record.image_id,
                        f"duplicate image id {record.image_id}, first at line {first_line[record.image_id]}",
                        lineno,
                    )
                    continue
                first_line[record.image_id] = lineno
                yield record
            else:
                problem = self._add_flat_line(groups, obj, lineno, label)
                if problem:
                    yield problem
        for image_id, group in groups.items():
            if group.broken:
                continue  # each bad line was reported where it was read
            if group.conflict:
                yield self._problem(image_id, group.conflict, *group.lines)
                continue
            caption_only = len(group.caption_only_lines) == len(group.lines)
            if group.caption_only_lines and not caption_only:
                lines = ", ".join(map(str, group.caption_only_lines))
                yield self._problem(
                    image_id,
                    f"caption-only line(s) {lines} among structured variants: empty or missing one_sentence, feature",
                    *group.caption_only_lines,
                )
                continue
            try:
                check_count(len(group.variants), caption_only=caption_only, expected=self.expected_variants,
                            min_variants=self.min_variants)
            except CaptionFormatError as exc:
                reason = str(exc).replace(", got ", ", found ", 1)
                yield self._problem(image_id, f"{reason} (lines {', '.join(map(str, group.lines))})", *group.lines)
                continue
            meta_obj = {key: value for key, (value, _) in group.meta.items()}
            try:
                meta = parse_record_metadata(meta_obj)
            except CaptionFormatError as exc:
                yield self._problem(image_id, str(exc), *group.lines)
                continue
            yield self._record(image_id, group.source_uri, group.variants, meta)

    def parse_grouped(self, obj: dict[str, Any]) -> ImageRecord:
        """One grouped-layout object → record (also usable on its own, e.g. for an API)."""
        image_id, source_uri = self._image(obj)
        if "captions" in obj:
            if "variants" in obj:
                raise CaptionFormatError("has both 'variants' and 'captions': give one of them")
            variants = parse_caption_list(obj["captions"], min_variants=self.min_variants)
        else:
            variants = parse_variants(obj.get("variants"), expected=self.expected_variants,
                                      required=self.required_fields, min_variants=self.min_variants)
        return self._record(image_id, source_uri, variants, parse_record_metadata(obj))

    def _add_flat_line(
        self, groups: dict[str, _FlatGroup], obj: dict[str, Any], lineno: int, label: str
    ) -> SourceProblem | None:
        try:
            image_id, source_uri = self._image(obj)
        except CaptionFormatError as exc:
            return self._problem(label, str(exc), lineno)
        group = groups.setdefault(image_id, _FlatGroup(image=label, source_uri=source_uri))
        group.lines.append(lineno)
        caption_only = is_caption_only(obj)
        if caption_only:
            group.caption_only_lines.append(lineno)
        try:
            required = ("caption",) if caption_only else self.required_fields
            group.variants.append(parse_variant(obj, label="variant", required=required))
        except CaptionFormatError as exc:
            group.broken = True
            return self._problem(image_id, str(exc), lineno)
        for key in _META_KEYS:
            value = obj.get(key)
            if value is None:
                continue
            if key not in group.meta:
                group.meta[key] = (value, lineno)
            elif group.meta[key][0] != value and group.conflict is None:
                group.conflict = f"conflicting {key!r} at lines {group.meta[key][1]} and {lineno}"
        return None

    def _image(self, obj: dict[str, Any]) -> tuple[str, str]:
        """(image id, source URI) from "image" (and an optional explicit "image_id")."""
        image = obj.get("image")
        if not isinstance(image, str) or not image.strip():
            raise CaptionFormatError("missing 'image' (the image file name, path or URI)")
        if len(image) > MAX_FIELD_CHARS:
            raise CaptionFormatError(f"field 'image' is {len(image):,} characters (limit {MAX_FIELD_CHARS:,})")
        image = image.strip()
        explicit = obj.get("image_id")
        if explicit is not None and (not isinstance(explicit, str) or not explicit.strip()):
            raise CaptionFormatError("image_id: expected non-empty text")
        image_id = stable_image_id(explicit) if explicit else image_id_for(image)
        return image_id, self._source_uri(image)

    def _source_uri(self, image: str) -> str:
        """URIs are kept; paths become absolute `file://` URIs (relative ones from `image_root`)."""
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", image):
            return image
        return path_to_uri(self.image_root / image)

    def _record(self, image_id: str, source_uri: str, variants: list[Variant], meta: dict[str, Any]) -> ImageRecord:
        record = ImageRecord(image_id=image_id, source_uri=source_uri, variants=variants, **meta)
        if self.collection:
            record.collection = self.collection
        if record.captioner is None:
            record.captioner = self.captioner
        return record

    def _objects(self) -> Iterator[tuple[int, dict[str, Any] | SourceProblem]]:
        """(line number, JSON object or problem) per non-blank line, decoding each line alone."""
        with self.path.open("rb") as fh:
            lineno = 0
            while True:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                lineno += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                        pass
                    reason = f"line longer than {MAX_LINE_BYTES // (1 << 20)} MiB"
                    yield lineno, self._problem(_image_hint(raw, lineno), reason, lineno)
                    continue
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield (
                        lineno,
                        self._problem(
                            _image_hint(raw, lineno),
                            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                            lineno,
                        ),
                    )
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield (
                        lineno,
                        self._problem(
                            _image_hint(raw, lineno),
                            f"malformed JSON: {exc.msg} at column {exc.colno}",
                            lineno,
                        ),
                    )
                    continue
                except RecursionError:
                    reason = f"JSON nested too deeply (far more than the {MAX_DEPTH} levels allowed)"
                    yield lineno, self._problem(_image_hint(raw, lineno), reason, lineno)
                    continue
                unfit = unfit_value(obj)
                if unfit is not None:
                    yield lineno, self._problem(_image_hint(raw, lineno), unfit, lineno)
                    continue
                if not isinstance(obj, dict):
                    yield (
                        lineno,
                        self._problem(f"line {lineno}", f"expected a JSON object, got {type(obj).__name__}", lineno),
                    )
                    continue
                yield lineno, obj

    def _problem(self, item: str, reason: str, *lines: int) -> SourceProblem:
        return SourceProblem(item=item, reason=reason, path=str(self.path), lines=tuple(lines))


def _layout(obj: dict[str, Any]) -> str | None:
    """"grouped" (one image per line: `variants` or `captions`), "flat" (caption fields), or None."""
    if "variants" in obj or "captions" in obj:
        return "grouped"
    return "flat" if _CAPTION_KEYS & obj.keys() else None


def _image_hint(raw: bytes, lineno: int) -> str:
    """The "image" of a line that does not parse, when it can be seen in the bytes; else `line N`."""
    match = _IMAGE_IN_BYTES.search(raw)
    return match.group(1).decode("utf-8", "replace") if match else f"line {lineno}"
