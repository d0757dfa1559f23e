"""The orjson body serializer: float32 vectors survive exactly, everything else as opensearch-py wrote it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsrt.search.serializer import FastJSONSerializer


@pytest.fixture
def serializer() -> FastJSONSerializer:
    return FastJSONSerializer()


def test_float32_rows_round_trip_exactly_and_shorter(serializer: FastJSONSerializer) -> None:
    rng = np.random.default_rng(0)
    row = rng.standard_normal(384).astype(np.float32)
    row /= np.linalg.norm(row)
    text = serializer.dumps({"variants": [{"n": 0, "embedding": row}]})
    back = np.asarray(json.loads(text)["variants"][0]["embedding"], dtype=np.float32)
    assert np.array_equal(back, row)
    as_doubles = json.dumps([float(x) for x in row])
    assert len(text) < 0.75 * len(as_doubles)


def test_strings_pass_through_and_plain_documents_match_the_stdlib(serializer: FastJSONSerializer) -> None:
    assert serializer.dumps('{"already": "json"}') == '{"already": "json"}'
    doc = {"image_id": "a", "caption": "ships — 船", "n": [1, 2.5, None, True]}
    assert json.loads(serializer.dumps(doc)) == doc


def test_what_orjson_cannot_write_takes_the_opensearch_py_path(serializer: FastJSONSerializer) -> None:
    big = {"value": 2**70}
    assert json.loads(serializer.dumps(big)) == big


def test_loads_accepts_what_the_stdlib_accepts(serializer: FastJSONSerializer) -> None:
    assert serializer.loads('{"a": [1, 2]}') == {"a": [1, 2]}
    assert serializer.loads('{"a": NaN}')["a"] != serializer.loads('{"a": NaN}')["a"]  # NaN, as json.loads
