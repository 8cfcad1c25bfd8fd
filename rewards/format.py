"""Task-agnostic rewards: the think/answer format and the non-repeat rule on mask spans."""

from __future__ import annotations

import re
from collections import Counter

from rewards._text import completion_texts, spans, split


__all__ = ["RepetitionReward", "format_reward", "get_repetition_reward", "is_formatted"]

# The reference format rule is the full match of `<think>.*?</think>\s*<answer>.*?</answer>` (DOTALL). Its lazy
# `.*?` steps through the text one character at a time; `is_formatted` decides the same language with `str.find` and
# one anchored match per `</think>` (tested equal on fuzzed strings).
_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_WS_ANSWER_RE = re.compile(r"\s*<answer>")


def is_formatted(text: str) -> bool:
    """Whether `text` fully matches `<think>…</think>`, optional whitespace, `<answer>…</answer>` (the reference format rule).

    Example:
    >>> is_formatted("<think>a</think> <answer></answer>"), is_formatted("<think>a</think>b<answer></answer>")
    (True, False)
    """
    n = len(text)
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    # Some `</think>` (after the opening tag) must be followed by whitespace and an `<answer>` that ends no later than
    # where the closing `</answer>` begins; the bodies themselves may hold anything.
    i = text.find("</think>", 7)
    while i != -1:
        m = _WS_ANSWER_RE.match(text, i + 8)
        if m is not None and m.end() <= n - 9:
            return True
        i = text.find("</think>", i + 1)
    return False


def format_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
    """1.0 when the whole response is `<think>…</think>`, optional whitespace, `<answer>…</answer>`; else 0.0.

    Full match: a leading newline or anything after `</answer>` (e.g. a kept `<|im_end|>`) gives 0.

    Example:
    >>> format_reward(None, ["<think>t</think>\\n<answer>a</answer>", "\\n<think>t</think><answer>a</answer>"])
    [1.0, 0.0]
    >>> format_reward(None, [[{"role": "assistant", "content": "<think>t</think><answer>a</answer><|im_end|>"}]])
    [0.0]
    """
    return [
        1.0 if text is not None and is_formatted(text) else 0.0
        for text in completion_texts(completions, completion_ids)
    ]


_REPETITION_NAMES = {
    "full": "repetition_reward",
    "think": "repetition_think_reward",
    "answer": "repetition_answer_reward",
}


class RepetitionReward:
    """Non-repeat reward: 0.0 when any span occurs more than `limit` times in the chosen part, else 1.0.

    The recipe's `repetition_limit` sets `limit` for every repetition reward of a run (`rewards.get_reward_funcs`).

    A picklable callable class (TRL pickles rewards for async workers); build it with `get_repetition_reward`. A
    missing think or answer part scores 0, as in the reference.

    Args:
        limit (`int`, *optional*, defaults to `3`): most occurrences allowed per span.
        part (`str`, *optional*, defaults to `"full"`): `"full"`, `"think"` or `"answer"`.
    """

    def __init__(self, limit: int = 3, part: str = "full") -> None:
        if part not in _REPETITION_NAMES:
            raise ValueError(f"part must be one of {sorted(_REPETITION_NAMES)}, got {part!r}")
        self.limit = limit
        self.part = part
        self.__name__ = _REPETITION_NAMES[part]  # the logged metric name and the REWARDS key

    def score(self, text: str | None) -> float:
        if text is not None and self.part != "full":
            text = split(text)[0 if self.part == "think" else 1]
        if text is None:
            return 0.0
        found = spans(text)
        # Spans cannot overlap, so the regex's counts equal the reference's substring counts.
        if len(found) <= self.limit:
            return 1.0
        return 0.0 if max(Counter(found).values()) > self.limit else 1.0

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        return [self.score(text) for text in completion_texts(completions, completion_ids)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(limit={self.limit}, part={self.part!r})"


def get_repetition_reward(limit: int = 3, part: str = "full") -> RepetitionReward:
    """Build a non-repeat reward (see `RepetitionReward`); its `__name__` names the part.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a = format_mask(123, 45)
    >>> reward = get_repetition_reward(part="answer")
    >>> reward.__name__
    'repetition_answer_reward'
    >>> reward(None, [f"<think>{a * 4}</think><answer>{a * 3}</answer>", f"<answer>{a * 4}</answer>", a])
    [1.0, 0.0, 0.0]
    >>> get_repetition_reward(limit=4)(None, [a * 4])
    [1.0]
    """
    return RepetitionReward(limit=limit, part=part)
