"""Readers for the public remote-sensing image-text benchmarks (captions only, no pixels).

The evaluation (`evaluation/`) and the performance harness (`benchmarking/`) both read them here.

Each benchmark split becomes a `Benchmark`: images in file order, each with its human captions in
file order. Caption ids are `f"{image_id}#{i}"` with `i` the caption's position, so runs, qrels and
reports written on different days refer to the same texts. Duplicate caption strings are kept:
the literature's protocol keeps them, and dropping them would change the numbers.

The data are never shipped with the project: they are read from a data directory (argument,
`RSRT_DATA_DIR`, or `../shared/benchmarks` next to the working directory or the repository).
An operator's own split is read from a path (`load_benchmark_path`), its layout detected from the
files: a precomp folder, a Karpathy `dataset.json`, a Sydney folder, or an RSRT captions JSONL
(`read_captions_jsonl`: the caption-only forms rsrt's ingest accepts, plus an optional `split`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .schema import stable_image_id

__all__ = [
    "BENCHMARKS",
    "ENV_DATA_DIR",
    "SPLITS",
    "Benchmark",
    "BenchmarkDataError",
    "BenchmarkImage",
    "BenchmarkSource",
    "caption_id",
    "detect_layout",
    "find_data_dir",
    "is_benchmark_path",
    "load_benchmark",
    "load_benchmark_path",
    "read_captions_jsonl",
    "read_karpathy_json",
    "read_precomp",
    "read_sydney",
]

ENV_DATA_DIR = "RSRT_DATA_DIR"
SPLITS: tuple[str, ...] = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5  # the per-image precomp layout: one file name line, then 5 consecutive caption lines
NOT_VERIFIED = "commit not verified here"


class BenchmarkDataError(ConfigError):
    """Benchmark files are missing or malformed; the message says which files go where."""


def caption_id(image_id: str, index: int) -> str:
    """The stable id of an image's `index`-th caption (runs and qrels use it)."""
    return f"{image_id}#{index}"


@dataclass(frozen=True)
class BenchmarkImage:
    """One benchmark image: its id (file stem), file name and human captions in file order."""

    image_id: str
    filename: str
    captions: list[str] = field(default_factory=list)

    def caption_ids(self) -> list[str]:
        return [caption_id(self.image_id, i) for i in range(len(self.captions))]


@dataclass(frozen=True)
class Benchmark:
    """One split of a benchmark; `images` keep the order of the source files."""

    name: str
    split: str
    images: list[BenchmarkImage]
    source_dir: Path | None = None

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return sum(len(image.captions) for image in self.images)

    def captions(self) -> Iterator[tuple[str, str, str]]:
        """Every caption as `(caption_id, image_id, text)`, in file order."""
        for image in self.images:
            for i, text in enumerate(image.captions):
                yield caption_id(image.image_id, i), image.image_id, text

    def image(self, image_id: str) -> BenchmarkImage:
        for image in self.images:
            if image.image_id == image_id:
                return image
        raise KeyError(image_id)


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark's files come from publicly, and which files a split needs."""

    title: str
    folder: str
    repository: str
    commit: str
    path: str
    kind: str  # "precomp", "karpathy" or "sydney"
    splits: tuple[str, ...] = SPLITS

    def files(self, split: str) -> list[str]:
        if self.kind == "precomp":
            return [f"{split}_caps.txt", f"{split}_filename.txt"]
        if self.kind == "karpathy":
            return ["dataset.json"]
        return ["descriptions_SIDNEY.txt", f"filenames_{split}.txt"]

    def where(self) -> str:
        at = f"({self.commit})" if self.commit == NOT_VERIFIED else f"@ {self.commit}"
        return f"github.com/{self.repository} {at}, {self.path}"


# rsitmd, ucm, sydney: /work/shared/benchmarks/SOURCES.md. rsicd: the same AMFMN repository's sibling
# folder (the four files listed at that commit in a public code index, not downloaded here). nwpu: the
# NWPU-Captions paper's repository (images and `dataset_nwpu.json`); its captions go into the precomp
# layout with one file name per image, as the AMFMN/GaLR family reads it (folder `nwpu/`).
BENCHMARKS: dict[str, BenchmarkSource] = {
    "rsitmd": BenchmarkSource(
        "RSITMD",
        "rsitmd",
        "xiaoyuan1996/AMFMN",
        "c09bcfba90e8283f98317af3c0e35005c3587925",
        "AMFMN/data/rsitmd_precomp/",
        "precomp",
        ("train", "test"),
    ),
    "rsicd": BenchmarkSource(
        "RSICD",
        "rsicd",
        "xiaoyuan1996/AMFMN",
        "5a2f013dfd2542b6bfded5290ea58b30672c75aa",
        "AMFMN/data/rsicd_precomp/",
        "precomp",
        ("train", "test"),
    ),
    "nwpu": BenchmarkSource(
        "NWPU-Captions",
        "nwpu",
        "HaiyanHuang98/NWPU-Captions",
        NOT_VERIFIED,
        "dataset_nwpu.json (converted to precomp: one file name per image, 5 caption lines each)",
        "precomp",
    ),
    "ucm": BenchmarkSource(
        "UCM-captions",
        "ucm",
        "luna97/clip_captioning_satellitar",
        "fe4ebdaa2a58b927a6ff9268b33e3ee6cdb68348",
        "data/ucm/dataset.json",
        "karpathy",
    ),
    "sydney": BenchmarkSource(
        "Sydney-captions",
        "sydney",
        "luna97/clip_captioning_satellitar",
        "fe4ebdaa2a58b927a6ff9268b33e3ee6cdb68348",
        "data/sidney/filenames/",
        "sydney",
    ),
}


def _candidate_dirs() -> list[Path]:
    repo_root = Path(__file__).resolve().parents[1]
    candidates = [Path.cwd() / ".." / "shared" / "benchmarks", repo_root / ".." / "shared" / "benchmarks"]
    unique: list[Path] = []
    for path in candidates:
        resolved = path.resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The benchmarks root: the argument, else `RSRT_DATA_DIR`, else a `../shared/benchmarks` found.

    An explicit argument or variable is returned even if it does not exist, so the missing-file
    error names the place the user chose rather than a guess.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    candidates = _candidate_dirs()
    for path in candidates:
        if path.is_dir():
            return path
    return candidates[0]


def _missing_error(source: BenchmarkSource, split: str, folder: Path, missing: Sequence[str]) -> BenchmarkDataError:
    return BenchmarkDataError(
        f"{source.title} {split} split: missing {', '.join(missing)} in {folder}. "
        f"Put {', '.join(source.files(split))} from {source.where()} into {folder} "
        f"(or pass data_dir / set {ENV_DATA_DIR} to the folder that holds {source.folder}/)"
    )


def _read_lines(path: Path) -> list[str]:
    """Lines without CR/LF (the Sydney files are CRLF); a trailing empty line is not a line."""
    text = path.read_text(encoding="utf-8-sig")
    # Not str.splitlines(): it would also split captions at U+2028, U+0085 and form feeds.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _image_id(filename: str) -> str:
    return stable_image_id(Path(filename).stem)


def _make_images(pairs: Sequence[tuple[str, list[str]]]) -> list[BenchmarkImage]:
    """Drops empty captions (RSITMD's train split has four images with five blank lines each)."""
    images = []
    for filename, captions in pairs:
        kept = [c.strip() for c in captions if c.strip()]
        if kept:
            images.append(BenchmarkImage(_image_id(filename), filename, kept))
    return images


def read_precomp(directory: str | os.PathLike[str], split: str = "test", name: str = "precomp") -> Benchmark:
    """Reads the AMFMN/GaLR "precomp" layout (RSITMD, RSICD, NWPU-Captions): `{split}_caps.txt` +
    `{split}_filename.txt`.

    The filename file has one line per caption (test splits) or one per image with
    `CAPTIONS_PER_IMAGE` consecutive caption lines each (RSITMD train, NWPU-Captions); the layout is
    told by the line counts, and any other count is refused naming both files. A file name listed again later
    appends to the same image, so an image is never split in two.
    """
    folder = Path(directory)
    caps_path, names_path = folder / f"{split}_caps.txt", folder / f"{split}_filename.txt"
    missing = [p.name for p in (caps_path, names_path) if not p.is_file()]
    if missing:
        source = BENCHMARKS.get(name, BenchmarkSource(name, folder.name, "", "", "", "precomp"))
        if source.repository:
            raise _missing_error(source, split, folder, missing)
        raise BenchmarkDataError(f"{name} {split} split: missing {', '.join(missing)} in {folder}")
    captions = _read_lines(caps_path)
    names = [n.strip() for n in _read_lines(names_path)]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise BenchmarkDataError(f"{names_path} lists no image")
    if len(captions) == len(names):  # one file name per caption (the test splits)
        per_caption = names
    elif len(captions) == CAPTIONS_PER_IMAGE * len(names):  # one per image (RSITMD train, NWPU)
        per_caption = [n for n in names for _ in range(CAPTIONS_PER_IMAGE)]
    else:
        raise BenchmarkDataError(
            f"{caps_path} has {len(captions)} lines but {names_path} has {len(names)}: expected one file "
            f"name per caption ({len(captions)}) or one per image with {CAPTIONS_PER_IMAGE} captions each "
            f"({len(captions) / CAPTIONS_PER_IMAGE:g})"
        )
    grouped: dict[str, list[str]] = {}
    for filename, text in zip(per_caption, captions, strict=True):
        if not filename:
            raise BenchmarkDataError(f"{names_path} has an empty file name")
        grouped.setdefault(filename, []).append(text)
    return Benchmark(name, split, _make_images(list(grouped.items())), folder)


def read_karpathy_json(path: str | os.PathLike[str], split: str = "test", name: str = "ucm") -> Benchmark:
    """Reads a Karpathy-style `dataset.json` (UCM-captions): images whose `split` matches, `raw` texts."""
    json_path = Path(path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        records = data["images"]
        pairs = [
            (str(rec["filename"]), [str(s["raw"]) for s in rec["sentences"]])
            for rec in records
            if rec.get("split") == split
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchmarkDataError(f"{json_path} is not a Karpathy-style dataset.json: {exc}") from exc
    return Benchmark(name, split, _make_images(pairs), json_path.parent)


def read_sydney(directory: str | os.PathLike[str], split: str = "test", name: str = "sydney") -> Benchmark:
    """Reads Sydney-captions: `descriptions_SIDNEY.txt` (`<id> <caption>`) + `filenames_{split}.txt`.

    The split file lists `<id>.tif`; the description file is keyed by the bare number, so both sides
    are compared as integers when they are numeric (`007.tif` and `7` are the same image).
    """
    folder = Path(directory)
    desc_path, names_path = folder / "descriptions_SIDNEY.txt", folder / f"filenames_{split}.txt"
    missing = [p.name for p in (desc_path, names_path) if not p.is_file()]
    if missing:
        raise _missing_error(BENCHMARKS["sydney"], split, folder, missing)

    def key(raw: str) -> str:
        return str(int(raw)) if raw.isdigit() else raw

    by_id: dict[str, list[str]] = {}
    for number, line in enumerate(_read_lines(desc_path), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise BenchmarkDataError(f"{desc_path}:{number}: expected '<image id> <caption>'")
        by_id.setdefault(key(parts[0]), []).append(parts[1])
    pairs = []
    for filename in (n.strip() for n in _read_lines(names_path)):
        if not filename:
            continue
        stem = Path(filename).stem
        if key(stem) not in by_id:
            raise BenchmarkDataError(f"{names_path.name} lists {filename} but {desc_path.name} has no id {stem}")
        pairs.append((filename, by_id[key(stem)]))
    return Benchmark(name, split, _make_images(pairs), folder)


def read_captions_jsonl(path: str | os.PathLike[str], split: str | None = None, name: str = "jsonl") -> Benchmark:
    """Reads an operator's split as RSRT captions JSONL: the caption-only forms `rsrt ingest captions` takes.

    One image per line, `{"image": "a.jpg", "captions": ["...", ...]}`, or one caption per line,
    `{"image": "a.jpg", "caption": "..."}` (grouped by image in order of first appearance). A line
    may carry `"split": "test"`; when any line does, `split` selects those lines (default `test`).
    Blank lines are skipped; a bad line is refused naming `file:line`.
    """
    jsonl = Path(path)
    if not jsonl.is_file():
        raise BenchmarkDataError(f"{jsonl} does not exist")
    rows: list[tuple[str, list[str], str | None]] = []
    for number, line in enumerate(_read_lines(jsonl), start=1):
        if not line.strip():
            continue
        where = f"{jsonl}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise BenchmarkDataError(f"{where}: not JSON ({exc})") from None
        image = obj.get("image") if isinstance(obj, dict) else None
        if not isinstance(image, str) or not image.strip():
            raise BenchmarkDataError(f'{where}: expected {{"image": ..., "captions": [...]}} or '
                                     '{"image": ..., "caption": ...}')
        texts = obj.get("captions", [obj["caption"]] if "caption" in obj else None)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BenchmarkDataError(f'{where}: "captions" must be a list of strings (or give one "caption")')
        line_split = obj.get("split")
        if line_split is not None and not isinstance(line_split, str):
            raise BenchmarkDataError(f'{where}: "split" must be a string')
        rows.append((image.strip(), texts, line_split))
    has_splits = any(s is not None for _, _, s in rows)
    wanted = split or "test"
    grouped: dict[str, list[str]] = {}
    for image, texts, line_split in rows:
        if has_splits and line_split != wanted:
            continue
        grouped.setdefault(image, []).extend(texts)
    if has_splits and not grouped:
        found = sorted({s for _, _, s in rows if s is not None})
        raise BenchmarkDataError(f"{jsonl} has no {wanted} split (its lines have split {', '.join(found)})")
    return Benchmark(name, wanted if has_splits else (split or "test"), _make_images(list(grouped.items())),
                     jsonl.parent)


def _path_name(path: Path) -> str:
    """A benchmark name for a path: the folder (or the file's stem), lower-case, safe in index names."""
    stem = path.parent.name if path.name == "dataset.json" else (path.stem if path.is_file() else path.name)
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "custom"


def detect_layout(path: Path, split: str) -> str:
    """`precomp`, `karpathy`, `sydney` or `jsonl`, told by the files at `path` (see `load_benchmark_path`)."""
    if not path.exists():
        raise BenchmarkDataError(f"{path} does not exist: --benchmark takes a benchmark name or the path of a split")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "karpathy"
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            return "jsonl"
    elif path.is_dir():
        if (path / f"{split}_caps.txt").is_file() or (path / f"{split}_filename.txt").is_file():
            return "precomp"
        if (path / "descriptions_SIDNEY.txt").is_file():
            return "sydney"
        if (path / "dataset.json").is_file():
            return "karpathy"
        if (path / f"{split}.jsonl").is_file():
            return "jsonl"
    raise BenchmarkDataError(
        f"{path}: not a benchmark split in a layout rsrt reads: a folder with {split}_caps.txt + "
        f"{split}_filename.txt (precomp), descriptions_SIDNEY.txt + filenames_{split}.txt (Sydney), "
        f"dataset.json or {split}.jsonl, or a Karpathy .json / RSRT captions .jsonl file"
    )


def load_benchmark_path(path: str | os.PathLike[str], split: str = "test") -> Benchmark:
    """One split of an operator's benchmark at `path`, its layout detected (`detect_layout`).

    The benchmark is named after the folder or file (`my-split`), which is what reports and index
    names show.
    """
    target = Path(path).expanduser()
    layout = detect_layout(target, split)
    name = _path_name(target)
    if layout == "precomp":
        bench = read_precomp(target, split, name=name)
    elif layout == "sydney":
        bench = read_sydney(target, split, name=name)
    elif layout == "karpathy":
        bench = read_karpathy_json(target / "dataset.json" if target.is_dir() else target, split, name=name)
    else:
        bench = read_captions_jsonl(target / f"{split}.jsonl" if target.is_dir() else target, split, name=name)
    if not bench.images:
        raise BenchmarkDataError(f"{target}: the {split} split has no image with captions")
    return bench


def is_benchmark_path(name: str) -> bool:
    """Whether `--benchmark` names a path rather than one of `BENCHMARKS`."""
    if name.strip().lower() in BENCHMARKS:
        return False
    return os.sep in name or "/" in name or Path(name).expanduser().exists()


def load_benchmark(name: str, split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> Benchmark:
    """Loads one split of a named benchmark (`BENCHMARKS`) from the data directory, or of a path.

    `data_dir` is the folder holding one sub-folder per benchmark (`rsitmd/`, `ucm/`, ...); a folder
    that is itself the benchmark's folder is accepted too. A `name` that is not a known benchmark but
    a path (it exists, or has a `/`) is read by `load_benchmark_path`.
    """
    key = name.strip().lower()
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if is_benchmark_path(name):
        return load_benchmark_path(name, split)
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}: choose one of {', '.join(sorted(BENCHMARKS))}, or give "
                          "the path of a split (precomp folder, dataset.json, Sydney folder, captions .jsonl)")
    source = BENCHMARKS[key]
    if split not in source.splits:
        raise ConfigError(f"{source.title} has no {split} split (its public files have {', '.join(source.splits)})")
    root = find_data_dir(data_dir)
    folder = root / source.folder
    if not folder.is_dir() and all((root / f).is_file() for f in source.files(split)):
        folder = root
    missing = [f for f in source.files(split) if not (folder / f).is_file()]
    if missing:
        raise _missing_error(source, split, folder, missing)
    if source.kind == "precomp":
        bench = read_precomp(folder, split, name=key)
    elif source.kind == "karpathy":
        bench = read_karpathy_json(folder / "dataset.json", split, name=key)
    else:
        bench = read_sydney(folder, split, name=key)
    if not bench.images:
        raise BenchmarkDataError(f"{source.title} {split} split in {folder} has no image with captions")
    return bench
