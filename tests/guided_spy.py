"""`python tests/guided_spy.py <train args>` (or under `accelerate launch`): `samtok-rl train` whose trainer writes, on
every process, what the guided completions get to `$SAMTOK_SPY_DIR/guided-<rank>.jsonl` (tests/test_guided.py):

- per generation round: each row's guided flag, decoded completion, its vLLM importance-sampling ratio (min, max over
  its tokens) and whether its sampling log-probabilities are missing;
- per loss call: for the guided rows, the ratio `pi / pi_old` TRL's loss will use (the policy's log-probabilities
  recomputed before the loss) and LUFFY's `gamma * pi / (pi + gamma)^2`; for the other rows, the largest |ratio - 1|.
"""

import json
import os
import sys
from pathlib import Path

import torch

from samtok_rl import grpo
from samtok_rl.trainer import FORWARD_KEYS, SamtokGRPOTrainer


class GuidedSpy(SamtokGRPOTrainer):
    def _write(self, record: dict) -> None:
        path = Path(os.environ["SAMTOK_SPY_DIR"]) / f"guided-{self.accelerator.process_index}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps({"step": self.state.global_step, **record}) + "\n")

    def _generate_round(self, inputs):
        output = super()._generate_round(inputs)
        if not self.model.training:
            return output
        mask = output["completion_mask"].bool()
        rows = []
        for i in range(len(mask)):
            ids = output["completion_ids"][i][mask[i]].tolist()
            row = {"guided": bool(output["guided"][i]), "text": self.processing_class.decode(ids), "ids": ids,
                   "solution": inputs[i]["solution"]}  # fmt: skip
            if "importance_sampling_ratio" in output:
                ratio = output["importance_sampling_ratio"][i]
                ratio = ratio[mask[i]] if ratio.shape[-1] == mask.shape[1] else ratio
                row["is_ratio"] = [ratio.min().item(), ratio.max().item()]
                row["sampling_logps_missing"] = bool(output["sampling_per_token_logps"][i][mask[i]].isnan().all())
            rows.append(row)
        self._write({"round": rows})
        return output

    def _compute_loss(self, model, inputs):
        old = inputs.get("old_per_token_logps")
        if old is not None and bool(inputs["guided"].any()):
            with torch.no_grad():
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
                    torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
                    inputs["completion_ids"].size(1), **{k: inputs.get(k) for k in FORWARD_KEYS},
                )  # fmt: skip
            mask = inputs["completion_mask"].bool()
            guided = inputs["guided"]
            ratio = torch.exp(logps - old)
            pi, gamma = torch.exp(logps), self.guidance.gamma
            shaped = gamma * pi / (pi + gamma) ** 2
            g_mask = mask & guided.unsqueeze(1)
            o_mask = mask & ~guided.unsqueeze(1)
            self._write({"loss": {
                "guided_ratio_max": ratio[g_mask].max().item(),
                "guided_ratio_vs_shaped": (ratio - shaped)[g_mask].abs().max().item(),
                "guided_ratio_vs_one": (ratio - 1)[g_mask].abs().max().item(),
                "others_ratio_vs_one": (ratio - 1)[o_mask].abs().max().item() if o_mask.any() else 0.0,
            }})  # fmt: skip
        return super()._compute_loss(model, inputs)


if __name__ == "__main__":
    grpo.SamtokGRPOTrainer = GuidedSpy
    grpo.main(sys.argv[1:])
