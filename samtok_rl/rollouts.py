"""Rollouts on disk: what the policy wrote, as the rewards read and scored it, one JSONL record per completion.

Every logged step, `SamtokGRPOTrainer` appends the completions of the first `rollout_prompts` prompts of the latest
generation batch to `<output_dir>/rollouts.jsonl` (main process only; TRL has already gathered them from every
process). A record holds the step, the prompt (text, image path, task), the completion text exactly as the rewards
saw it (grounding markers and mask tokens kept), its mask codes, every reward component, the weighted total, the
advantage, the reference answer with the GT masks (RLE), and whether the completion is the reference answer itself
(`guided`: guided groups), so a run can be read back and inspected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from samtok_rl.parsing import parse_masks, split_think_answer


__all__ = ["ROLLOUTS_FILE", "RUN_FILE", "TEXT_COLUMNS", "append_rollouts", "rollout_records"]

ROLLOUTS_FILE = "rollouts.jsonl"
# What a reader of the rollouts needs to know about the run: the mask tokenizer its codes decode with, the rewards.
RUN_FILE = "samtok_run.json"
# The columns the tokenizer-bound rewards add to TRL's per-completion logs (`log_extra`) for these records.
TEXT_COLUMNS = ("samtok_text", "samtok_image", "samtok_task", "samtok_solution", "samtok_gt_masks")


def _message_text(prompt) -> str:
    """The text of a string or of conversational messages (image blocks left out)."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(block.get("text", "") for block in content if block.get("type") == "text")
    return "\n".join(parts)


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def rollout_records(
    logs: dict, step: int, num_generations: int, num_prompts: int, weights: Sequence[float]
) -> list[dict]:
    """The records of the first `num_prompts` prompt groups in TRL's per-completion logs (`GRPOTrainer._logs`).

    TRL keeps a prompt's `num_generations` completions next to each other; rewards are NaN where a reward did not
    apply (written as `null`), and the total is their weighted sum over the rewards that applied, as TRL's.
    """
    extra = logs["extra"]
    names = list(logs["rewards"])
    count = min(len(logs["prompt"]), num_prompts * num_generations)
    records = []
    for i in range(count):
        rewards = {name: _number(logs["rewards"][name][i]) for name in names}
        applied = [(w, r) for w, r in zip(weights, rewards.values(), strict=True) if r is not None]
        text = extra["samtok_text"][i] if "samtok_text" in extra else _message_text(logs["completion"][i])
        answer = split_think_answer(text)[1]
        records.append(
            {
                "step": step,
                "prompt_index": i // num_generations,
                "prompt": _message_text(logs["prompt"][i]),
                "image": extra["samtok_image"][i] if "samtok_image" in extra else None,
                "task": extra["samtok_task"][i] if "samtok_task" in extra else None,
                "completion": text,
                "codes": [list(c) for c in parse_masks(answer if answer is not None else text)],
                "rewards": rewards,
                "reward": sum(w * r for w, r in applied) if applied else None,
                "advantage": _number(logs["advantages"][i]),
                "solution": extra["samtok_solution"][i] if "samtok_solution" in extra else None,
                "gt_masks": extra["samtok_gt_masks"][i] if "samtok_gt_masks" in extra else None,
                # The reference answer put in a group without a right answer (`samtok_rl.guided`), not a sample.
                "guided": bool(extra["samtok_guided"][i]) if "samtok_guided" in extra else False,
            }
        )
    return records


def append_rollouts(output_dir: str | Path, records: list[dict]) -> Path:
    """Append `records` to `<output_dir>/rollouts.jsonl` in one write (a crash loses at most this step's records)."""
    path = Path(output_dir) / ROLLOUTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    return path
