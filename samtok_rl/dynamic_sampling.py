"""Dynamic sampling: train only on prompt groups whose completions differ in reward (DAPO's "dynamic sampling").

A GRPO group whose completions all score the same has zero advantage: it costs a full generation and teaches nothing.
With dynamic sampling on, `SamtokGRPOTrainer` drops every group whose reward standard deviation is at most
`dynamic_sampling_tolerance` and generates further rounds of prompts until each process holds as many informative
groups as its generation batch has, or `dynamic_sampling_max_rounds` extra rounds were spent (then the batch is topped
up with the dropped groups, which carry zero advantage, and a warning says so). The test is the spread of the weighted
total reward, so a continuous reward (IoU) counts as informative as soon as it varies, unlike a filter on the mean.

The pieces here are plain functions over TRL's per-round outputs; `samtok_rl.trainer` calls them.

- Every process runs the same number of rounds (the decision to go on is taken over all processes), so TRL's
  collective operations (reward gathering, vLLM generation) stay in step, and every process ends with the same number
  of groups: batch shapes stay what DeepSpeed / FSDP expect.
- The extra prompts of round `r` at step `s` are drawn from the training set with a generator seeded by
  `(seed, s, r, process)`: a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from trl.trainer.utils import nanstd


__all__ = ["DynamicSampling", "group_reward_std", "merge_rounds", "refill_indices", "select_groups"]

# Keys of TRL's generation output that are left-padded (prompt side); every other 2-D per-sample tensor is
# right-padded (completion side), except the token-type ids, which TRL extends over the completion: their first
# `prompt_ids` columns are left-padded and the rest right-padded.
LEFT_PADDED = ("prompt_ids", "prompt_mask")
PROMPT_AND_COMPLETION = ("mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class DynamicSampling:
    """The recipe's dynamic-sampling settings (see `SamtokScriptArguments`)."""

    tolerance: float = 1e-4
    max_rounds: int = 4
    seed: int = 0


def group_reward_std(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """The standard deviation of each group's weighted total reward, as TRL computes the total.

    Rows whose every reward is `None` (NaN) are left out of their group's spread, as TRL leaves them out of the
    baseline. Shape `(num_rows // num_generations,)`.

    Example:
    >>> r = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    >>> group_reward_std(r, torch.tensor([1.0, 1.0]), 2).tolist()
    [0.0, 1.4142135381698608]
    """
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    total = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    total[unscorable] = torch.nan
    return torch.nan_to_num(nanstd(total.view(-1, num_generations), dim=1), nan=0.0)


def select_groups(informative: Sequence[Sequence[bool]], needed: int) -> tuple[list[tuple[int, int]], int]:
    """Which `(round, group)` pairs make the batch: informative groups in generation order, then (when there are too
    few) the dropped ones in generation order. Returns them and how many uninformative groups had to be used.

    Example:
    >>> select_groups([[True, False], [False, True]], 2)
    ([(0, 0), (1, 1)], 0)
    >>> select_groups([[False, False], [False, True]], 2)
    ([(1, 1), (0, 0)], 1)
    """
    good = [(r, g) for r, flags in enumerate(informative) for g, ok in enumerate(flags) if ok]
    rest = [(r, g) for r, flags in enumerate(informative) for g, ok in enumerate(flags) if not ok]
    chosen = good[:needed]
    filler = rest[: needed - len(chosen)]
    return chosen + filler, len(filler)


def refill_indices(num_rows: int, count: int, seed: int, step: int, round_: int, process: int) -> list[int]:
    """`count` dataset rows for extra round `round_` at step `step` on process `process` (deterministic).

    Example:
    >>> refill_indices(10, 3, seed=0, step=5, round_=1, process=0) == refill_indices(10, 3, 0, 5, 1, 0)
    True
    """
    generator = torch.Generator().manual_seed(hash((seed, step, round_, process)) % (2**63))
    if count <= num_rows:
        return torch.randperm(num_rows, generator=generator)[:count].tolist()
    return torch.randint(num_rows, (count,), generator=generator).tolist()


def _pad_to(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = torch.full((tensor.shape[0], missing, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def merge_rounds(outputs: Sequence[dict], rows: Sequence[tuple[int, int]], pad_token_id: int) -> dict:
    """One generation output made of the rows `[(round, row), ...]` of several rounds' outputs.

    `outputs` are TRL's `_generate_and_score_completions` results with `pixel_values` split per sample
    (`split_pixel_values_by_grid`). Per-sample tensors are indexed and concatenated, padded to the widest round on
    their padding side (ids with `pad_token_id`, masks and log-probabilities with 0); per-sample lists are indexed.
    `num_items_in_batch` is left to the caller (it is a sum over processes).
    """
    size = len(outputs[0]["advantages"])
    merged = {}
    for key, first in outputs[0].items():
        if key == "num_items_in_batch":
            continue
        if isinstance(first, torch.Tensor) and first.dim() >= 1 and first.shape[0] == size:
            parts = [outputs[r][key][k : k + 1] for r, k in rows]
            if key in PROMPT_AND_COMPLETION and first.dim() == 2:
                widths = [outputs[r]["prompt_ids"].shape[1] for r, _ in rows]
                prompt_parts = [_pad_to(p[:, :w], max(widths), 0, left=True) for p, w in zip(parts, widths)]
                rest = [p[:, w:] for p, w in zip(parts, widths)]
                rest = [_pad_to(p, max(x.shape[1] for x in rest), 0, left=False) for p in rest]
                parts = [torch.cat(pair, dim=1) for pair in zip(prompt_parts, rest)]
            elif first.dim() >= 2:
                width = max(p.shape[1] for p in parts)
                value = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
                parts = [_pad_to(p, width, value, key in LEFT_PADDED) for p in parts]
            merged[key] = torch.cat(parts, dim=0)
        elif isinstance(first, list) and len(first) == size:
            merged[key] = [outputs[r][key][k] for r, k in rows]
        else:
            raise ValueError(f"dynamic sampling cannot merge the generation output {key!r} ({type(first).__name__})")
    return merged
