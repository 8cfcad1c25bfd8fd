"""Reward plug-ins for the dynamic-sampling tests (a plain module, so a `python -m samtok_rl.grpo` subprocess can load
it by path as a user's `path/file.py:fn` reward)."""

from __future__ import annotations

import zlib


def half_constant_reward(prompts, completions, solution, **kwargs) -> list[float]:
    """Constant for about half the prompts (no spread: uninformative groups), varying with the text for the others."""
    out = []
    for answer, completion in zip(solution, completions):
        if zlib.crc32(answer.encode()) % 2:  # by the row's reference answer (the prompt holds the PIL image)
            out.append(0.5)
        else:
            text = completion[0]["content"] if isinstance(completion, list) else completion
            out.append((sum(map(ord, text)) % 7) / 7)
    return out


def constant_reward(prompts, completions, **kwargs) -> list[float]:
    return [1.0] * len(completions)
