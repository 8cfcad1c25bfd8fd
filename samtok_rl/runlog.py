"""What a training run logs locally: one compact console line per logged step, and every metric in `metrics.jsonl`.

Transformers prints each log entry as a Python dict (about 2 KB per GRPO step, unreadable when piped). The callbacks
here replace that printing with one line per step (step, total reward, each reward component's mean, KL, the
zero-std fraction, step time) and append the whole entry to `<output_dir>/metrics.jsonl`, which `samtok-rl inspect`
plots. The configured tracker (trackio, tensorboard, wandb) still receives every metric through its own callback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


__all__ = [
    "METRICS_FILE",
    "CompactPrinterCallback",
    "CompactProgressCallback",
    "MetricsFileCallback",
    "step_line",
    "tracker_name",
]

METRICS_FILE = "metrics.jsonl"


def _short(name: str) -> str:
    """`rewards/gres_mask_reward/mean` -> `gres_mask`."""
    return name.removeprefix("rewards/").removesuffix("/mean").removesuffix("_reward")


def tracker_name(key: str) -> str:
    """A log key as the trackers show it: transformers' `eval_` prefix becomes `eval/` (its tracker callbacks'
    `rewrite_logs`), so `metrics.jsonl`, the console and the tracker use one name.

    >>> tracker_name("eval_giou"), tracker_name("reward")
    ('eval/giou', 'reward')
    """
    return "eval/" + key.removeprefix("eval_") if key.startswith("eval_") else key


def _num(value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.3g}" if abs(value) >= 1000 or (value != 0 and abs(value) < 0.01) else f"{value:.3f}"


def step_line(logs: dict, step: int, max_steps: int | None = None) -> str:
    """One line for a log entry: a GRPO step's reward summary, else the entry's numbers in order.

    Example:

    >>> step_line({"reward": 2.5, "reward_std": 0.4, "rewards/format_reward/mean": 1.0, "kl": 0.002,
    ...            "frac_reward_zero_std": 0.25, "step_time": 1.5, "loss": 0.1}, 3, 20)
    'step 3/20  reward 2.500 ± 0.400  [format 1.000]  kl 0.002  zero-std 0.250  1.50 s/step'
    >>> step_line({"reward": 3.0, "frac_reward_zero_std": 0.0, "guided/fraction": 0.5}, 4, 20)
    'step 4/20  reward 3.000  kl -  zero-std 0.000  guided 0.500'
    >>> step_line({"train_runtime": 61.2, "train_loss": 0.01}, 20, 20)
    'step 20/20  train_runtime 61.200  train_loss 0.010'
    >>> step_line({"eval_giou": 41.5, "eval_ciou": 38.25}, 20, 20)
    'step 20/20  eval/giou 41.500  eval/ciou 38.250'

    """
    head = f"step {step}/{max_steps}" if max_steps else f"step {step}"
    if "reward" not in logs:
        return "  ".join([head] + [f"{tracker_name(k)} {_num(v)}" for k, v in logs.items() if k != "total_flos"])
    parts = [
        head,
        f"reward {_num(logs['reward'])}" + (f" ± {_num(logs['reward_std'])}" if "reward_std" in logs else ""),
    ]
    components = [
        f"{_short(k)} {_num(v)}" for k, v in logs.items() if k.startswith("rewards/") and k.endswith("/mean")
    ]
    if components:
        parts.append("[" + ", ".join(components) + "]")
    parts.append(f"kl {_num(logs['kl'])}" if "kl" in logs else "kl -")  # TRL logs KL only when beta > 0
    if "frac_reward_zero_std" in logs:
        parts.append(f"zero-std {_num(logs['frac_reward_zero_std'])}")
    if "guided/fraction" in logs:  # guided groups (samtok_rl.guided): the share of groups given the reference answer
        parts.append(f"guided {_num(logs['guided/fraction'])}")
    if "step_time" in logs:
        parts.append(f"{logs['step_time']:.2f} s/step")
    return "  ".join(parts)


class CompactProgressCallback(ProgressCallback):
    """Transformers' progress bar, with [`step_line`] written under it instead of the log dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(step_line(logs, state.global_step, state.max_steps))


class CompactPrinterCallback(PrinterCallback):
    """Transformers' printer for `disable_tqdm` runs, printing [`step_line`] instead of the log dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(step_line(logs, state.global_step, state.max_steps), flush=True)


class MetricsFileCallback(TrainerCallback):
    """Appends every log entry, with its step, to `<output_dir>/metrics.jsonl` (main process only).

    A resumed run appends after the interrupted run's lines, so a step can appear twice: readers keep the last one.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        path = Path(args.output_dir) / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"step": state.global_step, **{tracker_name(k): v for k, v in logs.items() if k != "total_flos"}}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, allow_nan=True) + "\n")


def use_compact_logs(trainer) -> None:
    """Swap the trainer's dict-printing callbacks for the compact ones and add the metrics file."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgressCallback)
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(CompactPrinterCallback)
    trainer.add_callback(MetricsFileCallback)
