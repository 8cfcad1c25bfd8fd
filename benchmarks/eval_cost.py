"""What the benchmark evaluation during training costs: one evaluation of N samples against one GRPO step.

    python benchmarks/eval_cost.py                          # the demo setting: 10 steps, evaluations at 0, 5, 10
    python benchmarks/eval_cost.py --run_dir outputs/miniature/grpo   # read an existing run's metrics.jsonl

Without `--run_dir` it trains the demo's warm start with `recipes/demo.yaml` (2 prompts x 4 completions per step,
completions up to 128 tokens) and evaluates the sample's 15 GRES rows (greedy, up to 128 new tokens) at steps 0, 5 and
10. Each evaluation logs `eval/seconds` (generate, decode, score, write its folder) and `eval/samples`; each step logs
`step_time`. The table: mean step time, mean evaluation time, time per evaluated sample, and the evaluation's cost in
steps (how many GRPO steps one evaluation costs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def measure(run_dir: Path) -> dict:
    """The step and evaluation timings a run logged."""
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e["step_time"] for e in entries if "step_time" in e]
    evals = [e for e in entries if "eval/seconds" in e]
    if not steps or not evals:
        raise SystemExit(f"{run_dir}/metrics.jsonl holds no step_time or no eval/seconds: not a run that evaluated")
    eval_seconds = statistics.mean(e["eval/seconds"] for e in evals)
    samples = evals[0]["eval/samples"]
    step = statistics.mean(steps)
    return {"run": str(run_dir), "steps": len(steps), "step_s": step, "evaluations": len(evals), "samples": samples,
            "eval_s": eval_seconds, "per_sample_s": eval_seconds / samples, "eval_in_steps": eval_seconds / step}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", type=Path, default=None, help="Read this run instead of training one.")
    args = parser.parse_args()
    if args.run_dir is None:
        from samtok_rl import demo, grpo

        warm = demo.warm_start_model(*grpo.parse_args(["--config", str(demo.DEMO_RECIPE)]), demo.WARM_START_STEPS,
                                     demo.WARM_START_LR)  # fmt: skip
        out = Path(tempfile.mkdtemp(prefix="eval_cost_")) / "run"
        grpo.main(["--config", str(demo.DEMO_RECIPE), "--model_name_or_path", str(warm), "--output_dir", str(out),
                   "--max_steps", "10", "--eval_steps", "5", "--save_strategy", "no", "--disable_tqdm", "true"])  # fmt: skip
        args.run_dir = out
    row = measure(args.run_dir)
    print("| run | steps | s/step | evaluations | samples | s/evaluation | s/sample | one evaluation = steps |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {row['run']} | {row['steps']} | {row['step_s']:.2f} | {row['evaluations']} | {row['samples']} | "
          f"{row['eval_s']:.2f} | {row['per_sample_s']:.3f} | {row['eval_in_steps']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
