"""Start-up checks of a training run: what would otherwise break SAMTok RL silently, or hours in.

Each raises `ValueError` with one line naming the culprit before any model weight is loaded (except the tokenizer
checks, which need the processor).
"""

from __future__ import annotations

import inspect
import os

from transformers.integrations import is_deepspeed_zero3_enabled

from samtok_rl.prepare import PREPARED_FEATURES
from samtok_rl.tokens import MASK_TOKENS, format_mask, missing_mask_tokens


def required_columns(funcs) -> set[str]:
    """The prepared-dataset columns the rewards read: their keyword parameters named like a `prepare` column.

    Example:
    >>> import rewards
    >>> sorted(required_columns([rewards.REWARDS["gres_mask_reward"], rewards.REWARDS["mask_iou_reward"]]))
    ['gt_masks', 'image', 'solution', 'task']
    """
    return {name for func in funcs for name in inspect.signature(func).parameters if name in PREPARED_FEATURES}


def check_columns(dataset, funcs, specs) -> None:
    """Raise when a column TRL or a reward reads is missing from the dataset."""
    needed = {"prompt", "image"} | required_columns(funcs)
    missing = sorted(needed - set(dataset.column_names))
    if missing:
        raise ValueError(
            f"the dataset lacks columns {missing} needed by the prompt/image input or by the rewards {specs}; "
            f"it has {dataset.column_names}. Prepare it with `samtok-rl prepare`."
        )


def check_mask_tokens(processor) -> None:
    """Raise unless the 514 mask tokens exist, are non-special and survive TRL's `skip_special_tokens=True` decode."""
    missing = missing_mask_tokens(processor)
    if missing:
        raise ValueError(
            f"{len(missing)} of the 514 SAMTok mask tokens are missing from the tokenizer (first: {missing[0]!r}). "
            "Start from a SAMTok checkpoint, or set `add_mask_tokens: true` to add them to a base model."
        )
    tok = processor.tokenizer
    vocab = tok.get_vocab()
    special = [t for t in MASK_TOKENS if tok.added_tokens_decoder[vocab[t]].special]
    if special:
        raise ValueError(
            f"{len(special)} mask tokens are special (first: {special[0]!r}): TRL decodes completions with "
            "skip_special_tokens=True, so the rewards would see them as ''. Re-add them as non-special tokens."
        )
    span = format_mask(123, 45)
    ids = tok(span, add_special_tokens=False)["input_ids"]
    if len(ids) != 4 or tok.decode(ids, skip_special_tokens=True) != span:
        raise ValueError(f"a mask span does not round-trip through the tokenizer: {span!r} -> {ids}")


def sharded_launch(training_args) -> str | None:
    """The name of the launch that partitions parameters across processes (ZeRO-3, FSDP), else `None`."""
    if is_deepspeed_zero3_enabled() or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "DeepSpeed ZeRO-3"
    if training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    return None


def check_add_mask_tokens(script_args, training_args) -> None:
    """`add_mask_tokens` resizes and saves the model from one process: refuse it where that cannot work."""
    if not script_args.add_mask_tokens:
        return
    sharded = sharded_launch(training_args)
    if sharded or training_args.world_size > 1:
        where = sharded or f"{training_args.world_size} processes"
        raise ValueError(
            f"add_mask_tokens cannot run under {where} (the embedding is resized and saved from one process): "
            "run `samtok-rl add-mask-tokens --model_name_or_path <base> --output_dir <dir>` once, then train with "
            "model_name_or_path: <dir> and add_mask_tokens: false"
        )


def check_recipe(script_args, training_args, model_args) -> None:
    """The recipe-level rules that need neither the data nor the model."""
    if model_args.model_name_or_path is None:
        raise ValueError("no model: set `model_name_or_path` (a SAMTok checkpoint folder or Hub id)")
    if model_args.use_peft and training_args.beta > 0 and training_args.sync_ref_model:
        raise ValueError("sync_ref_model does not work with PEFT")
    check_add_mask_tokens(script_args, training_args)
