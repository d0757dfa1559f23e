"""The encoder backends (torch, torch-int8, onnx, onnx-int8) on the real packaged MiniLM: same vectors, faster.

Each backend is loaded once per module; the ONNX files are exported into one temporary cache (RSRT_MODEL_CACHE).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
import pytest

from rsrt.search import encoder as encoder_module
from rsrt.search.encoder import BACKENDS, PACKAGED, Encoder, get_encoder
from rsrt.search.encoder_onnx import pooling_modes, read_sentence_config
from rsrt.search.errors import ConfigError

LONG = "a dense residential area with many red-roofed houses, green trees and parking lots along a road " * 20
SENTENCES = [
    "Many boats are docked in the harbour next to a long pier.",
    "A baseball field is surrounded by green trees and a parking lot.",
    "an airport with two runways and several planes parked near the terminal",
    "Several white storage tanks stand in an industrial area.",
    "A river winds through farmland with square fields of different colours.",
    "A bridge crosses a wide river between two parts of a city.",
    "dense residential buildings",
    "A large stadium with a red running track and a green football pitch in the middle.",
    "Sparse trees on bare desert land.",
    "A church with a cross-shaped roof is in the middle of a square.",
    "The beach is next to blue sea water with white waves.",
    "A railway station with many parallel tracks.",
    "Two tennis courts beside a school building.",
    "An overpass where highways intersect, with cars driving on them.",
    "Golf course: green fairways, sand bunkers and a small pond!",
    "port",
    "a",
    "",
    LONG,
    "Parking lot FULL of cars (≈ 200) — next to a shopping mall; 北京",
]
PARAPHRASES = [
    ("Many boats are docked in the harbour.", "Lots of ships are moored at the port."),
    ("A baseball field next to a parking lot.", "A ballpark beside a car park."),
    ("An airport with planes on the runway.", "Aircraft parked at an airfield near the runway."),
    ("A river flows through green farmland.", "A stream crosses agricultural fields."),
    ("A large stadium with a running track.", "A big sports arena with an athletics track."),
    ("Storage tanks in an industrial zone.", "Oil tanks at a factory site."),
    ("A beach beside the blue sea.", "Sandy coast next to the ocean."),
    ("Dense residential houses with red roofs.", "Crowded housing with red rooftops."),
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    patch = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("model-cache")
    patch.setenv("RSRT_MODEL_CACHE", str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="module")
def encoders(cache_dir: Path) -> dict[str, Encoder]:
    """Every backend, loaded (and the ONNX ones exported) once for the module."""
    loaded = {backend: Encoder(backend=backend) for backend in BACKENDS}
    for encoder in loaded.values():
        encoder.encode(["warm up"])
    return loaded


@pytest.fixture(scope="module")
def reference(encoders: dict[str, Encoder]) -> np.ndarray:
    return encoders["torch"].encode(SENTENCES, batch_size=8)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_returns_normalised_float32_rows(encoders: dict[str, Encoder], backend: str) -> None:
    vectors = encoders[backend].encode(SENTENCES, batch_size=8)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoders[backend].encode([]).shape == (0, 384)


@pytest.mark.slow
def test_onnx_matches_torch(encoders: dict[str, Encoder], reference: np.ndarray) -> None:
    onnx = encoders["onnx"]
    assert len(onnx.onnx_encoder.tokenizer(LONG)["input_ids"]) > 256, "the long text must hit truncation"
    assert onnx.onnx_encoder.max_length == 256  # sentence_bert_config.json, not the tokenizer's 512
    cosines = (onnx.encode(SENTENCES, batch_size=8) * reference).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.round(5), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch-int8", "onnx-int8"])
def test_int8_backends_stay_close_to_torch(encoders: dict[str, Encoder], reference: np.ndarray,
                                           backend: str) -> None:
    """The 0.97 bound is for non-empty texts: rsrt never embeds "" (an empty query is refused, ingest quarantines
    empty variants). "" is only [CLS][SEP], and its int8 vector depends on the CPU's int8 kernels: onnx-int8
    measured 0.9682 with AVX512-VNNI and 0.9738 on AVX2 alone (Haswell), so it gets a looser sanity bound."""
    cosines = (encoders[backend].encode(SENTENCES, batch_size=8) * reference).sum(axis=1)
    by_text = dict(zip(SENTENCES, cosines.round(4), strict=True))
    assert min(c for text, c in zip(SENTENCES, cosines, strict=True) if text) >= 0.97, by_text
    assert by_text[""] >= 0.95, by_text


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_paraphrase_is_the_same_as_with_torch(encoders: dict[str, Encoder], backend: str) -> None:
    queries, targets = [q for q, _ in PARAPHRASES], [t for _, t in PARAPHRASES]

    def nearest(encoder: Encoder) -> list[int]:
        return list((encoder.encode(queries) @ encoder.encode(targets).T).argmax(axis=1))

    expected = nearest(encoders["torch"])
    assert expected == list(range(len(PARAPHRASES)))  # the pairs are unambiguous for the float model
    assert nearest(encoders[backend]) == expected


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_come_back_in_the_callers_order(encoders: dict[str, Encoder], backend: str) -> None:
    """Texts of mixed length are batched by length inside encode; each row must still be its own text's."""
    texts = [SENTENCES[i] for i in (18, 16, 0, 6, 13, 15, 3, 19, 9, 1)]
    together = encoders[backend].encode(texts, batch_size=3)
    alone = np.vstack([encoders[backend].encode([text]) for text in texts])
    assert list((together @ alone.T).argmax(axis=1)) == list(range(len(texts)))
    # int8 activations are scaled per batch, so a row depends slightly on its batch companions
    assert (together * alone).sum(axis=1).min() >= (0.999 if backend in ("torch", "onnx") else 0.98)


@pytest.mark.slow
def test_onnx_files_are_cached_and_reused(encoders: dict[str, Encoder], cache_dir: Path) -> None:
    folder = cache_dir / "onnx" / f"all-MiniLM-L6-v2-{PACKAGED['all-MiniLM-L6-v2'].weights_sha256[:12]}"
    assert sorted(p.name for p in folder.iterdir()) == ["model-int8.onnx", "model.onnx"]  # no temp files left
    assert encoders["onnx"].onnx_encoder.path == folder / "model.onnx"
    assert encoders["onnx-int8"].onnx_encoder.path == folder / "model-int8.onnx"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = Encoder(backend="onnx-int8")
    np.testing.assert_allclose(again.encode(SENTENCES[:4]), encoders["onnx-int8"].encode(SENTENCES[:4]), atol=1e-6)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_encoders_load_once_and_encode_from_several_threads(encoders: dict[str, Encoder],
                                                                 backend: str) -> None:
    fresh = Encoder(backend=backend)  # files cached by now: loading races, not exporting
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fresh.encode(SENTENCES, batch_size=8), range(8)))
    expected = encoders[backend].encode(SENTENCES, batch_size=8)
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.slow
def test_info_records_the_backend_but_the_name_decides(encoders: dict[str, Encoder]) -> None:
    infos = {backend: encoder.info() for backend, encoder in encoders.items()}
    for backend, info in infos.items():
        assert info == {"name": "all-MiniLM-L6-v2", "dimension": 384, "normalized": True, "backend": backend}


def test_unknown_backend_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as raised:
        Encoder(backend="tensorrt")
    assert "'tensorrt'" in str(raised.value)
    assert all(name in str(raised.value) for name in BACKENDS)
    with pytest.raises(ConfigError):
        get_encoder(backend="openvino")


def test_onnx_backends_refuse_a_gpu() -> None:
    with pytest.raises(ConfigError, match="CPU only"):
        Encoder(backend="onnx", device="cuda")


def _backend_options() -> dict[str, click.Option]:
    """Every `rsrt` command with --encoder-backend, by its path ("search", "bench query", …)."""
    from rsrt.cli import main

    found: dict[str, click.Option] = {}

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.name == "encoder_backend":
                found[path] = param
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(main, "")
    return found


def test_environment_sets_the_default_backend_and_the_cache_is_per_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """RSRT_ENCODER_BACKEND is read at the CLI edge only, as --encoder-backend's default; the library takes
    the backend as an argument (default torch) and keeps one encoder per (name, backend)."""
    from rsrt.cli import main

    options = _backend_options()
    assert "search" in options, options
    for path, option in options.items():
        assert (option.envvar, option.default, tuple(option.type.choices)) == ("RSRT_ENCODER_BACKEND", "torch",
                                                                               BACKENDS), path
    search = main.commands["search"]

    def parsed(*args: str) -> str:
        return search.make_context("search", ["harbour", *args]).params["encoder_backend"]

    monkeypatch.setenv("RSRT_ENCODER_BACKEND", "onnx-int8")
    assert parsed() == "onnx-int8"
    assert parsed("--encoder-backend", "torch-int8") == "torch-int8"  # the flag beats the environment
    monkeypatch.setenv("RSRT_ENCODER_BACKEND", "onnx-fp16")
    with pytest.raises(click.BadParameter, match=r"'onnx-fp16'.*'torch', 'torch-int8', 'onnx', 'onnx-int8'"):
        parsed()
    monkeypatch.delenv("RSRT_ENCODER_BACKEND")
    assert parsed() == "torch"

    monkeypatch.setattr(encoder_module, "_shared", {})  # nothing here loads a model: Encoder is lazy
    monkeypatch.setenv("RSRT_ENCODER_BACKEND", "onnx-int8")  # the library does not read it
    default = get_encoder()
    assert default.backend == "torch"
    assert Encoder().backend == "torch"
    assert get_encoder("minilm", "torch") is default
    int8 = get_encoder(backend="onnx-int8")
    assert int8.backend == "onnx-int8"
    assert int8 is not default
    assert get_encoder("sentence-transformers/all-MiniLM-L6-v2", "onnx-int8") is int8


def test_pooling_config_is_read_in_both_formats() -> None:
    assert pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}) == ("mean",)
    assert pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}) == ("cls", "mean")
    assert pooling_modes({"pooling_mode": "cls"}) == ("cls",)
    assert pooling_modes({"pooling_mode": ["max", "mean_sqrt_len_tokens"]}) == ("max", "mean_sqrt_len_tokens")
    with pytest.raises(ConfigError, match="weightedmean"):
        pooling_modes({"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(ConfigError, match=r"lasttoken.*torch backend"):
        pooling_modes({"pooling_mode": "lasttoken"})


def test_unsupported_modules_are_refused(tmp_path: Path) -> None:
    def model_dir(modules: list[dict[str, str]], pooling: dict[str, object]) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        (folder / "1_Pooling").mkdir(parents=True)
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
        return folder

    transformer = {"path": "", "type": "sentence_transformers.models.Transformer"}
    pool = {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    ok = read_sentence_config(model_dir([transformer, pool], {"pooling_mode": "mean"}))
    assert (ok.max_seq_length, ok.pooling) == (128, ("mean",))
    with pytest.raises(ConfigError, match="weightedmean"):
        read_sentence_config(model_dir([transformer, pool], {"pooling_mode": "weightedmean"}))
    dense = {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    with pytest.raises(ConfigError, match="Dense"):
        read_sentence_config(model_dir([transformer, pool, dense], {"pooling_mode": "mean"}))
