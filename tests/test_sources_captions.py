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
    assert second.bbox == [10.0, 40.0, 11.0, 41.0] and second.geometry is None


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
    assert by_item["four"].reason == "expected 5 variants, found 4 (lines 1, 2, 3, 4)"
    assert by_item["four"].lines == (1, 2, 3, 4)
    assert by_item["six"].lines == (5, 6, 7, 8, 9, 10)
    assert by_item["emptyfield"].lines == (20,)  # the bad line only; no extra count problem
    assert "empty or missing caption" in by_item["emptyfield"].reason
    assert by_item["cut.jpg"].lines == (25,) and "not valid UTF-8" in by_item["cut.jpg"].reason
    assert by_item["cut"].reason == "expected 5 variants, found 4 (lines 21, 22, 23, 24)"
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
