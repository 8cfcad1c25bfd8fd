"""What every textual reward shares: the completion's text, its think/answer parts and span lists, parsed once.

TRL calls each reward function separately on the same completions, so the parses are memoised per string
(`functools.lru_cache`): the GRES preset (format + mask + two repetition terms) splits and scans each completion once,
not four times. The caches are sized for one generation batch per process and hold only strings and tuples.
"""

from __future__ import annotations

import re
from functools import lru_cache

from samtok_rl.prompts import OBJ_REF_END, OBJ_REF_START, split_think_answer
from samtok_rl.tokens import find_spans


# One generation batch per process (TRL's default GRES setting is 4096 completions) plus slack.
_CACHE_SIZE = 8192

# A well-formed span is 44 characters: `<|mt_start|>` (12) + two 11-character code tokens + `<|mt_end|>` (10).
# Its first 23 characters are the start token and the coarse code: the reference's "all tokens but the last two".
COARSE_PREFIX = 23

# Any mask-token fragment, for the no-target rule: the start or end token, or any 4-digit code token.
_FRAGMENT_RE = re.compile(r"<\|mt_(?:start|end|\d{4})\|>")


def completion_text(completion) -> str | None:
    """The text of one TRL completion: a string, or a conversational list of messages (contents concatenated).

    Message contents may be strings or lists of `{"type": "text", "text": ...}` blocks. Anything else gives `None`,
    which the rewards score as a missing response.

    Example:
    >>> completion_text([{"role": "assistant", "content": "<answer>No target.</answer>"}])
    '<answer>No target.</answer>'
    >>> completion_text(None) is None
    True
    """
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, list):
        return None
    parts = []
    for message in completion:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                block["text"]
                for block in content
                if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
            )
        else:
            return None
    return "".join(parts) if parts else None


def completion_texts(completions, completion_ids=None) -> list[str | None]:
    """`completion_text` over a batch; `completions=None` (ids only, no bound tokenizer) gives all `None`."""
    if completions is None:
        return [None] * (len(completion_ids) if completion_ids is not None else 0)
    return [completion_text(c) for c in completions]


def applies(task, i: int, name: str) -> bool:
    """Whether row `i` belongs to task `name`: in mixed-task datasets a task-specific reward returns None elsewhere."""
    return task is None or task[i] == name


@lru_cache(maxsize=_CACHE_SIZE)
def split(text: str) -> tuple[str | None, str | None]:
    """Memoised `samtok_rl.prompts.split_think_answer` (the reference's robust think/answer extraction)."""
    return split_think_answer(text)


@lru_cache(maxsize=3 * _CACHE_SIZE)
def spans(text: str) -> tuple[str, ...]:
    """Memoised `samtok_rl.tokens.find_spans`: the well-formed span strings of `text`, in order, duplicates kept."""
    if "<|mt_" not in text:  # most think parts and every "No target." answer: skip the regex entirely
        return ()
    return tuple(find_spans(text))


def has_fragment(text: str) -> bool:
    """Whether `text` holds any mask-token fragment (`<|mt_start|>`, `<|mt_end|>` or a 4-digit code token)."""
    return "<|mt_" in text and _FRAGMENT_RE.search(text) is not None


# GCG pairs, reference grammar: phrase (lazy, no newline), optional whitespace, `<|object_ref_end|>`, optional
# whitespace, then a span whose two code tokens may have any digit count.
_PAIR_RE = re.compile(
    re.escape(OBJ_REF_START)
    + r"(.*?)\s*"
    + re.escape(OBJ_REF_END)
    + r"\s*<\|mt_start\|><\|mt_(\d+)\|><\|mt_(\d+)\|><\|mt_end\|>"
)


@lru_cache(maxsize=_CACHE_SIZE)
def gcg_pairs(text: str) -> tuple[tuple[str, tuple[str, str]], ...]:
    """The GCG (phrase key, codes) pairs of `text`, in order, duplicates kept.

    The phrase key is lower-cased with whitespace runs collapsed (`""` for an empty phrase); the codes are the two
    digit strings of the span, compared as strings (as the reference compares `<|object_ref_end|>` + span keys).

    Example:
    >>> gcg_pairs("A <|object_ref_start|> White  Pumpkin <|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>")
    (('white pumpkin', ('0001', '0258')),)
    """
    if OBJ_REF_START not in text:
        return ()
    return tuple((" ".join(p.split()).lower(), (c0, c1)) for p, c0, c1 in _PAIR_RE.findall(text))


def clear_caches() -> None:
    """Forget every memoised parse (benchmarks call it between timed runs)."""
    from rewards.gres import _target

    for fn in (split, spans, gcg_pairs, _target):
        fn.cache_clear()
