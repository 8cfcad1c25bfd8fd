"""Loading what a training run needs: the policy (a folder, a Hub id or `tiny:`), its processor, the dataset."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from contextlib import nullcontext
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import get_peft_config

from samtok_rl.add_tokens import AddMaskTokensArguments, add_mask_tokens_to_model
from samtok_rl.configs import SAMPLE_PREFIX
from samtok_rl.data import sample_paths
from samtok_rl.errors import UsageError
from samtok_rl.files import cache_dir, to_rgb
from samtok_rl.mask_tokenizer import build_mask_tokenizer
from samtok_rl.prepare import PrepareConfig, load_prepared, prepare, read_source, run_easyr1


logger = logging.getLogger(__name__)

# The language model's attention projections: LoRA stays off the vision tower (frozen, and vLLM applies LoRA to the
# language model only) and off the embeddings / lm_head (vLLM rejects adapters that carry those rows).
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def sample_dir(task: str, mask_tokenizer: str) -> Path:
    """Where `sample:<task>` is prepared: `$SAMTOK_RL_CACHE/prepared/` (else `~/.cache/samtok_rl/prepared/`).

    The preparation is resumable and fingerprinted, so later runs reuse the folder instantly. The folder name carries
    a hash of the sample's location: the prepared rows store absolute image paths, so two checkouts (or installs)
    must not share one cache folder.
    """
    tag = re.sub(r"[^\w.-]", "_", mask_tokenizer)  # a Hub id or path as one folder name
    where = hashlib.sha256(str(sample_paths().root.resolve()).encode()).hexdigest()[:10]
    return cache_dir("prepared") / f"sample-{task}-{tag}-{where}"


def easyr1_dir(parquet: str, image_root: str | None) -> Path:
    """Where `dataset: <file>.parquet` is converted: the cache's `prepared/`, named by the file and its image root
    (size and modification time included, so a replaced file is converted again)."""
    path = Path(parquet)
    if not path.is_file():
        raise UsageError(f"dataset {parquet!r}: no such parquet file")
    stat = path.stat()
    key = json.dumps(
        [str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(Path(image_root).resolve()) if image_root else None]
    )
    return cache_dir("prepared") / f"easyr1-{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def load_parquet(parquet: str, image_root: str | None = None):
    """An authors' RL parquet file as prepared rows: converted into `easyr1_dir` the first time, loaded after."""
    out = easyr1_dir(parquet, image_root)
    return run_easyr1(PrepareConfig(output_dir=str(out), parquet=parquet, image_root=image_root, progress=False))


def prepared_folder(dataset: str, image_root: str | None = None) -> Path:
    """The prepared folder behind a `dataset` value that is a folder or a parquet file."""
    return easyr1_dir(dataset, image_root) if dataset.endswith(".parquet") else Path(dataset)


def load_dataset(script_args, training_args=None):
    """Load the prepared dataset (or prepare the bundled sample) and cast `image` paths to PIL images, read as 8-bit
    RGB by value (`rgb_images`)."""
    # TRL hands PIL images to the processor and to the rewards: decode the stored paths lazily.
    rows = load_rows(script_args, training_args).cast_column("image", datasets.Image())
    return rows.with_transform(rgb_images, columns=["image"], output_all_columns=True)


def rgb_images(batch: dict) -> dict:
    """`datasets` transform: the decoded `image` column as 8-bit RGB by value (`samtok_rl.files.to_rgb`).

    The processor would otherwise convert a 16-bit image itself with PIL, which clips it at 255: the policy would see
    a white image while `prepare` computed the GT codes from the real one.
    """
    if "image" in batch:  # absent after `select_columns` without it
        batch["image"] = [None if image is None else _rgb_keeping_path(image) for image in batch["image"]]
    return batch


def _rgb_keeping_path(image):
    path = getattr(image, "filename", "")
    rgb = to_rgb(image, path or "a dataset image")
    if rgb is not image:
        rgb.filename = path  # rollouts.jsonl records each row's image path from it (rewards/_bind.py)
    return rgb


def load_rows(script_args, training_args=None):
    """The prepared rows of `script_args.dataset` (the bundled sample is prepared first), image paths as stored."""
    name = script_args.dataset
    if name is None:
        raise UsageError("no dataset: set `dataset` to a `samtok-rl prepare` folder or to sample:gres / sample:gcg")
    if script_args.image_root is not None and not name.endswith(".parquet"):
        raise UsageError(f"image_root is for a .parquet dataset (the authors' RL files); dataset is {name!r}")
    if name.startswith(SAMPLE_PREFIX):
        task = name.removeprefix(SAMPLE_PREFIX)
        if script_args.mask_tokenizer is None:
            raise UsageError(f"dataset {name!r} is prepared on the fly and needs `mask_tokenizer` (e.g. micro)")
        out = sample_dir(task, script_args.mask_tokenizer)
        # Under `accelerate launch` one process prepares and the others wait; a single-process caller passes None.
        first = training_args.main_process_first(desc="prepare the bundled sample") if training_args else nullcontext()
        with first:
            dataset = prepare(
                read_source(task, sample=True),
                task,
                out,
                lambda: build_mask_tokenizer(script_args.mask_tokenizer),
                tokenizer_id=script_args.mask_tokenizer,
                progress=False,
            )
    elif name.endswith(".parquet"):
        first = training_args.main_process_first(desc="convert the parquet file") if training_args else nullcontext()
        with first:
            dataset = load_parquet(name, script_args.image_root)
    else:
        if not Path(name).is_dir():
            raise UsageError(f"dataset folder {name!r} does not exist; run `samtok-rl prepare --output {name}` first")
        dataset = load_prepared(name)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    return dataset


def load_processor(path: str, script_args, model_args, training_args):
    """Load the processor with left padding and the recipe's pixel limits; run the tokenizer checks."""
    processor = AutoProcessor.from_pretrained(
        path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        padding_side="left",
    )
    if processor.tokenizer.padding_side != "left":
        # Right padding silently misaligns mm_token_type_ids with TRL's left-padded prompts (no crash).
        raise UsageError(f"the tokenizer pads on the {processor.tokenizer.padding_side}; GRPO needs left padding")
    size = processor.image_processor.size
    if script_args.max_pixels is not None:
        size["longest_edge"] = script_args.max_pixels
    if script_args.min_pixels is not None:
        size["shortest_edge"] = script_args.min_pixels
    return processor


def load_model(path: str, model_args, training_args):
    """Load the VLM with the Auto class from `path` (a folder or Hub id), so TRL and vLLM can reload it by name."""
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
    out = Path(training_args.output_dir) / "base_with_mask_tokens"
    with training_args.main_process_first(desc="add mask tokens"):
        if not (out / "config.json").is_file():
            logger.warning("adding the 514 SAMTok mask tokens to %s (a base model); saving it to %s", path, out)
            # The `samtok-rl add-mask-tokens` step, run in-process; the processor's pixel limits and padding side are
            # applied when training loads the saved folder.
            args = AddMaskTokensArguments(
                model_name_or_path=path,
                output_dir=str(out),
                seed=training_args.seed,
                dtype=model_args.dtype or "auto",
                revision=model_args.model_revision,
                trust_remote_code=training_args.trust_remote_code,
            )
            add_mask_tokens_to_model(args)
    return str(out)


def freeze_vision_tower(model) -> int:
    """Freeze the vision tower (patch embedding, blocks, merger) and keep it out of backward; returns the number of
    frozen parameters.

    transformers' `enable_input_require_grads` (which TRL and PEFT call for LoRA with gradient checkpointing) hooks the
    input embeddings of every `PreTrainedModel` in the tree, the vision tower's patch embedding included: its output
    then requires grad, and backward runs through the whole frozen tower, recomputing every checkpointed block (at the
    3B's 2,048-token images that was about twice the tower's forward, measured on CPU). The tower's outputs are detached
    instead: nothing in it trains, so no gradient changes.
    """
    model.model.visual.requires_grad_(False)
    model.model.visual.register_forward_hook(_detached_output)
    # Under ZeRO-3 each parameter is an empty placeholder on every rank; DeepSpeed keeps the full size in ds_numel.
    return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.model.visual.parameters())


def _detached_output(module, args, output):
    """Forward hook: the module's output tensors detached (a tensor, a tuple, or a `ModelOutput` / dict)."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in output)
    for key in list(output.keys()):
        if isinstance(output[key], torch.Tensor):
            output[key] = output[key].detach()
    return output


def make_peft_config(model_args, training_args):
    """TRL's LoRA config, targeting the language model's attention by default; mask-token rows stay frozen."""
    if model_args.lora_target_modules is None:
        model_args.lora_target_modules = DEFAULT_LORA_TARGETS
    saved = model_args.lora_modules_to_save or []
    rows = [m for m in saved if "embed" in m or "lm_head" in m]
    if rows and training_args.use_vllm:
        raise UsageError(
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
