"""The ONNX Runtime backends of the sentence encoder: export once, quantise once, run on the CPU.

Why: on a small CPU onnxruntime runs the transformer faster than eager torch, and its int8 model faster
again. Only the transformer goes to ONNX (torch's TorchScript exporter, `dynamo=False`, from the local model
directory, offline); what sentence-transformers does around it (tokenise, truncate, pool, normalise) is redone
here from the model's own config files, so the vectors match the torch backend's. Imported lazily by
`encoder.py`: torch-only users need neither onnx nor onnxruntime. Models and the cache: `models.py`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, RsrtError
from .models import sha256_file

if TYPE_CHECKING:
    import onnxruntime

# Pooling modes done here; sentence-transformers' weightedmean and lasttoken are refused.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_LEGACY_POOLING_KEYS = {  # the order sentence-transformers concatenates them in
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
OPSET = 17
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"


@dataclass(frozen=True)
class SentenceConfig:
    """What sentence-transformers' config files say happens around the transformer."""

    transformer_dir: Path
    max_seq_length: int | None  # None: the tokenizer's and the position embeddings' limit
    do_lower_case: bool
    pooling: tuple[str, ...]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The pooling a `1_Pooling/config.json` declares (new `pooling_mode` key or the legacy booleans)."""
    if "pooling_mode" in config:
        value = config["pooling_mode"]
        modes = (value,) if isinstance(value, str) else tuple(value)
    else:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise ConfigError(f"pooling {', '.join(unsupported)} is not implemented by the onnx backends "
                          f"(they do {', '.join(POOLING_MODES)}); use the torch backend for this model")
    return modes


def read_sentence_config(model_dir: Path) -> SentenceConfig:
    """Parse modules.json: one Transformer, one Pooling, optionally Normalize; anything else is refused."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():  # a plain transformers model: sentence-transformers mean-pools it
        return SentenceConfig(model_dir, None, False, ("mean",))
    transformer: Path | None = None
    pooling: tuple[str, ...] | None = None
    for module in _read_json(modules_file):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = model_dir / module.get("path", "")
        if kind == "Transformer" and transformer is None:
            transformer = path
        elif kind == "Pooling" and pooling is None:
            pooling = pooling_modes(_read_json(path / "config.json"))
        elif kind != "Normalize":  # we always L2-normalise
            raise ConfigError(f"{model_dir} has a {module.get('type')} module, which the onnx backends do not "
                              "implement; use the torch backend for this model")
    if transformer is None:
        raise ConfigError(f"{modules_file} declares no Transformer module")
    settings: dict[str, Any] = {}
    for candidate in (transformer / "sentence_bert_config.json", model_dir / "sentence_bert_config.json"):
        if candidate.exists():
            settings = _read_json(candidate)
            break
    max_len = settings.get("max_seq_length")
    return SentenceConfig(transformer, int(max_len) if max_len else None, bool(settings.get("do_lower_case")),
                          pooling or ("mean",))


def _pool(hidden: np.ndarray, mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """sentence-transformers' Pooling on right-padded (batch, seq, dim) states, in float32."""
    weights = mask[..., None].astype(np.float32)
    parts: list[np.ndarray] = []
    for mode in modes:
        if mode == "cls":
            first = mask.argmax(axis=1)
            parts.append(hidden[np.arange(hidden.shape[0]), first])
        elif mode == "max":
            parts.append(np.where(weights > 0, hidden, -np.inf).max(axis=1))
        else:
            counts = np.clip(weights.sum(axis=1), 1e-9, None)
            total = (hidden * weights).sum(axis=1)
            parts.append(total / (counts if mode == "mean" else np.sqrt(counts)))
    pooled = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return pooled.astype(np.float32, copy=False)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32, copy=False)


def write_atomically(target: Path, produce: Callable[[Path], None]) -> None:
    """`produce` writes a temp file beside `target`, renamed into place: no process sees half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        produce(temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def export_transformer(config: SentenceConfig, target: Path) -> None:
    """Trace the transformer to ONNX (dynamic batch and sequence axes), checked against torch once."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(config.transformer_dir), local_files_only=True)
    # Eager attention traces to the MatMul/Softmax pattern onnxruntime fuses into its Attention kernel.
    model = AutoModel.from_pretrained(str(config.transformer_dir), local_files_only=True,
                                      attn_implementation="eager", dtype=torch.float32).eval()
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs, strict=True)), return_dict=True).last_hidden_state

    sample = tokenizer(["an aerial view of a harbour with many boats", "fields"], padding=True,
                       return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    # A trace can freeze a shape: the export is checked on another batch size and length.
    check = tokenizer(["a", "a dense residential area with houses, trees and a road along a river"],
                      padding=True, return_tensors="np")
    with torch.no_grad():
        expected = model(**{n: torch.from_numpy(check[n]) for n in names}).last_hidden_state.numpy()

    def produce(path: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks that are constant for encoders
            # .eval(): the exporter restores the wrapper's train/eval mode on everything inside it afterwards.
            torch.onnx.export(LastHiddenState().eval(), tuple(sample[n] for n in names), str(path), dynamo=False,
                              input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                              opset_version=OPSET, do_constant_folding=True)
        got = _session(path, 1).run(None, {n: check[n].astype(np.int64) for n in names})[0]
        error = float(np.abs((got - expected) * check["attention_mask"][..., None]).max())
        if error > 1e-3:
            raise RsrtError(f"the ONNX export of {config.transformer_dir} differs from torch by {error:.2g}; "
                            "use the torch backend")

    write_atomically(target, produce)


class _DropPreprocessAdvice(logging.Filter):
    """The quantiser logs advice to pre-process on the root logger; its pre-processing fails on these models."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantise(source: Path, target: Path) -> None:
    """Dynamic int8: QInt8 weights per output channel (per-tensor costs ~3 points of cosine on MiniLM)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def produce(path: Path) -> None:
        advice = _DropPreprocessAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(source, path, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.getLogger().removeFilter(advice)

    write_atomically(target, produce)


def _session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's count, inside containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def local_model_dir(location: str) -> Path:
    """The directory to export from: the resolved path, or the hub snapshot (offline when HF_HUB_OFFLINE=1)."""
    path = Path(location)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(location))


def weights_digest(transformer_dir: Path) -> str:
    """sha256 of the weights file: the cache key, so new weights under an old name are exported anew."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (transformer_dir / name).exists():
            return sha256_file(transformer_dir / name)
    raise ConfigError(f"{transformer_dir} has neither model.safetensors nor pytorch_model.bin to export")


class OnnxEncoder:
    """One onnxruntime session plus the model's tokenizer; `encode` is safe from several threads."""

    def __init__(self, name: str, location: str, cache_dir: Path, quantized: bool = False,
                 weights_sha256: str | None = None, threads: int | None = None) -> None:
        try:
            import onnx  # noqa: F401  (needed by the quantiser; fail here with the fix rather than mid-export)
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("the onnx encoder backends need onnxruntime and onnx: "
                              "`pip install 'rsrt-search[onnx]'`") from None
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model_dir = local_model_dir(location)
        self.config = read_sentence_config(model_dir)
        digest = weights_sha256 or weights_digest(self.config.transformer_dir)
        folder = cache_dir / "onnx" / f"{Path(name).name}-{digest[:12]}"
        self.path = folder / FP32_FILE
        started = time.perf_counter()
        built = False
        if not self.path.exists():
            export_transformer(self.config, self.path)
            built = True
        if quantized:
            self.path = folder / INT8_FILE
            if not self.path.exists():
                quantise(folder / FP32_FILE, self.path)
                built = True
        # Seconds this construction spent exporting/quantising: 0.0 when the files came from the disk cache
        # (the cold first query's extra cost, reported by `rsrt bench encode-query`).
        self.export_seconds = time.perf_counter() - started if built else 0.0
        self._tokenizer_lock = threading.Lock()  # fast tokenizers raise "Already borrowed" when shared
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.config.transformer_dir), local_files_only=True)
        self.max_length = self.config.max_seq_length or self._model_limit()
        self.session = _session(self.path, threads or cpu_count())
        self.input_names = [i.name for i in self.session.get_inputs()]
        width = self.session.get_outputs()[0].shape[-1]
        self.dimension = (int(width) * len(self.config.pooling) if isinstance(width, int)
                          else int(self._encode_batch(["x"]).shape[1]))

    def _model_limit(self) -> int:
        """Like sentence-transformers without a max_seq_length: the tokenizer's limit, capped by the model's."""
        limit = int(min(self.tokenizer.model_max_length, 1 << 30))
        positions = _read_json(self.config.transformer_dir / "config.json").get("max_position_embeddings", -1)
        return min(limit, int(positions)) if positions and positions > 0 else limit

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if self.config.do_lower_case:
            texts = [t.lower() for t in texts]
        with self._tokenizer_lock:
            tokens = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_length,
                                    return_tensors="np")
        hidden = self.session.run(None, {n: tokens[n].astype(np.int64) for n in self.input_names})[0]
        return _normalise(_pool(hidden, tokens["attention_mask"], self.config.pooling))

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Batches of similar length (less padding), returned in the caller's order."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start:start + batch_size]
            out[chosen] = self._encode_batch([texts[i] for i in chosen])
        return out
