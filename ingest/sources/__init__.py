"""Ingest sources: archives on disk turned into `ImageRecord`s, one bad item never stopping a run.

source = open_source("/data/archive")          # folder, STAC, or captions .jsonl
# (a STAC API is no path: StacApiSource("https://…", collections=(…,), bbox=…, datetime=…))
for item in source:
    if isinstance(item, SourceProblem):
        report(item)                           # str(item) == "file:line: item: reason"
    else:
        handle(item)                           # an ImageRecord; caption it if source.needs_captioning
"""

from .base import (
    IMAGE_EXTENSIONS,
    Source,
    SourceError,
    SourceItem,
    SourceProblem,
    path_to_uri,
    uri_to_path,
)
from .captions_jsonl import (
    MAX_FIELD_CHARS,
    CaptionFormatError,
    CaptionsJsonlSource,
    image_id_for,
    parse_captioner,
    parse_record_metadata,
    parse_variant,
    parse_variants,
)
from .folder import FolderSource, inspect_image
from .open import SOURCE_KINDS, open_source
from .stac import PREFERRED_ASSETS, StacSource, item_to_record
from .stac_api import StacApiError, StacApiPageError, StacApiSource

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FIELD_CHARS",
    "PREFERRED_ASSETS",
    "SOURCE_KINDS",
    "CaptionFormatError",
    "CaptionsJsonlSource",
    "FolderSource",
    "Source",
    "SourceError",
    "SourceItem",
    "SourceProblem",
    "StacApiError",
    "StacApiPageError",
    "StacApiSource",
    "StacSource",
    "image_id_for",
    "inspect_image",
    "item_to_record",
    "open_source",
    "parse_captioner",
    "parse_record_metadata",
    "parse_variant",
    "parse_variants",
    "path_to_uri",
    "uri_to_path",
]
