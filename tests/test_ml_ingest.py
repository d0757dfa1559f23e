"""Embedding on write by the cluster (`rsrt.search.ml_ingest`), on the session node.

The painless part runs through `_ingest/pipeline/_simulate` with every variant shape and must give the
text `Variant.labelled_text()` gives; the whole pipeline must write documents equal to rsrt's own (texts
equal, vectors within cosine 0.999), whether rsrt (`--embed cluster`) or a plain client writes them.
Vectors are not in `_source` (mapping contract) and a knn field has no doc values, so they are read
back as a script score (`cosineSimilarity`) of the Python encoder's vector against each nested variant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from rsrt.ingest.config import IngestConfig
from rsrt.ingest.run import run_ingest
from rsrt.ingest.sources import open_source
from rsrt.search import ml
from rsrt.search.encoder import get_encoder
from rsrt.search.index import create_index, delete_index, to_document
from rsrt.search.ml_ingest import (
    PYTHON_WHITESPACE,
    attach_processor,
    embedding_pipeline_body,
    pipeline_name,
    prepare_processor,
    simulate,
)
from rsrt.search.schema import ImageRecord, Variant

pytestmark = pytest.mark.integration

# Every shape a variant comes in, as a portal might write it (unstripped, lists, nulls, unicode).
SHAPES = [
    {"one_sentence": " A harbour with ships. ", "feature": "ships: 12; docks: north", "caption": "Many ships\n"},
    {"caption": "  only a caption\u3000"},
    {"one_sentence": "A runway.", "caption": "Planes park beside the runway."},
    {"one_sentence": "", "feature": "", "caption": ""},
    {"feature": ["trees", "a river"], "caption": None},
    {"one_sentence": "Ünïcödé ✈ 𝔘\u00a0", "caption": "一架飞机停在跑道旁边 \"quoted\" back\\slash\u0001"},
    {"feature": " \u2003features only\t"},
]


def _expected(shape: dict) -> Variant:
    return Variant.from_mapping(shape)


def test_the_whitespace_set_is_pythons() -> None:
    assert set(PYTHON_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_the_script_builds_the_labelled_text_of_every_shape(os_client) -> None:
    restore = embedding_pipeline_body("unused")["processors"][2]  # the json processor: the stash back
    docs = [{"image_id": f"s{i}", "variants": [shape]} for i, shape in enumerate(SHAPES)]
    docs.append({"image_id": "all", "variants": SHAPES})
    docs.append({"image_id": "none"})
    out = simulate(os_client, {"processors": [prepare_processor(), restore]}, docs)
    for doc, got in zip(docs, out, strict=True):
        variants = [_expected(v) for v in doc.get("variants", [])]
        kept = [v for v in variants if not v.is_empty()]
        assert got.pop("_rsrt_texts") == [v.labelled_text() for v in kept], doc
        assert got.pop("_rsrt_slots") == list(range(len(kept)))
        got.pop("_rsrt_stash")
        if "variants" in doc:  # stored as rsrt stores them: what to_document writes
            want = to_document(ImageRecord(image_id=doc["image_id"], variants=kept))
            assert got == {k: v for k, v in want.items() if k != "properties"}
        else:
            assert got == doc


def test_the_script_refuses_non_text_and_keeps_metadata_out_of_the_stash(os_client) -> None:
    out = simulate(os_client, {"processors": [prepare_processor()]}, [{"variants": [{"caption": 5}]}])
    assert "must be text" in json.dumps(out[0]["error"])
    answer = os_client.ingest.simulate(body={"pipeline": {"processors": [prepare_processor()]}, "docs": [
        {"_index": "some-index", "_id": "x1", "_source": {"image_id": "x1"}}]})
    doc = answer["docs"][0]["doc"]
    assert (doc["_index"], doc["_id"]) == ("some-index", "x1")
    assert json.loads(doc["_source"]["_rsrt_stash"]) == {"image_id": "x1"}


def test_attach_puts_each_vector_on_its_variant_and_leaves_nothing_temporary(os_client) -> None:
    doc = {"variants": [{"n": 0, "caption": "a"}, {"n": 1, "caption": "b", "embedding": [9.0]},
                        {"n": 2, "caption": "c"}],
           "_rsrt_stash": "{}", "_rsrt_texts": ["a", "c"], "_rsrt_slots": [0, 2],
           "_rsrt_vectors": [{"knn": [1.0]}, {"knn": [2.0]}]}
    (got,) = simulate(os_client, {"processors": [attach_processor()]}, [doc])
    assert got == {"variants": [{"n": 0, "caption": "a", "embedding": [1.0]},
                                {"n": 1, "caption": "b", "embedding": [9.0]},
                                {"n": 2, "caption": "c", "embedding": [2.0]}]}
    bad = {**doc, "_rsrt_vectors": [{"knn": [1.0]}]}
    assert "1 vectors for 2 variant texts" in json.dumps(simulate(os_client, {"processors": [attach_processor()]},
                                                                   [bad])[0]["error"])


# ---- with the index's model deployed -----------------------------------------------------------------

@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ml-ingest-model-cache")


def _captions_file(path: Path) -> Path:
    """Five full variants per image (the captions source demands them), with whitespace and unicode."""
    lines = []
    for i, (subject, place) in enumerate([("ships", "harbour"), ("planes", "airport"), ("trees", "park"),
                                          ("houses", "suburb"), ("飞机", "机场 ✈")]):
        variants = [{"one_sentence": f" {subject} in a {place}, view {k}. ",
                     "feature": f"{subject}: {k + 2}; {place}: centre\u00a0",
                     "caption": f"A detailed caption of {subject} near the {place}, number {k}.\n"} for k in range(5)]
        lines.append(json.dumps({"image": f"scene_{i:02d}.jpg", "variants": variants, "collection": "ml-ingest",
                                 "bbox": [10.0 + i, 45.0, 10.5 + i, 45.5],
                                 "geometry": {"type": "Polygon", "coordinates": [[
                                     [10.0 + i, 45.0], [10.5 + i, 45.0], [10.5 + i, 45.5], [10.0 + i, 45.0]]]},
                                 "properties": {"platform": "test", "bands": [{"name": "red", "gsd": 10}]}},
                                ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair(os_client, connection_settings, model_cache, tmp_path_factory, cli_env) -> Iterator[dict]:
    """The same captions file: into A embedded by rsrt, into B embedded by the cluster (`--embed cluster`)."""
    tag = uuid.uuid4().hex[:8]
    a, b = f"rsrt-mli-a-{tag}", f"rsrt-mli-b-{tag}"
    work = tmp_path_factory.mktemp("ml-ingest")
    captions = _captions_file(work / "captions.jsonl")
    encoder = get_encoder()
    try:
        run_ingest(open_source(captions, kind="captions"), IngestConfig(index=a, state_dir=work / "a",
                                                                        cluster_model=False), connection_settings)
        create_index(os_client, encoder.info(), b)
        model = ml.deploy_model(os_client, b, cache_dir=model_cache)
        done = run_cli(["ingest", "captions", str(captions), "--index", b, "--embed", "cluster", "--json",
                        "--state-dir", str(work / "b")], cli_env)
        assert done.returncode == 0, done.stderr
        os_client.indices.refresh(index=f"{a},{b}")
        yield {"a": a, "b": b, "model": model, "summary": json.loads(done.stdout), "encoder": encoder}
    finally:
        delete_index(os_client, a)
        delete_index(os_client, b)


def _sources(os_client, index: str) -> dict[str, dict]:
    hits = os_client.search(index=index, body={"size": 1000, "query": {"match_all": {}}})["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def stored_cosine(os_client, index: str, image_id: str, n: int, vector: np.ndarray) -> float:
    """Cosine of `vector` with the stored vector of variant `n` (k-NN's painless `cosineSimilarity`)."""
    query = {"bool": {"filter": [{"ids": {"values": [image_id]}}], "must": [{"nested": {
        "path": "variants", "score_mode": "max", "query": {"script_score": {
            "query": {"term": {"variants.n": n}},
            "script": {"source": "1.0 + cosineSimilarity(params.query_value, doc[params.field])", "params": {
                "field": "variants.embedding", "query_value": [float(x) for x in vector]}}}}}}]}}
    hits = os_client.search(index=index, body={"size": 1, "_source": False, "query": query})["hits"]["hits"]
    assert hits, f"{index}/{image_id} variant {n} has no vector"
    return hits[0]["_score"] - 1.0


def _assert_embedded_like_rsrt(os_client, index: str, source: dict, encoder) -> None:
    texts = [Variant.from_mapping(v).labelled_text() for v in source["variants"]]
    for entry, vector in zip(source["variants"], encoder.encode(texts), strict=True):
        assert stored_cosine(os_client, index, source["image_id"], entry["n"], vector) >= 0.999


def test_cluster_embedded_documents_equal_rsrts(os_client, pair) -> None:
    summary = pair["summary"]
    assert (summary["ingested"], summary["failed"], summary["variants"]) == (5, 0, 25)
    a, b = _sources(os_client, pair["a"]), _sources(os_client, pair["b"])
    assert a == b and len(a) == 5  # every field, texts and geometry included; vectors are not in _source
    for source in b.values():
        _assert_embedded_like_rsrt(os_client, pair["b"], source, pair["encoder"])


def test_a_plain_client_gets_vectors_from_the_default_pipeline(os_client, pair) -> None:
    b = pair["b"]
    settings = os_client.indices.get_settings(index=b, params={"flat_settings": "true"})
    assert {s["settings"]["index.default_pipeline"] for s in settings.values()} == {pipeline_name(b)}
    record = ImageRecord(image_id="portal-1", collection="portal",
                         variants=[Variant.from_mapping(s) for s in SHAPES if not Variant.from_mapping(s).is_empty()])
    written_by_rsrt = to_document(record)
    portal_doc = {"image_id": "portal-1", "collection": "portal", "variants": SHAPES}  # raw, no vectors
    os_client.index(index=b, id="portal-1", body=portal_doc, refresh=True)
    stored = os_client.get(index=b, id="portal-1")["_source"]
    assert stored == {k: v for k, v in written_by_rsrt.items() if k != "properties"}
    _assert_embedded_like_rsrt(os_client, b, stored, pair["encoder"])


def test_rsrts_own_writes_skip_the_default_pipeline(os_client, pair) -> None:
    """Client-embedded bulk requests say pipeline=_none: the cluster embeds nothing for them."""
    b = pair["b"]
    before = os_client.nodes.stats(metric="ingest")["nodes"]
    count = lambda stats: sum(n["ingest"]["pipelines"].get(pipeline_name(b), {}).get("count", 0)  # noqa: E731
                              for n in stats.values())
    from rsrt.ingest.writer import write_documents

    record = ImageRecord(image_id="client-1", variants=[Variant(caption="a harbour")],
                         vectors=[pair["encoder"].encode(["a harbour"])[0]])
    write_documents(os_client, b, [record]).raise_if_refused(b)
    assert count(os_client.nodes.stats(metric="ingest")["nodes"]) == count(before)


def test_embed_cluster_into_a_new_index_deploys_the_model_itself(os_client, index_name, connection_settings,
                                                                  tmp_path) -> None:
    """A user runs `--embed cluster` on a fresh index: rsrt creates it, deploys the encoder, the cluster embeds."""
    captions = _captions_file(tmp_path / "c.jsonl")
    summary = run_ingest(open_source(captions, kind="captions"), IngestConfig(index=index_name, embed="cluster",
                                                                             state_dir=tmp_path / "state"),
                         connection_settings)
    assert summary.stats.ingested > 0 and summary.stats.failed == 0
    model = ml.index_cluster_model(os_client, index_name)
    assert model is not None
    os_client.indices.refresh(index=index_name)
    with_vectors = os_client.count(index=index_name, body={"query": {"nested": {
        "path": "variants", "query": {"exists": {"field": "variants.embedding"}}}}})["count"]
    assert with_vectors == summary.stats.ingested


def test_the_nested_field_map_bug_is_still_there(os_client, pair) -> None:
    """neural-search#1244: why the pipeline stashes the document. When this fails, the detour can go."""
    body = {"processors": [{"text_embedding": {"model_id": pair["model"].model_id,
                                               "field_map": {"variants": {"t": "embedding"}}}}]}
    doc = {"variants": [{"n": 0, "t": "a", "caption": "a"}, {"n": 1, "t": "b", "caption": "b"}]}
    (got,) = simulate(os_client, body, [doc])
    assert [sorted(v) for v in got["variants"]] != [["caption", "embedding", "n", "t"]] * 2
