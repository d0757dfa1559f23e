"""Benchmark readers against the real caption files in ../shared/benchmarks (counts from SOURCES.md)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rsrt.search.datasets import (
    BENCHMARKS,
    ENV_DATA_DIR,
    BenchmarkDataError,
    detect_layout,
    find_data_dir,
    load_benchmark,
    read_precomp,
    read_sydney,
)
from rsrt.search.errors import ConfigError, RsrtError

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "benchmarks"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)


def test_data_dir_is_found_next_to_the_repository() -> None:
    assert find_data_dir().resolve() == DATA.resolve()
    assert (find_data_dir() / "SOURCES.md").is_file()


def test_data_dir_argument_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "env"))
    assert find_data_dir() == tmp_path / "env"
    assert find_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_data_dir_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "repo"
    (tmp_path / "shared" / "benchmarks").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    assert find_data_dir() == (tmp_path / "shared" / "benchmarks").resolve()


def test_rsitmd_test_split() -> None:
    bench = load_benchmark("rsitmd")
    assert (bench.name, bench.split) == ("rsitmd", "test")
    assert bench.n_images == 452
    assert bench.n_captions == 2260
    assert all(len(img.captions) == 5 for img in bench.images)
    first, last = bench.images[0], bench.images[-1]
    assert (first.image_id, first.filename) == ("boat_0", "boat_0.tif")
    assert first.captions[0] == "Two large ships loaded with cargo were moored on both sides of the gray port."
    assert last.image_id == "storagetanks_451"
    assert last.captions[-1] == "The storage tanks are on the floor and some containers are arranged neatly."
    assert first.caption_ids() == [f"boat_0#{i}" for i in range(5)]
    assert len({img.image_id for img in bench.images}) == 452


def test_duplicate_captions_are_kept() -> None:
    bench = load_benchmark("rsitmd")
    counts = Counter(text for _, _, text in bench.captions())
    assert counts["There is a river near the building."] == 5
    assert len(list(bench.captions())) == 2260
    assert len({cid for cid, _, _ in bench.captions()}) == 2260


def test_rsitmd_train_has_one_filename_per_image() -> None:
    bench = load_benchmark("rsitmd", "train")
    # 4,291 file names; four images have only blank caption lines and are dropped.
    assert bench.n_images == 4287
    assert bench.n_captions == 21435
    assert bench.images[0].filename == "baseballfield_452.tif"
    assert all(c.strip() for img in bench.images for c in img.captions)
    assert "mountain_2378" not in {img.image_id for img in bench.images}


def test_ucm_test_split() -> None:
    bench = load_benchmark("ucm")
    assert bench.n_images == 210
    assert bench.n_captions == 1050
    assert (bench.images[0].image_id, bench.images[0].filename) == ("81", "81.tif")
    assert bench.images[0].captions[0] == "There is a piece of farmland ."
    assert bench.images[-1].filename == "2100.tif"
    assert bench.images[-1].captions[-1] == "There are four tennis courts with a road and some houses beside ."
    assert [load_benchmark("ucm", s).n_images for s in ("train", "val")] == [1680, 210]


def test_sydney_maps_ids_to_tif_files() -> None:
    bench = load_benchmark("sydney")
    assert bench.n_images == 58
    assert bench.n_captions == 290
    assert bench.images[0].filename == "219.tif" and bench.images[0].image_id == "219"
    assert bench.images[-1].filename == "613.tif"
    # descriptions_SIDNEY.txt is CRLF and its last line has no newline: no stray "\r" may survive.
    assert bench.images[-1].captions[-1] == "some marking lines are on the runways while some lawns beside"
    assert not any("\r" in c for img in bench.images for c in img.captions)
    # Image 264 is the only test image between 242 and 310: its captions are the "264 ..." lines.
    desc = (DATA / "sydney" / "descriptions_SIDNEY.txt").read_text().splitlines()
    expected = [line.split(" ", 1)[1].strip() for line in desc if line.split(" ", 1)[0] == "264"]
    assert bench.image("264").captions == expected
    assert [load_benchmark("sydney", s).n_images for s in ("train", "val")] == [497, 58]


def test_sydney_numeric_ids_match_with_leading_zeros(tmp_path: Path) -> None:
    (tmp_path / "descriptions_SIDNEY.txt").write_bytes(b"7 a runway\r\n7 a long runway\r\n8 a sea\r\n")
    (tmp_path / "filenames_test.txt").write_bytes(b"007.tif\r\n")
    bench = read_sydney(tmp_path, "test")
    assert bench.images[0].captions == ["a runway", "a long runway"]
    assert bench.images[0].image_id == "007"


def _precomp(folder: Path, split: str, names: list[str], captions: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_filename.txt").write_text("".join(f"{n}\n" for n in names))
    (folder / f"{split}_caps.txt").write_text("".join(f"{c}\n" for c in captions))
    return folder


def test_precomp_per_caption_and_per_image_layouts(tmp_path: Path) -> None:
    caps = [f"x caption {i}" for i in range(5)] + [f"y caption {i}" for i in range(5)]
    _precomp(tmp_path, "test", ["x.jpg"] * 5 + ["y.jpg"] * 5, caps)
    per_image = ["a\u2028still a", *caps[1:]]
    _precomp(tmp_path, "train", ["x.jpg", "y.jpg"], per_image)
    test = read_precomp(tmp_path, "test", name="nwpu")
    train = read_precomp(tmp_path, "train", name="nwpu")
    assert [(i.image_id, i.captions) for i in test.images] == [("x", caps[:5]), ("y", caps[5:])]
    # A U+2028 inside a caption is not a line break (str.splitlines would say it is).
    assert [(i.image_id, i.captions) for i in train.images] == [("x", per_image[:5]), ("y", per_image[5:])]


def test_precomp_count_mismatch_is_one_line_naming_both_files(tmp_path: Path) -> None:
    _precomp(tmp_path, "test", ["x.jpg", "y.jpg"], ["a", "b", "c"])
    with pytest.raises(BenchmarkDataError) as info:
        read_precomp(tmp_path, "test")
    message = str(info.value)
    assert "\n" not in message
    assert f"{tmp_path / 'test_caps.txt'} has 3 lines" in message
    assert f"{tmp_path / 'test_filename.txt'} has 2" in message
    # 4 captions for 2 names is neither layout (one per caption, or 5 per image): refused, not guessed.
    _precomp(tmp_path, "train", ["x.jpg", "y.jpg"], ["a", "b", "c", "d"])
    with pytest.raises(BenchmarkDataError, match=r"has 4 lines but .* has 2"):
        read_precomp(tmp_path, "train")


def test_rsicd_and_nwpu_are_read_from_the_data_directory(tmp_path: Path) -> None:
    _precomp(tmp_path / "rsicd", "test", ["a.jpg"] * 5 + ["b.jpg"] * 5, [f"c{i}" for i in range(10)])
    _precomp(tmp_path / "nwpu", "val", ["p.jpg", "q.jpg", "r.jpg"], [f"n{i}" for i in range(15)])
    rsicd = load_benchmark("rsicd", data_dir=tmp_path)
    nwpu = load_benchmark("nwpu", "val", data_dir=tmp_path)
    assert (rsicd.name, rsicd.n_images, rsicd.n_captions) == ("rsicd", 2, 10)
    assert (nwpu.name, nwpu.split, [i.image_id for i in nwpu.images]) == ("nwpu", "val", ["p", "q", "r"])
    assert nwpu.images[2].captions == [f"n{i}" for i in range(10, 15)]


def test_missing_rsicd_and_nwpu_name_their_public_repositories(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError) as info:
        load_benchmark("nwpu", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nwpu") in message
    assert "HaiyanHuang98/NWPU-Captions" in message and "commit not verified here" in message
    with pytest.raises(BenchmarkDataError, match=r"xiaoyuan1996/AMFMN @ 5a2f013.*rsicd_precomp"):
        load_benchmark("rsicd", "train", data_dir=tmp_path)
    assert BENCHMARKS["nwpu"].splits == ("train", "val", "test")


def test_a_path_in_each_layout_is_a_benchmark(tmp_path: Path) -> None:
    precomp = _precomp(tmp_path / "My Split", "test", ["a.tif"] * 5, [f"p{i}" for i in range(5)])
    karpathy = tmp_path / "karp" / "dataset.json"
    karpathy.parent.mkdir()
    karpathy.write_text(json.dumps({"images": [
        {"filename": "k1.jpg", "split": "train", "sentences": [{"raw": "train text"}]},
        {"filename": "k2.jpg", "split": "test", "sentences": [{"raw": "one"}, {"raw": "two"}]}]}))
    sydney = tmp_path / "syd"
    sydney.mkdir()
    (sydney / "descriptions_SIDNEY.txt").write_text("1 a runway\r\n1 a long runway\r\n2 a river\r\n")
    (sydney / "filenames_val.txt").write_text("2.tif\n")
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"image": "s1.jpg", "captions": ["a harbour", " "], "split": "test"}\n\n'
                     '{"image": "s2.jpg", "caption": "a forest", "split": "test"}\n'
                     '{"image": "s2.jpg", "caption": "dense trees", "split": "test"}\n'
                     '{"image": "s3.jpg", "captions": ["training only"], "split": "train"}\n')
    assert [detect_layout(p, s) for p, s in ((precomp, "test"), (karpathy, "test"), (sydney, "val"),
                                             (jsonl, "test"))] == ["precomp", "karpathy", "sydney", "jsonl"]
    bench = load_benchmark(str(precomp))
    assert (bench.name, bench.n_images, bench.n_captions) == ("my-split", 1, 5)
    bench = load_benchmark(str(karpathy))
    assert (bench.name, [(i.image_id, i.captions) for i in bench.images]) == ("karp", [("k2", ["one", "two"])])
    bench = load_benchmark(str(sydney), "val")
    assert [(i.image_id, i.captions) for i in bench.images] == [("2", ["a river"])]
    bench = load_benchmark(str(jsonl))
    assert bench.name == "mine"
    assert [(i.image_id, i.captions) for i in bench.images] == [("s1", ["a harbour"]),
                                                                ("s2", ["a forest", "dense trees"])]
    assert [i.image_id for i in load_benchmark(str(jsonl), "train").images] == ["s3"]
    with pytest.raises(BenchmarkDataError, match=r"has no val split .*split test, train"):
        load_benchmark(str(jsonl), "val")


def test_bad_paths_and_lines_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match="does not exist"):
        load_benchmark(str(tmp_path / "absent.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match="not a benchmark split in a layout"):
        load_benchmark(str(tmp_path / "empty"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg", "captions": ["ok"]}\n{"captions": ["no image"]}\n')
    with pytest.raises(BenchmarkDataError, match=r"bad\.jsonl:2: expected"):
        load_benchmark(str(bad))
    bad.write_text('{"image": "a.jpg", "captions": "not a list"}\n')
    with pytest.raises(BenchmarkDataError, match=r"bad\.jsonl:1: \"captions\" must be a list"):
        load_benchmark(str(bad))


def test_missing_files_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(RsrtError) as info:
        load_benchmark("rsitmd", data_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, BenchmarkDataError)
    assert str(tmp_path / "rsitmd") in message
    assert "test_caps.txt" in message and "test_filename.txt" in message
    assert "xiaoyuan1996/AMFMN" in message and "AMFMN/data/rsitmd_precomp/" in message
    (tmp_path / "sydney").mkdir()
    (tmp_path / "sydney" / "filenames_test.txt").write_text("1.tif\n")
    with pytest.raises(BenchmarkDataError, match=r"missing descriptions_SIDNEY\.txt .*luna97/clip_captioning"):
        load_benchmark("sydney", data_dir=tmp_path)


def test_env_data_dir_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    with pytest.raises(BenchmarkDataError, match=str(tmp_path / "ucm")):
        load_benchmark("ucm")


def test_benchmark_folder_itself_is_accepted() -> None:
    assert load_benchmark("ucm", data_dir=DATA / "ucm").n_images == 210


def test_unknown_names_and_splits() -> None:
    with pytest.raises(ConfigError, match="unknown benchmark"):
        load_benchmark("coco")
    with pytest.raises(ConfigError, match="no val split"):
        load_benchmark("rsitmd", "val")
