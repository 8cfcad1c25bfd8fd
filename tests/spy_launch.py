"""`accelerate launch tests/spy_launch.py <train args>`: `samtok-rl train` whose trainer writes, on every process,
the shapes of each batch dynamic sampling builds to `$SAMTOK_SPY_DIR/shapes-<rank>.jsonl` (test_dynamic_sampling)."""

import json
import os
import sys
from pathlib import Path

import torch

from samtok_rl import grpo
from samtok_rl.trainer import SamtokGRPOTrainer


class ShapeSpy(SamtokGRPOTrainer):
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            metrics = self._metrics["train"]
            record = {"step": self.state.global_step, "extra_rounds": metrics["dynamic_sampling/extra_rounds"][-1],
                      "shapes": {k: list(v.shape) for k, v in output.items() if isinstance(v, torch.Tensor)}}  # fmt: skip
            path = Path(os.environ["SAMTOK_SPY_DIR"]) / f"shapes-{self.accelerator.process_index}.jsonl"
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return output


if __name__ == "__main__":
    grpo.SamtokGRPOTrainer = ShapeSpy
    grpo.main(sys.argv[1:])
