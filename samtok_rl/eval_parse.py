"""Reading a SAMTok VLM's eval outputs: cleaning the decoded text, the answer part, and the GRES / GCG mask spans.

Pure functions of the output text, shared by the eval runner and its tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from samtok_rl.prompts import parse_gcg, split_think_answer
from samtok_rl.tokens import parse_masks


# The reference RL GRES eval keeps only the first span when an answer has more than this many (a degenerate loop).
GRES_MAX_SPANS = 10
# Qwen3-VL's chat template can leave an empty think block at the start of the output; SAMTok's eval strips it.
QWEN3_EMPTY_THINK = "<think>\n\n</think>\n\n"


def clean_output(text: str, strip_tokens: Sequence[str] = ()) -> str:
    """Remove the Qwen3-VL empty think block and any trailing EOS/pad token strings from a decoded output.

    Example:
    >>> clean_output("<think>\\n\\n</think>\\n\\nNo target.<|im_end|><|endoftext|>", ["<|im_end|>", "<|endoftext|>"])
    'No target.'
    """
    text = text.replace(QWEN3_EMPTY_THINK, "")
    stripped = True
    while stripped:
        stripped = False
        text = text.rstrip()
        for token in strip_tokens:
            if token and text.endswith(token):
                text = text[: -len(token)]
                stripped = True
    return text


def answer_part(text: str, think: bool) -> tuple[str, bool]:
    """The part of an output the masks are read from, and whether the think/answer split found it.

    With `think`, the answer of `split_think_answer` (the reference's robust rules); when the output has neither
    `<answer>` nor `</think>`, the whole output is used (a lenient choice, counted as `no_answer_tag` in the
    metrics). Without `think`, the whole output.

    Example:
    >>> answer_part("<think>one cup</think><answer>No target.</answer>", think=True)
    ('No target.', True)
    >>> answer_part("No target.", think=True)
    ('No target.', False)
    """
    if not think:
        return text, True
    _, answer = split_think_answer(text)
    return (text, False) if answer is None else (answer, True)


def parse_gres(text: str, think: bool) -> dict:
    """Read one GRES output: the codes of every span in the answer part (repair mode).

    With `think` (the RL protocol), an answer with more than 10 spans keeps only its first span, as the reference
    RL GRES eval does; the non-RL reference has no such rule.

    Returns:
        `dict`: `answer` (str), `found_answer` (bool), `codes` (list of `[c0, c1]`, `c1 == -1` = missing level-1
        code), `num_spans` (before the cap), `capped` (bool).

    Example:
    >>> parse_gres("<think>x</think><answer>[{\\"mask_2d\\": \\"<|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>\\"}]</answer>", True)["codes"]
    [[1, 2]]
    """
    answer, found = answer_part(text, think)
    codes = [list(c) for c in parse_masks(answer, repair=True)]
    num_spans = len(codes)
    capped = think and num_spans > GRES_MAX_SPANS
    if capped:
        codes = codes[:1]
    return {"answer": answer, "found_answer": found, "codes": codes, "num_spans": num_spans, "capped": capped}


def parse_gcg_output(text: str, think: bool) -> dict:
    """Read one GCG output: caption, phrases and, per phrase, the span that follows it (`prompts.parse_gcg`).

    A phrase without a span gets `None` (it is scored with an empty mask); spans not paired with a phrase are
    dropped and counted, so one missing span never shifts the pairing of later phrases (SAMTok's own script pairs
    by position).

    Returns:
        `dict`: `answer`, `found_answer`, `caption`, `phrases`, `codes` (one `[c0, c1]` or `None` per phrase),
        `num_spans` (all spans of the answer), `phrases_without_span`, `spans_without_phrase`.

    Example:
    >>> out = parse_gcg_output("<|object_ref_start|> a cat <|object_ref_end|> and <|object_ref_start|> a hat "
    ...                        "<|object_ref_end|> <|mt_start|><|mt_0003|><|mt_0260|><|mt_end|>", think=False)
    >>> out["caption"], out["codes"], out["phrases_without_span"], out["spans_without_phrase"]
    ('a cat and a hat', [None, [3, 4]], 1, 0)
    """
    answer, found = answer_part(text, think)
    caption, phrases, codes = parse_gcg(answer)
    num_spans = len(parse_masks(answer, repair=True))
    paired = sum(c is not None for c in codes)
    return {
        "answer": answer,
        "found_answer": found,
        "caption": caption,
        "phrases": phrases,
        "codes": [None if c is None else list(c) for c in codes],
        "num_spans": num_spans,
        "phrases_without_span": len(codes) - paired,
        "spans_without_phrase": num_spans - paired,
    }
