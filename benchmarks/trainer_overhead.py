"""Overhead of the samtok-rl entry point over a bare `GRPOTrainer` (same tiny model, data, rewards and config).

    python benchmarks/trainer_overhead.py [--steps 8] [--repeats 3]

Each repeat runs both variants back to back (alternating which goes first) and times setup + `train()`; the ratio of
medians is printed (goal: <= 1.05). The entry point adds the start-up checks (reward resolution, dataset columns,
mask-token round trip) and its thin trainer subclass; the bare variant gets the same frozen vision tower and the same
tokenizer-bound rewards, so only the entry point's own cost differs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# Running a script puts its folder first on sys.path, where benchmarks/rewards.py would shadow the `rewards` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


class FixedCodes:
    """Deterministic stand-in for the mask tokenizer in data preparation (no SAM2 forward)."""

    def encode(self, image, masks):
        k = np.arange(len(masks), dtype=np.int64)
        return np.stack([(k * 37 + 11) % 256, (k * 91 + 5) % 256], axis=1)


def args_for(data: str, out: str, steps: int) -> list[str]:
    return [
        "--model_name_or_path", "tiny:qwen2_5_vl", "--dataset", data, "--reward_preset", "gres",
        "--use_cpu", "--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none",
        "--max_steps", str(steps), "--num_generations", "2", "--per_device_train_batch_size", "4",
        "--max_completion_length", "16", "--learning_rate", "1e-4", "--logging_steps", "1",
        "--save_strategy", "no", "--seed", "0", "--output_dir", out, "--disable_tqdm", "true",
    ]  # fmt: skip


def run_entry_point(argv: list[str]) -> float:
    from samtok_rl import grpo

    start = time.perf_counter()
    script_args, training_args, model_args = grpo.parse_args(argv)
    grpo.main(script_args, training_args, model_args)
    return time.perf_counter() - start


def run_bare(argv: list[str]) -> float:
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOTrainer

    import rewards
    from samtok_rl import grpo
    from samtok_rl.prepare import load_prepared

    start = time.perf_counter()
    script_args, training_args, model_args = grpo.parse_args(argv)
    path = grpo.resolve_model_path(model_args.model_name_or_path)
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=model_args.dtype)
    model.model.visual.requires_grad_(False)
    import datasets

    dataset = load_prepared(script_args.dataset).cast_column("image", datasets.Image())
    funcs = [rewards.bind_tokenizer(rewards.resolve(name), processor) for name in rewards.PRESETS["gres"]]
    trainer = GRPOTrainer(
        model=model, reward_funcs=funcs, args=training_args, train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from samtok_rl.prepare import prepare, read_source
    from samtok_rl.tiny import build_tiny_vlm

    build_tiny_vlm("qwen2_5_vl")
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "gres")
        prepare(read_source("gres", sample=True), "gres", data, FixedCodes, tokenizer_id="fixed", progress=False)
        # Warm-up (imports, first-call compilation) so neither variant pays it in the timed runs.
        run_bare(args_for(data, str(Path(tmp) / "warm"), 1))
        times = {"entry point": [], "bare GRPOTrainer": []}
        for r in range(args.repeats):
            order = [("entry point", run_entry_point), ("bare GRPOTrainer", run_bare)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                times[name].append(fn(args_for(data, str(Path(tmp) / f"{name[:4]}{r}"), args.steps)))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:<18} median {medians[name]:6.2f} s  runs {', '.join(f'{x:.2f}' for x in t)}")
    print(f"ratio entry point / bare: {medians['entry point'] / medians['bare GRPOTrainer']:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
