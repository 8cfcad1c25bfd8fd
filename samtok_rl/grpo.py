"""GRPO training entry point: TRL's `GRPOTrainer` on a SAMTok VLM, configured by a flat YAML recipe.

    python -m samtok_rl.grpo --config recipes/gres/qwen2_5_vl_3b_samtok_grpo.yaml [--field value ...]
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m samtok_rl.grpo --config <recipe>
    samtok-rl train --config <recipe>

The recipe's keys are the fields of `samtok_rl.configs.SamtokScriptArguments`, TRL's `GRPOConfig` and `ModelConfig`;
command-line flags override it. The run reads as its steps: parse, check (`samtok_rl.checks`: rewards, dataset
columns, launch; then the mask tokens once the processor is loaded), load (`samtok_rl.loading`), rewards, train,
save. `--dry_run` stops after the checks that do not need the model weights.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from trl import GRPOConfig, ModelConfig
from trl.trainer.utils import get_callable_name

import rewards
from samtok_rl.checks import (
    RUN_LOGS,
    check_columns,
    check_generation_batch,
    check_mask_tokens,
    check_prompt_format,
    check_recipe,
    check_resume_changes,
    check_rewards_package,
    check_tasks,
    checkpoint_step,
    resolve_resume,
)
from samtok_rl.cli import config_parser, report_errors
from samtok_rl.configs import SamtokScriptArguments
from samtok_rl.dynamic_sampling import DynamicSampling
from samtok_rl.errors import UsageError
from samtok_rl.guided import Guidance, check_guided_lengths, check_guided_recipe, guided_reward_index
from samtok_rl.loading import (
    add_mask_tokens_and_save,
    freeze_vision_tower,
    load_dataset,
    load_model,
    load_processor,
    make_peft_config,
    prepared_folder,
)
from samtok_rl.logs import setup_logging
from samtok_rl.prepare import prepared_tokenizer
from samtok_rl.rollouts import RUN_FILE
from samtok_rl.run_dir import cut_logs_to_step, lock_output_dir, record_run
from samtok_rl.tiny import resolve_model_path
from samtok_rl.tokens import MASK_TOKENS
from samtok_rl.trainer import SamtokGRPOTrainer
from samtok_rl.training_eval import (
    BenchmarkEval,
    build_mask_tokenizer_for,
    build_text_similarity,
    check_eval_recipe,
    check_eval_schedule,
    load_eval_split,
)


logger = logging.getLogger(__name__)

PROG = "samtok-rl train"


def make_parser(prog: str = PROG):
    """The `TrlParser` over ([`SamtokScriptArguments`], `GRPOConfig`, `ModelConfig`), reading `--config <yaml>`.

    Example:
    >>> parser = make_parser()
    >>> script_args, training_args, model_args = parser.parse_args_and_config(
    ...     ["--dataset", "sample:gres", "--reward_preset", "gres", "--use_cpu", "--bf16", "false"]
    ... )
    >>> script_args.dataset, training_args.loss_type, model_args.use_peft
    ('sample:gres', 'dapo', False)
    """
    # GRPOConfig checks its batch arithmetic while it is built: samtok-rl says it first, naming the fix.
    return config_parser([SamtokScriptArguments, GRPOConfig, ModelConfig], prog=prog, check=check_parsed)


def check_parsed(values) -> None:
    """The checks on a recipe's parsed values that must run before `GRPOConfig` is built (its `__post_init__` refuses
    the same mistakes in a paragraph with a traceback)."""
    check_generation_batch(values)
    check_eval_schedule(values)


def short_help() -> str:
    """`samtok-rl train --help`: samtok-rl's own fields; TRL's hundreds are behind `--help_all`."""
    parser = config_parser([SamtokScriptArguments], prog=PROG, description=__doc__.split("\n\n")[0])
    return parser.format_help() + (
        "\nEvery field of TRL's GRPOConfig (output_dir, learning_rate, num_generations, beta, use_vllm, ...) and "
        "ModelConfig (model_name_or_path, dtype, use_peft, lora_r, ...) is accepted too: `--help_all` lists them.\n"
    )


def parse_args(argv: Sequence[str] | None = None):
    """Parse `argv` (default `sys.argv[1:]`) into `(script_args, training_args, model_args)`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(short_help())
        sys.exit(0)
    if "--help_all" in argv:
        make_parser().print_help()
        sys.exit(0)
    return make_parser().parse_args_and_config(args=argv)


def resolve_rewards(script_args, training_args) -> tuple[list[str], list]:
    """Resolve the recipe's reward specs (after the preset) to callables; sets `training_args.reward_weights`.

    Rewards that need settings get the recipe's (`mask_tokenizer`, `repetition_limit`) from `rewards.get_reward_funcs`.

    Returns:
        `tuple[list[str], list[Callable]]`: the specs and their (not yet tokenizer-bound) reward functions.
    """
    specs = []
    preset = script_args.reward_preset
    if preset is not None:
        if preset not in rewards.PRESETS:
            raise UsageError(f"unknown reward_preset {preset!r}; known presets: {', '.join(rewards.PRESETS)}")
        specs = list(rewards.PRESETS[preset])
    specs += [spec for spec in script_args.reward_funcs or [] if spec not in specs]
    if not specs:
        raise UsageError("no rewards: set `reward_preset` (gres or gcg) or `reward_funcs` in the recipe")
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(specs):
        raise UsageError(f"{len(weights)} reward_weights for {len(specs)} rewards {specs}")
    for spec, weight in zip(specs, weights or []):
        # TRL sums weighted rewards skipping NaN: a NaN weight would silently drop its reward from the total.
        if not math.isfinite(weight):
            raise UsageError(f"reward_weights: {weight} for {spec}: weights must be finite numbers")
    funcs = rewards.get_reward_funcs(
        specs, mask_tokenizer=script_args.mask_tokenizer, repetition_limit=script_args.repetition_limit
    )
    return specs, funcs


def main(script_args=None, training_args=None, model_args=None):
    """Check the setup, build the trainer and train; returns the trainer (`None` for `--dry_run`).

    Called with the three parsed dataclasses, or as `main(argv)` (a list of command-line arguments, as
    `samtok-rl train` does).
    """
    if training_args is None:
        script_args, training_args, model_args = parse_args(script_args)
    setup_logging()
    start = time.perf_counter()

    # Check: everything that needs neither the model nor a GPU, so a bad recipe fails in seconds.
    check_rewards_package()
    check_recipe(script_args, training_args, model_args)
    check_eval_recipe(script_args, training_args)
    check_guided_recipe(script_args, training_args)
    resume = resolve_resume(training_args)
    specs, funcs = resolve_rewards(script_args, training_args)
    guided_reward = None
    if script_args.guided_groups:
        guided_reward = guided_reward_index(script_args, specs, [get_callable_name(f) for f in funcs])
    dataset = load_dataset(script_args, training_args)
    check_columns(dataset, funcs, specs)
    check_tasks(dataset, specs)
    check_prompt_format(dataset, specs)
    eval_split = load_eval_split(script_args, training_args, specs)
    identity = {
        "dataset": script_args.dataset, "task": script_args.reward_preset, "model": model_args.model_name_or_path,
        "rewards": specs, "reward_weights": training_args.reward_weights,
        "num_generations": training_args.num_generations,
    }  # fmt: skip
    previous, changes = check_resume_changes(resume, identity, script_args.accept_resume_changes)
    resumed_at = checkpoint_step(resume, training_args.max_steps) if resume is not None else None
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

    # Own the output folder (one run at a time); a resume continues the logs at its checkpoint's step.
    out = Path(training_args.output_dir)
    if training_args.process_index == 0:
        lock_output_dir(out)
        if resumed_at is not None:
            moved = cut_logs_to_step(out, resumed_at, RUN_LOGS)
            for name, count in moved.items():
                logger.warning("%s: %d records after step %d (the interrupted run's) moved to %s.superseded",
                               name, count, resumed_at, name)  # fmt: skip

    # Load: the processor first (its mask tokens are checked before the weights load), then the policy.
    path = resolve_model_path(model_args.model_name_or_path)
    processor = load_processor(path, script_args, model_args, training_args)
    if script_args.add_mask_tokens and any(t not in processor.tokenizer.get_vocab() for t in MASK_TOKENS):
        path = add_mask_tokens_and_save(path, script_args, model_args, training_args)
        processor = load_processor(path, script_args, model_args, training_args)
    check_mask_tokens(processor)
    if guided_reward is not None:
        check_guided_lengths(dataset, processor.tokenizer, training_args.max_completion_length, script_args.dataset)
    model = load_model(path, model_args, training_args)
    if script_args.freeze_vision_tower:
        logger.info("vision tower frozen (%d parameters)", freeze_vision_tower(model))

    # Train and save.
    benchmark_eval = None
    if eval_split is not None:
        # Built before training on every process (each decodes its shard): a bad encoder or tokenizer fails now.
        device = str(training_args.device)
        benchmark_eval = BenchmarkEval(
            eval_split, build_mask_tokenizer_for(eval_split, device), build_text_similarity(eval_split, device)
        )
    trainer = SamtokGRPOTrainer(
        model=model,
        # Each reward decodes completion_ids itself, keeping the grounding markers TRL's decode drops.
        reward_funcs=[rewards.bind_tokenizer(func, processor) for func in funcs],
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=make_peft_config(model_args, training_args) if model_args.use_peft else None,
        rollout_prompts=script_args.rollout_prompts,
        dynamic_sampling=DynamicSampling(
            script_args.dynamic_sampling_tolerance, script_args.dynamic_sampling_max_rounds, training_args.seed
        )
        if script_args.dynamic_sampling
        else None,
        benchmark_eval=benchmark_eval,
        guidance=Guidance(
            guided_reward, script_args.guided_threshold, script_args.guided_shaping, script_args.guided_gamma
        )
        if guided_reward is not None
        else None,
    )
    if trainer.accelerator.is_main_process:
        # What `samtok-rl inspect` needs to decode and label the rollouts, and what a resume is compared with.
        mask_tokenizer = script_args.mask_tokenizer or prepared_tokenizer(
            prepared_folder(script_args.dataset, script_args.image_root)
        )
        record_run(out / RUN_FILE, {**identity, "mask_tokenizer": mask_tokenizer}, previous, resumed_at, changes)
    if resume is not None:
        logger.info("resuming from %s%s", resume, f" with changes: {'; '.join(changes)}" if changes else "")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(
        f"samtok-rl: {trainer.state.global_step} steps in {time.perf_counter() - start:.1f} s; "
        f"model saved to {training_args.output_dir}"
    )
    # Destroy the process group before the interpreter exits: otherwise gloo's worker threads can be torn down during
    # finalization and abort a finished run (seen once on a 2-process DeepSpeed CPU run: "terminate called without an
    # active exception", SIGABRT after the model was saved; torch's docs ask every trainer process to do this).
    trainer.accelerator.end_training()
    return trainer


if __name__ == "__main__":
    sys.exit(report_errors("train", main))
