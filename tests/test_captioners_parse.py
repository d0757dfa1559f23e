"""parse_variants / parse_query_description: tolerant of how VLMs wrap JSON, strict on content."""

from __future__ import annotations

import json

import pytest

from rsrt.ingest.captioners import CaptionFormatError, parse_query_description, parse_variants
from rsrt.ingest.captioners.parse import parse_partial_variants
from rsrt.ingest.captioners.prompt import CAPTION_PROMPT, PROMPT_VERSION, QUERY_PROMPT, QUERY_PROMPT_VERSION
from rsrt.search.errors import RsrtError
from rsrt.search.schema import Variant


def variants(count: int = 5) -> list[dict[str, str]]:
    return [
        {
            "one_sentence": f"Scene number {i} with a runway.",
            "feature": f"large runway (center); {i} small airplanes (NE)",
            "caption": f"A long runway crosses the center and {i} airplanes park in the northeast.",
        }
        for i in range(1, count + 1)
    ]


def answer(count: int = 5) -> str:
    return json.dumps({"variants": variants(count)})


def expect_error(text: str, message: str) -> str:
    with pytest.raises(CaptionFormatError) as info:
        parse_variants(text)
    assert message in str(info.value), str(info.value)
    return str(info.value)


def test_plain_answer_gives_five_variants_in_order():
    result = parse_variants(answer())
    assert [v.one_sentence for v in result] == [f"Scene number {i} with a runway." for i in range(1, 6)]
    assert all(isinstance(v, Variant) for v in result)
    assert result[2].feature == "large runway (center); 3 small airplanes (NE)"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: f"```json\n{s}\n```",
        lambda s: f"```\n{s}\n```",
        lambda s: f"Here are the captions you asked for:\n\n{s}\n\nLet me know if you need more.",
        lambda s: f"Sure! ```json\n{s}\n``` Hope this helps.",
        lambda s: f"  \n{s}\n  ",
    ],
    ids=["json-fence", "bare-fence", "prose-around", "prose-and-fence", "whitespace"],
)
def test_wrappers_around_the_json_are_tolerated(wrap):
    assert len(parse_variants(wrap(answer()))) == 5


def test_a_bare_list_of_variants_is_accepted():
    assert [v.caption for v in parse_variants(json.dumps(variants()))] == [v["caption"] for v in variants()]


def test_legacy_keys_are_mapped():
    legacy = [
        {"one_sentence_caption": v["one_sentence"], "feature_analysis": v["feature"], "detailed_caption": v["caption"]}
        for v in variants()
    ]
    result = parse_variants(json.dumps({"variants": legacy}))
    assert result[0] == Variant(**variants()[0])


def test_feature_as_a_list_becomes_text():
    items = variants()
    items[0]["feature"] = ["large runway (center)", "small airplanes (NE)"]
    items[1]["feature"] = [
        {"object": "runway", "position": "center", "size": "large"},
        {"object": "airplanes", "position": "NE", "size": "small"},
    ]
    items[2]["feature"] = {"runway": "center, large", "airplanes": "NE, small"}
    result = parse_variants(json.dumps({"variants": items}))
    assert result[0].feature == "large runway (center); small airplanes (NE)"
    assert result[1].feature == "runway, center, large; airplanes, NE, small"
    assert result[2].feature == "runway: center, large; airplanes: NE, small"


def test_trailing_commas_are_repaired():
    text = answer().replace("}]}", "},]}").replace('(center)"', '(center)",', 0)
    assert len(parse_variants(text)) == 5


def test_other_wrapper_keys_and_numbered_objects():
    assert len(parse_variants(json.dumps({"captions": variants()}))) == 5
    numbered = {f"variant_{i}": v for i, v in enumerate(variants(), start=1)}
    assert len(parse_variants(json.dumps(numbered))) == 5


@pytest.mark.parametrize("count", [0, 1, 3, 4, 6])
def test_wrong_number_of_variants(count):
    expect_error(answer(count), f"expected 5 variants, got {count}")


def test_single_variant_object_is_a_count_error():
    expect_error(json.dumps(variants()[0]), "expected 5 variants, got 1")


def test_empty_field_is_named():
    items = variants()
    items[1]["feature"] = "   "
    expect_error(json.dumps({"variants": items}), "variant 2 field 'feature' is empty")


def test_missing_field_is_named():
    items = variants()
    del items[4]["caption"]
    expect_error(json.dumps({"variants": items}), "variant 5 field 'caption' is missing")


def test_null_field_is_empty():
    items = variants()
    items[0]["one_sentence"] = None
    expect_error(json.dumps({"variants": items}), "variant 1 field 'one_sentence' is empty")


def test_non_text_field_is_rejected():
    items = variants()
    items[2]["caption"] = 42
    expect_error(json.dumps({"variants": items}), "variant 3: variant field 'caption' must be text, not int")


def test_variant_that_is_not_an_object():
    items: list = variants()
    items[3] = "just a string"
    expect_error(json.dumps({"variants": items}), "variant 4 is a str, expected an object")


def test_variant_without_any_known_field():
    items: list = variants()
    items[0] = {"title": "x", "text": "y"}
    expect_error(json.dumps({"variants": items}), "variant 1 has none of the fields one_sentence, feature, caption")


def test_lengths_are_bounded():
    items = variants()
    items[0]["one_sentence"] = "x" * 401
    expect_error(json.dumps({"variants": items}), "variant 1 field 'one_sentence' is too long (401 chars, max 400)")
    items = variants()
    items[3]["caption"] = "y" * 4001
    expect_error(json.dumps({"variants": items}), "variant 4 field 'caption' is too long (4001 chars, max 4000)")
    items = variants()
    items[2]["feature"] = "ab"
    expect_error(json.dumps({"variants": items}), "variant 3 field 'feature' is too short (2 chars, min 3)")
    items = variants()
    items[0]["one_sentence"] = "x" * 400
    items[1]["caption"] = "y" * 4000
    assert len(parse_variants(json.dumps({"variants": items}))) == 5  # the limits themselves are fine


def test_duplicates_after_whitespace_and_case_normalisation():
    items = variants()
    items[3] = {key: "  " + value.upper().replace(" ", "   ") + "\n" for key, value in items[1].items()}
    expect_error(json.dumps({"variants": items}), "variant 4 duplicates variant 2")


def test_variants_sharing_one_field_are_not_duplicates():
    items = variants()
    for item in items:
        item["feature"] = "large runway (center)"
    assert len(parse_variants(json.dumps({"variants": items}))) == 5


def test_prose_answer_is_quoted_briefly():
    prose = "The image shows an airport with a long runway. " * 5
    message = expect_error(prose, "answer is prose, no JSON object found: 'The image shows")
    quoted = message.split("found: ", 1)[1]
    assert len(quoted) <= 82 and quoted.endswith("…'")  # ≤ 80 characters inside the quotes


def test_empty_answer():
    expect_error("", "answer is empty")
    expect_error("  \n ", "answer is empty")


@pytest.mark.parametrize("cut", [1, 40, 300, -3, -1])
def test_cut_off_answer_says_so(cut):
    expect_error(answer()[:cut], "answer ends before its JSON is complete (cut off?)")


def test_invalid_json_says_where():
    broken = answer().replace('"feature":', '"feature"', 1)
    message = expect_error(broken, "answer has invalid JSON (Expecting ':' delimiter at line 1 column")
    assert "variants" in message  # the quote shows the start of the answer


def test_python_style_quotes_are_invalid_json_not_prose():
    expect_error(str({"variants": variants()}), "answer has invalid JSON")


def test_no_variants_list():
    no_list = "JSON object has no 'variants' list (keys: 'answer', 'status')"
    expect_error(json.dumps({"answer": "none", "status": "ok"}), no_list)
    expect_error(json.dumps({"variants": "five of them"}), "'variants' must be a list, not str")
    expect_error('["a", "b", "c"]', "expected 5 variants, got 3")
    expect_error('["a", "b", "c", "d", "e"]', "variant 1 is a str, expected an object")


def test_caption_format_error_is_a_user_error():
    assert issubclass(CaptionFormatError, RsrtError)


def test_query_description_single_object():
    text = "```json\n" + json.dumps(variants()[0]) + "\n```"
    assert parse_query_description(text) == Variant(**variants()[0])


def test_query_description_takes_first_of_a_list_and_validates():
    assert parse_query_description(answer()).caption == variants()[0]["caption"]
    assert parse_query_description(json.dumps(variants()[:1])).feature == variants()[0]["feature"]
    with pytest.raises(CaptionFormatError, match="description field 'caption' is empty"):
        parse_query_description(json.dumps({**variants()[0], "caption": ""}))
    with pytest.raises(CaptionFormatError, match="no JSON object found"):
        parse_query_description("An airport.")
    with pytest.raises(CaptionFormatError, match="expected one description object, got an empty list"):
        parse_query_description('{"variants": []}')


def test_prompts_ask_for_the_contract():
    assert PROMPT_VERSION == "rsrt-caption-v1" and QUERY_PROMPT_VERSION
    needles = ('"variants"', '"one_sentence"', '"feature"', '"caption"', "north-up", "small, medium or large", "JSON")
    for needle in needles:
        assert needle in CAPTION_PROMPT, needle
    assert "5 different" in CAPTION_PROMPT and "no prose" in CAPTION_PROMPT
    assert all(d in CAPTION_PROMPT for d in ("(N)", "(S)", "(E)", "(W)"))
    assert '"variants"' not in QUERY_PROMPT
    assert '{"one_sentence": "...", "feature": "...", "caption": "..."}' in QUERY_PROMPT


# -- partial answers: the valid variants are kept ----------------------------------------------------


def test_partial_answer_keeps_its_valid_variants_and_says_what_was_dropped():
    items = variants()
    items[1]["feature"] = " "
    items[3] = dict(items[0])  # a duplicate of variant 1
    parsed = parse_partial_variants(json.dumps({"variants": items}))
    assert [v.one_sentence for v in parsed.variants] == [items[0]["one_sentence"], items[2]["one_sentence"],
                                                         items[4]["one_sentence"]]
    assert parsed.dropped == ["variant 2 field 'feature' is empty", "variant 4 duplicates variant 1"]
    assert not parsed.complete


@pytest.mark.parametrize("count", [1, 3, 4])
def test_fewer_variants_are_kept_with_the_count_recorded(count):
    parsed = parse_partial_variants(answer(count))
    assert len(parsed.variants) == count and parsed.dropped == [f"expected 5 variants, got {count}"]


def test_partial_single_object_five_complete_and_extras_ignored():
    assert len(parse_partial_variants(json.dumps(variants()[0])).variants) == 1
    assert parse_partial_variants(answer()).complete
    extra = parse_partial_variants(answer(7))
    assert len(extra.variants) == 5 and extra.dropped == ["variants 6-7 are beyond the 5 asked for"]


def test_partial_answer_below_min_variants_or_not_json_raises():
    with pytest.raises(CaptionFormatError, match=r"^3 valid variants, need at least 4: expected 5 variants, got 3$"):
        parse_partial_variants(answer(3), min_variants=4)
    items = variants(2)
    items[0]["caption"] = ""
    items[1]["caption"] = ""
    with pytest.raises(CaptionFormatError, match="0 valid variants, need at least 1: variant 1 field 'caption'"):
        parse_partial_variants(json.dumps({"variants": items}))
    with pytest.raises(CaptionFormatError, match="answer is prose"):
        parse_partial_variants("The image shows a runway.")


# -- answers that used to raise something other than CaptionFormatError ------------------------------


@pytest.mark.parametrize("parse", [parse_variants, parse_partial_variants, parse_query_description])
def test_answer_nested_too_deeply_is_a_format_error(parse):
    with pytest.raises(CaptionFormatError, match="nested too deeply"):
        parse("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CaptionFormatError, match="nested too deeply"):
        parse('{"variants": ' + "[" * 100_000 + "]" * 100_000 + "}")


@pytest.mark.parametrize("parse", [parse_variants, parse_partial_variants, parse_query_description])
def test_lone_surrogate_in_an_answer_is_a_format_error(parse):
    items = variants()
    text = json.dumps({"variants": items}).replace("runway crosses", "runway \\udfff crosses", 1)
    assert "\\udfff" in text  # the JSON escape, as a server would send it
    if parse is parse_partial_variants:
        parsed = parse(text)
        assert len(parsed.variants) == 4
        assert parsed.dropped == ["variant 1 field 'caption' contains a lone surrogate (not valid Unicode)"]
        return
    if parse is parse_query_description:
        text = json.dumps(items[0]).replace("runway crosses", "runway \\udfff crosses")
    with pytest.raises(CaptionFormatError, match=r"(variant 1|description) field 'caption' contains a lone surrogate"):
        parse(text)
