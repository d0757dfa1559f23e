"""The index contract's data model: one record per image, holding up to five caption variants.

Sources produce `ImageRecord`s, captioners fill their `variants`, the encoder adds vectors, and
`to_document()` is the single place that decides what lands in OpenSearch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

VARIANT_FIELDS: tuple[str, ...] = ("one_sentence", "feature", "caption")
VARIANTS_PER_IMAGE = 5  # what the RSRT prompt asks a VLM for
# Legacy keys seen in RSRT caption dumps, mapped to the contract's names.
LEGACY_KEYS = {"one_sentence_caption": "one_sentence", "feature_analysis": "feature", "detailed_caption": "caption"}

_ID_SAFE = re.compile(r"[^A-Za-z0-9._:-]+")


def stable_image_id(value: str) -> str:
    """An `_id` that is the same for the same input on every run (idempotent re-ingest).

    Readable ids (file stems, STAC ids) are kept when safe; anything else is slugged, with a short
    hash when slugging could make two different inputs collide.
    """
    value = value.strip()
    slug = _ID_SAFE.sub("_", value).strip("_")[:200]
    if slug == value and slug:
        return slug
    digest = hashlib.sha1(value.encode("utf-8")).hexdigest()[:10]
    return f"{slug or 'image'}-{digest}"


@dataclass
class Variant:
    """One caption variant: a one-sentence summary, a feature list with positions, a detailed caption.

    Caption lists (benchmark human captions) fill only `caption`.
    """

    one_sentence: str = ""
    feature: str = ""
    caption: str = ""

    def labelled_text(self) -> str:
        """The text the encoder embeds: the three fields, labelled, in a fixed order."""
        parts = []
        if self.one_sentence:
            parts.append(f"Summary: {self.one_sentence}")
        if self.feature:
            parts.append(f"Features: {self.feature}")
        if self.caption:
            parts.append(f"Caption: {self.caption}" if (self.one_sentence or self.feature) else self.caption)
        return "\n".join(parts)

    def is_empty(self) -> bool:
        return not (self.one_sentence.strip() or self.feature.strip() or self.caption.strip())

    def to_dict(self) -> dict[str, str]:
        return {"one_sentence": self.one_sentence, "feature": self.feature, "caption": self.caption}

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Variant:
        """Accepts the contract's keys and the legacy ones; values must be strings."""
        values: dict[str, str] = {}
        for key, raw in data.items():
            name = LEGACY_KEYS.get(key, key)
            if name not in VARIANT_FIELDS:
                continue
            if raw is None:
                raw = ""
            if isinstance(raw, list):  # some VLMs answer the feature field as a list of items
                raw = "; ".join(str(item) for item in raw)
            if not isinstance(raw, str):
                raise ValueError(f"variant field {key!r} must be text, not {type(raw).__name__}")
            values[name] = raw.strip()
        return cls(**values)


@dataclass
class CaptionerInfo:
    """Who wrote the captions: recorded with each document so corpora stay comparable."""

    name: str = "precomputed"
    model: str = ""
    prompt_version: str = ""
    created: str = ""  # ISO 8601


@dataclass
class ImageRecord:
    """One image of an archive, as read from a source, before or after captioning."""

    image_id: str
    source_uri: str = ""
    collection: str | None = None
    datetime: str | None = None  # ISO 8601, UTC
    geometry: dict[str, Any] | None = None  # GeoJSON, WGS84
    bbox: list[float] | None = None  # [west, south, east, north]
    properties: dict[str, Any] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    captioner: CaptionerInfo | None = None
    # Filled by the encoder, one per variant (not part of equality of the text content).
    vectors: list[Any] | None = None  # per variant: float32 numpy rows (ingest) or lists of floats
    # A small JPEG of the picture (rsrt.ingest.thumbnails), written base64 by `to_document`; None: none made.
    thumbnail: bytes | None = field(default=None, repr=False)

    def centroid(self) -> dict[str, float] | None:
        if self.bbox:
            west, south, east, north = self.bbox[:4]
            return {"lat": (south + north) / 2.0, "lon": (west + east) / 2.0}
        return None
