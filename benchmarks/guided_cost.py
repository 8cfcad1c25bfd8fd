"""What guided groups cost per GRPO step, beside plain GRPO, on the miniature.

    python benchmarks/guided_cost.py --miniature outputs/miniature [--steps 30]

`--miniature` is a folder `make miniature` wrote (its SFT warm start `sft/` and its GRPO prompts `prepared/rl/`).
Each arm trains `--steps` steps from that warm start with `recipes/miniature/grpo.yaml` (4 prompts x 8 completions,
no evaluations) and the same seed, one after the other in this process: plain GRPO, guided groups (plain loss) and
guided groups with LUFFY's shaping. Per arm: seconds per step (transformers' `train_runtime` / steps, the first step
included) and the mean share of groups guided.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml


sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from samtok_rl import grpo  # noqa: E402
from samtok_rl.miniature import RECIPE  # noqa: E402


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
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "grpo.yaml"
        config.write_text(yaml.safe_dump(recipe))
        for name, flags in ARMS.items():
            trainer = grpo.main(["--config", str(config), "--model_name_or_path", str(folder / "sft"),
                                 "--dataset", str(folder / "prepared" / "rl"), "--output_dir", str(Path(tmp) / "run"),
                                 "--max_steps", str(args.steps), "--seed", str(args.seed), *flags])  # fmt: skip
            runtime = next(e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e)
            guided = [e["guided/fraction"] for e in trainer.state.log_history if "guided/fraction" in e]
            rows.append((name, runtime / args.steps, statistics.mean(guided) if guided else None))
    base = rows[0][1]
    print("\n| arm | s/step | vs plain | groups guided |\n|---|---:|---:|---:|")
    for name, per_step, guided in rows:
        share = "-" if guided is None else f"{guided:.0%}"
        print(f"| {name} | {per_step:.2f} | {per_step / base - 1:+.0%} | {share} |")


if __name__ == "__main__":
    main()
