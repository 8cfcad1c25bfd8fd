"""Tiny, offline, randomly initialised Qwen2.5-VL and Qwen3-VL models for tests, demos and CI smoke runs.

Everything is built from scratch on the machine: a byte-level BPE (vocabulary ~600) is trained with `tokenizers`
on a small corpus of the prompts samtok-rl actually sends, wrapped as a real `Qwen2Tokenizer`, given the 14 Qwen special
tokens and the 514 SAMTok mask tokens, and paired with the real Qwen image/video processors and TRL's shipped chat
templates. The models are the real transformers classes with ~1 M parameters. Nothing touches the Hub.

Example:
>>> from samtok_rl.tiny import build_tiny_vlm, load_tiny_vlm
>>> path = build_tiny_vlm("qwen3_vl")  # cached folder; instant on the second call
>>> model, processor = load_tiny_vlm("qwen3_vl")
>>> len(processor.tokenizer)  # 600 BPE tokens + 14 Qwen special tokens + 514 mask tokens
1128
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AddedToken,
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from samtok_rl.errors import UsageError
from samtok_rl.files import cache_dir, save_checkpoint
from samtok_rl.tokens import add_mask_tokens


__all__ = [
    "KINDS",
    "QWEN_SPECIAL_TOKENS",
    "TINY_PREFIX",
    "build_tiny_processor",
    "build_tiny_vlm",
    "load_tiny_vlm",
    "resolve_model_path",
    "tiny_vlm_dir",
]

KINDS = ("qwen2_5_vl", "qwen3_vl")
# `tiny:qwen2_5_vl` names a tiny model wherever a model is named (recipes, `samtok-rl eval --model`).
TINY_PREFIX = "tiny:"

# Bump whenever the recipe below changes (corpus, sizes, configs): the cache folder name includes it, so stale
# folders built by an older recipe are never reused.
RECIPE_VERSION = "v2"

BPE_VOCAB_SIZE = 600

# The 14 Qwen2/2.5/3 special tokens, in the order of the real vocabulary (ids 151643.. there).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# What the BPE learns its merges from. It holds the text samtok-rl actually sends and expects (GRES/GCG questions,
# the R1 think/answer suffix, JSON answers, "No target.", the chat-template scaffolding), so that prompts tokenise
# into word-sized pieces rather than single bytes, which keeps tiny-model sequences short. Kept literal (not imported
# from samtok_rl.prompts) so the tokenizer, and therefore the cache, only changes when RECIPE_VERSION does.
_CORPUS = (
    "Please segment the man on the left in this image.",
    "Please segment the red car in this image.",
    "Please segment all people in this image.",
    "Please segment the dog next to the white chair in this image.",
    "Please identify and segment the person in this image.",
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think><answer> answer here </answer>",
    "<think>The image shows a man on the left and a woman on the right.</think>",
    "<answer>No target.</answer>",
    "No target.",
    '```json\n[{"mask_2d": "", "label": "one of the people"},\n{"mask_2d": "", "label": "the man"}]\n```',
    "Could you please give me a brief description of the image? Please respond with interleaved     segmentation "
    "masks for the corresponding parts of the answer.",
    "Could you please give me a brief description of the image and highlight the phrases.",
    "In a greenhouse, a white pumpkin lays on the ground next to a green plant and a wooden table.",
    "A woman in a blue shirt is holding a cat while a boy plays with a ball on the grass.",
    "system\nYou are a helpful assistant.\nuser\nPicture 1: What is in this image?\nassistant\n",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 2024",
)


def _train_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen's pre-tokenizer on `_CORPUS` (deterministic: BPE training has no randomness)."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    # Qwen's own pipeline: split with the Qwen2 regex first, then map bytes to unicode without a second regex pass.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        # All 256 byte symbols, so any text (accents, emoji) stays encodable without an unk token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    # tokenizers serialises merges as 2-lists; Qwen2Tokenizer needs tuples ("failed to extract enum PyMerges").
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return state["vocab"], merges


def build_tiny_processor(kind: str) -> ProcessorMixin:
    """Build the processor of a tiny VLM: trained BPE tokenizer, Qwen special tokens, image/video processors, chat
    template. Mask tokens are *not* added here (see [`build_tiny_vlm`]).

    Args:
        kind (`str`):
            One of [`KINDS`].

    Returns:
        [`~transformers.ProcessorMixin`]: a `Qwen2_5_VLProcessor` or `Qwen3VLProcessor` whose tokenizer pads left.
    """
    _check_kind(kind)
    vocab, merges = _train_bpe()
    # No eos/pad at construction: Qwen2Tokenizer would add them first (eos before pad), breaking the real id order.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        padding_side="left",  # TRL left-pads prompts; right padding silently misaligns mm_token_type_ids.
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    template = (importlib.resources.files("trl") / "chat_templates" / f"{kind}.jinja").read_text()
    if kind == "qwen2_5_vl":
        # Patch 14 and merge 2 are the processor defaults; 28²..56² pixels keeps an image at 1-4 merged tokens.
        image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 28 * 28, "longest_edge": 56 * 56})
        return Qwen2_5_VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=template,
        )
    # Qwen3-VL uses 16-pixel patches normalised with mean = std = 0.5; the default 14 would not match the vision tower.
    # 32²..64² pixels again gives 1-4 merged tokens per image.
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64},
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=template,
    )


def _model_config(kind: str, tokenizer) -> Qwen2_5_VLConfig | Qwen3VLConfig:
    """The tiny model config. The text vocabulary excludes the mask tokens: they are added afterwards through
    `add_mask_tokens`, which resizes the embeddings exactly like the real SAMTok workflow does."""
    token_ids = {
        # Also on the top-level config: the Trainer compares these with the tokenizer (align_special_tokens) and
        # otherwise "aligns" them with a warning and a duplicate EOS in the generation config. Qwen2_5_VLConfig
        # drops them (it routes them to the text config), so Qwen2.5-VL still gets that harmless warning, as the
        # real checkpoints do.
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "eos_token_id": token_ids["eos_token_id"],
        "pad_token_id": token_ids["pad_token_id"],
        "bos_token_id": None,
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": text["hidden_size"],  # the merger projects straight into the text stream
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if kind == "qwen2_5_vl":
        # M-RoPE: the (t, h, w) sections must sum to head_dim / 2 = 128 / 4 / 2 = 16.
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}
        vision |= {"patch_size": 14, "fullatt_block_indexes": [1], "window_size": 112}
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
    text |= {
        "head_dim": 32,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [4, 6, 6],
            "mrope_interleaved": True,
        },
    }
    # deepstack indexes must be < depth; 64 learned position embeddings = an 8x8 patch grid.
    vision |= {"patch_size": 16, "deepstack_visual_indexes": [1], "num_position_embeddings": 64}
    return Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)


def _build_model(kind: str, processor: ProcessorMixin, seed: int) -> PreTrainedModel:
    """Randomly initialise the model (seeded, without disturbing the caller's RNG) and add the mask tokens."""
    tokenizer = processor.tokenizer
    config = _model_config(kind, tokenizer)
    model_class = Qwen2_5_VLForConditionalGeneration if kind == "qwen2_5_vl" else Qwen3VLForConditionalGeneration
    # fork_rng: the build must be reproducible, but must not reseed the global generator under a running test.
    # The resize inside add_mask_tokens draws from it too (its rows are then overwritten with seeded values).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        add_mask_tokens(processor, model, seed=seed)
    pad_id = tokenizer.pad_token_id
    # Stop on <|im_end|> (end of the assistant turn) and on pad, as the released Qwen-VL generation configs do.
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_id]
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = None
    return model.eval()


def tiny_vlm_dir(kind: str = "qwen2_5_vl", root: str | Path | None = None, seed: int = 0) -> Path:
    """The cache folder [`build_tiny_vlm`] writes to (it may not exist yet).

    The default root is `$SAMTOK_RL_CACHE/tiny`, else `~/.cache/samtok_rl/tiny`. The folder name holds the kind, the
    seed, the recipe version and the transformers version (a checkpoint saved by one release is rebuilt for another).
    """
    _check_kind(kind)
    if root is None:
        root = cache_dir("tiny")
    return Path(root) / f"{kind}-seed{seed}-{RECIPE_VERSION}-tf{transformers.__version__}"


def build_tiny_vlm(kind: str = "qwen2_5_vl", root: str | Path | None = None, seed: int = 0) -> Path:
    """Build (or reuse) a tiny random VLM and its processor, saved with `save_pretrained` in one folder.

    The folder is reloadable with `AutoModelForImageTextToText` / `AutoProcessor` and already contains the embeddings
    resized for the 514 mask tokens, so it can be handed to TRL (reference model, colocated vLLM) as a path. Builds
    are deterministic for a given `seed`. The folder is written under a temporary name and renamed into place, so
    concurrent callers (e.g. pytest-xdist workers) never see a half-written checkpoint.

    Args:
        kind (`str`, *optional*, defaults to `"qwen2_5_vl"`):
            `"qwen2_5_vl"` or `"qwen3_vl"`.
        root (`str` or `Path`, *optional*):
            Cache root; see [`tiny_vlm_dir`] for the default.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the random weights and of the mask-token embedding rows.

    Returns:
        `Path`: the checkpoint folder.

    Raises:
        `ValueError`: for an unknown `kind`.
    """
    final = tiny_vlm_dir(kind, root, seed)
    if final.is_dir():
        return final
    processor = build_tiny_processor(kind)
    return save_checkpoint(_build_model(kind, processor, seed), processor, final)


def resolve_model_path(name_or_path: str) -> str:
    """`tiny:<kind>` -> the tiny VLM's folder (built on first use); any other model name or folder unchanged.

    Recipes and `samtok-rl eval` name the tiny models this way, so the CPU demo and the tests need no files.

    Example:
    >>> resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct")
    'Qwen/Qwen2.5-VL-3B-Instruct'
    """
    if name_or_path.startswith(TINY_PREFIX):
        return str(build_tiny_vlm(name_or_path.removeprefix(TINY_PREFIX)))
    return name_or_path


def load_tiny_vlm(
    kind: str = "qwen2_5_vl", root: str | Path | None = None, seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build (if needed) and load a tiny VLM with the Auto classes, exactly as a real checkpoint would be loaded.

    Args:
        kind (`str`, *optional*, defaults to `"qwen2_5_vl"`):
            `"qwen2_5_vl"` or `"qwen3_vl"`.
        root (`str` or `Path`, *optional*):
            Cache root; see [`tiny_vlm_dir`].
        seed (`int`, *optional*, defaults to `0`):
            Seed of the build.

    Returns:
        `tuple[PreTrainedModel, ProcessorMixin]`: the model (in eval mode, float32, CPU) and its processor.
    """
    path = build_tiny_vlm(kind, root, seed)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UsageError(f"Unknown tiny VLM kind {kind!r}; known kinds: {', '.join(KINDS)}.")
