"""Dynamic sampling beside plain GRPO on the demo setting, for the same number of generated completions.

    python benchmarks/dynamic_sampling.py [--seeds 0 1 2] [--steps 20]

Both arms start from the demo's warm start (`samtok_rl.demo`, seed 0, cached) and train with `recipes/demo.yaml`
(GRES preset + IoU reward, 2 prompts x 4 completions per step) with the given training seed. Plain GRPO runs `--steps`
steps; dynamic sampling runs until it has generated as many prompts as plain GRPO did (its extra rounds count), so it
takes fewer optimizer steps. The gain of a run is the mean total reward (TRL's `reward`: every generated completion)
of its last 10 logged steps minus its first 10 (fewer when the run is shorter than 20 steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from samtok_rl import demo, grpo  # noqa: E402
from samtok_rl.trainer import SamtokGRPOTrainer  # noqa: E402


class BudgetTrainer(SamtokGRPOTrainer):
    """Stops once `budget` prompts were generated (dynamic sampling's extra rounds included)."""

    budget = 0

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            rounds = self._metrics["train"].get("dynamic_sampling/prompts_generated")
            self.generated = getattr(self, "generated", 0) + (rounds[-1] if rounds else len(inputs) // 4)
            if self.generated >= self.budget:
                self.control.should_training_stop = True
        return output


def gain(trainer) -> tuple[float, int, int]:
    steps = [e for e in trainer.state.log_history if "reward" in e]
    k = min(10, len(steps) // 2)
    first, last = [e["reward"] for e in steps[:k]], [e["reward"] for e in steps[-k:]]
    return statistics.mean(last) - statistics.mean(first), len(steps), getattr(trainer, "generated", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    recipe = ["--config", str(demo.DEMO_RECIPE)]
    warm = demo.warm_start_model(*grpo.parse_args(recipe), demo.WARM_START_STEPS, demo.WARM_START_LR)
    budget = args.steps * 2  # prompts: 2 per step in the demo recipe
    grpo.SamtokGRPOTrainer = BudgetTrainer
    BudgetTrainer.budget = budget
    rows = []
    for seed in args.seeds:
        common = [*recipe, "--model_name_or_path", str(warm), "--seed", str(seed), "--save_strategy", "no",
                  "--disable_tqdm", "true", "--rollout_prompts", "0"]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            plain = gain(grpo.main([*common, "--output_dir", f"{tmp}/plain", "--max_steps", str(args.steps)]))
            dynamic_trainer = grpo.main([*common, "--output_dir", f"{tmp}/ds", "--max_steps", str(10 * args.steps),
                                         "--dynamic_sampling"])  # fmt: skip
            dynamic = gain(dynamic_trainer)
            kept = [e["dynamic_sampling/informative_fraction"] for e in dynamic_trainer.state.log_history
                    if "dynamic_sampling/informative_fraction" in e]  # fmt: skip
        rows.append((seed, plain, dynamic, statistics.mean(kept)))
    print(f"\nsame budget: {budget} generated prompts ({budget * 4} completions) per run\n")
    print("| seed | plain GRPO: steps | gain | dynamic sampling: steps | informative groups | gain |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seed, plain, dynamic, kept in rows:
        print(f"| {seed} | {plain[1]} | {plain[0]:+.3f} | {dynamic[1]} | {kept:.0%} | {dynamic[0]:+.3f} |")
    plain_gains, dynamic_gains = [r[1][0] for r in rows], [r[2][0] for r in rows]
    spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    print(f"| mean ± sd | | {statistics.mean(plain_gains):+.3f} ± {spread(plain_gains):.3f} | | | "
          f"{statistics.mean(dynamic_gains):+.3f} ± {spread(dynamic_gains):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
