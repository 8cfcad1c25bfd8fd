"""GRES rewards: the reference textual rules (format, graded set accuracy, no-target, non-repeat) and a Hungarian variant.

The rules are those of `rewards.md` (reconstructed from CycleGRPO's `text2mask.py`):

- spans are the strict 44-character strings `<|mt_start|><|mt_AAAA|><|mt_BBBB|><|mt_end|>`, compared as strings;
- a predicted span scores 1.0 against an equal GT span, 0.4 against one with the same first (coarse) code, else 0;
- set accuracy = sum over *unique* predicted spans of their best grade / max(#predicted with duplicates, #GT);
- rows whose reference answer is `No target.` use the no-target rule instead, on the *full* response (see
  `no_target_score`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from rewards._text import COARSE_PREFIX, applies, completion_texts, has_fragment, spans, split
from samtok_rl.prompts import NO_TARGET


__all__ = [
    "RepetitionReward",
    "format_reward",
    "get_repetition_reward",
    "graded_set_score",
    "gres_mask_reward",
    "gres_mask_reward_hungarian",
    "hungarian_set_score",
    "is_formatted",
    "no_target_score",
]

# The reference format rule is the full match of `<think>.*?</think>\s*<answer>.*?</answer>` (DOTALL). Its lazy
# `.*?` steps through the text one character at a time; `is_formatted` decides the same language with `str.find` and
# one anchored match per `</think>` (tested equal on fuzzed strings).
_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_WS_ANSWER_RE = re.compile(r"\s*<answer>")
_SPAN_START = "<|mt_start|>"


def graded_set_score(pred: Sequence[str], gt: Sequence[str]) -> float:
    """The reference set accuracy: unique predictions graded against their best GT span, max-normalised.

    Two predictions may take credit from the same GT span (no one-to-one assignment); duplicates earn credit once
    but count in the denominator. Both sides empty gives 1.0.

    Args:
        pred (`Sequence[str]`): predicted span strings, duplicates kept.
        gt (`Sequence[str]`): ground-truth span strings.

    Returns:
        `float` in `[0, 1]`.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a, a1 = format_mask(123, 45), format_mask(123, 46)  # same coarse code
    >>> graded_set_score([a, a1], [a])  # (1 + 0.4) / 2
    0.7
    >>> graded_set_score([], [])
    1.0
    """
    return _graded(pred, _Target.of(tuple(gt)))


class _Target(NamedTuple):
    """The GT spans of one reference answer, indexed for grading (built once per distinct reference text)."""

    spans: tuple[str, ...]
    exact: frozenset[str]
    coarse: frozenset[str]

    @classmethod
    def of(cls, gt_spans: tuple[str, ...]) -> _Target:
        return cls(gt_spans, frozenset(gt_spans), frozenset(t[:COARSE_PREFIX] for t in gt_spans))


@lru_cache(maxsize=4096)
def _target(solution: str) -> _Target | None:
    # None marks a no-target row (reference answer "No target."); 8 generations share each reference answer.
    return None if solution.strip() == NO_TARGET else _Target.of(spans(solution))


def _graded(pred: Sequence[str], target: _Target) -> float:
    if not pred:
        return 0.0 if target.spans else 1.0
    if not target.spans:
        return 0.0
    exact, coarse = target.exact, target.coarse
    n_exact = n_coarse = 0
    for p in set(pred):
        if p in exact:
            n_exact += 1
        elif p[:COARSE_PREFIX] in coarse:
            n_coarse += 1
    # Integer counts keep the sum independent of set iteration order.
    return (n_exact + 0.4 * n_coarse) / max(len(pred), len(target.spans))


def hungarian_set_score(pred: Sequence[str], gt: Sequence[str]) -> float:
    """Set accuracy under a one-to-one assignment maximising the graded score (each GT span pays once).

    Same grades and denominator as `graded_set_score`, but a GT span credits at most one prediction, so hedging
    with near-duplicates ({A, A'} against {A, B}) earns nothing extra.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a, a1, b = format_mask(123, 45), format_mask(123, 46), format_mask(7, 144)
    >>> graded_set_score([a, a1], [a, b]), hungarian_set_score([a, a1], [a, b])
    (0.7, 0.5)
    """
    return _hungarian(pred, _Target.of(tuple(gt)))


def _hungarian(pred: Sequence[str], target: _Target) -> float:
    gt = target.spans
    if not pred:
        return 0.0 if gt else 1.0
    if not gt:
        return 0.0
    grade = np.array(
        [[1.0 if p == t else 0.4 if p[:COARSE_PREFIX] == t[:COARSE_PREFIX] else 0.0 for t in gt] for p in pred]
    )
    rows, cols = linear_sum_assignment(grade, maximize=True)
    return float(grade[rows, cols].sum()) / max(len(pred), len(gt))


def no_target_score(text: str | None) -> float:
    """The no-target rule on a full response: 0.0 with any mask fragment, else 1.0 if `No target.` appears, else 0.2.

    Computed on the whole response (not the answer part), as the worked examples and the CycleGRPO-OPSD regression
    test do: a fragment anywhere, `<think>` included or after `</answer>`, gives 0. A missing response counts as
    empty text (0.2).

    Example:
    >>> no_target_score("<think>t</think><answer>No target.</answer>")
    1.0
    >>> no_target_score("I cannot identify the object.")
    0.2
    >>> no_target_score("<answer>No target.</answer><|mt_start|>")
    0.0
    """
    if text is None:
        return 0.2
    if has_fragment(text):
        return 0.0
    return 1.0 if NO_TARGET in text else 0.2


def _gres_scores(
    texts: list[str | None], solution, task, set_score: Callable[[Sequence[str], _Target], float]
) -> list[float | None]:
    rewards: list[float | None] = []
    for i, text in enumerate(texts):
        gt = solution[i]
        if not applies(task, i, "gres") or not isinstance(gt, str):
            rewards.append(None)
            continue
        target = _target(gt)
        if target is None:
            rewards.append(no_target_score(text))
        elif text is None:
            rewards.append(0.0)
        else:
            answer = split(text)[1]
            rewards.append(0.0 if answer is None else set_score(spans(answer), target))
    return rewards


def log_gres_monitors(log_metric: Callable[[str, float], None], texts: list[str | None], solution, task) -> None:
    """Per-step GRES monitors (answer part when present, else the full response).

    `gres/pred_masks` and `gres/gt_masks`: mean span counts; `gres/duplicate_span_rate`: share of predicted spans
    repeating an earlier one in the same answer; `gres/malformed_span_rate`: share of `<|mt_start|>` openings that
    do not begin a well-formed span; `gres/no_target_with_masks`: share of no-target rows whose response holds a
    mask fragment; `gres/target_said_no_target`: share of target rows answered with `No target.`. A rate whose
    denominator is zero in this batch is not logged.
    """
    n = n_pred = n_gt = n_dup = n_open = n_malformed = 0
    n_nt = n_nt_masks = n_t = n_t_said_nt = 0
    for i, text in enumerate(texts):
        gt = solution[i]
        if not applies(task, i, "gres") or not isinstance(gt, str):
            continue
        n += 1
        text = text or ""
        answer = split(text)[1]
        part = text if answer is None else answer
        pred = spans(part)
        n_pred += len(pred)
        n_dup += len(pred) - len(set(pred))
        opened = part.count(_SPAN_START)
        n_open += opened
        n_malformed += max(opened - len(pred), 0)
        if gt.strip() == NO_TARGET:
            n_nt += 1
            n_nt_masks += has_fragment(text)
        else:
            n_t += 1
            n_gt += len(spans(gt))
            n_t_said_nt += NO_TARGET in part
    if n == 0:
        return
    log_metric("gres/pred_masks", n_pred / n)
    log_metric("gres/gt_masks", n_gt / n)
    for name, num, den in (
        ("gres/duplicate_span_rate", n_dup, n_pred),
        ("gres/malformed_span_rate", n_malformed, n_open),
        ("gres/no_target_with_masks", n_nt_masks, n_nt),
        ("gres/target_said_no_target", n_t_said_nt, n_t),
    ):
        if den:
            log_metric(name, num / den)


def gres_mask_reward(
    prompts, completions, completion_ids=None, solution=None, task=None, log_metric=None, **kwargs
) -> list[float | None]:
    """Reference GRES accuracy: graded set match of the answer's spans against the reference answer's spans.

    The answer part comes from the reference's robust think/answer split (a missing part scores 0). Rows whose
    reference answer is `No target.` score with `no_target_score` on the full response (1.0 / 0.2 / 0.0). Rows
    without a `solution`, or whose `task` column is not `"gres"`, give `None`. Logs the GRES monitors through
    TRL's `log_metric` when given.

    Args:
        prompts (`list`): unused.
        completions (`list[str]` or `list[list[dict]]`): plain or conversational completions.
        completion_ids (`list[list[int]]`, *optional*): unused here (see `rewards.bind_tokenizer`).
        solution (`list[str]`): the reference answers (dataset column).
        task (`list[str]`, *optional*): the task column; rows of other tasks give `None`.
        log_metric (`Callable[[str, float], None]`, *optional*): TRL's scalar logger.

    Returns:
        `list[float | None]`: one score in `[0, 1]` per completion.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a, b = format_mask(123, 45), format_mask(7, 144)
    >>> gt = f'```json\\n[{{"mask_2d": "{a}", "label": "cup"}}, {{"mask_2d": "{b}", "label": "cup"}}]\\n```'
    >>> completions = [f"<think>t</think><answer>{b} {a}</answer>", f"<think>t</think><answer>{a}</answer>", a]
    >>> gres_mask_reward(None, completions, solution=[gt] * 3)
    [1.0, 0.5, 0.0]
    >>> gres_mask_reward(None, ["<answer>No target.</answer>", "<answer></answer>"], solution=["No target."] * 2)
    [1.0, 0.2]
    """
    texts = completion_texts(completions, completion_ids)
    if solution is None:
        return [None] * len(texts)
    if log_metric is not None:
        log_gres_monitors(log_metric, texts, solution, task)
    return _gres_scores(texts, solution, task, _graded)


def gres_mask_reward_hungarian(
    prompts, completions, completion_ids=None, solution=None, task=None, log_metric=None, **kwargs
) -> list[float | None]:
    """`gres_mask_reward` with a one-to-one assignment (scipy) that maximises the graded score.

    Identical to the reference rule except that a GT span credits at most one prediction, so duplicates and
    near-duplicate hedges cannot take credit twice. Same no-target rule, `None` rows and monitors.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a, a1, b = format_mask(123, 45), format_mask(123, 46), format_mask(7, 144)
    >>> gt = f'[{{"mask_2d": "{a}"}}, {{"mask_2d": "{b}"}}]'
    >>> hedge = f"<think>t</think><answer>{a}{a1}</answer>"
    >>> gres_mask_reward(None, [hedge], solution=[gt]), gres_mask_reward_hungarian(None, [hedge], solution=[gt])
    ([0.7], [0.5])
    """
    texts = completion_texts(completions, completion_ids)
    if solution is None:
        return [None] * len(texts)
    if log_metric is not None:
        log_gres_monitors(log_metric, texts, solution, task)
    return _gres_scores(texts, solution, task, _hungarian)


def is_formatted(text: str) -> bool:
    """Whether `text` fully matches `<think>…</think>`, optional whitespace, `<answer>…</answer>` (rewards.md §1.3).

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
