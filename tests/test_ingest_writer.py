"""The one write path and its one retry budget, without a cluster: attempts are counted, not multiplied."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from opensearchpy.serializer import JSONSerializer

from rsrt.ingest.pipeline import IngestStats
from rsrt.ingest.writer import RetryPolicy, write_documents
from rsrt.search.client import connect
from rsrt.search.config import ConnectionSettings
from rsrt.search.errors import ClusterError
from rsrt.search.schema import ImageRecord, Variant

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.001)


def _records(*ids: str) -> list[ImageRecord]:
    return [ImageRecord(image_id=i, variants=[Variant(caption=f"caption of {i}")]) for i in ids]


class _Transport:
    serializer = JSONSerializer()


class _ScriptedClient:
    """Answers each bulk request with the next status per document (201, 429 or 400)."""

    def __init__(self, *rounds: dict[str, int]) -> None:
        self.transport = _Transport()
        self.rounds = list(rounds)
        self.sent: list[list[str]] = []

    def bulk(self, body: Any, **_: Any) -> dict[str, Any]:
        lines = [self.transport.serializer.loads(line) for line in body.splitlines() if line]
        ids = [line["index"]["_id"] for line in lines[::2]]
        self.sent.append(ids)
        statuses = self.rounds.pop(0)
        items = []
        for image_id in ids:
            status = statuses.get(image_id, 201)
            item: dict[str, Any] = {"_id": image_id, "status": status}
            if status >= 300:
                item["error"] = {"type": "x", "reason": f"status {status}", "caused_by": {"reason": "because"}}
            items.append({"index": item})
        return {"errors": any(s >= 300 for s in statuses.values()), "items": items}


def test_rejected_documents_are_sent_again_within_the_budget():
    client = _ScriptedClient({"b": 429}, {})
    written, refused = write_documents(client, "idx", _records("a", "b", "c"), FAST)
    assert sorted(written) == ["a", "b", "c"] and refused == []
    assert client.sent == [["a", "b", "c"], ["b"]]  # only the rejected one again


def test_refusals_are_returned_and_429s_after_the_budget_are_refusals_too():
    client = _ScriptedClient({"a": 400, "b": 429}, {"b": 429}, {"b": 429})
    result = write_documents(client, "idx", _records("a", "b", "c"), FAST)
    assert sorted(result.written) == ["c"]
    assert result.refused == [("a", "status 400: because"), ("b", "status 429: because")]
    assert len(client.sent) == FAST.attempts
    with pytest.raises(ClusterError, match="refused document 'a' in 'idx': status 400: because \\(and 1 more\\)"):
        result.raise_if_refused("idx")


def test_an_unreachable_cluster_is_tried_exactly_max_retries_times():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    client = connect(ConnectionSettings.resolve(url=f"http://127.0.0.1:{dead_port}", env={}), max_retries=0)
    calls: list[str] = []
    perform = client.transport.perform_request

    def counting(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(url)
        return perform(method, url, *args, **kwargs)

    client.transport.perform_request = counting
    with pytest.raises(ClusterError) as info:
        write_documents(client, "idx", _records("a"), FAST, hint="what was written is checkpointed")
    assert calls == ["/_bulk"] * FAST.attempts
    assert str(info.value) == ("OpenSearch stayed unreachable while writing to 'idx' (ConnectionError); "
                               "what was written is checkpointed")


def test_stats_counters_are_added_under_one_lock():
    stats = IngestStats()

    def count() -> None:
        for _ in range(2000):
            stats.add(seen=1, quarantined=1)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (stats.seen, stats.quarantined) == (8000, 8000)
    assert list(stats.as_dict()) == ["seen", "ingested", "skipped", "quarantined", "failed", "variants",
                                     "partial", "deferred", "wall_seconds", "docs_per_second", "stage_seconds"]
    with pytest.raises(AttributeError, match="no counter wall_seconds"):
        stats.add(wall_seconds=1)
