"""A tiny LLaVA built and trained on the spot, so the real transformers code path runs offline.

`build_tiny_vlm(path)` writes a complete model folder (config, weights, tokenizer with a chat
template and an `<image>` token, CLIP image processor, LLaVA processor). Random weights only emit
garbage, so the model is briefly trained (a few seconds of Adam on the CPU) to answer the real
captioning prompt with one valid 5-variant JSON answer and the query prompt with one valid
description, whatever the image. Loading, chat template, batched generation and parsing are then
exercised exactly as with a real VLM.

Other tests reuse it: `shared_tiny_vlm()` builds the trained model once per test process.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from rsrt.ingest.captioners.prompt import CAPTION_PROMPT, QUERY_PROMPT
from rsrt.ingest.captioners.transformers_vlm import render_prompt

# What the trained model answers: five different variants, north-up positions, qualitative sizes.
TINY_VARIANTS: list[dict[str, str]] = [
    {
        "one_sentence": "Dense houses beside a wide road.",
        "feature": "small houses (N); large road (S)",
        "caption": "Small houses fill the north and a large road runs along the south.",
    },
    {
        "one_sentence": "Rows of homes along a street.",
        "feature": "medium rows of homes (center); small cars (SE)",
        "caption": "Homes stand in rows in the center, with small cars in the southeast.",
    },
    {
        "one_sentence": "A green neighbourhood seen from above.",
        "feature": "small trees (E, W); medium lawn (NE)",
        "caption": "Trees line the east and west sides and a lawn lies in the northeast.",
    },
    {
        "one_sentence": "Grey roofs next to a paved street.",
        "feature": "small grey roofs (N); large street (S)",
        "caption": "Grey roofs cover the north half above a wide paved street.",
    },
    {
        "one_sentence": "Two housing blocks split by a road.",
        "feature": "two medium blocks (N, center); small pool (NW)",
        "caption": "Two blocks of houses are split by a road; a small pool is in the northwest.",
    },
]
TINY_ANSWER = json.dumps({"variants": TINY_VARIANTS})
TINY_QUERY = {
    "one_sentence": "A residential area next to a road.",
    "feature": "small houses (N); large road (S)",
    "caption": "Small houses fill the north and a large road runs along the south.",
}
TINY_QUERY_ANSWER = json.dumps(TINY_QUERY)

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]
# A LLaVA-1.5 style template: the image placeholder, then the text, then "ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] != 'user' %}</s>{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IMAGE_SIZE = 16
MIN_MARGIN = 1.0  # logits between the right token and the runner-up, at every answer position
PATCH_SIZE = 8  # → 4 patches (+1 CLS dropped by the "default" feature strategy) = 4 image tokens


def _tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the prompts and answers: exact round trip of any JSON."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [CAPTION_PROMPT, QUERY_PROMPT, TINY_ANSWER, TINY_QUERY_ANSWER, "USER: ASSISTANT:", '{"[]}:, ']
    backend.train_from_iterator(corpus * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=2048,
    )


def _processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )


def _model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    # Image features start at zero weight: the answer must not depend on the picture, and training
    # on a dozen synthetic images is then enough for the 8 real samples to get the same answer.
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.zero_()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def _image_pool(seed: int, count: int = 16) -> list[Image.Image]:
    """Noise, flat colours, gradients and smooth blobs: the model must answer whatever it sees."""
    rng = np.random.default_rng(seed)
    pool: list[Image.Image] = []
    for index in range(count):
        size = int(rng.integers(24, 96))
        kind = index % 4
        if kind == 0:
            array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        elif kind == 1:
            array = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()
        elif kind == 2:
            ramp = np.linspace(0, 255, size)
            noise = rng.uniform(0, 255, (size, size))
            bands = [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), noise]
            array = np.stack(bands, -1).astype(np.uint8)
        else:  # low-frequency texture, closer to the statistics of aerial photos
            coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            array = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))
        pool.append(Image.fromarray(array))
    return pool


def _train(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, seed: int, max_steps: int
) -> dict[str, float]:
    """Teach the two fixed answers; stop once teacher-forced argmax reproduces them exactly."""
    tokenizer = processor.tokenizer
    generator = torch.Generator().manual_seed(seed)
    pool = _image_pool(seed)
    pixels = processor.image_processor(pool, return_tensors="pt")["pixel_values"]
    examples = []
    for prompt, answer in ((CAPTION_PROMPT, TINY_ANSWER), (QUERY_PROMPT, TINY_QUERY_ANSWER)):
        text = [render_prompt(processor, prompt)]
        prompt_ids = processor(text=text, images=[pool[0]], return_tensors="pt")["input_ids"][0]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        answer_ids = torch.tensor([*answer_ids, tokenizer.eos_token_id])
        examples.append((prompt_ids, answer_ids))
    # Left-pad everything to one length so all answers sit at the end: logits are then needed
    # only for the last `keep` positions, which makes each step several times cheaper.
    length = max(len(p) + len(a) for p, a in examples)
    keep = max(len(a) for _, a in examples) + 1
    rows, masks, labels = [], [], []
    for prompt_ids, answer_ids in examples:
        ids = torch.cat([prompt_ids, answer_ids])
        pad = length - len(ids)
        rows.append(torch.cat([torch.full((pad,), tokenizer.pad_token_id), ids]))
        masks.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(len(ids), dtype=torch.long)]))
        label = torch.full((length,), -100)
        label[length - len(answer_ids) :] = answer_ids
        labels.append(label)
    input_ids, attention_mask, targets = torch.stack(rows), torch.stack(masks), torch.stack(labels)
    targets = targets[:, -keep + 1 :]  # logits at position t predict token t+1

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    model.train()
    started, step, loss_value, exact = time.perf_counter(), 0, float("nan"), False
    per_prompt = 2  # images per prompt and step
    for step in range(1, max_steps + 1):
        choice = torch.randint(len(pool), (len(examples) * per_prompt,), generator=generator)
        batch_ids = input_ids.repeat_interleave(per_prompt, 0)
        batch_mask = attention_mask.repeat_interleave(per_prompt, 0)
        batch_targets = targets.repeat_interleave(per_prompt, 0)
        logits = model(
            input_ids=batch_ids, attention_mask=batch_mask, pixel_values=pixels[choice], logits_to_keep=keep
        ).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch_targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if loss_value < 0.05 and step % 10 == 0:
            predicted = logits.argmax(-1)
            answered = batch_targets != -100
            if bool((predicted[answered] == batch_targets[answered]).all()):
                exact = _exact_on_all_images(model, input_ids, attention_mask, targets, pixels, keep)
                if exact:
                    break
                model.train()
    model.eval()
    seconds = time.perf_counter() - started
    return {"steps": step, "loss": loss_value, "seconds": seconds, "exact": float(exact)}


@torch.no_grad()
def _exact_on_all_images(
    model: LlavaForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    targets: torch.Tensor,
    pixels: torch.Tensor,
    keep: int,
) -> bool:
    """Greedy decoding reproduces the answer when every teacher-forced argmax is right, on every image.

    A logit margin is required too, so that images never seen in training (and other CPUs' rounding)
    cannot flip a token.
    """
    model.eval()
    answered = targets != -100
    for index in range(len(pixels)):
        image = pixels[index : index + 1].expand(len(input_ids), -1, -1, -1)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=image, logits_to_keep=keep
        ).logits[:, :-1][answered]
        wanted = targets[answered]
        correct = logits.gather(1, wanted[:, None])[:, 0]
        others = logits.scatter(1, wanted[:, None], float("-inf")).max(-1).values
        if bool((correct - others < MIN_MARGIN).any()):
            return False
    return True


def build_tiny_vlm(path: str | Path, *, train: bool = True, seed: int = 0, max_steps: int = 600) -> Path:
    """Write a tiny LLaVA model folder to `path` (trained to answer the RSRT prompts unless `train=False`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # no "torchvision missing, using the PIL backend" noise
    hf_logging.disable_progress_bar()
    try:
        return _build(path, train, seed, max_steps)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _build(path: Path, train: bool, seed: int, max_steps: int) -> Path:
    tokenizer = _tokenizer()
    processor = _processor(tokenizer)
    model = _model(tokenizer, seed)
    stats: dict[str, float] = {"steps": 0, "seconds": 0.0, "exact": 0.0}
    if train:
        # One thread: tiny matrices gain nothing from more, and on a busy machine (CI running
        # other suites) OpenMP threads waiting on each other made steps 5-10x slower.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            stats = _train(model, processor, seed, max_steps)
        finally:
            torch.set_num_threads(threads)
        if not stats["exact"]:
            raise RuntimeError(f"tiny VLM did not learn its answer: {stats}")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "tiny_vlm_stats.json").write_text(json.dumps(stats))
    return path


@functools.cache
def shared_tiny_vlm() -> Path:
    """The trained tiny VLM, built once per test process and removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="rsrt-tiny-vlm-"))
    atexit.register(shutil.rmtree, root, True)
    return build_tiny_vlm(root / "trained")


__all__ = [
    "TINY_ANSWER",
    "TINY_QUERY",
    "TINY_QUERY_ANSWER",
    "TINY_VARIANTS",
    "build_tiny_vlm",
    "shared_tiny_vlm",
]
