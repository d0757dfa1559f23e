"""The one way documents are written to an index, and the one retry budget for writing.

Used by the ingest pipeline (one call per batch) and by the evaluation engine (one call per corpus).

The retry budget: `RetryPolicy.attempts` (`--max-retries`) is the number of attempts of one call —
a bulk batch, or the `mget` that checks which ids are already indexed — for connection errors,
timeouts and HTTP 429 rejections (of the whole request, or of some of its documents), with
exponential back-off (`backoff`, doubled after every failed attempt, at most `max_backoff`). It is
counted here and nowhere else: the ingest client is built with `max_retries=0` and bulk requests
go out with `streaming_bulk(max_retries=0)`, so "stayed unreachable" comes after `attempts`
requests, not after a product of three retry loops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import opensearchpy
from opensearchpy import OpenSearch, helpers

from rsrt.search.errors import ClusterError
from rsrt.search.index import to_document
from rsrt.search.ml_ingest import NO_PIPELINE
from rsrt.search.schema import ImageRecord

T = TypeVar("T")
MAX_CHUNK_BYTES = 50 * 1024 * 1024


class _Overloaded(Exception):
    """Some documents of a bulk request were rejected with HTTP 429: try them again."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # per call; at least one attempt is always made
    backoff: float = 2.0  # seconds after the first failed attempt, doubled after each next one
    max_backoff: float = 30.0

    def pause(self, failed: int) -> float:
        """Seconds to wait after the `failed`-th failed attempt."""
        return min(self.backoff * 2 ** (failed - 1), self.max_backoff)

    def call(self, fn: Callable[[bool], T], what: str, *, hint: str = "run the same command again",
             stop: Callable[[], bool] | None = None) -> T:
        """`fn(final)` until it returns; connection errors, timeouts and 429s use up the budget.

        `final` tells `fn` that this is the last attempt. `stop()` (checked before every attempt)
        ends the retries early. When the budget is spent the error names `what` was being done.
        """
        attempts = max(1, self.attempts)
        why = "stopped"
        for attempt in range(1, attempts + 1):
            if stop is not None and stop():
                why = "stopped"
                break
            try:
                return fn(attempt == attempts)
            except (opensearchpy.ConnectionError, opensearchpy.ConnectionTimeout) as exc:
                why = type(exc).__name__
            except opensearchpy.TransportError as exc:
                if exc.status_code != 429:
                    raise
                why = "HTTP 429: the cluster is overloaded"
            except _Overloaded as exc:
                why = str(exc)
            if attempt < attempts:
                time.sleep(self.pause(attempt))
        raise ClusterError(f"OpenSearch stayed unreachable while {what} ({why}); {hint}")


class WriteResult(NamedTuple):
    written: list[str]  # ids the index accepted
    refused: list[tuple[str, str]]  # (id, the cluster's reason) of documents it will not take as they are

    def raise_if_refused(self, index: str) -> None:
        """For callers where every document must go in: a refused one is an error, not a dead letter."""
        if self.refused:
            image_id, reason = self.refused[0]
            more = f" (and {len(self.refused) - 1} more)" if len(self.refused) > 1 else ""
            raise ClusterError(f"OpenSearch refused document {image_id!r} in {index!r}: {reason}{more}")


def write_documents(client: OpenSearch, index: str, records: Iterable[ImageRecord],
                    policy: RetryPolicy | None = None, *, chunk_size: int = 500,
                    request_timeout: float | None = None, hint: str = "run the same command again",
                    stop: Callable[[], bool] | None = None, pipeline: str = NO_PIPELINE) -> WriteResult:
    """Index `records` (as `to_document` shapes them) under their image ids; the budget is `policy`.

    `pipeline` is the ingest pipeline of the bulk requests: by default none, not even the index's
    default one (records carry their vectors); `rsrt.search.ml_ingest.pipeline_name(alias)` for
    records without vectors, which the cluster embeds.

    Documents the cluster refuses (mapping conflicts, too large, ...) are returned with its reason;
    documents still rejected with 429 when the budget is spent too. A cluster that stays unreachable
    raises `ClusterError` ("stayed unreachable while writing to ...; `hint`").
    """
    policy = policy or RetryPolicy()
    pending = [(r.image_id, to_document(r)) for r in records]
    written: list[str] = []
    refused: list[tuple[str, str]] = []
    options: dict[str, Any] = {"pipeline": pipeline}
    if request_timeout:
        options["request_timeout"] = request_timeout

    def attempt(final: bool) -> None:
        nonlocal pending
        actions = ({"_op_type": "index", "_index": index, "_id": i, "_source": doc} for i, doc in pending)
        results = helpers.streaming_bulk(client, actions, chunk_size=max(1, chunk_size),
                                         max_chunk_bytes=MAX_CHUNK_BYTES, raise_on_error=False,
                                         raise_on_exception=True, max_retries=0, **options)
        answered = 0
        rejected: list[tuple[str, dict[str, Any]]] = []
        try:
            for (image_id, doc), (ok, info) in zip(pending, results, strict=False):
                answered += 1
                item = next(iter(info.values()))
                if ok:
                    written.append(image_id)
                elif item.get("status") == 429 and not final:
                    rejected.append((image_id, doc))
                else:
                    refused.append((image_id, _reason(item)))
        finally:
            # what got no answer (the request failed) or was rejected is what the next attempt sends
            pending = rejected + pending[answered:]
        if rejected:
            raise _Overloaded(f"HTTP 429 for {len(rejected)} documents: the cluster is overloaded")

    if pending:
        policy.call(attempt, f"writing to {index!r}", hint=hint, stop=stop)
    return WriteResult(written, refused)


def _reason(item: dict[str, Any]) -> str:
    error = item.get("error", {})
    reason = error.get("reason") if isinstance(error, dict) else str(error)
    caused = error.get("caused_by", {}).get("reason") if isinstance(error, dict) else None
    return f"{reason}: {caused}" if caused else str(reason)
