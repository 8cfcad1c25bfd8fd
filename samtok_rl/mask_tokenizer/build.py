"""`build_mask_tokenizer`: the one way samtok-rl turns a named mask tokenizer into a loaded one.

Modelled on sam2's `build_sam.py`: one function takes whatever a recipe, a command line or a caller names, and one
rule picks the device. Training (the IoU reward, `sample:` datasets), `prepare`, `eval` and the inspector all call it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from samtok_rl.errors import UsageError
from samtok_rl.files import check_local_path
from samtok_rl.mask_tokenizer.micro import build_micro_mask_tokenizer
from samtok_rl.mask_tokenizer.tokenizer import MaskTokenizer


__all__ = ["MICRO", "build_mask_tokenizer", "check_mask_tokenizer_source", "default_device"]

# The name that selects the seeded micro tokenizer (seed 0) wherever a mask tokenizer is named: every command that
# says `micro` means the same weights.
MICRO = "micro"


def default_device() -> str:
    """The process's own CUDA device when there is one (under accelerate each process has set it), else the CPU."""
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


def check_mask_tokenizer_source(source=None, sam2_config=None, checkpoint=None) -> None:
    """Raise unless exactly one of `source` and the (`sam2_config`, `checkpoint`) pair is given.

    Example:
    >>> check_mask_tokenizer_source("micro")
    >>> check_mask_tokenizer_source(checkpoint="w.pth")
    Traceback (most recent call last):
    ...
    samtok_rl.errors.UsageError: a mask tokenizer's sam2_config and checkpoint go together (got sam2_config=None, checkpoint='w.pth')
    """
    if (sam2_config is None) != (checkpoint is None):
        raise UsageError(
            "a mask tokenizer's sam2_config and checkpoint go together "
            f"(got sam2_config={sam2_config!r}, checkpoint={checkpoint!r})"
        )
    if (source is None) == (checkpoint is None):
        raise UsageError(
            "name the mask tokenizer once: either a source (`micro`, a SAMTok folder, a checkpoint file or a Hub id) "
            f"or sam2_config + checkpoint (got source={source!r}, checkpoint={checkpoint!r})"
        )


def build_mask_tokenizer(
    source: str | Path | MaskTokenizer | None = None,
    sam2_config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    drop_memory_modules: bool = False,
) -> MaskTokenizer:
    """Build the mask tokenizer named by `source`, or by a sam2 YAML + checkpoint pair.

    Args:
        source (`str`, `Path` or `MaskTokenizer`, *optional*):
            `micro` (the seeded micro tokenizer, demo and tests), a SAMTok model folder holding
            `mask_tokenizer_256x2.pth`, a checkpoint file, a Hub id (`MaskTokenizer.from_pretrained`), or an already
            loaded tokenizer (returned as is).
        sam2_config (`str` or `Path`, *optional*): a sam2 YAML, with `checkpoint` (`MaskTokenizer.from_files`).
        checkpoint (`str` or `Path`, *optional*): the weights, `.pth` or `.safetensors`, with `sam2_config`.
        device (`str` or `torch.device`, *optional*): defaults to `default_device()`.
        drop_memory_modules (`bool`, *optional*, defaults to `False`):
            delete SAM 2's memory modules after loading (the tokenizer never runs them).

    Returns:
        `MaskTokenizer` in eval mode.

    Example:
    >>> build_mask_tokenizer("micro", device="cpu").quantizer.codebook_size
    256
    """
    if isinstance(source, MaskTokenizer):
        return source
    check_mask_tokenizer_source(source, sam2_config, checkpoint)
    device = default_device() if device is None else device
    if checkpoint is not None:
        return MaskTokenizer.from_files(
            sam2_config, checkpoint, device=device, drop_memory_modules=drop_memory_modules
        )
    if str(source) == MICRO:
        return build_micro_mask_tokenizer(seed=0, device=device)
    check_local_path(str(source), "mask_tokenizer")  # a missing local path is not a Hub id to retry for minutes
    return MaskTokenizer.from_pretrained(source, device=device, drop_memory_modules=drop_memory_modules)
