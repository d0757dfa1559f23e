"""Precomputed VLM captions in JSON Lines: records that already carry their five variants.

Two layouts are read. *Grouped*, one image per line::

    {"image": "scene_01.jpg", "variants": [{"one_sentence": ..., "feature": ..., "caption": ...}, ...5],
     "collection": ..., "datetime": ..., "geometry": ..., "bbox": ..., "properties": {...},
     "captioner": {"name": ..., "model": ..., "prompt_version": ..., "created": ...}}

*Flat*, one variant per line (RSRT dumps; legacy key names accepted), grouped by image in order
of first appearance::

    {"image": "scene_01.jpg", "one_sentence_caption": ..., "feature_analysis": ..., "caption": ...}

This is VLM output, so it is checked strictly: five variants, every field non-empty and at most
20 000 characters. Each bad line or image becomes a `SourceProblem` naming `file:line`; the
file is read as bytes and decoded line by line so one bad byte never loses the rest.

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
    data: Any, *, expected: int | None = VARIANTS_PER_IMAGE, required: Iterable[str] = VARIANT_FIELDS
) -> list[Variant]:
    """A list of variant mappings → variants; exactly `expected` of them (None: any, at least one)."""
    if not isinstance(data, list):
        raise CaptionFormatError(f"variants: expected a list, got {type(data).__name__}")
    if expected is not None and len(data) != expected:
        raise CaptionFormatError(f"expected {expected} variants, got {len(data)}")
    if not data:
        raise CaptionFormatError("no variants")
    required = tuple(required)
    return [parse_variant(v, label=f"variant {i}", required=required) for i, v in enumerate(data, 1)]


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
    broken: bool = False
    conflict: str | None = None


class CaptionsJsonlSource(Source):
    """Records with their caption variants already written (no captioner needed).

    `image_root` resolves relative "image" paths into `source_uri`s (default: the JSONL's
    directory); `captioner` is used for records that name none; `expected_variants` and
    `required_fields` are the strict checks (5 variants, all three fields).
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
    ) -> None:
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
        if isinstance(obj, dict) and "variants" not in obj and self.expected_variants:
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
            line_form = "grouped" if "variants" in obj else "flat" if _CAPTION_KEYS & obj.keys() else None
            label = obj.get("image") if isinstance(obj.get("image"), str) else f"line {lineno}"
            if line_form is None:
                yield self._problem(label, "no 'variants' list and no caption fields", lineno)
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
            expected = self.expected_variants
            if (expected is not None and len(group.variants) != expected) or not group.variants:
                yield self._problem(
                    image_id,
                    f"expected {expected} variants, found {len(group.variants)} "
                    f"(lines {', '.join(map(str, group.lines))})",
                    *group.lines,
                )
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
        variants = parse_variants(obj.get("variants"), expected=self.expected_variants, required=self.required_fields)
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
        try:
            group.variants.append(parse_variant(obj, label="variant", required=self.required_fields))
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
                if not isinstance(obj, dict):
                    yield (
                        lineno,
                        self._problem(f"line {lineno}", f"expected a JSON object, got {type(obj).__name__}", lineno),
                    )
                    continue
                yield lineno, obj

    def _problem(self, item: str, reason: str, *lines: int) -> SourceProblem:
        return SourceProblem(item=item, reason=reason, path=str(self.path), lines=tuple(lines))


def _image_hint(raw: bytes, lineno: int) -> str:
    """The "image" of a line that does not parse, when it can be seen in the bytes; else `line N`."""
    match = _IMAGE_IN_BYTES.search(raw)
    return match.group(1).decode("utf-8", "replace") if match else f"line {lineno}"
