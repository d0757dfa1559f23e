"""The index contract's field names, and reading a stored document back.

`rsrt.search.index.to_document` writes these fields (mappings/index-template.json declares them),
`rsrt.search.queries` queries them and the HTTP API serialises them: all three take the names
from here, so a renamed field is one edit.
"""

from __future__ import annotations

from typing import Any

from .schema import VARIANT_FIELDS

IMAGE_ID = "image_id"
SOURCE_URI = "source_uri"
COLLECTION = "collection"
DATETIME = "datetime"
GEOMETRY = "geometry"
CENTROID = "centroid"
BBOX = "bbox"
PROPERTIES = "properties"
SUMMARY = "summary"
CAPTIONER = "captioner"
VARIANT_COUNT = "variant_count"
ALL_TEXT = "all_text"  # every variant's text of one image (copy_to), for image-scope BM25
# A small JPEG of the image, base64 (mapping `binary`: not searchable, kept in _source, but left out of
# every search body's _source so result pages stay small; `Searcher.thumbnail` reads it alone).
THUMBNAIL = "thumbnail"
# The thumbnail's size in bytes, kept in _source: tells a reader (the API's items) that a document has a
# thumbnail without fetching it, and sums to what thumbnails cost on disk (a `sum` aggregation).
THUMBNAIL_BYTES = "thumbnail_bytes"

VARIANTS = "variants"  # nested: one entry per caption variant
VARIANT_POSITION = "n"
EMBEDDING = "embedding"
VARIANT_EMBEDDING = f"{VARIANTS}.{EMBEDDING}"
VARIANT_TEXT_FIELDS = tuple(f"{VARIANTS}.{name}" for name in VARIANT_FIELDS)

# Vectors are indexed but not stored in _source (mapping contract): never ask for them back. Thumbnails are
# stored, but a page of hits would carry ~10 KB each: search bodies leave them out too.
SOURCE_EXCLUDES = [VARIANT_EMBEDDING, THUMBNAIL]


def has_thumbnail(source: dict[str, Any]) -> bool:
    """Whether a stored document (its _source, thumbnail excluded) has a thumbnail to serve."""
    return isinstance(source, dict) and bool(source.get(THUMBNAIL_BYTES))


def property_field(name: str) -> str:
    """The document field of an item property (`properties.<name>`)."""
    return f"{PROPERTIES}.{name}"


def variant_at(source: dict[str, Any], position: int | None) -> dict[str, Any] | None:
    """The variant at a nested offset, from the image's _source (None when the source was not fetched)."""
    variants = source.get(VARIANTS) if isinstance(source, dict) else None
    if position is None or not isinstance(variants, list) or not 0 <= position < len(variants):
        return None
    return {k: v for k, v in variants[position].items() if k != EMBEDDING}


def variant_texts(entry: dict[str, Any]) -> dict[str, str]:
    """The three text fields of a stored variant, empty strings for the ones it lacks."""
    return {name: entry.get(name, "") for name in VARIANT_FIELDS}
