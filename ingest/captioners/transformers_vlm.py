"""A local VLM through Hugging Face transformers (LLaVA, Qwen-VL, Idefics, ... any image-text-to-text model).

The model is loaded from a local directory (the normal case: archives are captioned on a machine
that holds the weights); a hub name works for users with network, but never when HF_HUB_OFFLINE
is set, so an offline run cannot hang on a download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rsrt.search.errors import ConfigError

from .base import Answer, Captioner, CaptionerError, LoadedImage

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether the user asked for no hub access (the same variables transformers honours)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def resolve_device(device: str) -> str:
    """`auto` is the first accelerator present, else the CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is bfloat16 (else float16) on a GPU, float32 on the CPU where half precision is slow."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device == "mps" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def build_messages(prompt: str) -> list[dict[str, Any]]:
    """One user turn holding the image then the prompt: the order VLM chat templates expect."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def render_prompt(processor: Any, prompt: str) -> str:
    """The prompt wrapped by the model's own chat template, ending where the answer starts."""
    if not getattr(processor, "chat_template", None):
        raise CaptionerError(
            "the model's processor has no chat template; use an instruction-tuned VLM "
            "(its folder has chat_template.json/.jinja or a template in tokenizer_config.json)"
        )
    return processor.apply_chat_template(build_messages(prompt), add_generation_prompt=True, tokenize=False)


def _model_classes() -> list[Any]:
    """Auto class first; older auto names and LLaVA for checkpoints the auto maps do not know."""
    import transformers

    names = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "LlavaForConditionalGeneration")
    return [getattr(transformers, name) for name in names if hasattr(transformers, name)]


class TransformersCaptioner(Captioner):
    """Captions images with a local VLM, in batches, greedy first and sampling on retries.

    One model on one device: use it from one thread (the pipeline's caption stage).
    """

    kind = "transformers"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        max_new_tokens: int = 1536,
        temperature: float = 0.0,
        top_p: float = 1.0,
        retry_temperature: float = 0.7,
        repetition_penalty: float | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        max_attempts: int = 3,
        **prompt_options: Any,
    ) -> None:
        super().__init__(max_attempts=max_attempts, **prompt_options)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self._model_path = str(model_path)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.retry_temperature = retry_temperature
        self.repetition_penalty = repetition_penalty
        self.generation_kwargs = dict(generation_kwargs or {})
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor, self.hf_model = self._load(trust_remote_code)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        # Batched generation appends to the right, so prompts must be aligned on the right.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._rendered: dict[str, str] = {}

    # -- loading -------------------------------------------------------------------------------

    def _load(self, trust_remote_code: bool) -> tuple[Any, Any]:
        from transformers import AutoProcessor

        path = Path(self._model_path).expanduser()
        local = path.is_dir()
        # A hub id is "org/name"; anything else that is not a folder is a mistyped path.
        looks_like_path = self._model_path.startswith(("/", ".", "~")) or self._model_path.count("/") > 1
        if not local and looks_like_path:
            raise CaptionerError(f"model folder {self._model_path!r} does not exist")
        if not local and hub_offline():
            raise CaptionerError(
                f"model {self._model_path!r} is not a local folder and HF_HUB_OFFLINE is set; "
                "give the path of a downloaded model"
            )
        source = str(path) if local else self._model_path
        options: dict[str, Any] = {
            "local_files_only": local or hub_offline(),
            "trust_remote_code": trust_remote_code,
        }
        try:
            processor = AutoProcessor.from_pretrained(source, **options)
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionerError(f"cannot load the processor of model {source!r}: {exc}") from None
        errors: list[str] = []
        for cls in _model_classes():
            try:
                model = cls.from_pretrained(source, dtype=self.dtype, **options)
                break
            except (ValueError, KeyError) as exc:  # this class does not know the architecture
                errors.append(f"{cls.__name__}: {str(exc).splitlines()[0]}")
            except OSError as exc:
                raise CaptionerError(f"cannot load model {source!r}: {exc}") from None
        else:
            raise CaptionerError(f"model {source!r} is not an image-text-to-text model ({'; '.join(errors)})")
        model.to(self.device)
        model.eval()
        log.info("loaded %s (%s) on %s as %s", source, type(model).__name__, self.device, self.dtype)
        return processor, model

    # -- Captioner -------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_path

    @property
    def chunk_size(self) -> int:
        return self.batch_size * 2

    def _answer(self, images: Sequence[LoadedImage], prompt: str, attempt: int) -> list[Answer]:
        if self.hf_model is None:
            raise CaptionerError(f"captioner for {self._model_path!r} is closed")
        answers: list[Answer] = []
        for start in range(0, len(images), self.batch_size):
            answers.extend(self._generate_safely(images[start : start + self.batch_size], prompt, attempt))
        return answers

    def _generate_safely(self, images: Sequence[LoadedImage], prompt: str, attempt: int) -> list[Answer]:
        """Out of memory on a batch → one image at a time; on one image → that image fails."""
        try:
            return self._generate(images, prompt, attempt)
        except torch.OutOfMemoryError:
            self._free_cache()
            if len(images) == 1:
                return [Answer(error=f"out of memory on {self.device} (image too large or model too big)")]
            log.warning("out of memory on a batch of %d; retrying one image at a time", len(images))
            return [answer for image in images for answer in self._generate_safely([image], prompt, attempt)]

    def _free_cache(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _generation_options(self, attempt: int) -> dict[str, Any]:
        """Greedy (or the user's temperature) first; a retry samples, else it repeats the same answer."""
        temperature = self.temperature if attempt == 1 else max(self.temperature, self.retry_temperature)
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=self.top_p)
        else:
            options.update(do_sample=False)
        if self.repetition_penalty is not None:
            options["repetition_penalty"] = self.repetition_penalty
        if self.tokenizer.pad_token_id is not None:
            options["pad_token_id"] = self.tokenizer.pad_token_id
        options.update(self.generation_kwargs)
        return options

    def _rendered_prompt(self, prompt: str) -> str:
        if prompt not in self._rendered:
            self._rendered[prompt] = render_prompt(self.processor, prompt)
        return self._rendered[prompt]

    def _encode(self, images: Sequence[LoadedImage], prompt: str) -> Any:
        text = [self._rendered_prompt(prompt)] * len(images)
        pictures = [loaded.image for loaded in images]
        try:
            return self.processor(text=text, images=pictures, return_tensors="pt", padding=True)
        except (ValueError, TypeError):
            # Some processors (Idefics, SmolVLM, Mllama) want one list of images per text.
            nested = [[picture] for picture in pictures]
            return self.processor(text=text, images=nested, return_tensors="pt", padding=True)

    @torch.inference_mode()
    def _generate(self, images: Sequence[LoadedImage], prompt: str, attempt: int) -> list[Answer]:
        inputs = self._encode(images, prompt).to(self.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):  # pixel values must match the weights' dtype
                inputs[key] = value.to(self.dtype)
        output = self.hf_model.generate(**inputs, **self._generation_options(attempt))
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # left padding: prompts end together
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        eos = self.hf_model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        answers = []
        for row, text in zip(new_tokens.tolist(), texts, strict=True):
            stopped = any(token in eos_ids for token in row)
            truncated = not stopped and len(row) >= self.max_new_tokens
            answers.append(Answer(text=text.strip(), truncated=truncated))
        return answers

    def close(self) -> None:
        """Drop the weights (GPU memory is only returned when nothing references them)."""
        self.hf_model = None
        self._free_cache()


__all__ = ["TransformersCaptioner", "build_messages", "render_prompt", "resolve_device", "resolve_dtype"]
