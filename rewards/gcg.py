"""GCG rewards: the reference mask and phrase rules, and a grounded variant that binds each mask to its phrase.

A GCG pair is `<|object_ref_start|> phrase <|object_ref_end|>` followed by a span (`samtok_rl.parsing.gcg_pairs`:
the reference grammar, in linear time); phrases without a span are ignored. Masks are graded by `rewards.matching`.
All three rewards read the full response, as the reference does (no think/answer split).

TRL's completion text has lost the `<|object_ref_*|>` markers (they are special tokens): bind the tokenizer with
`rewards.bind_tokenizer` so these rewards score text rebuilt from `completion_ids`.
"""

from __future__ import annotations

from collections.abc import Callable

from rewards._text import pairs, score_rows, task_rows
from rewards.matching import grade, graded_set_score


__all__ = ["gcg_grounded_reward", "gcg_mask_reward", "gcg_phrase_reward"]


def _phrase_score(pred: list[str], gt: list[str]) -> float:
    if not gt:
        return 1.0
    return len(set(pred).intersection(gt)) / max(len(pred), len(gt))


def _grounded_score(pred: tuple, gt: tuple) -> float:
    if not pred:
        return 0.0 if gt else 1.0
    if not gt:
        return 0.0
    by_phrase: dict[str, list[tuple[str, str]]] = {}
    for phrase, codes in gt:
        by_phrase.setdefault(phrase, []).append(codes)
    credit = 0.0
    for phrase, codes in set(pred):
        targets = by_phrase.get(phrase)
        if targets:
            credit += grade(codes, targets)
    return credit / max(len(pred), len(gt))


def _row_score(pairs_score: Callable[[tuple, tuple], float]):
    def score(text: str | None, solution: str) -> float:
        return 0.0 if text is None else pairs_score(pairs(text), pairs(solution))  # a missing response scores 0

    return score


def _mask_score(pred: tuple, gt: tuple) -> float:
    return graded_set_score([codes for _, codes in pred], [codes for _, codes in gt])


def _pairs_phrase_score(pred: tuple, gt: tuple) -> float:
    # A pair with an empty phrase contributes a mask key but no phrase.
    return _phrase_score([p for p, _ in pred if p], [p for p, _ in gt if p])


_MASK, _PHRASE, _GROUNDED = map(_row_score, (_mask_score, _pairs_phrase_score, _grounded_score))


def gcg_mask_reward(
    prompts, completions, completion_ids=None, solution=None, task=None, log_metric=None, **kwargs
) -> list[float | None]:
    """Reference GCG mask score: the graded set rule on the spans that follow a phrase, regardless of the phrase.

    Masks swapped between phrases still score 1.0 (see `gcg_grounded_reward`). When neither the response nor the
    reference has a pair the score is 1.0 (the reference divides by zero there). Rows without a `solution` or of
    another `task` give `None`. Logs `gcg/pred_pairs`, `gcg/gt_pairs` and `gcg/duplicate_mask_rate` through TRL's
    `log_metric` when given.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a, a1, b = format_mask(123, 45), format_mask(123, 46), format_mask(7, 144)
    >>> ref = lambda x: f"<|object_ref_start|> {x} <|object_ref_end|> "
    >>> gt = f"A {ref('white pumpkin')}{a} lays on {ref('a jute bag')}{b}."
    >>> swapped = f"A {ref('white pumpkin')}{b} lays on {ref('a jute bag')}{a}."
    >>> gcg_mask_reward(None, [gt, swapped, f"A {ref('white pumpkin')}{a1} on {ref('a jute bag')}{b}."], solution=[gt] * 3)
    [1.0, 1.0, 0.7]
    """
    return score_rows("gcg", _MASK, completions, completion_ids, solution, task, log_metric, _log_gcg_monitors)


def gcg_phrase_reward(
    prompts, completions, completion_ids=None, solution=None, task=None, **kwargs
) -> list[float | None]:
    """Reference GCG phrase score: unique predicted phrases found among the GT phrases / max(#pred, #GT).

    Phrases are compared by `samtok_rl.parsing.phrase_key` (split on single spaces, each word stripped of surrounding
    whitespace, lower-cased, as the reference); only phrases followed by a span count, and an empty phrase is no
    phrase. 1.0 when the reference has no phrase; a missing response gives 0.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a, b = format_mask(123, 45), format_mask(7, 144)
    >>> ref = lambda x: f"<|object_ref_start|> {x} <|object_ref_end|> "
    >>> gt = f"A {ref('white pumpkin')}{a} lays on {ref('a jute bag')}{b}."
    >>> gcg_phrase_reward(None, [f"{ref('White  Pumpkin')}{a}", f"{ref('white pumpkin')} and {ref('a jute bag')}"], solution=[gt] * 2)
    [0.5, 0.0]
    >>> odd, tab = ref("\\x0cwhite\\u3000 pumpkin"), ref("white\\tpumpkin")  # stripped at a word's edge; not a separator
    >>> gcg_phrase_reward(None, [odd + a, tab + a], solution=[gt] * 2)
    [0.5, 0.0]
    """
    return score_rows("gcg", _PHRASE, completions, completion_ids, solution, task)


def gcg_grounded_reward(
    prompts, completions, completion_ids=None, solution=None, task=None, **kwargs
) -> list[float | None]:
    """Grounded GCG score: a mask earns credit only against a GT mask of the *same* phrase.

    Each unique predicted (phrase, span) pair is graded (1.0 / 0.4 / 0) against the GT spans carrying its phrase
    key; the sum is divided by max(#predicted pairs with duplicates, #GT pairs). Both empty = 1.0. Unlike
    `gcg_mask_reward`, masks swapped between phrases score 0.

    Example:
    >>> from samtok_rl.tokens import format_mask
    >>> a, b = format_mask(123, 45), format_mask(7, 144)
    >>> ref = lambda x: f"<|object_ref_start|> {x} <|object_ref_end|> "
    >>> gt = f"A {ref('white pumpkin')}{a} lays on {ref('a jute bag')}{b}."
    >>> swapped = f"A {ref('white pumpkin')}{b} lays on {ref('a jute bag')}{a}."
    >>> gcg_grounded_reward(None, [gt, swapped, f"A {ref('White Pumpkin')}{a}."], solution=[gt] * 3)
    [1.0, 0.0, 0.5]
    """
    return score_rows("gcg", _GROUNDED, completions, completion_ids, solution, task)


def _log_gcg_monitors(log_metric, texts, solution, task) -> None:
    n = n_pred = n_gt = n_dup = 0
    for _, text, gt in task_rows(texts, solution, task, "gcg"):
        n += 1
        pred = [codes for _, codes in pairs(text or "")]
        n_pred += len(pred)
        n_dup += len(pred) - len(set(pred))
        n_gt += len(pairs(gt))
    if n == 0:
        return
    log_metric("gcg/pred_pairs", n_pred / n)
    log_metric("gcg/gt_pairs", n_gt / n)
    if n_pred:
        log_metric("gcg/duplicate_mask_rate", n_dup / n_pred)
