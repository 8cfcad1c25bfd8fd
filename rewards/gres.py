"""GRES rewards: the reference graded set match with its no-target rule, a Hungarian variant, and the GRES monitors.

The rules are SAMTok's RL rules (reconstructed from CycleGRPO's `text2mask.py`):

- spans are the strict strings `<|mt_start|><|mt_AAAA|><|mt_BBBB|><|mt_end|>`, compared by their code strings;
- each predicted span is graded against the reference spans (`rewards.matching`: 1.0 equal, 0.4 same coarse code);
- set accuracy = sum over *unique* predicted spans of their best grade / max(#predicted with duplicates, #GT);
- rows whose reference answer is `No target.` use the no-target rule instead, on the *full* response (see
  `no_target_score`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

from rewards._text import score_rows, spans, split, task_rows
from rewards.matching import CodeTarget, graded_set_score, hungarian_set_score
from samtok_rl.parsing import NO_TARGET, has_mask_fragment
from samtok_rl.tokens import MASK_START


__all__ = ["gres_mask_reward", "gres_mask_reward_hungarian", "log_gres_monitors", "no_target_score"]


@lru_cache(maxsize=4096)
def target(solution: str) -> CodeTarget | None:
    """The reference spans of one GRES answer, indexed for grading; `None` for a no-target row (`No target.`).

    Memoised: the generations of a group share their reference answer.
    """
    return None if solution.strip() == NO_TARGET else CodeTarget.of(spans(solution))


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
    if has_mask_fragment(text):
        return 0.0
    return 1.0 if NO_TARGET in text else 0.2


def _row_score(set_score: Callable[[Sequence[tuple[str, str]], CodeTarget], float]):
    def score(text: str | None, solution: str) -> float:
        indexed = target(solution)
        if indexed is None:
            return no_target_score(text)
        answer = None if text is None else split(text)[1]
        return 0.0 if answer is None else set_score(spans(answer), indexed)

    return score


_GRADED = _row_score(graded_set_score)
_HUNGARIAN = _row_score(hungarian_set_score)


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
    for _, text, gt in task_rows(texts, solution, task, "gres"):
        n += 1
        text = text or ""
        answer = split(text)[1]
        part = text if answer is None else answer
        pred = spans(part)
        n_pred += len(pred)
        n_dup += len(pred) - len(set(pred))
        opened = part.count(MASK_START)
        n_open += opened
        n_malformed += max(opened - len(pred), 0)
        if gt.strip() == NO_TARGET:
            n_nt += 1
            n_nt_masks += has_mask_fragment(text)
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
    return score_rows("gres", _GRADED, completions, completion_ids, solution, task, log_metric, log_gres_monitors)


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
    return score_rows("gres", _HUNGARIAN, completions, completion_ids, solution, task, log_metric, log_gres_monitors)


