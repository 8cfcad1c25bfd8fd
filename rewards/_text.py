"""What every textual reward shares: the completion's text, its think/answer parts and span lists, parsed once.

The parsing itself is `samtok_rl.parsing` (the same functions the evaluation reads outputs with). TRL calls each
reward function separately on the same completions, so the parses are memoised per string (`functools.lru_cache`):
the GRES preset (format + mask + two repetition terms) splits and scans each completion once, not four times. The
caches are sized for one generation batch per process and hold only strings and tuples.
"""

from __future__ import annotations

from functools import lru_cache

from samtok_rl.errors import UsageError
from samtok_rl.parsing import find_span_codes, gcg_pairs, split_think_answer
from samtok_rl.prompts import message_text as completion_text


# One generation batch per process (TRL's default GRES setting is 4096 completions) plus slack.
_CACHE_SIZE = 8192


def completion_texts(completions, completion_ids=None) -> list[str | None]:
    """`completion_text` over a batch; `completions=None` (ids only, no bound tokenizer) gives all `None`."""
    if completions is None:
        return [None] * (len(completion_ids) if completion_ids is not None else 0)
    return [completion_text(c) for c in completions]


def task_rows(texts: list[str | None], solution, task, name: str):
    """`(index, text, reference answer)` of the rows a reward of task `name` scores: rows of that task (all rows
    without a `task` column; in mixed-task datasets the others get `None`) that have a reference answer."""
    if len(solution) != len(texts) or (task is not None and len(task) != len(texts)):
        raise UsageError(
            f"{name} reward: {len(texts)} completions but {len(solution)} solutions"
            + ("" if task is None else f" and {len(task)} task values")
            + " (TRL passes one dataset row per completion)"
        )
    for i, text in enumerate(texts):
        if task is None or task[i] == name:
            if not isinstance(solution[i], str):
                # A row without a reference answer would score None and vanish from the logs: a data error.
                raise UsageError(
                    f"{name} reward, row {i}: the solution is {solution[i]!r}, not the reference answer text"
                )
            yield i, text, solution[i]


def score_rows(
    task_name: str, score, completions, completion_ids, solution, task, log_metric=None, monitor=None
) -> list[float | None]:
    """What every task reward does around its rule: read the texts, skip rows of other tasks or without a reference
    answer (`None`), log the task's monitors, and score each remaining row with `score(text_or_None, solution)`."""
    texts = completion_texts(completions, completion_ids)
    if solution is None:
        return [None] * len(texts)
    if log_metric is not None and monitor is not None:
        monitor(log_metric, texts, solution, task)
    scores: list[float | None] = [None] * len(texts)
    for i, text, reference in task_rows(texts, solution, task, task_name):
        scores[i] = score(text, reference)
    return scores


@lru_cache(maxsize=_CACHE_SIZE)
def split(text: str) -> tuple[str | None, str | None]:
    """Memoised `samtok_rl.parsing.split_think_answer` (the reference's robust think/answer extraction)."""
    return split_think_answer(text)


@lru_cache(maxsize=3 * _CACHE_SIZE)
def spans(text: str) -> tuple[tuple[str, str], ...]:
    """Memoised `samtok_rl.parsing.find_span_codes`: the code pairs of the well-formed spans, duplicates kept."""
    if "<|mt_" not in text:  # most think parts and every "No target." answer: skip the regex entirely
        return ()
    return tuple(find_span_codes(text))


@lru_cache(maxsize=_CACHE_SIZE)
def pairs(text: str) -> tuple[tuple[str, tuple[str, str]], ...]:
    """Memoised `samtok_rl.parsing.gcg_pairs`: the GCG (phrase key, code pair) pairs, duplicates kept."""
    return tuple(gcg_pairs(text))


CACHES = (split, spans, pairs)
