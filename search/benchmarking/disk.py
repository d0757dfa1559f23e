"""What an index keeps on disk, by Lucene file kind, and which of it a vector search reads.

Why per file: with the lucene engine the HNSW graph and the vectors are ordinary Lucene segment files, memory-mapped
and read through the OS page cache. They are not k-NN native memory: `_plugins/_knn/stats` reports
`graph_memory_usage` 0 for lucene fields, also after kNN queries (checked on 2.19.1), and the JVM heap does not hold
them either. So the memory a dense search needs to stay fast is the size of the files it reads ("hot"), and only
the segment file sizes show it, and show what quantisation changes:

- `.vec` raw float32 vectors (4 bytes a dimension), `.vex` the HNSW graph, `.vem`/`.vemf` their metadata;
- with `sq` also `.veq` (7-bit copies, ~1 byte a dimension) and `.vemq`; HNSW then scores the `.veq` copies,
  while `.vec` stays on disk for merges (re-quantising) and is cold for approximate search;
- `.dvd`/`.dvm` are doc values of every field. k-NN's lucene field also writes each vector there as binary doc
  values (what exact scoring reads: rsrt's exact path, script scoring), so raw vectors are on disk twice.
"""

from __future__ import annotations

from typing import Any

import opensearchpy
from opensearchpy import OpenSearch

from ..errors import from_opensearch

RAW = ("vec",)
QUANTISED = ("veq",)
GRAPH = ("vex",)
VECTOR_METADATA = ("vem", "vemf", "vemq")
DOC_VALUES = ("dvd", "dvm")


def index_files(client: OpenSearch, index: str) -> dict[str, int]:
    """Bytes per Lucene file extension ("vec", "veq", "vex", "fdt", …) over the index's primary shards.

    From the segment stats with `include_segment_file_sizes` (`_all.primaries.segments.file_sizes`), which also
    counts the files inside compound (.cfs) segments. Only segments already written count: refresh (and flush)
    first, or the latest documents are missing.
    """
    try:
        stats = client.indices.stats(index=index, metric="segments", params={"include_segment_file_sizes": "true"})
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=index) from None
    sizes = ((stats.get("_all") or {}).get("primaries") or {}).get("segments", {}).get("file_sizes") or {}
    return {ext: int(entry.get("size_in_bytes", 0)) for ext, entry in sorted(sizes.items())}


def _total(files: dict[str, int], extensions: tuple[str, ...]) -> int:
    return sum(files.get(ext, 0) for ext in extensions)


def vector_memory(files: dict[str, int]) -> dict[str, Any]:
    """The k-NN parts of `index_files`' answer, in bytes, and "hot": what an HNSW search reads.

    hot = graph + quantised vectors when the index has them, else graph + raw vectors (metadata is tiny and
    read once per segment). `quantised` says which case it was; `doc_values` is every field's doc values
    (vectors included, see the module docstring), reported beside the vectors, not in them.
    """
    raw, quantised, graph = _total(files, RAW), _total(files, QUANTISED), _total(files, GRAPH)
    metadata = _total(files, VECTOR_METADATA)
    return {
        "raw_vectors": raw,
        "quantised_vectors": quantised,
        "graph": graph,
        "metadata": metadata,
        "vector_files": raw + quantised + graph + metadata,
        "hot": graph + (quantised if quantised else raw),
        "quantised": quantised > 0,
        "doc_values": _total(files, DOC_VALUES),
        "all_files": sum(files.values()),
    }
