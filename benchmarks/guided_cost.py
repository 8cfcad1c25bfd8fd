"""What guided groups cost per GRPO step, beside plain GRPO, on the miniature.

    python benchmarks/guided_cost.py --miniature outputs/miniature [--steps 30]

`--miniature` is a folder `make miniature` wrote (its SFT warm start `sft/` and its GRPO prompts `prepared/rl/`).
Each arm trains `--steps` steps from that warm start with `recipes/miniature/grpo.yaml` (4 prompts x 8 completions,
no evaluations) and the same seed, one after the other in this process: plain GRPO, guided groups (plain loss) and
guided groups with LUFFY's shaping. Per arm: seconds per step (transformers' `train_runtime` / steps, the first step
included), the part of it spent in the guided groups' own work (scoring the sampled and the reference answers with
the task reward, the swap, and the trainer's forward pass over the batch for their log-probabilities and the shaping),
and the mean share of groups guided. The arms' policies drift apart, so their generation lengths and step times
differ by more than that own work: it is timed directly.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from samtok_rl import grpo  # noqa: E402
from samtok_rl.miniature import RECIPE  # noqa: E402
from samtok_rl.trainer import SamtokGRPOTrainer  # noqa: E402


class TimedTrainer(SamtokGRPOTrainer):
    """Adds up the seconds spent in the guided groups' own methods."""

    guided_seconds = 0.0

    def _guide_groups(self, completion_ids, logprobs):
        start = time.perf_counter()
        try:
            return super()._guide_groups(completion_ids, logprobs)
        finally:
            TimedTrainer.guided_seconds += time.perf_counter() - start

    def _after_guidance(self, output):
        start = time.perf_counter()
        try:
            return super()._after_guidance(output)
        finally:
            TimedTrainer.guided_seconds += time.perf_counter() - start


ARMS = {
    "plain GRPO": [],
    "guided (plain loss)": ["--guided_groups", "true"],
    "guided + LUFFY shaping": ["--guided_groups", "true", "--guided_shaping", "luffy"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--miniature", required=True, help="A folder written by `make miniature`.")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = Path(args.miniature)
    recipe = {k: v for k, v in yaml.safe_load(RECIPE.read_text()).items() if not k.startswith("eval_")}
    rows = []
    grpo.SamtokGRPOTrainer = TimedTrainer
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "grpo.yaml"
        config.write_text(yaml.safe_dump(recipe))
        for name, flags in ARMS.items():
            TimedTrainer.guided_seconds = 0.0
            trainer = grpo.main(["--config", str(config), "--model_name_or_path", str(folder / "sft"),
                                 "--dataset", str(folder / "prepared" / "rl"), "--output_dir", str(Path(tmp) / f"run{len(rows)}"),
                                 "--max_steps", str(args.steps), "--seed", str(args.seed), *flags])  # fmt: skip
            runtime = next(e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e)
            guided = [e["guided/fraction"] for e in trainer.state.log_history if "guided/fraction" in e]
            own = TimedTrainer.guided_seconds / args.steps
            rows.append((name, runtime / args.steps, own, statistics.mean(guided) if guided else None))
    base = rows[0][1]
    print("\n| arm | s/step | vs plain | guided groups' own work, s/step | groups guided |\n|---|---:|---:|---:|---:|")
    for name, per_step, own, guided in rows:
        share = "-" if guided is None else f"{guided:.0%}"
        print(f"| {name} | {per_step:.2f} | {per_step / base - 1:+.0%} | {own:.3f} ({own / per_step:.0%}) | {share} |")


if __name__ == "__main__":
    main()
