"""The standard protocol (VLM captions as the corpus) scored through the real query layer on OpenSearch."""

from __future__ import annotations

import pytest

from rsrt.search.datasets import Benchmark, BenchmarkImage
from rsrt.search.evaluation.engine import OpenSearchIndexes, OpenSearchRanker
from rsrt.search.evaluation.exact import ExactDenseRanker
from rsrt.search.evaluation.protocols import standard_protocol
from rsrt.search.evaluation.runner import evaluate

pytestmark = pytest.mark.integration

SCENES = {
    "harbour_1": (["Many boats are moored in the harbour.", "A port with ships beside a long pier.",
                   "Ships dock at the gray port.", "Several vessels sit in calm harbour water.",
                   "A harbour full of boats next to warehouses."],
                  "ships (small) west; pier (long) east", "A busy harbour with ships at the piers"),
    "airport_1": (["Planes park near the terminal.", "An airport with two runways.",
                   "Aircraft wait on the apron.", "A runway crosses the airfield.",
                   "Several airplanes beside a terminal building."],
                  "airplanes (medium) north; runway (large) south", "An airport with planes on the apron"),
    "forest_1": (["Dense trees cover the area.", "A green forest with no roads.", "Thick woodland fills the image.",
                  "The forest canopy is dark green.", "Many trees grow close together."],
                 "trees (large) everywhere", "A dense green forest canopy"),
    "stadium_1": (["An oval stadium with a green pitch.", "A sports ground surrounded by stands.",
                   "A stadium next to a parking lot.", "The football field sits inside the arena.",
                   "Seats circle a green field."],
                  "stadium (large) center; parking (medium) north", "A stadium with a green field and stands"),
    "farmland_1": (["Fields of crops in rectangles.", "Farmland with brown and green plots.",
                    "Agricultural fields divided by paths.", "Square fields cover the land.",
                    "Crops grow in neat parcels."],
                   "fields (large) everywhere; road (thin) west", "Rectangular farmland parcels"),
}


def _benchmark() -> Benchmark:
    return Benchmark("fixture", "test", [BenchmarkImage(i, f"{i}.jpg", caps) for i, (caps, _, _) in SCENES.items()])


def _vlm_variants() -> dict[str, list[dict[str, str]]]:
    out = {}
    for image_id, (captions, feature, summary) in SCENES.items():
        out[image_id] = [{"one_sentence": f"{summary} (variant {j}).", "feature": feature,
                          "caption": f"{summary}. {captions[(j + 2) % 5]}"} for j in range(5)]
    return out


def _image_queries() -> dict[str, str]:
    return {image_id: f"{summary}; {feature}" for image_id, (_, feature, summary) in SCENES.items()}


@pytest.fixture(scope="module")
def indexes(os_client):
    shared = OpenSearchIndexes(os_client, prefix="rsrt-test-standard")
    yield shared
    shared.close()


@pytest.mark.parametrize("mode", ["lexical", "dense", "hybrid", "hybrid-rrf"])
def test_standard_protocol_through_opensearch(indexes, mode):
    protocol = standard_protocol(_benchmark(), variants=_vlm_variants(), image_queries=_image_queries())
    result = evaluate(protocol, OpenSearchRanker(indexes, mode), mode=mode, fetch=20)
    assert [t.n_queries for t in result.tasks] == [25, 5]  # every human caption; one query per image
    t2i, i2t = result.recall("t2i"), result.recall("i2t")
    assert t2i[10] == 100.0 and i2t[10] == 100.0  # five images: everything is in the top 10
    assert t2i[1] >= 60.0 and i2t[1] >= 80.0, (t2i, i2t)
    assert result.mr is not None and result.mr >= 85.0


def test_dense_engine_agrees_with_the_exact_reference(indexes):
    protocol = standard_protocol(_benchmark(), variants=_vlm_variants(), image_queries=_image_queries())
    engine = evaluate(protocol, OpenSearchRanker(indexes, "dense"), mode="dense", fetch=20)
    exact = evaluate(protocol, ExactDenseRanker(lambda texts: indexes.vectors(texts)), mode="exact", fetch=20)
    assert engine.recall("t2i") == exact.recall("t2i")
    assert engine.recall("i2t") == exact.recall("i2t")
