"""Guided groups: the reference answer joins a prompt group in which the policy sampled no right answer.

Plain GRPO reinforces only what the policy already samples: a group whose completions all miss the target has no
positive example, and its gradient teaches nothing about the right mask. Because a SAMTok mask is two words, the
reference answer is an exact completion. With `guided_groups: true`, when the best score of a group on the task
reward (`guided_reward`, default the preset's mask reward) is below `guided_threshold` (default 1.0: no completion
earns full mask credit), the group's last completion is replaced by the reference answer, as ViSurf (arXiv
2510.10606) injects ground-truth answers into the rollouts and LUFFY (arXiv 2504.14945) mixes off-policy
demonstrations into the group. Its rewards come from the same reward functions and its advantage from the same group
normalisation as every completion's.

- **The text** is the row's reference answer in the prompt's own format: for think/answer prompts the same templated
  think part as the SFT warm start (`samtok_rl.warmstart.completion_text`: "The red circle is in the image." /
  "There is no the green star in the image."), so the think part carries no information the sampled completions
  lack, then `<answer>{solution}</answer>`. A group is guided only when the reference answer scores strictly more on
  the task reward than every sampled completion: what lifts it above the group is its mask, never the format reward
  alone.
- **The last slot** of the group is replaced, whatever its score: the other completions stay an unbiased on-policy
  sample, and the choice depends on nothing but the sampled rewards, so a resumed run guides the same groups.
- **The token ids** are the tokenizer's encoding of that text followed by EOS: what the model emits for it (the warm
  start was trained on the same encoding); `guided_ids` round-trips.
- **Off-policy, on purpose.** The guided completion's "old" log-probabilities are the trainer's own (as for any
  completion when TRL computes them, or the same forward pass here). Its sampling log-probabilities are unknown (no
  engine sampled it): they are given to TRL as missing, which TRL's vLLM importance-sampling correction treats as no
  correction (ratio exactly 1); the ratio is also set to 1 explicitly. `guided_shaping` picks the loss it gets:
  `none` (the plain clipped GRPO term, ratio 1 at the first iteration) or `luffy` (LUFFY's policy shaping: the
  gradient of `f(pi) = pi / (pi + gamma)` instead of `pi / pi_old`, which keeps the learning signal of tokens the
  policy finds unlikely). The shaping is carried by TRL's own loss, not a copy of it: the guided tokens' "old"
  log-probabilities are set to `log pi - log(gamma * pi / (pi + gamma)^2)`, so TRL's ratio `pi / pi_old` equals
  `f'(pi) * pi` in value and its gradient is `f'(pi) * grad pi`. That ratio is at most 1/4, below `1 - epsilon`, so
  for a positive advantage TRL's clipped objective takes the unclipped term, as LUFFY removes the clip for
  off-policy tokens (`check_guided_recipe` refuses the loss types and settings where this does not hold).

The pieces are plain functions; `samtok_rl.trainer.SamtokGRPOTrainer` calls them around TRL's generation and scoring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from samtok_rl.errors import UsageError
from samtok_rl.warmstart import completion_rows, completion_text


__all__ = [
    "SHAPINGS",
    "Guidance",
    "check_guided_lengths",
    "check_guided_recipe",
    "groups_to_guide",
    "guided_ids",
    "guided_reward_index",
    "guided_text",
    "luffy_old_logps",
    "score_rows",
    "slot_rows",
]

SHAPINGS = ("none", "luffy")
# The loss types whose objective is TRL's clipped `-min(r * A, clip(r) * A)`: the only ones where LUFFY's shaping can
# ride on the ratio (see the module docstring).
CLIPPED_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo")
# The task reward of each preset: the reward a group's "right answer" is judged by.
PRESET_TASK_REWARD = {"gres": "gres_mask_reward", "gcg": "gcg_mask_reward"}
# The shaped ratio gamma * pi / (pi + gamma)^2 peaks at 1/4 (pi = gamma): below 1 - epsilon_low unless epsilon_low
# is at least 3/4.
MAX_SHAPED_RATIO = 0.25


@dataclass(frozen=True)
class Guidance:
    """The recipe's guided-groups settings, resolved: which reward judges a group, from which score on it is right,
    and the loss the guided completion gets."""

    reward_index: int
    threshold: float = 1.0
    shaping: str = "none"
    gamma: float = 0.1


def guided_reward_index(script_args, specs: Sequence[str], names: Sequence[str]) -> int:
    """Which of the run's rewards judges a right answer: `guided_reward` (a spec of the recipe or a reward's name,
    as TRL logs it), else the preset's mask reward. `names` are the rewards' names, in the order of `specs`."""
    name = script_args.guided_reward or PRESET_TASK_REWARD.get(script_args.reward_preset or "")
    if name is None:
        raise UsageError("guided_groups: set guided_reward (the task reward that says a completion is right)")
    for index, (spec, reward_name) in enumerate(zip(specs, names, strict=True)):
        if name in (spec, reward_name):
            return index
    raise UsageError(f"guided_reward {name!r} is not one of the run's rewards {list(names)}")


def check_guided_recipe(script_args, training_args) -> None:
    """Refuse guided-groups settings that cannot train as they say, before anything loads."""
    if not script_args.guided_groups:
        return
    if script_args.guided_shaping not in SHAPINGS:
        raise UsageError(f"guided_shaping must be one of {SHAPINGS}, got {script_args.guided_shaping!r}")
    if not math.isfinite(script_args.guided_threshold):
        raise UsageError(f"guided_threshold must be a finite number, got {script_args.guided_threshold}")
    if training_args.num_generations < 2:
        raise UsageError(f"guided_groups needs num_generations >= 2 (a group of sampled completions), got "
                         f"{training_args.num_generations}")  # fmt: skip
    if script_args.guided_shaping == "luffy":
        if not script_args.guided_gamma > 0:
            raise UsageError(f"guided_gamma must be > 0, got {script_args.guided_gamma}")
        if training_args.loss_type not in CLIPPED_LOSSES:
            raise UsageError(f"guided_shaping: luffy needs a clipped loss_type {CLIPPED_LOSSES}, got "
                             f"{training_args.loss_type!r}")  # fmt: skip
        if training_args.importance_sampling_level != "token":
            raise UsageError("guided_shaping: luffy shapes token ratios: importance_sampling_level must be 'token', "
                             f"got {training_args.importance_sampling_level!r}")  # fmt: skip
        epsilon_low = training_args.epsilon
        if not 1 - epsilon_low > MAX_SHAPED_RATIO:
            raise UsageError(f"guided_shaping: luffy needs epsilon < {1 - MAX_SHAPED_RATIO} (the shaped ratio would "
                             f"be clipped), got {epsilon_low}")  # fmt: skip


def guided_text(row: dict) -> str:
    """The reference answer of a prepared row, written as the prompt asks: the warm start's think part and
    `<answer>{solution}</answer>` for think/answer prompts, the bare solution otherwise.

    Example:
    >>> from samtok_rl.prompts import conversation, gres_question
    >>> guided_text({"prompt": conversation(gres_question("the cat")), "expression": "the cat",
    ...              "solution": "<|mt_start|><|mt_0001|><|mt_0257|><|mt_end|>", "no_target": False})
    '<think>The cat is in the image.</think><answer><|mt_start|><|mt_0001|><|mt_0257|><|mt_end|></answer>'
    """
    return completion_text(row)


def guided_ids(tokenizer, text: str, eos_token_id: int) -> list[int]:
    """The token ids the model emits for `text` as a whole completion: its encoding, then EOS."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], eos_token_id]


def check_guided_lengths(dataset, tokenizer, max_completion_length: int, source: str) -> None:
    """Every row's guided completion must fit `max_completion_length`: a cut reference answer is no right answer.

    `dataset` holds prepared rows; `source` names it in the error.
    """
    for index, row in enumerate(completion_rows(dataset)):
        length = len(guided_ids(tokenizer, guided_text(row), tokenizer.eos_token_id))
        if length > max_completion_length:
            raise UsageError(f"{source}: row {index}: the reference answer takes {length} tokens with EOS, more than "
                             f"max_completion_length {max_completion_length} (guided_groups would cut it)")  # fmt: skip


def slot_rows(num_rows: int, offset: int, num_generations: int) -> list[int]:
    """The local rows (of `num_rows` starting at global row `offset`) that are the last slot of their group.

    Example:
    >>> slot_rows(6, 4, 4)   # global rows 4..9, groups of 4: rows 7 (local 3)
    [3]
    """
    return [i for i in range(num_rows) if (offset + i) % num_generations == num_generations - 1]


def groups_to_guide(
    sampled: torch.Tensor, reference: torch.Tensor, num_generations: int, threshold: float
) -> torch.Tensor:
    """Which groups get the reference answer: their best sampled task score is below `threshold` (a NaN score, a
    reward that did not apply, counts as no score) and the reference answer scores strictly more than that best.

    `sampled` holds every gathered row's task score, `reference` the reference answer's score at each group's last
    slot (NaN elsewhere). Returns one bool per group.

    Example:
    >>> s = torch.tensor([0.0, 0.5, 0.2, 0.0, 1.0, 0.0])
    >>> r = torch.tensor([float("nan"), float("nan"), 1.0, float("nan"), float("nan"), 1.0])
    >>> groups_to_guide(s, r, 3, 1.0).tolist()
    [True, False]
    """
    sampled = torch.nan_to_num(sampled.view(-1, num_generations), nan=-math.inf)
    best = sampled.max(dim=1).values
    ref = reference.view(-1, num_generations)[:, -1]
    return (best < threshold) & (torch.nan_to_num(ref, nan=-math.inf) > best)


def luffy_old_logps(logps: torch.Tensor, gamma: float) -> torch.Tensor:
    """The "old" log-probabilities that make TRL's ratio `exp(logp - old)` carry LUFFY's shaping `pi / (pi + gamma)`.

    `old = 2 log(pi + gamma) - log(gamma)`, so `pi / pi_old = gamma * pi / (pi + gamma)^2` (at most 1/4) and its
    gradient is `gamma / (pi + gamma)^2 * grad pi`, the gradient of `pi / (pi + gamma)`.

    Example:
    >>> logp = torch.log(torch.tensor([0.1, 0.5]))
    >>> [round(r, 5) for r in torch.exp(logp - luffy_old_logps(logp, 0.1)).tolist()]   # gamma pi / (pi + gamma)^2
    [0.25, 0.13889]
    """
    return 2 * torch.log(torch.exp(logps) + gamma) - math.log(gamma)


def score_rows(
    reward: Callable, prompts: list, texts: Sequence[str], ids: Sequence[Sequence[int]], inputs: list[dict]
) -> list[float]:
    """`reward`'s scores of these completions (TRL's reward signature, the rows' columns as keyword lists); `None`
    becomes NaN. Nothing is logged: TRL scores the batch again, once, with its logging hooks."""
    keys = [key for key in inputs[0] if key not in ("prompt", "completion", "completion_ids")]
    columns = {key: [row[key] for row in inputs] for key in keys}
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    scores = reward(prompts=prompts, completions=completions, completion_ids=[list(i) for i in ids], **columns)
    return [math.nan if s is None else float(s) for s in scores]
