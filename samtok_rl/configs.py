"""samtok-rl's own training-recipe fields; everything else in a recipe is TRL's `GRPOConfig` or `ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field


__all__ = ["SAMPLE_PREFIX", "SamtokScriptArguments"]

# `dataset: sample:gres` (or `sample:gcg`) prepares the bundled real-photo sample on the fly, so the CPU demo and the
# tests need no data files (`model_name_or_path: tiny:qwen2_5_vl` does the same for the model: `samtok_rl.tiny`).
SAMPLE_PREFIX = "sample:"


@dataclass
class SamtokScriptArguments:
    """samtok-rl's own recipe fields (everything else is `GRPOConfig` or `ModelConfig`)."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A folder written by `samtok-rl prepare`, `sample:gres` / `sample:gcg` to prepare the bundled "
            "sample on the fly (with `mask_tokenizer`), or an authors' RL parquet file (EasyR1 schema, e.g. "
            "gres8k_train.parquet; converted once into the cache, with `image_root`)."
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={
            "help": "With a `.parquet` dataset (the authors' RL files): the folder where rows without image bytes "
            "find their image by file name (COCO train2014 for gres8k_train.parquet)."
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
    repetition_limit: int = field(
        default=3,
        metadata={"help": "Most occurrences of one mask span allowed by the repetition rewards (the reference: 3)."},
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
    rollout_prompts: int = field(
        default=4,
        metadata={
            "help": "Prompts per logged step whose completions (text, codes, each reward, advantage, GT) are appended "
            "to <output_dir>/rollouts.jsonl; 0 writes none."
        },
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "Drop prompt groups whose reward spread (std of the weighted total) is at most "
            "`dynamic_sampling_tolerance` and generate further prompts until the batch holds only informative groups "
            "(DAPO's dynamic sampling; `samtok_rl.dynamic_sampling`)."
        },
    )
    dynamic_sampling_tolerance: float = field(
        default=1e-4, metadata={"help": "A group whose reward std is at most this is uninformative (dropped)."}
    )
    dynamic_sampling_max_rounds: int = field(
        default=4,
        metadata={
            "help": "Most extra generation rounds per batch; when they are spent, the batch is topped up with "
            "dropped groups (zero advantage) and a warning is logged."
        },
    )
    guided_groups: bool = field(
        default=False,
        metadata={"help": "Give each group without a right answer the reference answer in its last slot "
                  "(`samtok_rl.guided`)."},
    )  # fmt: skip
    guided_threshold: float = field(
        default=1.0, metadata={"help": "A group is guided when its best guided_reward score is below this."}
    )
    guided_reward: str | None = field(
        default=None, metadata={"help": "The reward that judges a right answer (default: the preset's mask reward)."}
    )
    guided_shaping: str = field(
        default="none", metadata={"help": "The reference answer's loss: none (plain GRPO) or luffy (LUFFY's shaping)."}
    )
    guided_gamma: float = field(default=0.1, metadata={"help": "LUFFY's shaping constant."})
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "A held-out split evaluated with the benchmark's metrics during training (a prepared folder, "
            "sample:gres / sample:gcg, or an authors' parquet file), scheduled by eval_strategy / eval_steps / "
            "eval_on_start; logged as eval/<metric> (`samtok_rl.training_eval`)."
        },
    )
    eval_max_samples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N rows of eval_dataset."}
    )
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Generation budget of the evaluation (default: max_completion_length)."}
    )
    eval_temperature: float = field(
        default=0.0, metadata={"help": "0: greedy answers, as `samtok-rl eval`; > 0: one sampled answer per row."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Questions per generation call in the evaluation."})
    eval_text_encoder: str = field(
        default="bert-base-uncased", metadata={"help": "GCG Recall's phrase encoder (BERT folder or Hub id)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N dataset rows (debugging)."}
    )
    accept_resume_changes: bool = field(
        default=False,
        metadata={
            "help": "Resume although the recipe changes what the checkpoint's run was (dataset, task, model, rewards "
            "or weights, num_generations); the changes are recorded in samtok_run.json."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Validate the recipe (rewards, dataset columns, batch arithmetic) and exit without training."
        },
    )
