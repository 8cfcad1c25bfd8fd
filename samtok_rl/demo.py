"""The CPU demo: `make demo` / `python -m samtok_rl.demo [--field value ...]`.

One command on a fresh machine: builds the tiny Qwen2.5-VL and the seeded micro mask tokenizer, prepares the bundled
real-photo sample for GRES, trains a few GRPO steps on CPU with the GRES preset plus the pixel-IoU reward
(`recipes/demo.yaml`), saves a checkpoint and prints a summary. Extra arguments override the recipe, e.g.
`--max_steps 8` or `--resume_from_checkpoint outputs/demo/checkpoint-2`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from samtok_rl import grpo


DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def summary(trainer, seconds: float) -> str:
    """A few lines: steps, mean of each logged reward component, wall time and where the checkpoint is."""
    lines = [f"samtok-rl demo: {trainer.state.global_step} GRPO steps in {seconds:.0f} s"]
    for key, value in sorted(grpo.reward_summary(trainer).items()):
        if key.endswith("/mean") or key == "reward":
            lines.append(f"  {key.removesuffix('/mean'):<40} {value:.3f}")
    out = Path(trainer.args.output_dir)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    lines.append(f"  model: {out}")
    if checkpoints:
        lines.append(
            f"  last checkpoint: {checkpoints[-1]} (continue with --resume_from_checkpoint {checkpoints[-1]})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo recipe (with `argv` overrides) and print the summary."""
    start = time.perf_counter()
    if not DEMO_RECIPE.is_file():
        raise SystemExit(f"{DEMO_RECIPE} not found: run the demo from a samtok-rl source checkout")
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer = grpo.main(["--config", str(DEMO_RECIPE), *argv])
    print(summary(trainer, time.perf_counter() - start))


if __name__ == "__main__":
    main()
