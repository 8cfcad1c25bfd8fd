"""A short supervised warm start ("cold start") of a VLM on a prepared dataset, with TRL's `SFTTrainer`.

SAMTok's RL starts from an SFT'd model; a random policy never writes `<think>…</think><answer>…</answer>` nor a mask
span, so every GRPO group has zero reward variance and nothing learns. [`warm_start`] fits the policy for a few
hundred steps on the dataset's own reference answers, each behind a short templated think part
(`<think>The cat is in the image.</think><answer>…</answer>`), and saves a reloadable checkpoint that GRPO then
starts from. The CPU demo uses it on the tiny VLM; it is equally a minimal SFT cold start for a real model.

The result is cached: [`warm_start`] returns at once when `output_dir` already holds a finished checkpoint, and
[`warm_start_dir`] names that folder after the base model, the dataset, the settings and [`WARMSTART_VERSION`].

Example:
>>> completion_text({"expression": "the cat", "solution": "No target.", "no_target": True})
'<think>There is no the cat in the image.</think><answer>No target.</answer>'
>>> completion_text({"expression": "the cat", "solution": "S", "no_target": False})
'<think>The cat is in the image.</think><answer>S</answer>'
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, SFTTrainer

from samtok_rl.files import cache_dir, save_checkpoint
from samtok_rl.prompts import asks_to_think


__all__ = ["WARMSTART_VERSION", "completion_rows", "completion_text", "sft_dataset", "warm_start", "warm_start_dir"]

logger = logging.getLogger(__name__)

# Bump whenever the warm-start recipe changes (completion template, trainer settings): cached folders carry it.
WARMSTART_VERSION = "ws1"


def completion_rows(dataset):
    """`dataset` with only the columns [`completion_text`] reads (not the images: decoding them is slow)."""
    return dataset.select_columns([c for c in ("prompt", "solution", "expression", "no_target")
                                   if c in dataset.column_names])  # fmt: skip


def completion_text(row: dict) -> str:
    """The SFT target of one prepared row: a templated think part, then the reference answer (`solution`); the bare
    answer for a prompt without the think/answer instruction (prepared with `think: false`)."""
    if not asks_to_think(row.get("prompt")):
        return row["solution"]
    expression = (row.get("expression") or "").strip()
    if row.get("no_target"):
        think = f"There is no {expression} in the image." if expression else "There is no target in the image."
    elif expression:
        think = f"{expression[0].upper()}{expression[1:]} is in the image."
    else:
        think = "The image shows the objects to segment."
    return f"<think>{think}</think><answer>{row['solution']}</answer>"


def sft_dataset(dataset: datasets.Dataset) -> datasets.Dataset:
    """Prepared rows -> TRL's conversational prompt/completion format with one `image` per row."""

    def to_sft(row: dict) -> dict:
        completion = [{"role": "assistant", "content": [{"type": "text", "text": completion_text(row)}]}]
        return {"prompt": row["prompt"], "completion": completion}

    keep = {"prompt", "image"}
    sft = dataset.map(to_sft, remove_columns=[c for c in dataset.column_names if c not in keep])
    if not isinstance(sft.features["image"], datasets.Image):
        sft = sft.cast_column("image", datasets.Image())  # `samtok-rl prepare` stores paths
    return sft


def warm_start_dir(
    model_dir: str | Path,
    dataset: datasets.Dataset,
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
    seed: int = 0,
    root: str | Path | None = None,
) -> Path:
    """The cache folder of a warm start (it may not exist yet).

    The default root is `$SAMTOK_RL_CACHE/warmstart`, else `~/.cache/samtok_rl/warmstart`. The name holds the base
    model folder's name, the steps, the seed and [`WARMSTART_VERSION`], plus a short hash of the base model path, the
    learning rate, the batch size and every SFT target, so another dataset or model never reuses a stale checkpoint.
    """
    if root is None:
        root = cache_dir("warmstart")
    base = str(Path(model_dir).resolve()) if Path(model_dir).is_dir() else str(model_dir)  # a folder or a Hub id
    h = hashlib.sha256(json.dumps([base, learning_rate, batch_size]).encode())
    for row in completion_rows(dataset):
        h.update(json.dumps([row["prompt"], completion_text(row)], sort_keys=True).encode())
    name = f"{Path(model_dir).name}-steps{steps}-seed{seed}-{WARMSTART_VERSION}-{h.hexdigest()[:10]}"
    return Path(root) / name


def warm_start(
    model_dir: str | Path,
    dataset: datasets.Dataset,
    output_dir: str | Path,
    steps: int = 100,
    learning_rate: float = 5e-3,
    batch_size: int = 8,
    seed: int = 0,
    freeze_vision_tower: bool = False,
) -> Path:
    """Fine-tune `model_dir` with `SFTTrainer` on `dataset`'s reference answers and save it to `output_dir`.

    The loss covers the completion only (`<think>…</think><answer>{solution}</answer><|im_end|>`). Returns at once
    when `output_dir` already holds a checkpoint; otherwise trains, then writes model + processor under a temporary
    name and renames it into place, so an interrupted run never leaves a half-written folder behind.

    Args:
        model_dir (`str` or `Path`): the base model (a folder or Hub id with its processor), mask tokens included.
        dataset (`datasets.Dataset`): rows written by `samtok-rl prepare` (`prompt`, `image`, `solution`,
            `expression`, `no_target`).
        output_dir (`str` or `Path`): where the warm-started checkpoint goes (see [`warm_start_dir`]).
        steps (`int`, *optional*, defaults to `100`): optimizer steps.
        learning_rate (`float`, *optional*, defaults to `5e-3`): peak learning rate (cosine decay, 5% warm-up);
            the default suits the ~1 M-parameter tiny VLM (100 steps on the 15-row sample: loss 5.8 -> 0.04), real
            models want ~1e-5.
        batch_size (`int`, *optional*, defaults to `8`): rows per step.
        seed (`int`, *optional*, defaults to `0`): training seed (data order, dropout).
        freeze_vision_tower (`bool`, *optional*, defaults to `False`): train the language model only.

    Returns:
        `Path`: `output_dir`.
    """
    final = Path(output_dir)
    if (final / "config.json").is_file():
        logger.info("warm start: reusing %s", final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
        if freeze_vision_tower:
            model.model.visual.requires_grad_(False)
        # The base model's stop tokens: the Trainer "aligns" the generation config in place with the tokenizer.
        generation_config = copy.deepcopy(model.generation_config)
        args = SFTConfig(
            output_dir=str(tmp / "trainer"),
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 20),
            weight_decay=0.0,
            max_length=None,  # never cut image placeholder tokens; the sequences are short anyway
            completion_only_loss=True,
            gradient_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            seed=seed,
            logging_steps=max(1, steps // 10),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(dataset), processing_class=processor)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        logger.info("warm start: %d SFT steps, loss %.3f -> %.3f", steps, losses[0], losses[-1])
        model = trainer.model.eval()
        model.generation_config = generation_config
        model.config.use_cache = True  # the Trainer turns the KV cache off for training
        save_checkpoint(model, processor, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
