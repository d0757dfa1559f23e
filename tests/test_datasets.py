"""Benchmark readers against the real caption files in ../shared/benchmarks (counts from SOURCES.md)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rsrt.search.datasets import (
    ENV_DATA_DIR,
    BenchmarkDataError,
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


def test_precomp_per_caption_and_per_image_layouts(tmp_path: Path) -> None:
    (tmp_path / "test_caps.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "test_filename.txt").write_text("x.jpg\nx.jpg\ny.jpg\ny.jpg\n")
    (tmp_path / "train_caps.txt").write_text("a\u2028still a\nb\nc\nd\n")
    (tmp_path / "train_filename.txt").write_text("x.jpg\ny.jpg\n")
    test = read_precomp(tmp_path, "test", name="nwpu")
    train = read_precomp(tmp_path, "train", name="nwpu")
    assert [(i.image_id, i.captions) for i in test.images] == [("x", ["a", "b"]), ("y", ["c", "d"])]
    # A U+2028 inside a caption is not a line break (str.splitlines would say it is).
    assert [(i.image_id, i.captions) for i in train.images] == [("x", ["a\u2028still a", "b"]), ("y", ["c", "d"])]


def test_precomp_count_mismatch_is_reported(tmp_path: Path) -> None:
    (tmp_path / "test_caps.txt").write_text("a\nb\nc\n")
    (tmp_path / "test_filename.txt").write_text("x.jpg\ny.jpg\n")
    with pytest.raises(BenchmarkDataError, match="3 lines"):
        read_precomp(tmp_path, "test")


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
