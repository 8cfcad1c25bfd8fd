"""The CPU demo: `make demo` / `python -m samtok_rl.demo [--field value ...]`.

One command on a fresh machine: builds the tiny Qwen2.5-VL and the seeded micro mask tokenizer, prepares the bundled
real-photo sample for GRES, warm-starts the tiny model with a short SFT on the sample's reference answers (the "cold
start" SAMTok's RL begins from; `samtok_rl.warmstart`, cached after the first run), then trains a few GRPO steps on
CPU with the GRES preset plus the pixel-IoU reward (`recipes/demo.yaml`), saves a checkpoint, prints the reward
components at the first and the last GRPO step beside the benchmark's gIoU / cIoU / N-acc before GRPO and at the end
(`samtok_rl.training_eval`), and builds the run's HTML report (`samtok-rl inspect`).

Extra arguments override the recipe, e.g. `--max_steps 8` or `--resume_from_checkpoint outputs/demo/checkpoint-4`;
`--warm_start_steps N` sets the SFT steps (0 = GRPO from the random model: every group then has zero reward variance
and nothing learns).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import GRPOConfig, ModelConfig

from samtok_rl import grpo, loading
from samtok_rl.cli import config_parser, report_errors
from samtok_rl.configs import SamtokScriptArguments
from samtok_rl.inspector import InspectConfig, inspect_folder
from samtok_rl.logs import setup_logging
from samtok_rl.tiny import resolve_model_path
from samtok_rl.warmstart import warm_start, warm_start_dir


DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"

# The warm start of the ~1 M-parameter tiny VLM: after 100 steps (~50 epochs of the 15 sample rows) greedy decoding
# reproduces the reference answers, while sampling at temperature 1 still errs on some tokens, so GRPO groups have
# reward variance to learn from.
WARM_START_STEPS = 100
WARM_START_LR = 5e-3
WARM_START_BATCH = 8

# The per-step values the summary shows: reward components, then what tells whether GRPO has a signal.
_SIGNALS = ("reward", "reward_std", "frac_reward_zero_std", "loss", "grad_norm", "gres/pred_masks")


@dataclass
class DemoArguments:
    """The demo's own fields (the rest of the command line is the GRPO recipe's)."""

    warm_start_steps: int = field(
        default=WARM_START_STEPS, metadata={"help": "SFT steps before GRPO (0: GRPO from the random model)."}
    )
    warm_start_learning_rate: float = field(default=WARM_START_LR, metadata={"help": "Peak SFT learning rate."})


def make_demo_parser():
    """The demo's parser: [`DemoArguments`] plus every training-recipe field, `recipes/demo.yaml` as the defaults."""
    return config_parser([DemoArguments, SamtokScriptArguments, GRPOConfig, ModelConfig], prog="samtok-rl demo")


def warm_start_model(script_args, training_args, model_args, steps: int, learning_rate: float) -> Path:
    """Warm-start the recipe's model on the recipe's dataset (cached by `warmstart.warm_start_dir`)."""
    base = resolve_model_path(model_args.model_name_or_path)
    dataset = loading.load_dataset(script_args, training_args)
    out = warm_start_dir(base, dataset, steps, learning_rate, WARM_START_BATCH, seed=training_args.seed)
    return warm_start(
        base, dataset, out, steps=steps, learning_rate=learning_rate, batch_size=WARM_START_BATCH,
        seed=training_args.seed,
    )  # fmt: skip


def step_logs(trainer) -> list[dict[str, float]]:
    """The per-step GRPO log entries (those carrying a `reward`), in order."""
    return [entry for entry in trainer.state.log_history if "reward" in entry]


def benchmark_lines(trainer) -> list[str]:
    """The benchmark's metrics (gIoU / cIoU / N-acc) at the first and the last evaluation, when the run evaluated."""
    from samtok_rl.training_eval import LOGGED

    evaluations = [e for e in trainer.state.log_history if "eval_giou" in e]
    if not evaluations:
        return []
    shown = [evaluations[0]] + evaluations[-1:] * (len(evaluations) > 1)
    head = f"eval split: {evaluations[0]['eval_samples']} rows"
    lines = [f"  {head:<26}" + "".join(f"{'step ' + str(e['step']):>12}" for e in shown)]
    for key, name in LOGGED["gres"].items():
        if key == "T_acc":
            continue
        cells = [f"{e[f'eval_{name}']:>12.2f}" if e.get(f"eval_{name}") is not None else f"{'-':>12}" for e in shown]
        lines.append(f"  {key.replace('_', '-'):<26}" + "".join(cells))
    return lines


def summary(trainer, seconds: float, warm: Path | None = None) -> str:
    """The reward components (and the GRPO signal) at the first and the last step and averaged over each half of
    the run (one step holds only a couple of prompts, so single steps are noisy), wall time and checkpoints."""
    steps = step_logs(trainer)
    start = f"warm start {warm}, then " if warm is not None else "the random model, "
    lines = [f"samtok-rl demo: {start}{trainer.state.global_step} GRPO steps in {seconds:.0f} s"]
    if steps:
        columns = {f"step {steps[0]['step']}": steps[:1]}
        if len(steps) > 1:
            columns[f"step {steps[-1]['step']}"] = steps[-1:]
        if len(steps) >= 4:
            half = len(steps) // 2
            columns[f"steps {steps[0]['step']}-{steps[half - 1]['step']}"] = steps[:half]
            columns[f"steps {steps[half]['step']}-{steps[-1]['step']}"] = steps[half:]
        keys = sorted({k for e in steps for k in e if k.startswith("rewards/") and k.endswith("/mean")})
        keys += [k for k in _SIGNALS if any(k in e for e in steps)]
        lines.append(f"  {'(mean over the steps)':<26}" + "".join(f"{c:>12}" for c in columns))
        for key in keys:
            cells = []
            for entries in columns.values():
                values = [e[key] for e in entries if key in e]
                cells.append(f"{sum(values) / len(values):>12.3f}" if values else f"{'-':>12}")
            lines.append(f"  {key.removeprefix('rewards/').removesuffix('/mean'):<26}" + "".join(cells))
    lines += benchmark_lines(trainer)
    out = Path(trainer.args.output_dir)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    lines.append(f"  model: {out}")
    if checkpoints:
        lines.append(
            f"  last checkpoint: {checkpoints[-1]} (continue with --resume_from_checkpoint {checkpoints[-1]})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None):
    """Warm-start, run the demo recipe (with `argv` overrides), print the summary; returns the GRPO trainer."""
    start = time.perf_counter()
    if not DEMO_RECIPE.is_file():
        raise SystemExit(f"{DEMO_RECIPE} not found: run the demo from a samtok-rl source checkout")
    argv = list(sys.argv[1:] if argv is None else argv)
    demo_args, script_args, training_args, model_args = make_demo_parser().parse_args_and_config(
        ["--config", str(DEMO_RECIPE), *argv]
    )
    setup_logging()
    out = Path(training_args.output_dir)
    default_out = yaml.safe_load(DEMO_RECIPE.read_text())["output_dir"]
    if training_args.resume_from_checkpoint is None and out.is_dir() and out == Path(default_out):
        # `make demo` starts over in its own folder each time; any other output_dir follows the training rule (a
        # used folder is refused, never replaced).
        print(f"samtok-rl demo: replacing the previous demo run in {out}")
        shutil.rmtree(out)
    warm = None
    if demo_args.warm_start_steps > 0:
        warm = warm_start_model(
            script_args, training_args, model_args, demo_args.warm_start_steps, demo_args.warm_start_learning_rate
        )
        model_args.model_name_or_path = str(warm)
    trainer = grpo.main(script_args, training_args, model_args)
    seconds = time.perf_counter() - start
    report = inspect_folder(InspectConfig(folder=training_args.output_dir))
    print(summary(trainer, seconds, warm))
    print(f"  report: {report['index']} (rollouts with their masks, reward curves; open it in a browser)")
    return trainer


if __name__ == "__main__":
    sys.exit(report_errors("demo", main))
