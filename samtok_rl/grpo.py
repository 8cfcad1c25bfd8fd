"""GRPO training entry point: TRL's `GRPOTrainer` on a SAMTok VLM, configured by a flat YAML recipe.

    python -m samtok_rl.grpo --config recipes/gres/qwen2_5_vl_3b_samtok_grpo.yaml [--field value ...]
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m samtok_rl.grpo --config <recipe>
    samtok-rl train --config <recipe>

The recipe's keys are the fields of [`SamtokScriptArguments`], TRL's `GRPOConfig` and `ModelConfig`; command-line
flags override it. Before anything trains, the run checks what silently breaks SAMTok RL otherwise: the 514 mask
tokens exist and are non-special (TRL decodes completions with `skip_special_tokens=True`), the tokenizer pads on the
left, every reward spec resolves and the dataset has the columns the rewards read. `--dry_run` stops after the checks
that do not need the model weights.

Two shortcuts make the CPU demo and the tests self-contained: `model_name_or_path: tiny:qwen2_5_vl` (or
`tiny:qwen3_vl`) builds the tiny offline VLM of `samtok_rl.tiny`, and `dataset: sample:gres` (or `sample:gcg`)
prepares the bundled real-photo sample with the mask tokenizer named by `mask_tokenizer` (`micro` = the seeded micro
tokenizer).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers.integrations import is_deepspeed_zero3_enabled

from samtok_rl.mask_tokenizer.micro import MICRO
from samtok_rl.tokens import MASK_TOKENS, format_mask


logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
SAMPLE_PREFIX = "sample:"
# The language model's attention projections: LoRA stays off the vision tower (frozen, and vLLM applies LoRA to the
# language model only) and off the embeddings / lm_head (vLLM rejects adapters that carry those rows).
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


@dataclass
class SamtokScriptArguments:
    """samtok-rl's own recipe fields (everything else is `GRPOConfig` or `ModelConfig`)."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A folder written by `samtok-rl prepare`, or `sample:gres` / `sample:gcg` to prepare the bundled "
            "sample on the fly (with `mask_tokenizer`)."
        },
    )
    reward_preset: str | None = field(
        default=None,
        metadata={
            "help": "`gres` or `gcg`: the reference reward set (see `rewards.PRESETS`); `reward_funcs` are added "
            "after the preset's rewards, and `reward_weights` (default all 1.0) follow that order."
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rewards (after the preset's): names from `rewards.REWARDS`, `pkg.module.fn` or `path/file.py:fn`."
        },
    )
    mask_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "SAMTok mask tokenizer for pixel rewards (IoU) and for preparing `sample:` datasets: a SAMTok "
            "model folder or Hub id holding mask_tokenizer_256x2.pth, or `micro` (seeded micro weights, demo only)."
        },
    )
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Upper bound on image pixels given to the image processor (Qwen: 2048*28*28 = 1605632)."},
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Lower bound on image pixels given to the image processor."}
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Freeze the vision tower (and its merger), as the reference RL does."}
    )
    add_mask_tokens: bool = field(
        default=False,
        metadata={
            "help": "Add the 514 mask tokens when the model lacks them (a base model, not a SAMTok checkpoint). The "
            "resized model is saved to `<output_dir>/base_with_mask_tokens` and trained from there. Single-process "
            "runs only: distributed recipes run `samtok-rl add-mask-tokens` beforehand."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N dataset rows (debugging)."}
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Validate the recipe (rewards, dataset columns, batch arithmetic) and exit without training."
        },
    )


def make_parser(prog: str | None = None):
    """The `TrlParser` over ([`SamtokScriptArguments`], `GRPOConfig`, `ModelConfig`), reading `--config <yaml>`.

    Example:
    >>> parser = make_parser()
    >>> script_args, training_args, model_args = parser.parse_args_and_config(
    ...     ["--dataset", "sample:gres", "--reward_preset", "gres", "--use_cpu", "--bf16", "false"]
    ... )
    >>> script_args.dataset, training_args.loss_type, model_args.use_peft
    ('sample:gres', 'dapo', False)
    """
    from trl import GRPOConfig, ModelConfig, TrlParser

    return TrlParser((SamtokScriptArguments, GRPOConfig, ModelConfig), prog=prog)


def parse_args(argv: Sequence[str] | None = None):
    """Parse `argv` (default `sys.argv[1:]`) into `(script_args, training_args, model_args)`."""
    return make_parser().parse_args_and_config(args=None if argv is None else list(argv))


# ---------------------------------------------------------------------------------------------------------------------
# Rewards


def resolve_rewards(script_args, training_args) -> tuple[list[str], list]:
    """Resolve the recipe's reward specs (after the preset) to callables; sets `training_args.reward_weights`.

    `mask_iou_reward` is built with the recipe's `mask_tokenizer` (it cannot decode masks without one).

    Returns:
        `tuple[list[str], list[Callable]]`: the specs and their (not yet tokenizer-bound) reward functions.
    """
    import rewards

    specs = []
    preset = script_args.reward_preset
    if preset is not None:
        if preset not in rewards.PRESETS:
            raise ValueError(f"unknown reward_preset {preset!r}; known presets: {', '.join(rewards.PRESETS)}")
        specs = list(rewards.PRESETS[preset])
    specs += [spec for spec in script_args.reward_funcs or [] if spec not in specs]
    if not specs:
        raise ValueError("no rewards: set `reward_preset` (gres or gcg) or `reward_funcs` in the recipe")
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(specs):
        raise ValueError(f"{len(weights)} reward_weights for {len(specs)} rewards {specs}")
    funcs = []
    for spec in specs:
        try:
            func = rewards.resolve(spec)
        except (ValueError, ImportError, AttributeError, FileNotFoundError) as err:
            raise ValueError(f"reward {spec!r} does not resolve: {err}") from err
        if isinstance(func, rewards.MaskIoUReward) and func.mask_tokenizer is None and func.checkpoint is None:
            if script_args.mask_tokenizer is None:
                raise ValueError(f"reward {spec!r} decodes masks: set `mask_tokenizer` in the recipe")
            # The micro tokenizer is built here (it has no files); a real one loads lazily in each process.
            source = script_args.mask_tokenizer
            func = rewards.get_mask_iou_reward(load_mask_tokenizer(source) if source == MICRO else source)
        funcs.append(func)
    return specs, funcs


def required_columns(funcs) -> set[str]:
    """The prepared-dataset columns the rewards read: their keyword parameters named like a `prepare` column.

    Example:
    >>> import rewards
    >>> sorted(required_columns([rewards.REWARDS["gres_mask_reward"], rewards.REWARDS["mask_iou_reward"]]))
    ['gt_masks', 'image', 'solution', 'task']
    """
    import inspect

    from samtok_rl.prepare import PREPARED_FEATURES

    return {name for func in funcs for name in inspect.signature(func).parameters if name in PREPARED_FEATURES}


# ---------------------------------------------------------------------------------------------------------------------
# Model, processor and dataset


def resolve_model_path(name_or_path: str) -> str:
    """`tiny:<kind>` -> the tiny VLM folder (built on first use); anything else unchanged."""
    if name_or_path.startswith(TINY_PREFIX):
        from samtok_rl.tiny import build_tiny_vlm

        return str(build_tiny_vlm(name_or_path.removeprefix(TINY_PREFIX)))
    return name_or_path


def load_mask_tokenizer(name: str):
    """`micro` -> the seeded micro tokenizer; otherwise `MaskTokenizer.from_pretrained(name)` (see
    `samtok_rl.mask_tokenizer.load_mask_tokenizer`)."""
    from samtok_rl.mask_tokenizer import load_mask_tokenizer as load

    return load(name)


def sample_dir(task: str, mask_tokenizer: str) -> Path:
    """Where `sample:<task>` is prepared: `$SAMTOK_RL_CACHE/prepared/` (else `~/.cache/samtok_rl/prepared/`).

    The preparation is resumable and fingerprinted, so later runs reuse the folder instantly. The folder name carries
    a hash of the sample's location: the prepared rows store absolute image paths, so two checkouts (or installs)
    must not share one cache folder.
    """
    import hashlib

    from samtok_rl.data import sample_paths

    cache = os.environ.get("SAMTOK_RL_CACHE")
    root = Path(cache) if cache else Path.home() / ".cache" / "samtok_rl"
    tag = re.sub(r"[^\w.-]", "_", mask_tokenizer)  # a Hub id or path as one folder name
    where = hashlib.sha256(str(sample_paths().root.resolve()).encode()).hexdigest()[:10]
    return root / "prepared" / f"sample-{task}-{tag}-{where}"


def load_dataset(script_args, training_args):
    """Load the prepared dataset (or prepare the bundled sample) and cast `image` paths to PIL images."""
    import datasets

    from samtok_rl.prepare import load_prepared, prepare, read_source

    name = script_args.dataset
    if name is None:
        raise ValueError("no dataset: set `dataset` to a `samtok-rl prepare` folder or to sample:gres / sample:gcg")
    if name.startswith(SAMPLE_PREFIX):
        task = name.removeprefix(SAMPLE_PREFIX)
        if script_args.mask_tokenizer is None:
            raise ValueError(f"dataset {name!r} is prepared on the fly and needs `mask_tokenizer` (e.g. micro)")
        out = sample_dir(task, script_args.mask_tokenizer)
        with training_args.main_process_first(desc="prepare the bundled sample"):
            dataset = prepare(
                read_source(task, sample=True),
                task,
                out,
                lambda: load_mask_tokenizer(script_args.mask_tokenizer),
                tokenizer_id=script_args.mask_tokenizer,
                progress=False,
            )
    else:
        if not Path(name).is_dir():
            raise ValueError(f"dataset folder {name!r} does not exist; run `samtok-rl prepare --output {name}` first")
        dataset = load_prepared(name)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    # TRL hands PIL images to the processor and to the rewards: decode the stored paths lazily.
    return dataset.cast_column("image", datasets.Image())


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
    tok = processor.tokenizer
    vocab = tok.get_vocab()
    missing = [t for t in MASK_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"{len(missing)} of the 514 SAMTok mask tokens are missing from the tokenizer (first: {missing[0]!r}). "
            "Start from a SAMTok checkpoint, or set `add_mask_tokens: true` to add them to a base model."
        )
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


def load_processor(path: str, script_args, model_args, training_args):
    """Load the processor with left padding and the recipe's pixel limits; run the tokenizer checks."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(
        path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        padding_side="left",
    )
    if processor.tokenizer.padding_side != "left":
        # Right padding silently misaligns mm_token_type_ids with TRL's left-padded prompts (no crash).
        raise ValueError(f"the tokenizer pads on the {processor.tokenizer.padding_side}; GRPO needs left padding")
    size = processor.image_processor.size
    if script_args.max_pixels is not None:
        size["longest_edge"] = script_args.max_pixels
    if script_args.min_pixels is not None:
        size["shortest_edge"] = script_args.min_pixels
    return processor


def load_model(path: str, model_args, training_args):
    """Load the VLM with the Auto class from `path` (a folder or Hub id), so TRL and vLLM can reload it by name."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
        **(training_args.model_init_kwargs or {}),
    )


def add_mask_tokens_and_save(path: str, script_args, model_args, training_args) -> str:
    """Add the mask tokens to a base model, save the resized model + processor, and return the saved folder.

    TRL rebuilds the reference model (beta > 0) and colocated vLLM loads the policy from `name_or_path`, so the
    resized embeddings must exist on disk before training starts.
    """
    from samtok_rl.tokens import add_mask_tokens

    out = Path(training_args.output_dir) / "base_with_mask_tokens"
    with training_args.main_process_first(desc="add mask tokens"):
        if not (out / "config.json").is_file():
            logger.warning("adding the 514 SAMTok mask tokens to %s (a base model); saving it to %s", path, out)
            processor = load_processor(path, script_args, model_args, training_args)
            model = load_model(path, model_args, training_args)
            add_mask_tokens(processor, model, seed=training_args.seed)
            model.save_pretrained(out)
            processor.save_pretrained(out)
    return str(out)


def freeze_vision_tower(model) -> int:
    """Freeze the vision tower (patch embedding, blocks, merger); returns the number of frozen parameters."""
    model.model.visual.requires_grad_(False)
    # Under ZeRO-3 each parameter is an empty placeholder on every rank; DeepSpeed keeps the full size in ds_numel.
    return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.model.visual.parameters())


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


def make_peft_config(model_args, training_args):
    """TRL's LoRA config, targeting the language model's attention by default; mask-token rows stay frozen."""
    from trl import get_peft_config

    if model_args.lora_target_modules is None:
        model_args.lora_target_modules = DEFAULT_LORA_TARGETS
    saved = model_args.lora_modules_to_save or []
    rows = [m for m in saved if "embed" in m or "lm_head" in m]
    if rows and training_args.use_vllm:
        raise ValueError(
            f"lora_modules_to_save={rows}: vLLM rejects LoRA adapters that carry embedding/lm_head rows "
            "(vllm-project/vllm#9280). Train the mask-token rows with a full fine-tune instead."
        )
    if not rows:
        logger.warning(
            "LoRA mode: the embedding and lm_head rows of the 514 mask tokens stay frozen (vLLM cannot take adapters "
            "carrying them); only the LoRA adapters on %s train.",
            model_args.lora_target_modules,
        )
    return get_peft_config(model_args)


# ---------------------------------------------------------------------------------------------------------------------
# Entry point


def main(script_args=None, training_args=None, model_args=None):
    """Check the setup, build `GRPOTrainer` and train; returns the trainer (`None` for `--dry_run`).

    Called with the three parsed dataclasses, or as `main(argv)` (a list of command-line arguments, as
    `samtok-rl train` does).
    """
    if training_args is None:
        script_args, training_args, model_args = parse_args(script_args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()

    specs, funcs = resolve_rewards(script_args, training_args)
    dataset = load_dataset(script_args, training_args)
    check_columns(dataset, funcs, specs)
    if model_args.model_name_or_path is None:
        raise ValueError("no model: set `model_name_or_path` (a SAMTok checkpoint folder or Hub id)")
    if model_args.use_peft and training_args.beta > 0 and training_args.sync_ref_model:
        raise ValueError("sync_ref_model does not work with PEFT")
    check_add_mask_tokens(script_args, training_args)
    if script_args.dry_run:
        logger.info(
            "dry run OK: rewards %s (weights %s), %d rows, generation batch %d completions = %d prompts "
            "with %d process(es)",
            specs,
            training_args.reward_weights,
            len(dataset),
            training_args.generation_batch_size,
            training_args.generation_batch_size // training_args.num_generations,
            training_args.world_size,
        )
        return None

    import rewards

    path = resolve_model_path(model_args.model_name_or_path)
    processor = load_processor(path, script_args, model_args, training_args)
    if script_args.add_mask_tokens and any(t not in processor.tokenizer.get_vocab() for t in MASK_TOKENS):
        path = add_mask_tokens_and_save(path, script_args, model_args, training_args)
        processor = load_processor(path, script_args, model_args, training_args)
    check_mask_tokens(processor)
    model = load_model(path, model_args, training_args)
    if script_args.freeze_vision_tower:
        logger.info("vision tower frozen (%d parameters)", freeze_vision_tower(model))
    peft_config = make_peft_config(model_args, training_args) if model_args.use_peft else None

    from samtok_rl.trainer import SamtokGRPOTrainer

    trainer = SamtokGRPOTrainer(
        model=model,
        # Each reward decodes completion_ids itself, keeping the grounding markers TRL's decode drops.
        reward_funcs=[rewards.bind_tokenizer(func, processor) for func in funcs],
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(
        f"samtok-rl: {trainer.state.global_step} steps in {time.perf_counter() - start:.1f} s; "
        f"model saved to {training_args.output_dir}"
    )
    return trainer


if __name__ == "__main__":
    main(*parse_args())
