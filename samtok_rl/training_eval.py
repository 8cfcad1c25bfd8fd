"""The benchmark's own metrics during GRPO training: GRES gIoU / cIoU / N-acc / T-acc, GCG AP50 / mIoU / Recall.

A recipe names a held-out split with `eval_dataset` and schedules it with transformers' own fields (`eval_strategy:
steps`, `eval_steps`, `eval_on_start` for step 0; transformers adds the last step). At each evaluation the current
policy answers the split greedily (`eval_temperature` > 0 samples instead) and the answers go through the same
functions as `samtok-rl eval` (`evaluate.generate_records`: parse, decode with the run's mask tokenizer;
`evaluate.score_split`: `samtok_rl.metrics`), so the last evaluation of a run and `samtok-rl eval` of its saved model
give the same numbers.

- Each evaluation writes `<output_dir>/eval/step-<N>/` in `samtok-rl eval`'s layout (`predictions_<split>.jsonl`,
  `eval_settings.json`, `metrics.json`): `samtok-rl inspect` opens any of them.
- The metrics are logged as `eval_<metric>` (transformers' convention: its tracker callbacks show them as
  `eval/<metric>`, and `metrics.jsonl` and the console line write them so too), which is what
  `metric_for_best_model: eval/giou` with `load_best_model_at_end` selects on.
- With `use_vllm` in colocate mode the engine that rollouts use generates, after the same weight sync; otherwise
  (a vLLM server, or vLLM tensor parallelism) the trainer's own model does.
- With several processes each answers a shard of the split; the records are gathered and the metrics computed once
  from all of them, in dataset order, so they equal a single-process evaluation exactly.
- A resumed run does not evaluate its first step again when the checkpoint's log already holds that evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from samtok_rl.errors import UsageError


logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_DIR",
    "LOGGED",
    "LOGGED_NAMES",
    "EvalSplit",
    "best_metric_key",
    "check_eval_recipe",
    "check_eval_schedule",
    "eval_folder",
    "evaluate_policy",
    "load_eval_split",
    "shard_indices",
]

EVAL_DIR = "eval"
SPLIT = "val"  # the label of the predictions file (`predictions_val.jsonl`), as `samtok-rl eval --split val` writes
# The task's metrics as logged (`eval_<name>`), from the keys of `samtok_rl.metrics`' results.
LOGGED = {
    "gres": {"gIoU": "giou", "cIoU": "ciou", "N_acc": "n_acc", "T_acc": "t_acc"},
    "gcg": {"AP50": "ap50", "mIoU": "miou", "Recall": "recall", "METEOR": "meteor", "CIDEr": "cider"},
}
LOGGED_NAMES = {name for names in LOGGED.values() for name in names.values()}
# Also logged: how many samples were answered and how long it took.
RUN_KEYS = ("samples", "seconds")


@dataclass
class EvalSplit:
    """What the evaluations of one run answer and how (built once, before training, by [`load_eval_split`])."""

    task: str
    data: str  # the prepared folder or parquet file, as `eval_settings.json` records it (`samtok-rl inspect` reads it)
    images: str | None
    samples: list
    rows: list[dict]
    think: bool
    max_new_tokens: int
    temperature: float
    batch_size: int
    mask_tokenizer: str
    text_encoder: str
    seed: int

    def settings(self, model: str, backend: str, pixels: dict) -> dict:
        """`eval_settings.json`, as `samtok-rl eval` records it."""
        from samtok_rl.evaluate import GREEDY, eval_settings

        decoding = GREEDY if self.temperature == 0 else (
            f"sampled (temperature={self.temperature}, top_p=1.0, seed {self.seed} + step)"
        )  # fmt: skip
        return eval_settings(self.task, model, self.data, self.images, backend, self.think, None, self.max_new_tokens,
                             pixels.get("min_pixels"), pixels.get("max_pixels"), self.seed, self.mask_tokenizer,
                             decoding)  # fmt: skip


class ResumedStart(TrainerCallback):
    """Whether the trainer is between a resumed run's start and its first step (where `eval_on_start` evaluates)."""

    def __init__(self):
        self.active = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.active = state.global_step > 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = False


@dataclass
class BenchmarkEval:
    """What the trainer evaluates with: the split, the mask tokenizer decoding the answers, GCG's text similarity."""

    split: EvalSplit
    mask_tokenizer: object
    text_similarity: object = None
    resumed_start: ResumedStart = field(default_factory=ResumedStart)

    def rows_dataset(self):
        """A stand-in `eval_dataset` for transformers (which refuses an eval schedule without one): the sample ids."""
        import datasets

        return datasets.Dataset.from_dict({"id": [s.id for s in self.split.samples]})


# ---------------------------------------------------------------------------------------------------------------------
# Checks, before training.


def best_metric_key(name: str) -> str:
    """The key transformers looks `metric_for_best_model` up by: `eval/giou`, `giou` and `eval_giou` all name
    `eval_giou` (transformers adds `eval_` itself, but would look `eval/giou` up as `eval_eval/giou`).

    Example:
    >>> best_metric_key("eval/giou"), best_metric_key("giou"), best_metric_key("eval_giou")
    ('eval_giou', 'eval_giou', 'eval_giou')
    """
    return "eval_" + name.removeprefix("eval/").removeprefix("eval_")


def check_eval_schedule(values) -> None:
    """The evaluation schedule, on the parsed values before `GRPOConfig` is built (its `__post_init__` refuses a bad
    one in a paragraph with a traceback)."""
    if not getattr(values, "load_best_model_at_end", False):
        return
    eval_steps = values.eval_steps if values.eval_steps is not None else values.logging_steps
    if (
        str(values.eval_strategy) == "steps"
        and str(values.save_strategy) == "steps"
        and values.save_steps % eval_steps
    ):
        raise UsageError(
            f"load_best_model_at_end: save_steps {values.save_steps:g} is not a multiple of eval_steps "
            f"{eval_steps:g}, so the best evaluation could have no checkpoint to restore; make save_steps a multiple "
            "of eval_steps"
        )


def check_eval_recipe(script_args, training_args) -> None:
    """The recipe rules of evaluation during training that need neither data nor model; normalises
    `metric_for_best_model` to the key transformers looks up."""
    strategy = str(training_args.eval_strategy.value if hasattr(training_args.eval_strategy, "value") else
                   training_args.eval_strategy)  # fmt: skip
    if script_args.eval_dataset is None:
        if strategy != "no":
            raise UsageError(
                f"eval_strategy is {strategy!r} but no eval_dataset is set: name a prepared split (or sample:gres) "
                'with eval_dataset, or set eval_strategy: "no"'
            )
        return
    if strategy == "no":
        raise UsageError(
            f'eval_dataset {script_args.eval_dataset!r} is set but eval_strategy is "no": set eval_strategy: steps '
            "and eval_steps (eval_on_start: true adds step 0)"
        )
    if script_args.eval_max_samples is not None and script_args.eval_max_samples < 1:
        raise UsageError(f"eval_max_samples must be >= 1 (the first N rows of eval_dataset), got "
                         f"{script_args.eval_max_samples}")  # fmt: skip
    if not (math.isfinite(script_args.eval_temperature) and script_args.eval_temperature >= 0):
        raise UsageError(f"eval_temperature must be >= 0 (0: greedy), got {script_args.eval_temperature}")
    if script_args.eval_batch_size < 1:
        raise UsageError(f"eval_batch_size must be >= 1, got {script_args.eval_batch_size}")
    if training_args.metric_for_best_model is not None:
        training_args.metric_for_best_model = best_metric_key(training_args.metric_for_best_model)


def load_eval_split(script_args, training_args, reward_specs: Sequence[str]) -> EvalSplit | None:
    """Read `eval_dataset` (a prepared folder, `sample:<task>` or an authors' parquet file) and check that the
    rewards' task can score it and that `metric_for_best_model` is one of its logged metrics; `None` when unset."""
    from samtok_rl.checks import check_tasks
    from samtok_rl.configs import SAMPLE_PREFIX
    from samtok_rl.evaluate import make_samples, rows_from_prepared
    from samtok_rl.loading import load_rows, prepared_folder, sample_dir
    from samtok_rl.prepare import prepared_tokenizer
    from samtok_rl.prompts import asks_to_think
    from samtok_rl.runlog import tracker_name

    name = script_args.eval_dataset
    if name is None:
        return None
    source = dataclasses.replace(script_args, dataset=name, max_train_samples=None)
    if not name.endswith(".parquet"):
        source.image_root = None
    try:
        prepared = load_rows(source, training_args)
    except UsageError as err:
        raise UsageError(f"eval_dataset: {err}") from None
    tasks = sorted(set(prepared["task"]))
    if len(tasks) != 1:
        raise UsageError(f"eval_dataset {name!r} mixes tasks {tasks}: evaluate one task's split")
    task = tasks[0]
    try:
        check_tasks(prepared, list(reward_specs))
    except UsageError as err:
        raise UsageError(f"eval_dataset {name!r}: {err}") from None
    rows = rows_from_prepared(prepared, task, name)
    if script_args.eval_max_samples is not None:
        rows = rows.select(range(min(script_args.eval_max_samples, len(rows))))
    asks = {asks_to_think(q) for q in rows["question"]}
    if len(asks) > 1:
        raise UsageError(f"eval_dataset {name!r}: its questions mix asking and not asking for <think>/<answer>")
    think = asks.pop()
    samples = make_samples(task, rows, think)
    wanted = training_args.metric_for_best_model
    logged = [f"eval_{k}" for k in (*LOGGED[task].values(), *RUN_KEYS)]
    if wanted is not None and wanted not in logged:
        raise UsageError(
            f"metric_for_best_model {tracker_name(wanted)!r} is not logged by the {task} evaluation "
            f"(its metrics: {', '.join(map(tracker_name, logged))})"
        )
    if task == "gres" and wanted in ("eval_n_acc", "eval_t_acc"):
        # N-acc is undefined without no-target rows, T-acc without target rows: nothing to select a checkpoint by.
        needed = wanted == "eval_n_acc"
        if needed not in set(rows["no_target"]):
            raise UsageError(
                f"metric_for_best_model {tracker_name(wanted)!r}: eval_dataset {name!r} has no "
                f"{'no-target' if needed else 'target'} rows, so it is undefined; choose eval/giou or eval/ciou"
            )
    if name.startswith(SAMPLE_PREFIX):
        folder = str(sample_dir(task, script_args.mask_tokenizer))
    else:
        folder = str(Path(name).resolve())
    images = (
        str(Path(script_args.image_root).resolve()) if name.endswith(".parquet") and script_args.image_root else None
    )
    # `sample:` needs `mask_tokenizer` (load_rows said so); a folder or parquet file records its own.
    tokenizer = script_args.mask_tokenizer or prepared_tokenizer(prepared_folder(name, script_args.image_root))
    if tokenizer is None:
        raise UsageError(f"eval_dataset {name!r}: its masks need a mask tokenizer to decode the answers; set "
                         "mask_tokenizer")  # fmt: skip
    return EvalSplit(
        task=task, data=folder, images=images, samples=samples, rows=[dict(r, id=s.id) for r, s in zip(rows, samples)],
        think=think, max_new_tokens=script_args.eval_max_new_tokens or training_args.max_completion_length,
        temperature=script_args.eval_temperature, batch_size=script_args.eval_batch_size, mask_tokenizer=tokenizer,
        text_encoder=script_args.eval_text_encoder, seed=training_args.seed,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# One evaluation.


def shard_indices(num_samples: int, process_index: int, num_processes: int) -> list[int]:
    """The samples one process answers: every `num_processes`-th from its index, padded with the last sample so every
    process generates the same number of batches (FSDP and ZeRO-3 generation are collective); the padding is dropped
    after the gather.

    Example:
    >>> shard_indices(5, 0, 2), shard_indices(5, 1, 2)
    ([0, 2, 4], [1, 3, 4])
    """
    per_process = -(-num_samples // num_processes)
    own = list(range(process_index, num_samples, num_processes))
    return own + [num_samples - 1] * (per_process - len(own))


def eval_folder(output_dir: str | Path, step: int) -> Path:
    """Where the evaluation at `step` writes its `samtok-rl eval` folder."""
    return Path(output_dir) / EVAL_DIR / f"step-{step:06d}"


class _Sampled:
    """A generator's `sample` (one completion per question, seeded per evaluation) behind `generate`."""

    def __init__(self, generator, temperature: float, seed: int):
        self.generator, self.temperature, self.seed = generator, temperature, seed

    def strip_tokens(self):
        return self.generator.strip_tokens()

    def generate(self, questions, images):
        outputs = self.generator.sample(questions, images, 1, self.temperature, 1.0, 0, self.seed)
        return [texts[0] for texts in outputs]


def _colocated_engine(trainer):
    """The trainer's colocated vLLM engine, its weights synced to the current step; `None` when generation must use
    the trainer's model (no vLLM, a vLLM server, or tensor parallelism, whose engine answers a group's prompts)."""
    generation = getattr(trainer, "vllm_generation", None)
    if not trainer.use_vllm or generation is None or generation.mode != "colocate":
        return None
    if trainer.args.vllm_tensor_parallel_size > 1:
        return None
    if trainer.state.global_step != trainer._last_loaded_step:  # TRL's own condition before it generates
        generation.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step
    return generation


def _generate_shard(trainer, split: EvalSplit, samples: list, mask_tokenizer) -> tuple[list[dict], str, float]:
    """This process's records, the backend's name and the seconds spent generating."""
    from trl.models import unwrap_model_for_generation

    from samtok_rl.evaluate import generate_records
    from samtok_rl.generation import HFGenerator, VLLMGenerator

    def answer(generator) -> tuple[list[dict], float]:
        if split.temperature > 0:
            generator = _Sampled(generator, split.temperature, split.seed + trainer.state.global_step)
        return generate_records(split.task, samples, generator, mask_tokenizer, split.think, SPLIT, split.batch_size)

    engine = _colocated_engine(trainer)
    if engine is not None:
        if engine.enable_sleep_mode:
            engine.llm.wake_up(tags=["kv_cache"])
        try:
            records, seconds = answer(VLLMGenerator.wrap(engine.llm, trainer.processing_class, split.max_new_tokens,
                                                         split.seed))  # fmt: skip
        finally:
            if engine.enable_sleep_mode:
                engine.llm.sleep(level=2)
                engine._llm_weights_sleeping = True
        return records, "vllm (the colocated engine)", seconds
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
        ) as model,
        trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
    ):
        records, seconds = answer(HFGenerator.wrap(model, trainer.processing_class, split.max_new_tokens))
    return records, "hf (the trainer's model)", seconds


def _recorded(trainer) -> dict[str, float] | None:
    """The metrics of an evaluation already logged at this step (a resumed run's checkpoint holds it)."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and any(k.startswith("eval_") and k[5:] in LOGGED_NAMES for k in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return None


def evaluate_policy(
    trainer, split: EvalSplit, mask_tokenizer, text_similarity=None, resumed_start: bool = False
) -> dict[str, float]:
    """Evaluate the trainer's current policy on `split`: generate (sharded), gather, score, write the step's eval
    folder and log `eval_<metric>`; returns the logged metrics (what transformers' best-model tracking reads).

    `resumed_start`: the call is `eval_on_start` of a resumed run. The uninterrupted run either evaluated this step
    before saving the checkpoint (its log holds the metrics, which are returned) or did not evaluate it at all; either
    way nothing is evaluated, so the resumed curve is the uninterrupted one.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    from samtok_rl.evaluate import score_split

    recorded = _recorded(trainer)
    if recorded is not None or resumed_start:
        logger.info("step %d: the run resumes here; its evaluation is not repeated (%s)", trainer.state.global_step,
                    "the checkpoint holds it" if recorded else "the schedule had none at this step")  # fmt: skip
        return recorded or {}
    start = time.perf_counter()
    accelerator = trainer.accelerator
    indices = shard_indices(len(split.samples), accelerator.process_index, accelerator.num_processes)
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        records, backend, gen_seconds = _generate_shard(trainer, split, [split.samples[k] for k in indices],
                                                        mask_tokenizer)  # fmt: skip
        gathered = gather_object([(k, r) for k, r in zip(indices, records)])
        payload = [None]
        if accelerator.is_main_process:
            by_index = dict(gathered)  # a padded duplicate maps to the same record
            ordered = [by_index[k] for k in range(len(split.samples))]
            metrics = score_split(split.task, ordered, split.rows, text_similarity)
            logs = {f"eval_{name}": _plain(metrics[key]) for key, name in LOGGED[split.task].items() if key in metrics}
            logs["eval_samples"] = len(ordered)
            logs["eval_seconds"] = round(time.perf_counter() - start, 3)
            _write_folder(trainer, split, ordered, metrics, backend, gen_seconds, logs["eval_seconds"])
            payload = [logs]
        broadcast_object_list(payload, from_process=0)
        logs = payload[0]
        # Logged in eval mode: TRL's `log` then merges (and clears) only its eval-mode metrics, none here, and leaves
        # the training metrics of the step, and the rollouts file, alone. Its completions table (`log_completions`)
        # would repeat the last training step's completions under this entry: it is held back for this call.
        log_completions, trainer.log_completions = trainer.log_completions, False
        try:
            trainer.log(dict(logs))
        finally:
            trainer.log_completions = log_completions
    finally:
        if was_training:
            trainer.model.train()
    trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, logs)
    return logs


def _plain(value):
    # JSON loggers reject NaN (N-acc of a split without no-target rows): logged as None.
    value = float(value)
    return value if math.isfinite(value) else None


def _write_folder(
    trainer, split: EvalSplit, records, metrics, backend: str, gen_seconds: float, seconds: float
) -> None:
    """The step's `samtok-rl eval` folder: settings, predictions (dataset order) and metrics."""
    from samtok_rl.evaluate import METRICS_FILE, SETTINGS_FILE, _json_default

    folder = eval_folder(trainer.args.output_dir, trainer.state.global_step)
    folder.mkdir(parents=True, exist_ok=True)
    try:  # Qwen processors keep their pixel bounds as the size's edges (as `samtok-rl eval` reads them back)
        size = trainer.processing_class.image_processor.size
        pixels = {"min_pixels": int(size["shortest_edge"]), "max_pixels": int(size["longest_edge"])}
    except (AttributeError, KeyError, TypeError):
        pixels = {}
    model = f"{trainer.args.output_dir} at step {trainer.state.global_step}"
    settings = split.settings(model, backend, pixels)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
    # Written whole, not appended: a re-run of the same step (a resumed run that had not saved it) replaces it.
    (folder / f"predictions_{SPLIT}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = {"settings": settings, "splits": {SPLIT: metrics},
              "run": {"generated": len(records), "resumed": 0, "samples": len(records),
                      "generation_seconds": round(gen_seconds, 3), "total_seconds": seconds,
                      "step": trainer.state.global_step}}  # fmt: skip
    (folder / METRICS_FILE).write_text(json.dumps(result, indent=1, default=_json_default))


def build_mask_tokenizer_for(split: EvalSplit, device: str):
    """The mask tokenizer that decodes the answers: the one the split's GT codes were made with (or the recipe's)."""
    from samtok_rl.mask_tokenizer import build_mask_tokenizer, recorded_mask_tokenizer

    return build_mask_tokenizer(*recorded_mask_tokenizer(split.mask_tokenizer), device, drop_memory_modules=True)


def build_text_similarity(split: EvalSplit | None, device: str):
    """GCG Recall's phrase similarity (BERT), loaded before training so a missing encoder fails first; else None."""
    if split is None or split.task != "gcg":
        return None
    from samtok_rl.metrics import BertTextSimilarity

    return BertTextSimilarity(split.text_encoder, device=device)
