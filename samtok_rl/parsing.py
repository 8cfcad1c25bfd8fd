"""Reading model output: the one place that parses what a SAMTok VLM writes.

Mask spans (strict and repair), the think/answer split, the GCG phrase/span grammar, the no-target phrase and the
"more than N spans" cap live here; the rewards, the evaluation runner, data preparation and the demo all read output
through these functions, so training and evaluation cannot drift apart on how they read the same text.

Every function runs in time linear in its input (the regexes are anchored or have no nested quantifiers, and the GCG
grammars are scanned with `str.find`), so a policy stuck in a loop cannot stall a training step, and none raises on
any string.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from samtok_rl.tokens import CODEBOOK_SIZE, MASK_END, MASK_START, MaskTokenIds


__all__ = [
    "GRES_MAX_SPANS",
    "NO_TARGET",
    "OBJ_REF_END",
    "OBJ_REF_START",
    "QWEN3_EMPTY_THINK",
    "answer_part",
    "clean_output",
    "find_span_codes",
    "gcg_caption",
    "gcg_pairs",
    "has_mask_fragment",
    "mask_spans",
    "parse_gcg",
    "parse_gcg_output",
    "parse_gres",
    "parse_mask_ids",
    "phrase_key",
    "parse_masks",
    "split_think_answer",
]

# Qwen's grounding markers around a GCG phrase (special tokens of the Qwen2/2.5/3 vocabularies).
OBJ_REF_START = "<|object_ref_start|>"
OBJ_REF_END = "<|object_ref_end|>"
# The answer of a GRES row without a target, and what a policy must write for it.
NO_TARGET = "No target."
# The reference RL GRES eval keeps only the first span when an answer has more than this many (a degenerate loop).
GRES_MAX_SPANS = 10
# Qwen3-VL's chat template can leave an empty think block at the start of the output; SAMTok's eval strips it.
QWEN3_EMPTY_THINK = "<think>\n\n</think>\n\n"

# A span opener followed by any run of code tokens (any digit count, as the reference repair regexes accept).
_SPAN_RE = re.compile(r"<\|mt_start\|>((?:<\|mt_\d+\|>)*)")
_CODE_RE = re.compile(r"<\|mt_(\d+)\|>")
# The strict grammar: exactly two 4-digit codes and nothing in between.
_STRICT_RE = re.compile(r"<\|mt_start\|><\|mt_(\d{4})\|><\|mt_(\d{4})\|><\|mt_end\|>")
_FRAGMENT = "<|mt_"
# Any mask-token fragment, for the no-target rule: the start or end token, or any 4-digit code token.
_FRAGMENT_RE = re.compile(r"<\|mt_(?:start|end|\d{4})\|>")


# -- mask spans ----------------------------------------------------------------------------------------------------


def _codes_from_numbers(numbers: Sequence[int]) -> tuple[int, int] | None:
    """Apply the reference repair conventions to the token numbers of one span.

    3+ codes keep the first two; a lone code gets a missing (-1) second code; a first code outside level 0 drops
    the span; a second code outside level 1 becomes -1 (which the mask tokenizer decodes as that level's row 0).
    """
    if not numbers:
        return None
    c0 = numbers[0]
    if not 0 <= c0 < CODEBOOK_SIZE:
        return None
    if len(numbers) == 1:
        return (c0, -1)
    c1 = numbers[1] - CODEBOOK_SIZE
    return (c0, c1 if 0 <= c1 < CODEBOOK_SIZE else -1)


def parse_masks(text: str, repair: bool = True) -> list[tuple[int, int]]:
    """Read the per-level codes of every mask span in `text`, in order.

    Args:
        text (`str`): any string; non-strings give `[]`.
        repair (`bool`, *optional*, defaults to `True`):
            `False` accepts only well-formed spans (`<|mt_start|>`, a level-0 token, a level-1 token, `<|mt_end|>`,
            nothing in between). `True` follows the reference repair conventions: a span with 3+ codes keeps the
            first two, a span with one code gives `c1 = -1` (missing), a first code outside level 0 drops the span,
            a second code outside level 1 (or not written with 4 digits) gives `c1 = -1`. A span ends at
            `<|mt_end|>` or at the first character that is not a code token. Code tokens outside any span are
            ignored (the reference's position-based pairing would shift every later mask instead).

    Returns:
        `list[tuple[int, int]]`: one `(c0, c1)` per span; never raises.

    Example:
    >>> parse_masks("a <|mt_start|><|mt_0123|><|mt_0301|><|mt_end|> b <|mt_start|><|mt_0007|><|mt_end|>")
    [(123, 45), (7, -1)]
    >>> parse_masks("<|mt_start|><|mt_0007|><|mt_end|>", repair=False)
    []
    """
    if not isinstance(text, str) or _FRAGMENT not in text:
        return []
    out: list[tuple[int, int]] = []
    strict = _STRICT_RE.findall(text)
    # Fast path: when every span opener starts a well-formed span, the strict matches are the whole answer.
    if not repair or text.count(MASK_START) == len(strict):
        for a, b in strict:
            codes = _codes_from_numbers((int(a), int(b)))
            if codes is not None and (repair or codes[1] >= 0):
                out.append(codes)
        return out
    return [codes for _, _, codes in mask_spans(text)]


def mask_spans(text: str) -> list[tuple[int, int, tuple[int, int]]]:
    """Where each span [`parse_masks`] reads (with repair) sits in `text`: `(start, end, codes)`, in order.

    `end` includes the span's `<|mt_end|>` when it has one. Used to mark the spans in a displayed text.

    Example:
    >>> mask_spans("a <|mt_start|><|mt_0123|><|mt_0301|><|mt_end|> b")
    [(2, 46, (123, 45))]
    """
    if not isinstance(text, str) or _FRAGMENT not in text:
        return []
    out = []
    for match in _SPAN_RE.finditer(text):
        # Only 4-digit tokens are vocabulary tokens; anything else counts as an out-of-range number.
        numbers = [int(d) if len(d) == 4 else -1 for d in _CODE_RE.findall(match.group(1))[:2]]
        codes = _codes_from_numbers(numbers)
        if codes is not None:
            end = match.end() + len(MASK_END) if text.startswith(MASK_END, match.end()) else match.end()
            out.append((match.start(), end, codes))
    return out


def find_span_codes(text: str) -> list[tuple[str, str]]:
    """The digit strings of every well-formed span of `text`, in order, duplicates kept (the reward rules' span list).

    Unlike `parse_masks(repair=False)`, the numbers are not range-checked: the textual rewards compare spans as
    strings, exactly as the reference does (two spans are equal when both digit strings are).

    Example:
    >>> find_span_codes("<|mt_start|><|mt_0123|><|mt_0301|><|mt_end|> <|mt_start|><|mt_0001|><|mt_end|>")
    [('0123', '0301')]
    """
    if not isinstance(text, str) or _FRAGMENT not in text:
        return []
    return _STRICT_RE.findall(text)


def has_mask_fragment(text: str) -> bool:
    """Whether `text` holds any mask-token fragment (`<|mt_start|>`, `<|mt_end|>` or a 4-digit code token).

    Example:
    >>> has_mask_fragment("No target.<|mt_end|>"), has_mask_fragment("No target.")
    (True, False)
    """
    return isinstance(text, str) and _FRAGMENT in text and _FRAGMENT_RE.search(text) is not None


def parse_mask_ids(ids: Sequence[int], mask_ids: MaskTokenIds, repair: bool = True) -> list[tuple[int, int]]:
    """Id-level twin of `parse_masks`: read the spans straight from token ids (e.g. TRL's `completion_ids`).

    Same rules as `parse_masks`; a span ends at the end token or at the first id that is not a code token.

    Args:
        ids (`Sequence[int]`): token ids (a list, tuple or 1-D tensor converted with `.tolist()`).
        mask_ids (`MaskTokenIds`): from `MaskTokenIds.from_tokenizer`.
        repair (`bool`, *optional*, defaults to `True`): see `parse_masks`.

    Returns:
        `list[tuple[int, int]]`: one `(c0, c1)` per span.
    """
    if not isinstance(ids, (list, tuple)):
        ids = ids.tolist()  # tensors and arrays: plain ints hash and compare fast
    start, end, number = mask_ids.start, mask_ids.end, mask_ids.number
    if start not in ids:
        return []
    out: list[tuple[int, int]] = []
    n_ids = len(ids)
    i = 0
    while True:
        try:
            i = ids.index(start, i)
        except ValueError:
            return out
        # Fast path: a well-formed span (both modes accept it as is).
        if i + 3 < n_ids and ids[i + 3] == end:
            a, b = number.get(ids[i + 1], -1), number.get(ids[i + 2], -1)
            if 0 <= a < CODEBOOK_SIZE <= b:
                out.append((a, b - CODEBOOK_SIZE))
                i += 4
                continue
        j = i + 1
        numbers: list[int] = []
        while j < n_ids and ids[j] in number:
            numbers.append(number[ids[j]])
            j += 1
        closed = j < n_ids and ids[j] == end
        if repair:
            codes = _codes_from_numbers(numbers[:2])
            if codes is not None:
                out.append(codes)
        elif closed and len(numbers) == 2 and numbers[0] < CODEBOOK_SIZE <= numbers[1]:
            out.append((numbers[0], numbers[1] - CODEBOOK_SIZE))
        i = j


# -- think / answer ------------------------------------------------------------------------------------------------


def split_think_answer(text: str) -> tuple[str | None, str | None]:
    """Split a response into its think and answer parts with the reference's robust rules.

    The first `<think>…</think>` and the first `<answer>…</answer>` are taken. If either is missing, the text is
    split at the first `<answer>` (or, failing that, at the first `</think>`): the head fills a missing think, the
    tail a missing answer. Otherwise a missing part stays `None`.

    Example:
    >>> split_think_answer("<think>t</think><answer>a</answer>")
    ('t', 'a')
    >>> split_think_answer("<answer>a</answer>")
    ('', 'a')
    >>> split_think_answer("<think>t</think>a")
    ('t', 'a')
    >>> split_think_answer("a")
    (None, None)
    """
    if not isinstance(text, str):
        return None, None
    # Same result as re.search(r"<think>(.*?)</think>", re.DOTALL) (and its answer twin) at a fraction of the cost:
    # that regex matches at the first `<think>` when any `</think>` follows it, and nowhere otherwise.
    i = text.find("<think>")
    j = text.find("</think>", i + 7) if i >= 0 else -1
    k = text.find("<answer>")
    m = text.find("</answer>", k + 8) if k >= 0 else -1
    think = text[i + 7 : j] if j >= 0 else None
    answer = text[k + 8 : m] if m >= 0 else None
    if think is None or answer is None:
        for sep in ("<answer>", "</think>"):
            if sep in text:
                head, tail = text.split(sep, 1)
                think = head if think is None else think
                answer = tail if answer is None else answer
                break
    return think, answer


# -- GCG ---------------------------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"<[^>]*>")
_WS_RE = re.compile(r"\s+")
# After a phrase's end marker: optional whitespace, then a span whose two code tokens may have any digit count (the
# reference reward grammar). Anchored at one position, so each try is linear in the whitespace it skips.
_PAIR_SPAN_RE = re.compile(r"\s*<\|mt_start\|><\|mt_(\d+)\|><\|mt_(\d+)\|><\|mt_end\|>")
_TRAILING_WS_RE = re.compile(r"\s*")


def gcg_caption(text: str) -> str:
    """The caption of a GCG answer: every `<…>` tag removed and whitespace collapsed (the reference eval)."""
    return _WS_RE.sub(" ", _TAG_RE.sub("", text)).strip()


def _phrases(text: str) -> list[tuple[int, int, int]]:
    """`(phrase start, phrase end, marker end)` of every `START phrase END`, nearest END first, left to right.

    The same matches as `re.finditer(START + "(.*?)" + END, re.DOTALL)`, found with `str.find`: once a START has no
    END after it, no later START has one either, so the scan stops there instead of re-reading the rest of the text
    for every remaining START (quadratic on a completion that repeats START).
    """
    out = []
    at = 0
    while True:
        i = text.find(OBJ_REF_START, at)
        if i < 0:
            return out
        j = text.find(OBJ_REF_END, i + len(OBJ_REF_START))
        if j < 0:
            return out
        out.append((i + len(OBJ_REF_START), j, j + len(OBJ_REF_END)))
        at = j + len(OBJ_REF_END)


def parse_gcg(text: str) -> tuple[str, list[str], list[tuple[int, int] | None]]:
    """Read a GCG answer: caption, grounded phrases, and for each phrase the mask that follows it.

    Each phrase is paired with the first span between its `<|object_ref_end|>` and the next phrase (repair mode of
    `parse_masks`); a phrase without one gets `None`, so the caller can report the mismatch instead of shifting the
    pairing of later phrases.

    Example:
    >>> parse_gcg("A <|object_ref_start|> cat <|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|> sits.")
    ('A cat sits.', ['cat'], [(1, 2)])
    """
    if not isinstance(text, str):
        return "", [], []
    phrases: list[str] = []
    codes: list[tuple[int, int] | None] = []
    found = _phrases(text)
    for k, (start, end, after) in enumerate(found):
        phrases.append(text[start:end].strip())
        stop = found[k + 1][0] - len(OBJ_REF_START) if k + 1 < len(found) else len(text)
        spans = parse_masks(text[after:stop])
        codes.append(spans[0] if spans else None)
    return gcg_caption(text), phrases, codes


def phrase_key(phrase: str) -> str:
    """How the reward rules compare phrases: split on single spaces, each piece stripped of surrounding whitespace
    (`str.strip`: tabs, form feeds, NBSP, ideographic space...), pieces left empty dropped, each lower-cased, joined
    with one space (CycleGRPO's `text2mask.py`). Only spaces separate words: whitespace *inside* a piece stays, so
    `a\\tman` and `a\\u00a0man` are one word each, while `\\x0ccat` is `cat`.

    Example:
    >>> phrase_key(" White  Pumpkin "), phrase_key("\\x0ccat a\\u3000"), phrase_key("a\\tman") == phrase_key("a man")
    ('white pumpkin', 'cat a', False)
    >>> phrase_key(" \\t\\u00a0 ")
    ''
    """
    words = (piece.strip() for piece in phrase.split(" "))
    return " ".join(word.lower() for word in words if word)


def gcg_pairs(text: str) -> list[tuple[str, tuple[str, str]]]:
    """The reward grammar's GCG (phrase key, codes) pairs of `text`, in order, duplicates kept.

    A pair is `<|object_ref_start|>`, a phrase without a newline, optional whitespace, `<|object_ref_end|>`,
    optional whitespace and a span (code tokens of any digit count): the reference reward's regex
    `START(.*?)\\s*END\\s*<span>`, whose matches this reproduces exactly (property-tested against it) in linear
    time. The phrase key is `phrase_key(phrase)` (`""` for an empty phrase); the codes are the two digit strings of
    the span, compared as strings. Phrases without a span are skipped.

    Example:
    >>> gcg_pairs("A <|object_ref_start|> White  Pumpkin <|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>")
    [('white pumpkin', ('0001', '0258'))]
    """
    if not isinstance(text, str) or OBJ_REF_START not in text:
        return []
    # Ends followed (after optional whitespace) by a span, as (end-marker position, span match).
    good: list[int] = []
    spans: dict[int, re.Match] = {}
    k = text.find(OBJ_REF_END)
    while k >= 0:
        m = _PAIR_SPAN_RE.match(text, k + len(OBJ_REF_END))
        if m is not None:
            good.append(k)
            spans[k] = m
        k = text.find(OBJ_REF_END, k + 1)
    out = []
    at = 0
    newline = limit = -1  # the first "\n" at or after the phrase start, cached: phrase starts only move right
    while good:
        i = text.find(OBJ_REF_START, at)
        if i < 0:
            break
        body = i + len(OBJ_REF_START)
        # The phrase (`.` : anything but "\n") may be followed by whitespace that does hold newlines, so an end marker
        # qualifies up to the end of the whitespace run that starts at the first newline after the phrase start.
        if newline < body and newline != len(text):
            newline = text.find("\n", body)
            newline = len(text) if newline < 0 else newline
            limit = _TRAILING_WS_RE.match(text, newline).end()
        n = bisect.bisect_left(good, body)
        if n < len(good) and good[n] <= limit:
            end = good[n]
            m = spans[end]
            phrase = text[body:end].rstrip()  # the regex's lazy phrase leaves trailing whitespace to its `\s*`
            out.append((phrase_key(phrase), (m.group(1), m.group(2))))
            at = m.end()
        else:
            at = i + 1
    return out


# -- evaluation outputs ----------------------------------------------------------------------------------------------


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
