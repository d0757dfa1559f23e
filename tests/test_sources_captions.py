"""CaptionsJsonlSource and the reusable caption validation, on real JSONL files with bad lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rsrt.ingest.sources import (
    MAX_FIELD_CHARS,
    CaptionFormatError,
    CaptionsJsonlSource,
    SourceProblem,
    open_source,
    parse_variant,
    parse_variants,
    uri_to_path,
)
from rsrt.search.schema import CaptionerInfo, ImageRecord, Variant, stable_image_id


def variant(n: int, tag: str = "") -> dict[str, str]:
    return {
        "one_sentence": f"A harbour with boats {tag}{n}.",
        "feature": f"boats: centre; pier: left {tag}{n}",
        "caption": f"Several boats are moored along a pier in the centre {tag}{n}.",
    }


def grouped(image: str, n: int = 5, **extra: Any) -> dict[str, Any]:
    return {"image": image, "variants": [variant(i, image) for i in range(n)], **extra}


def flat(image: str, i: int, legacy: bool = False, **extra: Any) -> dict[str, Any]:
    v = variant(i, image)
    if legacy:
        v = {"one_sentence_caption": v["one_sentence"], "feature_analysis": v["feature"], "caption": v["caption"]}
    return {"image": image, **v, **extra}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Objects become JSON lines; bytes are written raw (to plant bad encodings)."""
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else json.dumps(line).encode("utf-8"))
            fh.write(b"\n")
    return path


def split(items: list) -> tuple[list[ImageRecord], list[SourceProblem]]:
    records = [i for i in items if isinstance(i, ImageRecord)]
    problems = [i for i in items if isinstance(i, SourceProblem)]
    assert len(records) + len(problems) == len(items)
    return records, problems


def test_grouped_form_good_records(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "caps.jsonl",
        [
            grouped(
                "harbour_1.jpg",
                collection="rsicd",
                datetime="2020-05-01T12:00:00+02:00",
                geometry={"type": "Point", "coordinates": [12.5, 41.9]},
                properties={"split": "test"},
                captioner={"name": "qwen", "model": "Qwen2.5-VL-7B", "prompt_version": "v3", "created": "2025-01-02"},
            ),
            grouped("sub/harbour_2.png", bbox=[10, 40, 11, 41]),
        ],
    )
    source = open_source(path)
    assert isinstance(source, CaptionsJsonlSource)
    assert source.needs_captioning is False
    assert source.count_hint() == 2
    records, problems = split(list(source))
    assert problems == []
    first, second = records
    assert first.image_id == "harbour_1"
    assert second.image_id == stable_image_id("sub/harbour_2")  # same rule as FolderSource
    assert uri_to_path(first.source_uri) == tmp_path.resolve() / "harbour_1.jpg"
    assert len(first.variants) == 5
    assert first.variants[2] == Variant(**variant(2, "harbour_1.jpg"))
    assert first.collection == "rsicd"
    assert first.datetime == "2020-05-01T10:00:00Z"
    assert first.geometry == {"type": "Point", "coordinates": [12.5, 41.9]}
    assert first.bbox == [12.5, 41.9, 12.5, 41.9]
    assert first.properties == {"split": "test"}
    assert first.captioner == CaptionerInfo("qwen", "Qwen2.5-VL-7B", "v3", "2025-01-02T00:00:00Z")
    assert second.captioner == CaptionerInfo(name="precomputed")
    assert second.bbox == [10.0, 40.0, 11.0, 41.0] and second.geometry["type"] == "Polygon"


def test_flat_form_groups_lines_by_image_in_file_order(tmp_path: Path) -> None:
    lines = []
    for i in range(5):  # interleaved: a, b, a, b, ... with legacy keys for b
        lines.append(flat("a.jpg", i, datetime="2021-03-04T05:06:07Z" if i == 0 else None))
        lines.append(flat("b.jpg", i, legacy=True))
    path = write_lines(tmp_path / "flat.jsonl", lines)
    source = CaptionsJsonlSource(path, collection="forced", image_root="/data/imgs")
    assert source.count_hint() == 2
    records, problems = split(list(source))
    assert problems == []
    assert [r.image_id for r in records] == ["a", "b"]
    a, b = records
    assert [v.one_sentence for v in a.variants] == [variant(i, "a.jpg")["one_sentence"] for i in range(5)]
    assert b.variants[4].feature == variant(4, "b.jpg")["feature"]  # legacy key mapped
    assert a.datetime == "2021-03-04T05:06:07Z"
    assert a.collection == b.collection == "forced"
    assert a.source_uri == "file:///data/imgs/a.jpg"


def test_grouped_form_bad_lines_each_become_a_problem(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            grouped("ok_1.jpg"),  # 1
            grouped("four.jpg", n=4),  # 2
            b'{"image": "broken.jpg", "variants": [',  # 3 malformed JSON
            b'{"image": "latin1.jpg", "variants": [{"caption": "caf\xe9"}]}',  # 4 not UTF-8
            b"",  # 5 blank, skipped but counted
            {**grouped("huge.jpg"), "variants": [variant(0)] * 4 + [{**variant(4), "caption": "x" * 20_001}]},  # 6
            grouped("ok_1.jpg"),  # 7 duplicate of line 1
            {**grouped("empty.jpg"), "variants": [variant(0)] * 4 + [{**variant(4), "feature": "  "}]},  # 8
            {"variants": [variant(i) for i in range(5)]},  # 9 no image
            [1, 2, 3],  # 10 not an object
            grouped("when.jpg", datetime="yesterday"),  # 11
            flat("flat.jpg", 0),  # 12 other layout
            grouped("ok_2.jpg"),  # 13
        ],
    )
    records, problems = split(list(CaptionsJsonlSource(path)))
    assert [r.image_id for r in records] == ["ok_1", "ok_2"]
    by_line = {p.line: p for p in problems}
    assert sorted(by_line) == [2, 3, 4, 6, 7, 8, 9, 10, 11, 12]
    assert all(p.path == str(path.resolve()) for p in problems)

    assert by_line[2].item == "four.jpg" and "expected 5 variants, got 4" in by_line[2].reason
    assert by_line[3].item == "broken.jpg"  # the image is still named when the JSON is broken
    assert by_line[3].reason.startswith("malformed JSON")
    assert str(by_line[3]).startswith(f"{path.resolve()}:3: broken.jpg: ")
    assert by_line[4].item == "latin1.jpg"
    assert "not valid UTF-8" in by_line[4].reason and "0xe9" in by_line[4].reason
    assert "'caption' is 20,001 characters" in by_line[6].reason
    assert by_line[7].item == "ok_1"
    assert by_line[7].reason == "duplicate image id ok_1, first at line 1"
    assert "variant 5: empty or missing feature" in by_line[8].reason
    assert "missing 'image'" in by_line[9].reason
    assert by_line[10].item == "line 10" and "expected a JSON object" in by_line[10].reason
    assert "not ISO 8601" in by_line[11].reason
    assert "flat layout but the file is grouped (from line 1)" in by_line[12].reason


def test_flat_form_wrong_counts_and_bad_lines(tmp_path: Path) -> None:
    lines: list[Any] = [flat("four.jpg", i) for i in range(4)]  # lines 1-4
    lines += [flat("six.jpg", i) for i in range(6)]  # lines 5-10
    lines += [flat("good.jpg", i) for i in range(5)]  # lines 11-15
    lines += [flat("emptyfield.jpg", i) for i in range(4)] + [{**flat("emptyfield.jpg", 4), "caption": ""}]  # 16-20
    lines += [flat("cut.jpg", i) for i in range(4)]  # 21-24
    lines.append(b'{"image": "cut.jpg", "one_sentence": "\xff\xfe", "feature": "f", "caption": "c"}')  # 25
    lines += [flat("clash.jpg", i, collection="a" if i == 0 else "b" if i == 3 else None) for i in range(5)]  # 26-30
    path = write_lines(tmp_path / "flat_bad.jsonl", lines)

    records, problems = split(list(CaptionsJsonlSource(path)))
    assert [r.image_id for r in records] == ["good"]
    assert len(records[0].variants) == 5
    by_item = {p.item: p for p in problems}
    assert set(by_item) == {"four", "six", "emptyfield", "cut.jpg", "cut", "clash"}
    assert by_item["four"].reason == "expected 5 variants, found 4 (--min-variants accepts fewer) (lines 1, 2, 3, 4)"
    assert by_item["four"].lines == (1, 2, 3, 4)
    assert by_item["six"].lines == (5, 6, 7, 8, 9, 10)
    assert by_item["emptyfield"].lines == (20,)  # the bad line only; no extra count problem
    assert "empty or missing caption" in by_item["emptyfield"].reason
    assert by_item["cut.jpg"].lines == (25,) and "not valid UTF-8" in by_item["cut.jpg"].reason
    assert by_item["cut"].reason.startswith("expected 5 variants, found 4 (")
    assert by_item["cut"].reason.endswith(" (lines 21, 22, 23, 24)")
    assert by_item["clash"].reason == "conflicting 'collection' at lines 26 and 29"


def test_bom_blank_lines_and_overlong_line(tmp_path: Path) -> None:
    path = tmp_path / "caps.jsonl"
    with open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + json.dumps(grouped("first.jpg")).encode() + b"\n")
        fh.write(b"\n   \n")
        fh.write(b'{"image": "giant.jpg", "pad": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}\n')
        fh.write(json.dumps(grouped("last.jpg")).encode() + b"\n")
    records, problems = split(list(CaptionsJsonlSource(path)))
    assert [r.image_id for r in records] == ["first", "last"]
    (problem,) = problems
    assert problem.item == "giant.jpg" and problem.lines == (4,)
    assert "line longer than 4 MiB" in problem.reason


def test_parse_variant_reusable_checks() -> None:
    assert parse_variant({"one_sentence_caption": " s ", "feature_analysis": ["a", "b"], "caption": "c"}) == Variant(
        "s", "a; b", "c"
    )
    with pytest.raises(CaptionFormatError, match="empty or missing one_sentence, feature"):
        parse_variant({"caption": "only"})
    assert parse_variant({"caption": "only"}, required=("caption",)).caption == "only"
    with pytest.raises(CaptionFormatError, match="must be text"):
        parse_variant({"one_sentence": 3, "feature": "f", "caption": "c"})
    with pytest.raises(CaptionFormatError, match="limit 20,000"):
        parse_variant({**variant(0), "feature": "y" * (MAX_FIELD_CHARS + 1)})
    with pytest.raises(CaptionFormatError, match="expected an object"):
        parse_variant("text")
    with pytest.raises(CaptionFormatError, match="expected 5 variants, got 3"):
        parse_variants([variant(i) for i in range(3)])
    assert len(parse_variants([variant(i) for i in range(3)], expected=None)) == 3


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    from rsrt.ingest.sources import SourceError

    with pytest.raises(SourceError, match="no such file"):
        CaptionsJsonlSource(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------- captions users already have


def test_plain_captions_in_every_form_are_caption_variants(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "plain.jsonl",
        [
            {"image": "one.jpg", "caption": "A single plain caption of a harbour."},  # 1: one caption per image
            {"image": "two.jpg", "caption": "First caption of two."},  # 2
            {"image": "two.jpg", "caption": "Second caption of two.", "collection": "mine"},  # 3
            {"image": "legacy.jpg", "detailed_caption": "A legacy-keyed caption."},  # 4: legacy key, still caption
        ],
    )
    source = CaptionsJsonlSource(path)
    assert source.count_hint() == 4  # caption-only flat lines are not divided by 5
    records, problems = split(list(source))
    assert problems == []
    one, two, legacy = records
    assert one.image_id == "one" and one.variants == [Variant(caption="A single plain caption of a harbour.")]
    assert [v.caption for v in two.variants] == ["First caption of two.", "Second caption of two."]
    assert two.collection == "mine" and legacy.variants == [Variant(caption="A legacy-keyed caption.")]
    assert one.captioner == CaptionerInfo(name="precomputed")


def test_grouped_caption_lists_and_caption_only_variants(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "grouped_plain.jsonl",
        [
            {"image": "list.jpg", "captions": ["a dense forest", "  ", "trees and a road"]},  # 1: blank skipped
            {"image": "single.jpg", "variants": [{"caption": "only one caption"}]},  # 2: the 1-variant form
            {"image": "seven.jpg", "captions": [f"caption {i}" for i in range(7)]},  # 3: more than 5 is fine
            {"image": "bad_entry.jpg", "captions": ["ok", 3]},  # 4
            {"image": "blank.jpg", "captions": ["", " "]},  # 5
            {"image": "both.jpg", "captions": ["x"], "variants": [{"caption": "y"}]},  # 6
            {"image": "notlist.jpg", "captions": "a string"},  # 7
            {"image": "mixed.jpg", "variants": [variant(0), {"caption": "plain"}]},  # 8: structured → strict
            grouped("rsrt.jpg"),  # 9: RSRT structured variants keep their five
        ],
    )
    records, problems = split(list(CaptionsJsonlSource(path)))
    by_id = {r.image_id: r for r in records}
    assert list(by_id) == ["list", "single", "seven", "rsrt"]
    assert [v.caption for v in by_id["list"].variants] == ["a dense forest", "trees and a road"]
    assert by_id["single"].variants == [Variant(caption="only one caption")]
    assert len(by_id["seven"].variants) == 7 and len(by_id["rsrt"].variants) == 5
    by_line = {p.line: p.reason for p in problems}
    assert sorted(by_line) == [4, 5, 6, 7, 8]
    assert by_line[4] == "captions[2]: expected text, got int"
    assert by_line[5] == "captions: no caption text"
    assert "both 'variants' and 'captions'" in by_line[6]
    assert "captions: expected a list of texts" in by_line[7]
    assert "expected 5 variants, got 2" in by_line[8]


def test_min_variants(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mins.jsonl",
        [
            {"image": "a.jpg", "captions": ["one caption"]},
            {"image": "b.jpg", "captions": ["first", "second"]},
        ],
    )
    records, problems = split(list(CaptionsJsonlSource(path, min_variants=2)))
    assert [r.image_id for r in records] == ["b"]
    (problem,) = problems
    assert problem.item == "a.jpg" and problem.reason == "expected at least 2 variants (--min-variants), got 1"
    # Structured variants: exactly five unless --min-variants is given, then from that many up to five.
    structured = write_lines(tmp_path / "four.jsonl", [grouped("four.jpg", n=4), grouped("six.jpg", n=6)])
    assert [p.reason for p in CaptionsJsonlSource(structured) if isinstance(p, SourceProblem)] == [
        "expected 5 variants, got 4 (--min-variants accepts fewer)",
        "expected 5 variants, got 6",
    ]
    records, problems = split(list(CaptionsJsonlSource(structured, min_variants=3)))
    assert [len(r.variants) for r in records] == [4]
    assert [p.reason for p in problems] == ["expected at most 5 variants, got 6"]
    flat_path = write_lines(tmp_path / "flat4.jsonl", [flat("f.jpg", i) for i in range(4)])
    assert [len(r.variants) for r in CaptionsJsonlSource(flat_path, min_variants=4)] == [4]
    from rsrt.ingest.sources import SourceError

    with pytest.raises(SourceError, match="min_variants must be from 1 to 50"):
        CaptionsJsonlSource(path, min_variants=0)


def test_plain_caption_line_among_structured_variants_of_one_image(tmp_path: Path) -> None:
    lines: list[Any] = [flat("s.jpg", i) for i in range(4)] + [{"image": "s.jpg", "caption": "plain"}]
    records, problems = split(list(CaptionsJsonlSource(write_lines(tmp_path / "mix.jsonl", lines))))
    assert records == []
    (problem,) = problems
    assert problem.lines == (5,) and "caption-only line(s) 5 among structured variants" in problem.reason


# ---------------------------------------------------------------------------- lines that used to stop the run


def _probe_lines() -> list[bytes]:
    """The probe's lines, as raw file text: each decodes (or nearly) and then broke a later stage."""
    deep = b'{"image": "deep.jpg", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    # `\udfff` written as the JSON escape: valid JSON, but the decoded text is not valid Unicode.
    surrogate_image = b'{"image": "bad\\udfff.jpg", "caption": "A harbour with boats."}'
    surrogate_caption = b'{"image": "lone.jpg", "caption": "A harbour \\udfff with boats."}'
    return [deep, surrogate_image, surrogate_caption]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_lines_that_broke_later_stages_are_one_line_problems(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "probe.jsonl",
        [
            {"image": "good_1.jpg", "caption": "A harbour with boats."},  # 1
            *_probe_lines(),  # 2, 3, 4
            {"image": "key.jpg", "caption": "ok", "properties": {"bad\udfff": 1}},  # 5: json.dumps escapes it
            {"image": "nested.jpg", "caption": "ok", "properties": {"a": _nested(40)}},  # 6: decodes, cannot index
            {"image": "good_2.jpg", "caption": "Green fields and a river."},  # 7
        ],
    )
    assert b"\\udfff" in path.read_bytes()  # the escape itself is in the file, not an encoded character
    records, problems = split(list(CaptionsJsonlSource(path)))
    assert [r.image_id for r in records] == ["good_1", "good_2"]
    by_line = {p.line: p for p in problems}
    assert sorted(by_line) == [2, 3, 4, 5, 6]
    assert by_line[2].item == "deep.jpg" and "nested too deeply" in by_line[2].reason
    assert by_line[3].item == "bad\\udfff.jpg"  # named by the escape as written, printable
    assert by_line[3].reason.startswith("image: contains a lone surrogate")
    assert by_line[4].item == "lone.jpg" and by_line[4].reason.startswith("caption: contains a lone surrogate")
    assert "a key contains a lone surrogate" in by_line[5].reason
    assert "nested deeper than 32 levels" in by_line[6].reason
    for problem in problems:
        assert str(problem).startswith(f"{path.resolve()}:{problem.line}: ")
        str(problem).encode("utf-8")  # every message can be printed and written to the quarantine file


def test_benchmark_caption_with_a_lone_surrogate_is_a_problem() -> None:
    from rsrt.ingest.sources.caption_lists import CaptionListSource
    from rsrt.search.datasets import Benchmark, BenchmarkImage

    images = [BenchmarkImage("a", "a.jpg", ["fine text"]), BenchmarkImage("b", "b.jpg", ["ok", "bad \udfff"])]
    benchmark = Benchmark(name="tiny", split="test", images=images)
    items = list(CaptionListSource(benchmark))
    assert isinstance(items[0], ImageRecord)
    assert isinstance(items[1], SourceProblem) and items[1].reason.startswith("captions[1]: contains a lone surrogate")


@pytest.mark.integration
def test_cli_ingests_plain_captions_past_bad_lines_and_search_finds_them(tmp_path, cli_env, os_client,
                                                                         index_name) -> None:
    from conftest import run_cli

    path = write_lines(  # one plain caption per line, as users have them; a lone surrogate in each part
        tmp_path / "users.jsonl",
        [
            {"image": "harbour.jpg", "caption": "Many white boats are moored in a harbour next to a pier."},  # 1
            *_probe_lines(),  # 2, 3, 4
            {"image": "forest.jpg", "caption": "A dense green forest."},  # 5
            {"image": "forest.jpg", "caption": "Tall trees cover the whole scene."},  # 6
        ],
    )
    grouped_path = write_lines(  # the grouped forms: a 1-variant caption-only list, and a `captions` list
        tmp_path / "grouped.jsonl",
        [
            {"image": "runway.jpg", "variants": [{"caption": "An airport runway with two parked planes."}]},
            {"image": "mountain.jpg", "captions": ["Snowy mountain peaks.", "A ridge of high mountains."]},
        ],
    )
    state = tmp_path / "state"
    args = ["ingest", "captions", str(path), "--index", index_name, "--state-dir", str(state), "--json"]
    done = run_cli(args, cli_env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["ingested"], summary["quarantined"], summary["failed"]) == (2, 3, 0)
    quarantined = [json.loads(line) for line in (state / "quarantine.jsonl").read_text("utf-8").splitlines()]
    assert sorted(entry["location"] for entry in quarantined) == [f"{path.resolve()}:{n}" for n in (2, 3, 4)]
    more = run_cli([*args[:2], str(grouped_path), *args[3:]], cli_env)
    assert more.returncode == 0 and json.loads(more.stdout)["ingested"] == 2, more.stderr
    os_client.indices.refresh(index=index_name)
    docs = {d["_id"]: d["_source"] for d in os_client.search(index=index_name, body={"size": 10})["hits"]["hits"]}
    assert {name: doc["variant_count"] for name, doc in docs.items()} == {
        "harbour": 1, "forest": 2, "runway": 1, "mountain": 2}
    searches = (("boats in a harbour", "dense", "harbour"), ("tall trees", "lexical", "forest"),
                ("planes at an airport", "hybrid", "runway"))
    for query, mode, expected in searches:  # search scores by the best variant, however many there are
        found = run_cli(["search", query, "--index", index_name, "--mode", mode, "--json"], cli_env)
        assert found.returncode == 0, found.stderr
        hits = json.loads(found.stdout)["hits"]
        assert hits[0]["image_id"] == expected and hits[0]["caption"], (query, mode, hits)
    again = run_cli(args, cli_env)  # every rerun: the good ones are there, the bad lines reported again
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 2

