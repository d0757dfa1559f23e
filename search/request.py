"""What one search asks for: a value object every caller builds (CLI, HTTP API, evaluation, benchmarks).

`SearchRequest` is validated once, when it is made, so a bad value is a `QueryError` naming the
field before anything reaches the cluster; `Searcher.search(request)` runs it and
`rsrt.search.queries` renders it as OpenSearch bodies.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from numbers import Integral
from typing import Any

from .errors import QueryError
from .filters import Filters
from .fusion import SEARCH_DEFAULTS, FusionSpec
from .sorting import SortKey, parse_sortby

MAX_K = 1000  # results per page
MAX_WINDOW = 10_000  # OpenSearch's index.max_result_window: offset + k never goes past it
DEFAULT_CANDIDATES = 100  # candidates per sub-query (kNN k, hybrid depth)
# The HNSW beam (ef_search) when a request names none, and never below the depth. At 100k duplicate-free
# images, recall@10 is 0.980 with ef = k = 100 and 0.9935 with 200 (the 0.99 target), for +0.7 to +5.4 ms
# dense p50 depending on the reading; 400 adds nothing (docs/performance/scale/README.md, sections 3 and 5).
# It widens only the graph search: k, the hits, stay the depth.
DEFAULT_EF_SEARCH = 200
MAX_EF_SEARCH = 100_000  # HNSW beam width; far past any useful value, well inside what k-NN parses
MAX_QUERY_CHARS = 2000
MAX_QUERY_TERMS = 128  # keeps BM25 under max_clause_count whatever users paste
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]")


def clean_query_text(text: Any) -> str:
    """User text is only text: normalised, control characters dropped, bounded in size."""
    if not isinstance(text, str):
        raise QueryError("q", "the query must be text")
    text = unicodedata.normalize("NFC", _CONTROL.sub(" ", text))
    text = " ".join(text.split()[:MAX_QUERY_TERMS])[:MAX_QUERY_CHARS].strip()
    if not text:
        raise QueryError("q", "the query text is empty")
    return text


class Mode(StrEnum):
    """How a text query is matched: by embedding, by BM25, or both fused."""

    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


DEFAULT_MODE = Mode(SEARCH_DEFAULTS["mode"])  # the product default (mappings/search-defaults.json)


class FusionSite(StrEnum):
    """Where hybrid fusion runs: in rsrt (two searches fused here) or in the cluster (a `hybrid`
    query through a search pipeline); `auto` is client-side, 3-6x faster (docs/performance)."""

    AUTO = "auto"
    CLIENT = "client"
    SERVER = "server"


class EmbedSite(StrEnum):
    """Where the query text becomes a vector: in rsrt (the Python encoder) or in the cluster (the
    index's ml-commons model, a plain-text `neural` query); `auto` = the cluster when the index has a
    model there, else rsrt."""

    AUTO = "auto"
    CLIENT = "client"
    CLUSTER = "cluster"


class LexicalScope(StrEnum):
    """BM25 per variant (an image scores by its best variant) or over all of an image's text at once."""

    VARIANT = "variant"
    IMAGE = "image"


def _choice(enum: type[StrEnum], value: Any, name: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise QueryError(name, f"{value!r} is not one of {', '.join(m.value for m in enum)}") from None


@dataclass(frozen=True)
class SearchRequest:
    """One ranked search for a text query (or a precomputed query vector).

    `k` results from `offset` on; `candidates` is the depth each sub-query ranks (kNN k, hybrid
    pagination depth); `vector` skips encoding (evaluation, benchmarks); `matched_variants=False`
    skips naming each hit's best variant when only ids and scores are wanted; `embed` says where the
    text becomes the query vector. `sort` (empty: by relevance) orders the first `candidates`
    ranked images by fields instead (`rsrt.search.sorting`), and pages within them.
    """

    text: str
    mode: Mode = DEFAULT_MODE
    k: int = 10
    offset: int = 0
    filters: Filters = field(default_factory=Filters)
    fusion: FusionSpec = field(default_factory=FusionSpec)
    candidates: int = DEFAULT_CANDIDATES
    ef_search: int | None = None
    fusion_site: FusionSite = FusionSite.AUTO
    explain: bool = False
    vector: list[float] | None = None
    matched_variants: bool = True
    embed: EmbedSite = EmbedSite.CLIENT
    sort: tuple[SortKey, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", clean_query_text(self.text))
        object.__setattr__(self, "mode", _choice(Mode, self.mode, "mode"))
        object.__setattr__(self, "fusion_site", _choice(FusionSite, self.fusion_site, "fusion_site"))
        object.__setattr__(self, "embed", _choice(EmbedSite, self.embed, "embed"))
        object.__setattr__(self, "sort", parse_sortby(self.sort))
        for name, value in (("limit", self.k), ("offset", self.offset), ("candidates", self.candidates),
                            ("ef_search", self.ef_search)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)):
                raise QueryError(name, f"must be a whole number, not {value!r}")
        if not 1 <= self.k <= MAX_K:
            raise QueryError("limit", f"must be between 1 and {MAX_K}")
        if self.offset < 0 or self.offset + self.k > MAX_WINDOW:
            raise QueryError("offset", f"must be at least 0, and offset + limit at most {MAX_WINDOW}")
        if not 1 <= self.candidates <= MAX_WINDOW:
            raise QueryError("candidates", f"must be between 1 and {MAX_WINDOW}")
        if self.ef_search is not None and not 1 <= self.ef_search <= MAX_EF_SEARCH:
            # k-NN refuses anything past a Java int with a reason that names no parameter
            raise QueryError("ef_search", f"must be between 1 and {MAX_EF_SEARCH}")

    @property
    def depth(self) -> int:
        """How many candidates each sub-query ranks: enough for this page, at least `candidates`."""
        return max(self.candidates, self.offset + self.k)

    @property
    def hnsw_ef_search(self) -> int:
        """The ef_search of every kNN clause of this request: the one asked for, else DEFAULT_EF_SEARCH or the depth."""
        return self.ef_search if self.ef_search is not None else max(DEFAULT_EF_SEARCH, self.depth)

    @property
    def needs_vector(self) -> bool:
        return self.mode is not Mode.LEXICAL
