"""Start-up checks of a training run: what would otherwise break SAMTok RL silently, or hours in.

Each raises `UsageError` with one line naming the culprit before any model weight is loaded (except the tokenizer
checks, which need the processor). They all run in `--dry_run` too.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import math
import os
import re
from pathlib import Path

from transformers.integrations import is_deepspeed_zero3_enabled

import rewards
from samtok_rl import mask_tokenizer
from samtok_rl.errors import UsageError
from samtok_rl.files import check_model_folder, check_output_dir
from samtok_rl.prepare import AUTHORS_MASK_TOKENIZER, MANIFEST, PREPARED_FEATURES, prepared_tokenizer
from samtok_rl.prompts import asks_to_think
from samtok_rl.rollouts import ROLLOUTS_FILE, RUN_FILE
from samtok_rl.run_dir import read_run, run_changes
from samtok_rl.runlog import METRICS_FILE
from samtok_rl.tokens import MASK_TOKENS, format_mask, missing_mask_tokens


logger = logging.getLogger(__name__)


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
        raise UsageError(
            f"the dataset lacks columns {missing} needed by the prompt/image input or by the rewards {specs}; "
            f"it has {dataset.column_names}. Prepare it with `samtok-rl prepare`."
        )


def check_mask_tokens(processor) -> None:
    """Raise unless the 514 mask tokens exist, are non-special and survive TRL's `skip_special_tokens=True` decode."""
    missing = missing_mask_tokens(processor)
    if missing:
        raise UsageError(
            f"{len(missing)} of the 514 SAMTok mask tokens are missing from the tokenizer (first: {missing[0]!r}). "
            "Start from a SAMTok checkpoint, or set `add_mask_tokens: true` to add them to a base model."
        )
    tok = processor.tokenizer
    vocab = tok.get_vocab()
    special = [t for t in MASK_TOKENS if tok.added_tokens_decoder[vocab[t]].special]
    if special:
        raise UsageError(
            f"{len(special)} mask tokens are special (first: {special[0]!r}): TRL decodes completions with "
            "skip_special_tokens=True, so the rewards would see them as ''. Re-add them as non-special tokens."
        )
    span = format_mask(123, 45)
    ids = tok(span, add_special_tokens=False)["input_ids"]
    if len(ids) != 4 or tok.decode(ids, skip_special_tokens=True) != span:
        raise UsageError(f"a mask span does not round-trip through the tokenizer: {span!r} -> {ids}")


def sharded_launch(training_args) -> str | None:
    """The name of the launch that partitions parameters across processes (ZeRO-3, FSDP), else `None`."""
    if is_deepspeed_zero3_enabled() or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "DeepSpeed ZeRO-3"
    if training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def check_cpu_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts one process whatever N is (accelerate 1.15 sends `--cpu` to
    its single-process launcher, which only sets MASTER_ADDR for N > 1): say so instead of training alone silently."""
    single_process_launcher = "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ
    if _env_flag("ACCELERATE_USE_CPU") and single_process_launcher:
        logger.warning(
            "accelerate launch --cpu runs ONE process whatever --num_processes says; for several CPU processes "
            "launch with --config_file recipes/accelerate/multi_gpu.yaml --num_processes N and pass --use_cpu"
        )


def check_launch_took_effect(accelerator) -> None:
    """A launch config that asks for FSDP must get FSDP: refuse before training otherwise.

    accelerate 1.15 enables FSDP only on GPU-type backends (`accelerate/state.py`: its FSDP branch sits under
    MULTI_GPU / MULTI_XPU / ..., MULTI_CPU is left out), so on CPU `fsdp2.yaml` would train as plain DDP, saying
    nothing. (DeepSpeed's ZeRO configs do run on CPU, through DeepSpeed's CPU accelerator.)
    """
    got = accelerator.distributed_type
    if _env_flag("ACCELERATE_USE_FSDP") and got.value != "FSDP":
        raise UsageError(
            f"the launch config asks for FSDP (ACCELERATE_USE_FSDP) but accelerate set up {got.value}: accelerate "
            "enables FSDP only on GPUs; on CPU use recipes/accelerate/multi_gpu.yaml (DDP) with --use_cpu"
        )


def check_add_mask_tokens(script_args, training_args) -> None:
    """`add_mask_tokens` resizes and saves the model from one process: refuse it where that cannot work."""
    if not script_args.add_mask_tokens:
        return
    sharded = sharded_launch(training_args)
    if sharded or training_args.world_size > 1:
        where = sharded or f"{training_args.world_size} processes"
        raise UsageError(
            f"add_mask_tokens cannot run under {where} (the embedding is resized and saved from one process): "
            "run `samtok-rl add-mask-tokens --model_name_or_path <base> --output_dir <dir>` once, then train with "
            "model_name_or_path: <dir> and add_mask_tokens: false"
        )


def check_rewards_package() -> None:
    """A `rewards.py` (or `rewards/`) in the working directory shadows samtok-rl's reward package on import."""
    if not hasattr(rewards, "get_reward_funcs"):
        raise UsageError(
            f"{getattr(rewards, '__file__', rewards)} shadows samtok-rl's `rewards` package: rename it (a user reward "
            "is named in the recipe as path/to/file.py:function)"
        )


def check_training_values(training_args) -> None:
    """Values TRL accepts but that make a run meaningless (a negative KL weight trains away from the reference)."""
    rules = [
        ("beta", training_args.beta, training_args.beta >= 0, ">= 0"),
        ("learning_rate", training_args.learning_rate, training_args.learning_rate > 0, "> 0"),
        ("temperature", training_args.temperature, training_args.temperature > 0, "> 0"),
        ("max_completion_length", training_args.max_completion_length, training_args.max_completion_length > 0, "> 0"),
        ("num_generations", training_args.num_generations, training_args.num_generations >= 2, ">= 2"),
        ("top_p", training_args.top_p, 0 < training_args.top_p <= 1, "in (0, 1]"),
        ("epsilon", training_args.epsilon, training_args.epsilon >= 0, ">= 0"),
    ]
    for name, value, ok, rule in rules:
        if not ok:
            raise UsageError(f"{name} must be {rule}, got {value!r}")


def check_generation_batch(values) -> None:
    """`num_generations` and the generation batch it divides, checked on the parsed values before `GRPOConfig` is
    built: its `__post_init__` refuses them in TRL's words, with a traceback, while the recipe is parsed.

    Args:
        values (`argparse.Namespace`): every field of the train parser (`grpo.make_parser`'s `check`).
    """
    generations = values.num_generations
    if generations < 2:
        raise UsageError(
            f"num_generations must be >= 2, got {generations}: GRPO scores each completion against the others of "
            "its prompt's group"
        )
    if values.generation_batch_size is not None and values.steps_per_generation is not None:
        return  # TRL refuses setting both, in one line through the parser
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = values.per_device_train_batch_size
    if values.generation_batch_size is not None:
        batch, how = values.generation_batch_size, "generation_batch_size"
        fix = f"set generation_batch_size to a multiple of {math.lcm(generations, per_device * processes)}"
    else:
        steps = values.steps_per_generation or values.gradient_accumulation_steps
        name = "steps_per_generation" if values.steps_per_generation else "gradient_accumulation_steps"
        batch = per_device * processes * steps
        how = f"per_device_train_batch_size {per_device} x {processes} process(es) x {name} {steps}"
        step = generations // math.gcd(generations, processes * steps)
        fix = f"set per_device_train_batch_size to a multiple of {step} (e.g. {-(-per_device // step) * step})"
    if batch % generations:
        raise UsageError(
            f"the generation batch of {batch} completions ({how}) is not a multiple of num_generations "
            f"{generations}: each prompt's group must be generated whole. {fix[0].upper()}{fix[1:]}, or "
            f"num_generations to a divisor of {batch}"
        )


def check_max_train_samples(script_args) -> None:
    """`max_train_samples` below 1 would select no row (pyarrow then fails deep in `datasets`)."""
    value = script_args.max_train_samples
    if value is not None and value < 1:
        raise UsageError(f"max_train_samples must be >= 1 (or unset for every row), got {value}")


def check_model_source(name: str | None) -> None:
    """A model named as a local folder must exist and hold a `config.json` (else it would be sent to the Hub)."""
    if name is None:
        raise UsageError("no model: set `model_name_or_path` (a SAMTok checkpoint folder or Hub id)")
    check_model_folder(name, "model_name_or_path")


def check_mask_tokenizer_files(name: str | None, dataset: str | None = None) -> None:
    """The recipe's mask tokenizer: its local files must be there now (`mask_tokenizer.check_mask_tokenizer_files`:
    a folder with a non-empty `mask_tokenizer_256x2.pth`), not at the first decoded mask, and it must be the one the
    prepared `dataset` was made with (its manifest records it): rewards compare the policy's codes, which the
    recipe's tokenizer gives meaning to, with GT codes made by the recorded one. The recorded name is compared as
    recorded (`same_mask_tokenizer`: the same name, or checkpoint files here with the same content)."""
    mask_tokenizer.check_mask_tokenizer_files(name)
    recorded = prepared_tokenizer(dataset) if dataset is not None and Path(dataset).is_dir() else None
    if dataset is not None and dataset.endswith(".parquet"):
        recorded = AUTHORS_MASK_TOKENIZER  # `dataset: <file>.parquet` reads the authors' files, coded with theirs
    if name is not None and recorded is not None and not mask_tokenizer.same_mask_tokenizer(recorded, name):
        raise UsageError(
            f"mask_tokenizer {name!r} is not the one dataset {dataset!r} was prepared with ({recorded!r}, recorded "
            f"in its {MANIFEST}): the rewards would compare codes of two tokenizers; set mask_tokenizer: {recorded} "
            "or prepare the dataset again with this one"
        )


RUN_LOGS = (ROLLOUTS_FILE, METRICS_FILE)


def _run_files(folder: Path) -> list[str]:
    """The files of a training run's logs that `folder` holds."""
    return [name for name in (*RUN_LOGS, RUN_FILE) if (folder / name).is_file()]


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What a checkpoint folder lacks to resume the run it saved (`None` when complete).

    It must hold the model (`config.json`, or `adapter_config.json` for LoRA), `trainer_state.json` and the optimizer
    state, so that a resume is the run it continues, not a silently restarted optimizer.
    """
    if not ((checkpoint / "config.json").is_file() or (checkpoint / "adapter_config.json").is_file()):
        return "has no config.json (nor adapter_config.json): not a checkpoint"
    # Where the Trainer keeps the optimizer: optimizer.pt; FSDP (accelerate) optimizer.bin or optimizer_0/;
    # DeepSpeed global_step*/.
    has_optimizer = any(
        (checkpoint / name).exists() for name in ("optimizer.pt", "optimizer.bin", "optimizer_0")
    ) or any(checkpoint.glob("global_step*"))
    for needed, present in (("trainer_state.json", (checkpoint / "trainer_state.json").is_file()),
                            ("optimizer state (optimizer.pt)", has_optimizer)):  # fmt: skip
        if not present:
            return f"has no {needed}: resuming would restart it silently"
    return None


def _checkpoints(out: Path) -> list[Path]:
    """`output_dir`'s `checkpoint-N` folders, newest first."""
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.removeprefix("checkpoint-").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("checkpoint-")), reverse=True)


def resolve_resume(training_args) -> str | None:
    """The checkpoint a run resumes from (`None`: a fresh run), after refusing what would mix or lose runs.

    - `resume_from_checkpoint: true` means the last complete `checkpoint-N` of `output_dir`; a newer one left
      incomplete by a run killed while saving is skipped, and said (an error when there is none);
    - a checkpoint folder must be complete (`checkpoint_problem`);
    - a fresh run into an `output_dir` that holds checkpoints, a trained model or the logs of an earlier run is
      refused: it would overwrite some of them and leave the others beside its own; so is a resume that would write
      into another run's `output_dir` (one holding logs, but not the checkpoint).
    """
    value = training_args.resume_from_checkpoint
    out = Path(training_args.output_dir)
    check_output_dir(out)
    checkpoints = _checkpoints(out) if out.is_dir() else []
    if value is None or str(value).lower() in ("false", "none", ""):
        held = []
        if checkpoints:
            held.append(f"checkpoints (last: {checkpoints[0].name})")
        if (out / "config.json").is_file() or (out / "adapter_config.json").is_file():
            held.append("a trained model")
        if out.is_dir() and _run_files(out):
            held.append(f"logs ({', '.join(_run_files(out))})")
        if held:
            raise UsageError(
                f"output_dir {str(out)!r} holds {', '.join(held)} of an earlier run: continue it with "
                "--resume_from_checkpoint true, or choose another output_dir"
            )
        return None
    if str(value).lower() == "true":
        complete = [c for c in checkpoints if checkpoint_problem(c) is None]
        if not complete:
            where = f" (incomplete: {', '.join(c.name for c in checkpoints)})" if checkpoints else ""
            raise UsageError(
                f"resume_from_checkpoint true: output_dir {str(out)!r} holds no complete checkpoint-N folder{where}"
            )
        checkpoint = complete[0]
        skipped = checkpoints[: checkpoints.index(checkpoint)]
        if skipped:
            logger.warning(
                "resume_from_checkpoint true: skipping the incomplete %s (a run killed while saving? %s %s); "
                "resuming from %s",
                ", ".join(c.name for c in skipped), skipped[0].name, checkpoint_problem(skipped[0]), checkpoint.name,
            )  # fmt: skip
    else:
        checkpoint = Path(str(value)).expanduser()
        if not checkpoint.is_dir():
            raise UsageError(f"resume_from_checkpoint {str(value)!r} is not a folder")
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise UsageError(f"checkpoint {str(checkpoint)!r} {problem}")
    if out.is_dir() and out.resolve() != checkpoint.resolve().parent and _run_files(out):
        raise UsageError(
            f"output_dir {str(out)!r} holds the logs of another run ({', '.join(_run_files(out))}), not of "
            f"{str(checkpoint)!r}: resume into the checkpoint's own folder or into an empty output_dir"
        )
    return str(checkpoint)


def checkpoint_step(checkpoint: str, max_steps: int) -> int:
    """The step a checkpoint was saved at; a resume that has no step left to train (`max_steps`) is refused."""
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    if 0 < max_steps <= step:
        raise UsageError(
            f"checkpoint {checkpoint!r} is at step {step} and max_steps is {max_steps}: nothing left to train "
            f"(raise max_steps above {step})"
        )
    return step


def check_resume_changes(resume: str | None, current: dict, accept: bool) -> tuple[dict | None, list[str]]:
    """Compare a resume with the run its checkpoint belongs to (`samtok_run.json` beside the checkpoint).

    Returns:
        `tuple[dict | None, list[str]]`: that run's record and the accepted changes (empty for a fresh run).

    Raises:
        `UsageError`: the resume changes what the run was (`run_dir.RUN_IDENTITY`) and `accept` is off.
    """
    if resume is None:
        return None, []
    previous = read_run(Path(resume).parent / RUN_FILE)
    if previous is None:
        logger.warning("resuming from %s: no %s beside it, so the recipe cannot be compared", resume, RUN_FILE)
        return None, []
    changes = run_changes(previous, current)
    if changes and not accept:
        raise UsageError(
            f"resuming {resume} would change the run: {'; '.join(changes)}. Use the checkpoint's recipe, start a "
            "new run, or pass --accept_resume_changes (recorded in samtok_run.json)"
        )
    return previous, changes


def reward_name(spec: str) -> str:
    """The function name a reward spec ends in: `gres_mask_reward`, `pkg.mod.fn` -> `fn`, `path/file.py:fn` -> `fn`."""
    return spec.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def check_tasks(dataset, specs: list[str]) -> None:
    """Task rewards (`gres_*`, `gcg_*`) need rows of their task, else they would score nothing (`None`) silently."""
    tasks = set(dataset.unique("task")) if "task" in dataset.column_names else set()
    for spec in specs:
        task = re.match(r"(gres|gcg)_", reward_name(spec))
        if task and tasks and task.group(1) not in tasks:
            raise UsageError(
                f"reward {spec!r} scores {task.group(1)} rows but the dataset holds only {sorted(tasks)} rows: "
                f"use the {sorted(tasks)[0]} preset or another dataset"
            )


def check_prompt_format(dataset, specs: list[str]) -> None:
    """Rewards that read the think/answer parts (`rewards.THINK_ANSWER`) need prompts that ask for them: on a bare
    prompt they score every target answer 0 and only `No target.` earns reward, silently."""
    names = [spec for spec in specs if reward_name(spec) in rewards.THINK_ANSWER]
    if not names or "prompt" not in dataset.column_names:
        return
    for i, prompt in enumerate(dataset["prompt"]):
        if not asks_to_think(prompt):
            raise UsageError(
                f"dataset row {i}: the prompt does not ask for <think>/<answer> (prepared with --no_think?), but the "
                f"rewards {names} score only the answer part: prepare with the think instruction or use rewards "
                "that read the bare response"
            )


def check_dynamic_sampling(script_args, training_args) -> None:
    """Dynamic sampling keeps or drops whole groups per process: each process's generation batch must hold whole
    groups (TRL otherwise lets a group straddle two processes)."""
    if not script_args.dynamic_sampling:
        return
    local = training_args.per_device_train_batch_size * training_args.steps_per_generation
    if local % training_args.num_generations:
        raise UsageError(
            f"dynamic_sampling needs whole groups on each process: per_device_train_batch_size x steps_per_generation "
            f"= {local} is not a multiple of num_generations = {training_args.num_generations}"
        )
    if script_args.dynamic_sampling_tolerance < 0 or script_args.dynamic_sampling_max_rounds < 0:
        raise UsageError(
            f"dynamic_sampling_tolerance ({script_args.dynamic_sampling_tolerance}) and dynamic_sampling_max_rounds "
            f"({script_args.dynamic_sampling_max_rounds}) must be >= 0"
        )


def check_vllm_installed(training_args, dry_run: bool = False) -> None:
    """`use_vllm` needs the `vllm` package: without it TRL fails while building the trainer, after the model loaded
    (colocate: `AttributeError` on `vllm.LLM`; server: an `ImportError`). A `--dry_run` only warns: it checks a
    recipe, often on a machine without the GPU stack (the shipped recipes, which use vLLM, dry-run on CPU)."""
    if not training_args.use_vllm or importlib.util.find_spec("vllm") is not None:
        return
    message = (
        f"use_vllm is true (vllm_mode {training_args.vllm_mode}) but vllm is not installed: "
        'pip install -e ".[vllm]", or set use_vllm: false to generate with transformers'
    )
    if not dry_run:
        raise UsageError(message)
    logger.warning("%s (a dry run goes on; training would stop here)", message)


def check_recipe(script_args, training_args, model_args) -> None:
    """The recipe-level rules that need neither the data nor the model weights."""
    check_model_source(model_args.model_name_or_path)
    check_cpu_launch()
    check_mask_tokenizer_files(script_args.mask_tokenizer, script_args.dataset)
    if model_args.use_peft and training_args.beta > 0 and training_args.sync_ref_model:
        raise UsageError("sync_ref_model does not work with PEFT")
    check_training_values(training_args)
    check_max_train_samples(script_args)
    check_add_mask_tokens(script_args, training_args)
    check_dynamic_sampling(script_args, training_args)
    check_vllm_installed(training_args, script_args.dry_run)
    if training_args.use_vllm and not training_args.vllm_importance_sampling_correction:
        # TRL computes (and logs) vLLM's logprob gap only for its importance-sampling correction.
        logger.warning(
            "vllm_importance_sampling_correction is off: the per-step gap between vLLM's and the trainer's logprobs "
            "(sampling/sampling_logp_difference) is not logged, so off-policy drift would go unseen"
        )
